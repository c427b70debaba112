"""``mmrank serve`` fetching image URLs: a second real server process started with ``--allow-private-urls``,
a 1-second image timeout, one image thread and a bearer token, plus the shared image host on 127.0.0.1
(``image_host`` in conftest.py) that can be slow.

Slow and trickling URLs must come back as a 4xx quickly while the server keeps serving; a request waiting on
slow images holds no text-only request up; an allowed URL is fetched and scored like the same image sent
inline; the token is enforced."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from mmrank import Document, RemoteError, RemoteReranker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.load_test import ServerProcess  # noqa: E402

KEY = "serve-test-key-0123456789"


@pytest.fixture(scope="module")
def server(jina_dir):
    args = ["--model", str(jina_dir), "--device", "cpu", "--dtype", "float32", "--allow-private-urls",
            "--image-timeout", "1", "--prep-workers", "1"]
    with ServerProcess(args, env={"MMRANK_SERVE_API_KEY": KEY}) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def test_bearer_token_is_required(server, http):
    assert httpx.get(server.url + "/health").status_code == 200  # health stays open for probes
    body = {"query": "q", "documents": ["a"]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        resp = httpx.post(server.url + "/v1/rerank", json=body, headers=headers)
        assert resp.status_code == 401 and "API key" in resp.json()["detail"]
        assert resp.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert http.post("/v1/rerank", json=body).status_code == 200
    with pytest.raises(RemoteError, match="HTTP 401.*check the API key"):
        RemoteReranker(server.url, api_key="wrong", dialect="jina").rank("q", ["a"])
    assert KEY not in server.log()


def test_allowed_url_is_fetched_and_scored_like_the_inline_image(server, image_host, jina_reranker):
    remote = RemoteReranker(server.url, api_key=KEY)
    host, png = image_host.url, image_host.png
    docs = [Document(image=host + "/ok.png"), Document(image=host + "/redirect.png"), "a gradient photo"]
    ranked = remote.rank("a photo", docs)
    local = jina_reranker.rank("a photo", [png, png, "a gradient photo"])
    assert {r.index: r.score for r in ranked} == pytest.approx({r.index: r.score for r in local}, abs=1e-5)
    with pytest.raises(RemoteError, match="document 0: HTTP 404 fetching image"):
        remote.rank("q", [Document(image=host + "/missing.png")])


@pytest.mark.parametrize("path", ["/slow.png", "/trickle.png"])
def test_slow_urls_time_out_with_a_4xx_and_the_server_keeps_serving(server, http, image_host, path):
    images = image_host.url
    t0 = time.monotonic()
    resp = http.post("/v1/rerank", json={"query": "q", "documents": ["ok", {"image": images + path}]})
    took = time.monotonic() - t0
    assert resp.status_code == 422 and "document 1: timed out after 1s" in resp.json()["detail"]
    assert took < 4.5  # 1 s image timeout (a trickle is cut within about twice that), not the 6+ s download
    # meanwhile and afterwards other requests are served
    assert http.get("/health").json()["status"] == "ok"
    good = http.post("/v1/rerank", json={"query": "q", "documents": ["a", {"image": images + "/ok.png"}]})
    assert good.status_code == 200 and len(good.json()["results"]) == 2


def test_slow_urls_do_not_block_other_clients(server, image_host):
    """While one request waits on slow images, holding the server's only image thread (``--prep-workers 1``)
    for about 2 s, a text request is answered at once (requests without images never wait for the image
    threads, and images are read off the event loop and off the model thread)."""
    headers = {"Authorization": f"Bearer {KEY}"}
    slow_result = {}
    slow_docs = [{"image": f"{image_host.url}/slow.png?delay=5&n={i}"} for i in range(8)]  # 8 x 1 s, 4 at once

    def slow():
        slow_result["resp"] = httpx.post(server.url + "/v1/rerank", headers=headers, timeout=30,
                                         json={"query": "q", "documents": slow_docs, "on_error": "last"})

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 5
    while not any("/slow.png" in p for p in image_host.paths()) and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    fast = httpx.post(server.url + "/v1/rerank", headers=headers, json={"query": "q", "documents": ["a", "b"]},
                      timeout=30)
    took = time.monotonic() - t0
    t.join(15)
    assert fast.status_code == 200 and took < 0.8, took
    slow_out = slow_result["resp"]
    assert slow_out.status_code == 200 and time.monotonic() - t0 > 1.0  # it really held the image thread
    assert all(r["relevance_score"] is None and "timed out" in r["error"] for r in slow_out.json()["results"])


def test_a_requests_images_share_one_deadline(jina_reranker, image_host):
    """``--images-deadline``: a request of many slow image URLs stops reading at the deadline; the images not
    started by then are those documents' errors, and the rest of the request is answered."""
    from mmrank.server.app import create_app
    from mmrank.server.config import ServerConfig
    from starlette.testclient import TestClient

    cfg = ServerConfig(images_deadline=0.5, image_timeout=3, image_workers=1, allow_private_urls=True)
    docs = [{"image": f"{image_host.url}/slow.png?delay=1&n={i}"} for i in range(5)] + ["text"]
    with TestClient(create_app(jina_reranker, cfg)) as client:
        t0 = time.monotonic()
        resp = client.post("/v1/rerank", json={"query": "q", "documents": docs, "on_error": "last"})
        took = time.monotonic() - t0
    assert resp.status_code == 200, resp.text
    results = {r["index"]: r for r in resp.json()["results"]}
    assert sorted(results) == list(range(6))
    late = sorted(i for i, r in results.items() if r.get("error"))
    assert late == [1, 2, 3, 4], results  # one image thread: the first read ends after the deadline
    assert all("--images-deadline" in results[i]["error"] and f"document {i}" in results[i]["error"] for i in late)
    assert results[5]["relevance_score"] is not None and results[0]["relevance_score"] is not None
    assert took < 3.5  # the read in flight (1 s), not 5 s of downloads
