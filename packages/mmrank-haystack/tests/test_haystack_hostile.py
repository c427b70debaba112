"""Hostile input for the Haystack ranker: property tests over any list of Documents (see
mmrank_testkit.hostile), and the defects they found, each pinned by name."""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import mmrank  # noqa: E402
import pytest  # noqa: E402
from haystack import Document  # noqa: E402
from haystack.dataclasses import ByteStream  # noqa: E402
from haystack.utils import ComponentDevice  # noqa: E402
from haystack_integrations.components.rankers.mmrank import MMRankRanker  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from mmrank_testkit import hostile, write_sample_images  # noqa: E402
from mmrank_testkit.conformance import QUERY, TEXTS, shared_tiny_reranker  # noqa: E402
from mmrank_testkit.hostile import Files, HostileDriver, Spec  # noqa: E402


class HaystackHostile(HostileDriver):
    name = "haystack"
    kinds = (hostile.TEXT, hostile.EMPTY_TEXT, hostile.IMAGE, hostile.TEXT_IMAGE, hostile.BROKEN, hostile.TRUNCATED,
             hostile.MISSING, hostile.BAD_TEXT, hostile.BAD_IMAGE_TYPE, hostile.NO_CONTENT)
    # content=None without an image: neither text nor image, reported (never guessed to be "").
    failing = HostileDriver.failing | {hostile.NO_CONTENT}
    merges_ids = True  # Documents with the same id are one Document, as in Haystack's own rankers

    def build(self, reranker, *, top_n, score_threshold, on_error="last"):
        return MMRankRanker(reranker=reranker, top_k=top_n, score_threshold=score_threshold, on_error=on_error,
                            keep_retrieval_score=True)

    def _fields(self, spec: Spec, files: Files) -> dict:
        kind, v = spec.kind, spec.variant
        if kind in (hostile.TEXT, hostile.EMPTY_TEXT, hostile.BAD_TEXT):
            return {"content": {hostile.EMPTY_TEXT: "", hostile.BAD_TEXT: spec.text + "\ud800"}.get(kind, spec.text)}
        if kind == hostile.NO_CONTENT:
            return [{"content": None}, {"content": None, "blob": ByteStream(data=b"%PDF-1.4", mime_type="application/pdf")}][v % 2]
        caption = spec.text or None if kind == hostile.TEXT_IMAGE else None
        data = {hostile.IMAGE: files.png, hostile.TEXT_IMAGE: files.png, hostile.BROKEN: files.broken,
                hostile.TRUNCATED: files.truncated}.get(kind)
        if data is not None:
            return {"content": caption, "blob": ByteStream(data=data, mime_type=["image/png", None][v % 2])}
        if kind == hostile.BAD_IMAGE_TYPE:  # a str blob must not be read as a path
            return {"content": None, "blob": ByteStream(data=str(files.png_path))}  # type: ignore[arg-type]
        path = files.png_path if kind in (hostile.IMAGE, hostile.TEXT_IMAGE) else files.missing_path
        return {"content": caption, "meta": {"file_path": str(path)}}

    def make(self, spec, probe, files):
        fields = self._fields(spec, files)
        meta = {"probe": probe, **fields.pop("meta", {}), **(hostile.big_metadata() if spec.big_metadata else {})}
        doc_id = spec.doc_id
        if doc_id is None and spec.kind == hostile.BAD_TEXT:
            doc_id = f"bad-text-{probe}"  # Haystack cannot hash such content into an id itself
        return Document(id=doc_id or "", meta=meta, score=spec.retrieval_score, **fields)

    def same_content_new_id(self, doc, spec, new_id, probe):
        return dataclasses.replace(doc, id=new_id, meta={**doc.meta, "probe": probe})

    def run(self, adapter, docs):
        return adapter.run(query=QUERY, documents=docs)["documents"]

    async def arun(self, adapter, docs):
        return (await adapter.run_async(query=QUERY, documents=docs))["documents"]

    def in_id(self, doc):
        return doc.id

    def in_score(self, doc):
        return doc.score

    def probe(self, doc):
        return doc.meta["probe"]

    def text(self, doc):
        return doc.content

    out_id = in_id

    def out_score(self, doc):
        return doc.score

    def out_error(self, doc):
        return doc.meta.get("rerank_error")

    def snapshot(self, doc):
        return dataclasses.asdict(doc)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return Files(tmp_path_factory.mktemp("hostile-haystack"))


@settings(max_examples=20, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(entries=hostile.spec_lists(HaystackHostile()), data=st.data())
def test_any_documents_any_top_k_any_threshold(entries, data, files):
    hostile.check_adapter(HaystackHostile(), shared_tiny_reranker(), entries, files, data)


# ---------------------------------------------------------------------- the defects, pinned
@pytest.fixture
def reranker():
    return shared_tiny_reranker()


async def test_documents_with_the_same_id_are_merged_keeping_the_best_retriever_score(reranker):
    # Was: the same Document came back twice. Haystack's rankers deduplicate by id (ids are content hashes,
    # so retrievers joined in a pipeline hand the same Document twice), keeping the highest score.
    low, high = Document(content=TEXTS[0], score=0.2), Document(content=TEXTS[0], score=0.9)
    other = Document(content=TEXTS[1])
    assert low.id == high.id
    ranker = MMRankRanker(reranker=reranker, top_k=None, keep_retrieval_score=True)
    for out in (ranker.run(query=QUERY, documents=[low, other, high])["documents"],
                (await ranker.run_async(query=QUERY, documents=[low, other, high]))["documents"]):
        assert sorted(d.id for d in out) == sorted([low.id, other.id])
        assert next(d for d in out if d.id == low.id).meta["retrieval_score"] == 0.9


def test_a_str_blob_is_not_read_as_a_path(reranker, tmp_path):
    # Was: ByteStream(data="<path>") was handed to mmrank as a str, which reads it as a local path or URL.
    image = write_sample_images(tmp_path, n=1)[0]
    doc = Document(id="str-blob", blob=ByteStream(data=str(image)))  # type: ignore[arg-type]
    out = MMRankRanker(reranker=reranker).run(query=QUERY, documents=[doc])["documents"]
    assert out[0].score is None and "blob.data is a str, not bytes" in out[0].meta["rerank_error"]
    with pytest.raises(mmrank.ImageLoadError, match="str-blob"):
        MMRankRanker(reranker=reranker, on_error="raise").run(query=QUERY, documents=[doc])


def test_mime_types_that_are_not_strings_do_not_crash(reranker, tmp_path):
    image = write_sample_images(tmp_path, n=1)[0]
    docs = [Document(id="meta-mime", meta={"file_path": str(image), "mime_type": 5}),
            Document(id="blob-mime", blob=ByteStream(data=image.read_bytes(), mime_type=7))]  # type: ignore[arg-type]
    out = MMRankRanker(reranker=reranker, top_k=None).run(query=QUERY, documents=docs)["documents"]
    want = dict(zip(["meta-mime", "blob-mime"], reranker.score(QUERY, [image, image.read_bytes()]), strict=True))
    assert {d.id: d.score for d in out} == pytest.approx(want, abs=1e-5)  # read as images (unknown MIME type)


def test_empty_content_is_scored_and_no_content_is_reported(reranker):
    docs = [Document(id="empty", content=""), Document(id="none", content=None), Document(id="t", content=TEXTS[0])]
    out = MMRankRanker(reranker=reranker, top_k=None).run(query=QUERY, documents=docs)["documents"]
    want = reranker.score(QUERY, [mmrank.Document(text=""), mmrank.Document(text=TEXTS[0])])
    assert {d.id: d.score for d in out[:2]} == pytest.approx({"empty": want[0], "t": want[1]}, abs=1e-5)
    assert out[2].id == "none" and "neither text nor image" in out[2].meta["rerank_error"]


def test_content_assigned_a_non_str_is_that_documents_error(reranker):
    bad = Document(id="bad", content="x")
    object.__setattr__(bad, "content", 5)  # no check on assignment (Haystack only warns)
    out = MMRankRanker(reranker=reranker).run(query=QUERY, documents=[bad, Document(content="y")])["documents"]
    assert out[-1].id == "bad" and out[-1].score is None and "text must be a str" in out[-1].meta["rerank_error"]


def test_an_earlier_stages_error_does_not_stay_on_a_scored_document(reranker):
    doc = Document(id="d", content=TEXTS[1], meta={"rerank_error": "document 0: old"})
    out = MMRankRanker(reranker=reranker).run(query=QUERY, documents=[doc])["documents"]
    assert isinstance(out[0].score, float) and "rerank_error" not in out[0].meta
    assert doc.meta == {"rerank_error": "document 0: old"}


async def test_top_k_and_threshold_rules_name_the_parameter(reranker):
    for bad in (0, -1, True, 1.5, "3"):
        with pytest.raises(ValueError, match="top_k must be a positive integer or None"):
            MMRankRanker(reranker=reranker, top_k=bad)
    for bad in (float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="score_threshold"):
            MMRankRanker(reranker=reranker, score_threshold=bad)
    ranker = MMRankRanker(reranker=reranker)
    docs = [Document(content=t) for t in TEXTS[:3]]
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="top_k must be a positive integer or None"):
            ranker.run(query=QUERY, documents=docs, top_k=bad)
        with pytest.raises(ValueError, match="top_k must be a positive integer or None"):
            await ranker.run_async(query=QUERY, documents=[], top_k=bad)  # checked even with no documents
    with pytest.raises(ValueError, match="score_threshold"):
        ranker.run(query=QUERY, documents=docs, score_threshold=float("nan"))
    with pytest.raises(TypeError, match=r"documents\[1\] is a str, not a haystack Document"):
        ranker.run(query=QUERY, documents=[docs[0], "text"])


def test_settings_that_do_not_apply_to_the_mode_fail_at_init(reranker):
    # Was: accepted, then a ValueError at warm_up, i.e. in the middle of the first pipeline run.
    with pytest.raises(ValueError, match="url applies to modes"):
        MMRankRanker(model="any", url="http://rerank.test")
    with pytest.raises(ValueError, match="device applies to modes"):
        MMRankRanker(mode="remote", url="http://rerank.test", device=ComponentDevice.from_str("cpu"))
    with pytest.raises(ValueError, match="batch_size configure"):
        MMRankRanker(reranker=reranker, batch_size=0)  # a falsy value is still a conflicting setting
