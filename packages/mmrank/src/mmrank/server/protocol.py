"""A deadline for the request head (uvicorn's HTTP/1.1 protocol, h11).

uvicorn closes idle keep-alive connections, but a connection that is opened and then sends its request
line and headers slowly (or nothing at all) is held for ever, and it counts against ``--limit-concurrency``:
a handful of such clients make every real request a 503. This protocol closes a connection whose request
head has not fully arrived ``header_timeout`` seconds after the connection opened (or after the first byte
of a following keep-alive request). The body has its own deadline in the app (``--body-timeout``, 408).

The two answers uvicorn writes itself, before the app sees a request, are JSON like every other error of
``mmrank serve`` (uvicorn's are ``text/plain``): 400 for a request that is not valid HTTP/1.1, and 503 over
``--limit-concurrency``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

logger = logging.getLogger("mmrank.server")


BAD_REQUEST = json.dumps({"detail": "malformed HTTP request: the request line or headers are not valid "
                                     "HTTP/1.1"}).encode()
BUSY = json.dumps({"detail": "server busy: too many open connections (--limit-concurrency); retry shortly"}).encode()


async def _json_service_unavailable(scope: Any, receive: Any, send: Any) -> None:
    """uvicorn's answer over ``limit_concurrency``, as JSON."""
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BUSY)).encode()),
                            (b"connection", b"close"), (b"retry-after", b"1")]})
    await send({"type": "http.response.body", "body": BUSY, "more_body": False})


def guarded_h11_protocol(header_timeout: float) -> type[asyncio.Protocol] | None:
    """uvicorn's h11 protocol with a request-head deadline and JSON 400/503 answers; ``None`` if this uvicorn
    has no usable h11 class."""
    try:
        from uvicorn.protocols.http import h11_impl
        from uvicorn.protocols.http.h11_impl import H11Protocol
    except ImportError:  # pragma: no cover - h11 is a dependency of uvicorn
        return None
    h11 = getattr(h11_impl, "h11", None)  # the h11 module uvicorn's protocol runs on
    if h11 is None or not all(hasattr(H11Protocol, name) for name in (
            "connection_made", "connection_lost", "data_received", "handle_events", "send_400_response")):
        return None  # pragma: no cover - an uvicorn whose internals moved: run unguarded (logged by the caller)
    if callable(getattr(h11_impl, "service_unavailable", None)):
        # the ASGI app uvicorn runs instead of ours over --limit-concurrency (only mmrank serve's process
        # uses this protocol)
        h11_impl.service_unavailable = _json_service_unavailable

    class HeadDeadlineH11Protocol(H11Protocol):  # type: ignore[misc, valid-type]
        _mmrank_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._mmrank_arm()

        def data_received(self, data: bytes) -> None:
            # The first byte of a following request on a kept-alive connection starts a new head deadline.
            if self._mmrank_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._mmrank_arm()
            super().data_received(data)

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a request head was parsed: the app (and the body deadline) take over
                self._mmrank_disarm()

        def send_400_response(self, msg: str) -> None:
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BAD_REQUEST)).encode()),
                       (b"connection", b"close")]
            try:
                self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers,
                                                                 reason=b"Bad Request")))
                self.transport.write(self.conn.send(h11.Data(data=BAD_REQUEST)))
                self.transport.write(self.conn.send(h11.EndOfMessage()))
            except h11.LocalProtocolError:  # h11 cannot answer in its state: just close
                pass
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._mmrank_disarm()
            super().connection_lost(exc)

        def _mmrank_arm(self) -> None:
            self._mmrank_disarm()
            self._mmrank_timer = self.loop.call_later(header_timeout, self._mmrank_expired)

        def _mmrank_disarm(self) -> None:
            if self._mmrank_timer is not None:
                self._mmrank_timer.cancel()
                self._mmrank_timer = None

        def _mmrank_expired(self) -> None:
            self._mmrank_timer = None
            if not self.transport.is_closing():
                logger.info("mmrank serve: closed a connection from %s whose request head took over %g s "
                            "(--header-timeout)", self.client, header_timeout)
                self.transport.close()

    return HeadDeadlineH11Protocol
