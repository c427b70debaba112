"""End to end: a Haystack Pipeline InMemoryBM25Retriever -> MMRankRanker, sync, async and from YAML."""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import mmrank  # noqa: E402
import pytest  # noqa: E402
from haystack import Document, Pipeline  # noqa: E402
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever  # noqa: E402
from haystack.dataclasses import ImageContent  # noqa: E402
from haystack.document_stores.in_memory import InMemoryDocumentStore  # noqa: E402
from haystack.utils import ComponentDevice  # noqa: E402
from haystack_integrations.components.rankers.mmrank import MMRankRanker  # noqa: E402
from mmrank_testkit import tiny_model_dir, write_sample_images  # noqa: E402
from mmrank_testkit.conformance import QUERY, TEXTS, shared_tiny_reranker  # noqa: E402


@pytest.fixture
def store(tmp_path):
    image = write_sample_images(tmp_path, n=1)[0]
    store = InMemoryDocumentStore()
    docs = [Document(id=f"t{i}", content=t) for i, t in enumerate(TEXTS)]
    docs.append(Document(id="photo", content="Photo of the capital city skyline", meta={"file_path": str(image)}))
    store.write_documents(docs)
    return store, image


def _pipeline(store, ranker) -> Pipeline:
    p = Pipeline()
    p.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=6))
    p.add_component("ranker", ranker)
    p.connect("retriever.documents", "ranker.documents")
    return p


def _expected(retrieved, image):
    docs = [mmrank.Document(text=d.content, image=image if d.id == "photo" else None, id=d.id) for d in retrieved]
    ranked = shared_tiny_reranker().rank(QUERY, docs)
    return [r.id for r in ranked], {r.id: r.score for r in ranked}


async def test_bm25_then_mmrank_pipeline(store):
    store, image = store
    retrieved = InMemoryBM25Retriever(document_store=store, top_k=6).run(query=QUERY)["documents"]
    assert len(retrieved) == 6
    order, scores = _expected(retrieved, image)

    p = _pipeline(store, MMRankRanker(reranker=shared_tiny_reranker(), top_k=3, keep_retrieval_score=True))
    data = {"retriever": {"query": QUERY}, "ranker": {"query": QUERY}}
    out = p.run(data)["ranker"]["documents"]
    assert [d.id for d in out] == order[:3]
    bm25 = {d.id: d.score for d in retrieved}
    for d in out:
        assert d.score == pytest.approx(scores[d.id], abs=1e-5)
        assert d.meta["retrieval_score"] == pytest.approx(bm25[d.id])
    aout = (await p.run_async(data))["ranker"]["documents"]
    assert [d.id for d in aout] == [d.id for d in out]


def test_pipeline_yaml_round_trip_then_run(store):
    store, _ = store
    ranker = MMRankRanker(model=str(tiny_model_dir("jina")), device=ComponentDevice.from_str("cpu"), top_k=2)
    yaml_text = _pipeline(store, ranker).dumps()
    assert "haystack_integrations.components.rankers.mmrank.ranker.MMRankRanker" in yaml_text
    loaded = Pipeline.loads(yaml_text)
    loaded_ranker = loaded.get_component("ranker")
    assert isinstance(loaded_ranker, MMRankRanker) and loaded_ranker.to_dict() == ranker.to_dict()
    # The document store is serialized as configuration, not content: rank the original store's documents.
    docs = store.filter_documents()
    out = loaded_ranker.run(query=QUERY, documents=docs)["documents"]
    assert len(out) == 2 and all(d.score is not None for d in out)


def test_saved_pipeline_keeps_the_image_policy_and_root_path_then_ranks_an_image_query(tmp_path):
    # reranker_kwargs={"image_policy": ImagePolicy(...)} used to make Pipeline.dumps fail (SerializationError).
    images = write_sample_images(tmp_path / "root", n=3)
    outside = write_sample_images(tmp_path / "outside", n=1)[0]
    policy = mmrank.ImagePolicy(max_pixels=1_000_000, schemes=frozenset({"file", "data"}))
    p = Pipeline()
    p.add_component("ranker", MMRankRanker(model=str(tiny_model_dir("jina")), device=ComponentDevice.from_str("cpu"),
                                           root_path=str(tmp_path / "root"), top_k=None,
                                           reranker_kwargs={"image_policy": policy, "dtype": "float32"}))
    loaded = Pipeline.loads(p.dumps())
    ranker = loaded.get_component("ranker")
    assert ranker.reranker_kwargs["image_policy"] == policy
    docs = [Document(id=f"img{i}", meta={"file_path": path.name}) for i, path in enumerate(images)]
    docs += [Document(id="text", content=TEXTS[1]),
             Document(id="escape", meta={"file_path": f"../outside/{outside.name}"})]
    query = ImageContent.from_file_path(str(images[1]))
    out = loaded.run({"ranker": {"query": query, "documents": docs}})["ranker"]["documents"]
    assert ranker._reranker.image_policy == dataclasses.replace(policy, root_path=str(tmp_path / "root"))
    core = [mmrank.Document(image=path, id=f"img{i}") for i, path in enumerate(images)]
    core.append(mmrank.Document(text=TEXTS[1], id="text"))
    ranked = shared_tiny_reranker().rank(mmrank.Query(image=images[1]), core)
    assert [d.id for d in out] == [r.id for r in ranked] + ["escape"]
    assert [d.score for d in out[:-1]] == pytest.approx([r.score for r in ranked], abs=1e-5)
    assert out[-1].score is None and "outside the allowed root" in out[-1].meta["rerank_error"]
