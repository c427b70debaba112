"""The pointwise scorer's fast paths compute what the plain path computes.

Host-built M-RoPE positions, grids predicted from image sizes, batched tokenization, token-budget batching,
the prefetch thread (and its error handling), an image query encoded once per call, duplicate images, the
written-out decoder loop used by ``compile_lm``.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmrank import Document, InputError, JinaRerankerM0, Query
from mmrank.models.jina import decoder_layer
from mmrank.models.processing import IMAGE_PLACEHOLDER
from mmrank_testkit import sample_image, sample_page


def _mixed_docs():
    return ([Document(text="short"), Document(text="a somewhat longer text document " * 4)]
            + [Document(image=sample_image(i, (84 + 28 * i, 70))) for i in range(3)]
            + [Document(text="caption", image=sample_page(["x"], (120, 150)))])


def test_host_positions_equal_the_models_rope_index(jina_reranker):
    r = jina_reranker
    proc = r.processor
    imgs = [sample_image(0, (96, 80)), sample_page(["p"], (120, 180)), sample_image(2, (200, 60))]
    feats = [proc.image_features(im) for im in imgs]
    prompts = ["**Document**:\nplain text only\n**Query**:\nq",
               f"**Document**:\n{IMAGE_PLACEHOLDER}\n**Query**:\nwhat?",
               f"**Document**:\n{IMAGE_PLACEHOLDER}\ncaption\n**Query**:\n{IMAGE_PLACEHOLDER}"]
    per_prompt = [[], [feats[0]], [feats[1], feats[2]]]
    enc = proc.encode(prompts, per_prompt)
    ids, mm = enc.inputs["input_ids"], enc.inputs["mm_token_type_ids"]
    types = [row[row_mask.bool()].tolist() for row, row_mask in zip(mm, enc.inputs["attention_mask"], strict=True)]
    ours = proc.mrope_position_ids(types, [[f.grid_thw for f in p] for p in per_prompt], ids.shape[1])
    theirs, _ = r.model.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=enc.inputs["image_grid_thw"],
                                             attention_mask=enc.inputs["attention_mask"])
    assert torch.equal(ours, theirs)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(w=st.integers(10, 3000), h=st.integers(10, 3000))
def test_grid_predicted_from_the_size_equals_the_processors(jina_reranker, w, h):
    proc = jina_reranker.processor
    if max(w, h) / min(w, h) > 150:
        return
    grid = proc.image_grid(w, h)
    t, gh, gw = grid
    assert t == 1 and gh * gw * 14 * 14 <= proc.max_pixels
    from PIL import Image

    if w * h <= 400 * 400:  # processing big images is slow; the formula is the same
        assert proc.image_features(Image.new("RGB", (w, h))).grid_thw == grid


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60))
def test_token_bound_is_an_upper_bound(jina_reranker, text):
    proc = jina_reranker.processor
    bound = proc.max_tokens_bound(text)
    assert bound is not None  # byte-level BPE
    assert len(proc.tokenizer(text, add_special_tokens=False)["input_ids"]) <= bound


def test_batched_tokenization_equals_one_by_one(jina_reranker):
    proc = jina_reranker.processor
    texts = ["alpha beta", "", "**Document**:\n", "alpha beta", "x" * 5000, "naïve café ☕"]
    assert proc.tokenize_segments(texts) == [proc.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_token_budget_batching(jina_dir, jina_reranker):
    docs = _mixed_docs() * 2
    base = jina_reranker.score("the query", docs)
    r = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=64, max_batch_tokens=300)
    items = r._plan(Query(text="the query"), docs)
    batches = r._batches(items)
    assert sorted(i for b in batches for i in b) == list(range(len(docs)))
    for b in batches:
        width = max(len(items[i].ids) for i in b)
        assert len(b) == 1 or width * len(b) <= 300
    assert len(batches) > 1
    np.testing.assert_allclose(r.score("the query", docs), base, atol=1e-5, rtol=0)
    with pytest.raises(InputError):
        JinaRerankerM0(jina_dir, device="cpu", max_batch_tokens=0)


def test_prefetch_on_and_off_agree(jina_dir):
    docs = _mixed_docs()
    on = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=2, prefetch=True)
    off = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=2, prefetch=False,
                         feature_cache_bytes=0, image_workers=1)
    np.testing.assert_allclose(on.score("q", docs), off.score("q", docs), atol=1e-6, rtol=0)


def test_an_error_in_the_prefetch_thread_reaches_the_caller(jina_dir):
    r = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=1, feature_cache_bytes=0)
    calls = []
    orig = r._process_image

    def flaky(ref):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom in preprocessing")
        return orig(ref)

    r._process_image = flaky
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="boom"):
        r.score("q", [sample_image(i, (84, 84)) for i in range(6)])
    assert not [t for t in threading.enumerate() if t.name == "mmrank-prefetch"]
    assert threading.active_count() <= before + r.image_workers
    r._process_image = orig
    assert len(r.score("q", [sample_image(i, (84, 84)) for i in range(3)])) == 3  # still usable


def test_image_query_is_encoded_once_per_call_and_duplicates_are_right(jina_dir):
    r = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=2, feature_cache_bytes=0)
    plain = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=1, feature_cache_bytes=0,
                           prefetch=False)
    encoded = []
    orig = r.vision.encode
    r.vision.encode = lambda pv, grids: encoded.append(len(grids)) or orig(pv, grids)
    query = Query(image=sample_image(9, (84, 84)))
    page = sample_page(["same page"], (112, 112))
    docs = [Document(image=sample_image(i, (84, 84))) for i in range(4)] + [Document(image=page),
                                                                             Document(image=page)]
    scores = r.score(query, docs)
    assert sum(encoded) == 6 + 1 - 1  # six document images (the two equal pages share a batch) + the query once
    assert scores[4] == pytest.approx(scores[5], abs=1e-6)
    np.testing.assert_allclose(scores, plain.score(query, docs), atol=1e-5, rtol=0)


def test_written_out_decoder_loop_equals_the_text_models_forward(jina_dir):
    docs = _mixed_docs()
    r = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=3)
    base = r.score("q", docs)
    r.model.configure_fast_paths(decoder_layer_fn=decoder_layer)  # what compile_lm compiles, run eagerly
    np.testing.assert_allclose(r.score("q", docs), base, atol=1e-6, rtol=0)


def test_cpu_settings(jina_reranker):
    assert jina_reranker._gpu_preprocess is False  # CPU, and the PIL image processor cannot take a device
    assert jina_reranker.processor.supports_device is False
