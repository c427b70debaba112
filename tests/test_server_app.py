"""The server app in-process (FastAPI TestClient, the real tiny model) with small limits, for the limits the
real-process tests cannot reach cheaply: body size (declared and streamed), total pixels per request, bytes
per image, documents per request, served model names, local files under a root."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient
from mmrank.server import ServerConfig, create_app
from mmrank_testkit import sample_image, sample_image_bytes


@pytest.fixture(scope="module")
def make_client(jina_reranker):
    clients = []

    def make(**limits):
        client = TestClient(create_app(jina_reranker, ServerConfig(**limits)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_body_size_is_capped_declared_or_streamed(make_client):
    client = make_client(max_body_bytes=2000)
    body = b'{"query": "q", "documents": ["' + b"x" * 3000 + b'"]}'
    resp = client.post("/v1/rerank", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and "over the limit of 2000 bytes" in resp.json()["detail"]

    def chunks():  # no Content-Length: the cap applies while reading
        yield body[:1000]
        yield body[1000:]

    resp = client.post("/v1/rerank", content=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and "exceeds the limit of 2000 bytes" in resp.json()["detail"]
    assert client.post("/v1/rerank", json={"query": "q", "documents": ["short"]}).status_code == 200


def test_total_pixels_and_bytes_per_image(make_client):
    client = make_client(max_total_pixels=20_000, max_image_bytes=30_000)
    img = b64(sample_image_bytes(1))  # 96x80 = 7680 pixels
    resp = client.post("/v1/rerank", json={"query": "q", "documents": [{"image": img}] * 2})
    assert resp.status_code == 200
    resp = client.post("/v1/rerank", json={"query": "q", "documents": [{"image": img}] * 3})
    assert resp.status_code == 413 and "more than 0.02 megapixels" in resp.json()["detail"]
    big = b64(sample_image_bytes(2, fmt="BMP", size=(120, 100)))  # ~36 KB
    resp = client.post("/v1/rerank", json={"query": "q", "documents": ["a", {"image": big}]})
    assert resp.status_code == 422 and "document 1" in resp.json()["detail"]
    assert "30000 bytes" in resp.json()["detail"]


def test_documents_per_request_and_served_model_names(make_client):
    client = make_client(max_documents=5, served_model_names=("jina-reranker-m0",))
    resp = client.post("/v1/rerank", json={"query": "q", "documents": ["d"] * 6})
    assert resp.status_code == 413 and "limit of 5" in resp.json()["detail"]
    resp = client.post("/v1/rerank", json={"model": "bge-reranker", "query": "q", "documents": ["d"]})
    assert resp.status_code == 404 and "not served here" in resp.json()["detail"]
    for model in ("jina-reranker-m0", None):
        body = {"query": "q", "documents": ["d"], **({"model": model} if model else {})}
        assert client.post("/v1/rerank", json=body).status_code == 200
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert "jina-reranker-m0" in ids


def test_local_files_only_when_allowed_and_under_the_root(make_client, tmp_path):
    inside = tmp_path / "pages"
    inside.mkdir()
    sample_image(3).save(inside / "p.png")
    sample_image(4).save(tmp_path / "outside.png")
    strict = make_client()
    resp = strict.post("/v1/rerank", json={"query": "q", "documents": [{"image": str(inside / "p.png")}]})
    assert resp.status_code == 422 and "refused by this server" in resp.json()["detail"]
    client = make_client(allow_local_files=True, local_files_root=str(inside))
    ok = client.post("/v1/rerank", json={"query": "q", "documents": [{"image": str(inside / "p.png")},
                                                                     {"image": (inside / "p.png").as_uri()}]})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2
    resp = client.post("/v1/rerank", json={"query": "q", "documents": [{"image": str(tmp_path / "outside.png")}]})
    assert resp.status_code == 422 and "outside the allowed root" in resp.json()["detail"]


def test_the_scorers_own_policy_is_untouched(make_client, jina_reranker):
    before = jina_reranker.image_policy
    make_client()
    assert jina_reranker.image_policy is before


@pytest.mark.parametrize("mode", ["listwise", "pairwise"])
def test_serves_the_other_scorers_too(mode):
    from mmrank import load_reranker
    from mmrank_testkit import tiny_model_dir

    scorer = load_reranker(mode, str(tiny_model_dir("lm")), device="cpu")
    docs = ["pandas eat bamboo", "stock markets", {"image": b64(sample_image_bytes(1))}, "mountain rivers"]
    with TestClient(create_app(scorer, ServerConfig(), mode=mode)) as client:
        out = client.post("/v1/rerank", json={"query": "pandas", "documents": docs}).json()
        assert sorted(r["index"] for r in out["results"]) == [0, 1, 2, 3]
        scores = [r["relevance_score"] for r in out["results"]]
        assert scores == sorted(scores, reverse=True)
        assert scores == pytest.approx([r.score for r in scorer.rank("pandas", [
            d if isinstance(d, str) else {"image": base64.b64decode(d["image"])} for d in docs])], abs=1e-5)
        assert client.get("/v1/stats").json()["mode"] == mode
