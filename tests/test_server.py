"""``mmrank serve`` as a real process on 127.0.0.1 (tiny model), and RemoteReranker against it.

One server for the module (default, safe limits). Covers: remote == local (ranking and scores within 1e-5)
for text, base64 image, mixed and image-query requests, sync and async; the bad-input list, each answered
with a 4xx and a clear message while the server keeps serving; the bounded load test."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from mmrank import Document, RemoteError, RemoteReranker
from mmrank_testkit import sample_image, sample_image_bytes, sample_page
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.load_test import ServerProcess, make_body, run_load  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def server(jina_dir):
    with ServerProcess(["--model", str(jina_dir), "--device", "cpu", "--dtype", "float32"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture()
def remote(server):
    r = RemoteReranker(server.url, max_retries=0)
    yield r
    r.close()


def assert_same(remote_ranked, local_ranked):
    assert [r.index for r in remote_ranked] == [r.index for r in local_ranked]
    for a, b in zip(remote_ranked, local_ranked, strict=True):
        if b.score is None:
            assert a.score is None and a.error and b.error
        else:
            assert a.score == pytest.approx(b.score, abs=TOL)


def still_serving(http):
    assert http.get("/health").json()["status"] == "ok"
    resp = http.post("/v1/rerank", json={"query": "fox", "documents": ["the quick brown fox", "bamboo"]})
    assert resp.status_code == 200 and sorted(r["index"] for r in resp.json()["results"]) == [0, 1]


def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# ------------------------------------------------------------------------------------------- basics
def test_health_models_and_auto_dialect(server, http, remote, jina_dir):
    assert http.get("/health").json() == {"status": "ok"}  # liveness says nothing about the model or machine
    assert http.get("/ready").json() == {"status": "ready"}
    assert http.get("/v1/stats").json()["mode"] == "pointwise"
    models = http.get("/v1/models").json()
    assert models["data"][0]["owned_by"] == "mmrank"
    # a local folder is served under its last path component, never its path
    assert [m["id"] for m in models["data"]] == [Path(jina_dir).name]
    remote.rank("q", ["a"])
    assert remote.dialect == "jina"  # detected from /v1/models


def test_response_shape_top_n_and_return_documents(http):
    img = png_b64(sample_image(1))
    body = {"model": "anything", "query": {"text": "pandas"}, "top_n": 2,
            "documents": ["pandas eat bamboo", {"text": "stock markets"}, {"image": img}, {"text": "cap", "image": img}]}
    out = http.post("/v1/rerank", json=body).json()
    assert set(out) == {"id", "model", "usage", "results", "meta"} and out["usage"]["total_tokens"] > 0
    assert "/" not in out["model"]
    assert len(out["results"]) == 2
    for r in out["results"]:
        assert set(r) == {"index", "relevance_score", "document"}
        sent = body["documents"][r["index"]]
        assert r["document"] == ({"text": sent} if isinstance(sent, str) else sent)
    out = http.post("/rerank", json={**body, "top_n": 0, "return_documents": False}).json()
    assert len(out["results"]) == 4 and all(set(r) == {"index", "relevance_score"} for r in out["results"])


# ------------------------------------------------------------------------------------------- remote == local
TEXTS = ["Pandas eat bamboo almost exclusively.", "The stock market fell on Monday.",
         "A reranker orders passages by relevance.", "Mountain rivers carry sediment downstream.",
         "Giant pandas live in the mountains of central China.", "Charts and tables summarise results."]


def test_remote_equals_local_text(jina_reranker, remote):
    assert_same(remote.rank("what do pandas eat?", TEXTS), jina_reranker.rank("what do pandas eat?", TEXTS))
    assert remote.score("rivers", TEXTS) == pytest.approx(jina_reranker.score("rivers", TEXTS), abs=TOL)


def test_remote_equals_local_images(jina_reranker, remote, tmp_path):
    path = tmp_path / "page.png"
    sample_page(["Quarterly report", "Revenue grew 12%"]).save(path)
    docs = [sample_image(i) for i in range(3)] + [sample_image_bytes(7), path]
    assert_same(remote.rank("a red circle", docs), jina_reranker.rank("a red circle", docs))


def test_remote_equals_local_mixed_with_an_unreadable_document(jina_reranker, remote, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(sample_image_bytes(0)[:70])
    docs = [TEXTS[0], sample_image(2), Document(text="revenue table", image=sample_page(["Revenue 2024"])),
            Document(image=broken, id="broken"), TEXTS[4]]
    remote_ranked = remote.rank("pandas", docs)
    assert_same(remote_ranked, jina_reranker.rank("pandas", docs))
    assert remote_ranked[-1].index == 3 and "truncated" in remote_ranked[-1].error


def test_remote_equals_local_image_query(jina_reranker, remote):
    query = {"image": sample_image(4)}
    docs = [sample_image(4), sample_image(9), "a photo of a gradient"]
    assert_same(remote.rank(query, docs), jina_reranker.rank(query, docs))


async def test_async_remote_equals_local_with_split_requests(jina_reranker, server):
    docs = TEXTS + [sample_image(i) for i in range(4)]
    r = RemoteReranker(server.url, dialect="jina", max_documents_per_request=3, max_concurrency=2)
    try:
        ranked = await r.arank("pandas in the mountains", docs)
        assert_same(ranked, jina_reranker.rank("pandas in the mountains", docs))
        top = await r.arank("pandas in the mountains", docs, top_n=3)
        assert [x.index for x in top] == [x.index for x in ranked[:3]]
    finally:
        await r.aclose()


def test_server_refusal_reaches_the_remote_caller_as_remote_error(remote):
    with pytest.raises(RemoteError) as info:
        remote.rank("q", ["fine", Document(image="http://10.20.30.40/secret.png")])
    assert info.value.status_code == 422
    assert "document 1" in str(info.value) and "non-public address" in str(info.value)


# ------------------------------------------------------------------------------------------- bad inputs
def _png(size, colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BIG = _png((7100, 7100))  # 50.4 megapixels; a single colour compresses to ~150 KB
TRUNCATED = sample_image_bytes(3, size=(120, 100))[:300]


def _bad_cases():
    ok = "a good document"
    yield "malformed-json", b'{"query": "q", "documents": ["a",', 400, "malformed JSON body"
    yield "not-utf8", b'{"query": "\xff\xfe"}', 400, "not UTF-8"
    yield "empty-body", b"", 400, "empty request body"
    yield "not-an-object", [1, 2, 3], 422, "must be a JSON object"
    yield "unknown-field", {"query": "q", "documents": [ok], "colour": "red"}, 422, "colour: unknown field"
    yield "misspelt-doc-field", {"query": "q", "documents": [ok, {"text": "t", "imgae": "x"}]}, 422, "did you mean 'image'"
    yield "only-unknown-doc-fields", {"query": "q", "documents": [ok, {"url": "x"}]}, 422, "documents[1]: needs 'text' and/or 'image'"
    yield "wrong-type-compat-field", {"query": "q", "documents": [ok], "rank_fields": "text"}, 422, "rank_fields: Input should be a valid list"
    yield "doc-wrong-type", {"query": "q", "documents": [ok, 5]}, 422, "documents[1]: must be a string or an object"
    yield "empty-doc-object", {"query": "q", "documents": [{}]}, 422, "documents[0]: needs 'text' and/or 'image'"
    yield "missing-query", {"documents": [ok]}, 422, "query: required field is missing"
    yield "negative-top-n", {"query": "q", "documents": [ok], "top_n": -1}, 422, "top_n"
    yield "empty-documents", {"query": "q", "documents": []}, 422, "documents: the list is empty"
    yield "10k-documents", {"query": "q", "documents": ["d"] * 10_000}, 413, "10000 documents in one request"
    yield "50-megapixels", {"query": "q", "documents": [ok, {"image": _b64(BIG)}]}, 422, "50.4 megapixels"
    yield "truncated-png", {"query": "q", "documents": [{"image": _b64(TRUNCATED)}]}, 422, "document 0: image data is corrupt or truncated"
    yield "non-image-bytes", {"query": "q", "documents": [ok, {"image": _b64(b"%PDF-1.7 this is not an image" * 4)}]}, 422, "document 1: bytes are not an image"
    yield "not-base64", {"query": "q", "documents": [{"image": "@@not base64 and not a URL@@"}]}, 422, "must be an http(s) URL, a data: URI or base64"
    yield "loopback-url", {"query": "q", "documents": [ok, {"image": "http://127.0.0.1:9/x.png"}]}, 422, "non-public address 127.0.0.1"
    yield "private-10-url", {"query": "q", "documents": [{"image": "http://10.1.2.3/x.png"}]}, 422, "non-public address 10.1.2.3"
    yield "link-local-url", {"query": "q", "documents": [{"image": "http://169.254.169.254/latest/meta-data"}]}, 422, "non-public address"
    yield "localhost-url", {"query": "q", "documents": [{"image": "http://localhost:8080/x.png"}]}, 422, "non-public address"
    yield "file-url", {"query": "q", "documents": [{"image": "file:///etc/hostname"}]}, 422, "scheme 'file' is refused"
    yield "local-path", {"query": "q", "documents": [{"image": "/etc/hostname"}]}, 422, "local paths and file: URLs are refused"
    yield "private-query-url", {"query": {"image": "http://192.168.1.1/q.png"}, "documents": [ok]}, 422, "query: URL host"
    yield "text-and-image-query", {"query": {"text": "q", "image": _b64(sample_image_bytes(1))}, "documents": [ok]}, 422, "not both"
    yield "huge-text", {"query": "q", "documents": [ok, "x" * 200_001]}, 422, "document 1: text is 200001 characters"


BAD = list(_bad_cases())


def test_empty_text_document_is_scored_like_the_reference(http):
    """Haystack and LlamaIndex send "" for empty documents; the published jina-reranker-m0 code scores it."""
    resp = http.post("/v1/rerank", json={"query": "q", "documents": ["a good document", "", {"text": ""}]})
    assert resp.status_code == 200, resp.text[:500]
    results = resp.json()["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    assert all(isinstance(r["relevance_score"], float) for r in results)


@pytest.mark.parametrize("body, status, message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(http, server, body, status, message):
    if isinstance(body, bytes):
        resp = http.post("/v1/rerank", content=body, headers={"Content-Type": "application/json"})
    else:
        resp = http.post("/v1/rerank", json=body)
    assert resp.status_code == status, resp.text[:500]
    detail = resp.json()["detail"]
    assert message in detail, detail
    assert server.alive()
    still_serving(http)


def test_unreadable_documents_ranked_last_on_request(http):
    body = {"query": "q", "on_error": "last",
            "documents": [{"image": _b64(TRUNCATED)}, "good one", {"image": "http://10.0.0.7/a.png"}, "good two"]}
    resp = http.post("/v1/rerank", json=body)
    assert resp.status_code == 200
    results = resp.json()["results"]
    assert {r["index"] for r in results[:2]} == {1, 3} and all(isinstance(r["relevance_score"], float) for r in results[:2])
    assert [r["index"] for r in results[2:]] == [0, 2]
    assert all(r["relevance_score"] is None for r in results[2:])
    assert "truncated" in results[2]["error"] and "non-public" in results[3]["error"]


def test_a_bad_document_names_its_index_in_a_field(http):
    resp = http.post("/v1/rerank", json={"query": "q", "documents": ["a", "b", {"image": _b64(TRUNCATED)}]})
    assert resp.status_code == 422 and resp.json()["document_index"] == 2
    assert 'send "on_error": "last"' in resp.json()["detail"]


# ------------------------------------------------------------------------------------------- load
async def test_load_200_requests_16_clients_no_errors_no_lost_documents(server, jina_reranker):
    report = await run_load(server.url, requests=200, concurrency=16, documents=8, keep_responses=True)
    print("\nload test:", {k: v for k, v in report.items() if k not in ("responses", "server")})
    assert report["errors"] == 0, report["error_samples"]
    assert report["lost_documents"] == 0 and report["ok"] == 200
    assert report["server"]["merged_requests"] > 0  # concurrent same-query requests shared model calls
    # merged batches give the same scores as scoring the request alone
    for i in (0, 77, 199):
        body, out = report["responses"][i]
        local = jina_reranker.score(body["query"], body["documents"])
        for r in out["results"]:
            assert r["relevance_score"] == pytest.approx(local[r["index"]], abs=1e-4)
    assert make_body(3, 8)["documents"] != make_body(4, 8)["documents"]


def test_cli_wiring():
    res = subprocess.run([sys.executable, "-m", "mmrank.cli", "serve", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "--allow-private-urls" in res.stdout and "--api-key" in res.stdout
