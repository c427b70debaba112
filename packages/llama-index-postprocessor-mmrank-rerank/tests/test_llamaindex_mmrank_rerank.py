"""LlamaIndex-specific behaviour of MMRankRerank: node shapes, events, serialization, secrets, remote wiring."""

from __future__ import annotations

import base64
import json

import httpx
import mmrank
import pytest
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.schema import ImageDocument, ImageNode, MediaResource, Node, NodeWithScore, QueryBundle, TextNode
from llama_index.postprocessor.mmrank_rerank import MMRankRerank, node_image
from mmrank_testkit import sample_image_bytes, tiny_model_dir, write_sample_images
from mmrank_testkit.conformance import QUERY, TEXTS, shared_tiny_reranker


@pytest.fixture
def reranker():
    return shared_tiny_reranker()


@pytest.fixture
def images(tmp_path):
    return write_sample_images(tmp_path, n=3)


def _scores(out):
    return {n.node.node_id: n.score for n in out}


def _core(reranker, query, docs):
    return {d.id: s for d, s in zip(docs, reranker.score(query, docs), strict=True)}


def test_every_image_shape_scores_like_the_core(reranker, images):
    png = sample_image_bytes(3)
    b64 = base64.b64encode(png).decode()
    nodes = [
        NodeWithScore(node=ImageNode(image_url=images[0].as_uri(), id_="imagenode-url")),
        NodeWithScore(node=ImageNode(image=b64, image_mimetype="image/png", id_="imagenode-b64")),
        NodeWithScore(node=ImageDocument(image_path=str(images[1]), id_="imagedocument-path")),
        NodeWithScore(node=ImageDocument(image=b64, id_="imagedocument-data")),
        NodeWithScore(node=Node(image_resource=MediaResource(url=images[2].as_uri()), id_="node-url")),
        # An image node whose only text is metadata: scored as an image, not on its metadata string.
        NodeWithScore(node=ImageNode(image_path=str(images[2]), metadata={"file_path": str(images[2])},
                                     id_="imagenode-meta")),
        # Mixed: an image node with a caption is a text+image document.
        NodeWithScore(node=ImageNode(image_path=str(images[0]), text="a gradient", id_="imagenode-caption")),
        NodeWithScore(node=TextNode(text=TEXTS[1], id_="text")),
    ]
    core = [
        mmrank.Document(image=images[0], id="imagenode-url"),
        mmrank.Document(image=png, id="imagenode-b64"),
        mmrank.Document(image=images[1], id="imagedocument-path"),
        mmrank.Document(image=png, id="imagedocument-data"),
        mmrank.Document(image=images[2], id="node-url"),
        mmrank.Document(image=images[2], id="imagenode-meta"),
        mmrank.Document(image=images[0], text="a gradient", id="imagenode-caption"),
        mmrank.Document(text=TEXTS[1], id="text"),
    ]
    out = MMRankRerank(reranker=reranker, top_n=None).postprocess_nodes(nodes, query_str=QUERY)
    got, want = _scores(out), _core(reranker, QUERY, core)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-5), k
    assert node_image(TextNode(text="x")) is None


def test_text_metadata_counts_as_in_llamaindex_rerankers(reranker):
    node = TextNode(text="Berlin", metadata={"country": "Germany"}, excluded_embed_metadata_keys=[])
    out = MMRankRerank(reranker=reranker).postprocess_nodes([NodeWithScore(node=node)], query_str=QUERY)
    want = reranker.score(QUERY, [node.get_content(metadata_mode="embed")])[0]
    assert out[0].score == pytest.approx(want, abs=1e-6)
    assert "country: Germany" in node.get_content(metadata_mode="embed")


def test_image_query_from_query_bundle(reranker, images):
    nodes = [NodeWithScore(node=ImageNode(image_path=str(p), id_=f"i{k}")) for k, p in enumerate(images)]
    out = MMRankRerank(reranker=reranker, top_n=2).postprocess_nodes(
        nodes, query_bundle=QueryBundle(query_str="", image_path=str(images[1])))
    want = _core(reranker, mmrank.Query(image=images[1]), [mmrank.Document(image=p, id=f"i{k}")
                                                          for k, p in enumerate(images)])
    assert [n.node.node_id for n in out] == sorted(want, key=lambda k: -want[k])[:2]


def test_error_metadata_stays_out_of_llm_text_and_the_callers_node(reranker, tmp_path):
    bad = ImageNode(image_path=str(tmp_path / "missing.png"), id_="bad")
    out = MMRankRerank(reranker=reranker).postprocess_nodes(
        [NodeWithScore(node=bad, score=0.3), NodeWithScore(node=TextNode(text="x", id_="ok"))], query_str=QUERY)
    assert [n.node.node_id for n in out] == ["ok", "bad"]
    failed = out[1]
    assert failed.score is None and "missing.png" in failed.node.metadata["rerank_error"]
    assert "rerank_error" in failed.node.excluded_llm_metadata_keys
    assert "rerank_error" not in bad.metadata and failed.node is not bad


def test_instrumentation_events_and_legacy_callback(reranker):
    seen = []

    class Collect(BaseEventHandler):
        @classmethod
        def class_name(cls) -> str:
            return "Collect"

        def handle(self, event, **kwargs):
            if isinstance(event, ReRankStartEvent | ReRankEndEvent):
                seen.append(event)

    handler = Collect()
    root = get_dispatcher()
    root.add_event_handler(handler)
    debug = LlamaDebugHandler()
    try:
        pp = MMRankRerank(reranker=reranker, top_n=2, callback_manager=CallbackManager([debug]))
        nodes = [NodeWithScore(node=TextNode(text=t, id_=str(i))) for i, t in enumerate(TEXTS[:4])]
        out = pp.postprocess_nodes(nodes, query_str=QUERY)
    finally:
        root.event_handlers.remove(handler)
    assert [type(e) for e in seen] == [ReRankStartEvent, ReRankEndEvent]
    assert seen[0].top_n == 2 and seen[0].model_name == reranker.model_name and len(seen[0].nodes) == 4
    assert [n.node.node_id for n in seen[1].nodes] == [n.node.node_id for n in out]
    pairs = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 1 and len(pairs[0][1].payload["nodes"]) == 2


def test_serialization_and_secret(reranker, monkeypatch):
    monkeypatch.setenv("MMRANK_API_KEY", "sk-from-env-123")
    pp = MMRankRerank(reranker=reranker, mode="remote", top_n=4, keep_retrieval_score=True)
    assert MMRankRerank.class_name() == "MMRankRerank"
    assert pp.api_key is not None and pp.api_key.get_secret_value() == "sk-from-env-123"
    data = pp.to_dict()
    assert data["class_name"] == "MMRankRerank" and data["top_n"] == 4 and data["mode"] == "remote"
    assert "api_key" not in data
    for text in (pp.to_json(), repr(pp), str(pp)):
        assert "sk-from-env-123" not in text


def test_validation(reranker):
    with pytest.raises(ValueError, match="top_n"):
        MMRankRerank(reranker=reranker, top_n=0)
    with pytest.raises(ValueError, match="device"):
        MMRankRerank(reranker=reranker, device="cpu")
    with pytest.raises(ValueError, match="batch_size applies"):
        MMRankRerank(mode="listwise", batch_size=4)
    with pytest.raises(TypeError):
        MMRankRerank(reranker="not a reranker")
    with pytest.raises(ValueError, match="Missing query bundle"):
        MMRankRerank(reranker=reranker).postprocess_nodes([NodeWithScore(node=TextNode(text="x"))])


def test_loads_its_own_model_by_mode():
    pp = MMRankRerank(model=str(tiny_model_dir("jina")), device="cpu", batch_size=2, top_n=1)
    assert isinstance(pp.reranker, mmrank.JinaRerankerM0) and pp.reranker.batch_size == 2
    out = pp.postprocess_nodes([NodeWithScore(node=TextNode(text=t)) for t in TEXTS[:3]], query_str=QUERY)
    assert len(out) == 1


def test_remote_mode_wiring(monkeypatch):
    pytest.importorskip("mmrank.scorers.remote")
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["auth"] = request.headers.get("authorization")
        body = json.loads(request.content)
        seen["documents"] = body["documents"]
        n = len(body["documents"])
        return httpx.Response(200, json={"results": [{"index": i, "relevance_score": 1.0 - i / 10} for i in range(n)],
                                         "usage": {"total_tokens": 1}})

    monkeypatch.delenv("MMRANK_API_KEY", raising=False)
    pp = MMRankRerank(mode="remote", url="http://rerank.test", api_key="sk-remote-456", top_n=None,
                      reranker_kwargs={"dialect": "jina", "transport": httpx.MockTransport(handler)})
    nodes = [NodeWithScore(node=TextNode(text=t, id_=str(i))) for i, t in enumerate(TEXTS[:3])]
    out = pp.postprocess_nodes(nodes, query_str=QUERY)
    assert seen["auth"] == "Bearer sk-remote-456" and len(seen["documents"]) == 3
    assert [n.node.node_id for n in out] == ["0", "1", "2"] and out[0].score == pytest.approx(1.0)
    assert "sk-remote-456" not in repr(pp) and "api_key" not in pp.model_dump()
