"""``mmrank train``: LoRA fine-tuning of a Qwen-VL instruct model as a listwise (and pairwise) reranker.

Built on ``transformers.Trainer`` + ``peft`` (no own training loop, no own distribution code), so the same
code runs on CPU, one GPU, or several with ``accelerate launch`` / ``torchrun``.

**Prompts are built by the scorers themselves.** A listwise stage holds a
:class:`~mmrank.ListwiseReranker` (``mode="single_pass"``, letter identifiers) over the model being trained;
each training window is rendered by its :meth:`~mmrank.ListwiseReranker.window_conversation` and
:class:`~mmrank.models.vlm.InstructVLM` ``render``/``encode`` — the code inference runs. A pairwise stage
holds a :class:`~mmrank.PairwiseReranker` the same way. Validation ranks the validation lists with that
very scorer and computes nDCG@10 with :mod:`mmrank.evaluation`.

**Listwise loss** (default weights ``rank_weight=1``, ``lm_weight=0.1``)::

    loss = rank_weight · PL_τ(s, π*)  +  lm_weight · CE(teacher answer "[B] > [A] > …" + <|im_end|>)

* ``s`` are the logits of the identifier tokens at the first answer position (after the forced ``[``),
  read through :meth:`FirstTokenPlan.score_tensor` — the numbers single-pass inference ranks by (tested);
* ``PL_τ`` is Rank-Nexus' Plackett–Luce loss (eq. 4/8/9, τ = 0.1; ties by Breslow's rule, see
  :mod:`mmrank.train.loss`);
* the language-modelling term teaches generate mode to write the teacher's ``[] > []`` answer. It is
  weighted low because it is a sum over ~3n tokens of which only the first carries the ranking decision the
  PL term already trains, and rank_llm's FIRST training found a small LM weight keeps generation intact
  without diluting the ranking signal. Set ``lm_weight=0`` for pure single-pass training.

**Pairwise loss**: cross-entropy of ``P(yes)`` (the pairwise scorer's score) against the label — a
candidate is a positive when its ``labels`` entry is > 0 or, without labels, when it is among the teacher's
top ``pairwise_top``.

**Stages** (:class:`Stage`): each has its own data, epochs/steps and early stopping; stage ``k`` starts from
stage ``k-1``'s adapter. The paper's curriculum is text listwise → image pairwise → image listwise → mixed.
Each stage writes ``<output>/<stage name>/adapter`` (a PEFT adapter with the processor files, loadable by
path in every mmrank scorer) and resumable Trainer checkpoints under ``<output>/<stage name>/checkpoints``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..ranking.permutation import format_ranking, sliding_windows
from .loss import DEFAULT_TAU, plackett_luce_loss, yes_no_loss
from .records import RankList, Record, RecordError, read_lists, read_records

logger = logging.getLogger("mmrank")

STAGE_KINDS = ("listwise", "pairwise")
MODALITIES = ("any", "text", "image", "mixed")
#: Rank-Nexus 5.2: LoRA on all attention projections.
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class Stage:
    """One curriculum stage. ``train``: distilled records (JSONL); ``val``: lists with ``labels`` (input lists
    or records) for early stopping on nDCG@10; ``modality`` keeps only records of that modality."""

    name: str
    kind: str = "listwise"
    train: str | None = None
    val: str | None = None
    modality: str = "any"
    epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float | None = None
    batch_size: int | None = None

    def check(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise InputError(f"stage {self.name!r}: unknown stage kind {self.kind!r}; use one of {STAGE_KINDS}")
        if self.modality not in MODALITIES:
            raise InputError(f"stage {self.name!r}: unknown modality {self.modality!r}; use one of {MODALITIES}")
        if not self.train:
            raise InputError(f"stage {self.name!r}: no training records given")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise InputError(f"stage name {self.name!r} must be a plain folder name")


#: The paper's progressive curriculum (section 3.5): names, kinds and modalities of the four stages.
PAPER_CURRICULUM = (("text-listwise", "listwise", "text"), ("image-pairwise", "pairwise", "image"),
                    ("image-listwise", "listwise", "image"), ("mixed-listwise", "listwise", "any"))


@dataclass
class TrainConfig:
    """Hyper-parameters shared by the stages; defaults are Rank-Nexus section 5.2."""

    model: str
    output_dir: str
    lora_r: int = 8
    lora_alpha: int = 8
    lora_dropout: float = 0.05
    target_modules: Sequence[str] = ATTENTION_MODULES
    modules_to_save: Sequence[str] | None = None
    learning_rate: float = 1e-5
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    batch_size: int = 4
    grad_accum: int = 4
    weight_decay: float = 0.0
    tau: float = DEFAULT_TAU
    rank_weight: float = 1.0
    lm_weight: float = 0.1
    window_size: int = 20
    pairwise_top: int = 1
    max_passage_words: int | None = 300
    min_pixels: int | None = 3136
    max_pixels: int | None = 256 * 28 * 28
    gradient_checkpointing: bool = True
    load_in_8bit: bool = False
    bf16: bool | None = None  # None: on CUDA when supported
    early_stopping_patience: int | None = 2
    eval_steps: int | None = None  # None: evaluate once per epoch
    logging_steps: int = 10
    seed: int = 0
    device: str | None = None
    resume: bool = True
    save_total_limit: int = 2
    extra_args: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- data
@dataclass
class ListwiseExample:
    record: Record
    indices: list[int]           # candidate indices in the window, in window (input) order
    permutation: list[int]       # window-local teacher order, best first
    teacher_scores: list[float]  # window order (ties); missing scores get distinct decreasing values


@dataclass
class PairwiseExample:
    record: Record
    index: int
    label: int


def listwise_examples(records: Sequence[Record], window_size: int) -> list[ListwiseExample]:
    """Windows of at most ``window_size`` candidates (RankGPT walk with step ``window_size // 2`` over the
    input order when a list is longer); each with the teacher's order restricted to it."""
    out = []
    for r in records:
        n = len(r.candidates)
        rank_of = {c: k for k, c in enumerate(r.teacher_permutation)}
        spans = sliding_windows(n, window_size, max(1, window_size // 2)) if n > window_size else [(0, n)]
        for a, b in spans:
            idx = list(range(a, b))
            local = sorted(range(len(idx)), key=lambda j: rank_of[idx[j]])
            if any(r.teacher_scores[i] is None for i in idx):
                ts = [float(-rank_of[i]) for i in idx]  # no scores: the order itself, no ties
            else:
                ts = [float(r.teacher_scores[i]) for i in idx]  # type: ignore[arg-type]
            out.append(ListwiseExample(r, idx, local, ts))
    return out


def pairwise_examples(records: Sequence[Record], top: int) -> list[PairwiseExample]:
    out = []
    for r in records:
        pos = set(r.teacher_permutation[:top])
        for i, c in enumerate(r.candidates):
            label = int(r.labels.get(c.id, 0) > 0) if r.labels is not None else int(i in pos)
            out.append(PairwiseExample(r, i, label))
    return out


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[Any]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def _answer_ids(vlm: Any, text: str) -> list[int]:
    """Token ids of ``text`` as the model writes it at the start of its reply (in context)."""
    prefix = "assistant\n"
    base = vlm.token_ids(prefix)
    full = vlm.token_ids(prefix + text)
    if full[:len(base)] != base:
        raise InputError(f"cannot isolate the tokens of {text!r} in {vlm.model_name}'s tokenizer")
    return full[len(base):]


def _eos_ids(vlm: Any) -> list[int]:
    eos = vlm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(eos, int) and eos >= 0 and eos != getattr(vlm.tokenizer, "unk_token_id", None):
        return [eos]
    return [vlm.tokenizer.eos_token_id] if vlm.tokenizer.eos_token_id is not None else []


def encode_listwise(scorer: Any, examples: Sequence[ListwiseExample]) -> dict[str, Any]:
    """A training batch of listwise windows, rendered by ``scorer`` (a single-pass ListwiseReranker).

    Each sequence is the single-pass inference input (prompt + forced opener) followed by the rest of the
    teacher's answer and ``<|im_end|>``. Returns the model inputs plus ``score_offset`` (positions from the
    end of the sequence to the single-pass score position), ``id_tokens``/``id_mask``, ``permutation``,
    ``teacher_scores`` and ``lm_labels`` aligned with the last ``keep`` positions."""
    vlm = scorer.vlm
    prompts, images, extras, plans, offsets = [], [], [], [], []
    for ex in examples:
        docs = ex.record.documents()
        conv, ids = scorer.window_conversation(ex.record.query(), [docs[i] for i in ex.indices])
        plan = scorer.first_token_plan(len(ex.indices))
        if plan.keep != 1:
            raise InputError("training needs identifiers that tokenize the same way after the opener "
                             f"(all split or all merged) in {vlm.model_name}'s tokenizer")
        answer = _answer_ids(vlm, format_ranking([ids[k] for k in ex.permutation])) + _eos_ids(vlm)
        append = list(plan.append_ids)
        if answer[:len(append)] != append:
            raise InputError(f"the answer {format_ranking(ids)!r} does not begin with the opener tokens in "
                             f"{vlm.model_name}'s tokenizer")
        prompts.append(vlm.render(conv))
        images.append(conv.images)
        extras.append(answer)
        plans.append(plan)
        offsets.append(len(answer) - len(append))  # tokens after the score position
    inputs, _ = vlm.encode(prompts, images, extra_ids=extras)
    keep = max(len(e) for e in extras) + 1
    b = len(examples)
    nmax = max(len(ex.indices) for ex in examples)
    id_tokens = torch.zeros(b, nmax, dtype=torch.long)
    id_mask = torch.zeros(b, nmax, dtype=torch.bool)
    perm = torch.zeros(b, nmax, dtype=torch.long)
    tscores = torch.full((b, nmax), float("-inf"))
    lm_labels = torch.full((b, keep), -100, dtype=torch.long)
    for k, (ex, plan, extra) in enumerate(zip(examples, plans, extras, strict=True)):
        n = len(ex.indices)
        id_tokens[k, :n] = torch.tensor(plan.token_ids)
        id_mask[k, :n] = True
        perm[k] = torch.tensor(ex.permutation + list(range(n, nmax)))
        tscores[k, :n] = torch.tensor(ex.teacher_scores)
        lm_labels[k, keep - len(extra):] = torch.tensor(extra)
    inputs.update(score_offset=torch.tensor(offsets), id_tokens=id_tokens, id_mask=id_mask, permutation=perm,
                  teacher_scores=tscores, lm_labels=lm_labels, keep=torch.tensor(keep))
    inputs["plans"] = plans
    return inputs


def encode_pairwise(scorer: Any, examples: Sequence[PairwiseExample]) -> dict[str, Any]:
    """A batch of (query, document) chats rendered by ``scorer`` (a PairwiseReranker), with 0/1 labels."""
    vlm = scorer.vlm
    convs = [scorer.conversation(ex.record.query(), ex.record.documents()[ex.index]) for ex in examples]
    inputs, _ = vlm.encode([vlm.render(c) for c in convs], [c.images for c in convs])
    inputs["pair_labels"] = torch.tensor([ex.label for ex in examples])
    return inputs


def listwise_identifier_scores(model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward a listwise batch; return ``(identifier scores (batch, nmax), kept logits)``. The scores are
    read with the scorer's :meth:`FirstTokenPlan.score_tensor` at the single-pass position."""
    keep = int(inputs["keep"])
    model_inputs = {k: v for k, v in inputs.items() if k in _MODEL_KEYS}
    logits = model(**model_inputs, logits_to_keep=keep, use_cache=False).logits[:, -keep:, :]
    rows = []
    nmax = inputs["id_tokens"].shape[1]
    for k, plan in enumerate(inputs["plans"]):
        pos = keep - 1 - int(inputs["score_offset"][k])
        s = plan.score_tensor(logits[k, pos:pos + 1, :])
        rows.append(torch.nn.functional.pad(s, (0, nmax - s.shape[-1])))
    return torch.stack(rows), logits


_MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


# ---------------------------------------------------------------------------------------------- trainer
def _trainer_class():
    from transformers import Trainer

    class RankTrainer(Trainer):
        """``Trainer`` with the listwise / pairwise loss and validation by the mmrank scorer + nDCG@10."""

        def __init__(self, *args: Any, mmrank_scorer: Any, mmrank_kind: str, mmrank_config: TrainConfig,
                     mmrank_val: list[RankList] | None, **kw: Any):
            super().__init__(*args, **kw)
            self.mmrank_scorer = mmrank_scorer
            self.mmrank_kind = mmrank_kind
            self.mmrank_config = mmrank_config
            self.mmrank_val = mmrank_val

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            cfg = self.mmrank_config
            if self.mmrank_kind == "pairwise":
                model_inputs = {k: v for k, v in inputs.items() if k in _MODEL_KEYS}
                out = model(**model_inputs, logits_to_keep=1, use_cache=False)
                loss = yes_no_loss(out.logits[:, -1, :], self.mmrank_scorer.yes_id, self.mmrank_scorer.no_id,
                                   inputs["pair_labels"])
                return (loss, out) if return_outputs else loss
            scores, logits = listwise_identifier_scores(model, inputs)
            loss = cfg.rank_weight * plackett_luce_loss(scores, inputs["permutation"], tau=cfg.tau,
                                                        teacher_scores=inputs["teacher_scores"],
                                                        mask=inputs["id_mask"])
            if cfg.lm_weight:
                labels = inputs["lm_labels"].to(logits.device)
                lm = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                       labels[:, 1:].reshape(-1), ignore_index=-100)
                loss = loss + cfg.lm_weight * lm
            return (loss, {"scores": scores}) if return_outputs else loss

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            if not self.mmrank_val:
                return {}
            was_training = self.model.training
            self.model.eval()
            try:
                ndcg = validation_ndcg(self.mmrank_scorer, self.mmrank_val)
            finally:
                if was_training:
                    self.model.train()
            metrics = {f"{metric_key_prefix}_ndcg@10": ndcg}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return RankTrainer


def validation_ndcg(scorer: Any, lists: Sequence[RankList], k: int = 10) -> float:
    """Mean nDCG@k of ``scorer``'s rankings of ``lists`` against their ``labels`` (mmrank.evaluation)."""
    from ..evaluation import evaluate, parse_metrics

    qrels, run = {}, {}
    for rl in lists:
        if rl.labels is None:
            raise RecordError(f"{rl.where}: validation lists need 'labels' (graded relevance per candidate id)")
        qrels[rl.id] = dict(rl.labels)
        ranked = scorer.rank(rl.query(), rl.documents(), on_error="raise")
        n = len(ranked)
        # scores from positions: the ranking itself is what is evaluated (listwise scores are ranks)
        run[rl.id] = {r.document.id: float(n - pos) for pos, r in enumerate(ranked)}
    result = evaluate(qrels, run, parse_metrics([f"ndcg@{k}"]))
    return float(next(iter(result.means.values())))


# ---------------------------------------------------------------------------------------------- loading
def _load_scorer(kind: str, cfg: TrainConfig, window_size: int) -> Any:
    from ..scorers.listwise import ListwiseReranker
    from ..scorers.pairwise import PairwiseReranker

    common = dict(device=cfg.device, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, on_error="raise")
    if kind == "listwise":
        return ListwiseReranker(cfg.model, mode="single_pass", identifiers="letters", window_size=window_size,
                                step=max(1, window_size // 2), max_passage_words=cfg.max_passage_words, **common)
    return PairwiseReranker(cfg.model, **common)


def _check_8bit() -> None:
    if not torch.cuda.is_available():
        raise InputError("load_in_8bit (QLoRA) needs a CUDA GPU; none is available here")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise InputError("load_in_8bit (QLoRA) needs bitsandbytes: pip install 'mmrank[qlora]'") from None


def _wrap_peft(scorer: Any, cfg: TrainConfig, previous: str | None) -> Any:
    from peft import LoraConfig, PeftModel, get_peft_model

    vlm = scorer.vlm
    if vlm.is_adapter:
        raise InputError("train from a base model; pass a previous adapter as the curriculum's starting point")
    model = vlm.model
    if cfg.load_in_8bit:
        _check_8bit()
        from peft import prepare_model_for_kbit_training
        from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

        model = AutoModelForImageTextToText.from_pretrained(
            cfg.model, quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map={"": 0})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        vlm.model = model
    if previous:
        pm = PeftModel.from_pretrained(model, previous, is_trainable=True)
    else:
        pm = get_peft_model(model, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=_language_targets(model, cfg.target_modules),
            modules_to_save=list(cfg.modules_to_save) if cfg.modules_to_save else None, task_type="CAUSAL_LM"))
    vlm.model = pm
    return pm


def _language_targets(model: Any, names: Sequence[str]) -> list[str]:
    """Full module names of ``names`` inside the language model only (the vision tower stays frozen, as in
    jina-reranker-m0 and Rank-Nexus' LoRA on the LLM's attention)."""
    wanted = set(names)
    out = [n for n, _ in model.named_modules()
           if n.split(".")[-1] in wanted and "visual" not in n.split(".")]
    if not out:
        raise InputError(f"none of the LoRA target modules {sorted(wanted)} exist in the language model")
    return out


# ---------------------------------------------------------------------------------------------- stages
def _stage_records(stage: Stage) -> list[Any]:
    """The stage's training records, only those of its modality unless it is ``"any"``."""
    records = read_records(stage.train)  # type: ignore[arg-type]
    if stage.modality != "any":
        records = [r for r in records if r.modality == stage.modality]
        if not records:
            raise InputError(f"stage {stage.name!r}: no {stage.modality} records in {stage.train}")
    return records


def _examples(stage: Stage, cfg: TrainConfig, scorer: Any, records: list[Any],
              window: int) -> tuple[list[Any], Callable[[list[Any]], dict[str, Any]]]:
    """The stage's training examples and the collate function that encodes a batch of them."""
    if stage.kind == "listwise":
        return listwise_examples(records, window), lambda batch: encode_listwise(scorer, batch)
    return pairwise_examples(records, cfg.pairwise_top), lambda batch: encode_pairwise(scorer, batch)


def _training_arguments(stage: Stage, cfg: TrainConfig, ckpt_dir: Path, has_val: bool) -> Any:
    """``transformers.TrainingArguments`` of a stage: the stage's batch size, learning rate and length over the
    config's; bf16 on a CUDA device that supports it (unless set); best checkpoint by nDCG@10 with validation."""
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available() and (cfg.device in (None, "auto") or str(cfg.device).startswith("cuda"))
    bf16 = cfg.bf16 if cfg.bf16 is not None else (cuda and torch.cuda.is_bf16_supported())
    strategy = "steps" if cfg.eval_steps else "epoch"
    return TrainingArguments(
        output_dir=str(ckpt_dir), per_device_train_batch_size=stage.batch_size or cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=stage.learning_rate or cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio, num_train_epochs=stage.epochs,
        max_steps=stage.max_steps, weight_decay=cfg.weight_decay, logging_steps=cfg.logging_steps,
        eval_strategy=strategy if has_val else "no", save_strategy=strategy, eval_steps=cfg.eval_steps,
        save_steps=cfg.eval_steps, save_total_limit=cfg.save_total_limit, load_best_model_at_end=has_val,
        metric_for_best_model="ndcg@10" if has_val else None, greater_is_better=True,
        remove_unused_columns=False, report_to=[], bf16=bf16, use_cpu=not cuda,
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        seed=cfg.seed, dataloader_num_workers=0, disable_tqdm=True, **cfg.extra_args)


def train_stage(stage: Stage, cfg: TrainConfig, previous: str | None = None) -> Path:
    """Train one stage; return the folder of its adapter (``<output>/<stage>/adapter``)."""
    from transformers import EarlyStoppingCallback

    stage.check()
    records = _stage_records(stage)
    val = None
    if stage.val:
        val = _read_val(stage.val)
    window = min(cfg.window_size, max(len(r.candidates) for r in records))
    scorer = _load_scorer(stage.kind, cfg, window)
    model = _wrap_peft(scorer, cfg, previous)
    items, collate = _examples(stage, cfg, scorer, records, window)

    out_dir = Path(cfg.output_dir) / stage.name
    ckpt_dir = out_dir / "checkpoints"
    has_val = bool(val)
    args = _training_arguments(stage, cfg, ckpt_dir, has_val)
    callbacks = []
    if has_val and cfg.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    trainer = _trainer_class()(model=model, args=args, train_dataset=_ListDataset(items),
                               eval_dataset=_ListDataset(val or [None]), data_collator=collate,
                               callbacks=callbacks, mmrank_scorer=scorer, mmrank_kind=stage.kind,
                               mmrank_config=cfg, mmrank_val=val)
    resume = cfg.resume and ckpt_dir.is_dir() and any(ckpt_dir.glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    adapter = out_dir / "adapter"
    save_adapter(scorer, model, adapter, cfg, stage)
    (out_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    scorer.close()
    return adapter


def save_adapter(scorer: Any, model: Any, folder: Path, cfg: TrainConfig, stage: Stage) -> None:
    """The PEFT adapter plus the tokenizer / image processor files, so the folder loads by path."""
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(str(folder))
    scorer.vlm.tokenizer.save_pretrained(str(folder))
    scorer.vlm.processor.image_processor.save_pretrained(str(folder))
    with open(folder / "adapter_config.json", encoding="utf-8") as f:
        conf = json.load(f)
    conf["base_model_name_or_path"] = str(cfg.model)
    (folder / "adapter_config.json").write_text(json.dumps(conf, indent=2))
    marker = Path(str(cfg.model)) / "MMRANK_DUMMY"
    if marker.is_file():  # random-weights base: the adapter warns the same way when it is loaded
        shutil.copy(marker, folder / "MMRANK_DUMMY")
    info = {"stage": asdict(stage), "config": {k: v for k, v in asdict(cfg).items() if k != "extra_args"}}
    (folder / "mmrank_training.json").write_text(json.dumps(info, indent=2, default=str))


def _read_val(path: str) -> list[RankList]:
    """Validation lists: distilled records or plain input lists (both need ``labels``)."""
    try:
        lists: list[RankList] = list(read_records(path))
    except RecordError:
        lists = read_lists(path)
    for rl in lists:
        if rl.labels is None:
            raise RecordError(f"{rl.where}: validation lists need 'labels' (graded relevance per candidate id)")
    return lists


def train_curriculum(stages: Sequence[Stage], cfg: TrainConfig, *, start_adapter: str | None = None) -> Path:
    """Run the stages in order, each from the previous stage's adapter; return the last adapter folder."""
    if not stages:
        raise InputError("no stages to train")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise InputError(f"stage names must be unique, got {names}")
    for s in stages:
        s.check()
    previous = start_adapter
    for s in stages:
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        previous = str(train_stage(s, cfg, previous))
        logger.info("mmrank train: stage %s done -> %s", s.name, previous)
    return Path(previous)  # type: ignore[arg-type]


def merge_adapter(adapter: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Merge a trained adapter into its base model and save a plain checkpoint (loads like any model)."""
    from ..models.vlm import InstructVLM

    vlm = InstructVLM(str(adapter), device="cpu", dtype="float32")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vlm.model.save_pretrained(str(out))
    vlm.tokenizer.save_pretrained(str(out))
    vlm.processor.image_processor.save_pretrained(str(out))
    (out / "mmrank_merged_from.txt").write_text(str(Path(adapter).resolve()) + "\n")
    return out
