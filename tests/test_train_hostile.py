"""The training commands as a user runs them, fed hostile input: every bad record is refused with the file,
the line and what is wrong (exit status 2, no traceback, nothing trained on it); bad options are refused
before anything loads; an existing output folder is resumed, skipped or refused — never silently mixed;
an interrupted stage resumes from its last complete checkpoint; the adapter loads from any working folder.
Paths hold spaces and non-ASCII characters throughout."""

import copy
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("peft")  # the train extra

from mmrank import ListwiseReranker  # noqa: E402
from mmrank.cli import main  # noqa: E402
from mmrank.train.cli import parse_stage  # noqa: E402
from mmrank.train.distill import distill  # noqa: E402
from mmrank.train.records import read_records  # noqa: E402
from mmrank_testkit import tiny_model_dir  # noqa: E402
from mmrank_testkit.synthetic import make_task  # noqa: E402

LM = tiny_model_dir("lm")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "my runs ü 日本"
    t = make_task(root / "task", n_train=6, n_val=2, n_test=1, list_size=3, modality="mixed")
    distill(t.oracle(), t.train, root / "records.jsonl", show_progress=False)
    return {"root": root, "task": t, "records": root / "records.jsonl",
            "lines": (root / "records.jsonl").read_text(encoding="utf-8").splitlines()}


def _bad(obj, **change):
    o = copy.deepcopy(obj)
    o.pop("hash")
    o["id"] = "bad-1"
    if "candidates" in change:
        o.pop("labels", None)
    o.update(change)
    return o


TWO_TEXTS = [{"id": "x", "text": "a"}, {"id": "y", "text": "b"}]

# (name, what to put on line 3, what the message must say)
BAD_LINES = [
    ("bad json", lambda o: '{"id": "bad-1", "query": ', "not valid JSON"),
    ("json array", lambda o: "[1, 2, 3]", "must be a JSON object, got list"),
    ("missing query", lambda o: {k: v for k, v in _bad(o).items() if k != "query"}, "'query' must be a string"),
    ("missing candidates", lambda o: {k: v for k, v in _bad(o).items() if k != "candidates"},
     "'candidates' must be a non-empty list"),
    ("missing permutation", lambda o: {k: v for k, v in _bad(o).items() if k != "teacher_permutation"},
     "teacher_permutation None is not a permutation"),
    ("permutation of strings", lambda o: _bad(o, teacher_permutation=[0, "1", 2]), "is not a permutation"),
    ("permutation with null", lambda o: _bad(o, teacher_permutation=[None, 1, 2]), "is not a permutation"),
    ("permutation nested", lambda o: _bad(o, teacher_permutation=[[0], 1, 2]), "is not a permutation"),
    ("permutation repeats", lambda o: _bad(o, teacher_permutation=[0, 0, 1]), "is not a permutation"),
    ("permutation too short", lambda o: _bad(o, teacher_permutation=[0, 1]), "is not a permutation"),
    ("permutation outside", lambda o: _bad(o, teacher_permutation=[0, 1, 3]), "is not a permutation"),
    ("permutation against scores", lambda o: _bad(o, teacher_permutation=[2, 1, 0], teacher_scores=[1.0, 0.5, 0.0]),
     "does not rank teacher_scores best first"),
    ("NaN score", lambda o: _bad(o, teacher_scores=[float("nan"), 0.0, 0.0]), "finite numbers"),
    ("infinite score", lambda o: _bad(o, teacher_scores=[float("inf"), 0.0, 0.0]), "finite numbers"),
    ("score as text", lambda o: _bad(o, teacher_scores=["1", 0.0, 0.0]), "finite numbers"),
    ("NaN confidence", lambda o: _bad(o, confidence=float("nan")), "confidence must be a finite number"),
    ("candidate id null", lambda o: _bad(o, candidates=[{"id": None, "text": "a"}] + TWO_TEXTS),
     "candidate 0: id must be a non-empty string or an integer, got None"),
    ("candidate id list", lambda o: _bad(o, candidates=[{"id": [1], "text": "a"}] + TWO_TEXTS),
     "id must be a non-empty string or an integer"),
    ("candidate id bool", lambda o: _bad(o, candidates=[{"id": True, "text": "a"}] + TWO_TEXTS),
     "id must be a non-empty string or an integer"),
    ("duplicate candidate ids", lambda o: _bad(o, candidates=[{"id": "x", "text": "c"}] + TWO_TEXTS),
     "candidate ids must be unique, repeated: ['x']"),
    ("label for an unknown id", lambda o: _bad(o, labels={"nope": 1}), "labels name unknown candidate id(s) ['nope']"),
    ("empty candidates", lambda o: _bad(o, candidates=[], teacher_permutation=[], teacher_scores=[]),
     "'candidates' must be a non-empty list"),
    ("candidate without content", lambda o: _bad(o, candidates=[{"id": "e", "text": ""}] + TWO_TEXTS),
     "has neither text nor image"),
    ("text of wrong type", lambda o: _bad(o, candidates=[{"id": "e", "text": 5}] + TWO_TEXTS),
     "text must be a string, got int"),
    ("lone surrogate", lambda o: _bad(o, query="red \ud800"), "lone surrogate U+D800"),
    ("misspelt field", lambda o: dict(_bad(o), label={"d0": 1}), "unknown field(s) ['label']"),
    ("missing image file", lambda o: _bad(o, candidates=[{"id": "i", "image": "nowhere.png"}] + TWO_TEXTS),
     "image file"),
    ("inline image", lambda o: _bad(o, candidates=[{"id": "i", "image": "data:image/png;base64,AAAA"}] + TWO_TEXTS),
     "inline image data is not allowed"),
    ("edited record", lambda o: dict(o, query={"text": "something blue", "image": None}),
     "does not match the record's query and candidates"),
    ("duplicate record id", lambda o: dict(o, id="train-0"), "duplicate record id 'train-0'"),
]


def _write_with_bad_line(task, tmp_path, make):
    lines = task["lines"][:2]
    obj = json.loads(task["lines"][2])
    bad = make(obj)
    # records name their images relative to their own folder: keep the file beside the good records
    path = task["root"] / f"bad {tmp_path.name}.jsonl"
    path.write_text("\n".join(lines + [bad if isinstance(bad, str) else json.dumps(bad)]) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("name, make, what", BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_a_bad_record_stops_select_naming_file_line_and_what(task, tmp_path, capsys, name, make, what):
    path = _write_with_bad_line(task, tmp_path, make)
    out = tmp_path / "selected.jsonl"
    assert main(["select", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path} line 3" in err and what in err, err
    assert "Traceback" not in err and not out.exists()


def test_non_utf8_bytes_are_named_by_line(task, tmp_path, capsys):
    path = task["root"] / "latin1.jsonl"
    path.write_bytes("\n".join(task["lines"][:1]).encode() + b'\n{"id": "caf\xe9"}\n')
    assert main(["select", str(path), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert f"{path} line 2: not UTF-8 text (byte 0xe9" in capsys.readouterr().err
    bom = task["root"] / "bom.jsonl"   # a byte-order mark (Windows editors) is fine
    bom.write_bytes(b"\xef\xbb\xbf" + "\n".join(task["lines"]).encode() + b"\n")
    assert main(["select", str(bom), "-o", str(tmp_path / "o.jsonl")]) == 0
    assert len(read_records(tmp_path / "o.jsonl")) == len(task["lines"])


@pytest.mark.parametrize("name", ["permutation of strings", "NaN score", "misspelt field", "missing image file"])
def test_train_refuses_bad_records_before_loading_the_model(task, tmp_path, capsys, name):
    make, what = next((m, w) for n, m, w in BAD_LINES if n == name)
    path = _write_with_bad_line(task, tmp_path, make)
    # a model that does not exist: the records must be refused first (exit 2, not the model's exit 1)
    assert main(["train", "--model", str(tmp_path / "no model"), "--output", str(tmp_path / "run"),
                 "--stage", f"s:listwise:any:{path}"]) == 2
    err = capsys.readouterr().err
    assert f"{path} line 3" in err and what in err, err
    assert not (tmp_path / "run" / "s" / "adapter").exists()


def test_an_image_file_that_is_not_an_image_is_refused_before_training(task, tmp_path, capsys):
    fake = task["root"] / "task" / "images" / "not a picture ü.png"
    fake.write_bytes(b"GIF89a but not really")
    obj = json.loads(task["lines"][2])
    obj.pop("hash")
    obj["candidates"][1]["image"] = os.path.relpath(fake, task["root"])
    path = task["root"] / "fake image.jsonl"
    path.write_text("\n".join(task["lines"][:2] + [json.dumps(obj, ensure_ascii=False)]) + "\n", encoding="utf-8")
    assert main(["train", "--model", str(tmp_path / "no model"), "--output", str(tmp_path / "run"),
                 "--stage", f"s:listwise:any:{path}"]) == 2
    err = capsys.readouterr().err
    assert f"{path} line 3 (id='train-2'): candidate 1" in err and "cannot be read" in err, err


def test_distill_refuses_bad_lists_before_loading_the_teacher(task, tmp_path, capsys):
    lists = task["task"].train.read_text(encoding="utf-8").splitlines()
    bad = json.loads(lists[1])
    bad["candidates"][0]["id"] = None
    path = task["root"] / "task" / "bad lists.jsonl"
    path.write_text("\n".join([lists[0], json.dumps(bad)]) + "\n", encoding="utf-8")
    assert main(["distill", str(path), "-o", str(tmp_path / "r.jsonl"), "--teacher-mode", "pairwise",
                 "--teacher-model", str(tmp_path / "no model"), "--quiet"]) == 2
    assert f"{path} line 2 (id='train-1'): candidate 0: id must be" in capsys.readouterr().err


@pytest.mark.parametrize("argv, what", [
    (["distill", "L", "-o", "O", "--concurrency", "0"], "--concurrency: must be >= 1"),
    (["select", "R", "-o", "O", "--top-confidence", "-1"], "--top-confidence: must be >= 1"),
    (["select", "R", "-o", "O", "--k", "0"], "--k: must be >= 1"),
    (["select", "R", "-o", "O", "--min-similarity", "nan"], "not a finite number"),
    (["select", "R", "-o", "O", "--min-similarity", "2"], "between -1 and 1"),
    (["train", "--model", "M", "--output", "O", "--stage", "a:listwise:any:R", "--batch-size", "0"], "must be >= 1"),
    (["train", "--model", "M", "--output", "O", "--stage", "a:listwise:any:R", "--grad-accum", "0"], "must be >= 1"),
    (["train", "--model", "M", "--output", "O", "--stage", "a:listwise:any:R", "--lora-r", "0"], "must be >= 1"),
    (["train", "--model", "M", "--output", "O", "--stage", "a:listwise:any:R", "--lr=-1e-5"], "must be > 0"),
    (["train", "--model", "M", "--output", "O", "--stage", "a:listwise:any:R", "--tau", "0"], "must be > 0"),
    (["train", "--model", "M", "--output", "O", "--stage", "a:listwise:any:R", "--lm-weight", "-1"], "must be >= 0"),
    (["train", "--model", "M", "--output", "O", "--stage", "a:listwise:any:R", "--window-size", "1"],
     "at least 2 documents"),
    (["train", "--model", "M", "--output", "O", "--stage", "a:listwise:any:R", "--max-steps", "0"], "must be >= 1"),
])
def test_bad_options_are_usage_errors(argv, what, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and what in capsys.readouterr().err


def test_select_and_distill_option_mistakes_are_one_line(task, tmp_path, capsys):
    assert main(["select", str(task["records"]), "-o", str(tmp_path / "o.jsonl"), "--k", "2"]) == 2
    assert "--k and --min-similarity need --clip-model" in capsys.readouterr().err
    assert main(["select", str(task["records"]), "-o", str(tmp_path)]) == 2
    assert "is a folder; give the JSONL file" in capsys.readouterr().err
    assert main(["select", str(tmp_path), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "is a folder, not a JSONL file" in capsys.readouterr().err


@pytest.mark.parametrize("spec, what", [
    ("s:listwise:any:R.jsonl:-1", "epochs must be a number > 0"),
    ("s:listwise:any:R.jsonl:0", "epochs must be a number > 0"),
    ("s:listwise:any:R.jsonl:nan", "epochs must be a number > 0"),
    ("s:listwise:any:R.jsonl:abc", "is not a number of epochs"),
    ("s:listwise:any", "expected NAME:KIND:MODALITY:RECORDS"),
    ("s:listwise:any:", "expected NAME:KIND:MODALITY:RECORDS"),
    ("s:pointwise:any:R.jsonl", "unknown stage kind"),
    ("s:listwise:video:R.jsonl", "unknown modality"),
])
def test_bad_stage_specs(spec, what, capsys, tmp_path):
    assert main(["train", "--model", "M", "--output", str(tmp_path), "--stage", spec]) == 2
    assert what in capsys.readouterr().err


def test_stage_records_path_may_hold_colons(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a:b.jsonl").write_text("")
    assert parse_stage("s:listwise:any:a:b.jsonl", None, -1).train == "a:b.jsonl"
    st = parse_stage("s:listwise:any:a:b.jsonl:2", None, -1)
    assert (st.train, st.epochs) == ("a:b.jsonl", 2.0)


# ------------------------------------------------------------------------------------------------- training
def _train_argv(out, records, *extra, model=str(LM)):
    return ["train", "--model", model, "--output", str(out), "--device", "cpu", "--max-steps", "2",
            "--batch-size", "2", "--grad-accum", "1", "--window-size", "3", "--no-gradient-checkpointing",
            "--stage", f"first:listwise:any:{records}", *extra]


@pytest.fixture
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_output_folder_reruns_skip_refuse_overwrite_and_the_adapter_loads_anywhere(task, tmp_path, capsys, caplog,
                                                                                   monkeypatch, one_thread):
    # one single-candidate record among the others: a listwise stage skips it, and says so
    single = json.loads(task["lines"][0])
    single.pop("hash")
    single.update(id="single", candidates=single["candidates"][:1], teacher_permutation=[0],
                  teacher_scores=single["teacher_scores"][:1], labels=None)
    records = task["root"] / "records + single.jsonl"
    records.write_text("\n".join(task["lines"] + [json.dumps(single)]) + "\n", encoding="utf-8")
    out = task["root"] / "run ü"
    monkeypatch.chdir(LM.parent)  # --model as a path relative to the working folder
    assert main(_train_argv(out, records, model=LM.name)) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1  # stdout: the result line only (the Trainer's logs go to stderr)
    adapter = Path(json.loads(captured.out)["adapter"])
    assert adapter == out / "first" / "adapter"
    assert "skipped 1 record(s) with a single candidate" in caplog.text and "(id='single')" in caplog.text
    conf = json.loads((adapter / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == str(LM)  # absolute: loads from any working folder

    monkeypatch.chdir(tmp_path)
    rl = read_records(task["records"])[0]
    ranked = ListwiseReranker(str(adapter), mode="single_pass", window_size=3, step=1, device="cpu").rank(
        rl.query(), rl.documents())
    assert sorted(r.index for r in ranked) == [0, 1, 2]

    weights = adapter / "adapter_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    caplog.clear()
    assert main(_train_argv(out, records)) == 0  # same run again (the model now named absolutely): skipped
    assert "already trained" in caplog.text and weights.stat().st_mtime_ns == stamp
    capsys.readouterr()

    assert main(_train_argv(out, records, "--lora-r", "4")) == 2  # other settings: refused, not mixed
    err = capsys.readouterr().err
    assert "holds a run of this stage with other inputs (config.lora_r: 8 -> 4)" in err and "--overwrite" in err
    assert weights.stat().st_mtime_ns == stamp

    edited = task["root"] / "records edited.jsonl"
    edited.write_text("\n".join(task["lines"][:-1]) + "\n", encoding="utf-8")
    assert main(_train_argv(out, edited)) == 2  # other data under the same stage name: refused too
    assert "stage.train: 'sha256:" in capsys.readouterr().err

    assert main(_train_argv(out, records, "--lora-r", "4", "--overwrite")) == 0
    capsys.readouterr()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4


def test_an_interrupted_stage_resumes_from_its_last_complete_checkpoint(task, tmp_path, capsys, caplog, monkeypatch,
                                                                        one_thread):
    import mmrank.train.trainer as trainer_mod

    out = tmp_path / "run"
    argv = ["train", "--model", str(LM), "--output", str(out), "--device", "cpu", "--max-steps", "5",
            "--batch-size", "2", "--grad-accum", "1", "--window-size", "3", "--no-gradient-checkpointing",
            "--stage", f"first:listwise:any:{task['records']}"]
    original = trainer_mod._trainer_class

    def interrupting():
        cls = original()

        class Interrupted(cls):
            def training_step(self, *a, **kw):
                if self.state.global_step == 4:  # after the checkpoint of epoch 1 (3 steps): Ctrl-C
                    raise KeyboardInterrupt
                return super().training_step(*a, **kw)

        return Interrupted

    monkeypatch.setattr(trainer_mod, "_trainer_class", interrupting)
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    ckpts = out / "first" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-3"]
    assert not (out / "first" / "adapter").exists()
    torn = ckpts / "checkpoint-4"  # what a kill while saving leaves: weights, no trainer_state.json
    torn.mkdir()
    (torn / "adapter_model.safetensors").write_bytes(b"\0" * 10)

    monkeypatch.setattr(trainer_mod, "_trainer_class", original)
    caplog.clear()
    assert main(argv) == 0
    assert "removing" in caplog.text and "checkpoint-4, a checkpoint left incomplete" in caplog.text
    assert "resumes from" in caplog.text and "checkpoint-3" in caplog.text
    state = json.loads((ckpts / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    assert (out / "first" / "adapter" / "adapter_config.json").is_file()


def test_merge_refuses_a_foreign_folder_and_replaces_an_earlier_merge(task, tmp_path, capsys, one_thread):
    from mmrank.train.trainer import merge_adapter

    out = tmp_path / "run"
    assert main(_train_argv(out, task["records"])) == 0
    adapter = Path(json.loads(capsys.readouterr().out)["adapter"])
    foreign = tmp_path / "my model"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    from mmrank.errors import InputError

    with pytest.raises(InputError, match="holds files that no earlier merge wrote"):
        merge_adapter(adapter, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    merged = tmp_path / "merged ü"
    merge_adapter(adapter, merged)
    (merged / "model-00002-of-00002.safetensors").write_bytes(b"stale")  # left by an earlier, bigger merge
    merge_adapter(adapter, merged)
    assert not (merged / "model-00002-of-00002.safetensors").exists()
    rl = read_records(task["records"])[0]
    a = ListwiseReranker(str(adapter), mode="single_pass", window_size=3, step=1, device="cpu").score(rl.query(), rl.documents())
    b = ListwiseReranker(str(merged), mode="single_pass", window_size=3, step=1, device="cpu").score(rl.query(), rl.documents())
    assert a == b


def test_select_names_the_record_whose_image_cannot_be_read(task, tmp_path, capsys):
    from mmrank_testkit.synthetic import tiny_clip_dir

    fake = task["root"] / "task" / "images" / "truncated ü.png"
    good_png = next((task["root"] / "task" / "images").glob("*-*-*.png")).read_bytes()
    fake.write_bytes(good_png[:60])  # a PNG header, then nothing
    obj = json.loads(task["lines"][1])
    obj.pop("hash")
    obj["candidates"][2]["image"] = os.path.relpath(fake, task["root"])
    path = task["root"] / "truncated image.jsonl"
    path.write_text("\n".join([task["lines"][0], json.dumps(obj, ensure_ascii=False)]) + "\n", encoding="utf-8")
    assert main(["select", str(path), "-o", str(tmp_path / "o.jsonl"), "--k", "1",
                 "--clip-model", str(tiny_clip_dir(tmp_path / "clip"))]) == 2
    err = capsys.readouterr().err
    assert f"{path} line 2 (id='train-1'): " in err and "Traceback" not in err, err


def test_distill_refuses_an_input_list_whose_id_the_output_holds_for_other_content(task, tmp_path):
    from mmrank.train.records import RecordError

    lists = task["task"].train.read_text(encoding="utf-8").splitlines()
    src = task["root"] / "task" / "two lists.jsonl"
    src.write_text("\n".join(lists[:2]) + "\n", encoding="utf-8")
    out = tmp_path / "records.jsonl"
    distill(task["task"].oracle(), src, out, show_progress=False)
    edited = json.loads(lists[1])
    edited["query"] = "blue"  # same id, other content: appending would leave two records 'train-1'
    src.write_text("\n".join([lists[0], json.dumps(edited)]) + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"line 2 \(id='train-1'\): .* already holds a record with this id"):
        distill(task["task"].oracle(), src, out, show_progress=False)
    assert len(read_records(out)) == 2


def test_a_single_candidate_list_is_not_the_most_confident(task, tmp_path):
    """A list of one has no ranking to be confident about: it used to get confidence 1.0, the maximum, so
    `--top-confidence` kept exactly the lists a listwise stage cannot learn from."""
    from mmrank.train.select import select_records

    lists = [json.loads(x) for x in task["task"].train.read_text(encoding="utf-8").splitlines()[:3]]
    lists[0]["candidates"] = lists[0]["candidates"][:1]
    lists[0]["labels"] = {lists[0]["candidates"][0]["id"]: 1}
    src = task["root"] / "task" / "with a single.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lists), encoding="utf-8")
    recs = read_records(distill(task["task"].oracle(), src, tmp_path / "r.jsonl", show_progress=False))
    assert recs[0].confidence == 0.0 and all(r.confidence == 1.0 for r in recs[1:])
    assert [r.id for r in select_records(recs, top_confidence=2)] == [recs[1].id, recs[2].id]


def test_output_may_not_be_the_input(task, tmp_path, capsys):
    copy_of = tmp_path / "records.jsonl"
    copy_of.write_text(task["records"].read_text(encoding="utf-8"), encoding="utf-8")
    before = copy_of.read_bytes()
    assert main(["select", str(copy_of), "-o", str(copy_of), "--top-confidence", "1"]) == 2
    assert "is the input file" in capsys.readouterr().err and copy_of.read_bytes() == before
    assert main(["distill", str(copy_of), "-o", str(copy_of), "--teacher-model", "unused"]) == 2
    assert "is the input file" in capsys.readouterr().err and copy_of.read_bytes() == before


def test_any_json_value_in_any_field_is_a_record_error_or_a_record(tmp_path):
    """Fuzz: whatever JSON sits in whichever record field, parsing ends in a Record or a RecordError that
    names the line — never another exception (a permutation of nulls was a TypeError traceback)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from mmrank.train.records import RECORD_FIELDS, Record, RecordError, parse_record

    scalars = st.none() | st.booleans() | st.integers(-3, 5) | st.floats(allow_nan=True) | st.text(max_size=6)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.sampled_from(["id", "text", "image", "d0", "x"]), inner, max_size=3),
                          max_leaves=10)
    good = {"id": "r", "query": {"text": "red", "image": None},
            "candidates": [{"id": "d0", "text": "a"}, {"id": "d1", "text": "b"}],
            "teacher_permutation": [1, 0], "teacher_scores": [0.0, 1.0], "confidence": 1.0, "teacher": {}}

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.dictionaries(st.sampled_from(RECORD_FIELDS + ("extra",)), values, max_size=4))
    def check(change):
        obj = {**good, **change}
        try:
            rec = parse_record(json.loads(json.dumps(obj)), base_dir=tmp_path, where="f.jsonl line 7")
        except RecordError as exc:
            assert str(exc).startswith("f.jsonl line 7")
        else:
            assert isinstance(rec, Record) and sorted(rec.teacher_permutation) == list(range(len(rec.candidates)))

    check()


def test_loading_the_training_output_folder_points_at_the_adapter(tmp_path):
    """A user passing `--output` (not `<output>/<stage>/adapter`) to a scorer is told to `hf download` a
    local folder; the error should name the adapter folder(s) inside it."""
    from mmrank.errors import ModelLoadError

    out = tmp_path / "runs" / "mine"
    (out / "mixed" / "adapter").mkdir(parents=True)
    (out / "mixed" / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(LM)}))
    with pytest.raises(ModelLoadError) as exc:
        ListwiseReranker(str(out), device="cpu")
    assert "mixed/adapter" in str(exc.value) and "hf download" not in str(exc.value)
