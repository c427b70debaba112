# SPDX-License-Identifier: Apache-2.0
"""Haystack ranker over mmrank: text, image and text+image Documents; text or image queries.

The component only translates: Haystack ``Document`` objects become :class:`mmrank.Document` objects, the
query (a string or an ``ImageContent``) becomes an :class:`mmrank.Query`, and the ranking comes back as
copies of the Documents with ``score`` set. Scoring, batching and image reading are mmrank's.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import mimetypes
import threading
from pathlib import Path
from typing import Any, Literal

from haystack import Document, component, default_from_dict, default_to_dict, logging
from haystack.core.errors import SerializationError
from haystack.dataclasses import ImageContent
from haystack.utils import ComponentDevice, Secret, deserialize_secrets_inplace

import mmrank
from mmrank.integration import (
    API_KEY_ENV,
    DEVICE_MODES,
    ERROR_KEY,
    RETRIEVAL_SCORE_KEY,
    Mode,
    arank,
    build_reranker,
    check_settings,
    check_shared_reranker,
    check_threshold,
    check_top_n,
    core_document,
    data_uri,
    kwargs_from_data,
    kwargs_to_data,
    rank,
)

__all__ = ["API_KEY_ENV", "ERROR_KEY", "RETRIEVAL_SCORE_KEY", "MMRankRanker", "Mode"]

logger = logging.getLogger(__name__)


@component
class MMRankRanker:
    """
    Ranks Documents by relevance to a query with an mmrank scorer (default: jina-reranker-m0, pointwise).

    Documents may carry text (``content``), an image, or both. The image is read from ``blob`` (a
    ``ByteStream`` whose ``mime_type`` is ``image/*`` or unset) or from the file named by
    ``meta[file_path_meta_field]`` (as ``ImageFileToDocument`` produces; resolved under ``root_path``). The
    query is a string or an ``ImageContent`` (an image query).

    Each returned Document is a copy with ``score`` set; at most ``top_k``, best first. Documents with the same
    id are merged first, keeping the highest retriever score (as Haystack's rankers do). A Document that
    cannot be scored (its image cannot be read, it has neither content nor image, ...) is ranked last with
    ``score=None`` and ``meta["rerank_error"]`` when ``on_error="last"`` (the default), or the run raises
    (naming the Document) when ``on_error="raise"``.

    ### Usage example

    ```python
    from haystack import Document
    from haystack_integrations.components.rankers.mmrank import MMRankRanker

    ranker = MMRankRanker(top_k=2)
    docs = [Document(content="Paris"), Document(content=None, meta={"file_path": "berlin.jpg"})]
    result = ranker.run(query="City in Germany", documents=docs)
    print(result["documents"][0].score)
    ```
    """

    def __init__(  # noqa: PLR0913
        self,
        *,
        model: str | None = None,
        mode: Mode = "pointwise",
        device: ComponentDevice | None = None,
        token: Secret | None = Secret.from_env_var(["HF_API_TOKEN", "HF_TOKEN"], strict=False),  # noqa: B008
        api_key: Secret | None = Secret.from_env_var(API_KEY_ENV, strict=False),  # noqa: B008
        url: str | None = None,
        top_k: int | None = 10,
        score_threshold: float | None = None,
        batch_size: int | None = None,
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
        file_path_meta_field: str = "file_path",
        root_path: str | None = None,
        keep_retrieval_score: bool = False,
        on_error: Literal["last", "raise"] = "last",
        reranker_kwargs: dict[str, Any] | None = None,
        reranker: mmrank.Reranker | None = None,
    ) -> None:
        """
        Create an MMRankRanker.

        :param model: Model id or local folder. `None` uses the mode's default (`jinaai/jina-reranker-m0` for
            pointwise); for `mode="remote"`, the model name the server is asked for.
        :param mode: The mmrank scorer: `"pointwise"`, `"listwise"`, `"pairwise"`, `"remote"` or `"chat"` (listwise
            or pairwise over an OpenAI-compatible chat-completions server; `url` is its base URL).
        :param device: The device to load the model on. If `None`, the default device is selected.
        :param token: Hugging Face token for private models.
        :param api_key: API key of the server (`mode="remote"` or `"chat"`); read from `MMRANK_API_KEY` by default.
        :param url: URL of the server (`mode="remote"` or `"chat"`).
        :param top_k: The maximum number of Documents to return (`None`: all).
        :param score_threshold: If set, scored Documents below it are dropped (Documents that failed are kept).
        :param batch_size: Pairs per forward pass (`None`: the scorer's default).
        :param meta_fields_to_embed: Meta fields joined to the content (with `embedding_separator`) before scoring.
        :param embedding_separator: Separator between meta fields and content.
        :param file_path_meta_field: Meta field naming a Document's image file.
        :param root_path: Directory that image file paths are resolved against; a path escaping it is refused.
        :param keep_retrieval_score: Keep the retriever's score in `meta["retrieval_score"]`.
        :param on_error: A Document whose image cannot be read: `"last"` ranks it last with
            `meta["rerank_error"]`, `"raise"` raises.
        :param reranker_kwargs: Extra keyword arguments for `mmrank.load_reranker` (YAML-serializable to save the
            pipeline; an `image_policy` is saved as a dict of its fields).
        :param reranker: An already-built `mmrank.Reranker` to use (shares one model; such a ranker cannot be
            serialized).

        :raises ValueError: If `top_k` is not a positive integer or None, `score_threshold` not a number or None,
            or `on_error` unknown.
        """
        check_top_n(top_k, "top_k")
        check_threshold(score_threshold)
        if on_error not in ("last", "raise"):
            raise ValueError(f"on_error must be 'last' or 'raise', got {on_error!r}")
        # ValueError now rather than at warm_up (the Secrets have environment defaults: checked where used).
        check_settings(mode, batch_size=batch_size, device=device, url=url)
        check_shared_reranker(reranker, "MMRankRanker", device=device, batch_size=batch_size,
                              reranker_kwargs=reranker_kwargs)
        if root_path and reranker is not None and not _same_root(reranker.image_policy.root_path, root_path):
            raise ValueError(
                f"root_path={root_path!r} must also be the shared reranker's ImagePolicy.root_path (it is "
                f"{reranker.image_policy.root_path!r}): mmrank enforces it when it reads the files"
            )
        self.model = model if model is not None or reranker is None else reranker.model_name
        self.mode = mode
        self.device = ComponentDevice.resolve_device(device) if mode in DEVICE_MODES and reranker is None else device
        self.token = token
        self.api_key = api_key
        self.url = url
        self.top_k = top_k
        self.score_threshold = score_threshold
        self.batch_size = batch_size
        self.meta_fields_to_embed = meta_fields_to_embed or []
        self.embedding_separator = embedding_separator
        self.file_path_meta_field = file_path_meta_field
        self.root_path = root_path
        self.keep_retrieval_score = keep_retrieval_score
        self.on_error = on_error
        self.reranker_kwargs = kwargs_from_data(reranker_kwargs)  # from_dict hands an ImagePolicy back as a dict
        self._shared = reranker is not None
        self._reranker: mmrank.Reranker | None = reranker
        self._lock = threading.Lock()

    def _get_telemetry_data(self) -> dict[str, Any]:
        """Data that is sent to Posthog for usage analytics."""
        return {"model": self.model, "mode": self.mode}

    # ------------------------------------------------------------------ lifecycle
    def warm_up(self) -> None:
        """Load the model (once). Pipelines call this; `run` calls it too if needed."""
        with self._lock:
            if self._reranker is None:
                self._reranker = self._load()

    async def warm_up_async(self) -> None:
        """Load the model in a worker thread, so the serving event loop is not blocked."""
        if self._reranker is None:
            await asyncio.to_thread(self.warm_up)

    def _load(self) -> mmrank.Reranker:
        # mmrank checks that each setting applies to the mode. Each Secret is resolved only where it is used:
        # the hub token for local models, the API key for a remote server.
        local = self.mode in DEVICE_MODES
        secret = self.token if local else self.api_key
        value = secret.resolve_value() if secret else None
        kwargs = dict(self.reranker_kwargs)
        if self.root_path:
            policy = kwargs.get("image_policy") or mmrank.ImagePolicy()
            kwargs["image_policy"] = dataclasses.replace(policy, root_path=self.root_path)
        return build_reranker(
            self.mode,
            self.model,
            device=self.device.to_torch_str() if isinstance(self.device, ComponentDevice) else self.device,
            batch_size=self.batch_size,
            url=self.url,
            token=value if local else None,
            api_key=None if local else value,
            reranker_kwargs=kwargs,
        )

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        """
        Serializes the component to a dictionary.

        :returns: Dictionary with serialized data.
        :raises SerializationError: If the ranker wraps a live `mmrank.Reranker` passed as `reranker=`.
        """
        if self._shared:
            raise SerializationError(
                "MMRankRanker built with reranker=<mmrank.Reranker> cannot be serialized: the scorer object is "
                "not data. Build it with model=/mode=/device= instead to save the pipeline."
            )
        return default_to_dict(
            self,
            model=self.model,
            mode=self.mode,
            device=self.device.to_dict() if self.device is not None else None,
            token=self.token.to_dict() if self.token else None,
            api_key=self.api_key.to_dict() if self.api_key else None,
            url=self.url,
            top_k=self.top_k,
            score_threshold=self.score_threshold,
            batch_size=self.batch_size,
            meta_fields_to_embed=self.meta_fields_to_embed,
            embedding_separator=self.embedding_separator,
            file_path_meta_field=self.file_path_meta_field,
            root_path=self.root_path,
            keep_retrieval_score=self.keep_retrieval_score,
            on_error=self.on_error,
            reranker_kwargs=kwargs_to_data(self.reranker_kwargs),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MMRankRanker:
        """
        Deserializes the component from a dictionary.

        :param data: Dictionary to deserialize from.
        :returns: Deserialized component.
        """
        init_params = data.get("init_parameters", {})
        if init_params.get("device") is not None:
            init_params["device"] = ComponentDevice.from_dict(init_params["device"])
        deserialize_secrets_inplace(init_params, keys=["token", "api_key"])
        return default_from_dict(cls, data)

    # ------------------------------------------------------------------ translation
    def _query(self, query: str | ImageContent) -> mmrank.Query:
        if isinstance(query, ImageContent):
            return mmrank.Query(image=data_uri(query.base64_image, query.mime_type))
        return mmrank.Query(text=query)

    def _text(self, doc: Document, has_image: bool) -> Any:
        if doc.content is not None and not isinstance(doc.content, str):
            return doc.content  # not text: mmrank names the Document in its error
        parts = [str(doc.meta[k]) for k in self.meta_fields_to_embed if doc.meta.get(k)]
        if doc.content:
            parts.append(doc.content)
        if parts:
            return self.embedding_separator.join(parts)
        # content "" without an image is an empty text, scored as Haystack's rankers score it; None content
        # without an image is reported ("neither text nor image"), never guessed.
        return doc.content if doc.content is not None and not has_image else None

    def _image(self, doc: Document) -> Any:
        """The image source of one Document, or None. ``TypeError`` for a blob whose data is not bytes."""
        blob = doc.blob
        if blob is not None and blob.data and (not _is_str(blob.mime_type) or blob.mime_type.startswith("image/")):
            if not isinstance(blob.data, bytes | bytearray | memoryview):
                # A str here would be read as a path or URL: refuse it instead of guessing.
                raise TypeError(f"blob.data is a {type(blob.data).__name__}, not bytes")
            return bytes(blob.data)
        file_path = doc.meta.get(self.file_path_meta_field)
        if not file_path:
            return None
        path = Path(self.root_path or "", str(file_path))
        mime = doc.meta.get("mime_type")
        mime = mime if _is_str(mime) else mimetypes.guess_type(path.name)[0]
        if (mime and mime.startswith("image/")) or (mime is None and not doc.content):
            return path  # mmrank reads it; a path escaping root_path is refused by its ImagePolicy
        return None  # e.g. the .txt/.pdf a text Document was converted from: its text is scored

    def _documents(self, documents: list[Document]) -> tuple[list[mmrank.Document], list[Any]]:
        """The core's documents (duplicates by id merged, as Haystack's rankers do) and one error (or None)
        per document whose image source cannot even be handed to mmrank."""
        docs, refused = [], []
        for i, d in enumerate(_deduplicate(documents)):
            try:
                image, problem = self._image(d), None
            except TypeError as exc:
                image, problem = None, str(exc)
            doc, error = core_document(i, text=self._text(d, image is not None), image=image, doc_id=d.id,
                                       payload=d, image_problem=problem)
            docs.append(doc)
            refused.append(error)
        return docs, refused

    def _options(self, top_k: int | None, score_threshold: float | None) -> dict[str, Any]:
        """The rank options; run-time values override those set at init (and are checked like them)."""
        top_k = check_top_n(self.top_k if top_k is None else top_k, "top_k")
        threshold = check_threshold(self.score_threshold if score_threshold is None else score_threshold)
        return {"top_n": top_k, "score_threshold": threshold, "on_error": self.on_error}

    def _results(self, ranked: list[mmrank.RankedDocument]) -> list[Document]:
        out = []
        for r in ranked:
            doc: Document = r.payload
            meta = dict(doc.meta)
            if self.keep_retrieval_score:
                meta[RETRIEVAL_SCORE_KEY] = doc.score
            if r.error is not None:
                meta[ERROR_KEY] = r.error
            else:  # an error from an earlier reranking stage no longer holds
                meta.pop(ERROR_KEY, None)
            out.append(_copy(doc, score=r.score, meta=meta))
        return out

    # ------------------------------------------------------------------ run
    @component.output_types(documents=list[Document])
    def run(
        self,
        query: str | ImageContent,
        documents: list[Document],
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """
        Returns the Documents ranked by relevance to the query, best first.

        :param query: The query: text, or an `ImageContent` for an image query.
        :param documents: The Documents to rank.
        :param top_k: The maximum number of Documents to return. Overrides the value set at initialization.
        :param score_threshold: Drop scored Documents below this score. Overrides the value set at initialization.
        :returns: A dictionary with the following key:
            - `documents`: copies of the Documents with `score` set, best first.
        :raises ValueError: If `top_k` is not a positive integer or None, or `score_threshold` not a number or None.
        :raises TypeError: If an item of `documents` is not a Document.
        """
        options = self._options(top_k, score_threshold)
        if not documents:
            return {"documents": []}
        q, (docs, refused) = self._query(query), self._documents(documents)
        self.warm_up()
        assert self._reranker is not None
        return {"documents": self._results(rank(self._reranker, q, docs, refused, **options))}

    @component.output_types(documents=list[Document])
    async def run_async(
        self,
        query: str | ImageContent,
        documents: list[Document],
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """
        Asynchronously rank Documents; same parameters and result as `run`. The model runs in a worker
        thread, so the event loop is never blocked.

        :param query: The query: text, or an `ImageContent` for an image query.
        :param documents: The Documents to rank.
        :param top_k: The maximum number of Documents to return. Overrides the value set at initialization.
        :param score_threshold: Drop scored Documents below this score. Overrides the value set at initialization.
        :returns: A dictionary with the following key:
            - `documents`: copies of the Documents with `score` set, best first.
        :raises ValueError: If `top_k` is not a positive integer or None, or `score_threshold` not a number or None.
        :raises TypeError: If an item of `documents` is not a Document.
        """
        options = self._options(top_k, score_threshold)
        if not documents:
            return {"documents": []}
        q, (docs, refused) = self._query(query), self._documents(documents)
        await self.warm_up_async()
        assert self._reranker is not None
        return {"documents": self._results(await arank(self._reranker, q, docs, refused, **options))}


def _copy(doc: Document, **changes: Any) -> Document:
    """A copy of ``doc`` with ``changes`` (id, content, blob, embedding kept; the caller's Document untouched)."""
    try:
        return dataclasses.replace(doc, **changes)
    except ValueError:
        # Content of the wrong type (assigned after construction; this Document's error says so): Document's
        # own checks refuse to build a copy, so copy it field by field instead of failing after ranking.
        copied = copy.copy(doc)
        for name, value in changes.items():
            object.__setattr__(copied, name, value)
        return copied


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _deduplicate(documents: list[Document]) -> list[Document]:
    """One Document per id, in order of first appearance, keeping the one with the highest retriever score
    (as Haystack's own rankers do: Documents with the same id are the same Document)."""
    for i, d in enumerate(documents):
        if not isinstance(d, Document):
            raise TypeError(f"documents[{i}] is a {type(d).__name__}, not a haystack Document")
    best: dict[str, Document] = {}
    for d in documents:
        kept = best.get(d.id)
        if kept is None or _score(d) > _score(kept):
            best[d.id] = d
    return list(best.values())


def _score(doc: Document) -> float:
    return doc.score if isinstance(doc.score, int | float) and doc.score == doc.score else float("-inf")


def _same_root(a: str | None, b: str) -> bool:
    return a is not None and Path(a).resolve() == Path(b).resolve()
