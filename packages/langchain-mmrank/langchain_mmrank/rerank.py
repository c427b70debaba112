"""LangChain document compressor over mmrank: text, image and text+image documents.

LangChain's ``Document`` has no image field, so images are named in metadata (see :data:`IMAGE_KEYS`).
The compressor only translates: each ``Document`` becomes an :class:`mmrank.Document` (the original rides
along as ``payload``), mmrank ranks, and copies of the documents come back with
``metadata["relevance_score"]``. Scoring, batching and image reading are mmrank's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import mmrank
from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.utils import secret_from_env
from mmrank.integration import (
    API_KEY_ENV,
    ERROR_KEY,
    HTTP_MODES,
    RETRIEVAL_SCORE_KEY,
    SCORE_KEY,
    Mode,
    arank,
    build_reranker,
    check_shared_reranker,
    check_threshold,
    check_top_n,
    core_document,
    data_uri,
    image_source_problem,
    kwargs_from_data,
    kwargs_to_data,
    path_or_url,
    rank,
)
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, field_serializer, field_validator

__all__ = ["API_KEY_ENV", "ERROR_KEY", "IMAGE_KEYS", "RETRIEVAL_SCORE_KEY", "SCORE_KEY", "MMRankRerank",
           "document_image"]

#: Metadata keys that name a document's image, in the order they are looked up (the first present wins):
#:
#: - ``image``: anything mmrank reads — a PIL image, encoded bytes, a path, an ``http(s)://``/``file://`` URL,
#:   a ``data:`` URI or bare base64;
#: - ``image_base64``: base64 of the encoded image (``mime_type`` in metadata, if present, is used);
#: - ``image_path``: a local file path;
#: - ``image_url``: an ``http(s)://``, ``file://`` or ``data:`` URL.
#:
#: A document with an image and non-empty ``page_content`` is scored as text+image.
IMAGE_KEYS = ("image", "image_base64", "image_path", "image_url")


def document_image(doc: Document) -> Any:
    """The image source named by a document's metadata (see :data:`IMAGE_KEYS`), or None.

    Args:
        doc: a LangChain ``Document``.

    Returns:
        What mmrank will read as the document's image (a path, URL, ``data:`` URI, bytes or PIL image), or
        ``None`` when the metadata names none.
    """
    entry = _image_entry(doc)
    if entry is None:
        return None
    key, value = entry
    if key == "image_base64":
        mime = (doc.metadata or {}).get("mime_type")
        return data_uri(value, mime if isinstance(mime, str) else None)
    return path_or_url(value) if key == "image_path" else value


def _image_entry(doc: Document) -> tuple[str, Any] | None:
    """The first of :data:`IMAGE_KEYS` present in the metadata with a non-empty value, and that value."""
    meta = doc.metadata or {}
    for key in IMAGE_KEYS:
        value = meta.get(key)
        if value is None or (isinstance(value, str | bytes) and len(value) == 0):
            continue
        return key, value
    return None


def _image_problem(doc: Document) -> str | None:
    """Why the image a document's metadata names cannot be handed to mmrank at all, or None."""
    entry = _image_entry(doc)
    if entry is None:
        return None
    key, value = entry
    if key == "image":
        problem = image_source_problem(value)
    elif not isinstance(value, _KEY_TYPES[key][0]):
        problem = f"{type(value).__name__} is not {_KEY_TYPES[key][1]}"
    else:
        problem = None
    return f"metadata[{key!r}]: {problem}" if problem else None


#: What each specific image key must hold (``image`` takes anything mmrank reads).
_KEY_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "image_base64": ((str, bytes), "base64 text"),
    "image_path": ((str, os.PathLike), "a path"),
    "image_url": ((str,), "a URL string"),
}


class MMRankRerank(BaseDocumentCompressor):
    """Rerank documents with an mmrank scorer (default: jina-reranker-m0, pointwise).

    Works standalone (``compress_documents``) and inside ``ContextualCompressionRetriever``. Returns at most
    ``top_n`` copies of the input documents (ids kept), best first, each with
    ``metadata["relevance_score"]``. A document that cannot be scored (its image cannot be read, an image key
    holds a value of the wrong type, its text is not valid text) is ranked last with
    ``relevance_score=None`` and ``metadata["rerank_error"]`` when ``on_error="last"`` (the default), or
    the call raises :class:`mmrank.ImageLoadError` / :class:`mmrank.InputError` naming it when
    ``on_error="raise"``. Empty ``page_content`` without an image is an empty text, scored.

    Pass ``reranker=`` (an :class:`mmrank.Reranker`) to share one loaded model between compressors.
    """

    model: str | None = None
    """Model id or local folder; None uses the mode's default (``jinaai/jina-reranker-m0`` for pointwise)."""
    mode: Mode = "pointwise"
    """mmrank scorer kind."""
    top_n: int | None = 3
    """Number of documents to return (None: all)."""
    device: str | None = None
    """Torch device, e.g. ``"cuda"`` or ``"cpu"`` (None: auto)."""
    batch_size: int | None = None
    """Pairs per forward pass (None: the scorer's default)."""
    score_threshold: float | None = None
    """Drop scored documents below this score (documents that failed are kept, last)."""
    keep_retrieval_score: bool = False
    """Copy the retriever's score (metadata ``relevance_score``, else ``score``) to ``retrieval_score``."""
    on_error: Literal["last", "raise"] = "last"
    """A document whose image cannot be read: ``"last"`` ranks it last with ``metadata["rerank_error"]``;
    ``"raise"`` raises."""
    url: str | None = None
    """Server URL for ``mode="remote"`` (rerank API) or ``mode="chat"`` (chat-completions server)."""
    mmrank_api_key: SecretStr | None = Field(
        alias="api_key", default_factory=secret_from_env(API_KEY_ENV, default=None)
    )
    """API key for ``mode="remote"`` or ``mode="chat"`` (default: ``$MMRANK_API_KEY``)."""
    reranker_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for :func:`mmrank.load_reranker`."""
    reranker: mmrank.Reranker | None = Field(default=None, exclude=True)
    """An already-built mmrank scorer to use instead of loading one."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    _scorer: mmrank.Reranker | None = PrivateAttr(default=None)

    @field_validator("top_n", "score_threshold", mode="before")
    @classmethod
    def _no_bool(cls, v: Any, info: Any) -> Any:
        # pydantic would take True for 1; the other lax conversions ("3", 3.0) are pydantic's convention.
        if isinstance(v, bool):
            raise ValueError(f"{info.field_name} must be a number or None, got {v!r}")
        return v

    @field_validator("top_n")
    @classmethod
    def _check_top_n(cls, v: int | None) -> int | None:
        return check_top_n(v)

    @field_validator("score_threshold")
    @classmethod
    def _check_threshold(cls, v: float | None) -> float | None:
        return check_threshold(v)

    @field_validator("reranker_kwargs", mode="before")
    @classmethod
    def _load_kwargs(cls, v: Any) -> Any:
        return kwargs_from_data(v) if isinstance(v, dict) else v

    @field_serializer("reranker_kwargs")
    def _dump_kwargs(self, v: dict[str, Any]) -> dict[str, Any]:
        return kwargs_to_data(v)

    def model_post_init(self, context: Any, /) -> None:
        shared = check_shared_reranker(self.reranker, "MMRankRerank", device=self.device, batch_size=self.batch_size,
                                       reranker_kwargs=self.reranker_kwargs)
        # Load now, like LangChain's rerankers build their client: a wrong model fails here, not mid-chain.
        self._scorer = shared if shared is not None else self._load()

    def _load(self) -> mmrank.Reranker:
        # mmrank checks that each setting applies to the mode; the remote key comes from the environment
        # by default, so it is passed only where it is used.
        key = self.mmrank_api_key.get_secret_value() if self.mmrank_api_key and self.mode in HTTP_MODES else None
        return build_reranker(self.mode, self.model, device=self.device, batch_size=self.batch_size, url=self.url,
                              api_key=key, reranker_kwargs=self.reranker_kwargs)

    @property
    def scorer(self) -> mmrank.Reranker:
        """The mmrank scorer in use."""
        assert self._scorer is not None
        return self._scorer

    # ------------------------------------------------------------------ translation
    @staticmethod
    def _documents(documents: Sequence[Document]) -> tuple[list[mmrank.Document], list[mmrank.InputError | None]]:
        """The core's documents, and one error (or None) per document that cannot even be handed to mmrank
        (metadata naming an image with a value of the wrong type, ``page_content`` assigned a non-str): it
        is then ranked last, or raised, like an unreadable image."""
        docs, refused = [], []
        for i, d in enumerate(documents):
            if not isinstance(d, Document):
                raise TypeError(f"documents[{i}] is a {type(d).__name__}, not a langchain_core Document")
            problem = _image_problem(d)
            image = None if problem else document_image(d)
            # Empty page_content is no text when there is an image (an image document); without one it is
            # an empty text, scored as LangChain's own rerankers score it.
            text = d.page_content if d.page_content or image is None else None
            doc, error = core_document(i, text=text, image=image, doc_id=d.id, payload=d, image_problem=problem)
            docs.append(doc)
            refused.append(error)
        return docs, refused

    def _rank_options(self) -> dict[str, Any]:
        # Checked again here: pydantic does not validate attributes assigned after construction.
        return {"top_n": check_top_n(self.top_n), "score_threshold": check_threshold(self.score_threshold),
                "on_error": self.on_error}

    def _results(self, ranked: list[mmrank.RankedDocument]) -> list[Document]:
        out = []
        for r in ranked:
            doc: Document = r.payload
            meta = dict(doc.metadata)
            if self.keep_retrieval_score:
                prior = meta.get(SCORE_KEY, meta.get("score"))
                if prior is not None:
                    meta[RETRIEVAL_SCORE_KEY] = prior
            meta[SCORE_KEY] = r.score
            if r.error is not None:
                meta[ERROR_KEY] = r.error
            else:  # an error from an earlier reranking stage no longer holds
                meta.pop(ERROR_KEY, None)
            out.append(doc.model_copy(update={"metadata": meta}))  # keeps id, page_content, type
        return out

    # ------------------------------------------------------------------ compressor API
    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query``; return copies of the best ``top_n``, best first.

        Args:
            documents: the retrieved documents (text in ``page_content``, an image named in metadata: see
                :data:`IMAGE_KEYS`).
            query: the query text.
            callbacks: LangChain callbacks (accepted for the interface; the compressor emits no events).

        Returns:
            Copies of the documents (ids kept) with ``metadata["relevance_score"]``, best first.
        """
        options = self._rank_options()
        if not documents:
            return []
        docs, refused = self._documents(documents)
        return self._results(rank(self.scorer, query, docs, refused, **options))

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`; the model runs in a worker thread, the event loop stays free.

        Args:
            documents: the retrieved documents.
            query: the query text.
            callbacks: LangChain callbacks (accepted for the interface; the compressor emits no events).

        Returns:
            Copies of the documents with ``metadata["relevance_score"]``, best first.
        """
        options = self._rank_options()
        if not documents:
            return []
        docs, refused = self._documents(documents)
        return self._results(await arank(self.scorer, query, docs, refused, **options))
