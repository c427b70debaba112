"""Distillation records: schema, resume after a kill (same records, no duplicates), errors naming the record."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("peft")  # the train extra

from mmrank.train.distill import distill  # noqa: E402
from mmrank.train.records import RecordError, read_records  # noqa: E402
from mmrank_testkit.synthetic import OracleTeacher, make_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("task"), n_train=12, n_val=2, n_test=2, list_size=4, modality="any")


def test_records_hold_the_documented_fields(task, tmp_path):
    out = distill(task.oracle(), task.train, tmp_path / "r.jsonl", show_progress=False)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 12
    first = lines[0]
    assert set(first) == {"id", "hash", "query", "candidates", "teacher_permutation", "teacher_scores",
                          "confidence", "teacher", "labels"}
    assert first["teacher"] == {"model": "synthetic-oracle",
                                "class": "mmrank_testkit.synthetic.OracleTeacher"}
    for rec in lines:
        rel = [i for i, c in enumerate(rec["candidates"]) if rec["labels"][c["id"]] == 1]
        assert rec["teacher_permutation"][0] in rel           # the oracle puts the relevant one first
        assert sorted(rec["teacher_permutation"]) == list(range(4))
        assert rec["confidence"] == 1.0
        for c in rec["candidates"]:
            if c["image"] is not None:                         # references, relative to the records file
                assert not c["image"].startswith("data:") and len(c["image"]) < 200
                assert (tmp_path / c["image"]).is_file()
    recs = read_records(out)
    assert [r.id for r in recs] == [f"train-{i}" for i in range(12)]


_CHILD = """
import sys, time
sys.path.insert(0, {shared!r})
from mmrank_testkit.synthetic import OracleTeacher
from mmrank.train.distill import distill
import json
teacher = OracleTeacher(json.load(open({attrs!r})))
score = teacher._score_documents
teacher._score_documents = lambda q, docs: (time.sleep(0.4), score(q, docs))[1]  # slow, same identity
distill(teacher, {lists!r}, {out!r}, show_progress=False)
"""


def test_resume_after_kill_gives_identical_records(task, tmp_path):
    reference = distill(task.oracle(), task.train, tmp_path / "ref" / "r.jsonl", show_progress=False).read_text()
    out = tmp_path / "run" / "r.jsonl"
    code = _CHILD.format(shared=str(ROOT / "shared"), attrs=str(task.root / "attributes.json"),
                         lists=str(task.train), out=str(out))
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if out.exists() and out.read_text().count("\n") >= 3:
            break
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    partial = out.read_text().count("\n")
    assert 3 <= partial < 12, "the kill must land mid-run"
    with out.open("a") as f:
        f.write('{"id": "train-9", "hash": "sha')  # a torn last line, as a kill mid-write leaves
    seen = []
    distill(task.oracle(), task.train, out, show_progress=False, on_record=lambda r: seen.append(r.id))
    assert len(seen) == 12 - partial                        # only the missing lists were distilled
    assert out.read_text() == reference                     # same records, same order, no duplicate
    distill(task.oracle(), task.train, out, show_progress=False, on_record=lambda r: seen.append(r.id))
    assert out.read_text() == reference and len(seen) == 12 - partial  # a finished run is a no-op


def _write(path, objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


def test_bad_records_name_the_record(task, tmp_path):
    good = json.loads(distill(task.oracle(), task.train, tmp_path / "r.jsonl",
                              show_progress=False).read_text().splitlines()[0])
    bad = dict(good, id="q-bad", teacher_permutation=[0, 0, 2, 3])
    with pytest.raises(RecordError, match=r"line 2 \(id='q-bad'\).*not a permutation"):
        read_records(_write(tmp_path / "a.jsonl", [good, bad]))
    missing = json.loads(json.dumps(good))
    missing["id"] = "q-missing"
    missing["candidates"][1]["image"] = "images/nope.png"
    missing.pop("hash")
    with pytest.raises(RecordError, match=r"id='q-missing'.*candidate 1 .*nope.png.*does not exist"):
        read_records(_write(tmp_path / "b.jsonl", [missing]))
    inline = json.loads(json.dumps(good))
    inline["id"] = "q-inline"
    inline["candidates"][0]["image"] = "data:image/png;base64,iVBORw0KGgo="
    with pytest.raises(RecordError, match=r"q-inline.*inline image data is not allowed"):
        read_records(_write(tmp_path / "c.jsonl", [inline]))
    edited = dict(good, query={"text": "blue", "image": None})
    with pytest.raises(RecordError, match=r"content hash .* does not match"):
        read_records(_write(tmp_path / "d.jsonl", [edited]))
    (tmp_path / "e.jsonl").write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(RecordError, match=r"e.jsonl line 2: not valid JSON"):
        read_records(tmp_path / "e.jsonl")


def test_distill_refuses_missing_images_before_calling_the_teacher(task, tmp_path):
    obj = json.loads(task.train.read_text().splitlines()[0])
    obj["id"] = "lst-7"
    obj["candidates"][0]["image"] = "images/missing.png"
    lists = _write(task.root / "bad-lists.jsonl", [obj])
    calls = []

    class Counting(OracleTeacher):
        def _score_documents(self, q, docs):
            calls.append(1)
            return super()._score_documents(q, docs)

    with pytest.raises(RecordError, match=r"id='lst-7'.*missing.png.*does not exist"):
        distill(Counting(task.attributes), lists, tmp_path / "r.jsonl", show_progress=False)
    assert not calls


def test_unknown_stage_kind_is_named():
    from mmrank.train.trainer import Stage

    with pytest.raises(Exception, match=r"stage 'warmup': unknown stage kind 'pointwise'"):
        Stage("warmup", kind="pointwise", train="x.jsonl").check()
    with pytest.raises(Exception, match=r"stage 's2': unknown modality 'video'"):
        Stage("s2", kind="listwise", modality="video", train="x.jsonl").check()
