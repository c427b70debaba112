"""How ``mmrank serve`` answers: :class:`HTTPError` (a 4xx/5xx with a JSON body naming what was wrong), the
JSON response class every route uses, and the app's exception handlers.

Every error body is ``{"detail": "<what, which field or document, which limit>", ...}`` (extra keys such as
``document_index`` or ``errors`` where they help), never a traceback; an unexpected exception is a 500 whose
detail names only the exception type (the traceback goes to the server log).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..errors import InputError, MMRankError

logger = logging.getLogger("mmrank.server")


class HTTPError(Exception):
    """An answer with ``status`` and ``{"detail": message, **extra}``; ``_headers=`` in ``extra`` become
    response headers (``Retry-After``, ``WWW-Authenticate``, ``Connection``)."""

    def __init__(self, status: int, message: str, **extra: Any):
        self.status = status
        self.message = message
        self.extra = extra
        super().__init__(message)


class SafeJSONResponse(JSONResponse):
    """JSON as UTF-8, but never a failed answer over a string that UTF-8 cannot hold.

    A JSON body may carry lone surrogate escapes (``"\\ud800"``); Python decodes them into strings that
    cannot be encoded as UTF-8, and such a string can come back in a response (an echoed document, an
    error naming an image source). Starlette's ``JSONResponse`` then fails with ``UnicodeEncodeError`` — a
    500 for a 4xx or even for a good answer. Those bodies are written with ``\\uXXXX`` escapes instead
    (valid JSON, and the client gets back exactly the string it sent)."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, indent=None,
                              separators=(",", ":")).encode("ascii")


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return SafeJSONResponse({"detail": message, **extra}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """:class:`HTTPError` as its status; an :class:`~mmrank.errors.InputError` escaping a route as 422;
    anything else as a 500 naming only the exception type (logged with its traceback)."""

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError):
        extra = dict(exc.extra)
        headers = extra.pop("_headers", None)
        return error_response(exc.status, exc.message, headers=headers, **extra)

    @app.exception_handler(MMRankError)
    async def _mmrank_error(request: Request, exc: MMRankError):
        if isinstance(exc, InputError):
            return error_response(422, str(exc))
        logger.error("mmrank serve: %s: %s", type(exc).__name__, exc)
        return error_response(500, f"internal server error ({type(exc).__name__}); see the server log")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        logger.exception("mmrank serve: internal error")
        return error_response(500, f"internal server error ({type(exc).__name__}); see the server log")
