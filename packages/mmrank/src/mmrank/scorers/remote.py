"""The remote backend: the :class:`~mmrank.scorers.base.Reranker` interface over a rerank HTTP API.

``RemoteReranker`` talks to any server that speaks one of the three rerank dialects in use, which are
**not** identical:

========  ==================================================================================================
dialect   request / response as sent and parsed here
========  ==================================================================================================
jina      Jina's ``POST /v1/rerank`` (also what ``mmrank serve`` speaks): ``model``, ``query`` (a string;
          ``{"image": ...}`` for an image query — Jina's hosted API refuses image queries, ``mmrank
          serve`` accepts them), ``documents`` as strings or ``{"image": url-or-base64}`` /
          ``{"text": ..., "image": ...}`` objects, ``return_documents: false``; response
          ``results[{index, relevance_score}]`` and ``usage.total_tokens``.
vllm      vLLM's ``/rerank`` (which serves ``jinaai/jina-reranker-m0``): text documents as strings, images
          in its content format ``{"content": [{"type": "image_url", "image_url": {"url": ...}}]}`` (base64
          travels as a ``data:`` URI; a text+image document adds a ``{"type": "text"}`` part); no
          ``return_documents`` (vLLM always echoes documents); ``top_n`` is never sent (0 means all).
infinity  Infinity's ``/rerank``: text only, ``documents: list[str]`` (at most 2048 per request; requests are
          split at 512 by default), ``return_documents: false``; ``document`` comes back as a plain string. An
          image document or image query raises :class:`~mmrank.errors.UnsupportedInputError`.
auto      ``api.jina.ai`` → jina; otherwise one ``GET /v1/models`` (then ``/models``) on first use reads
          ``owned_by`` (``vllm`` → vllm, ``infinity`` → infinity, anything else or no answer → jina). A base
          URL (no path) then gets the detected dialect's path (``/rerank`` for Infinity, ``/v1/rerank``
          otherwise); a path the caller wrote is kept.
========  ==================================================================================================

Two endpoints change the body whatever the dialect: a URL ending in ``/score`` (vLLM's pair scoring,
``/score`` or ``/v1/score``) sends the vllm dialect's query as ``text_1`` and its documents as ``text_2`` and
reads ``data[{index, score}]``; a URL ending in ``/v2/rerank`` (Cohere's v2 API, also served by vLLM and
``mmrank serve``) leaves out ``return_documents``, which v2 does not define (Cohere needs ``model=`` and
takes text documents only; it answers an image with its own error).

Verified against: ``mmrank serve`` for real (a server process started by the tests, on the same tiny model
as the local scorer: equal rankings and scores within 1e-5 for text, base64 image and mixed documents);
Jina, vLLM and Infinity by request/response-shape tests against recorded responses shaped after their
published APIs (``tests/fixtures/remote_*.json``) and an Infinity-shaped server on 127.0.0.1 (its paths:
``/models``, ``/rerank``; ``tests/test_http.py``) — not against the live services, which this project
cannot reach.

Images: an ``http(s)`` URL is passed through untouched (the client neither downloads nor decodes it; the
server does); a local path, ``file://`` URL, PIL image, ``bytes``, ``data:`` URI or bare base64 string is
read here under the :class:`~mmrank.inputs.images.ImagePolicy`, checked (size caps, decodable), and sent as base64
(``data:`` URI for vLLM). A local image that cannot be read is reported per document exactly as the local
scorers do (ranked last with ``error`` under ``on_error="last"``); PIL images are sent as lossless PNG.
A document the *server* cannot read (a URL it cannot fetch, say) fails the whole call with a
:class:`~mmrank.errors.RemoteError` carrying the server's message (which names the document for
``mmrank serve``): these APIs have no per-document error in their responses.

Long lists are split into several requests (``max_documents_per_request``, ``max_request_bytes``); the
sub-requests run concurrently (at most ``max_concurrency`` at a time, also in the sync API), and their
scores are merged and sorted globally — right for pointwise scorers such as jina-reranker-m0, whose score
of a document does not depend on the other documents. The HTTP layer is :class:`mmrank.scorers.http.HttpClient`
(shared with the chat-completions scorer): retries with exponential backoff and full jitter on 429, 5xx and
connection errors / timeouts, honouring ``Retry-After``; any other 4xx raises
:class:`~mmrank.errors.RemoteError` at once, carrying the server's own message; ``timeout`` bounds each
attempt as a whole (also against a server that trickles its answer) and ``deadline`` each request with its
retries. The API key comes from ``api_key=``, else ``MMRANK_API_KEY``, else ``JINA_API_KEY``, and is never
logged, put in an error or shown by ``repr`` — also when a server echoes it back in an error body.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import math
import os
import threading
import urllib.parse
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal

import httpx
from PIL import Image

from ..errors import ImageLoadError, InputError, UnsupportedInputError
from ..inputs.documents import Document, Query
from ..inputs.images import (
    DEFAULT_POLICY,
    ImagePolicy,
    decode_image_bytes,
    load_image,
    processor_rgb,
    resolve_source,
)
from .base import DocumentError, OnError, PreparedRanking, Reranker, _id_suffix
from .http import HttpClient, HttpOptions, redact_url, server_message
from .http_options import keyword_names

logger = logging.getLogger("mmrank")

Dialect = Literal["jina", "vllm", "infinity", "auto"]
DIALECTS = ("jina", "vllm", "infinity", "auto")

JINA_URL = "https://api.jina.ai/v1/rerank"
JINA_MODEL = "jina-reranker-m0"
API_KEY_ENV = ("MMRANK_API_KEY", "JINA_API_KEY")

#: Documents per request when the caller does not say: Infinity caps a request at 2048 documents and
#: ``mmrank serve`` at 1000 by default; smaller requests also spread over ``max_concurrency``.
DEFAULT_MAX_DOCUMENTS = 512

# ---------------------------------------------------------------------------------------------- wire images
@dataclass(frozen=True)
class WireImage:
    """An image as it travels: an ``http(s)`` URL passed through, or base64 data with its MIME type."""

    url: str | None = None
    data: str | None = None
    mime: str = "image/png"

    @property
    def size(self) -> int:
        return len(self.url or self.data or "")

    def bare(self) -> str:
        """URL or bare base64 (the Jina API form)."""
        return self.url if self.url is not None else self.data  # type: ignore[return-value]

    def data_uri(self) -> str:
        """URL or ``data:`` URI (the vLLM / OpenAI content-part form)."""
        return self.url if self.url is not None else f"data:{self.mime};base64,{self.data}"


def _mime(fmt: str | None) -> str:
    return Image.MIME.get((fmt or "").upper(), "image/png")


def _from_bytes(data: bytes, policy: ImagePolicy, source: str) -> WireImage:
    # Same checks and messages as the local scorers (byte cap, pixel cap from the header, full decode).
    img = decode_image_bytes(data, policy, source)
    fmt = getattr(img, "format", None)
    if fmt is None:
        with contextlib.suppress(Exception):
            fmt = Image.open(io.BytesIO(data)).format
    return WireImage(data=base64.b64encode(data).decode("ascii"), mime=_mime(fmt))


def encode_image(source: Any, policy: ImagePolicy = DEFAULT_POLICY) -> WireImage:
    """Turn any image input into its wire form without fetching URLs (see the module docstring)."""
    try:
        got = resolve_source(source, policy)  # the local scorers' dispatch and checks
        if got.url is not None:
            return WireImage(url=got.url)
        if got.image is not None:
            # pixel cap, then the RGB pixels the local scorer's image processor would see
            img = processor_rgb(load_image(got.image, policy))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            return WireImage(data=base64.b64encode(buf.getvalue()).decode("ascii"), mime="image/png")
        return _from_bytes(got.data, policy, got.source)  # type: ignore[arg-type]
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - one image's failure is that image's error
        raise ImageLoadError(f"could not encode the image: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------------------------- helpers
def _redact(url: str) -> str:
    """The URL without user:password or key-like query values (never shown in errors or repr)."""
    return redact_url(url)


def _endpoint(url: str, dialect: str) -> str:
    """A base URL (``http://host:8080``, ``.../v1``) becomes the rerank endpoint; a full path is kept."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"the rerank URL must be an http(s) URL with a host, got {_redact(url)!r}")
    path = parts.path.rstrip("/")
    if path == "":
        path = "/rerank" if dialect == "infinity" else "/v1/rerank"
    elif path.endswith("/v1"):
        path += "/rerank"
    return urllib.parse.urlunsplit(parts._replace(path=path))


def _api_key(http: HttpOptions) -> str | None:
    """``http.api_key``, else ``MMRANK_API_KEY``, else ``JINA_API_KEY`` — no variable is read when the caller
    sends an ``Authorization`` header of their own."""
    if http.api_key is not None or http.has_authorization:
        return http.api_key
    return next((os.environ[v] for v in API_KEY_ENV if os.environ.get(v)), None)


def _finite(value: Any) -> bool:
    """A JSON number that is a finite float (an integer too large for a float — JSON allows any number of
    digits — is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _server_root(endpoint: str) -> str:
    parts = urllib.parse.urlsplit(endpoint)
    path = parts.path
    for suffix in ("/v1/rerank", "/v2/rerank", "/rerank", "/v1/score", "/score"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return urllib.parse.urlunsplit(parts._replace(path=path, query="", fragment=""))


# ---------------------------------------------------------------------------------------------- the scorer
class RemoteReranker(Reranker):
    """Rerank through a remote rerank API (Jina's service, ``mmrank serve``, vLLM or Infinity).

    Args:
        url: the rerank endpoint or the server's base URL (``http://host:8080`` → ``/v1/rerank``;
            ``/rerank`` for Infinity). Default: Jina's API, ``https://api.jina.ai/v1/rerank``.
        model: model name sent with each request (default ``jina-reranker-m0`` for Jina's API; omitted
            for other servers when not given, so they use the model they serve).
        dialect: ``"jina"``, ``"vllm"``, ``"infinity"`` or ``"auto"`` (see the module docstring).
        max_documents_per_request: documents per request at most (long lists are split).
        max_request_bytes: approximate request size at most (long lists are split).
        http: :class:`~mmrank.HttpOptions` — timeout, deadline, retries and backoff, ``max_concurrency``
            (sub-requests in flight at once), API key (default from ``MMRANK_API_KEY`` then ``JINA_API_KEY``;
            never logged), headers, TLS, transports.
        on_error: ``"last"`` (unreadable documents ranked last with an error) or ``"raise"``.
        image_policy: how local images are read before sending (URLs are not fetched here).
        show_progress: accepted for symmetry with the local scorers.
        image_workers: threads that read local images.
        **options: any field of :class:`~mmrank.HttpOptions` as a keyword (``api_key="..."``, ``timeout=30``,
            ``max_retries=0``, ``headers={...}``, ``transport=...``, …); it replaces that field of ``http``.
    """

    def __init__(self, url: str | None = None, *, model: str | None = None, dialect: Dialect = "auto",
                 max_documents_per_request: int | None = None, max_request_bytes: int = 48 * 1024 * 1024,
                 http: HttpOptions | None = None, on_error: OnError = "last",
                 image_policy: ImagePolicy = DEFAULT_POLICY, show_progress: bool = False, image_workers: int = 4,
                 **options: Any):
        super().__init__(on_error=on_error, image_policy=image_policy, show_progress=show_progress,
                         image_workers=image_workers)
        http = HttpOptions.merge(http, also=keyword_names(RemoteReranker.__init__), **options)
        if dialect not in DIALECTS:
            raise InputError(f"dialect must be one of {DIALECTS}, got {dialect!r}")
        if max_documents_per_request is not None and max_documents_per_request < 1:
            raise InputError("max_documents_per_request must be >= 1")
        is_jina_service = url is None
        url = url or JINA_URL
        host = (urllib.parse.urlsplit(url).hostname or "").lower()
        is_jina_service = is_jina_service or host == "api.jina.ai"
        if dialect == "auto" and is_jina_service:
            dialect = "jina"
        path = urllib.parse.urlsplit(url).path.rstrip("/")
        if path.endswith("/score"):  # vLLM's pair-scoring endpoint: its own field names, vLLM's content parts
            if dialect not in ("auto", "vllm"):
                raise InputError(f"a /score URL is vLLM's scoring endpoint; dialect={dialect!r} does not speak it "
                                 "(use dialect='vllm' or 'auto', or the server's /rerank endpoint)")
            dialect = "vllm"
        self._dialect: str = dialect
        self.url = _endpoint(url, dialect if dialect != "auto" else "jina")
        # A bare base URL names no path: the endpoint follows the dialect detected on first use (Infinity
        # serves /rerank, the others /v1/rerank). A path the caller wrote is kept as written.
        self._url_from_base = urllib.parse.urlsplit(url).path.rstrip("/") == ""
        self.model = model if model is not None else (JINA_MODEL if is_jina_service else None)
        self.model_name = self.model or f"remote:{_redact(self.url)}"
        key = _api_key(http)
        if is_jina_service and not key and not http.has_authorization:
            raise InputError("Jina's rerank API needs an API key: pass api_key=... or set MMRANK_API_KEY "
                             "(or JINA_API_KEY); for your own server pass url=...")
        self.__api_key = key
        #: the HTTP options as given (``api_key`` as passed: a key read from the environment is not kept here)
        self.http = http
        self.max_documents_per_request = max_documents_per_request
        self.max_request_bytes = int(max_request_bytes)
        self.max_concurrency = http.max_concurrency
        self._http = HttpClient(
            replace(http, api_key=key), what="the rerank server", user_agent="mmrank-remote/0.1",
            hints={401: " — check the API key (api_key=, MMRANK_API_KEY or JINA_API_KEY)",
                   403: " — check the API key (api_key=, MMRANK_API_KEY or JINA_API_KEY)",
                   413: " — the request is too large; lower max_documents_per_request or max_request_bytes",
                   404: " — check the URL (and the model name)"})
        self.timeout = self._http.timeout
        self.deadline = self._http.deadline
        self.max_retries = self._http.max_retries
        self._lock = threading.Lock()
        self._wire: weakref.WeakKeyDictionary[Any, WireImage] = weakref.WeakKeyDictionary()
        #: ``usage.total_tokens`` summed over the sub-requests of the last call (``None`` if not reported).
        self.last_usage: int | None = None
        # HTTP calls need no model lock: concurrent callers each run their own requests.
        self._model_lock = contextlib.nullcontext()  # type: ignore[assignment]

    # ------------------------------------------------------------------ niceties
    @property
    def dialect(self) -> str:
        """The rerank dialect in use (``"auto"`` until the first call has probed the server)."""
        return self._dialect

    @property
    def has_api_key(self) -> bool:
        """Whether an API key is sent (the key itself is never shown)."""
        return bool(self.__api_key)

    def __repr__(self) -> str:
        key = "<set>" if self.__api_key else None
        return (f"RemoteReranker(url={_redact(self.url)!r}, model={self.model!r}, dialect={self._dialect!r}, "
                f"api_key={key})")

    __str__ = __repr__

    # ------------------------------------------------------------------ clients
    def close(self) -> None:
        """Close the HTTP connections (async clients are closed by :meth:`aclose` on their loop)."""
        self._http.close()

    async def aclose(self) -> None:
        """Close this event loop's HTTP client, then the rest (:meth:`close`)."""
        await self._http.aclose()

    # ------------------------------------------------------------------ dialect
    def _models_urls(self) -> list[str]:
        root = _server_root(self.url)
        return [root + "/v1/models", root + "/models"]

    def _dialect_from_models(self, body: Any) -> str:
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, dict):  # early Infinity releases answered one model object, not a list
            data = [data]
        data = data if isinstance(data, list) else []  # any other shape says nothing about the server
        owners = {str(m.get("owned_by", "")).lower() for m in data if isinstance(m, dict)}
        if "vllm" in owners:
            return "vllm"
        if "infinity" in owners:
            return "infinity"
        return "jina"

    def _set_dialect(self, dialect: str) -> None:
        with self._lock:
            if self._dialect == "auto":
                self._dialect = dialect
                if self._url_from_base:
                    self.url = _endpoint(_server_root(self.url), dialect)
                logger.debug("mmrank remote: %s speaks the %s dialect", _redact(self.url), dialect)

    def _resolve_dialect(self) -> str:
        if self._dialect != "auto":
            return self._dialect
        found = "jina"
        for u in self._models_urls():
            body = self._http.probe(u)
            if body is not None:
                found = self._dialect_from_models(body)
                break
        self._set_dialect(found)
        return self._dialect

    async def _aresolve_dialect(self) -> str:
        if self._dialect != "auto":
            return self._dialect
        found = "jina"
        for u in self._models_urls():
            body = await self._http.aprobe(u)
            if body is not None:
                found = self._dialect_from_models(body)
                break
        self._set_dialect(found)
        return self._dialect

    # ------------------------------------------------------------------ inputs
    def _check_query(self, query: Query) -> None:
        if query.has_image and self._dialect == "infinity":
            raise UnsupportedInputError("the Infinity rerank API is text-only: it cannot take an image query")
        super()._check_query(query)

    def _read_image(self, item: Document | Query) -> None:
        self._wire_for(item)  # URLs untouched; local images read, checked and encoded once

    def _wire_for(self, item: Document | Query) -> WireImage:
        wire = self._wire.get(item)
        if wire is None:
            wire = encode_image(item.image, self.image_policy)
            self._wire[item] = wire
        return wire

    def _prepare_documents(self, documents: list[Document],
                           errors: list[DocumentError | None] | None = None) -> list[DocumentError | None]:
        if self._dialect == "infinity":
            for i, d in enumerate(documents):
                if d.has_image and (errors is None or errors[i] is None):
                    raise UnsupportedInputError(f"document {i}{_id_suffix(d)} has an image, but the Infinity rerank "
                                                "API is text-only; use a jina or vllm server for images")
        return super()._prepare_documents(documents, errors)

    # ------------------------------------------------------------------ request bodies
    def _payload(self, item: Query | Document) -> Any:
        """The wire form of a query or document: a plain string when it has no image (understood by every
        dialect), else the dialect's multimodal object."""
        if not item.has_image:
            return item.text
        wire = self._wire_for(item)
        if self._dialect == "vllm":
            parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": wire.data_uri()}}]
            if item.has_text:
                parts.append({"type": "text", "text": item.text})
            return {"content": parts}
        out: dict[str, Any] = {"image": wire.bare()}
        if item.has_text:
            out["text"] = item.text
        return out

    def _body(self, query_payload: Any, docs: list[Any]) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.model is not None:
            body["model"] = self.model
        path = urllib.parse.urlsplit(self.url).path
        if path.endswith("/score"):  # vLLM's /score: text_1 against each of text_2; answers data[{index, score}]
            body["text_1"] = query_payload
            body["text_2"] = docs
            return body
        body["query"] = query_payload
        body["documents"] = docs
        # Cohere's v2 API (also served as /v2/rerank by vLLM and mmrank serve) defines no return_documents.
        if self._dialect != "vllm" and not path.endswith("/v2/rerank"):
            body["return_documents"] = False
        # top_n is never sent: every score is needed to merge sub-requests and keep every document.
        return body

    def _chunks(self, payloads: list[Any]) -> list[tuple[int, int]]:
        limit = self.max_documents_per_request or DEFAULT_MAX_DOCUMENTS
        if self._dialect == "infinity":
            limit = min(limit, 2048)
        spans, start, size = [], 0, 0
        for i, p in enumerate(payloads):
            n = len(p) if isinstance(p, str) else len(json.dumps(p))
            if i > start and (i - start >= limit or size + n > self.max_request_bytes):
                spans.append((start, i))
                start, size = i, 0
            size += n + 4
        if start < len(payloads):
            spans.append((start, len(payloads)))
        return spans

    # ------------------------------------------------------------------ responses
    def _parse(self, resp: httpx.Response, n: int) -> tuple[list[tuple[int, float]], int | None]:
        fail, url, status = self._http.fail, _redact(self.url), resp.status_code

        def shown(value: Any, limit: int) -> str:  # server data in a message: redacted, then cut
            return self._http.clip(repr(value), limit)

        body = self._http.decode(self.url, resp)
        results = body.get("results") if isinstance(body, dict) else None
        if results is None and isinstance(body, dict):
            results = body.get("data")  # Infinity before 0.0.60 named the list "data"
        if not isinstance(results, list) and isinstance(body, dict) and (
                isinstance(body.get("error"), (dict, str)) or isinstance(body.get("detail"), (list, str))):
            raise fail(f"{url} answered HTTP {status} with an error: {server_message(resp, self._http.redact)}",
                       status_code=status, body=resp.text)
        if not isinstance(results, list):
            raise fail(f"{url} answered without a 'results' list; is this a rerank endpoint? "
                       f"(keys: {shown(sorted(body)[:10], 300) if isinstance(body, dict) else type(body).__name__})",
                       status_code=status, body=resp.text)
        pairs: list[tuple[int, float]] = []
        seen: set[int] = set()
        for item in results:
            if not isinstance(item, dict):
                raise fail(f"malformed result {shown(item, 200)} from {url}", status_code=status, body=resp.text)
            idx = item.get("index")
            score = item.get("relevance_score", item.get("score"))
            if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < n or idx in seen:
                raise fail(f"{url} returned an invalid or repeated document index {shown(idx, 50)} "
                           f"for a request of {n} documents", status_code=status, body=resp.text)
            if not _finite(score):
                raise fail(f"{url} returned a non-numeric score {shown(score, 50)} for document {idx} (a score must be "
                           "a finite number)", status_code=status, body=resp.text)
            seen.add(idx)
            pairs.append((idx, float(score)))
        if len(seen) != n:
            missing = sorted(set(range(n)) - seen)
            raise fail(f"{url} returned {len(seen)} results for {n} documents (missing "
                       f"{missing[:10]}); the server may cap results (top_n) or drop documents", status_code=status,
                       body=resp.text)
        usage = body.get("usage") if isinstance(body, dict) else None
        tokens = usage.get("total_tokens") if isinstance(usage, dict) else None
        return pairs, tokens if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0 else None

    def _post(self, body: dict[str, Any], n: int) -> tuple[list[tuple[int, float]], int | None]:
        return self._parse(self._http.send("POST", self.url, body), n)

    async def _apost(self, body: dict[str, Any], n: int) -> tuple[list[tuple[int, float]], int | None]:
        return self._parse(await self._http.asend("POST", self.url, body), n)

    # ------------------------------------------------------------------ ranking
    def _requests(self, query: Query, documents: list[Document]) -> list[tuple[int, int, dict[str, Any]]]:
        qp = self._payload(query)
        payloads = [self._payload(d) for d in documents]
        return [(a, b, self._body(qp, payloads[a:b])) for a, b in self._chunks(payloads)]

    @staticmethod
    def _merge(spans: list[tuple[int, int, dict[str, Any]]],
               answers: list[tuple[list[tuple[int, float]], int | None]]) -> tuple[list[tuple[int, float]], int | None]:
        merged: list[tuple[int, float]] = []
        tokens: int | None = None
        for (start, _, _), (pairs, used) in zip(spans, answers, strict=True):
            merged.extend((start + j, s) for j, s in pairs)
            if used is not None:
                tokens = (tokens or 0) + used
        merged.sort(key=lambda p: (-p[1], p[0]))  # global order; ties keep input order
        return merged, tokens

    def _rank_documents(self, query: Query, documents: list[Document]) -> list[tuple[int, float]]:
        spans = self._requests(query, documents)
        if len(spans) == 1 or self.max_concurrency == 1:
            answers = [self._post(body, b - a) for a, b, body in spans]
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(spans))) as pool:
                answers = list(pool.map(lambda s: self._post(s[2], s[1] - s[0]), spans))
        merged, self.last_usage = self._merge(spans, answers)
        return merged

    async def _arank_documents(self, query: Query, documents: list[Document]) -> list[tuple[int, float]]:
        spans = self._requests(query, documents)
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(span: tuple[int, int, dict[str, Any]]):
            async with gate:
                return await self._apost(span[2], span[1] - span[0])

        answers = await asyncio.gather(*(one(s) for s in spans))
        merged, self.last_usage = self._merge(spans, list(answers))
        return merged

    def prepare(self, *args: Any, **kwargs: Any) -> PreparedRanking:
        """:meth:`Reranker.prepare`, once the server's dialect is known (it decides what the inputs may be:
        Infinity takes text only).

        Args:
            *args: the positional arguments of :meth:`Reranker.prepare` (``query``, ``documents``, ``top_n``).
            **kwargs: its keyword arguments (``score_threshold``, ``on_error``, ``refused``).
        """
        self._resolve_dialect()
        return super().prepare(*args, **kwargs)

    async def aprepare(self, *args: Any, **kwargs: Any) -> PreparedRanking:
        """Real async: the dialect probe here and the HTTP requests (:meth:`arank_documents`) run on the event
        loop (httpx.AsyncClient), sub-requests concurrently; only reading local images runs in a thread.

        Args:
            *args: the positional arguments of :meth:`Reranker.aprepare` (``query``, ``documents``, ``top_n``).
            **kwargs: its keyword arguments (``score_threshold``, ``on_error``, ``refused``).
        """
        await self._aresolve_dialect()
        return await super().aprepare(*args, **kwargs)
