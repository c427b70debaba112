"""How the scorers that talk to a server use HTTP: one :class:`HttpOptions` object shared by
:class:`~mmrank.RemoteReranker` and :class:`~mmrank.ChatReranker` (and the client both use,
:class:`mmrank.scorers.http.HttpClient`), plus the command-line flags that build it for ``mmrank rank``,
``mmrank rerank-run`` and ``mmrank serve`` (:func:`add_http_arguments`).

Each knob's default is stated here once. This module imports neither httpx nor ssl (the command lines
build their parsers without them); values of those types are checked only when one is given.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:
    import ssl

    import httpx

__all__ = ["HttpOptions", "add_http_arguments", "http_kwargs_from_args", "SECRET_HEADERS", "MASK",
           "DEFAULT_MAX_RESPONSE_BYTES"]

#: Header names whose values are credentials (compared lower-case): redacted in errors, logs and ``repr``.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie",
                            "x-auth-token", "openai-api-key"})
MASK = "***"
#: Answers larger than this are refused (a reranking answer is a few kilobytes).
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024

# RFC 9110 field names (tokens); values must not break the header block and must be ASCII (httpx encodes them
# as ASCII and would fail with a UnicodeEncodeError at the first request).
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[^\t\x20-\x7e]")


@dataclass(frozen=True, repr=False)
class HttpOptions:
    """How a scorer that talks to a server uses HTTP, in one object. :class:`~mmrank.RemoteReranker` and
    :class:`~mmrank.ChatReranker` take it as ``http=`` and accept each field as a keyword too
    (``timeout=30``), which replaces that field of ``http``. Invalid values raise
    :class:`~mmrank.errors.InputError` here, when the options are made.

    Args:
        timeout: seconds one attempt may take as a whole — connect, send and the whole answer, so a server that
            trickles its answer cannot stretch it — or an ``httpx.Timeout`` (its largest part bounds the whole
            attempt; its parts still bound each connect / read / write); ``None``: unbounded.
        deadline: seconds one request may take including its retries and the waits between them; a retry that
            could not finish in time is not started. ``None``: no bound beyond ``timeout`` per attempt.
        max_retries: retries after the first attempt on 408, 425, 429, 5xx and connection errors / timeouts
            (any other 4xx fails at once).
        backoff: the n-th retry waits a random time in ``[0, min(max_backoff, backoff·2ⁿ)]`` seconds (full
            jitter), or what the server's ``Retry-After`` asks for.
        max_backoff: the longest such wait, in seconds.
        max_retry_after: a ``Retry-After`` longer than this many seconds fails at once instead of waiting.
        max_concurrency: requests in flight at once, in the sync and the async API — for
            :class:`~mmrank.RemoteReranker` the sub-requests of one long list, for
            :class:`~mmrank.ChatReranker` all requests of the scorer (windows of different queries,
            pairwise documents, ``rank_many``).
        api_key: bearer token, sent as ``Authorization: Bearer <key>``; never logged, put in an error or shown
            by ``repr``. ``None``: the scorer reads its environment variable (``MMRANK_API_KEY`` then
            ``JINA_API_KEY`` for :class:`~mmrank.RemoteReranker`; ``MMRANK_CHAT_API_KEY``, and
            ``OPENAI_API_KEY`` for api.openai.com only, for :class:`~mmrank.ChatReranker`).
        headers: extra HTTP headers (e.g. a tenant id); the values of credential headers (``Authorization``,
            ``X-API-Key``, ``Cookie``, …) are redacted like the key.
        verify: TLS certificate verification, as for httpx: ``True``, ``False`` or an ``ssl.SSLContext``
            (e.g. ``ssl.create_default_context(cafile=...)`` for a private CA).
        transport: a custom sync ``httpx`` transport (tests, proxies).
        async_transport: a custom async ``httpx`` transport.
        max_response_bytes: answers larger than this, as received or once decompressed, are refused (only
            ``gzip`` and ``deflate`` are asked for, and inflated with this bound).
    """

    timeout: float | httpx.Timeout | None = 120.0
    deadline: float | None = None
    max_retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 20.0
    max_retry_after: float = 60.0
    max_concurrency: int = 8
    api_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    verify: bool | ssl.SSLContext = True
    transport: httpx.BaseTransport | None = None
    async_transport: httpx.AsyncBaseTransport | None = None
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def __post_init__(self) -> None:
        _check_timeout(self.timeout)
        if self.deadline is not None:
            _check_seconds("deadline", self.deadline)
        _check_int("max_retries", self.max_retries, 0)
        for name in ("backoff", "max_backoff", "max_retry_after"):
            v = getattr(self, name)
            if not _is_number(v) or not v >= 0:
                raise InputError(f"{name} must be a number of seconds >= 0, got {v!r}")
        _check_int("max_concurrency", self.max_concurrency, 1)
        _check_int("max_response_bytes", self.max_response_bytes, 1)
        object.__setattr__(self, "headers", MappingProxyType(_checked_headers(self.headers)))
        _check_api_key(self.api_key, self.headers)
        _check_verify(self.verify)
        _check_transports(self.transport, self.async_transport)

    # ------------------------------------------------------------------ building
    @classmethod
    def merge(cls, http: HttpOptions | None = None, *, also: Sequence[str] = (), **overrides: Any) -> HttpOptions:
        """``http`` (or the defaults) with the given fields replaced — how a scorer combines ``http=`` with the
        HTTP keywords users pass directly (``timeout=30``, ``max_retries=0``, …). An unknown keyword is a
        ``TypeError`` naming it, as for any misspelt argument.

        Args:
            http: the options to start from (``None``: the defaults).
            also: the caller's other keyword options, listed in the ``TypeError``'s message.
            **overrides: fields to replace.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unexpected keyword argument{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(repr, unknown))} (keyword options are: "
                            f"{', '.join(sorted(names | set(also)))})")
        if http is not None and not isinstance(http, HttpOptions):
            raise InputError(f"http must be an HttpOptions, got {type(http).__name__}")
        if not overrides:
            return http or cls()
        return replace(http or cls(), **overrides)

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        # copy / deepcopy / pickle: the read-only headers view travels as a plain dict, and is checked again
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["headers"] = dict(self.headers)
        return _rebuild, (values,)

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """The names of the fields (the keywords a scorer routes to its ``http`` options)."""
        return frozenset(f.name for f in fields(cls))

    @property
    def has_authorization(self) -> bool:
        """Whether these options send credentials: an API key or an ``Authorization`` header (either makes a
        scorer skip its API-key environment variable)."""
        return bool(self.api_key) or any(k.lower() == "authorization" for k in self.headers)

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "api_key":
                parts.append("api_key=<set>" if value else f"api_key={value!r}")
            elif f.name == "headers":
                shown = {k: MASK if k.lower() in SECRET_HEADERS else v for k, v in value.items()}
                parts.append(f"headers={shown!r}")
            else:
                parts.append(f"{f.name}={value!r}")
        return f"HttpOptions({', '.join(parts)})"

    __str__ = __repr__

    # ------------------------------------------------------------------ command line
    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> HttpOptions | None:
        """The options the flags of :func:`add_http_arguments` give, or ``None`` when none was given.

        Args:
            ns: the parsed command line.
        """
        given = {name: getattr(ns, dest) for dest, name in _FLAG_FIELDS.items()
                 if getattr(ns, dest, None) is not None}
        if "headers" in given:
            headers: dict[str, str] = {}
            for name, value in given["headers"]:
                if name.lower() in {k.lower() for k in headers}:
                    raise InputError(f"--http-header {name!r} is given twice")
                headers[name] = value
            given["headers"] = headers
        return cls(**given) if given else None


def keyword_names(func: Any) -> tuple[str, ...]:
    """The named parameters of ``func`` but ``self`` (a scorer's own keywords, listed next to the
    :class:`HttpOptions` fields when a keyword is misspelt).

    Args:
        func: a function, usually a scorer's ``__init__``.
    """
    import inspect

    return tuple(n for n, p in inspect.signature(func).parameters.items()
                 if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def _rebuild(values: dict[str, Any]) -> HttpOptions:
    return HttpOptions(**values)


# ---------------------------------------------------------------------------------------------- checks
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _check_seconds(name: str, v: Any) -> None:
    if not _is_number(v) or not 0 < v < math.inf:
        raise InputError(f"{name} must be a positive number of seconds, got {v!r}")


def _check_int(name: str, v: Any, low: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise InputError(f"{name} must be an integer >= {low}, got {v!r}")


def _check_timeout(v: Any) -> None:
    if v is None or _is_number(v) or isinstance(v, (bool, str)):
        if v is not None:
            _check_seconds("timeout", v)
        return
    import httpx

    if not isinstance(v, httpx.Timeout):
        raise InputError(f"timeout must be a positive number of seconds, an httpx.Timeout or None, got "
                         f"{type(v).__name__}")


def _checked_headers(headers: Any) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise InputError(f"headers must be a mapping of header names to values, got {type(headers).__name__}")
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for k, v in headers.items():
        if not isinstance(k, str) or not _HEADER_NAME.match(k):
            raise InputError(f"header name {k!r} is not a valid HTTP field name (letters, digits and !#$%&'*+-.^_`|~)")
        shown = "(value not shown)" if k.lower() in SECRET_HEADERS else repr(v)
        if not isinstance(v, str):
            raise InputError(f"header {k!r} must have a string value, got {type(v).__name__}")
        if _BAD_VALUE.search(v):
            raise InputError(f"header {k!r} has a line break, a control character or a non-ASCII character in "
                             f"its value {shown} (HTTP header values are ASCII)")
        if k.lower() in seen:
            raise InputError(f"header {k!r} is given twice (as {seen[k.lower()]!r} too; names are case-insensitive)")
        seen[k.lower()] = k
        out[k] = v
    return out


def _check_api_key(key: Any, headers: Mapping[str, str]) -> None:
    if key is None:
        return
    if not isinstance(key, str):
        raise InputError(f"api_key must be a string, got {type(key).__name__}")
    if key != key.strip() or _BAD_VALUE.search(key):
        raise InputError("api_key has surrounding whitespace, a line break, a control character or a non-ASCII "
                         "character (read from a file? strip it); the key is not shown")
    if key and any(k.lower() == "authorization" for k in headers):
        raise InputError("pass the credential once: api_key sets the Authorization header, which headers "
                         "also sets")


def _check_verify(v: Any) -> None:
    if isinstance(v, (bool, str)):  # a CA bundle path is what older httpx took; httpx still accepts it
        return
    import ssl

    if not isinstance(v, ssl.SSLContext):
        raise InputError(f"verify must be True, False or an ssl.SSLContext, got {type(v).__name__}")


def _check_transports(sync: Any, async_: Any) -> None:
    if sync is None and async_ is None:
        return
    import httpx

    if sync is not None and not isinstance(sync, httpx.BaseTransport):
        hint = " (an async transport goes to async_transport)" if isinstance(sync, httpx.AsyncBaseTransport) else ""
        raise InputError(f"transport must be an httpx.BaseTransport, got {type(sync).__name__}{hint}")
    if async_ is not None and not isinstance(async_, httpx.AsyncBaseTransport):
        hint = " (a sync transport goes to transport)" if isinstance(async_, httpx.BaseTransport) else ""
        raise InputError(f"async_transport must be an httpx.AsyncBaseTransport, got {type(async_).__name__}{hint}")


# ---------------------------------------------------------------------------------------------- command line
#: argparse dest → HttpOptions field, for the flags of add_http_arguments.
_FLAG_FIELDS = {"http_timeout": "timeout", "http_deadline": "deadline", "http_retries": "max_retries",
                "http_concurrency": "max_concurrency", "http_header": "headers"}


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("expected 'Name: value'")
    return name.strip(), value.strip()


def add_http_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add the HTTP flags of the scorers that talk to a server (``--http-timeout``, ``--http-deadline``,
    ``--http-retries``, ``--http-concurrency``, ``--http-header``), which ``mmrank rank``,
    ``mmrank rerank-run`` and ``mmrank serve`` share. Every flag defaults to unset (the :class:`HttpOptions`
    default applies); read them back with :func:`http_kwargs_from_args` or :meth:`HttpOptions.from_args`.

    Args:
        parser: the parser or argument group to add them to.
    """
    d = HttpOptions()
    a = parser.add_argument
    a("--http-timeout", dest="http_timeout", type=_seconds, default=None, metavar="SECONDS",
      help=f"seconds one HTTP attempt may take as a whole, the whole answer included (default {d.timeout:g})")
    a("--http-deadline", dest="http_deadline", type=_seconds, default=None, metavar="SECONDS",
      help="seconds one request may take including its retries and waits (default: no bound)")
    a("--http-retries", dest="http_retries", type=_int_at_least(0), default=None, metavar="N",
      help=f"retries on 408/429/5xx and connection errors or timeouts (default {d.max_retries})")
    a("--http-concurrency", dest="http_concurrency", type=_int_at_least(1), default=None, metavar="N",
      help=f"requests in flight at once (default {d.max_concurrency})")
    a("--http-header", dest="http_header", type=_header, action="append", default=None, metavar="'NAME: VALUE'",
      help="extra HTTP header sent with every request (repeatable)")


def http_kwargs_from_args(ns: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Scorer keyword arguments from the flags of :func:`add_http_arguments`: ``{"http": HttpOptions(...)}``
    when any was given and ``mode`` talks to a server, ``{}`` when none was given. A flag the mode cannot use
    is an :class:`~mmrank.errors.InputError` rather than silently dropped.

    Args:
        ns: the parsed command line.
        mode: the scorer mode (one of :data:`mmrank.scorers.factory.MODES`).
    """
    from .factory import HTTP_MODES

    options = HttpOptions.from_args(ns)
    if options is None:
        return {}
    if mode not in HTTP_MODES:
        flags = ", ".join("--" + dest.replace("_", "-") for dest in _FLAG_FIELDS if getattr(ns, dest, None) is not None)
        raise InputError(f"{flags} appl{'y' if ',' in flags else 'ies'} to the modes that talk to a server "
                         f"({', '.join(HTTP_MODES)}), not {mode}")
    return {"http": options}
