"""LangChain-specific behaviour of MMRankRerank: image metadata keys, ids, secrets, validation, remote wiring."""

from __future__ import annotations

import base64
import json

import httpx
import mmrank
import pytest
from langchain_core.documents import Document
from langchain_mmrank import IMAGE_KEYS, MMRankRerank, document_image
from mmrank_testkit import sample_image_bytes, tiny_model_dir, write_sample_images
from mmrank_testkit.conformance import QUERY, TEXTS, shared_tiny_reranker
from pydantic import ValidationError


@pytest.fixture
def reranker():
    return shared_tiny_reranker()


def test_image_keys_and_their_precedence(tmp_path):
    paths = write_sample_images(tmp_path, n=2)
    png = sample_image_bytes(1)
    b64 = base64.b64encode(png).decode()
    assert IMAGE_KEYS == ("image", "image_base64", "image_path", "image_url")
    assert document_image(Document(page_content="x")) is None
    assert document_image(Document(page_content="", metadata={"image_path": str(paths[0])})) == paths[0]
    assert document_image(Document(page_content="", metadata={"image_url": "https://e.com/a.png"})) == "https://e.com/a.png"
    assert document_image(Document(page_content="", metadata={"image_base64": b64, "mime_type": "image/png"})) \
        == f"data:image/png;base64,{b64}"
    # "image" wins over the others; empty values are skipped.
    both = Document(page_content="", metadata={"image": png, "image_path": str(paths[0])})
    assert document_image(both) == png
    assert document_image(Document(page_content="", metadata={"image": "", "image_path": str(paths[1])})) == paths[1]


def test_mixed_documents_score_like_the_core(reranker, tmp_path):
    paths = write_sample_images(tmp_path, n=2)
    docs = [
        Document(page_content=TEXTS[1], id="text"),
        Document(page_content="", metadata={"image_path": str(paths[0])}, id="image"),
        Document(page_content="a gradient", metadata={"image_url": paths[1].as_uri()}, id="text+image"),
    ]
    core = [mmrank.Document(text=TEXTS[1], id="text"), mmrank.Document(image=paths[0], id="image"),
            mmrank.Document(text="a gradient", image=paths[1], id="text+image")]
    want = {d.id: s for d, s in zip(core, reranker.score(QUERY, core), strict=True)}
    out = MMRankRerank(reranker=reranker, top_n=None).compress_documents(docs, QUERY)
    assert {d.id: d.metadata["relevance_score"] for d in out} == pytest.approx(want, abs=1e-5)
    assert [d.page_content for d in out if d.id == "text"] == [TEXTS[1]]


def test_secret_from_environment_is_never_shown(reranker, monkeypatch):
    monkeypatch.setenv("MMRANK_API_KEY", "sk-env-789")
    c = MMRankRerank(reranker=reranker, mode="remote")
    assert c.mmrank_api_key is not None and c.mmrank_api_key.get_secret_value() == "sk-env-789"
    for text in (repr(c), str(c), c.model_dump_json()):
        assert "sk-env-789" not in text
    assert MMRankRerank(reranker=reranker, api_key="sk-given").mmrank_api_key.get_secret_value() == "sk-given"


def test_validation(reranker):
    with pytest.raises(ValidationError, match="top_n"):
        MMRankRerank(reranker=reranker, top_n=0)
    with pytest.raises(ValidationError):
        MMRankRerank(reranker=reranker, no_such_option=1)
    with pytest.raises(ValidationError):
        MMRankRerank(reranker="not a reranker")
    with pytest.raises(ValueError, match="device"):
        MMRankRerank(reranker=reranker, device="cpu")
    with pytest.raises(ValueError, match="batch_size applies"):
        MMRankRerank(mode="remote", batch_size=4, url="http://x.test")


def test_loads_its_own_model():
    c = MMRankRerank(model=str(tiny_model_dir("jina")), device="cpu", batch_size=2, top_n=2)
    assert isinstance(c.scorer, mmrank.JinaRerankerM0) and c.scorer.batch_size == 2
    out = c.compress_documents([Document(page_content=t) for t in TEXTS[:4]], QUERY)
    assert len(out) == 2 and all(d.id is None for d in out)


def test_remote_mode_wiring(monkeypatch):
    pytest.importorskip("mmrank.scorers.remote")
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["auth"] = request.headers.get("authorization")
        n = len(json.loads(request.content)["documents"])
        return httpx.Response(200, json={"results": [{"index": i, "relevance_score": i / 10} for i in range(n)][::-1],
                                         "usage": {"total_tokens": 1}})

    monkeypatch.setenv("MMRANK_API_KEY", "sk-remote-env")
    c = MMRankRerank(mode="remote", url="http://rerank.test", top_n=2,
                     reranker_kwargs={"dialect": "jina", "transport": httpx.MockTransport(handler)})
    out = c.compress_documents([Document(page_content=t, id=str(i)) for i, t in enumerate(TEXTS[:3])], QUERY)
    assert seen["auth"] == "Bearer sk-remote-env"
    assert [(d.id, d.metadata["relevance_score"]) for d in out] == [("2", pytest.approx(0.2)), ("1", pytest.approx(0.1))]
