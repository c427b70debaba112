"""Hostile input for the LlamaIndex postprocessor: property tests over any list of nodes (see
mmrank_testkit.hostile), and the defects they found, each pinned by name."""

from __future__ import annotations

import mmrank
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_index.core.bridge.pydantic import SecretStr
from llama_index.core.schema import (
    ImageDocument,
    ImageNode,
    MediaResource,
    MetadataMode,
    Node,
    NodeWithScore,
    QueryBundle,
    TextNode,
)
from llama_index.postprocessor.mmrank_rerank import MMRankRerank
from mmrank_testkit import hostile, tiny_model_dir, write_sample_images
from mmrank_testkit.conformance import QUERY, TEXTS, shared_tiny_reranker
from mmrank_testkit.hostile import Files, HostileDriver, Spec


class LlamaIndexHostile(HostileDriver):
    name = "llama-index"
    # A Node with neither text nor image is an empty text here (get_content() == ""), scored as LlamaIndex's
    # own rerankers score it; image values of no image type cannot be built (LlamaIndex validates them).
    kinds = (hostile.TEXT, hostile.EMPTY_TEXT, hostile.IMAGE, hostile.TEXT_IMAGE, hostile.BROKEN, hostile.TRUNCATED,
             hostile.MISSING, hostile.BAD_TEXT, hostile.NO_CONTENT)

    def build(self, reranker, *, top_n, score_threshold, on_error="last"):
        return MMRankRerank(reranker=reranker, top_n=top_n, score_threshold=score_threshold, on_error=on_error,
                            keep_retrieval_score=True)

    def _node(self, spec: Spec, files: Files, meta: dict, node_id: str | None):
        ident = {"id_": node_id} if node_id is not None else {}
        # Metadata kept out of the scored text: the probe would change scores, and the large metadata would
        # only make the tiny model slow (test_text_metadata_counts_as_in_llamaindex_rerankers covers EMBED).
        hidden = list(meta)
        common = {"metadata": meta, "excluded_embed_metadata_keys": hidden, "excluded_llm_metadata_keys": hidden,
                  **ident}
        kind, v = spec.kind, spec.variant
        if kind in (hostile.TEXT, hostile.EMPTY_TEXT, hostile.BAD_TEXT):
            text = {hostile.EMPTY_TEXT: "", hostile.BAD_TEXT: spec.text + "\ud800"}.get(kind, spec.text)
            return TextNode(text=text, **common)
        if kind == hostile.NO_CONTENT:
            return Node(**common)
        caption = spec.text if kind == hostile.TEXT_IMAGE else ""
        data = {hostile.IMAGE: files.png, hostile.TEXT_IMAGE: files.png, hostile.BROKEN: files.broken,
                hostile.TRUNCATED: files.truncated}.get(kind)
        if data is not None:
            return [ImageNode(image=hostile.b64(data), text=caption, **common),
                    Node(image_resource=MediaResource(data=data),
                         text_resource=MediaResource(text=caption) if caption else None, **common)][v % 2]
        if kind == hostile.MISSING:  # (ImageDocument refuses a missing file itself, at construction)
            return [ImageNode(image_path=str(files.missing_path), **common),
                    Node(image_resource=MediaResource(path=files.missing_path), **common)][v % 2]
        return [ImageNode(image_path=str(files.png_path), text=caption, **common),
                ImageDocument(image_path=str(files.png_path), text=caption, **common)][v % 2]

    def make(self, spec, probe, files):
        meta = {"probe": probe, **(hostile.big_metadata() if spec.big_metadata else {})}
        return NodeWithScore(node=self._node(spec, files, meta, spec.doc_id), score=spec.retrieval_score)

    def same_content_new_id(self, doc, spec, new_id, probe):
        node = doc.node.model_copy(update={"id_": new_id, "metadata": {**doc.node.metadata, "probe": probe}})
        return NodeWithScore(node=node, score=doc.score)

    def run(self, adapter, docs):
        return adapter.postprocess_nodes(docs, query_bundle=QueryBundle(QUERY))

    async def arun(self, adapter, docs):
        return await adapter.apostprocess_nodes(docs, query_bundle=QueryBundle(QUERY))

    def in_id(self, doc):
        return doc.node.node_id

    def in_score(self, doc):
        return doc.score

    def probe(self, doc):
        return doc.node.metadata["probe"]

    def text(self, doc):
        return doc.node.get_content(metadata_mode="none")

    out_id = in_id

    def out_score(self, doc):
        return doc.score

    def out_error(self, doc):
        return doc.node.metadata.get("rerank_error")

    def snapshot(self, doc):
        return doc.score, doc.node.model_dump()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return Files(tmp_path_factory.mktemp("hostile-llamaindex"))


@settings(max_examples=20, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(entries=hostile.spec_lists(LlamaIndexHostile()), data=st.data())
def test_any_nodes_any_top_n_any_threshold(entries, data, files):
    hostile.check_adapter(LlamaIndexHostile(), shared_tiny_reranker(), entries, files, data)


# ---------------------------------------------------------------------- the defects, pinned
@pytest.fixture
def reranker():
    return shared_tiny_reranker()


def test_a_node_without_image_is_scored_on_get_content_even_when_empty(reranker):
    # Was: "document has neither text nor image", ranked last. LlamaIndex's rerankers score
    # get_content(EMBED) whatever it holds; an image node with no text of its own stays an image document.
    nodes = [NodeWithScore(node=TextNode(text="", id_="empty")),
             NodeWithScore(node=TextNode(text="", metadata={"title": "Berlin"}, id_="meta-only")),
             NodeWithScore(node=Node(id_="bare"))]
    out = MMRankRerank(reranker=reranker, top_n=None).postprocess_nodes(nodes, query_str=QUERY)
    texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    want = dict(zip(["empty", "meta-only", "bare"], reranker.score(QUERY, [mmrank.Document(text=t) for t in texts]),
                    strict=True))
    assert {n.node.node_id: n.score for n in out} == pytest.approx(want, abs=1e-5)
    assert texts[1].strip() == "title: Berlin"


def test_an_earlier_error_is_removed_and_never_listed_twice(reranker, tmp_path):
    missing = ImageNode(image_path=str(tmp_path / "gone.png"), id_="img")
    pp = MMRankRerank(reranker=reranker, top_n=None)
    once = pp.postprocess_nodes([NodeWithScore(node=missing)], query_str=QUERY)
    twice = pp.postprocess_nodes(once, query_str=QUERY)  # e.g. two reranking stages in one engine
    node = twice[0].node
    assert node.excluded_llm_metadata_keys.count("rerank_error") == 1
    assert node.excluded_embed_metadata_keys.count("rerank_error") == 1
    # The image is back: the old error must not sit next to the new score.
    write_sample_images(tmp_path, n=1)[0].rename(tmp_path / "gone.png")
    again = pp.postprocess_nodes(twice, query_str=QUERY)
    assert isinstance(again[0].score, float) and "rerank_error" not in again[0].node.metadata
    assert "rerank_error" in twice[0].node.metadata  # the caller's node untouched


def test_top_n_and_threshold_rules(reranker):
    for bad in (0, -1, True, 2.5, "many"):
        with pytest.raises(ValueError, match="top_n"):
            MMRankRerank(reranker=reranker, top_n=bad)
    for bad in (float("nan"), True, "high"):
        with pytest.raises(ValueError, match="score_threshold"):
            MMRankRerank(reranker=reranker, score_threshold=bad)
    assert MMRankRerank(reranker=reranker, top_n="2").top_n == 2  # pydantic's own lax conversion
    pp = MMRankRerank(reranker=reranker)
    nodes = [NodeWithScore(node=TextNode(text=t)) for t in TEXTS[:3]]
    for bad in (0, -2, True):
        pp.top_n = bad  # not validated on assignment: checked at the call, before any event
        with pytest.raises(ValueError, match="top_n must be a positive integer"):
            pp.postprocess_nodes(nodes, query_str=QUERY)


async def test_nodes_that_are_not_node_with_score_are_named(reranker):
    pp = MMRankRerank(reranker=reranker)
    with pytest.raises(TypeError, match=r"nodes\[1\] is a TextNode, not a NodeWithScore"):
        pp.postprocess_nodes([NodeWithScore(node=TextNode(text="a")), TextNode(text="b")], query_str=QUERY)
    with pytest.raises(TypeError, match=r"nodes\[0\] is a str"):
        await pp.apostprocess_nodes(["a"], query_str=QUERY)


def test_api_key_given_as_secret_str(reranker):
    key = SecretStr("sk-secret")
    pp = MMRankRerank(reranker=reranker, mode="remote", api_key=key)
    assert pp.api_key is not None and pp.api_key.get_secret_value() == "sk-secret"  # not SecretStr(SecretStr)


def test_image_policy_round_trips_through_json():
    policy = mmrank.ImagePolicy.strict(timeout=2.0, max_pixels=1_000_000)
    pp = MMRankRerank(model=str(tiny_model_dir("jina")), device="cpu", reranker_kwargs={"image_policy": policy})
    text = pp.to_json()  # was: TypeError, frozenset is not JSON serializable
    again = MMRankRerank.from_json(text)
    assert again.reranker.image_policy == policy == pp.reranker.image_policy
    assert MMRankRerank.from_dict(pp.to_dict()).reranker_kwargs == {"image_policy": policy}
