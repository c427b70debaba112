"""Batching and prefetch machinery of the local scorers, independent of any one model.

* :class:`ImageRef` / :class:`Item` — one image of a call (decoded image or a document's image decoded on first
  use, its patch grid, its cache key once computed) and one planned sequence (token ids, token types, its
  images);
* :func:`plan_batches` — fixed-count or token-budget batches, optionally from length-sorted sequences;
* :func:`prefetched` — prepared batches in order, the next one prepared in a producer thread while the
  caller runs the current one (errors reach the caller; the thread never outlives the call);
* :class:`WorkerPool` — a lazily started thread pool for per-image host work (runs inline for one item);
* :class:`DeviceFeed` — host tensors to the model's device: pinned memory and a side CUDA stream, with an
  event the consumer waits on (plain ``.to(device)`` elsewhere).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from PIL import Image

from ..inputs.documents import Document
from ..inputs.images import ImagePolicy, image_fingerprint

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["ImageRef", "DocumentImage", "Item", "plan_batches", "prefetched", "WorkerPool", "DeviceFeed"]


class ImageRef:
    """One image of a call: its source, patch grid and (once computed) cache key (content fingerprint + pixel
    budget). ``pinned``: used by every sequence of the call (an image query).

    The source is a decoded PIL image, or a :class:`DocumentImage` whose pixels are decoded on first use
    (by the prefetch pipeline, in the worker pool) and may be released once the batch is prepared."""

    __slots__ = ("source", "grid", "budget", "key", "pinned")

    def __init__(self, source: Image.Image | DocumentImage, grid: tuple[int, int, int], budget: tuple[int, int]):
        self.source = source
        self.grid = grid
        self.budget = budget
        self.key: tuple | None = None
        self.pinned = False

    @property
    def image(self) -> Image.Image:
        """The decoded image (decoded now if it was not yet; :class:`~mmrank.ImageLoadError` if it cannot be)."""
        return self.source if isinstance(self.source, Image.Image) else self.source.load()

    def ensure_key(self) -> tuple:
        if self.key is None:
            fp = image_fingerprint(self.source) if isinstance(self.source, Image.Image) else self.source.fingerprint()
            self.key = (fp, *self.budget)
        return self.key

    def release(self) -> None:
        """Free the decoded pixels where they can be decoded again (see :meth:`mmrank.Document.release_image`)."""
        if not isinstance(self.source, Image.Image):
            self.source.release()


class DocumentImage:
    """A document's image as the pipeline sees it: decoded, fingerprinted and released on demand, under the
    scorer's image policy."""

    __slots__ = ("document", "policy")

    def __init__(self, document: Document, policy: ImagePolicy):
        self.document = document
        self.policy = policy

    def load(self) -> Image.Image:
        return self.document.load_image(self.policy)

    def fingerprint(self) -> str:
        return self.document.image_fingerprint(self.policy)

    def release(self) -> None:
        self.document.release_image()


class Item:
    """One planned sequence: token ids, token types (1 = image token) and its images in slot order."""

    __slots__ = ("ids", "types", "images")

    def __init__(self, ids: list[int], types: list[int], images: list[ImageRef]):
        self.ids = ids
        self.types = types
        self.images = images


def plan_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None = None,
                 sort_by_length: bool = True) -> list[list[int]]:
    """Batches of positions. Longest first when ``sort_by_length``; ``batch_size`` per batch, or with
    ``max_batch_tokens`` as many as fit in that many padded tokens (at least one, at most ``batch_size``;
    with sorted input the first sequence of a batch is its longest)."""
    order = list(range(len(lengths)))
    if sort_by_length:
        order.sort(key=lambda i: -lengths[i])
    if not max_batch_tokens:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    cur: list[int] = []
    width = 0
    for i in order:
        w = max(width, lengths[i])
        if cur and (len(cur) >= batch_size or w * (len(cur) + 1) > max_batch_tokens):
            batches.append(cur)
            cur, w = [], lengths[i]
        cur.append(i)
        width = w
    if cur:
        batches.append(cur)
    return batches


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetched(batches: Sequence[T], prepare: Callable[[T], R], *, enabled: bool = True,
               name: str = "mmrank-prefetch", depth: int = 2) -> Iterator[R]:
    """``prepare(b)`` for each batch, in order. When ``enabled`` (and there is more than one batch) a
    producer thread prepares ahead (at most ``depth`` batches) while the caller consumes; an exception in
    the producer is raised in the caller, and closing the iterator stops and joins the thread."""
    if not enabled or len(batches) <= 1:
        for b in batches:
            yield prepare(b)
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for b in batches:
                if stop.is_set():
                    return
                q.put(prepare(b))
            q.put(done)
        except BaseException as exc:  # handed to the consumer
            q.put(_Failure(exc))

    t = threading.Thread(target=produce, name=name, daemon=True)
    t.start()
    try:
        while True:
            got = q.get()
            if got is done:
                break
            if isinstance(got, _Failure):
                raise got.exc
            yield got
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        t.join()


class WorkerPool:
    """A thread pool started on first use; :meth:`map` runs inline for at most one item or one worker."""

    def __init__(self, workers: int, name: str = "mmrank-img"):
        self.workers = max(1, int(workers))
        self.name = name
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        items = list(items)
        if len(items) <= 1 or self.workers <= 1:
            return [fn(x) for x in items]
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=self.name)
        return list(self._pool.map(fn, items))

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


class DeviceFeed:
    """Moves prepared host tensors to ``device``. On CUDA the copy is asynchronous from pinned memory on a
    side stream, and the returned dict carries an ``"_event"`` the consumer waits on (:meth:`wait`)."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.dtype = dtype
        self._stream = None
        self._lock = threading.Lock()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def side_stream(self):
        if self._stream is None:
            with self._lock:
                if self._stream is None:
                    self._stream = torch.cuda.Stream(device=self.device)
        return self._stream

    def to_device(self, host: dict[str, torch.Tensor]) -> dict[str, Any]:
        if not self.cuda:
            return {k: v.to(self.device) for k, v in host.items()}
        stream = self.side_stream()
        with torch.cuda.stream(stream):
            out: dict[str, Any] = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in host.items()}
            out["_event"] = torch.cuda.Event()
            out["_event"].record(stream)
        return out

    def add_on_device(self, inputs: dict[str, Any], name: str, make: Callable[[], torch.Tensor]) -> None:
        """Put ``make()`` (a tensor already on the device, e.g. GPU-preprocessed pixels) into ``inputs`` on the
        side stream, in the model's dtype, and move the event after it."""
        stream = self.side_stream()
        with torch.cuda.stream(stream):
            inputs[name] = make().to(self.dtype)
            inputs["_event"].record(stream)

    def wait(self, inputs: dict[str, Any]) -> None:
        """Make the current stream wait for the copies of ``inputs`` (no-op off CUDA)."""
        if "_event" not in inputs:
            return
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(inputs["_event"])
        for v in inputs.values():
            if isinstance(v, torch.Tensor):
                v.record_stream(stream)
