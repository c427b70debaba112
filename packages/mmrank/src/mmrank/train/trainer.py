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

import hashlib
import json
import logging
import math
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
        if not self.name or "/" in self.name or "\\" in self.name or self.name.startswith("."):
            raise InputError(f"stage name {self.name!r} must be a plain folder name")
        if not isinstance(self.max_steps, int) or isinstance(self.max_steps, bool) or not (
                self.max_steps == -1 or self.max_steps >= 1):
            raise InputError(f"stage {self.name!r}: max_steps must be >= 1 (or -1: train for `epochs`), got "
                             f"{self.max_steps!r}")
        if self.max_steps == -1 and not (isinstance(self.epochs, (int, float)) and math.isfinite(self.epochs)
                                         and self.epochs > 0):
            raise InputError(f"stage {self.name!r}: epochs must be a number > 0, got {self.epochs!r}")
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise InputError(f"stage {self.name!r}: learning_rate must be > 0, got {self.learning_rate!r}")
        if self.batch_size is not None and not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise InputError(f"stage {self.name!r}: batch_size must be >= 1, got {self.batch_size!r}")


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
    #: per-image pixel budget; None: the stage's scorer's own default (what inference uses), i.e. 56²..256·28²
    #: for listwise and 56²..768·28² (jina-reranker-m0's) for pairwise
    min_pixels: int | None = None
    max_pixels: int | None = None
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

    def check(self) -> None:
        """Refuse values that would fail deep inside transformers / peft, or train nothing."""
        def positive(name: str, integer: bool = True, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            ok = (isinstance(v, int) and not isinstance(v, bool)) if integer else (
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
            if not ok or v < 0 or (v == 0 and not allow_zero):
                raise InputError(f"{name} must be {'>= 0' if allow_zero else '> 0'}"
                                 f"{' (an integer)' if integer else ''}, got {v!r}")

        for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "pairwise_top"):
            positive(name)
        for name in ("learning_rate", "tau"):
            positive(name, integer=False)
        for name in ("rank_weight", "lm_weight", "weight_decay", "warmup_ratio", "lora_dropout"):
            positive(name, integer=False, allow_zero=True)
        if not isinstance(self.window_size, int) or self.window_size < 2:
            raise InputError(f"window_size must be an integer >= 2 (a window ranks at least 2 documents), got "
                             f"{self.window_size!r}")
        if self.rank_weight == 0 and self.lm_weight == 0:
            raise InputError("rank_weight and lm_weight are both 0: nothing to train")


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

    common: dict[str, Any] = dict(device=cfg.device, on_error="raise")
    if cfg.min_pixels is not None:
        common["min_pixels"] = cfg.min_pixels
    if cfg.max_pixels is not None:
        common["max_pixels"] = cfg.max_pixels
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
            modules_to_save=_modules_to_save(model, cfg.modules_to_save), task_type="CAUSAL_LM"))
    vlm.model = pm
    return pm


def _modules_to_save(model: Any, names: Sequence[str] | None) -> list[str] | None:
    """``names`` when each is the last part of some module's name (peft would silently train none of a name
    that matches nothing)."""
    if not names:
        return None
    have = {n.split(".")[-1] for n, _ in model.named_modules()}
    missing = [n for n in names if n not in have]
    if missing:
        raise InputError(f"modules_to_save: no module named {missing} in {type(model).__name__} (e.g. lm_head, "
                         "embed_tokens)")
    return list(names)


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
    """The stage's training records, only those of its modality unless it is ``"any"``; a listwise stage skips
    single-candidate lists (nothing to rank; counted in a warning). Every local image is opened first, so an
    unreadable one stops the stage before training, naming the record."""
    records = read_records(stage.train)  # type: ignore[arg-type]
    if stage.modality != "any":
        records = [r for r in records if r.modality == stage.modality]
        if not records:
            raise InputError(f"stage {stage.name!r}: no {stage.modality} records in {stage.train}")
    if stage.kind == "listwise":
        single = [r for r in records if len(r.candidates) < 2]
        if single:
            logger.warning("mmrank train: stage %s: skipped %d record(s) with a single candidate (nothing to "
                           "rank), the first at %s", stage.name, len(single), single[0].where)
            records = [r for r in records if len(r.candidates) >= 2]
            if not records:
                raise InputError(f"stage {stage.name!r}: every record in {stage.train} has a single candidate; "
                                 "a listwise stage needs lists of 2 or more")
    check_images_readable(records)
    return records


def check_images_readable(lists: Sequence[RankList]) -> None:
    """Open every local image of ``lists`` (header and integrity, not the pixels): a file that is not an image
    is a :class:`RecordError` naming the record, before hours of training rather than in the middle."""
    from PIL import Image

    seen: set[str] = set()
    for rl in lists:
        refs = [("query", rl.query_image)] + [(f"candidate {i} (id={c.id!r})", c.image)
                                               for i, c in enumerate(rl.candidates)]
        for what, ref in refs:
            path = rl.resolve(ref)
            if path is None or path.startswith(("http://", "https://")) or path in seen:
                continue
            try:
                with Image.open(path) as im:
                    im.verify()
            except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad file
                raise RecordError(f"{rl.where}: {what}: image file {path!r} cannot be read: "
                                  f"{exc.__class__.__name__}: {exc}") from None
            seen.add(path)


def _naming_the_record(encode: Callable[[list[Any]], dict[str, Any]]) -> Callable[[list[Any]], dict[str, Any]]:
    """``encode`` whose errors name the record at fault (a batch that fails is re-encoded one example at a
    time to find it; only on the error path)."""
    def collate(batch: list[Any]) -> dict[str, Any]:
        try:
            return encode(batch)
        except (InputError, OSError) as exc:
            if isinstance(exc, RecordError):
                raise
            for ex in batch:
                try:
                    encode([ex])
                except (InputError, OSError) as one:
                    raise RecordError(f"{ex.record.where}: {one}") from one
            raise

    return collate


def _examples(stage: Stage, cfg: TrainConfig, scorer: Any, records: list[Any],
              window: int) -> tuple[list[Any], Callable[[list[Any]], dict[str, Any]]]:
    """The stage's training examples and the collate function that encodes a batch of them."""
    if stage.kind == "listwise":
        return listwise_examples(records, window), _naming_the_record(lambda batch: encode_listwise(scorer, batch))
    return (pairwise_examples(records, cfg.pairwise_top),
            _naming_the_record(lambda batch: encode_pairwise(scorer, batch)))


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
        seed=cfg.seed, dataloader_num_workers=0, disable_tqdm=True, **_checkpointing_args(cfg), **cfg.extra_args)


def _checkpointing_args(cfg: TrainConfig) -> dict[str, Any]:
    """Gradient checkpointing under the name this transformers uses (``activation_checkpointing`` from 5.x,
    where ``gradient_checkpointing`` is deprecated)."""
    from transformers import TrainingArguments

    name = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
            else "gradient_checkpointing")
    return {name: cfg.gradient_checkpointing,
            f"{name}_kwargs": {"use_reentrant": False} if cfg.gradient_checkpointing else None}


def train_stage(stage: Stage, cfg: TrainConfig, previous: str | None = None, *, overwrite: bool = False) -> Path:
    """Train one stage; return the folder of its adapter (``<output>/<stage>/adapter``).

    ``<output>/<stage>/mmrank_stage.json`` records what the stage is trained from (base model, settings,
    a digest of its records, validation lists and starting adapter). A rerun with the same inputs skips a
    finished stage and resumes an interrupted one from its last complete checkpoint (a checkpoint torn by a
    kill while it was written is removed); a rerun with different inputs is refused, naming what changed,
    unless ``overwrite`` (then the stage folder is deleted and the stage trained afresh)."""
    from transformers import EarlyStoppingCallback

    stage.check()
    cfg.check()
    out_dir = Path(cfg.output_dir) / stage.name
    ckpt_dir = out_dir / "checkpoints"
    adapter = out_dir / "adapter"
    records = _stage_records(stage)
    val = None
    if stage.val:
        val = _read_val(stage.val)
        check_images_readable(val)
    identity = _stage_identity(stage, cfg, previous)
    length = {"max_steps": stage.max_steps, "epochs": stage.epochs}
    state = _prepare_stage_folder(out_dir, identity, overwrite=overwrite)
    if state is not None and state.get("finished") == length and (adapter / "adapter_config.json").is_file():
        logger.warning("mmrank train: stage %s is already trained in %s (same base, settings and data); "
                       "skipping it (--overwrite trains it again)", stage.name, out_dir)
        return adapter
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / STAGE_STATE, {"identity": identity, "finished": None})
    if not cfg.resume and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # a fresh start must not mix its checkpoints with an earlier run's
    resume_from = _last_complete_checkpoint(ckpt_dir)

    if previous:
        _check_start_adapter(previous, cfg.model)
    window = min(cfg.window_size, max(len(r.candidates) for r in records))
    scorer = _load_scorer(stage.kind, cfg, window)
    model = _wrap_peft(scorer, cfg, previous)
    items, collate = _examples(stage, cfg, scorer, records, window)

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
    if resume_from is not None:
        logger.warning("mmrank train: stage %s resumes from %s", stage.name, resume_from)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    save_adapter(scorer, model, adapter, cfg, stage)
    (out_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    scorer.close()
    _write_json(out_dir / STAGE_STATE, {"identity": identity, "finished": length})
    return adapter


#: the file in ``<output>/<stage>`` that says what the stage was trained from (resume / skip / refuse)
STAGE_STATE = "mmrank_stage.json"
#: settings a resumed stage may change: where it runs and how it logs, not what it learns
_RESUMABLE = ("output_dir", "device", "logging_steps", "resume", "save_total_limit", "early_stopping_patience")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def _digest(path: str | os.PathLike | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _model_ref(model: str) -> str:
    """A local model folder as its absolute path (the same model from another working folder, and what an
    adapter must name to load from anywhere); a hub id as it is."""
    return os.path.abspath(model) if os.path.isdir(model) else str(model)


def _stage_identity(stage: Stage, cfg: TrainConfig, previous: str | None) -> dict[str, Any]:
    """What a stage's checkpoints depend on: the base, the settings, the data and the starting adapter."""
    conf = {k: v for k, v in asdict(cfg).items() if k not in _RESUMABLE}
    conf["model"] = _model_ref(str(cfg.model))
    conf = json.loads(json.dumps(conf, sort_keys=True, default=str))
    st = {k: v for k, v in asdict(stage).items() if k not in ("max_steps", "epochs", "train", "val")}
    st["train"] = _digest(stage.train)
    st["val"] = _digest(stage.val)
    start = None
    if previous:
        weights = [p for p in sorted(Path(previous).glob("adapter_model.*")) if p.is_file()]
        start = _digest(weights[0]) if weights else os.path.abspath(previous)
    return {"config": conf, "stage": st, "start_adapter": start}


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def _prepare_stage_folder(out_dir: Path, identity: dict[str, Any], *, overwrite: bool) -> dict[str, Any] | None:
    """The stage folder's saved state when it belongs to this very stage; None when there is none (or it was
    deleted by ``overwrite``); an :class:`InputError` when it holds another run."""
    state_file = out_dir / STAGE_STATE
    ckpts = out_dir / "checkpoints"
    work = (ckpts.is_dir() and any(ckpts.iterdir())) or (out_dir / "adapter").is_dir()
    if not work:  # nothing trained here yet (at most the state of a run that stopped before its first step)
        return None
    if overwrite:
        shutil.rmtree(out_dir)
        return None
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        old = state["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{out_dir} holds checkpoints or an adapter but no readable {STAGE_STATE} (another tool, "
                         "or an older mmrank): use another --output, or --overwrite to train this stage afresh") from None
    diff = _differences(old, identity)
    if diff:
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise InputError(f"{out_dir} holds a run of this stage with other inputs ({shown}); use another --output, "
                         "or --overwrite to train this stage afresh")
    return state


def _last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` that was written to the end (the Trainer writes ``trainer_state.json``
    last); torn ones — a kill while saving — are deleted, so the resumed run can save that step again."""
    if not ckpt_dir.is_dir():
        return None
    found = []
    for p in ckpt_dir.glob("checkpoint-*"):
        step = p.name.split("-", 1)[1]
        if not p.is_dir() or not step.isdigit():
            continue
        if (p / "trainer_state.json").is_file():
            found.append((int(step), p))
        else:
            logger.warning("mmrank train: removing %s, a checkpoint left incomplete by an interrupted run", p)
            shutil.rmtree(p)
    return max(found)[1] if found else None


def _check_start_adapter(previous: str, model: str) -> None:
    from ..models.vlm import adapter_base, is_adapter_folder

    if not is_adapter_folder(previous):
        raise InputError(f"start adapter {previous!r} is not an adapter folder (no adapter_config.json)")
    base = adapter_base(previous)
    if _model_ref(base) != _model_ref(str(model)):
        logger.warning("mmrank train: the start adapter %s was trained on %s, not on %s", previous, base, model)


def save_adapter(scorer: Any, model: Any, folder: Path, cfg: TrainConfig, stage: Stage) -> None:
    """The PEFT adapter plus the tokenizer / image processor files, so the folder loads by path (from any
    working folder: a local base model is named by its absolute path)."""
    if folder.exists() and not (folder / "adapter_config.json").is_file():
        raise InputError(f"{folder} exists and is not an adapter folder; not overwriting it")
    tmp = folder.with_name(folder.name + ".partial")  # written whole, then moved in: a kill leaves no half adapter
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    scorer.vlm.tokenizer.save_pretrained(str(tmp))
    scorer.vlm.processor.image_processor.save_pretrained(str(tmp))
    with open(tmp / "adapter_config.json", encoding="utf-8") as f:
        conf = json.load(f)
    conf["base_model_name_or_path"] = _model_ref(str(cfg.model))
    (tmp / "adapter_config.json").write_text(json.dumps(conf, indent=2))
    marker = Path(str(cfg.model)) / "MMRANK_DUMMY"
    if marker.is_file():  # random-weights base: the adapter warns the same way when it is loaded
        shutil.copy(marker, tmp / "MMRANK_DUMMY")
    info = {"stage": asdict(stage), "config": {k: v for k, v in asdict(cfg).items() if k != "extra_args"}}
    (tmp / "mmrank_training.json").write_text(json.dumps(info, indent=2, default=str))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


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


def train_curriculum(stages: Sequence[Stage], cfg: TrainConfig, *, start_adapter: str | None = None,
                     overwrite: bool = False) -> Path:
    """Run the stages in order, each from the previous stage's adapter; return the last adapter folder. A rerun
    skips finished stages and resumes an interrupted one (see :func:`train_stage`)."""
    if not stages:
        raise InputError("no stages to train")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise InputError(f"stage names must be unique, got {names}")
    for s in stages:
        s.check()
    cfg.check()
    previous = start_adapter
    for s in stages:
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        previous = str(train_stage(s, cfg, previous, overwrite=overwrite))
        logger.info("mmrank train: stage %s done -> %s", s.name, previous)
    return Path(previous)  # type: ignore[arg-type]


MERGED_MARKER = "mmrank_merged_from.txt"


def merge_adapter(adapter: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Merge a trained adapter into its base model and save a plain checkpoint (loads like any model), in the
    base checkpoint's dtype. ``out`` must be new (or empty, or an earlier merge, which is replaced whole: no
    stale weight shard of it survives)."""
    from transformers import AutoConfig

    from ..models.vlm import InstructVLM, adapter_base

    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise InputError(f"--merge {out}: exists and is not a folder")
        if any(out.iterdir()) and not (out / MERGED_MARKER).is_file():
            raise InputError(f"--merge {out}: the folder exists and holds files that no earlier merge wrote; "
                             "give a new folder")
    base = adapter_base(str(adapter))
    dtype = getattr(AutoConfig.from_pretrained(base), "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    vlm = InstructVLM(str(adapter), device="cpu", dtype="float32")
    model = vlm.model
    if isinstance(dtype, torch.dtype) and dtype != torch.float32:
        model = model.to(dtype)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    vlm.tokenizer.save_pretrained(str(tmp))
    vlm.processor.image_processor.save_pretrained(str(tmp))
    (tmp / MERGED_MARKER).write_text(str(Path(adapter).resolve()) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
