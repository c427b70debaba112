"""The request body of ``POST /v1/rerank`` (and ``/rerank``, ``/v2/rerank``) from bytes on the wire to a
validated :class:`~mmrank.server.schemas.RerankRequest`, refusing what is not plain JSON before anything
else looks at it.

* Headers first: a ``Content-Type`` that is not JSON (form posts, ``text/plain`` — what a browser page may
  send cross-site without asking) is a 415; no ``Content-Type`` is read as JSON. A ``Content-Encoding`` other
  than ``identity`` is a 415 (bodies are never decompressed, so there is no decompression bomb to defuse).
* Reading (:func:`read_body`): the byte cap from ``Content-Length`` and again while streaming (413), and a
  deadline for the whole body (408 with ``Connection: close``).
* Parsing (:func:`parse_json`), strict RFC 8259 JSON: UTF-8 only (a UTF-8 byte-order mark is skipped);
  ``NaN``/``Infinity`` literals, duplicate member names (anywhere), integers of more than 4300 digits
  (Python's own limit) and nesting deeper than Python's recursion limit are a 400 saying what.

* Checking (:func:`rerank_request`): a JSON object; an empty document list (422) or one over the document
  limit (413) is refused before any document is validated; then the schema (422 naming field and document).

Every refusal is an :class:`~mmrank.server.errors.HTTPError` with a message naming the rule. Parsing and
checking a large body take CPU time: the app runs :func:`rerank_request` on its decode threads for bodies over
:data:`DECODE_IN_THREAD` bytes, so the event loop keeps answering other clients meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import Request
from pydantic import ValidationError

from .errors import HTTPError
from .schemas import RerankRequest, describe_validation_error

DECODE_IN_THREAD = 256 * 1024
"""Bodies larger than this are parsed and validated off the event loop."""

_JSON_TYPES = ("application/json",)
_UTF8 = ("utf-8", "utf8")


def check_headers(request: Request) -> None:
    """415 unless the body is declared as (or not declared other than) uncompressed UTF-8 JSON."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise HTTPError(415, f"Content-Encoding {encoding!r} is not supported: send the JSON body uncompressed")
    declared = request.headers.get("content-type")
    if declared is None or not declared.strip():
        return  # no type given: read as JSON (as curl --data-binary without -H would need)
    kind, _, params = declared.partition(";")
    kind = kind.strip().lower()
    if kind not in _JSON_TYPES and not (kind.startswith("application/") and kind.endswith("+json")):
        raise HTTPError(415, f"Content-Type {kind!r} is not accepted: send the body as JSON with "
                             "'Content-Type: application/json'")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in _UTF8:
            raise HTTPError(415, f"charset {value.strip()!r} is not accepted: JSON bodies are UTF-8")


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body: 413 over ``limit`` bytes (declared or streamed), 408 if it takes over ``timeout`` s."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPError(400, "invalid Content-Length header") from None
        if size > limit:
            raise HTTPError(413, f"request body is {size} bytes, over the limit of {limit} bytes "
                                 "(--max-body-bytes)")
    buf = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                buf.extend(chunk)
                if len(buf) > limit:
                    raise HTTPError(413, f"request body exceeds the limit of {limit} bytes (--max-body-bytes)")
    except TimeoutError:
        raise HTTPError(408, f"the request body did not arrive within {timeout:g} s ({len(buf)} bytes received; "
                             "--body-timeout)", _headers={"Connection": "close"}) from None
    return bytes(buf)


class _Refused(ValueError):
    """A rule of strict JSON broken (raised from inside the decoder's hooks)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _Refused(f"duplicate member name {name!r} in an object (each name may appear once)")
            seen.add(name)
    return obj


def _no_constants(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON value (JSON numbers are finite)")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def parse_json(raw: bytes) -> Any:
    """``raw`` as strict JSON (see the module docstring); 400 naming the problem otherwise."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not raw.strip():
        raise HTTPError(400, "empty request body: send a JSON object with 'query' and 'documents'")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPError(400, f"request body is not UTF-8 text: invalid byte(s) at position {exc.start} "
                             f"({exc.reason})") from None
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise HTTPError(400, f"malformed JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except _Refused as exc:
        raise HTTPError(400, f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise HTTPError(400, "malformed JSON body: nested too deeply") from None
    except ValueError:  # the only other one: Python's limit on the digits of an integer
        raise HTTPError(400, "malformed JSON body: an integer with too many digits (at most 4300)") from None


def rerank_request(raw: bytes, max_documents: int) -> RerankRequest:
    """``raw`` as a rerank request: strict JSON, a JSON object, 1 to ``max_documents`` documents, the schema."""
    obj = parse_json(raw)
    if not isinstance(obj, dict):
        raise HTTPError(422, f"the body must be a JSON object with 'query' and 'documents', got {type(obj).__name__}")
    documents = obj.get("documents")
    if isinstance(documents, dict) and isinstance(documents.get("content"), list):
        documents = documents["content"]  # vLLM: one document per content part
    if isinstance(documents, list):
        if not documents:
            raise HTTPError(422, "documents: the list is empty; send at least one document")
        if len(documents) > max_documents:
            raise HTTPError(413, f"documents: {len(documents)} documents in one request, over the limit of "
                                 f"{max_documents} (--max-documents); split the list into several requests")
    try:
        return RerankRequest.model_validate(obj)
    except ValidationError as exc:
        lines = describe_validation_error(exc)
        raise HTTPError(422, "invalid request: " + "; ".join(lines[:10]), errors=lines[:50]) from None
