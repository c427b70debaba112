"""A deadline for the request head (uvicorn's HTTP/1.1 protocol, h11).

uvicorn closes idle keep-alive connections, but a connection that is opened and then sends its request
line and headers slowly (or nothing at all) is held for ever, and it counts against ``--limit-concurrency``:
a handful of such clients make every real request a 503. This protocol closes a connection whose request
head has not fully arrived ``header_timeout`` seconds after the connection opened (or after the first byte
of a following keep-alive request). The body has its own deadline in the app (``--body-timeout``, 408).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger("mmrank.server")


def guarded_h11_protocol(header_timeout: float) -> type[asyncio.Protocol] | None:
    """uvicorn's h11 protocol with a request-head deadline; ``None`` if this uvicorn has no usable h11 class."""
    try:
        from uvicorn.protocols.http.h11_impl import H11Protocol
    except ImportError:  # pragma: no cover - h11 is a dependency of uvicorn
        return None
    if not all(hasattr(H11Protocol, name) for name in ("connection_made", "connection_lost", "data_received",
                                                         "handle_events")):
        return None  # pragma: no cover - an uvicorn whose internals moved: run unguarded (logged by the caller)

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
