"""The one interface every scorer implements, and the two-phase seam that every caller ranks through.

``Reranker.rank(query, documents, top_n=None)`` returns every document (or the best ``top_n``) as
:class:`RankedDocument` objects, best first, each with its score and its index in the input.
``Reranker.score(query, documents)`` returns the scores in input order. Both have async twins.

``rank`` is three public steps, which the server, the remote client and any other backend or front end call
themselves when they need to act between them (merge requests, answer HTTP errors, count tokens):

1. :meth:`Reranker.prepare` → :class:`PreparedRanking`: check the call's arguments, coerce the query and the
   documents, check the query and read its image, read every document image up front (in parallel) and
   record one error (or ``None``) per document; under ``on_error="raise"`` the first document error is raised
   here, before any model work. A scorer that decodes pixels while it scores (``streams_images``: the
   pointwise scorer, whose prefetch pipeline decodes each batch's images while the model runs the batch
   before) reads only as far as each image's size here under ``on_error="last"``: the source rules, byte
   and pixel caps, format and size are checked, the pixels are decoded later.
2. the model step on the readable documents: :meth:`Reranker.rank_documents` (any scorer) or
   :meth:`PointwiseReranker.score_documents` (pointwise scorers: one score per document, independent of
   the other documents, so callers may merge documents of several calls that share a query).
3. :meth:`Reranker.finish` → ``list[RankedDocument]``: the ranking at or above ``score_threshold``, then
   the unreadable documents (``score=None``, ``error`` set), trimmed to ``top_n``. A document whose image
   failed to decode during the model step (streaming scorers; its score there is NaN) is one of them.

Backends implement only the hook ``_rank_documents`` (or, pointwise, ``_score_documents``); they may refine
``_check_query``, ``_read_image``, ``_check_image``, ``_check_image_size`` and ``_prepare_documents``. Those hooks are private to
the scorer classes: code outside them uses the public steps above (``tests/test_layout.py`` checks this).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ImageLoadError, InputError
from ..inputs.documents import Document, Query, coerce_documents
from ..inputs.images import DEFAULT_POLICY, ImagePolicy

logger = logging.getLogger("mmrank")

OnError = Literal["raise", "last"]
ON_ERROR_CHOICES = ("raise", "last")

#: ``(position, score)`` pairs, best first: what the model step returns. Positions are within the list of
#: documents the model step was given.
Ranking = list[tuple[int, float]]
DocumentError = ImageLoadError | InputError


@dataclass
class RankedDocument:
    """One document in a ranking.

    Attributes:
        index: the document's position in the caller's input.
        score: its relevance score (higher is better); ``None`` when the document could not be read.
        document: the :class:`~mmrank.Document` (with the caller's ``id`` and ``payload``).
        error: why the document could not be read (it is then ranked after every scored one), else ``None``.
    """

    index: int
    score: float | None
    document: Document
    error: str | None = None

    @property
    def payload(self) -> Any:
        """The caller's object carried by the document (``Document.payload``)."""
        return self.document.payload

    @property
    def id(self) -> str | None:
        """The caller's document id (``Document.id``)."""
        return self.document.id

    def to_dict(self, *, include_document: bool = True) -> dict[str, Any]:
        """A JSON-ready dict in the Jina rerank API's shape: ``index``, ``relevance_score``, and ``id``,
        ``document`` and ``error`` when present.

        Args:
            include_document: include ``{"document": {"text": ...}}`` for documents with text.
        """
        out: dict[str, Any] = {"index": self.index, "relevance_score": self.score}
        if self.document.id is not None:
            out["id"] = self.document.id
        if include_document and self.document.text is not None:
            out["document"] = {"text": self.document.text}
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class PreparedRanking:
    """A rank call after :meth:`Reranker.prepare`: checked options, the coerced query and documents (images
    read), and one error (or ``None``) per document. Plain data: callers may inspect it between the steps.

    Attributes:
        query: the coerced query.
        documents: the coerced documents, in input order.
        errors: one entry per document: the error that keeps it from being scored, or ``None``.
        top_n: how many results to keep (``None``: all).
        score_threshold: scored documents below it are dropped (``None``: none).
        on_error: ``"last"`` or ``"raise"``, as checked.
    """

    query: Query
    documents: list[Document]
    errors: list[DocumentError | None] = field(default_factory=list)
    top_n: int | None = None
    score_threshold: float | None = None
    on_error: OnError = "last"

    def __post_init__(self) -> None:
        if not self.errors:
            self.errors = [None] * len(self.documents)
        if len(self.errors) != len(self.documents):
            raise InputError(f"{len(self.errors)} errors for {len(self.documents)} documents")

    @property
    def readable(self) -> list[int]:
        """Input positions of the documents the model step ranks, in input order."""
        return [i for i, e in enumerate(self.errors) if e is None]

    @property
    def readable_documents(self) -> list[Document]:
        """The documents to hand to the model step (positions in its answer index this list)."""
        return [d for d, e in zip(self.documents, self.errors, strict=True) if e is None]

    @property
    def failed(self) -> list[int]:
        """Input positions of the documents that could not be read."""
        return [i for i, e in enumerate(self.errors) if e is not None]


def order_by_score(scores: Sequence[float]) -> Ranking:
    """``(position, score)`` best first. Stable: equal scores keep input order; NaN (never expected) last."""
    def key(i: int) -> tuple[bool, float, int]:
        s = scores[i]
        return (math.isnan(s), 0.0 if math.isnan(s) else -s, i)

    return [(i, float(scores[i])) for i in sorted(range(len(scores)), key=key)]


def check_ranking(ranking: Ranking, n: int) -> Ranking:
    """``ranking`` if it holds every position ``0..n-1`` exactly once with scores that never increase;
    ``RuntimeError`` (a backend bug) otherwise."""
    seen = sorted(j for j, _ in ranking)
    if seen != list(range(n)):
        raise RuntimeError(f"internal error: backend returned positions {seen} for {n} documents")
    for (_, a), (_, b) in zip(ranking, ranking[1:], strict=False):
        if b > a and not (math.isnan(a) or math.isnan(b)):
            raise RuntimeError("internal error: backend scores increase down the ranking")
    return ranking


def check_on_error(on_error: Any) -> OnError:
    if on_error not in ON_ERROR_CHOICES:
        raise InputError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    return on_error


def check_top_n(top_n: Any) -> int | None:
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
        raise InputError(f"top_n must be a non-negative integer or None, got {top_n!r}")
    return top_n


def check_score_threshold(score_threshold: Any) -> float | None:
    if score_threshold is not None and (isinstance(score_threshold, bool)
                                        or not isinstance(score_threshold, (int, float))
                                        or math.isnan(score_threshold)):
        raise InputError(f"score_threshold must be a number or None, got {score_threshold!r}")
    return score_threshold


class Reranker(ABC):
    """Base class of all scorers. Subclasses implement :meth:`_rank_documents`.

    Args:
        on_error: what a document that cannot be read (broken image, dead URL, over a limit) does by
            default: ``"last"`` ranks it after every scored document with ``score=None`` and ``error`` set;
            ``"raise"`` raises its :class:`~mmrank.ImageLoadError` / :class:`~mmrank.InputError`. Each call
            may override it.
        image_policy: limits for reading images (:class:`~mmrank.ImagePolicy`; ``ImagePolicy.strict()``
            for untrusted input).
        show_progress: show a progress bar over batches (scorers that run batches).
        image_workers: threads that read and decode the images of one call in parallel.
    """

    #: Human-readable model name (model id or path), used in events and API responses.
    model_name: str = "unknown"
    #: Whether a query may be an image.
    supports_image_query: bool = True
    #: Whether documents may contain images.
    supports_image_documents: bool = True
    #: Whether the model step decodes document images itself (in its own pipeline): ``prepare`` then reads
    #: only their sizes under ``on_error="last"``, and ``finish`` reports images that fail to decode late.
    streams_images: bool = False

    def __init__(self, *, on_error: OnError = "last", image_policy: ImagePolicy = DEFAULT_POLICY,
                 show_progress: bool = False, image_workers: int = 4):
        self.on_error: OnError = check_on_error(on_error)
        if not isinstance(image_policy, ImagePolicy):
            raise InputError(f"image_policy must be an mmrank.ImagePolicy, got {type(image_policy).__name__}")
        if isinstance(image_workers, bool) or not isinstance(image_workers, int):
            raise InputError(f"image_workers must be a positive integer, got {image_workers!r}")
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
        could not be read come last with ``error`` set (a threshold never drops them: they have no score).

        Args:
            query: a string, a :class:`~mmrank.Query`, an image (PIL, bytes, ``Path``) or a mapping with
                ``text`` / ``image``.
            documents: strings, :class:`~mmrank.Document` objects, images or mappings with ``text`` /
                ``image`` (any iterable; read once).
            top_n: return only the best ``top_n`` (``None``: all).
            score_threshold: drop scored documents below this score (before ``top_n`` counts).
            on_error: override the scorer's ``on_error`` for this call (``"last"`` or ``"raise"``).

        Returns:
            :class:`RankedDocument` objects, best first.

        Raises:
            InputError: bad arguments, or an unreadable document under ``on_error="raise"``.
        """
        call = self.prepare(query, documents, top_n, score_threshold=score_threshold, on_error=on_error)
        return self.finish(call, self.rank_documents(call.query, call.readable_documents))

    async def arank(self, query: Any, documents: Sequence[Any] | Iterable[Any], top_n: int | None = None, *,
                    score_threshold: float | None = None, on_error: OnError | None = None) -> list[RankedDocument]:
        """Async :meth:`rank`: image reading and the model run in worker threads (or, for a remote scorer,
        on the event loop without blocking it), so the event loop is never blocked.

        Args:
            query: a string, a :class:`~mmrank.Query`, an image (PIL, bytes, ``Path``) or a mapping with
                ``text`` / ``image``.
            documents: strings, :class:`~mmrank.Document` objects, images or mappings with ``text`` /
                ``image`` (any iterable; read once).
            top_n: return only the best ``top_n`` (``None``: all).
            score_threshold: drop scored documents below this score (before ``top_n`` counts).
            on_error: override the scorer's ``on_error`` for this call.
        """
        call = await self.aprepare(query, documents, top_n, score_threshold=score_threshold, on_error=on_error)
        return self.finish(call, await self.arank_documents(call.query, call.readable_documents))

    def score(self, query: Any, documents: Sequence[Any] | Iterable[Any], *,
              on_error: OnError | None = None) -> list[float | None]:
        """Scores in input order (``None`` for a document that could not be read).

        Args:
            query: a string, a :class:`~mmrank.Query`, an image (PIL, bytes, ``Path``) or a mapping with
                ``text`` / ``image``.
            documents: strings, :class:`~mmrank.Document` objects, images or mappings with ``text`` /
                ``image`` (any iterable; read once).
            on_error: override the scorer's ``on_error`` for this call.
        """
        return _in_input_order(self.rank(query, documents, on_error=on_error))

    async def ascore(self, query: Any, documents: Sequence[Any] | Iterable[Any], *,
                     on_error: OnError | None = None) -> list[float | None]:
        """Async :meth:`score`.

        Args:
            query: a string, a :class:`~mmrank.Query`, an image (PIL, bytes, ``Path``) or a mapping with
                ``text`` / ``image``.
            documents: strings, :class:`~mmrank.Document` objects, images or mappings with ``text`` /
                ``image`` (any iterable; read once).
            on_error: override the scorer's ``on_error`` for this call.
        """
        return _in_input_order(await self.arank(query, documents, on_error=on_error))

    # ------------------------------------------------------------------ the seam, step 1: prepare
    def prepare(self, query: Any, documents: Sequence[Any] | Iterable[Any], top_n: int | None = None, *,
                score_threshold: float | None = None, on_error: OnError | None = None,
                refused: Sequence[DocumentError | None] | None = None) -> PreparedRanking:
        """Check the options, coerce the inputs, check the query and read every image; record one error per
        document (raised at once under ``on_error="raise"``).

        Args:
            query: a string, a :class:`~mmrank.Query`, an image (PIL, bytes, ``Path``) or a mapping with
                ``text`` / ``image``.
            documents: strings, :class:`~mmrank.Document` objects, images or mappings with ``text`` /
                ``image`` (any iterable; read once).
            top_n: return only the best ``top_n`` (``None``: all).
            score_threshold: drop scored documents below this score (before ``top_n`` counts).
            on_error: override the scorer's ``on_error`` for this call.
            refused: errors the caller already found (one entry per document, ``None`` for the others);
                those documents are not read again.
        """
        call = self._begin(query, documents, top_n, score_threshold, on_error, refused)
        self._read(call)
        return call

    async def aprepare(self, query: Any, documents: Sequence[Any] | Iterable[Any], top_n: int | None = None, *,
                       score_threshold: float | None = None, on_error: OnError | None = None,
                       refused: Sequence[DocumentError | None] | None = None) -> PreparedRanking:
        """Async :meth:`prepare`: images are read in a worker thread (text-only calls stay on the loop).

        Args:
            query: a string, a :class:`~mmrank.Query`, an image (PIL, bytes, ``Path``) or a mapping with
                ``text`` / ``image``.
            documents: strings, :class:`~mmrank.Document` objects, images or mappings with ``text`` /
                ``image`` (any iterable; read once).
            top_n: return only the best ``top_n`` (``None``: all).
            score_threshold: drop scored documents below this score (before ``top_n`` counts).
            on_error: override the scorer's ``on_error`` for this call.
            refused: errors the caller already found, one entry per document (see :meth:`prepare`).
        """
        call = self._begin(query, documents, top_n, score_threshold, on_error, refused)
        if call.query.has_image or any(d.has_image for d in call.documents):
            await asyncio.to_thread(self._read, call)
        else:
            self._read(call)
        return call

    # ------------------------------------------------------------------ the seam, step 2: the model
    def rank_documents(self, query: Query, documents: list[Document]) -> Ranking:
        """Rank prepared, readable documents (``PreparedRanking.readable_documents``): ``(position in
        documents, score)`` best first, every position once. One model call at a time per scorer.

        Args:
            query: the prepared query (``PreparedRanking.query``).
            documents: the readable documents (``PreparedRanking.readable_documents``).
        """
        if not documents:
            return []
        with self._model_lock:
            ranking = self._rank_documents(query, documents)
        return check_ranking(ranking, len(documents))

    async def arank_documents(self, query: Query, documents: list[Document]) -> Ranking:
        """Async :meth:`rank_documents`.

        Args:
            query: the prepared query (``PreparedRanking.query``).
            documents: the readable documents (``PreparedRanking.readable_documents``).
        """
        if not documents:
            return []
        return check_ranking(await self._arank_documents(query, documents), len(documents))

    # ------------------------------------------------------------------ the seam, step 3: finish
    def finish(self, call: PreparedRanking, ranking: Ranking) -> list[RankedDocument]:
        """The ranking of the readable documents (positions within ``call.readable``) at or above the
        threshold, then the unreadable ones in input order; the best ``top_n`` of that.

        Args:
            call: what :meth:`prepare` returned.
            ranking: what :meth:`rank_documents` returned for ``call.readable_documents``.
        """
        good = call.readable
        check_ranking(ranking, len(good))
        late = _late_errors(call, good)
        threshold = call.score_threshold
        ordered = [RankedDocument(index=good[j], score=float(s), document=call.documents[good[j]])
                   for j, s in ranking if j not in late and (threshold is None or float(s) >= threshold)]
        failed = call.failed
        if failed:  # one line per call, however many documents failed
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            logger.warning("mmrank: %s%s — ranked last", call.errors[failed[0]], more)
        ordered.extend(RankedDocument(index=i, score=None, document=call.documents[i], error=str(call.errors[i]))
                       for i in failed)
        return ordered if call.top_n is None else ordered[: call.top_n]

    # ------------------------------------------------------------------ hooks for subclasses
    @abstractmethod
    def _rank_documents(self, query: Query, documents: list[Document]) -> Ranking:
        """Return ``(position in documents, score)`` for every document, best first.

        Every position must appear exactly once; scores must not increase down the list."""

    async def _arank_documents(self, query: Query, documents: list[Document]) -> Ranking:
        """Async hook; default: :meth:`rank_documents` in a worker thread (a remote scorer overrides it)."""
        return await asyncio.to_thread(self.rank_documents, query, documents)

    def _check_query(self, query: Query) -> None:
        if query.has_image and not self.supports_image_query:
            raise InputError(f"{type(self).__name__} does not accept image queries")
        if query.has_image:
            self._read_image(query)  # errors name the query image

    def _read_image(self, item: Document | Query) -> None:
        """Read and check the image of a document or query before any scoring; raise
        :class:`ImageLoadError` / :class:`InputError`. Runs in worker threads for documents."""
        self._check_image(item.load_image(self.image_policy))

    def _peek_image(self, item: Document) -> None:
        """What :meth:`_read_image` checks, from the image's header only (``streams_images`` scorers under
        ``on_error="last"``): the pixels are decoded by the model step."""
        self._check_image_size(*item.image_size(self.image_policy))

    def _check_image(self, image) -> None:
        """Raise :class:`InputError` for a decoded image this scorer cannot take. Called for every image
        query and image document that is decoded in ``prepare``; default: :meth:`_check_image_size`."""
        self._check_image_size(*image.size)

    def _check_image_size(self, width: int, height: int) -> None:  # noqa: B027 - optional hook
        """Raise :class:`InputError` for an image size this scorer cannot take (e.g. an aspect ratio its image
        processor refuses); default: accept."""

    def _prepare_documents(self, documents: list[Document], errors: list[DocumentError | None] | None = None,
                           *, decode: bool = True) -> list[DocumentError | None]:
        """Read every image up front, in parallel; return one error (or None) per document. ``errors``:
        errors already known (those documents are skipped). ``decode=False``: read only as far as the sizes
        (:meth:`_peek_image`); the model step decodes."""
        known = errors if errors is not None else [None] * len(documents)
        errors = [known[i] or self._shape_error(i, d) for i, d in enumerate(documents)]
        todo = [i for i, d in enumerate(documents) if d.has_image and errors[i] is None]
        read = self._read_image if decode else self._peek_image

        def load(i: int) -> None:
            try:
                read(documents[i])
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

    def _shape_error(self, i: int, doc: Document) -> InputError | None:
        """The error of a document this scorer cannot take whatever its image holds, or ``None``."""
        problem = doc.problem()  # no text nor image, text that is not text
        if problem:
            return InputError(f"document {i}{_id_suffix(doc)}: {problem}")
        if doc.has_image and not self.supports_image_documents:
            return InputError(f"document {i}{_id_suffix(doc)}: {type(self).__name__} does not accept image documents")
        return None

    # ------------------------------------------------------------------ internals of prepare
    def _begin(self, query: Any, documents: Any, top_n: Any, score_threshold: Any, on_error: Any,
               refused: Sequence[DocumentError | None] | None) -> PreparedRanking:
        """Check the call's options; coerce the query and the documents."""
        policy = check_on_error(self.on_error if on_error is None else on_error)
        top_n, score_threshold = check_top_n(top_n), check_score_threshold(score_threshold)
        q, docs = Query.coerce(query), coerce_documents(documents)
        if refused is not None and len(refused) != len(docs):
            raise InputError(f"refused has {len(refused)} entries for {len(docs)} documents")
        return PreparedRanking(q, docs, list(refused) if refused is not None else [], top_n, score_threshold, policy)

    def _read(self, call: PreparedRanking) -> None:
        """Check the query, read the images, record the document errors (raise the first under "raise")."""
        if not call.documents:
            return
        self._check_query(call.query)
        if self.streams_images and call.on_error == "last":  # sizes now, pixels in the model step
            call.errors = self._prepare_documents(call.documents, call.errors, decode=False)
        else:
            call.errors = self._prepare_documents(call.documents, call.errors)
        failed = call.failed
        if failed and call.on_error == "raise":
            raise call.errors[failed[0]]  # type: ignore[misc]

    def close(self) -> None:  # noqa: B027 - a no-op default; scorers holding resources override it
        """Release resources (models, HTTP connections). Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PointwiseReranker(Reranker):
    """A reranker that scores each (query, document) pair independently; ranking sorts by score.

    Because a document's score does not depend on the other documents, callers may score the readable
    documents of several calls with the same query in one :meth:`score_documents` call (``mmrank serve``
    does) and rank each call's share with :func:`order_by_score`."""

    @abstractmethod
    def _score_documents(self, query: Query, documents: list[Document]) -> list[float]:
        """One score per document, in order."""

    def score_documents(self, query: Query, documents: list[Document]) -> list[float]:
        """The model step of a pointwise scorer: one score per prepared, readable document, in order.

        Args:
            query: the prepared query (``PreparedRanking.query``).
            documents: readable documents, from one call or from several calls that share the query.
        """
        if not documents:
            return []
        with self._model_lock:
            scores = self._score_documents(query, documents)
        return _checked_scores(scores, len(documents))

    def _rank_documents(self, query: Query, documents: list[Document]) -> Ranking:
        return order_by_score(_checked_scores(self._score_documents(query, documents), len(documents)))


def _checked_scores(scores: Sequence[float], n: int) -> list[float]:
    if len(scores) != n:
        raise RuntimeError(f"internal error: {len(scores)} scores for {n} documents")
    return [float(s) for s in scores]


def _in_input_order(ranked: list[RankedDocument]) -> list[float | None]:
    scores: list[float | None] = [None] * len(ranked)
    for r in ranked:
        scores[r.index] = r.score
    return scores


def _late_errors(call: PreparedRanking, good: list[int]) -> set[int]:
    """Positions (within ``good``) of documents whose image failed to decode during the model step; each
    becomes that document's error in ``call.errors``."""
    late: set[int] = set()
    for j, i in enumerate(good):
        doc = call.documents[i]
        exc = doc.image_error if doc.has_image else None
        if exc is not None:
            call.errors[i] = exc.for_document(i, doc.id)
            late.add(j)
    return late


def _id_suffix(doc: Document) -> str:
    return f" (id={doc.id!r})" if doc.id is not None else ""
