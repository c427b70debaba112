"""The Reranker contract on the real pointwise path (tiny jina-reranker-m0): ordering, top_n, bad documents,
image queries, mixed documents, async, and coercion of inputs."""

from __future__ import annotations

import asyncio
import os

import pytest
from mmrank import Document, ImageLoadError, InputError, JinaRerankerM0, ModelLoadError, Query
from mmrank_testkit import sample_image, sample_image_bytes, sample_page, tiny_model_dir

TEXTS = ["pandas eat bamboo", "the stock market fell", "a reranker orders passages", "x", "quick brown fox"]


def _mixed_docs(tmp_path):
    p = tmp_path / "page.png"
    sample_page(["Annual report", "revenue up"]).save(p)
    return [
        "plain text passage",
        Document(image=sample_image(1), id="photo"),
        Document(text="caption of the page", image=p, id="page+caption"),
        {"image": sample_image_bytes(5)},
        {"text": "another passage", "id": "t2"},
    ]


def test_rank_is_sorted_permutation_with_indices(jina_reranker):
    ranked = jina_reranker.rank("what do pandas eat?", TEXTS)
    assert sorted(r.index for r in ranked) == list(range(len(TEXTS)))
    scores = [r.score for r in ranked]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 < s < 1.0 for s in scores)  # sigmoid scores
    for r in ranked:
        assert r.document.text == TEXTS[r.index]
    # score() returns the same numbers in input order
    by_index = {r.index: r.score for r in ranked}
    assert jina_reranker.score("what do pandas eat?", TEXTS) == pytest.approx([by_index[i] for i in range(5)])


def test_top_n_trims_only(jina_reranker):
    full = jina_reranker.rank("q", TEXTS)
    assert [r.index for r in jina_reranker.rank("q", TEXTS, top_n=2)] == [r.index for r in full[:2]]
    assert jina_reranker.rank("q", TEXTS, top_n=0) == []
    assert len(jina_reranker.rank("q", TEXTS, top_n=50)) == len(TEXTS)
    with pytest.raises(InputError):
        jina_reranker.rank("q", TEXTS, top_n=-1)



def test_score_threshold_drops_only_scored_documents_below_it_then_top_n_trims(jina_reranker):
    docs = [*TEXTS, b"not an image"]  # the last one cannot be read: it has no score and is never dropped
    full = jina_reranker.rank("q", docs)
    cut = full[2].score  # keeps the best three scored documents (ties aside)
    kept = jina_reranker.rank("q", docs, score_threshold=cut)
    assert [r.index for r in kept] == [r.index for r in full if r.score is None or r.score >= cut]
    assert kept[-1].index == 5 and kept[-1].error and len(kept) == 4
    # The threshold applies before top_n: top_n counts what the threshold kept.
    assert [r.index for r in jina_reranker.rank("q", docs, top_n=2, score_threshold=cut)] == [r.index for r in full[:2]]
    assert [r.index for r in asyncio.run(jina_reranker.arank("q", docs, score_threshold=cut))] == [r.index for r in kept]
    assert [r.index for r in jina_reranker.rank("q", docs, score_threshold=2.0)] == [5]
    for bad in (float("nan"), "0.5", True):
        with pytest.raises(InputError, match="score_threshold must be a number"):
            jina_reranker.rank("q", docs, score_threshold=bad)

def test_empty_inputs(jina_reranker):
    assert jina_reranker.rank("q", []) == []
    with pytest.raises(InputError, match="query is empty"):
        jina_reranker.rank("", TEXTS)
    with pytest.raises(InputError, match="documents must be a list"):
        jina_reranker.rank("q", "a single string")


def test_mixed_documents_and_payloads(jina_reranker, tmp_path):
    docs = _mixed_docs(tmp_path)
    ranked = jina_reranker.rank("annual revenue", docs)
    assert sorted(r.index for r in ranked) == list(range(len(docs)))
    assert all(r.score is not None and r.error is None for r in ranked)
    ids = {r.index: r.document.id for r in ranked}
    assert ids[1] == "photo" and ids[2] == "page+caption" and ids[4] == "t2"


def test_image_query(jina_reranker, tmp_path):
    ranked = jina_reranker.rank(Query(image=sample_image(9)), _mixed_docs(tmp_path))
    assert len(ranked) == 5 and all(r.score is not None for r in ranked)


def test_bad_documents_are_kept_last_with_the_error(jina_reranker, tmp_path):
    docs = ["good one", Document(image=b"not an image", id="broken"), "good two",
            Document(image=tmp_path / "missing.png"), Document(id="nothing")]
    ranked = jina_reranker.rank("q", docs)
    assert sorted(r.index for r in ranked) == [0, 1, 2, 3, 4]
    assert [r.index for r in ranked[:2]] in ([0, 2], [2, 0])
    tail = ranked[2:]
    assert [r.index for r in tail] == [1, 3, 4]
    assert all(r.score is None for r in tail)
    assert "document 1" in tail[0].error and "broken" in tail[0].error and "not an image" in tail[0].error
    assert "does not exist" in tail[1].error
    assert "neither text nor image" in tail[2].error


def test_empty_text_document_is_scored_as_the_reference_scores_it(jina_reranker):
    """Haystack and LlamaIndex send "" for empty documents; the reference scores the prompt with an empty
    document slot. Only a document with neither text nor image is an error."""
    from mmrank.scorers.pointwise import jina_prompt

    ranked = jina_reranker.rank("q", ["", Document(text=""), "text"])
    assert all(r.score is not None for r in ranked)
    empty = [r.score for r in ranked if r.index in (0, 1)]
    assert empty[0] == pytest.approx(empty[1], abs=1e-6)
    ids, _ = jina_reranker.processor.token_ids(jina_prompt("", "q"), [])
    assert ids == jina_reranker.processor.tokenizer("**Document**:\n\n**Query**:\nq", add_special_tokens=False)["input_ids"]


def test_bad_documents_raise_on_request(jina_reranker):
    with pytest.raises(ImageLoadError, match=r"document 1 \(id='broken'\)"):
        jina_reranker.rank("q", ["fine", Document(image=b"garbage", id="broken")], on_error="raise")


@pytest.mark.parametrize("kind", ["pointwise", "listwise", "pairwise"])
def test_extreme_aspect_ratio_is_a_document_error_and_a_query_error(kind, jina_reranker):
    from mmrank import InputError, ListwiseReranker, PairwiseReranker

    lm = str(tiny_model_dir("lm"))
    scorer = {"pointwise": lambda: jina_reranker,
              "listwise": lambda: ListwiseReranker(lm, device="cpu", dtype="float32", mode="single_pass"),
              "pairwise": lambda: PairwiseReranker(lm, device="cpu", dtype="float32")}[kind]()
    thin = sample_image(0, (2000, 8))
    ranked = scorer.rank("q", ["fine", Document(image=thin, id="thin"), "also fine"])
    assert sorted(r.index for r in ranked[:2]) == [0, 2] and all(r.score is not None for r in ranked[:2])
    assert ranked[2].index == 1 and ranked[2].score is None
    assert "document 1 (id='thin')" in ranked[2].error and "aspect ratio" in ranked[2].error
    with pytest.raises(InputError, match="aspect ratio"):
        scorer.rank(Query(image=thin), ["fine"])


def test_unreadable_query_image_raises(jina_reranker):
    with pytest.raises(ImageLoadError):
        jina_reranker.rank(Query(image=b"garbage"), TEXTS)


def test_async_equals_sync(jina_reranker):
    sync = jina_reranker.rank("pandas", TEXTS, top_n=3)

    async def go():
        # several concurrent calls share the model safely
        return await asyncio.gather(*[jina_reranker.arank("pandas", TEXTS, top_n=3) for _ in range(3)])

    for res in asyncio.run(go()):
        assert [(r.index, round(r.score, 6)) for r in res] == [(r.index, round(r.score, 6)) for r in sync]
    scores = asyncio.run(jina_reranker.ascore("pandas", TEXTS))
    assert scores == pytest.approx(jina_reranker.score("pandas", TEXTS))


def test_unknown_document_shape():
    with pytest.raises(InputError, match="document 1"):
        from mmrank.inputs.documents import coerce_documents

        coerce_documents(["ok", 42])
    with pytest.raises(InputError, match="unknown document field"):
        Document.coerce({"txt": "typo"})


def test_missing_model_error_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        JinaRerankerM0("someone/not-cached-model-xyz", device="cpu")
    msg = str(info.value)
    assert "HF_HUB_OFFLINE" in msg and "hf download someone/not-cached-model-xyz" in msg and "local" in msg
    with pytest.raises(ModelLoadError, match="does not exist"):
        JinaRerankerM0(os.path.join(str(tmp_path), "nope", "model"), device="cpu")


def test_dummy_load_format_warns_loudly(capsys):
    r = JinaRerankerM0("tiny", load_format="dummy", device="cpu")
    err = capsys.readouterr().err
    assert "RANDOM WEIGHTS" in err and "mean NOTHING" in err
    assert r.is_dummy and len(r.rank("q", ["a", "b"])) == 2


# ---------------------------------------------------------------------------------------- the public seam
def test_the_seam_composes_to_rank(jina_reranker):
    """prepare → the model step → finish is rank, step by step, on the real model; a pointwise scorer's
    score_documents ranked with order_by_score gives the same ranking (what mmrank serve merges on)."""
    from mmrank.scorers.base import PreparedRanking, order_by_score

    docs = ["pandas eat bamboo", Document(image=b"garbage", id="broken"), "the stock market fell", "x"]
    call = jina_reranker.prepare("pandas", docs, 3, score_threshold=-100.0)
    assert isinstance(call, PreparedRanking)
    assert call.readable == [0, 2, 3] and call.failed == [1] and (call.top_n, call.on_error) == (3, "last")
    assert "document 1 (id='broken')" in str(call.errors[1])
    ranking = jina_reranker.rank_documents(call.query, call.readable_documents)
    assert sorted(j for j, _ in ranking) == [0, 1, 2]
    scores = jina_reranker.score_documents(call.query, call.readable_documents)
    _same_ranking(order_by_score(scores), ranking)
    finished = jina_reranker.finish(call, ranking)
    direct = jina_reranker.rank("pandas", docs, 3, score_threshold=-100.0)
    assert [(r.index, r.error) for r in finished] == [(r.index, r.error) for r in direct]
    assert [r.score for r in finished] == pytest.approx([r.score for r in direct], abs=1e-6)
    _same_ranking(asyncio.run(jina_reranker.arank_documents(call.query, call.readable_documents)), ranking)


def _same_ranking(got, expected):
    assert [j for j, _ in got] == [j for j, _ in expected]
    assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-6)


def test_prepare_raises_under_raise_and_keeps_refused_documents(jina_reranker):
    with pytest.raises(ImageLoadError, match=r"document 1 \(id='broken'\)"):
        jina_reranker.prepare("q", ["fine", Document(image=b"garbage", id="broken")], on_error="raise")
    # A caller's own refusal is kept as given and the document is not read (its image would fail otherwise).
    refusal = InputError("document 0: refused by the caller")
    call = jina_reranker.prepare("q", [Document(image=b"garbage"), "fine"], refused=[refusal, None])
    assert call.errors == [refusal, None]
    with pytest.raises(InputError, match="refused has 1 entries for 2 documents"):
        jina_reranker.prepare("q", ["a", "b"], refused=[None])
    call = asyncio.run(jina_reranker.aprepare("q", [Document(image=sample_image(2)), "t"]))
    assert call.readable == [0, 1]


def test_finish_refuses_a_ranking_that_is_not_a_permutation(jina_reranker):
    call = jina_reranker.prepare("q", ["a", "b"])
    with pytest.raises(RuntimeError, match="positions"):
        jina_reranker.finish(call, [(0, 1.0), (0, 0.5)])
    with pytest.raises(RuntimeError, match="increase"):
        jina_reranker.finish(call, [(0, 0.1), (1, 0.5)])
