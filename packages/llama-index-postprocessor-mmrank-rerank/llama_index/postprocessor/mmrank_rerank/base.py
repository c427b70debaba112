"""LlamaIndex node postprocessor over mmrank: text, image and text+image nodes; text or image queries.

The postprocessor only translates: LlamaIndex nodes become :class:`mmrank.Document` objects (the
``NodeWithScore`` rides along as ``payload``), the query bundle becomes an :class:`mmrank.Query`, and the
ranking comes back as new ``NodeWithScore`` objects. Scoring, batching and image reading are mmrank's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import mmrank
from llama_index.core.bridge.pydantic import Field, PrivateAttr, SecretStr, field_serializer, field_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, ImageNode, MetadataMode, NodeWithScore, QueryBundle
from mmrank.integration import (
    API_KEY_ENV,
    ERROR_KEY,
    HTTP_MODES,
    RETRIEVAL_SCORE_KEY,
    Mode,
    arank,
    build_reranker,
    check_shared_reranker,
    check_threshold,
    check_top_n,
    core_document,
    data_uri,
    kwargs_from_data,
    kwargs_to_data,
    path_or_url,
    rank,
)

__all__ = ["API_KEY_ENV", "ERROR_KEY", "RETRIEVAL_SCORE_KEY", "MMRankRerank", "node_image"]

dispatcher = get_dispatcher(__name__)


class MMRankRerank(BaseNodePostprocessor):
    """Rerank nodes with an mmrank scorer (default: jina-reranker-m0, pointwise).

    Nodes may be text (``TextNode``), images (``ImageNode`` with ``image`` / ``image_path`` /
    ``image_url``; ``Node`` or ``ImageDocument`` with an ``image_resource``) or both (an image node with
    text). The query is ``QueryBundle.query_str`` or, for an image query, ``QueryBundle.image_path``.

    Scores go to ``NodeWithScore.score``; the result holds at most ``top_n`` nodes, best first. A node whose
    image cannot be read is ranked last with ``score=None`` and ``metadata["rerank_error"]`` when
    ``on_error="last"`` (the default), or the call raises :class:`mmrank.ImageLoadError` naming the node
    when ``on_error="raise"``. Nodes are never mutated: a node whose metadata changes is copied.

    Pass ``reranker=`` (an :class:`mmrank.Reranker`) to share one loaded model between postprocessors.

    The model loads when the postprocessor is built, so a wrong model name fails here, not mid-query.

    Args:
        top_n: nodes to return, best first (``None``: all).
        model: model id or local folder; ``None`` uses the mode's default (``jinaai/jina-reranker-m0`` for
            pointwise). With ``mode="remote"``, the model name the server is asked for.
        mode: the mmrank scorer: ``"pointwise"``, ``"listwise"``, ``"pairwise"``, ``"remote"`` (a rerank API) or
            ``"chat"`` (listwise or pairwise over a chat-completions server).
        device: torch device, e.g. ``"cuda"`` or ``"cpu"`` (``None``: CUDA if available); local modes only.
        batch_size: pairs per forward pass (``None``: the scorer's default); pointwise and pairwise only.
        score_threshold: drop scored nodes below this score, before ``top_n`` counts (nodes that failed are
            kept, last).
        keep_retrieval_score: keep the retriever's score in ``metadata["retrieval_score"]``.
        on_error: a node whose image cannot be read: ``"last"`` ranks it last with
            ``metadata["rerank_error"]``, ``"raise"`` raises :class:`mmrank.ImageLoadError`.
        url: server URL for ``mode="remote"`` or ``mode="chat"``.
        api_key: API key for ``mode="remote"`` / ``"chat"`` (default: ``$MMRANK_API_KEY``); kept as a ``SecretStr`` and
            never serialized.
        reranker_kwargs: other options of the mmrank scorer, passed to :func:`mmrank.load_reranker` (e.g.
            ``max_length``, ``image_policy``, ``window_size``).
        reranker: an already-built :class:`mmrank.Reranker` to use instead of loading one (then ``device``,
            ``batch_size`` and ``reranker_kwargs`` must be set on that scorer).
        **kwargs: other fields of the postprocessor, below.

    Keyword Args:
        callback_manager (CallbackManager): LlamaIndex callback manager for the legacy ``CBEventType.RERANKING`` events
            (default: the global one).
        metadata_mode (MetadataMode): which metadata joins a node's text (``MetadataMode.EMBED`` by default, as
            LlamaIndex's own rerankers).
    """

    model: str | None = Field(
        default=None,
        description="Model id or local folder; None uses the mode's default (jinaai/jina-reranker-m0 for pointwise).",
    )
    mode: Mode = Field(
        default="pointwise", description="mmrank scorer kind."
    )
    top_n: int | None = Field(default=5, description="Number of nodes to return (None: all), best first.")
    device: str | None = Field(default=None, description="Torch device, e.g. 'cuda' or 'cpu' (None: auto).")
    batch_size: int | None = Field(default=None, description="Pairs per forward pass (None: scorer default).")
    score_threshold: float | None = Field(
        default=None, description="Drop scored nodes below this score (nodes that failed are kept, last)."
    )
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the retriever's score in metadata['retrieval_score']."
    )
    on_error: Literal["last", "raise"] = Field(
        default="last",
        description="A node whose image cannot be read: 'last' ranks it last with metadata['rerank_error'], "
        "'raise' raises.",
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED, description="Which metadata goes into a node's text (as other rerankers)."
    )
    url: str | None = Field(default=None, description="Server URL for mode='remote' or 'chat'.")
    api_key: SecretStr | None = Field(
        default=None, exclude=True, description=f"API key for mode='remote' or 'chat' (default: ${API_KEY_ENV})."
    )
    reranker_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for mmrank.load_reranker."
    )

    _reranker: mmrank.Reranker | None = PrivateAttr(default=None)

    @field_validator("top_n", "score_threshold", mode="before")
    @classmethod
    def _no_bool(cls, v: Any, info: Any) -> Any:
        # pydantic would take True for 1; its other lax conversions ("3", 3.0) are the framework's convention.
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
        # from_dict / from_json hand back what to_dict wrote: an ImagePolicy as a dict of its fields.
        return kwargs_from_data(v) if isinstance(v, dict) else v

    @field_serializer("reranker_kwargs")
    def _dump_kwargs(self, v: dict[str, Any]) -> dict[str, Any]:
        return kwargs_to_data(v)

    def __init__(
        self,
        top_n: int | None = 5,
        model: str | None = None,
        mode: Mode = "pointwise",
        device: str | None = None,
        batch_size: int | None = None,
        score_threshold: float | None = None,
        keep_retrieval_score: bool = False,
        on_error: Literal["last", "raise"] = "last",
        url: str | None = None,
        api_key: str | SecretStr | None = None,
        reranker_kwargs: dict[str, Any] | None = None,
        reranker: mmrank.Reranker | None = None,
        **kwargs: Any,
    ) -> None:
        check_shared_reranker(reranker, "MMRankRerank", device=device, batch_size=batch_size,
                              reranker_kwargs=reranker_kwargs)
        if api_key is None and mode in HTTP_MODES:
            api_key = os.environ.get(API_KEY_ENV) or None
        super().__init__(
            top_n=top_n,
            model=model if model is not None or reranker is None else reranker.model_name,
            mode=mode,
            device=device,
            batch_size=batch_size,
            score_threshold=score_threshold,
            keep_retrieval_score=keep_retrieval_score,
            on_error=on_error,
            url=url,
            api_key=SecretStr(api_key) if isinstance(api_key, str) and api_key else api_key or None,
            reranker_kwargs=dict(reranker_kwargs or {}),
            **kwargs,
        )
        # Load now, as LlamaIndex's own rerankers do: a wrong model name fails here, not mid-query.
        self._reranker = reranker if reranker is not None else self._load()

    @classmethod
    def class_name(cls) -> str:
        return "MMRankRerank"

    @property
    def reranker(self) -> mmrank.Reranker:
        """The mmrank scorer in use."""
        assert self._reranker is not None
        return self._reranker

    def _load(self) -> mmrank.Reranker:
        # mmrank checks that each setting applies to the mode.
        key = self.api_key.get_secret_value() if self.api_key is not None else None
        return build_reranker(self.mode, self.model, device=self.device, batch_size=self.batch_size, url=self.url,
                              api_key=key, reranker_kwargs=self.reranker_kwargs)

    # ------------------------------------------------------------------ translation
    def _query(self, query_bundle: QueryBundle) -> mmrank.Query:
        image = getattr(query_bundle, "image_path", None)
        return mmrank.Query(text=query_bundle.query_str or None, image=path_or_url(image) if image else None)

    def _documents(self, nodes: list[NodeWithScore]) -> tuple[list[mmrank.Document], list[mmrank.InputError | None]]:
        """The core's documents, and one error (or None) per node that cannot even be handed to mmrank (it
        is then ranked last, or raised, like an unreadable image)."""
        docs, refused = [], []
        for i, nws in enumerate(nodes):
            node = nws.node
            image = node_image(node)
            # An image node's text counts only if it has some of its own: it must not be scored on its
            # metadata string alone. A node without an image is scored on get_content(metadata_mode), even
            # when that is empty, as LlamaIndex's own rerankers score it.
            own_text = node.get_content(metadata_mode=MetadataMode.NONE)
            text = node.get_content(metadata_mode=self.metadata_mode) if own_text or image is None else None
            doc, error = core_document(i, text=text, image=image, doc_id=node.node_id, payload=nws)
            docs.append(doc)
            refused.append(error)
        return docs, refused

    def _results(self, ranked: list[mmrank.RankedDocument]) -> list[NodeWithScore]:
        out = []
        for r in ranked:
            nws: NodeWithScore = r.payload
            node = nws.node
            updates: dict[str, Any] = {}
            if self.keep_retrieval_score:
                updates[RETRIEVAL_SCORE_KEY] = nws.score
            if r.error is not None:
                updates[ERROR_KEY] = r.error
            if updates or ERROR_KEY in node.metadata:  # an earlier stage's error no longer holds
                node = _copy_with_metadata(node, updates)
            out.append(NodeWithScore(node=node, score=r.score))
        return out

    def _rank_options(self) -> dict[str, Any]:
        # Checked again here: pydantic does not validate attributes assigned after construction.
        return {"top_n": check_top_n(self.top_n), "score_threshold": check_threshold(self.score_threshold),
                "on_error": self.on_error}

    def _start(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> None:
        for i, nws in enumerate(nodes):
            if not isinstance(nws, NodeWithScore):
                raise TypeError(f"nodes[{i}] is a {type(nws).__name__}, not a NodeWithScore")
        self._rank_options()
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle,
                nodes=nodes,
                top_n=self.top_n if self.top_n is not None else len(nodes),
                model_name=self.reranker.model_name,
            )
        )

    def _cb_payload(self, nodes: list[NodeWithScore], query_bundle: QueryBundle) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.reranker.model_name,
            EventPayload.QUERY_STR: query_bundle.query_str,
            EventPayload.TOP_K: self.top_n,
        }

    # ------------------------------------------------------------------ postprocessing
    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        self._start(nodes, query_bundle)
        if query_bundle is None:
            raise ValueError("Missing query bundle in extra info.")
        if len(nodes) == 0:
            dispatcher.event(ReRankEndEvent(nodes=[]))
            return []
        query, (docs, refused) = self._query(query_bundle), self._documents(nodes)
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._cb_payload(nodes, query_bundle)) as event:
            ranked = rank(self.reranker, query, docs, refused, **self._rank_options())
            new_nodes = self._results(ranked)
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes))
        return new_nodes

    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        self._start(nodes, query_bundle)
        if query_bundle is None:
            raise ValueError("Missing query bundle in extra info.")
        if len(nodes) == 0:
            dispatcher.event(ReRankEndEvent(nodes=[]))
            return []
        query, (docs, refused) = self._query(query_bundle), self._documents(nodes)
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._cb_payload(nodes, query_bundle)) as event:
            # mmrank runs the model (and image reading) in a worker thread: the event loop stays free.
            ranked = await arank(self.reranker, query, docs, refused, **self._rank_options())
            new_nodes = self._results(ranked)
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes))
        return new_nodes


def node_image(node: BaseNode) -> Any:
    """The image source of a node in any of LlamaIndex's shapes, or None.

    ``ImageNode``: ``image`` (base64) > ``image_path`` > ``image_url``. ``Node`` / ``Document`` /
    ``ImageDocument``: ``image_resource`` data (base64) > path > url. The source is handed to mmrank,
    which reads it under its :class:`mmrank.ImagePolicy`.
    """
    if isinstance(node, ImageNode):
        if node.image:
            return data_uri(node.image, node.image_mimetype)
        if node.image_path:
            return path_or_url(node.image_path)
        if node.image_url:
            return str(node.image_url)
    resource = getattr(node, "image_resource", None)
    if resource is not None:
        if resource.data:
            return data_uri(resource.data, resource.mimetype)
        if resource.path:
            return Path(resource.path)
        if resource.url:
            return str(resource.url)
    return None


def _copy_with_metadata(node: BaseNode, updates: dict[str, Any]) -> BaseNode:
    """A copy of ``node`` with ``updates`` merged into its metadata; the caller's node is untouched.

    ``rerank_error`` is kept out of the text that LLMs and embedders see; without an error in ``updates``, one
    an earlier reranking left in the metadata is removed (it no longer holds)."""
    metadata = {**node.metadata, **updates}
    if ERROR_KEY not in updates:
        metadata.pop(ERROR_KEY, None)
    fields: dict[str, Any] = {"metadata": metadata}
    if ERROR_KEY in updates:
        for name in ("excluded_llm_metadata_keys", "excluded_embed_metadata_keys"):
            keys = getattr(node, name)
            fields[name] = keys if ERROR_KEY in keys else [*keys, ERROR_KEY]
    return node.model_copy(update=fields)
