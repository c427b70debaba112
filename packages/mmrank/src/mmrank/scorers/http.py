"""The HTTP layer shared by the remote scorers (:mod:`~mmrank.scorers.remote` and :mod:`~mmrank.scorers.chat`).

:class:`HttpClient` sends one JSON request and returns the server's successful answer, or raises a
:class:`~mmrank.errors.RemoteError` whose message carries the server's own error message. Its knobs are one
:class:`~mmrank.scorers.http_options.HttpOptions` (re-exported here), the object the scorers take as ``http=``.
It owns:

* **clients** — one ``httpx.Client`` and one ``httpx.AsyncClient`` per running event loop (an async client
  belongs to the loop that first used it), redirects never followed;
* **retries** with exponential backoff and full jitter on 408, 425, 429, 5xx and transport errors
  (connection refused/reset, timeouts, truncated answers), honouring ``Retry-After`` (seconds or an HTTP
  date; longer than ``max_retry_after`` fails at once); any other 4xx fails at once;
* **time limits** — ``timeout`` bounds one attempt *as a whole* (connect, send and the whole answer; httpx's
  own timeouts are per read, so a server that trickles a byte at a time would otherwise hold a call
  indefinitely), and ``deadline`` bounds one call including all its retries and waits. Both hold for the
  caller in the sync and the async API: a sync attempt runs in a helper thread that the caller stops
  waiting for at the limit (its socket reads are bounded too, so the thread ends soon after);
* **redaction** — the API key, every value of a credential header (``Authorization``, ``X-API-Key``,
  ``Api-Key``, ``Cookie``, ...), URL passwords and key-like query parameters are replaced by ``***`` in
  every error message, error body and log line this module produces, also when a server echoes them back.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import json
import logging
import random
import re
import threading
import time
import urllib.parse
import weakref
import zlib
from collections.abc import Iterable
from typing import Any

import httpx

from ..errors import InputError, RemoteError
from .http_options import DEFAULT_MAX_RESPONSE_BYTES, MASK, SECRET_HEADERS, HttpOptions

__all__ = ["HttpClient", "HttpOptions", "Redactor", "redact_url", "server_message", "retry_after", "encode_json",
           "RETRY_STATUS", "SECRET_HEADERS", "MASK", "DEFAULT_MAX_RESPONSE_BYTES"]

logger = logging.getLogger("mmrank")

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Query-string parameter names whose values are credentials.
_SECRET_PARAM = re.compile(r"(?i)(key|token|secret|password|passwd|auth|signature|sig)")


# ---------------------------------------------------------------------------------------------- redaction
def redact_url(url: str) -> str:
    """The URL without ``user:password`` and with key-like query parameter values masked."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return MASK
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        parts = parts._replace(netloc=host)
    if parts.query:
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if any(_SECRET_PARAM.search(k) for k, _ in pairs):
            parts = parts._replace(query="&".join(
                f"{urllib.parse.quote(k)}={MASK if _SECRET_PARAM.search(k) else urllib.parse.quote(v)}"
                for k, v in pairs))
    return urllib.parse.urlunsplit(parts)


class Redactor:
    """Replaces known secrets in text. A secret is also found in its common encodings (URL-quoted,
    JSON-escaped) and a bearer value also without its scheme."""

    def __init__(self, secrets: Iterable[str | None] = ()):
        self._secrets: set[str] = set()
        for s in secrets:
            self.add(s)

    def add(self, secret: str | None) -> None:
        if not secret or not isinstance(secret, str):
            return
        secret = secret.strip()
        forms = {secret}
        scheme, _, rest = secret.partition(" ")
        if rest and scheme.lower() in ("bearer", "basic", "token", "apikey"):
            forms.add(rest.strip())
        for f in list(forms):
            forms.add(urllib.parse.quote(f, safe=""))
            forms.add(json.dumps(f)[1:-1])
        # Very short values would mask ordinary words; no real credential is that short.
        self._secrets.update(f for f in forms if len(f) >= 4)

    def add_url(self, url: str) -> None:
        """The credentials a URL carries: its password (and the Basic credential httpx builds from the
        user info) and the values of key-like query parameters."""
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError:
            return
        if parts.password:
            self.add(urllib.parse.unquote(parts.password))
            self.add(parts.password)
            user = urllib.parse.unquote(parts.username or "")
            pw = urllib.parse.unquote(parts.password)
            self.add(base64.b64encode(f"{user}:{pw}".encode()).decode())
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if _SECRET_PARAM.search(k):
                self.add(v)

    def __call__(self, text: Any) -> str:
        text = "" if text is None else str(text)
        for s in sorted(self._secrets, key=len, reverse=True):
            if s in text:
                text = text.replace(s, MASK)
        return text

    def __bool__(self) -> bool:
        return bool(self._secrets)


class _LogRedaction(logging.Filter):
    """Masks the secrets of every live :class:`HttpClient` in the records of the HTTP libraries' loggers
    (httpx logs each request's full URL at INFO, user info and query string included)."""

    def __init__(self) -> None:
        super().__init__()
        self.redactors: weakref.WeakSet[Redactor] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        redactors = list(self.redactors)
        if redactors:
            try:
                text = record.getMessage()
            except Exception:  # noqa: BLE001 - a broken record is logging's business
                return True
            clean = text
            for red in redactors:
                clean = red(clean)
            if clean != text:
                record.msg, record.args = clean, None
        return True


_LOG_FILTER = _LogRedaction()
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).addFilter(_LOG_FILTER)


# ---------------------------------------------------------------------------------------------- responses
def server_message(resp: httpx.Response, redact: Any = None, limit: int = 500) -> str:
    """The human message inside an error response, whatever the server's error shape (unredacted unless
    ``redact`` is given — a callable applied *before* the message is cut to ``limit`` characters, so a
    secret the server echoes is never cut in two and half-shown)."""
    clean = redact or (lambda t: t)

    def cut(text: Any) -> str:
        return clean(str(text))[:limit]

    body = _json_or_none(resp)
    if body is _NOT_JSON:
        text = resp.text.strip()
        return cut(text) if text else (resp.reason_phrase or "no message")
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, str):
            return cut(detail)
        if isinstance(detail, list):  # FastAPI validation errors
            parts = []
            for item in detail[:10]:
                if isinstance(item, dict):
                    loc = item.get("loc")
                    loc = ".".join(str(x) for x in loc if x != "body") if isinstance(loc, list) else ""
                    parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
                else:
                    parts.append(str(item))
            return cut("; ".join(parts))
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return cut(err["message"])
        if isinstance(err, str):
            return cut(err)
        if body.get("message"):
            return cut(body["message"])
    try:
        return cut(json.dumps(body))
    except (ValueError, RecursionError):
        return cut(resp.text)


_NOT_JSON = object()


def _json_or_none(resp: httpx.Response) -> Any:
    """The decoded JSON of ``resp``, or ``_NOT_JSON`` — also for JSON nested too deeply to decode (which the
    json module reports as a RecursionError, not a ValueError)."""
    try:
        return resp.json()
    except (ValueError, RecursionError):
        return _NOT_JSON


def retry_after(resp: httpx.Response) -> float | None:
    """Seconds asked for by ``Retry-After`` (a number or an HTTP date), or ``None``."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # asctime and "-0000" dates carry no zone; HTTP dates are always GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())


#: The content codings asked for (``Accept-Encoding``) and decoded here, each bounded (below).
ACCEPT_ENCODING = "gzip, deflate"


class _BodyTooLarge(Exception):
    """The answer, as received or once decompressed, is larger than ``max_response_bytes``."""


class _BadEncoding(Exception):
    """The answer's ``Content-Encoding`` is not one asked for, or its compressed data is corrupt."""


class _Inflate:
    """One ``gzip`` / ``deflate`` layer, decompressed incrementally with a bound on its output — httpx's own
    decoders inflate a whole network chunk at once, so a few KiB of a compression bomb would become
    gigabytes before any size check could run."""

    def __init__(self, coding: str):
        self.coding = coding
        self.raw_deflate = False  # "deflate" is zlib-wrapped by the standard, raw by some servers
        self.d = zlib.decompressobj(16 + zlib.MAX_WBITS if coding in ("gzip", "x-gzip") else zlib.MAX_WBITS)
        self.started = False

    def feed(self, data: bytes, room: int) -> bytes:
        """Decompress ``data``; more than ``room`` bytes out is :class:`_BodyTooLarge`."""
        if not data:
            return b""
        try:
            out = self.d.decompress(data, room + 1)
        except zlib.error as exc:
            if self.coding == "deflate" and not self.started and not self.raw_deflate:
                self.raw_deflate = True
                self.d = zlib.decompressobj(-zlib.MAX_WBITS)
                return self.feed(data, room)
            raise _BadEncoding(f"its {self.coding}-compressed body is corrupt ({exc})") from None
        self.started = True
        if len(out) > room:
            raise _BodyTooLarge
        return out

    def end(self, room: int) -> bytes:
        try:
            out = self.d.flush()
        except zlib.error as exc:
            raise _BadEncoding(f"its {self.coding}-compressed body is corrupt ({exc})") from None
        if len(out) > room:
            raise _BodyTooLarge
        return out


class _BoundedBody:
    """Collects an answer's raw bytes and decodes its ``Content-Encoding`` layers as they arrive, refusing
    more than ``limit`` bytes received or decoded at any layer."""

    def __init__(self, headers: httpx.Headers, limit: int):
        self.limit = limit
        self.raw = 0
        codings = [c.strip().lower() for c in headers.get_list("content-encoding", split_commas=True)]
        codings = [c for c in codings if c and c != "identity"]
        for c in codings:
            if c not in ("gzip", "x-gzip", "deflate"):
                raise _BadEncoding(f"it is encoded as {c!r}, which was not asked for and is not decoded here "
                                   f"(Accept-Encoding: {ACCEPT_ENCODING})")
        if len(codings) > 2:
            raise _BadEncoding(f"it is compressed {len(codings)} times over ({', '.join(codings)})")
        self.layers = [_Inflate(c) for c in reversed(codings)]  # the last coding applied is undone first
        self.out = bytearray()

    def add(self, chunk: bytes) -> None:
        self.raw += len(chunk)
        if self.raw > self.limit:
            raise _BodyTooLarge
        for k, layer in enumerate(self.layers):
            last = k == len(self.layers) - 1
            chunk = layer.feed(chunk, self.limit - len(self.out) if last else self.limit)
        self.out.extend(chunk)
        if len(self.out) > self.limit:
            raise _BodyTooLarge

    def finish(self) -> bytes:
        tail = b""  # what each layer still holds, passed through the layers after it
        for layer in self.layers:
            tail = layer.feed(tail, self.limit)
            tail += layer.end(self.limit)
        self.out.extend(tail)
        if len(self.out) > self.limit:
            raise _BodyTooLarge
        return bytes(self.out)

    def response(self, resp: httpx.Response) -> httpx.Response:
        """A complete response with the decoded body (its encoding headers dropped: it is decoded)."""
        headers = httpx.Headers([(k, v) for k, v in resp.headers.multi_items()
                                 if k.lower() not in ("content-encoding", "content-length")])
        return httpx.Response(resp.status_code, headers=headers, content=self.finish(), request=resp.request)


class _AttemptTimeout(Exception):
    """One attempt ran past its whole-attempt limit (``timeout`` or what was left of ``deadline``)."""


# ---------------------------------------------------------------------------------------------- the client
class HttpClient:
    """JSON over HTTP with retries, whole-attempt timeouts, an overall deadline and redaction.

    Args:
        options: the :class:`~mmrank.scorers.http_options.HttpOptions` (timeout, deadline, retries and
            backoff, API key, headers, TLS, transports, answer size; ``max_concurrency`` is the caller's to
            apply). ``None``: the defaults.
        what: how errors name the service (e.g. ``"the rerank server"``); the URL is added.
        hints: text added to the error message for a status code (e.g. ``{401: " — check the API key"}``).
        user_agent: the ``User-Agent`` header.
        **flat: any field of :class:`~mmrank.scorers.http_options.HttpOptions` as a keyword
            (``timeout=5``); it replaces that field of ``options``.
    """

    def __init__(self, options: HttpOptions | None = None, *, what: str = "the server",
                 hints: dict[int, str] | None = None, user_agent: str = "mmrank", **flat: Any):
        o = HttpOptions.merge(options, also=("what", "hints", "user_agent"), **flat)
        self.options = o
        if o.timeout is None:  # no whole-attempt bound (the deadline, if any, still holds)
            limit = None
            self.timeout = httpx.Timeout(None)
        elif isinstance(o.timeout, httpx.Timeout):
            parts = [t for t in (o.timeout.connect, o.timeout.read, o.timeout.write, o.timeout.pool) if t is not None]
            limit = max(parts) if parts else None
            self.timeout = o.timeout
        else:
            limit = float(o.timeout)
            self.timeout = httpx.Timeout(limit)
        #: seconds one attempt may take as a whole (``None``: unbounded)
        self.attempt_limit: float | None = limit
        self.deadline = None if o.deadline is None else float(o.deadline)
        self.what = what
        self.max_retries = o.max_retries
        self.backoff = float(o.backoff)
        self.max_backoff = float(o.max_backoff)
        self.max_retry_after = float(o.max_retry_after)
        self.max_response_bytes = o.max_response_bytes
        self.hints = dict(hints or {})
        self.redact = Redactor([o.api_key])
        _LOG_FILTER.redactors.add(self.redact)
        # Only the codings decoded here with a bound on their output (httpx would add br / zstd when their
        # packages are installed, and inflate them unbounded).
        self._headers = {"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING, "User-Agent": user_agent}
        for k, v in o.headers.items():  # a caller's header replaces ours of the same name, whatever its case
            self._headers = {h: x for h, x in self._headers.items() if h.lower() != k.lower()}
            self._headers[k] = v
            if k.lower() in SECRET_HEADERS:
                self.redact.add(v)
        if o.api_key:
            self._headers["Authorization"] = f"Bearer {o.api_key}"
        self._transport = o.transport
        self._async_transport = o.async_transport
        self._verify = o.verify
        self._client: httpx.Client | None = None
        self._aclients: dict[int, tuple[Any, httpx.AsyncClient]] = {}
        self._lock = threading.Lock()

    @property
    def has_api_key(self) -> bool:
        return "Authorization" in self._headers

    def protect(self, url: str) -> str:
        """Register the credentials inside ``url`` (password, key-like query values) for redaction; returns
        ``url`` unchanged. Call it for every URL the client will be asked to use."""
        self.redact.add_url(url)
        return url

    def safe(self, text: Any) -> str:
        """``text`` with every known secret masked (for messages built by callers)."""
        return self.redact(text)

    def safe_url(self, url: str) -> str:
        return self.redact(redact_url(url))

    # ------------------------------------------------------------------ clients
    def sync_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout, headers=self._headers, transport=self._transport,
                                            verify=self._verify, follow_redirects=False)
            return self._client

    def async_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._aclients.get(id(loop))
            if entry is not None and entry[0]() is loop:
                return entry[1]
            for k, (ref, _) in list(self._aclients.items()):
                if ref() is None:
                    del self._aclients[k]
            client = httpx.AsyncClient(timeout=self.timeout, headers=self._headers, transport=self._async_transport,
                                       verify=self._verify, follow_redirects=False)
            self._aclients[id(loop)] = (weakref.ref(loop), client)
            return client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            self._aclients.clear()  # async clients are closed by aclose() on their own loop

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._aclients.pop(id(loop), None)
        if entry is not None:
            await entry[1].aclose()
        self.close()

    # ------------------------------------------------------------------ errors
    def error(self, url: str, resp: httpx.Response, suffix: str = "") -> RemoteError:
        """The :class:`RemoteError` for an error answer: status, the server's message, a hint; redacted."""
        hint = self.hints.get(resp.status_code, "")
        if 300 <= resp.status_code < 400:
            where = resp.headers.get("location")
            hint += (" — redirects are not followed (credentials are never sent on to another address); use "
                     "the final URL" + (f": the server points to {self.clip(redact_url(where), 300)!r}"
                                        if where else ""))
        msg = self.redact(f"{redact_url(url)} answered HTTP {resp.status_code}: "
                          f"{server_message(resp, self.redact)}{hint}{suffix}")
        return RemoteError(msg, status_code=resp.status_code, body=self.clip(resp.text, 2000))

    def fail(self, message: str, *, status_code: int | None = None, body: str | None = None) -> RemoteError:
        """A redacted :class:`RemoteError` (for callers that judge an answer's content)."""
        return RemoteError(self.redact(message), status_code=status_code,
                           body=None if body is None else self.clip(body, 2000))

    def clip(self, text: Any, limit: int) -> str:
        """``text`` with every known secret masked, *then* cut to ``limit`` characters (cutting first could
        leave the first half of a secret in view). For server-sent text quoted in a message."""
        return self.redact(text)[:limit]

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, _AttemptTimeout):
            return str(exc)
        text = str(exc) or type(exc).__name__
        return f"{type(exc).__name__}: {text}"

    # ------------------------------------------------------------------ one attempt
    def _budget(self, until: float | None) -> float | None:
        """Seconds this attempt may take: the whole-attempt limit, cut to what is left of the deadline."""
        left = None if until is None else until - time.monotonic()
        if self.attempt_limit is None:
            return left
        return self.attempt_limit if left is None else min(self.attempt_limit, left)

    def _timeout_for(self, budget: float | None) -> httpx.Timeout:
        if budget is None:
            return self.timeout
        b = max(budget, 0.001)

        def cut(t: float | None) -> float:
            return b if t is None else min(t, b)

        return httpx.Timeout(connect=cut(self.timeout.connect), read=cut(self.timeout.read),
                             write=cut(self.timeout.write), pool=cut(self.timeout.pool))

    def _too_long(self, budget: float | None) -> _AttemptTimeout:
        return _AttemptTimeout(f"no complete answer within {budget:.3g}s" if budget is not None else "timed out")

    def _attempt_sync(self, method: str, url: str, body: Any, budget: float | None, state: dict) -> httpx.Response:
        client = self.sync_client()
        start = time.monotonic()
        with client.stream(method, url, content=body, headers=_json_headers(body),
                           timeout=self._timeout_for(budget)) as resp:
            state["response"] = resp
            if resp.is_stream_consumed:  # a transport that answered with a complete response (mock transports)
                return self._complete(url, resp)
            got = self._reader(url, resp)
            try:
                for chunk in resp.iter_raw():
                    if state.get("abandoned") or (budget is not None and time.monotonic() - start > budget):
                        raise self._too_long(budget)
                    got.add(chunk)
                return got.response(resp)
            except (_BodyTooLarge, _BadEncoding) as exc:
                raise self._body_error(url, resp, exc) from None

    def _reader(self, url: str, resp: httpx.Response) -> _BoundedBody:
        try:
            return _BoundedBody(resp.headers, self.max_response_bytes)
        except _BadEncoding as exc:
            raise self._body_error(url, resp, exc) from None

    def _body_error(self, url: str, resp: httpx.Response, exc: Exception) -> RemoteError:
        if isinstance(exc, _BodyTooLarge):
            what = (f"an answer larger than max_response_bytes={self.max_response_bytes} bytes (as received or "
                    "once decompressed); refused")
        else:
            what = f"an answer that cannot be read: {exc}"
        return self.fail(f"{redact_url(url)} answered HTTP {resp.status_code} with {what}",
                         status_code=resp.status_code)

    def _complete(self, url: str, resp: httpx.Response) -> httpx.Response:
        """A response a custom transport handed over already read: the size limit still applies."""
        if len(resp.content) > self.max_response_bytes:
            raise self._body_error(url, resp, _BodyTooLarge())
        return resp

    def _attempt_in_thread(self, method: str, url: str, body: Any, budget: float | None) -> httpx.Response:
        if budget is not None and budget <= 0:
            raise self._too_long(0.0)
        if budget is None:
            return self._attempt_sync(method, url, body, None, {})
        box: dict[str, Any] = {}
        state: dict[str, Any] = {}

        def run() -> None:
            try:
                box["ok"] = self._attempt_sync(method, url, body, budget, state)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                box["err"] = exc

        t = threading.Thread(target=run, name="mmrank-http", daemon=True)
        t.start()
        t.join(budget + 0.05)
        if t.is_alive():
            state["abandoned"] = True  # the worker stops at its next chunk; its reads are bounded by budget
            resp = state.get("response")
            if resp is not None:
                try:
                    resp.close()
                except Exception:  # noqa: BLE001 - closing from another thread is best effort
                    pass
            raise self._too_long(budget)
        if "err" in box:
            raise box["err"]
        return box["ok"]

    async def _attempt_async(self, method: str, url: str, body: Any, budget: float | None) -> httpx.Response:
        client = self.async_client()
        if budget is not None and budget <= 0:
            raise self._too_long(0.0)

        async def run() -> httpx.Response:
            async with client.stream(method, url, content=body, headers=_json_headers(body),
                                     timeout=self._timeout_for(budget)) as resp:
                if resp.is_stream_consumed:
                    return self._complete(url, resp)
                got = self._reader(url, resp)
                try:
                    async for chunk in resp.aiter_raw():
                        got.add(chunk)
                    return got.response(resp)
                except (_BodyTooLarge, _BadEncoding) as exc:
                    raise self._body_error(url, resp, exc) from None

        try:
            async with asyncio.timeout(budget):
                return await run()
        except TimeoutError:
            raise self._too_long(budget) from None

    # ------------------------------------------------------------------ retry policy
    def _decide(self, url: str, attempt: int, attempts: int, resp: httpx.Response | None,
                exc: BaseException | None, until: float | None) -> float | None:
        """``None`` when ``resp`` is the answer; else the delay before the next attempt. Raises a redacted
        :class:`RemoteError` when the answer is a non-retryable error or no retry is left."""
        if resp is not None and resp.status_code < 300:
            return None
        if resp is not None and resp.status_code not in RETRY_STATUS:
            raise self.error(url, resp)
        tries = attempt + 1
        if exc is not None and _certificate_failure(exc):  # retrying cannot help; say what to change
            raise self.fail(f"could not reach {redact_url(url)}: its TLS certificate failed verification "
                            f"({self._describe(exc)}); pass verify=ssl.create_default_context(cafile=...) for a "
                            "private CA (or verify=False, which trusts anyone on the network path)")
        if tries >= attempts:
            raise self._give_up(url, resp, exc, f"after {tries} attempt{'s' if tries > 1 else ''}")
        delay = None
        if resp is not None:
            after = retry_after(resp)
            if after is not None:
                if after > self.max_retry_after:
                    raise self.fail(f"{redact_url(url)} answered HTTP {resp.status_code} and asks to retry after "
                                    f"{after:.0f}s, more than max_retry_after={self.max_retry_after:g}s: "
                                    f"{server_message(resp, self.redact)}", status_code=resp.status_code,
                                body=resp.text)
                delay = after
        if delay is None:
            delay = random.uniform(0, min(self.max_backoff, self.backoff * (2 ** attempt)))
        if until is not None and time.monotonic() + delay >= until:
            raise self._give_up(url, resp, exc, f"within the deadline of {self.deadline:g}s ({tries} "
                                                f"attempt{'s' if tries > 1 else ''})")
        logger.info("mmrank: %s from %s, retrying in %.2fs (%d/%d)",
                    f"HTTP {resp.status_code}" if resp is not None else self.redact(self._describe(exc)),
                    self.safe_url(url), delay, attempt + 1, attempts - 1)
        return delay

    def _give_up(self, url: str, resp: httpx.Response | None, exc: BaseException | None, when: str) -> RemoteError:
        if resp is not None:
            return self.error(url, resp, f" ({when})")
        return self.fail(f"could not reach {redact_url(url)} {when}: {self._describe(exc)}")

    # ------------------------------------------------------------------ public calls
    def send(self, method: str, url: str, body: Any = None, *, retry: bool = True) -> httpx.Response:
        """One call (sync): the successful (2xx) response with its body read, or a redacted
        :class:`RemoteError`. ``retry=False``: one attempt."""
        self.redact.add_url(url)
        body = encode_json(body)
        until = None if self.deadline is None else time.monotonic() + self.deadline
        attempts = self.max_retries + 1 if retry else 1
        for attempt in range(attempts):
            resp, exc = None, None
            try:
                resp = self._attempt_in_thread(method, url, body, self._budget(until))
            except (httpx.TransportError, _AttemptTimeout) as e:  # refused/reset, timeouts, truncated answers
                exc = e
            except httpx.HTTPError as e:
                raise self.fail(f"request to {redact_url(url)} failed: {self._describe(e)}") from None
            delay = self._decide(url, attempt, attempts, resp, exc, until)
            if delay is None:
                return resp  # type: ignore[return-value]
            _sleep(delay)
        raise AssertionError("unreachable")

    async def asend(self, method: str, url: str, body: Any = None, *, retry: bool = True) -> httpx.Response:
        """One call (async, on the running event loop): as :meth:`send`."""
        self.redact.add_url(url)
        body = encode_json(body)
        until = None if self.deadline is None else time.monotonic() + self.deadline
        attempts = self.max_retries + 1 if retry else 1
        for attempt in range(attempts):
            resp, exc = None, None
            try:
                resp = await self._attempt_async(method, url, body, self._budget(until))
            except (httpx.TransportError, _AttemptTimeout) as e:
                exc = e
            except httpx.HTTPError as e:
                raise self.fail(f"request to {redact_url(url)} failed: {self._describe(e)}") from None
            delay = self._decide(url, attempt, attempts, resp, exc, until)
            if delay is None:
                return resp  # type: ignore[return-value]
            await _asleep(delay)
        raise AssertionError("unreachable")

    def post_json(self, url: str, body: Any) -> Any:
        """POST ``body`` and return the decoded JSON answer (a non-JSON answer is a :class:`RemoteError`)."""
        return self.decode(url, self.send("POST", url, body))

    async def apost_json(self, url: str, body: Any) -> Any:
        return self.decode(url, await self.asend("POST", url, body))

    def decode(self, url: str, resp: httpx.Response) -> Any:
        body = _json_or_none(resp)
        if body is _NOT_JSON:
            raise self.fail(f"{redact_url(url)} answered HTTP {resp.status_code} with a body that is not JSON (or "
                            f"nested too deeply): {self.clip(resp.text, 200)!r}", status_code=resp.status_code,
                            body=resp.text)
        return body

    def probe(self, url: str) -> Any | None:
        """``GET url`` once, for discovery: the JSON answer, or ``None`` on any failure (never raises)."""
        try:
            body = _json_or_none(self.send("GET", url, retry=False))
        except RemoteError:
            return None
        return None if body is _NOT_JSON else body

    async def aprobe(self, url: str) -> Any | None:
        try:
            body = _json_or_none(await self.asend("GET", url, retry=False))
        except RemoteError:
            return None
        return None if body is _NOT_JSON else body


def _certificate_failure(exc: BaseException) -> bool:
    """Whether a transport error comes from a TLS certificate that failed verification."""
    import ssl

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, ssl.SSLCertVerificationError):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _sleep(seconds: float) -> None:
    """The wait between two attempts (a module function, so tests can replace it without patching
    ``time.sleep`` for every thread of the process)."""
    time.sleep(seconds)


async def _asleep(seconds: float) -> None:
    """The async wait between two attempts."""
    await asyncio.sleep(seconds)


def encode_json(body: Any) -> bytes | None:
    """The UTF-8 JSON of a request body (``None``: no body). Text that is not valid Unicode (a lone
    surrogate, e.g. from a ``"\\ud800"`` JSON escape) or a non-finite number is an :class:`InputError` here,
    not an encoding crash inside the HTTP library."""
    if body is None:
        return None
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end] if isinstance(exc.object, str) else "?"
        raise InputError(f"the request holds text that is not valid Unicode ({bad!r} at character {exc.start} "
                         "of a string); fix or drop that text") from None
    except ValueError as exc:
        raise InputError(f"the request cannot be sent as JSON: {exc}") from None


def _json_headers(content: bytes | None) -> dict[str, str]:
    return {"Content-Type": "application/json"} if content is not None else {}

