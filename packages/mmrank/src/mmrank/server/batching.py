"""The one thread that runs the model, and how it batches across concurrent requests.

Exactly what it does:

* Every request, once its images are read and checked (in a separate thread pool), becomes a *job* on one
  queue. A single worker thread owns the model; the event loop only enqueues and awaits, so it never
  blocks on the model.
* Each time the worker is free it takes **every** job waiting (continuous batching: no timer, no waiting
  for a batch to fill — while the model runs, new jobs pile up and are taken together next time).
* For a pointwise scorer (jina-reranker-m0 and any :class:`~mmrank.scorers.base.PointwiseReranker`), waiting jobs
  with the **same text query** are merged: their documents go through one ``score_documents`` call (so
  the model's batches are full), up to ``max_batch_documents`` documents per call (a single larger request
  is never split). Scores are independent of the batch for these scorers (left padding), up to float
  rounding. Jobs with other queries or image queries run one call each, in arrival order.
* Listwise and other non-pointwise scorers rank each request on its own (their ranking of a document
  depends on the other documents of the request), one at a time.
* If a merged call fails, each of its jobs is rerun alone, so one request's problem never fails another's.
* Jobs whose client has gone away (cancelled future) are skipped. At most ``max_queue`` jobs wait; more
  are refused (the app answers 503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from ..inputs.documents import Document, Query
from ..scorers.base import PointwiseReranker, Ranking, Reranker, order_by_score

logger = logging.getLogger("mmrank.server")


class QueueFull(Exception):
    """Too many requests are waiting for the model."""


@dataclass
class _Job:
    query: Query
    documents: list[Document]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    key: Any = field(default=None)


class ModelWorker:
    """Runs ``scorer`` on one thread; ``await worker.rank(query, docs)`` → ``[(position, score)]`` best first."""

    def __init__(self, scorer: Reranker, *, max_batch_documents: int = 64, max_queue: int = 256):
        self.scorer = scorer
        self.pointwise = isinstance(scorer, PointwiseReranker)
        self.max_batch_documents = max(1, int(max_batch_documents))
        self.max_queue = max(1, int(max_queue))
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="mmrank-model", daemon=True)
        self._started = False
        #: Counters for /health and tests: model calls made, and jobs that were merged into shared calls.
        self.calls = 0
        self.merged_jobs = 0

    @property
    def pending(self) -> int:
        return self._pending

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout)

    async def rank(self, query: Query, documents: list[Document]) -> list[tuple[int, float]]:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._pending >= self.max_queue:
                raise QueueFull(f"{self._pending} requests are waiting for the model (limit {self.max_queue})")
            self._pending += 1
        key = ("text", query.text) if self.pointwise and not query.has_image else None
        job = _Job(query, documents, loop.create_future(), loop, key)
        self._queue.put(job)
        return await job.future

    # ------------------------------------------------------------------ worker thread
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            stop = False
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
            live = []
            for j in jobs:
                if j.future.cancelled():
                    self._done(j, None, None)
                else:
                    live.append(j)
            for group in self._groups(live):
                self._execute(group)
            if stop:
                return

    def _groups(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Same-query jobs of a pointwise scorer packed together (≤ max_batch_documents); others alone."""
        groups: list[list[_Job]] = []
        open_group: dict[Any, list[_Job]] = {}
        for j in jobs:
            if j.key is None:
                groups.append([j])
                continue
            g = open_group.get(j.key)
            if g is not None and sum(len(x.documents) for x in g) + len(j.documents) <= self.max_batch_documents:
                g.append(j)
            else:
                g = [j]
                open_group[j.key] = g
                groups.append(g)
        return groups

    def _execute(self, group: list[_Job]) -> None:
        try:
            self.calls += 1
            results = self._model_step(group)
        except Exception as exc:  # delivered to the request that caused it
            if len(group) > 1:
                logger.info("mmrank serve: a merged model call failed (%s); running its %d requests alone",
                            exc, len(group))
                for j in group:
                    self._execute([j])
                return
            logger.debug("mmrank serve: model call failed", exc_info=True)
            self._done(group[0], None, exc)
            return
        if len(group) > 1:
            self.merged_jobs += len(group)
        for j, r in zip(group, results, strict=True):
            self._done(j, r, None)

    def _model_step(self, group: list[_Job]) -> list[Ranking]:
        """One model call for ``group``: a pointwise scorer scores every job's documents together and each
        job's share is ranked on its own; any other scorer ranks its single job."""
        if not self.pointwise:
            (job,) = group
            return [self.scorer.rank_documents(job.query, job.documents)]
        scores = self.scorer.score_documents(group[0].query, [d for j in group for d in j.documents])  # type: ignore[attr-defined]
        results, start = [], 0
        for j in group:
            results.append(order_by_score(scores[start:start + len(j.documents)]))
            start += len(j.documents)
        return results

    def _done(self, job: _Job, result: Any, exc: BaseException | None) -> None:
        with self._lock:
            self._pending -= 1

        def deliver() -> None:
            if job.future.done():
                return
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)

        try:
            job.loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # the loop is closed (server shutting down)
            pass
