"""End to end: ContextualCompressionRetriever over an InMemoryVectorStore retriever with MMRankRerank.

The store embeds with LangChain's DeterministicFakeEmbedding (offline); the reranker is the real mmrank
path on the tiny model.
"""

from __future__ import annotations

import mmrank
import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_mmrank import MMRankRerank
from mmrank_testkit import write_sample_images
from mmrank_testkit.conformance import QUERY, TEXTS, shared_tiny_reranker


@pytest.fixture
def store(tmp_path):
    image = write_sample_images(tmp_path, n=1)[0]
    docs = [Document(page_content=t, metadata={"source": f"doc{i}"}, id=f"t{i}") for i, t in enumerate(TEXTS)]
    docs.append(Document(page_content="", metadata={"image_path": str(image)}, id="photo"))
    store = InMemoryVectorStore(embedding=DeterministicFakeEmbedding(size=32))
    store.add_documents(docs)
    return store, image


def _expected(retrieved, image):
    docs = [mmrank.Document(text=d.page_content or None, image=image if d.id == "photo" else None, id=d.id)
            for d in retrieved]
    ranked = shared_tiny_reranker().rank(QUERY, docs)
    return [r.id for r in ranked], {r.id: r.score for r in ranked}


async def test_contextual_compression_retriever(store):
    store, image = store
    base = store.as_retriever(search_kwargs={"k": 9})
    retrieved = base.invoke(QUERY)
    assert len(retrieved) == 9 and "photo" in {d.id for d in retrieved}
    order, scores = _expected(retrieved, image)

    retriever = ContextualCompressionRetriever(
        base_compressor=MMRankRerank(reranker=shared_tiny_reranker(), top_n=4), base_retriever=base)
    out = retriever.invoke(QUERY)
    assert [d.id for d in out] == order[:4]
    for d in out:
        assert d.metadata["relevance_score"] == pytest.approx(scores[d.id], abs=1e-5)
    assert all("relevance_score" not in d.metadata for d in retrieved)  # the retriever's documents untouched

    aout = await retriever.ainvoke(QUERY)
    assert [d.id for d in aout] == [d.id for d in out]


class ListRetriever(BaseRetriever):
    """A first stage that returns fixed documents (what a retriever with messy sources hands on)."""

    docs: list[Document]

    def _get_relevant_documents(self, query, *, run_manager):
        return self.docs


async def test_compression_pipeline_over_a_messy_retriever(tmp_path):
    # A retriever returning text, an image, an empty page, the same document twice, an unreadable image and
    # an image named with a value of the wrong type; the reranker inside a DocumentCompressorPipeline, and
    # LangChain callbacks on the way. Every document comes back once per time it was retrieved.
    image = write_sample_images(tmp_path, n=1)[0]
    same = Document(page_content=TEXTS[2], id="twice")
    docs = [Document(page_content=TEXTS[1], id="berlin"), Document(page_content="", metadata={"image_path": str(image)}, id="photo"),
            Document(page_content="", id="empty"), same, same,
            Document(page_content="", metadata={"image_path": str(tmp_path / "gone.png")}, id="gone"),
            Document(page_content="", metadata={"image": 42}, id="bad-type")]
    rerank = MMRankRerank(reranker=shared_tiny_reranker(), top_n=None)
    retriever = ContextualCompressionRetriever(
        base_compressor=DocumentCompressorPipeline(transformers=[rerank]),
        base_retriever=ListRetriever(docs=docs))
    seen = []

    class Spy(BaseCallbackHandler):
        def on_retriever_end(self, documents, **kwargs):
            seen.append(len(documents))

    out = retriever.invoke(QUERY, config={"callbacks": [Spy()]})
    core = [mmrank.Document(text=TEXTS[1], id="berlin"), mmrank.Document(image=image, id="photo"),
            mmrank.Document(text="", id="empty"), mmrank.Document(text=TEXTS[2], id="twice"),
            mmrank.Document(text=TEXTS[2], id="twice")]
    ranked = shared_tiny_reranker().rank(QUERY, core)
    assert [d.id for d in out] == [r.id for r in ranked] + ["gone", "bad-type"]
    assert [d.metadata["relevance_score"] for d in out[:5]] == pytest.approx([r.score for r in ranked], abs=1e-5)
    assert "gone.png" in out[5].metadata["rerank_error"] and "metadata['image']" in out[6].metadata["rerank_error"]
    assert seen and seen[-1] == len(docs)
    assert all("relevance_score" not in d.metadata for d in docs)
    aout = await retriever.ainvoke(QUERY)
    assert [d.id for d in aout] == [d.id for d in out]
