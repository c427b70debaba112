"""``mmrank serve`` under abuse, as a real process on 127.0.0.1 with raw sockets (tiny model): slow-header and
slow-body clients (a byte at a time) are cut off by their deadlines and cannot starve real requests (the
503 uvicorn answers meanwhile is JSON); requests that are not valid HTTP/1.1 get a JSON 400; a client
that disconnects while its request is being prepared (a slow image) is not scored (that a cancelled request
waiting for the model thread is skipped is tested deterministically in test_server_ops.py); with an API key
only liveness and readiness are public. One server (1 s head deadline, 1.5 s body deadline, 7 connections at
most, a key; the deadline and the key from MMRANK_SERVE_* variables); each test is bounded to a few seconds."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.load_test import ServerProcess  # noqa: E402

KEY = "abuse-test-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
SLOW = 6  # slow clients; the server takes SLOW + 1 connections, so the slow ones leave no room for a real one


@pytest.fixture(scope="module")
def server(jina_dir):
    args = ["--model", str(jina_dir), "--device", "cpu", "--dtype", "float32", "--header-timeout", "1",
            "--limit-concurrency", str(SLOW + 1), "--no-warmup",
            "--allow-private-urls"]  # the slow image comes from 127.0.0.1 (image_host in conftest.py)
    # two settings from the environment, as a container would set them
    env = {"MMRANK_SERVE_BODY_TIMEOUT": "1.5", "MMRANK_SERVE_API_KEY": KEY}
    with ServerProcess(args, env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as client:
        yield client


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


class SlowClient(threading.Thread):
    """Sends ``head`` then ``body`` one byte every ``interval`` s until the server closes the connection
    (or ``give_up`` s pass); records when it was closed and what the server answered."""

    def __init__(self, url: str, head: bytes, body: bytes, *, interval: float = 0.25, give_up: float = 8.0,
                 trickle_head: bool):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(_address(url), timeout=give_up)
        self.head, self.body, self.interval, self.give_up = head, body, interval, give_up
        self.trickle_head = trickle_head
        self.closed_after: float | None = None
        self.answer = b""

    def run(self) -> None:
        t0 = time.monotonic()
        self.sock.settimeout(self.interval)
        data = self.head + self.body
        sent = 0 if self.trickle_head else len(self.head)
        if not self.trickle_head:
            self.sock.sendall(self.head)
        try:
            while time.monotonic() - t0 < self.give_up:
                if sent < len(data):
                    self.sock.send(data[sent:sent + 1])
                    sent += 1
                try:
                    chunk = self.sock.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                self.answer += chunk
        except OSError:
            pass
        self.closed_after = time.monotonic() - t0
        self.sock.close()


def _rerank_head(url: str, length: int) -> bytes:
    host, port = _address(url)
    return (f"POST /v1/rerank HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def test_slow_clients_are_cut_off_and_cannot_starve_real_requests(server, http):
    body = json.dumps({"query": "q", "documents": ["a slow document " * 20]}).encode()
    head = _rerank_head(server.url, len(body))
    slow = [SlowClient(server.url, head, body, trickle_head=i % 2 == 0) for i in range(SLOW)]
    t0 = time.monotonic()
    for c in slow:
        c.start()
    time.sleep(0.3)
    # with the slow clients connected, uvicorn's connection limit is reached: this is the starvation that
    # the deadlines must end
    busy = httpx.get(server.url + "/health", timeout=5)
    assert busy.status_code == 503 and "--limit-concurrency" in busy.json()["detail"]  # JSON, not uvicorn's text
    served_after = None
    while time.monotonic() - t0 < 6:
        try:
            resp = httpx.post(server.url + "/v1/rerank", json={"query": "q", "documents": ["real"]}, headers=AUTH,
                              timeout=5)
        except httpx.HTTPError:
            resp = None
        if resp is not None and resp.status_code == 200:
            served_after = time.monotonic() - t0
            break
        time.sleep(0.1)
    for c in slow:
        c.join(10)
    print(f"\nslow clients: real request served after {served_after:.2f} s; slow connections closed after "
          f"{sorted(round(c.closed_after or -1, 2) for c in slow)} s")
    assert served_after is not None and served_after < 3.5, served_after
    for c in slow:
        assert c.closed_after is not None and c.closed_after < 3.5, c.closed_after
    heads = [c for c in slow if c.trickle_head]
    bodies = [c for c in slow if not c.trickle_head]
    assert all(c.answer == b"" for c in heads)  # closed without an answer: no request arrived
    for c in bodies:
        assert c.answer.startswith(b"HTTP/1.1 408"), c.answer[:200]
        assert b"--body-timeout" in c.answer
    assert server.alive()
    assert http.post("/v1/rerank", json={"query": "q", "documents": ["after"]}).status_code == 200


def test_a_client_that_disconnects_while_its_request_is_prepared_is_not_scored(server, http, image_host):
    assert http.post("/v1/rerank", json={"query": "q", "documents": ["warm"]}).status_code == 200
    before = http.get("/v1/stats").json()
    # The request's image takes 2 s to arrive; the client hangs up after 0.3 s.
    slow = image_host.url + "/slow.png?delay=2"
    body = json.dumps({"query": "gone", "documents": ["never scored", {"image": slow + "&gone"}]}).encode()
    sock = socket.create_connection(_address(server.url), timeout=5)
    sock.sendall(_rerank_head(server.url, len(body)) + body)
    deadline = time.monotonic() + 5
    while "/slow.png?delay=2&gone" not in image_host.paths() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "/slow.png?delay=2&gone" in image_host.paths(), "the server never asked for the image"
    time.sleep(0.3)
    sock.close()
    time.sleep(2.5)  # the image arrives; a request that was still alive would now be scored
    after = http.get("/v1/stats").json()
    assert after["cancelled_requests"] == before["cancelled_requests"] + 1
    assert after["model_calls"] == before["model_calls"] and after["documents_scored"] == before["documents_scored"]
    assert after["queue"] == 0
    metrics = http.get("/metrics").text
    assert 'mmrank_requests_total{route="/v1/rerank",status="499"} 1.0' in metrics
    # the same request from a client that waits is scored
    out = http.post("/v1/rerank", json={"query": "q", "documents": ["a", {"image": slow}]})
    assert out.status_code == 200 and len(out.json()["results"]) == 2


def _raw_exchange(url: str, data: bytes) -> bytes:
    sock = socket.create_connection(_address(url), timeout=5)
    sock.sendall(data)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except TimeoutError:
        pass
    sock.close()
    return answer


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost localhost\r\n\r\n",  # header without a colon
    b"GET /health HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcde",
    b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",  # bad chunk size
    b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
])
def test_malformed_http_gets_a_json_400_and_the_connection_closed(server, http, request_bytes):
    answer = _raw_exchange(server.url, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"content-type: application/json" in head.lower() and b"connection: close" in head.lower()
    assert "malformed HTTP request" in json.loads(body)["detail"]
    assert http.get("/health").status_code == 200


def test_only_liveness_and_readiness_are_public(server, jina_dir):
    with httpx.Client(base_url=server.url, timeout=10) as anon:
        health = anon.get("/health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert anon.get("/ready").json() == {"status": "ready"}
        assert str(jina_dir) not in health.text
        for path in ("/openapi.json", "/metrics", "/v1/stats", "/v1/models"):
            assert anon.get(path).status_code == 401, path
        assert anon.get("/docs").status_code == 404
        spec = anon.get("/openapi.json", headers=AUTH).json()
        assert "RerankRequest" in spec["components"]["schemas"]
        models = anon.get("/v1/models", headers=AUTH).json()
        assert [m["id"] for m in models["data"]] == [Path(jina_dir).name]
