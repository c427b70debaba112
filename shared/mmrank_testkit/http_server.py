"""A scriptable HTTP server on 127.0.0.1 for tests of the HTTP clients (real sockets, real httpx).

``serve(handler)`` starts a threaded server on a free port and yields its base URL; ``handler(req)`` gets a
:class:`Request` and returns a :class:`Reply` (status, JSON or raw body, headers) or writes to the socket
itself through ``req`` (trickling, truncated answers). Every request is recorded in ``server.requests``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self) -> bytes:
        if self.body is not None:
            return self.body
        return json.dumps(self.json).encode()


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    handler: BaseHTTPRequestHandler
    stopping: threading.Event = field(default_factory=threading.Event)

    def json(self) -> Any:
        return json.loads(self.body)

    # ---- raw socket helpers for misbehaving servers
    def write_head(self, status: int, headers: dict[str, str]) -> None:
        h = self.handler
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.flush()

    def write(self, data: bytes) -> bool:
        """Write and flush; False once the client has gone."""
        try:
            self.handler.wfile.write(data)
            self.handler.wfile.flush()
            return True
        except OSError:
            return False

    def trickle(self, data: bytes, every: float, limit: float = 15.0) -> None:
        """Send ``data`` one byte every ``every`` seconds (stops when the client goes, the server stops, or
        after ``limit``)."""
        end = time.monotonic() + limit
        for i in range(len(data)):
            if time.monotonic() > end or self.stopping.is_set() or not self.write(data[i:i + 1]):
                return
            self.stopping.wait(every)


Handler = Callable[[Request], "Reply | None"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class FakeServer:
    def __init__(self, handler: Handler):
        self.handler = handler
        self.requests: list[Request] = []
        self.stopping = threading.Event()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _do(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                req = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body, self,
                              outer.stopping)
                outer.requests.append(req)
                reply = outer.handler(req)
                if reply is None:  # the handler wrote (or deliberately did not write) the answer itself
                    self.close_connection = True
                    return
                data = reply.payload()
                self.send_response(reply.status)
                headers = {"Content-Type": "application/json", **reply.headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _do

        self._server = _Server(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # handlers still trickling end now
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def serve(handler: Handler) -> Iterator[FakeServer]:
    server = FakeServer(handler).start()
    try:
        yield server
    finally:
        server.stop()
