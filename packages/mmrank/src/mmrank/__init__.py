"""mmrank: multimodal reranking with vision-language models.

Scorers share one interface (:class:`Reranker`): ``rank(query, documents, top_n=None)`` and
``score(query, documents)``, with async twins. Heavy modules (torch, transformers) load only when a
scorer that needs them is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Explicit re-export (``as``): type checkers treat a bare import in a py.typed package as private.
from ._version import __version__ as __version__
from .errors import (
    IdentifierTokenError,
    ImageLoadError,
    InputError,
    MMRankError,
    ModelLoadError,
    RemoteError,
    UnsupportedInputError,
)
from .inputs.documents import Document, Query
from .inputs.images import ImagePolicy, load_image
from .models.options import LoadOptions
from .scorers.base import OnError, PointwiseReranker, PreparedRanking, RankedDocument, Reranker

_LAZY = {
    "JinaRerankerM0": ("scorers.pointwise", "JinaRerankerM0"),
    "ListwiseReranker": ("scorers.listwise", "ListwiseReranker"),
    "PairwiseReranker": ("scorers.pairwise", "PairwiseReranker"),
    "RemoteReranker": ("scorers.remote", "RemoteReranker"),
    "SpeedOptions": ("scorers.pointwise", "SpeedOptions"),
    "ChatReranker": ("scorers.chat", "ChatReranker"),
    "ChatImageOptions": ("scorers.chat", "ChatImageOptions"),
    "HttpOptions": ("scorers.http_options", "HttpOptions"),
    "load_reranker": ("scorers.factory", "load_reranker"),
}

if TYPE_CHECKING:  # pragma: no cover - the lazy names' real types, for type checkers and the API reference
    from .scorers.chat import ChatImageOptions as ChatImageOptions
    from .scorers.chat import ChatReranker as ChatReranker
    from .scorers.factory import load_reranker as load_reranker
    from .scorers.http_options import HttpOptions as HttpOptions
    from .scorers.listwise import ListwiseReranker as ListwiseReranker
    from .scorers.pairwise import PairwiseReranker as PairwiseReranker
    from .scorers.pointwise import JinaRerankerM0 as JinaRerankerM0
    from .scorers.pointwise import SpeedOptions as SpeedOptions
    from .scorers.remote import RemoteReranker as RemoteReranker


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'mmrank' has no attribute {name!r}")


__all__ = [
    "Document", "Query", "RankedDocument", "PreparedRanking", "Reranker", "PointwiseReranker", "OnError", "ImagePolicy",
    "load_image", "LoadOptions", "MMRankError", "InputError", "ImageLoadError", "ModelLoadError", "RemoteError",
    "UnsupportedInputError", "IdentifierTokenError", *_LAZY,
]
