"""The model thread's batching (mmrank.server.batching) — a pure scheduling algorithm, tested with a
model-free scorer that records every call: same-query merging, the per-call document cap, failure
isolation, skipped cancelled requests, the queue limit, and no merging for non-pointwise scorers."""

from __future__ import annotations

import asyncio
import threading

import pytest
from mmrank.errors import InputError
from mmrank.inputs.documents import Document, Query
from mmrank.scorers.base import PointwiseReranker, Reranker
from mmrank.server.batching import ModelWorker, QueueFull


class _Recorder:
    """Score = length of the text; the first call blocks until ``release`` so that jobs pile up."""

    def _setup(self):
        self.calls: list[tuple[str, list[str]]] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def _score_documents(self, query, documents):
        self.calls.append((query.text, [d.text for d in documents]))
        self.entered.set()
        self.release.wait(10)
        if any(d.text == "boom" for d in documents):
            raise InputError("boom document")
        return [float(len(d.text)) for d in documents]


class Recording(_Recorder, PointwiseReranker):
    def __init__(self):
        super().__init__()
        self._setup()


class Listwise(_Recorder, Reranker):
    """Not pointwise: ranks a whole list at once (like the listwise scorer)."""

    def __init__(self):
        super().__init__()
        self._setup()

    def _rank_documents(self, query, documents):
        scores = self._score_documents(query, documents)
        return sorted(((i, s) for i, s in enumerate(scores)), key=lambda p: (-p[1], p[0]))


def docs(*texts):
    return [Document(text=t) for t in texts]


async def _blocked_worker(scorer, **kw):
    worker = ModelWorker(scorer, **kw)
    worker.start()
    first = asyncio.ensure_future(worker.rank(Query(text="first"), docs("x")))
    while not scorer.entered.is_set():
        await asyncio.sleep(0.005)
    return worker, first


async def test_same_query_requests_are_merged_and_answers_split_back():
    scorer = Recording()
    worker, first = await _blocked_worker(scorer, max_batch_documents=64)
    jobs = [worker.rank(Query(text="q"), docs("a" * (i + 1), "bb")) for i in range(5)]
    other = worker.rank(Query(text="another"), docs("ccc"))
    image_q = worker.rank(Query(image=b"not decoded here"), docs("dd"))
    tasks = [asyncio.ensure_future(j) for j in [*jobs, other, image_q]]
    await asyncio.sleep(0.05)
    scorer.release.set()
    results = await asyncio.gather(*tasks)
    await first
    worker.stop()
    assert [c[0] for c in scorer.calls] == ["first", "q", "another", None]
    assert scorer.calls[1][1] == ["a", "bb", "aa", "bb", "aaa", "bb", "aaaa", "bb", "aaaaa", "bb"]
    assert results[0] == [(1, 2.0), (0, 1.0)]  # per request: its own positions, best first
    assert results[4] == [(0, 5.0), (1, 2.0)]
    assert results[5] == [(0, 3.0)] and results[6] == [(0, 2.0)]
    assert worker.merged_jobs == 5 and worker.pending == 0


async def test_merging_respects_the_document_cap_but_never_splits_a_request():
    scorer = Recording()
    worker, first = await _blocked_worker(scorer, max_batch_documents=4)
    tasks = [asyncio.ensure_future(worker.rank(Query(text="q"), docs(*["d"] * n))) for n in (3, 1, 2, 6)]
    await asyncio.sleep(0.05)
    scorer.release.set()
    results = await asyncio.gather(*tasks)
    await first
    worker.stop()
    assert [len(c[1]) for c in scorer.calls[1:]] == [4, 2, 6]
    assert [len(r) for r in results] == [3, 1, 2, 6]


async def test_a_failing_request_does_not_fail_the_requests_merged_with_it():
    scorer = Recording()
    worker, first = await _blocked_worker(scorer)
    good = asyncio.ensure_future(worker.rank(Query(text="q"), docs("one", "three")))
    bad = asyncio.ensure_future(worker.rank(Query(text="q"), docs("boom")))
    await asyncio.sleep(0.05)
    scorer.release.set()
    assert await good == [(1, 5.0), (0, 3.0)]
    with pytest.raises(InputError, match="boom document"):
        await bad
    await first
    worker.stop()
    assert worker.pending == 0


async def test_cancelled_requests_are_skipped_and_the_queue_is_bounded():
    scorer = Recording()
    worker, first = await _blocked_worker(scorer, max_queue=3)
    gone = asyncio.ensure_future(worker.rank(Query(text="q"), docs("never scored")))
    kept = asyncio.ensure_future(worker.rank(Query(text="q2"), docs("kept")))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull, match="limit 3"):
        await worker.rank(Query(text="q"), docs("too many"))
    gone.cancel()
    scorer.release.set()
    assert await kept == [(0, 4.0)]
    await first
    worker.stop()
    assert all("never scored" not in c[1] for c in scorer.calls)
    assert worker.pending == 0


async def test_listwise_scorers_rank_each_request_alone():
    scorer = Listwise()
    worker, first = await _blocked_worker(scorer)
    tasks = [asyncio.ensure_future(worker.rank(Query(text="q"), docs("aa", "a"))) for _ in range(3)]
    await asyncio.sleep(0.05)
    scorer.release.set()
    assert await asyncio.gather(*tasks) == [[(0, 2.0), (1, 1.0)]] * 3
    await first
    worker.stop()
    assert [len(c[1]) for c in scorer.calls] == [1, 2, 2, 2] and worker.merged_jobs == 0
