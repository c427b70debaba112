"""The mmrank command, run as a user runs it (a subprocess of the installed entry point)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mmrank_testkit import sample_image


def _run(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "mmrank.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_rank_json_mixes_text_files_and_images(jina_dir, tmp_path):
    img = tmp_path / "photo.png"
    sample_image(2).save(img)
    txt = tmp_path / "passage.txt"
    txt.write_text("pandas eat bamboo")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    res = _run("rank", "--query", "what do pandas eat?", "--model", str(jina_dir), "--device", "cpu", "--json",
               "an inline passage", str(txt), str(img), str(broken))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    results = out["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2, 3]
    assert results[-1]["index"] == 3 and results[-1]["relevance_score"] is None and "corrupt" in results[-1]["error"]
    scores = [r["relevance_score"] for r in results[:-1]]
    assert scores == sorted(scores, reverse=True)
    # --score-threshold keeps the scored documents at or above it, and still lists the unreadable one.
    res = _run("rank", "--query", "what do pandas eat?", "--model", str(jina_dir), "--device", "cpu", "--json",
               "--score-threshold", repr(scores[1]), "an inline passage", str(txt), str(img), str(broken))
    assert res.returncode == 0, res.stderr
    assert [r["index"] for r in json.loads(res.stdout)["results"]] == [r["index"] for r in results if
                                                                       r["relevance_score"] is None
                                                                       or r["relevance_score"] >= scores[1]]


def test_rank_table_and_top_n(jina_dir):
    res = _run("rank", "-q", "fox", "--model", str(jina_dir), "--device", "cpu", "--top-n", "2", "--quiet",
               "the quick brown fox", "stock markets", "bamboo")
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert lines[0].split() == ["rank", "score", "index", "document"]
    assert len(lines) == 3  # header + top 2


def test_missing_model_is_a_clear_error_not_a_traceback(tmp_path):
    # No hub here: a closed local port stands for it (the test never depends on the real hub).
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = _run("rank", "-q", "x", "--model", "nobody/no-such-model", "--device", "cpu", "doc",
               env_extra={"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path)})
    assert res.returncode == 1
    assert "mmrank: error:" in res.stderr and "hf download nobody/no-such-model" in res.stderr
    assert "huggingface-cli" not in res.stderr
    assert "Traceback" not in res.stderr


def test_listwise_single_pass_from_the_command_line(tmp_path):
    from mmrank_testkit import tiny_model_dir

    path = tiny_model_dir("lm", "qwen2_vl")
    docs = [f"passage number {i}" for i in range(7)]
    res = _run("rank", "-q", "passage", "--mode", "listwise", "--listwise-mode", "single_pass", "--window-size", "4",
               "--step", "2", "--model", str(path), "--device", "cpu", "--json", *docs)
    assert res.returncode == 0, res.stderr
    results = json.loads(res.stdout)["results"]
    assert sorted(r["index"] for r in results) == list(range(7))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 7  # rank scores, strictly monotone
