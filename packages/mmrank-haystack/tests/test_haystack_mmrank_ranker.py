"""Haystack-specific behaviour of MMRankRanker: serialization, warm-up, signatures, image sources, secrets."""

from __future__ import annotations

import copy
import inspect
import os

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import httpx  # noqa: E402
import mmrank  # noqa: E402
import pytest  # noqa: E402
from haystack import Document  # noqa: E402
from haystack.core.errors import SerializationError  # noqa: E402
from haystack.dataclasses import ByteStream  # noqa: E402
from haystack.utils import ComponentDevice, Secret  # noqa: E402
from haystack_integrations.components.rankers.mmrank import MMRankRanker  # noqa: E402
from mmrank_testkit import sample_image_bytes, tiny_model_dir, write_sample_images  # noqa: E402
from mmrank_testkit.conformance import QUERY, TEXTS, shared_tiny_reranker  # noqa: E402


@pytest.fixture
def reranker():
    return shared_tiny_reranker()


def test_run_async_has_exactly_the_parameters_of_run():
    sync, asyn = inspect.signature(MMRankRanker.run), inspect.signature(MMRankRanker.run_async)
    assert list(sync.parameters.values()) == list(asyn.parameters.values())
    assert sync.return_annotation == asyn.return_annotation


def test_to_dict_from_dict_round_trip(monkeypatch):
    monkeypatch.setenv("MMRANK_API_KEY", "sk-never-serialized")
    ranker = MMRankRanker(model=str(tiny_model_dir("jina")), device=ComponentDevice.from_str("cpu"), top_k=3,
                          score_threshold=0.01, batch_size=4, meta_fields_to_embed=["title"], root_path="/data",
                          keep_retrieval_score=True, on_error="raise", reranker_kwargs={"max_length": 2048})
    data = ranker.to_dict()
    assert data["type"] == "haystack_integrations.components.rankers.mmrank.ranker.MMRankRanker"
    params = data["init_parameters"]
    assert params["device"] == {"type": "single", "device": "cpu"}
    assert params["api_key"] == {"type": "env_var", "env_vars": ["MMRANK_API_KEY"], "strict": False}
    assert params["token"]["type"] == "env_var"
    assert "sk-never-serialized" not in repr(data)
    again = MMRankRanker.from_dict(copy.deepcopy(data))  # from_dict deserializes in place, as Haystack's do
    assert again.to_dict() == data
    assert isinstance(again.device, ComponentDevice) and again.device.to_torch_str() == "cpu"
    assert isinstance(again.api_key, Secret) and again.api_key.resolve_value() == "sk-never-serialized"
    assert (again.top_k, again.score_threshold, again.root_path, again.on_error) == (3, 0.01, "/data", "raise")


def test_token_secrets_and_live_scorers_refuse_to_serialize(reranker):
    with pytest.raises(ValueError, match="serialize"):
        MMRankRanker(mode="remote", api_key=Secret.from_token("sk-plain"), url="http://x.test").to_dict()
    with pytest.raises(SerializationError, match="reranker="):
        MMRankRanker(reranker=reranker).to_dict()


def test_warm_up_is_lazy_and_idempotent():
    ranker = MMRankRanker(model=str(tiny_model_dir("jina")), device=ComponentDevice.from_str("cpu"), top_k=2)
    assert ranker._reranker is None  # nothing loaded until warm_up / run
    out = ranker.run(query=QUERY, documents=[Document(content=t) for t in TEXTS[:3]])["documents"]
    assert len(out) == 2
    loaded = ranker._reranker
    ranker.warm_up()
    assert ranker._reranker is loaded and isinstance(loaded, mmrank.JinaRerankerM0)


def test_image_sources(reranker, tmp_path):
    paths = write_sample_images(tmp_path, n=2)
    (tmp_path / "notes.txt").write_text("Berlin notes")
    png = sample_image_bytes(5)
    docs = [
        Document(id="file", content=None, meta={"file_path": paths[0].name}),  # under root_path
        Document(id="blob", content=None, blob=ByteStream(data=png, mime_type="image/png")),
        Document(id="caption", content="a gradient", meta={"file_path": paths[1].name, "title": "T"}),
        # A text Document converted from a .txt file: its file is not an image, its text is scored.
        Document(id="txt", content="Berlin notes", meta={"file_path": "notes.txt"}),
        # A non-image blob is not an image either.
        Document(id="pdf-blob", content=TEXTS[1], blob=ByteStream(data=b"%PDF-1.4", mime_type="application/pdf")),
    ]
    core = [mmrank.Document(image=paths[0], id="file"), mmrank.Document(image=png, id="blob"),
            mmrank.Document(image=paths[1], text="T\na gradient", id="caption"),
            mmrank.Document(text="Berlin notes", id="txt"), mmrank.Document(text=TEXTS[1], id="pdf-blob")]
    want = {d.id: s for d, s in zip(core, reranker.score(QUERY, core), strict=True)}
    policy_reranker = mmrank.JinaRerankerM0(tiny_model_dir("jina"), device="cpu",
                                            image_policy=mmrank.ImagePolicy(root_path=str(tmp_path)))
    ranker = MMRankRanker(reranker=policy_reranker, top_k=None, root_path=str(tmp_path), meta_fields_to_embed=["title"])
    out = ranker.run(query=QUERY, documents=docs)["documents"]
    assert {d.id: d.score for d in out} == pytest.approx(want, abs=1e-5)


def test_root_path_refuses_escaping_paths(tmp_path):
    outside = write_sample_images(tmp_path / "outside", n=1)[0]
    root = tmp_path / "root"
    root.mkdir()
    ranker = MMRankRanker(model=str(tiny_model_dir("jina")), device=ComponentDevice.from_str("cpu"),
                          root_path=str(root), top_k=None)
    docs = [Document(id="escape", content=None, meta={"file_path": f"../outside/{outside.name}"}),
            Document(id="text", content="hello")]
    out = ranker.run(query=QUERY, documents=docs)["documents"]
    assert [d.id for d in out] == ["text", "escape"]
    assert out[1].score is None and "outside the allowed root" in out[1].meta["rerank_error"]
    with pytest.raises(ValueError, match="root_path"):
        MMRankRanker(reranker=shared_tiny_reranker(), root_path=str(root))


def test_validation(reranker):
    with pytest.raises(ValueError, match="top_k"):
        MMRankRanker(reranker=reranker, top_k=0)
    with pytest.raises(ValueError, match="top_k"):
        MMRankRanker(reranker=reranker).run(query=QUERY, documents=[Document(content="x")], top_k=0)
    with pytest.raises(ValueError, match="on_error"):
        MMRankRanker(reranker=reranker, on_error="ignore")
    with pytest.raises(ValueError, match="batch_size applies"):
        MMRankRanker(mode="listwise", batch_size=2)
    with pytest.raises(ValueError, match="device"):
        MMRankRanker(reranker=reranker, device=ComponentDevice.from_str("cpu"))


def test_run_overrides_top_k_and_threshold(reranker):
    docs = [Document(id=str(i), content=t) for i, t in enumerate(TEXTS)]
    ranker = MMRankRanker(reranker=reranker, top_k=2)
    assert len(ranker.run(query=QUERY, documents=docs)["documents"]) == 2
    assert len(ranker.run(query=QUERY, documents=docs, top_k=5)["documents"]) == 5
    assert ranker.run(query=QUERY, documents=docs, score_threshold=2.0)["documents"] == []


def test_remote_mode_wiring(monkeypatch):
    pytest.importorskip("mmrank.scorers.remote")
    import json

    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["auth"] = request.headers.get("authorization")
        n = len(json.loads(request.content)["documents"])
        return httpx.Response(200, json={"results": [{"index": i, "relevance_score": 0.5} for i in range(n)],
                                         "usage": {"total_tokens": 1}})

    monkeypatch.setenv("MMRANK_API_KEY", "sk-hay-env")
    ranker = MMRankRanker(mode="remote", url="http://rerank.test",
                          reranker_kwargs={"dialect": "jina", "transport": httpx.MockTransport(handler)})
    assert ranker.device is None
    out = ranker.run(query=QUERY, documents=[Document(content=t) for t in TEXTS[:2]])["documents"]
    assert seen["auth"] == "Bearer sk-hay-env" and [d.score for d in out] == [0.5, 0.5]
