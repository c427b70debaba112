"""``mmrank rank --input``: JSONL in / JSONL out through the real tiny pointwise model — mixed candidates,
schema errors that name the line, stdin/stdout with a progress bar, 1,000 candidates on one line, and resuming
after the run was killed (no query lost, none twice)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmrank.batch import load_requests, read_documents_file
from mmrank.cli import main
from mmrank.errors import InputError
from mmrank_testkit import sample_image


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_mixed_candidates_resolve_relative_images_and_match_the_library(jina_dir, jina_reranker, tmp_path,
                                                                        monkeypatch):
    (tmp_path / "pages").mkdir()
    sample_image(3).save(tmp_path / "pages" / "p1.png")
    rows = [
        {"id": "q1", "query": "what do pandas eat?", "metadata": {"split": "dev"},
         "candidates": ["pandas eat bamboo", {"id": "page", "image": "pages/p1.png"},
                        {"id": "both", "text": "Figure 1", "image": "pages/p1.png"},
                        {"id": "broken", "image": "pages/missing.png"}]},
        {"id": 7, "query": {"image": "pages/p1.png"}, "documents": [{"text": "a photo"}, "stock markets"],
         "top_n": 1},
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_jsonl(src, rows)
    monkeypatch.chdir("/")  # relative image paths are relative to the JSONL file, not the working directory
    assert main(["rank", "--input", str(src), "--output", str(out), "--model", str(jina_dir), "--device", "cpu",
                 "--quiet", "--return-documents"]) == 0
    got = _read_jsonl(out)
    assert [g["id"] for g in got] == ["q1", "7"]
    assert got[0]["metadata"] == {"split": "dev"}
    res = got[0]["results"]
    assert sorted(r["index"] for r in res) == [0, 1, 2, 3] and res[-1]["id"] == "broken"
    assert res[-1]["relevance_score"] is None and "document 3" in res[-1]["error"]
    from mmrank import Document

    expected = jina_reranker.rank("what do pandas eat?", [
        "pandas eat bamboo", Document(image=tmp_path / "pages" / "p1.png"),
        Document(text="Figure 1", image=tmp_path / "pages" / "p1.png")])
    assert [r["index"] for r in res[:3]] == [e.index for e in expected]
    assert [r["relevance_score"] for r in res[:3]] == pytest.approx([e.score for e in expected], abs=1e-6)
    assert res[0]["id"] == {0: "0", 1: "page", 2: "both"}[res[0]["index"]]
    assert len(got[1]["results"]) == 1  # the line's top_n


def test_stdin_to_stdout_with_a_progress_bar_on_stderr(jina_dir, monkeypatch, capsys):
    rows = [{"id": f"q{i}", "query": f"query {i}", "candidates": [f"passage {j}" for j in range(3)]}
            for i in range(3)]
    stdin = "\ufeff" + "".join(json.dumps(r) + "\n" for r in rows)  # a BOM is dropped
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8"))))
    assert main(["rank", "--input", "-", "--model", str(jina_dir), "--device", "cpu", "--top-n", "2"]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x["id"] for x in lines] == ["q0", "q1", "q2"] and all(len(x["results"]) == 2 for x in lines)
    assert "mmrank rank" in err and "9/9" in err and "3/3 queries" in err


def test_one_line_with_1000_candidates(jina_dir, tmp_path):
    cands = [{"id": f"d{i}", "text": f"passage {i} about {'pandas' if i % 3 else 'markets'}"} for i in range(1000)]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_jsonl(src, [{"id": "big", "query": "pandas", "candidates": cands}])
    t0 = time.monotonic()
    assert main(["rank", "-i", str(src), "-o", str(out), "--model", str(jina_dir), "--device", "cpu",
                 "--batch-size", "64", "--quiet"]) == 0
    elapsed = time.monotonic() - t0
    (got,) = _read_jsonl(out)
    ids = [r["id"] for r in got["results"]]
    assert sorted(ids) == sorted(c["id"] for c in cands)  # every candidate exactly once
    scores = [r["relevance_score"] for r in got["results"]]
    assert scores == sorted(scores, reverse=True)
    print(f"1,000 candidates in {elapsed:.1f} s")


# ---------------------------------------------------------------------------------------------- schema errors
BAD_LINES = [
    ("[1, 2]", "expected a JSON object"),
    ('{"query": "q", "candidates": ["a"], "extra": 1}', "unknown field"),
    ('{"query": "", "candidates": ["a"]}', "query is empty"),
    ('{"query": 5, "candidates": ["a"]}', "'query' must be"),
    ('{"query": {"txt": "q"}, "candidates": ["a"]}', "unknown field"),
    ('{"query": {}, "candidates": ["a"]}', "neither text nor image"),
    ('{"query": "q"}', "'candidates' must be a list"),
    ('{"query": "q", "candidates": "a"}', "'candidates' must be a list"),
    ('{"query": "q", "candidates": ["a"], "documents": ["b"]}', "not both"),
    ('{"query": "q", "candidates": [3]}', "candidate 0 must be"),
    ('{"query": "q", "candidates": [{"id": "x"}]}', "neither 'text' nor 'image'"),
    ('{"query": "q", "candidates": [{"text": 1}]}', "text must be a string"),
    ('{"query": "q", "candidates": [{"text": "a", "img": "x"}]}', "unknown field"),
    ('{"query": "q", "candidates": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}', "same id 'a'"),
    ('{"query": "q", "candidates": [{"text": "a", "image": ""}]}', "non-empty string"),
    ('{"query": "q", "candidates": ["a"], "top_n": -1}', "top_n"),
    ('{"id": true, "query": "q", "candidates": ["a"]}', "id must be"),
    ('{"query": "q", "candidates": ["a"]', "not valid JSON"),
]


@pytest.mark.parametrize("line, needle", BAD_LINES)
def test_bad_lines_name_the_line(tmp_path, line, needle):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "ok", "query": "q", "candidates": ["a"]}\n\n' + line + "\n")
    with pytest.raises(InputError, match=needle) as info:
        load_requests(str(src))
    assert f"{src}:3" in str(info.value)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=8)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obj=st.dictionaries(st.sampled_from(["id", "query", "candidates", "documents", "top_n", "metadata", "x"]),
                           json_values, max_size=5))
def test_any_json_line_is_accepted_or_refused_with_its_line_number(tmp_path, obj):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(obj) + "\n")
    try:
        _, _, _, ids, counts = load_requests(str(src))
    except InputError as exc:
        assert f"{src}:1" in str(exc)
    else:
        assert len(ids) == 1 and counts[ids[0]] == len(obj.get("candidates", obj.get("documents")))


def test_duplicate_query_ids_and_directories(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "query": "q", "candidates": ["a"]}\n{"id": "1", "query": "q", "candidates": []}\n')
    with pytest.raises(InputError, match="already used on line 1"):
        load_requests(str(src))
    with pytest.raises(InputError, match="is a directory"):
        load_requests(str(tmp_path))


def test_documents_file(tmp_path, jina_dir, capsys):
    f = tmp_path / "docs.jsonl"
    f.write_text('"pandas eat bamboo"\n{"id": "m", "text": "stock markets"}\n')
    docs = read_documents_file(str(f))
    assert [(d.id, d.text) for d in docs] == [("0", "pandas eat bamboo"), ("m", "stock markets")]
    assert main(["rank", "-q", "pandas", "--documents-file", str(f), "--model", str(jina_dir), "--device", "cpu",
                 "--json"]) == 0
    assert sorted(r["id"] for r in json.loads(capsys.readouterr().out)["results"]) == ["0", "m"]
    f.write_text('"a"\n{"id": "0", "text": "b"}\n')
    with pytest.raises(InputError, match="already used"):
        read_documents_file(str(f))


# ---------------------------------------------------------------------------------------------- resume
def test_resume_after_the_run_is_killed(jina_dir, jina_reranker, tmp_path, capsys):
    n = 24
    rows = [{"id": f"q{i:02d}", "query": f"question {i}", "candidates": [f"answer {i} {j}" for j in range(4)]}
            for i in range(n)]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_jsonl(src, rows)
    argv = ["rank", "-i", str(src), "-o", str(out), "--model", str(jina_dir), "--device", "cpu", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "mmrank", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    first = out.read_bytes()
    done_before = first.count(b"\n")
    assert 2 <= done_before < n
    with open(out, "ab") as f:  # what a kill in the middle of a write leaves behind
        f.write(b'{"id": "q23", "model": "x", "res')
    assert main(argv) == 0  # resume (in this process: the kill above was the real thing)
    err = capsys.readouterr().err
    assert "removed a half-written last line" in err
    assert f"resuming: {done_before} of {n} queries already in" in err
    got = _read_jsonl(out)
    assert [g["id"] for g in got] == [r["id"] for r in rows]  # all, once each, in input order
    assert out.read_bytes().startswith(first)  # what was there is kept as it was
    for g, row in zip(got, rows, strict=True):
        expected = jina_reranker.rank(row["query"], row["candidates"])
        assert [r["index"] for r in g["results"]] == [e.index for e in expected]
        assert [r["relevance_score"] for r in g["results"]] == pytest.approx([e.score for e in expected], abs=1e-6)
    # Run again: nothing left to do, nothing appended.
    assert main(argv) == 0 and "nothing to do" in capsys.readouterr().err
    assert _read_jsonl(out) == got


def test_resume_refuses_a_foreign_output_file(tmp_path, jina_dir, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_jsonl(src, [{"query": "q", "candidates": ["a"]}])
    out.write_text('{"something": "else"}\n')
    assert main(["rank", "-i", str(src), "-o", str(out), "--model", str(jina_dir), "--quiet"]) == 2
    assert "refusing to append" in capsys.readouterr().err
