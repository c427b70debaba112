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
  path strings) turned into what :func:`mmrank.load_image` reads; :func:`image_source_problem` says why a
  value a framework document holds cannot be an image source at all;
- :func:`check_top_n` / :func:`check_threshold`: the adapters' ``top_n`` / ``top_k`` and ``score_threshold``
  rules, checked at construction and again at each call (attributes can be assigned in between);
- :func:`core_document` / :func:`document_error` / :func:`rank` / :func:`arank`: translation that never
  fails the call for one bad framework document, and ranking where the adapter already knows that some
  cannot be translated (they are reported like unreadable images, never dropped);
- :func:`kwargs_to_data` / :func:`kwargs_from_data`: ``reranker_kwargs`` to and from plain data (an
  :class:`~mmrank.ImagePolicy` becomes a dict of its fields), so adapters serialize and load them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import ImageLoadError, InputError
from .inputs.documents import Document
from .inputs.images import ImagePolicy
from .scorers.base import RankedDocument, Reranker, check_score_threshold
from .scorers.factory import BATCH_MODES, DEVICE_MODES, HTTP_MODES, MODES, Mode, check_settings, load_reranker

__all__ = [
    "API_KEY_ENV", "BATCH_MODES", "DEVICE_MODES", "ERROR_KEY", "HTTP_MODES", "MODES", "Mode", "RETRIEVAL_SCORE_KEY",
    "SCORE_KEY", "arank", "build_reranker", "check_settings", "check_shared_reranker", "check_threshold",
    "check_top_n", "core_document", "data_uri", "document_error", "image_source_problem", "kwargs_from_data",
    "kwargs_to_data", "path_or_url", "rank", "scorer_kwargs",
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
    # Any value but None counts (batch_size=0 too); an empty reranker_kwargs dict is "not given".
    given = [name for name, value in loading.items() if value is not None and not (isinstance(value, dict) and not value)]
    if given:
        raise ValueError(f"{', '.join(given)} configure a scorer that {owner} loads; with reranker= set them on "
                         "that scorer instead")
    return reranker


def scorer_kwargs(mode: Mode, *, device: Any = None, batch_size: int | None = None, url: str | None = None,
                  api_key: str | None = None, token: str | None = None,
                  reranker_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments of :func:`mmrank.load_reranker` for an adapter's settings: those given (not
    ``None``), each checked against ``mode`` (``InputError``, a ``ValueError``, when the mode would not use
    it), then ``reranker_kwargs`` (which win; an ``image_policy`` given as a dict of its fields, as
    :func:`kwargs_to_data` writes it, becomes an :class:`~mmrank.ImagePolicy`). ``token`` (the hub token)
    applies to the local modes only."""
    given = check_settings(mode, device=device, batch_size=batch_size, url=url, api_key=api_key, token=token)
    return given | kwargs_from_data(reranker_kwargs)


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


def image_source_problem(value: Any) -> str | None:
    """Why ``value`` cannot be an image source whatever it holds (its type is none that
    :func:`mmrank.load_image` reads: PIL image, bytes, str, path), or ``None``. Adapters turn it into that
    document's error (:func:`document_error`) instead of failing the whole call."""
    if isinstance(value, Image.Image | bytes | bytearray | memoryview | str | os.PathLike):
        return None
    return (f"{type(value).__name__} is not an image source (use a path, an http(s)/file/data: URL, base64 "
            "text, encoded bytes or a PIL image)")


def check_top_n(value: Any, name: str = "top_n") -> int | None:
    """``value`` if it is a positive ``int`` or ``None`` (the adapters' ``top_n`` / ``top_k``); ``InputError``
    (a ``ValueError``) naming ``name`` otherwise — ``0``, negatives, ``bool``, floats and strings included."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InputError(f"{name} must be a positive integer or None, got {value!r}")
    return value


def check_threshold(value: Any, name: str = "score_threshold") -> float | None:
    """``value`` if it is a number (not NaN, not ``bool``) or ``None``; ``InputError`` naming ``name``."""
    try:
        return check_score_threshold(value)
    except InputError:
        raise InputError(f"{name} must be a number or None, got {value!r}") from None


def document_error(index: int, doc_id: str | None, reason: str) -> ImageLoadError:
    """The error of a framework document whose image source cannot even be handed to mmrank (e.g. metadata
    naming an image with an ``int``): reported like an unreadable image, naming the document."""
    return ImageLoadError(reason, document_index=index, document_id=doc_id)


def core_document(index: int, *, text: Any, image: Any, doc_id: Any, payload: Any,
                  image_problem: str | None = None) -> tuple[Document, ImageLoadError | InputError | None]:
    """The :class:`~mmrank.Document` for one framework document, and its error (or ``None``) when the
    framework document cannot even be translated: ``image_problem`` (the adapter's reason), an image value
    of no image type (:func:`image_source_problem`), text that is not a ``str`` (frameworks that do not
    validate assignments let it through). Such a document is ranked last with its error, or raised, like
    an unreadable image — never dropped, and the call goes on."""
    doc_id = None if doc_id is None else str(doc_id)
    problem = image_problem or (image_source_problem(image) if image is not None else None)
    if problem:
        return Document(id=doc_id, payload=payload), document_error(index, doc_id, problem)
    try:
        return Document(text=text, image=image, id=doc_id, payload=payload), None
    except InputError as exc:
        where = f" (id={doc_id!r})" if doc_id is not None else ""
        return Document(id=doc_id, payload=payload), InputError(f"document {index}{where}: {exc}")


def _refused(refused: Sequence[InputError | None] | None) -> list[InputError | None] | None:
    return list(refused) if refused is not None and any(e is not None for e in refused) else None


def rank(reranker: Reranker, query: Any, documents: list[Document],
         refused: Sequence[InputError | None] | None = None, **options: Any) -> list[RankedDocument]:
    """:meth:`Reranker.rank` where the adapter already refused some documents (``refused``: one error or
    ``None`` per document). Refused documents are ranked last with their error under ``on_error="last"``;
    under ``"raise"`` the first error is raised. ``options``: ``top_n``, ``score_threshold``, ``on_error``."""
    known = _refused(refused)
    if known is None:
        return reranker.rank(query, documents, **options)
    call = reranker.prepare(query, documents, refused=known, **options)
    return reranker.finish(call, reranker.rank_documents(call.query, call.readable_documents))


async def arank(reranker: Reranker, query: Any, documents: list[Document],
                refused: Sequence[InputError | None] | None = None, **options: Any) -> list[RankedDocument]:
    """Async :func:`rank` (the model runs off the event loop, as :meth:`Reranker.arank`)."""
    known = _refused(refused)
    if known is None:
        return await reranker.arank(query, documents, **options)
    call = await reranker.aprepare(query, documents, refused=known, **options)
    return reranker.finish(call, await reranker.arank_documents(call.query, call.readable_documents))


#: The ``reranker_kwargs`` entry that holds an :class:`~mmrank.ImagePolicy` (serialized as a dict).
_POLICY_KEY = "image_policy"


def kwargs_to_data(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``reranker_kwargs`` as plain data: an ``image_policy`` :class:`~mmrank.ImagePolicy` becomes a dict of
    its fields (``schemes`` a sorted list), so JSON / YAML serializers take it; the rest is unchanged."""
    out = dict(kwargs or {})
    policy = out.get(_POLICY_KEY)
    if isinstance(policy, ImagePolicy):
        data = dataclasses.asdict(policy)
        data["schemes"] = sorted(policy.schemes)
        if data.get("root_path") is not None:
            data["root_path"] = str(data["root_path"])
        out[_POLICY_KEY] = data
    return out


def kwargs_from_data(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Inverse of :func:`kwargs_to_data`: an ``image_policy`` dict becomes an :class:`~mmrank.ImagePolicy`
    (``InputError`` naming the field when it is not one); the rest is unchanged."""
    out = dict(kwargs or {})
    policy = out.get(_POLICY_KEY)
    if isinstance(policy, dict):
        fields = {f.name for f in dataclasses.fields(ImagePolicy)}
        unknown = sorted(set(policy) - fields)
        if unknown:
            raise InputError(f"reranker_kwargs['image_policy'] has unknown field(s) {unknown}; "
                             f"ImagePolicy takes {sorted(fields)}")
        out[_POLICY_KEY] = ImagePolicy(**policy)
    return out
