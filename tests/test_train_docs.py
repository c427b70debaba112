"""docs/training.md and the README's training section, as a user copies them: every `mmrank distill / select /
train / rank` command line in their code blocks parses (every flag exists, every value and --stage spec is
accepted), the input-list example is a valid list, and the synthetic walk-through runs as written (only its
sizes made smaller, each substitution checked to match the text)."""

import json
import re
import shlex
from pathlib import Path

import pytest

pytest.importorskip("peft")  # the train extra

from mmrank.cli import build_parser, main  # noqa: E402
from mmrank.train.cli import parse_stage  # noqa: E402
from mmrank.train.records import parse_list  # noqa: E402
from mmrank_testkit import tiny_model_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
# the README's training section
README = (ROOT / "README.md").read_text(encoding="utf-8").split("## Train your own listwise reranker", 1)[1]
README = README.split("\n## ", 1)[0]
TINY = "$(python -c 'from mmrank_testkit import tiny_model_dir; print(tiny_model_dir(\"lm\"))')"


def blocks(text, lang):
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def command_lines(block):
    """The `mmrank distill|select|train|rank` command lines of a bash block (continuations joined)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if re.match(r"\s*mmrank (distill|select|train|rank)\b", line)]


def commands(text):
    return [line for block in blocks(text, "bash") for line in command_lines(block)]


def test_the_docs_show_each_training_command():
    shown = {c.split()[1] for c in commands(DOCS)} | {c.split()[1] for c in commands(README)}
    assert shown == {"distill", "select", "train", "rank"}


@pytest.mark.parametrize("line", commands(DOCS) + commands(README))
def test_every_documented_command_parses(line):
    argv = shlex.split(line.replace(f'"{TINY}"', "/models/tiny"))[1:]
    args = build_parser().parse_args(argv)  # SystemExit(2) on an unknown flag or a refused value
    if argv[0] == "train":
        for spec in args.stage:
            parse_stage(spec, args.val, -1)  # kind, modality, epochs


def test_the_documented_input_list_is_valid():
    (example,) = [b for b in blocks(DOCS, "json") if '"candidates"' in b]
    rl = parse_list(json.loads(example), base_dir=Path("."), where="docs/training.md")
    assert [c.id for c in rl.candidates] == ["d1", "d2", "d3"] and rl.labels == {"d1": 2}


def _sub(text, old, new):
    assert old in text, f"the walk-through no longer contains {old!r}: update this test"
    return text.replace(old, new)


def test_the_synthetic_walk_through_runs_as_written(tmp_path, monkeypatch, capsys):
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the walk-through sets OMP_NUM_THREADS=1
    try:
        block = next(b for b in blocks(DOCS, "bash") if "python - <<'PY'" in b)
        script = block.split("python - <<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
        script = _sub(script, "n_train=260, n_val=12, n_test=30", "n_train=16, n_val=3, n_test=2")
        monkeypatch.chdir(tmp_path)
        exec(compile(script, "docs/training.md", "exec"), {})  # noqa: S102 - the documented snippet
        lines = command_lines(block)
        assert [c.split()[1] for c in lines] == ["select", "train", "rank"]
        select = _sub(_sub(lines[0], "--top-confidence 240", "--top-confidence 12"), "--k 200", "--k 8")
        train = _sub(_sub(lines[1], "--max-steps 150", "--max-steps 3"), f'"{TINY}"', str(tiny_model_dir("lm")))
        assert main(shlex.split(select)[1:]) == 0
        assert len(Path("syn/selected.jsonl").read_text().splitlines()) == 8
        capsys.readouterr()
        assert main(shlex.split(train)[1:]) == 0
        out = capsys.readouterr().out
        assert json.loads(out) == {"adapter": "syn/run/mixed/adapter"}  # the folder the rank line loads
        assert main(shlex.split(lines[2])[1:] + ["--json"]) == 0
        ranked = json.loads(capsys.readouterr().out)["results"]
        assert sorted(r["index"] for r in ranked) == [0, 1, 2]
    finally:
        torch.set_num_threads(n)


# ------------------------------------------------------------------------------- the claims of "What each step does"
def test_defaults_are_lora_r8_alpha8_on_the_language_models_qkvo_and_the_vision_tower_stays_frozen():
    from mmrank.train.trainer import TrainConfig, _load_scorer, _wrap_peft

    cfg = TrainConfig(model=str(tiny_model_dir("lm")), output_dir="unused", device="cpu")
    assert (cfg.lora_r, cfg.lora_alpha, cfg.learning_rate, cfg.lr_scheduler, cfg.warmup_ratio, cfg.batch_size,
            cfg.grad_accum, cfg.tau, cfg.lm_weight, cfg.gradient_checkpointing) == \
        (8, 8, 1e-5, "cosine", 0.03, 4, 4, 0.1, 0.1, True)
    scorer = _load_scorer("listwise", cfg, 3)
    model = _wrap_peft(scorer, cfg, None)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert all("visual" not in n.split(".") for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in trainable} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert {m.r["default"] for m in model.modules() if hasattr(m, "lora_A") and m.lora_A} == {8}


@pytest.mark.parametrize("kind", ["listwise", "pairwise"])
def test_training_uses_the_scorers_own_pixel_budget(kind):
    """"Images use the scorer's pixel budget": the pairwise stage used the listwise 256·28² budget while the
    pairwise scorer reads images at 768·28² — trained on one resolution, served at another."""
    from mmrank import ListwiseReranker, PairwiseReranker
    from mmrank.train.trainer import TrainConfig, _load_scorer

    cfg = TrainConfig(model=str(tiny_model_dir("lm")), output_dir="unused", device="cpu")
    trained = _load_scorer(kind, cfg, 3).vlm.processor
    served = {"listwise": ListwiseReranker, "pairwise": PairwiseReranker}[kind](cfg.model, device="cpu").vlm.processor
    assert (trained.min_pixels, trained.max_pixels) == (served.min_pixels, served.max_pixels)
