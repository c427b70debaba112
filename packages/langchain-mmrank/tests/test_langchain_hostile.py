"""Hostile input for the LangChain compressor: property tests over any list of Documents (see
mmrank_testkit.hostile), and the defects they found, each pinned by name."""

from __future__ import annotations

import json

import httpx
import mmrank
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.documents import Document
from langchain_mmrank import MMRankRerank
from mmrank_testkit import hostile, tiny_model_dir
from mmrank_testkit.conformance import QUERY, TEXTS, shared_tiny_reranker
from mmrank_testkit.hostile import Files, HostileDriver, Spec


class LangChainHostile(HostileDriver):
    name = "langchain"
    kinds = (hostile.TEXT, hostile.EMPTY_TEXT, hostile.IMAGE, hostile.TEXT_IMAGE, hostile.BROKEN, hostile.TRUNCATED,
             hostile.MISSING, hostile.BAD_TEXT, hostile.BAD_IMAGE_TYPE)

    def build(self, reranker, *, top_n, score_threshold, on_error="last"):
        return MMRankRerank(reranker=reranker, top_n=top_n, score_threshold=score_threshold, on_error=on_error,
                            keep_retrieval_score=True)

    def _image_meta(self, spec: Spec, files: Files) -> dict:
        if spec.kind in (hostile.IMAGE, hostile.TEXT_IMAGE):
            return [{"image_path": str(files.png_path)}, {"image": files.png},
                    {"image_base64": hostile.b64(files.png), "mime_type": "image/png"},
                    {"image_url": files.png_path.as_uri()}][spec.variant % 4]
        if spec.kind == hostile.BROKEN:
            return [{"image": files.broken}, {"image_base64": hostile.b64(files.broken)}][spec.variant % 2]
        if spec.kind == hostile.TRUNCATED:
            return {"image": files.truncated}
        if spec.kind == hostile.MISSING:
            return [{"image_path": str(files.missing_path)}, {"image_url": files.missing_path.as_uri()}][spec.variant % 2]
        if spec.kind == hostile.BAD_IMAGE_TYPE:
            return [{"image": 12345}, {"image": {"url": "x.png"}}, {"image_path": 3.5}][spec.variant % 3]
        return {}

    def make(self, spec, probe, files):
        meta = {"probe": probe, **self._image_meta(spec, files)}
        if spec.retrieval_score is not None:
            meta["score"] = spec.retrieval_score
        if spec.big_metadata:
            meta.update(hostile.big_metadata())
        text = {hostile.IMAGE: "", hostile.EMPTY_TEXT: "", hostile.BAD_TEXT: spec.text + "\ud800"}.get(
            spec.kind, spec.text)
        if spec.kind in (hostile.BROKEN, hostile.TRUNCATED, hostile.MISSING, hostile.BAD_IMAGE_TYPE):
            text = ""  # an image document whose image cannot be read has nothing else to score
        return Document(page_content=text, metadata=meta, id=spec.doc_id)

    def same_content_new_id(self, doc, spec, new_id, probe):
        return Document(page_content=doc.page_content, metadata={**doc.metadata, "probe": probe}, id=new_id)

    def run(self, adapter, docs):
        return list(adapter.compress_documents(docs, QUERY))

    async def arun(self, adapter, docs):
        return list(await adapter.acompress_documents(docs, QUERY))

    def in_id(self, doc):
        return doc.id

    def in_score(self, doc):
        return doc.metadata.get("score")

    def probe(self, doc):
        return doc.metadata["probe"]

    def text(self, doc):
        return doc.page_content

    out_id = in_id

    def out_score(self, doc):
        return doc.metadata["relevance_score"]

    def out_error(self, doc):
        return doc.metadata.get("rerank_error")

    def snapshot(self, doc):
        return doc.model_dump()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return Files(tmp_path_factory.mktemp("hostile-langchain"))


@settings(max_examples=20, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(entries=hostile.spec_lists(LangChainHostile()), data=st.data())
def test_any_documents_any_top_n_any_threshold(entries, data, files):
    hostile.check_adapter(LangChainHostile(), shared_tiny_reranker(), entries, files, data)


# ---------------------------------------------------------------------- the defects, pinned
@pytest.fixture
def reranker():
    return shared_tiny_reranker()


def test_empty_page_content_is_scored_not_reported(reranker):
    # Was: "document has neither text nor image", ranked last. LangChain's rerankers score page_content as
    # it is, and mmrank scores Document(text="") as an (empty) text.
    out = MMRankRerank(reranker=reranker, top_n=None).compress_documents(
        [Document(page_content="", id="empty"), Document(page_content=TEXTS[0], id="t")], QUERY)
    scores = {d.id: d.metadata["relevance_score"] for d in out}
    want = reranker.score(QUERY, [mmrank.Document(text=""), mmrank.Document(text=TEXTS[0])])
    assert scores == pytest.approx({"empty": want[0], "t": want[1]}, abs=1e-5)
    assert all("rerank_error" not in d.metadata for d in out)


@pytest.mark.parametrize("meta", [{"image": 12345}, {"image": {"url": "x.png"}}, {"image_path": 3.5},
                                  {"image_url": ["a"]}, {"image_base64": 7}])
def test_image_metadata_of_a_wrong_type_is_that_documents_error(reranker, meta):
    # Was: the whole call failed with "Document.image must be ..." naming no document.
    docs = [Document(page_content=TEXTS[0], id="ok"), Document(page_content="", metadata=meta, id="bad")]
    out = MMRankRerank(reranker=reranker, top_n=None).compress_documents(docs, QUERY)
    assert [d.id for d in out] == ["ok", "bad"]
    key = next(iter(meta))
    error = out[1].metadata["rerank_error"]
    assert out[1].metadata["relevance_score"] is None and "'bad'" in error and f"metadata[{key!r}]" in error
    with pytest.raises(mmrank.ImageLoadError, match=r"document 1 \(id='bad'\): metadata\["):
        MMRankRerank(reranker=reranker, on_error="raise").compress_documents(docs, QUERY)


def test_page_content_assigned_a_non_str_is_that_documents_error(reranker):
    bad = Document(page_content="x", id="bad")
    bad.page_content = 5  # type: ignore[assignment]  # LangChain does not validate assignments
    out = MMRankRerank(reranker=reranker, top_n=None).compress_documents([bad, Document(page_content="y")], QUERY)
    assert out[-1].id == "bad" and "text must be a str" in out[-1].metadata["rerank_error"]


def test_an_earlier_stages_error_does_not_stay_on_a_scored_document(reranker):
    # A document an earlier reranking could not read (stored or passed along) is readable now: its new
    # metadata must not carry both a score and the old error.
    doc = Document(page_content=TEXTS[1], metadata={"rerank_error": "document 0: old", "relevance_score": None})
    out = MMRankRerank(reranker=reranker).compress_documents([doc], QUERY)
    assert isinstance(out[0].metadata["relevance_score"], float) and "rerank_error" not in out[0].metadata
    assert doc.metadata["rerank_error"] == "document 0: old"  # the caller's document untouched


def test_top_n_and_threshold_rules(reranker):
    for bad in (0, -1, True, 2.5, "many"):
        with pytest.raises(ValueError, match="top_n"):
            MMRankRerank(reranker=reranker, top_n=bad)
    for bad in (float("nan"), True, "high"):
        with pytest.raises(ValueError, match="score_threshold"):
            MMRankRerank(reranker=reranker, score_threshold=bad)
    assert MMRankRerank(reranker=reranker, top_n="2").top_n == 2  # pydantic's own lax conversion
    compressor = MMRankRerank(reranker=reranker)
    docs = [Document(page_content=t) for t in TEXTS[:3]]
    for bad in (0, -2, True):
        compressor.top_n = bad  # pydantic does not validate assignments: checked at the call
        with pytest.raises(ValueError, match="top_n must be a positive integer"):
            compressor.compress_documents(docs, QUERY)


async def test_non_documents_are_named(reranker):
    compressor = MMRankRerank(reranker=reranker)
    with pytest.raises(TypeError, match=r"documents\[1\] is a str"):
        compressor.compress_documents([Document(page_content="a"), "b"], QUERY)
    with pytest.raises(TypeError, match=r"documents\[0\] is a dict"):
        await compressor.acompress_documents([{"page_content": "a"}], QUERY)


def test_image_policy_survives_model_dump():
    policy = mmrank.ImagePolicy.strict(timeout=2.0)
    compressor = MMRankRerank(model=str(tiny_model_dir("jina")), device="cpu", reranker_kwargs={"image_policy": policy})
    dumped = compressor.model_dump()
    assert dumped["reranker_kwargs"]["image_policy"]["schemes"] == ["data", "http", "https"]
    again = MMRankRerank.model_validate_json(compressor.model_dump_json())
    assert again.scorer.image_policy == policy == compressor.scorer.image_policy


async def test_a_refused_document_is_never_sent_to_a_remote_server():
    # The refused-document path goes through mmrank's prepare/finish seam, which the remote scorer overrides.
    sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        texts = json.loads(request.content)["documents"]
        sent.append(texts)
        return httpx.Response(200, json={"results": [{"index": i, "relevance_score": 1 - i / 10}
                                                     for i in range(len(texts))], "usage": {"total_tokens": 1}})

    transport = httpx.MockTransport(handler)
    compressor = MMRankRerank(mode="remote", url="http://rerank.test", top_n=None, reranker_kwargs={
        "dialect": "jina", "transport": transport, "async_transport": transport})
    docs = [Document(page_content="a", id="1"), Document(page_content="", metadata={"image": 5}, id="bad"),
            Document(page_content="b", id="2")]
    for out in (compressor.compress_documents(docs, QUERY), await compressor.acompress_documents(docs, QUERY)):
        assert [d.id for d in out] == ["1", "2", "bad"] and out[2].metadata["relevance_score"] is None
    assert sent == [["a", "b"], ["a", "b"]]
