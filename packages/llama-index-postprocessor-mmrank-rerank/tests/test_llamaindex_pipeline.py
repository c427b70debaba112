"""End to end: a VectorStoreIndex query engine with MMRankRerank as node postprocessor, offline.

The index embeds with a deterministic bag-of-words hashing embedding (no model, no network) and answers
with MockLLM; the reranker is the real mmrank path on the tiny model.
"""

from __future__ import annotations

import hashlib
import math
import re

import mmrank
import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode
from llama_index.postprocessor.mmrank_rerank import MMRankRerank
from mmrank_testkit import write_sample_images
from mmrank_testkit.conformance import QUERY, TEXTS, shared_tiny_reranker


class HashingEmbedding(BaseEmbedding):
    """Bag of words hashed into a fixed number of dimensions, L2-normalized: deterministic and offline."""

    dim: int = 64

    @classmethod
    def class_name(cls) -> str:
        return "HashingEmbedding"

    def _vector(self, text: str) -> list[float]:
        v = [0.0] * self.dim
        for word in re.findall(r"\w+", text.lower()):
            v[int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big") % self.dim] += 1.0
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / norm for x in v]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)


@pytest.fixture
def index(tmp_path):
    image = write_sample_images(tmp_path, n=1)[0]
    nodes = [TextNode(text=t, id_=f"t{i}") for i, t in enumerate(TEXTS)]
    nodes.append(ImageNode(image_path=str(image), text="Photo of the capital city skyline", id_="photo"))
    return VectorStoreIndex(nodes, embed_model=HashingEmbedding()), {n.node_id: n for n in nodes}


def _expected_order(retrieved, by_id):
    docs = []
    for r in retrieved:
        node = by_id[r.node.node_id]
        docs.append(mmrank.Document(text=node.get_content(metadata_mode="embed"), id=node.node_id,
                                    image=getattr(node, "image_path", None)))
    ranked = shared_tiny_reranker().rank(QUERY, docs)
    return [r.id for r in ranked], {r.id: r.score for r in ranked}


def test_query_engine_with_mmrank_postprocessor(index):
    idx, by_id = index
    retrieved = idx.as_retriever(similarity_top_k=6).retrieve(QUERY)
    assert len(retrieved) == 6
    order, scores = _expected_order(retrieved, by_id)

    rerank = MMRankRerank(reranker=shared_tiny_reranker(), top_n=3, keep_retrieval_score=True)
    engine = idx.as_query_engine(llm=MockLLM(), similarity_top_k=6, node_postprocessors=[rerank])
    response = engine.query(QUERY)
    got = response.source_nodes
    assert [n.node.node_id for n in got] == order[:3]
    for n in got:
        assert n.score == pytest.approx(scores[n.node.node_id], abs=1e-5)
        retrieval = {r.node.node_id: r.score for r in retrieved}[n.node.node_id]
        assert n.node.metadata["retrieval_score"] == pytest.approx(retrieval)
    assert "retrieval_score" not in by_id[got[0].node.node_id].metadata  # the stored node is untouched


async def test_async_query_engine_matches_sync(index):
    idx, _ = index
    rerank = MMRankRerank(reranker=shared_tiny_reranker(), top_n=4)
    engine = idx.as_query_engine(llm=MockLLM(), similarity_top_k=7, node_postprocessors=[rerank])
    sync = engine.query(QUERY).source_nodes
    asyn = (await engine.aquery(QUERY)).source_nodes
    assert [n.node.node_id for n in asyn] == [n.node.node_id for n in sync] and len(sync) == 4
    assert [n.score for n in asyn] == pytest.approx([n.score for n in sync], abs=1e-5)



class ImageQueryRetriever(BaseRetriever):
    """A first stage for image queries (as an image-to-image retriever would be): every stored node, with
    a decreasing retrieval score; it checks that the image query reached it."""

    def __init__(self, nodes):
        super().__init__()
        self.nodes = nodes

    def _retrieve(self, query_bundle):
        assert query_bundle.image_path
        return [NodeWithScore(node=n, score=1.0 - i / 100) for i, n in enumerate(self.nodes)]


def test_retriever_query_engine_with_an_image_query(index, tmp_path):
    # An image query travels as QueryBundle.image_path through RetrieverQueryEngine to the postprocessor,
    # which ranks text and image nodes for it; a node whose image is gone comes last, never dropped.
    _, by_id = index
    query_image = write_sample_images(tmp_path / "q", n=2)[1]
    gone = ImageNode(image_path=str(tmp_path / "deleted.png"), text="", id_="gone")
    nodes = [*by_id.values(), gone]
    rerank = MMRankRerank(reranker=shared_tiny_reranker(), top_n=None, keep_retrieval_score=True)
    engine = RetrieverQueryEngine.from_args(ImageQueryRetriever(nodes), llm=MockLLM(), node_postprocessors=[rerank])
    got = engine.query(QueryBundle(query_str="", image_path=str(query_image))).source_nodes
    docs = [mmrank.Document(text=n.get_content(metadata_mode="embed") or None, image=getattr(n, "image_path", None),
                            id=n.node_id) for n in nodes[:-1]]
    ranked = shared_tiny_reranker().rank(mmrank.Query(image=query_image), docs)
    assert [n.node.node_id for n in got] == [r.id for r in ranked] + ["gone"]
    assert [n.score for n in got[:-1]] == pytest.approx([r.score for r in ranked], abs=1e-5)
    assert got[-1].score is None and "deleted.png" in got[-1].node.metadata["rerank_error"]
    assert got[-1].node.metadata["retrieval_score"] == pytest.approx(1.0 - len(nodes[:-1]) / 100)
