"""A scriptable HTTP server on 127.0.0.1 for tests of the HTTP clients (real sockets, real httpx).

``serve(handler)`` starts a threaded server on a free port and yields its base URL; ``handler(req)`` gets a
:class:`Request` and returns a :class:`Reply` (status, JSON or raw body, headers) or writes to the socket
itself through ``req`` (trickling, truncated answers). Every request is recorded in ``server.requests``.

``image_routes(png)`` is the handler of an image host for tests that make a server fetch image URLs
(``mmrank serve``): ``/ok.png``, a redirect, a slow and a trickling image, 404 otherwise.
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
from urllib.parse import parse_qs, urlsplit


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
                try:
                    self.send_response(reply.status)
                    headers = {"Content-Type": "application/json", **reply.headers}
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (a timeout under test): nothing to answer
                    self.close_connection = True

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


def image_routes(png: bytes) -> Handler:
    """An image host: ``/ok.png`` → ``png``; ``/redirect.png`` → 302 to ``/ok.png``; ``/slow.png?delay=S``
    → ``png`` after S seconds of silence (default 6; cut short when the server stops); ``/trickle.png`` →
    headers at once, then the first 40 bytes one every 0.4 s; anything else 404."""

    def handle(req: Request) -> Reply | None:
        url = urlsplit(req.path)
        if url.path == "/ok.png":
            return Reply(body=png, headers={"Content-Type": "image/png"})
        if url.path == "/redirect.png":
            return Reply(302, body=b"", headers={"Location": "/ok.png"})
        if url.path == "/slow.png":
            delay = float(parse_qs(url.query).get("delay", ["6"])[0])
            if req.stopping.wait(delay):
                return None
            return Reply(body=png, headers={"Content-Type": "image/png"})
        if url.path == "/trickle.png":
            req.write_head(200, {"Content-Type": "image/png", "Content-Length": str(len(png))})
            req.trickle(png[:40], every=0.4)
            return None
        return Reply(404, body=b"not found", headers={"Content-Type": "text/plain"})

    return handle
