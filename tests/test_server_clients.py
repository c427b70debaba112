"""``mmrank serve`` as a drop-in rerank API for the REAL client packages, each pointed at a server process on
127.0.0.1 (tiny model; ``--served-model-name``; an API key): Cohere's SDK (v1 client → ``/v1/rerank``, v2
client → ``/v2/rerank``), Haystack's CohereRanker (sync and async v2 clients), LlamaIndex's JinaRerank,
Haystack's JinaRanker, LangChain community's JinaRerank (its URL is a module constant, patched) and
``rerankers``' Jina API ranker; Infinity's generated client (``infinity_client``, which pins an older httpx than
this project's) by the exact body it sends and the fields it reads back. Every score must equal the local
scorer's (so the server really scored what each client sent), every client must see the served name, the
server's errors reach each client's error path, and empty-text documents (which Haystack and LlamaIndex send
for image-only or empty documents) are scored."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.load_test import ServerProcess  # noqa: E402

KEY = "clients-test-key-42"
NAME = "jina-reranker-m0-tiny"
QUERY = "what do pandas eat?"
DOCS = ["Pandas eat bamboo almost exclusively.", "The stock market fell on Monday.",
        "Giant pandas live in the mountains of central China.", "A reranker orders passages by relevance."]
TOL = 1e-5


@pytest.fixture(scope="module")
def server(jina_dir):
    args = ["--model", str(jina_dir), "--device", "cpu", "--dtype", "float32", "--api-key", KEY,
            "--served-model-name", NAME, "--no-warmup"]
    with ServerProcess(args) as srv:
        yield srv


@pytest.fixture(scope="module")
def local(jina_reranker):
    return dict(zip(DOCS, jina_reranker.score(QUERY, DOCS), strict=True))


def assert_ranked(pairs: list[tuple[str, float]], local: dict[str, float], n: int) -> None:
    """``pairs`` (document text, score) as a client returned them: best first, the top ``n`` of the local ranking."""
    assert len(pairs) == n
    best = sorted(local, key=lambda d: -local[d])[:n]
    assert [d for d, _ in pairs] == best
    for text, score in pairs:
        assert score == pytest.approx(local[text], abs=TOL)


def test_cohere_v1_client(server, local):
    import cohere

    co = cohere.Client(api_key=KEY, base_url=server.url)
    # Cohere v1 documents may be objects with more fields; rank_fields and max_chunks_per_doc are accepted
    docs = [{"text": d, "title": f"doc {i}"} for i, d in enumerate(DOCS)]
    resp = co.rerank(model=NAME, query=QUERY, documents=docs, top_n=3, rank_fields=["text"], max_chunks_per_doc=10,
                     return_documents=True)
    assert_ranked([(r.document.text, r.relevance_score) for r in resp.results], local, 3)
    assert [DOCS[r.index] for r in resp.results] == [r.document.text for r in resp.results]
    assert resp.id and resp.meta.api_version.version == "1"
    plain = co.rerank(model=NAME, query=QUERY, documents=DOCS)
    assert_ranked([(DOCS[r.index], r.relevance_score) for r in plain.results], local, 4)
    with pytest.raises(cohere.core.api_error.ApiError) as info:  # a wrong key is refused
        cohere.Client(api_key="wrong", base_url=server.url).rerank(model=NAME, query=QUERY, documents=DOCS)
    assert info.value.status_code == 401


def test_cohere_v2_client(server, local):
    import cohere

    co = cohere.ClientV2(api_key=KEY, base_url=server.url)
    resp = co.rerank(model=NAME, query=QUERY, documents=DOCS, top_n=2, max_tokens_per_doc=512, priority=0)
    assert_ranked([(DOCS[r.index], r.relevance_score) for r in resp.results], local, 2)
    assert resp.meta.api_version.version == "2"
    with pytest.raises(cohere.core.api_error.ApiError) as info:  # unknown model name when names are given
        co.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS)
    assert info.value.status_code == 404 and NAME in str(info.value.body)


def test_haystack_cohere_ranker_sync_and_async(server, local):
    from haystack import Document
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.cohere import CohereRanker

    ranker = CohereRanker(model=NAME, top_k=3, api_key=Secret.from_token(KEY), api_base_url=server.url,
                          meta_fields_to_embed=["title"], meta_data_separator="\n")
    docs = [Document(content=d) for d in DOCS]  # no title: each text is sent as it is
    out = ranker.run(query=QUERY, documents=docs)["documents"]
    assert_ranked([(d.content, d.score) for d in out], local, 3)
    out = asyncio.run(ranker.run_async(query=QUERY, documents=docs, top_k=2))["documents"]
    assert_ranked([(d.content, d.score) for d in out], local, 2)


def test_infinity_client_request_and_response_fields(server, local):
    """What ``infinity_client`` 0.0.78 sends for ``RerankInput(query, documents)`` (its defaults included:
    ``return_documents``, ``raw_scores`` and the ``"default/not-specified"`` model) and what its
    ``ReRankResult.from_dict`` requires back (``results[].relevance_score/index``, ``model``,
    ``usage.prompt_tokens/total_tokens``) — to the path it calls, ``/rerank``."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for extra in ({}, {"top_n": 2, "return_documents": True, "raw_scores": True, "model": NAME}):
        body = {"query": QUERY, "documents": DOCS, "return_documents": False, "raw_scores": False,
                "model": "default/not-specified", **extra}
        resp = httpx.post(server.url + "/rerank", json=body, headers=headers, timeout=60)
        assert resp.status_code == 200, resp.text
        out = resp.json()
        assert out["model"] == NAME and out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"] > 0
        pairs = [(DOCS[r["index"]], r["relevance_score"]) for r in out["results"]]
        assert_ranked(pairs, local, extra.get("top_n", 4))
        assert all(("document" in r) == body["return_documents"] for r in out["results"])


def test_llama_index_jina_rerank(server, local):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.jinaai_rerank import JinaRerank

    rerank = JinaRerank(api_key=KEY, base_url=server.url + "/v1", model=NAME, top_n=3)
    nodes = [NodeWithScore(node=TextNode(text=d)) for d in DOCS]
    out = rerank.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    assert_ranked([(n.node.get_content(), n.score) for n in out], local, 3)
    # the server's error detail is what the client raises
    wrong = JinaRerank(api_key=KEY, base_url=server.url + "/v1", model="jina-reranker-v2-base-multilingual")
    with pytest.raises(RuntimeError, match="not served here"):
        wrong.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))


def test_haystack_jina_ranker(server, local):
    from haystack import Document
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.jina import JinaRanker

    ranker = JinaRanker(api_key=Secret.from_token(KEY), model=NAME, base_url=server.url + "/v1/rerank", top_k=4)
    out = ranker.run(query=QUERY, documents=[Document(content=d, meta={"n": i}) for i, d in enumerate(DOCS)])
    assert_ranked([(d.content, d.score) for d in out["documents"]], local, 4)


def test_langchain_community_jina_rerank(server, local, monkeypatch):
    from langchain_community.document_compressors import jina_rerank
    from langchain_core.documents import Document

    monkeypatch.setattr(jina_rerank, "JINA_API_URL", server.url + "/v1/rerank")
    compressor = jina_rerank.JinaRerank(jina_api_key=KEY, model=NAME, top_n=3)
    out = compressor.compress_documents([Document(page_content=d) for d in DOCS], QUERY)
    assert_ranked([(d.page_content, d.metadata["relevance_score"]) for d in out], local, 3)
    everything = jina_rerank.JinaRerank(jina_api_key=KEY, model=NAME, top_n=None)  # sends "top_n": null
    out = everything.rerank(DOCS, QUERY)
    assert_ranked([(DOCS[r["index"]], r["relevance_score"]) for r in out], local, 4)


def test_rerankers_jina_api_ranker(server, local):
    from rerankers import Reranker

    ranker = Reranker(NAME, model_type="jina", api_key=KEY, url=server.url + "/v1/rerank", verbose=0)
    out = ranker.rank(QUERY, DOCS)
    assert_ranked([(r.document.text, r.score) for r in out.results], local, 4)


def test_empty_text_documents_are_scored_like_the_library_does(server, jina_reranker):
    """Haystack and LlamaIndex send "" for image-only or empty documents: scored, never a failed request."""
    docs = [DOCS[0], "", DOCS[1], ""]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
        resp = http.post("/v1/rerank", json={"model": NAME, "query": QUERY, "documents": docs})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2, 3] and resp.json()["model"] == NAME
    local = jina_reranker.score(QUERY, docs)
    for r in results:
        assert r["relevance_score"] == pytest.approx(local[r["index"]], abs=TOL)
