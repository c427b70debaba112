"""mmrank distill / select / train on the command line, with real tiny models; the pairwise stage."""

import json

import pytest
import torch

pytest.importorskip("peft")  # the train extra

from mmrank import PairwiseReranker  # noqa: E402
from mmrank.cli import main  # noqa: E402
from mmrank.train.records import read_records  # noqa: E402
from mmrank.train.trainer import encode_pairwise, pairwise_examples  # noqa: E402
from mmrank_testkit import tiny_model_dir  # noqa: E402
from mmrank_testkit.synthetic import make_task, tiny_clip_dir  # noqa: E402


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("cli"), n_train=6, n_val=3, n_test=2, list_size=3, modality="any")


def test_distill_select_train_commands(task, tmp_path, capsys):
    lm = str(tiny_model_dir("lm"))
    records = tmp_path / "records.jsonl"
    args = ["distill", str(task.train), "-o", str(records), "--teacher-mode", "pairwise", "--teacher-model", lm,
            "--device", "cpu", "--quiet"]
    assert main(args) == 0
    first = records.read_text()
    recs = read_records(records)
    assert len(recs) == 6 and recs[0].teacher["class"] == "mmrank.scorers.pairwise.PairwiseReranker"
    assert all(0 <= r.confidence <= 1 for r in recs)
    assert main(args) == 0 and records.read_text() == first  # a rerun of a finished distillation adds nothing

    selected = tmp_path / "selected.jsonl"
    assert main(["select", str(records), "-o", str(selected), "--top-confidence", "5", "--k", "3",
                 "--clip-model", str(tiny_clip_dir(tmp_path / "clip"))]) == 0
    assert len(read_records(selected)) == 3

    out = tmp_path / "run"
    assert main(["train", "--model", lm, "--output", str(out), "--device", "cpu", "--max-steps", "2",
                 "--batch-size", "2", "--grad-accum", "1", "--lr", "1e-3", "--val", str(task.val),
                 "--no-gradient-checkpointing", "--stage", f"pairs:pairwise:any:{selected}"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    adapter = out / "pairs" / "adapter"
    assert result == {"adapter": str(adapter)}
    assert (adapter / "adapter_config.json").is_file() and (out / "pairs" / "log_history.json").is_file()
    hist = json.loads((out / "pairs" / "log_history.json").read_text())
    assert any("eval_ndcg@10" in h for h in hist)  # validated with the pairwise scorer + nDCG@10
    base = PairwiseReranker(lm, device="cpu")
    trained = PairwiseReranker(str(adapter), device="cpu")
    q, docs = recs[0].query(), recs[0].documents()
    assert trained.score(q, docs) != pytest.approx(base.score(q, docs), abs=1e-6)  # the adapter is applied


def test_bad_stage_and_records_fail_with_the_name(task, tmp_path, capsys):
    lm = str(tiny_model_dir("lm"))
    assert main(["train", "--model", lm, "--output", str(tmp_path), "--stage", "s1:pointwise:any:x.jsonl"]) == 2
    assert "stage 's1': unknown stage kind 'pointwise'" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    obj = json.loads(task.train.read_text().splitlines()[0])
    obj.update(id="r-1", teacher_permutation=[0, 1, 1])
    bad.write_text(json.dumps(obj) + "\n")
    assert main(["train", "--model", lm, "--output", str(tmp_path), "--stage", f"s1:listwise:any:{bad}"]) == 2
    assert "(id='r-1'): teacher_permutation [0, 1, 1] is not a permutation" in capsys.readouterr().err


def test_pairwise_training_loss_reads_the_pairwise_score(task, tmp_path):
    """−log P(yes) in training is the pairwise scorer's own score for the pair."""
    from mmrank.train.distill import distill
    from mmrank.train.loss import yes_no_loss

    recs = read_records(distill(task.oracle(), task.train, tmp_path / "r.jsonl", show_progress=False))
    scorer = PairwiseReranker(str(tiny_model_dir("lm")), device="cpu")
    exs = pairwise_examples(recs[:2], top=1)
    assert [e.label for e in exs] == [int(r.labels[c.id] > 0) for r in recs[:2] for c in r.candidates]
    batch = encode_pairwise(scorer, exs)
    with torch.no_grad():
        logits = scorer.vlm.model(**{k: v for k, v in batch.items() if k != "pair_labels"},
                                  logits_to_keep=1).logits[:, -1, :]
    p_yes = [scorer.score(e.record.query(), [e.record.documents()[e.index]])[0] for e in exs]
    expected = -sum(torch.log(torch.tensor(p if e.label else 1 - p)) for p, e in zip(p_yes, exs, strict=True)) / len(exs)
    assert float(yes_no_loss(logits, scorer.yes_id, scorer.no_id, batch["pair_labels"])) == \
        pytest.approx(float(expected), abs=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_8bit_qlora_without_cuda_is_a_clear_error(task, tmp_path, capsys):
    from mmrank.train.distill import distill

    recs = distill(task.oracle(), task.train, tmp_path / "r.jsonl", show_progress=False)
    assert main(["train", "--model", str(tiny_model_dir("lm")), "--output", str(tmp_path / "run"), "--device", "cpu",
                 "--load-in-8bit", "--stage", f"s:listwise:any:{recs}"]) == 2
    assert "load_in_8bit (QLoRA) needs a CUDA GPU" in capsys.readouterr().err
