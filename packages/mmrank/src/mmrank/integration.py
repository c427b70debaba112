"""What every framework adapter needs from the core, in one place, so an adapter keeps only what is specific
to its framework (its document types, its events, its serialization).

- :data:`Mode` / :data:`MODES`: the scorer kinds (one list, defined by :mod:`mmrank.scorers.factory`);
- :func:`check_shared_reranker`: the ``reranker=`` argument (an already-built scorer) and its conflict with
  the settings that only configure a scorer the adapter loads;
- :func:`scorer_kwargs` / :func:`build_reranker`: the adapter's constructor arguments →
  :func:`mmrank.load_reranker`, each setting checked against the mode;
- the metadata keys the adapters write (:data:`SCORE_KEY`, :data:`RETRIEVAL_SCORE_KEY`, :data:`ERROR_KEY`)
  and the environment variable of the remote API key (:data:`API_KEY_ENV`);
- :func:`data_uri` / :func:`path_or_url`: the image-source shapes frameworks store (base64 with a MIME type,
  path strings) turned into what :func:`mmrank.load_image` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .scorers.base import Reranker
from .scorers.factory import BATCH_MODES, DEVICE_MODES, HTTP_MODES, MODES, Mode, check_settings, load_reranker

__all__ = [
    "API_KEY_ENV", "BATCH_MODES", "DEVICE_MODES", "ERROR_KEY", "HTTP_MODES", "MODES", "Mode", "RETRIEVAL_SCORE_KEY",
    "SCORE_KEY", "build_reranker", "check_settings", "check_shared_reranker", "data_uri", "path_or_url",
    "scorer_kwargs",
]

#: Environment variable the adapters read the remote server's API key from (``mode="remote"``).
API_KEY_ENV = "MMRANK_API_KEY"
#: Metadata key of the relevance score, where the framework has no score field of its own (LangChain).
SCORE_KEY = "relevance_score"
#: Metadata key that keeps the retriever's score when ``keep_retrieval_score=True``.
RETRIEVAL_SCORE_KEY = "retrieval_score"
#: Metadata key that says why a document could not be scored (``on_error="last"``).
ERROR_KEY = "rerank_error"

#: Settings that configure a scorer the adapter loads, and so conflict with ``reranker=``.
LOADING_SETTINGS = ("device", "batch_size", "reranker_kwargs")

_URL_PREFIXES = ("http://", "https://", "file://", "data:")


def check_shared_reranker(reranker: Any, owner: str, **loading: Any) -> Reranker | None:
    """``reranker`` when it is an :class:`mmrank.Reranker` (or ``None``); ``TypeError`` otherwise, and
    ``ValueError`` when any of ``loading`` (settings that configure a scorer ``owner`` would load, e.g.
    ``device=``, ``batch_size=``, ``reranker_kwargs=``) is also given: they would be silently ignored."""
    if reranker is None:
        return None
    if not isinstance(reranker, Reranker):
        raise TypeError(f"reranker must be an mmrank.Reranker, got {type(reranker).__name__}")
    given = [name for name, value in loading.items() if value]
    if given:
        raise ValueError(f"{', '.join(given)} configure a scorer that {owner} loads; with reranker= set them on "
                         "that scorer instead")
    return reranker


def scorer_kwargs(mode: Mode, *, device: Any = None, batch_size: int | None = None, url: str | None = None,
                  api_key: str | None = None, token: str | None = None,
                  reranker_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments of :func:`mmrank.load_reranker` for an adapter's settings: those given (not
    ``None``), each checked against ``mode`` (``InputError``, a ``ValueError``, when the mode would not use
    it), then ``reranker_kwargs`` (which win). ``token`` (the hub token) applies to the local modes only."""
    given = check_settings(mode, device=device, batch_size=batch_size, url=url, api_key=api_key, token=token)
    return given | dict(reranker_kwargs or {})


def build_reranker(mode: Mode, model: str | None = None, **settings: Any) -> Reranker:
    """:func:`mmrank.load_reranker` with :func:`scorer_kwargs` (``settings``: ``device``, ``batch_size``,
    ``url``, ``api_key``, ``token``, ``reranker_kwargs``)."""
    return load_reranker(mode, model, **scorer_kwargs(mode, **settings))


def data_uri(data: str | bytes, mime_type: str | None = None) -> str:
    """A ``data:`` URI for base64 image data as frameworks store it (``str`` or ASCII ``bytes``, with an
    optional MIME type); data that already is a ``data:`` URI is returned as it is. mmrank decodes and
    validates it when the image is read."""
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else str(data)
    return text if text.startswith("data:") else f"data:{mime_type or ''};base64,{text}"


def path_or_url(value: Any) -> Any:
    """A string that is not an ``http(s)://``, ``file://`` or ``data:`` URL becomes a :class:`~pathlib.Path`
    (so it is read as a local file, never guessed to be base64); anything else is returned as it is."""
    if isinstance(value, str) and not value.lower().startswith(_URL_PREFIXES):
        return Path(value)
    return value
