"""Parity: mmrank's pointwise path vs a plain re-statement of jina-reranker-m0's reference ``compute_score``.

The reference side uses transformers' own classes the way the model card does: the generation class
``Qwen2VLForConditionalGeneration`` with ``lm_head`` replaced by the identity, the score head loaded from
the checkpoint's ``score.0.*`` / ``score.2.*``, transformers' ``Qwen2VLProcessor`` (image-only, as
torchvision is absent here), the reference prompt, token 100 appended, ``hidden_states[-1][:, -1]``,
``sigmoid(x - 2.65)``, fixed batches in input order. mmrank's side is the public API.
"""

from __future__ import annotations

import numpy as np
import pytest
from mmrank import Document, JinaRerankerM0, Query
from mmrank_testkit import sample_image, sample_page
from mmrank_testkit.reference_jina import ReferenceJinaM0  # shared with the benchmark harness

_REFERENCES: dict = {}


def _reference_compute_score(path, pairs, *, query_type, doc_type, batch_size=8, max_length=10240,
                             max_query_length=512):
    """jina-reranker-m0's compute_score, re-stated with plain transformers (mmrank_testkit/reference_jina.py)."""
    ref = _REFERENCES.get(str(path))
    if ref is None:
        ref = _REFERENCES[str(path)] = ReferenceJinaM0.from_pretrained(path)
    return ref.compute_score(pairs, query_type=query_type, doc_type=doc_type, batch_size=batch_size,
                             max_length=max_length, max_query_length=max_query_length)


TEXT_DOCS = [
    "The giant panda is a bear species endemic to China.",
    "Relevance ranking orders passages by how well they answer a query.",
    "x",
    "A vision language model reads page screenshots, photos, charts and text. " * 6,
    "Rank the passages based on their relevance to the search query.",
    "quick brown fox",
    "Document Query Passage Answer Yes No True False relevant irrelevant " * 3,
    "retrieval augmented generation",
    "[1] > [2] > [3]",
    "The quick brown fox jumps over the lazy dog.",
]


def _images():
    # Different sizes and aspect ratios: different grids, so padding and pixel batching are exercised.
    return [sample_image(0, (96, 80)), sample_page(["Quarterly report", "revenue 42"], (120, 180)),
            sample_image(3, (56, 56)), sample_image(5, (200, 60)), sample_image(7, (70, 130))]


@pytest.mark.parametrize("case", ["text-text", "text-image", "image-image", "image-text"])
def test_scores_match_reference(jina_dir, jina_reranker, case):
    query_type, doc_type = case.split("-")
    query = sample_image(11, (84, 84)) if query_type == "image" else "what does a reranker do?"
    docs = TEXT_DOCS if doc_type == "text" else _images()
    ref = _reference_compute_score(jina_dir, [(query, d) for d in docs], query_type=query_type, doc_type=doc_type,
                                   batch_size=3)
    q = Query(image=query) if query_type == "image" else Query(text=query)
    ours = jina_reranker.score(q, [Document(text=d) if doc_type == "text" else Document(image=d) for d in docs])
    assert len(ours) == len(ref)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    # The tiny random model must still tell documents apart, or the comparison proves little.
    assert np.ptp(ref) > 1e-4


def test_truncation_matches_reference(jina_dir):
    """Long documents hit max_doc_length (encode, cut, decode) and the total max_length cut."""
    long_docs = [("word " * 300).strip(), "short one", ("passage text " * 120).strip()]
    query = "relevance " * 40
    ref = _reference_compute_score(jina_dir, [(query, d) for d in long_docs], query_type="text", doc_type="text",
                                   max_length=200, max_query_length=64)
    ours = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", max_length=200, max_query_length=64,
                          batch_size=2).score(query, long_docs)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_batching_and_order_do_not_change_scores(jina_reranker, jina_dir):
    docs = [Document(text=t) for t in TEXT_DOCS] + [Document(image=im) for im in _images()]
    base = jina_reranker.score("query text", docs)
    other = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=1, sort_by_length=False)
    np.testing.assert_allclose(other.score("query text", docs), base, atol=1e-5)
    # Reversing the input reverses the scores.
    np.testing.assert_allclose(jina_reranker.score("query text", docs[::-1]), base[::-1], atol=1e-5)


def test_scores_come_from_the_models_own_forward_and_its_plain_use_agrees(jina_reranker):
    """The scorer's numbers are JinaVLForRanking.forward's (fast paths: cached features, host positions);
    the same forward fed the processor's plain outputs (pixels, grids, no positions) gives the same."""
    from mmrank.models.jina import SCORE_TOKEN_ID, JinaVLForRanking, logits_to_scores
    from mmrank.models.processing import IMAGE_PLACEHOLDER
    from mmrank.scorers.pointwise import jina_prompt

    model = jina_reranker.model
    assert isinstance(model, JinaVLForRanking)
    calls = []
    hook = model.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs.get("image_embeds") is not None),
                                       with_kwargs=True)
    images = _images()[:3]
    docs = [Document(image=im) for im in images] + [Document(text=t) for t in TEXT_DOCS[:3]]
    try:
        ours = jina_reranker.score("what does a reranker do?", docs)
    finally:
        hook.remove()
    assert calls and any(calls)  # every batch went through forward; image batches with precomputed features
    proc = jina_reranker.processor
    seqs, types, feats = [], [], []
    for d in docs:
        f = [proc.image_features(d.image)] if d.has_image else []
        ids, tt = proc.token_ids(jina_prompt(IMAGE_PLACEHOLDER if f else d.text, "what does a reranker do?"), f)
        seqs.append(ids + [SCORE_TOKEN_ID])
        types.append(tt + [0])
        feats += f
    enc = proc.pad(seqs, types, feats)
    import torch

    with torch.no_grad():
        plain = logits_to_scores(model(**enc.inputs)).tolist()
    np.testing.assert_allclose(ours, plain, atol=1e-5, rtol=0)
