"""The recipe with a chat-served teacher, as docs/training.md runs it: `mmrank distill --teacher-mode chat
--url ...` against an OpenAI-compatible engine on 127.0.0.1 (the test kit's fake server; it ranks passages by
the number they name, so the right orderings are known), several lists in flight, then a text-listwise stage
trained on those records and the result loaded as the listwise stage."""

import json
import re
import threading

import pytest

pytest.importorskip("peft")  # the train extra

from mmrank import ListwiseReranker  # noqa: E402
from mmrank.cli import main  # noqa: E402
from mmrank.ranking.permutation import format_ranking  # noqa: E402
from mmrank.train.records import read_records  # noqa: E402
from mmrank_testkit import tiny_model_dir  # noqa: E402
from mmrank_testkit.http_server import Reply, Request, serve  # noqa: E402

PASSAGE = re.compile(r"^\[(\w+)\] (?:Text: )?.*?passage number (\d+)", re.S)


class Teacher:
    """Answers a listwise window with its passages ordered by the number they name, highest first."""

    def __init__(self):
        self.requests = 0
        self.lock = threading.Lock()

    def __call__(self, req: Request) -> Reply:
        body = req.json()
        with self.lock:
            self.requests += 1
        window = []
        for m in body["messages"]:
            text = m["content"] if isinstance(m["content"], str) else "".join(
                p.get("text", "") for p in m["content"] if p["type"] == "text")
            hit = PASSAGE.match(text) if m["role"] == "user" else None
            if hit:
                window.append((hit.group(1), int(hit.group(2))))
        answer = format_ranking([x for x, _ in sorted(window, key=lambda p: -p[1])])
        return Reply(json={"id": "c", "object": "chat.completion", "model": "teacher",
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": answer}}],
                           "usage": {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}})


def test_distil_from_a_chat_teacher_then_train_and_rank(tmp_path, capsys):
    import torch

    numbers = [[3, 9, 1], [4, 2, 8], [7, 5, 6], [0, 2, 1], [5, 9, 3], [8, 1, 4]]
    lists = tmp_path / "lists ü.jsonl"
    lists.write_text("".join(json.dumps({
        "id": f"q{k}", "query": "which passage names the largest number?",
        "candidates": [{"id": f"q{k}d{i}", "text": f"this is passage number {n}"} for i, n in enumerate(ns)],
        "labels": {f"q{k}d{ns.index(max(ns))}": 1}}) + "\n" for k, ns in enumerate(numbers)), encoding="utf-8")
    records = tmp_path / "records.jsonl"
    teacher = Teacher()
    with serve(teacher) as server:
        assert main(["distill", str(lists), "-o", str(records), "--teacher-mode", "chat", "--url", server.url,
                     "--teacher-model", "teacher", "--concurrency", "3", "--quiet"]) == 0
    recs = read_records(records)
    assert [r.id for r in recs] == [f"q{k}" for k in range(6)] and teacher.requests == 6
    for r, ns in zip(recs, numbers, strict=True):
        assert r.teacher_permutation == sorted(range(3), key=lambda i: -ns[i])  # the engine's order, kept
        assert r.teacher["class"] == "mmrank.scorers.chat.ChatReranker"

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        assert main(["train", "--model", str(tiny_model_dir("lm")), "--output", str(tmp_path / "run"),
                     "--device", "cpu", "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1",
                     "--window-size", "3", "--no-gradient-checkpointing", "--val", str(lists),
                     "--stage", f"text-listwise:listwise:text:{records}"]) == 0
        adapter = json.loads(capsys.readouterr().out)["adapter"]
        hist = json.loads((tmp_path / "run" / "text-listwise" / "log_history.json").read_text())
        assert any("eval_ndcg@10" in h for h in hist) and any("train_loss" in h for h in hist)
        ranked = ListwiseReranker(adapter, mode="single_pass", window_size=3, step=1, device="cpu").rank(
            recs[0].query(), recs[0].documents())
        assert sorted(r.index for r in ranked) == [0, 1, 2]
    finally:
        torch.set_num_threads(n)
