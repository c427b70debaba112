"""The one interface every scorer implements.

``Reranker.rank(query, documents, top_n=None)`` returns every document (or the best ``top_n``) as
:class:`RankedDocument` objects, best first, each with its score and its index in the input.
``Reranker.score(query, documents)`` returns the scores in input order. Both have async twins.

The base class owns what is the same for every backend: coercing inputs, the empty list, reading images
up front (in parallel, so decoding is off the model's critical path) and the policy for documents that
cannot be read. Backends implement only ``_rank_documents`` (or, pointwise, ``_score_documents``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ImageLoadError, InputError
from ..inputs.documents import Document, Query, coerce_documents
from ..inputs.images import DEFAULT_POLICY, ImagePolicy

logger = logging.getLogger("mmrank")

OnError = Literal["raise", "last"]
ON_ERROR_CHOICES = ("raise", "last")


@dataclass
class RankedDocument:
    """One document in a ranking.

    ``index`` is its position in the caller's input; ``score`` its relevance score (higher is better;
    ``None`` when the document could not be read, in which case ``error`` says why and the document is
    ranked after every scored one).
    """

    index: int
    score: float | None
    document: Document
    error: str | None = None

    @property
    def payload(self) -> Any:
        return self.document.payload

    @property
    def id(self) -> str | None:
        return self.document.id

    def to_dict(self, *, include_document: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "relevance_score": self.score}
        if self.document.id is not None:
            out["id"] = self.document.id
        if include_document and self.document.text is not None:
            out["document"] = {"text": self.document.text}
        if self.error is not None:
            out["error"] = self.error
        return out


class Reranker(ABC):
    """Base class of all scorers. Subclasses implement :meth:`_rank_documents`."""

    #: Human-readable model name (model id or path), used in events and API responses.
    model_name: str = "unknown"
    #: Whether a query may be an image.
    supports_image_query: bool = True
    #: Whether documents may contain images.
    supports_image_documents: bool = True

    def __init__(self, *, on_error: OnError = "last", image_policy: ImagePolicy = DEFAULT_POLICY,
                 show_progress: bool = False, image_workers: int = 4):
        if on_error not in ON_ERROR_CHOICES:
            raise InputError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.on_error: OnError = on_error
        self.image_policy = image_policy
        self.show_progress = show_progress
        self.image_workers = max(1, int(image_workers))
        # One model call at a time per instance: async callers and threads queue here.
        self._model_lock = threading.Lock()

    # ------------------------------------------------------------------ public API
    def rank(self, query: Any, documents: Sequence[Any] | Iterable[Any], top_n: int | None = None, *,
             score_threshold: float | None = None, on_error: OnError | None = None) -> list[RankedDocument]:
        """Rank ``documents`` for ``query``; best first. Every input document appears exactly once, except
        that ``score_threshold`` drops scored documents below it and then ``top_n`` trims; documents that
        could not be read come last with ``error`` set (a threshold never drops them: they have no score)."""
        policy, q, docs = self._begin(query, documents, top_n, score_threshold, on_error)
        if not docs:
            return []
        self._check_query(q)
        errors = self._prepare_documents(docs)
        good = self._good_documents(errors, policy)
        pairs: list[tuple[int, float]] = []
        if good:
            with self._model_lock:
                pairs = self._rank_documents(q, [docs[i] for i in good])
        return self._assemble(docs, errors, good, pairs, top_n, score_threshold)

    def score(self, query: Any, documents: Sequence[Any] | Iterable[Any], *,
              on_error: OnError | None = None) -> list[float | None]:
        """Scores in input order (``None`` for a document that could not be read)."""
        return self._in_input_order(self.rank(query, documents, on_error=on_error))

    async def arank(self, query: Any, documents: Sequence[Any] | Iterable[Any], top_n: int | None = None, *,
                    score_threshold: float | None = None, on_error: OnError | None = None) -> list[RankedDocument]:
        """Async :meth:`rank`: the model runs in a worker thread, so the event loop is never blocked."""
        return await asyncio.to_thread(self.rank, query, list(documents), top_n, score_threshold=score_threshold,
                                       on_error=on_error)

    async def ascore(self, query: Any, documents: Sequence[Any] | Iterable[Any], *,
                     on_error: OnError | None = None) -> list[float | None]:
        return await asyncio.to_thread(self.score, query, list(documents), on_error=on_error)

    # ------------------------------------------------------------------ for subclasses
    @abstractmethod
    def _rank_documents(self, query: Query, documents: list[Document]) -> list[tuple[int, float]]:
        """Return ``(position in documents, score)`` for every document, best first.

        Every position must appear exactly once; scores must not increase down the list."""

    def _check_query(self, query: Query) -> None:
        if query.has_image and not self.supports_image_query:
            raise InputError(f"{type(self).__name__} does not accept image queries")
        if query.has_image:
            self._read_image(query)  # errors name the query image

    def _read_image(self, item: Document | Query) -> None:
        """Read and check the image of a document or query before any scoring; raise
        :class:`ImageLoadError` / :class:`InputError`. Runs in worker threads for documents."""
        self._check_image(item.load_image(self.image_policy))

    def _check_image(self, image) -> None:  # noqa: B027 - optional hook
        """Raise :class:`InputError` for a decoded image this scorer cannot take (e.g. an aspect ratio its
        image processor refuses). Called for every image query and image document; default: accept."""

    def _prepare_documents(self, documents: list[Document]) -> list[ImageLoadError | InputError | None]:
        """Read every image up front, in parallel; return one error (or None) per document."""
        errors: list[ImageLoadError | InputError | None] = [None] * len(documents)
        for i, d in enumerate(documents):
            if d.modality == "empty":
                errors[i] = InputError(f"document {i}{_id_suffix(d)}: document has neither text nor image")
            elif d.has_image and not self.supports_image_documents:
                errors[i] = InputError(f"document {i}{_id_suffix(d)}: {type(self).__name__} does not accept "
                                       "image documents")
        todo = [i for i, d in enumerate(documents) if d.has_image and errors[i] is None]

        def load(i: int) -> None:
            try:
                self._read_image(documents[i])
            except ImageLoadError as exc:
                errors[i] = exc.for_document(i, documents[i].id)
            except InputError as exc:
                errors[i] = InputError(f"document {i}{_id_suffix(documents[i])}: {exc}")

        if len(todo) <= 1:
            for i in todo:
                load(i)
        else:
            with ThreadPoolExecutor(max_workers=min(self.image_workers, len(todo))) as pool:
                list(pool.map(load, todo))
        return errors

    def _check_on_error(self, on_error: OnError | None) -> OnError:
        policy = on_error or self.on_error
        if policy not in ON_ERROR_CHOICES:
            raise InputError(f"on_error must be one of {ON_ERROR_CHOICES}, got {policy!r}")
        return policy

    def _begin(self, query: Any, documents: Any, top_n: int | None, score_threshold: float | None,
               on_error: OnError | None) -> tuple[OnError, Query, list[Document]]:
        """Check the call's arguments; coerce the query and the documents."""
        policy = self._check_on_error(on_error)
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
            raise InputError(f"top_n must be a non-negative integer or None, got {top_n!r}")
        if score_threshold is not None and (isinstance(score_threshold, bool)
                                            or not isinstance(score_threshold, (int, float))
                                            or math.isnan(score_threshold)):
            raise InputError(f"score_threshold must be a number or None, got {score_threshold!r}")
        return policy, Query.coerce(query), coerce_documents(documents)

    @staticmethod
    def _good_documents(errors: list[ImageLoadError | InputError | None], policy: OnError) -> list[int]:
        """Positions of the readable documents; raises the first error under ``on_error="raise"``."""
        bad = [e for e in errors if e is not None]
        if bad and policy == "raise":
            raise bad[0]
        for e in bad:
            logger.warning("mmrank: %s — ranked last", e)
        return [i for i, e in enumerate(errors) if e is None]

    def _assemble(self, docs: list[Document], errors: list[ImageLoadError | InputError | None], good: list[int],
                  pairs: list[tuple[int, float]], top_n: int | None,
                  score_threshold: float | None) -> list[RankedDocument]:
        """The ranking of the readable documents (positions within ``good``) at or above the threshold, then
        the unreadable ones; the best ``top_n`` of that."""
        self._check_permutation(pairs, len(good))
        ordered = [RankedDocument(index=good[j], score=float(s), document=docs[good[j]]) for j, s in pairs
                   if score_threshold is None or float(s) >= score_threshold]
        ordered.extend(RankedDocument(index=i, score=None, document=docs[i], error=str(e))
                       for i, e in enumerate(errors) if e is not None)
        return ordered if top_n is None else ordered[:top_n]

    @staticmethod
    def _in_input_order(ranked: list[RankedDocument]) -> list[float | None]:
        scores: list[float | None] = [None] * len(ranked)
        for r in ranked:
            scores[r.index] = r.score
        return scores

    @staticmethod
    def _check_permutation(pairs: list[tuple[int, float]], n: int) -> None:
        seen = sorted(j for j, _ in pairs)
        if seen != list(range(n)):
            raise RuntimeError(f"internal error: backend returned positions {seen} for {n} documents")
        for (_, a), (_, b) in zip(pairs, pairs[1:], strict=False):
            if b > a and not (math.isnan(a) or math.isnan(b)):
                raise RuntimeError("internal error: backend scores increase down the ranking")

    def close(self) -> None:  # noqa: B027 - a no-op default; scorers holding resources override it
        """Release resources (models, HTTP connections). Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PointwiseReranker(Reranker):
    """A reranker that scores each (query, document) pair independently; ranking sorts by score."""

    @abstractmethod
    def _score_documents(self, query: Query, documents: list[Document]) -> list[float]:
        """One score per document, in order."""

    def _rank_documents(self, query: Query, documents: list[Document]) -> list[tuple[int, float]]:
        scores = self._score_documents(query, documents)
        if len(scores) != len(documents):
            raise RuntimeError(f"internal error: {len(scores)} scores for {len(documents)} documents")
        # Stable: equal scores keep input order. NaN (never expected) sorts last.
        order = sorted(range(len(scores)), key=lambda i: (math.isnan(scores[i]), -scores[i] if not math.isnan(scores[i]) else 0.0, i))
        return [(i, float(scores[i])) for i in order]


def _id_suffix(doc: Document) -> str:
    return f" (id={doc.id!r})" if doc.id is not None else ""
