"""The image-feature cache (bounded by bytes, hit/miss counts) and mmrank's own vision-tower pass."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from mmrank import Document, JinaRerankerM0
from mmrank.models.features import FeatureCache, VisionEncoder
from mmrank_testkit import sample_image, sample_page


def _t(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float32)  # n * 4 bytes


def test_cache_is_bounded_by_bytes_and_evicts_least_recently_used():
    c = FeatureCache(max_bytes=100)
    assert c.put("a", _t(10)) and c.put("b", _t(10))  # 40 + 40 bytes
    assert c.get("a") is not None  # a is now the most recent
    c.put("c", _t(10))  # 120 > 100: evicts b
    assert "b" not in c and "a" in c and "c" in c
    st = c.stats()
    assert (st.hits, st.misses, st.evictions, st.entries, st.bytes) == (1, 0, 1, 2, 80)
    assert c.get("b") is None and c.stats().misses == 1
    assert c.stats().hit_rate == 0.5


def test_cache_rejects_entries_larger_than_the_budget_and_replaces_same_key():
    c = FeatureCache(max_bytes=100)
    assert not c.put("big", _t(30))  # 120 bytes
    assert len(c) == 0 and c.stats().bytes == 0
    c.put("k", _t(10))
    c.put("k", _t(5))
    assert c.stats().bytes == 20 and len(c) == 1


def test_disabled_cache_counts_misses_and_stores_nothing():
    c = FeatureCache(max_bytes=0)
    assert not c.enabled
    assert not c.put("a", _t(1))
    assert c.get("a") is None
    assert c.stats().as_dict() == {"hits": 0, "misses": 1, "evictions": 0, "entries": 0, "bytes": 0,
                                   "max_bytes": 0, "hit_rate": 0.0}
    with pytest.raises(ValueError):
        FeatureCache(-1)


def test_cache_is_thread_safe():
    c = FeatureCache(max_bytes=4 * 50)

    def work(base):
        for i in range(200):
            c.put((base, i % 80), _t(1))
            c.get((base, (i * 7) % 80))

    threads = [threading.Thread(target=work, args=(b,)) for b in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = c.stats()
    assert st.bytes <= 200 and st.bytes == 4 * st.entries
    assert st.hits + st.misses == 800


def test_vision_encoder_matches_the_towers_own_forward(jina_reranker):
    vis = jina_reranker.model.model.visual
    proc = jina_reranker.processor
    # Equal grids (batched attention) mixed with other grids, out of order.
    imgs = [sample_image(1, (96, 80)), sample_page(["a b"], (120, 180)), sample_image(2, (96, 80)),
            sample_image(3, (200, 60)), sample_image(4, (96, 80))]
    feats = [proc.image_features(im) for im in imgs]
    pv = torch.cat([f.pixel_values for f in feats])
    grids = [f.grid_thw for f in feats]
    enc = VisionEncoder(vis)
    assert enc.fast
    ours = enc.encode(pv, grids)
    with torch.no_grad():
        out = vis(pv, grid_thw=torch.tensor(grids))
    ref = torch.split(getattr(out, "pooler_output", out), [proc.num_image_tokens(g) for g in grids])
    assert [o.shape for o in ours] == [r.shape for r in ref]
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # The fallback (the tower's own forward) gives the same.
    enc.fast = False
    for a, b in zip(enc.encode(pv, grids), ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_warm_cache_scores_equal_uncached_scores_and_skip_the_vision_tower(jina_dir):
    pages = [sample_page([f"page {i}", "revenue"], (112 + 28 * (i % 3), 140)) for i in range(5)]
    docs = lambda: [Document(image=p) for p in pages] + [Document(text="a text document")]  # noqa: E731
    cached = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=2)
    plain = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=2, feature_cache_bytes=0)
    calls = []
    orig = cached.vision.encode
    cached.vision.encode = lambda pv, grids: calls.append(len(grids)) or orig(pv, grids)

    cold = cached.score("first query", docs())
    st = cached.feature_cache.stats()
    assert (st.hits, st.misses, st.entries) == (0, 5, 5)
    assert sum(calls) == 5
    calls.clear()
    warm = cached.score("second query", docs())
    assert calls == []  # every page came from the cache
    st = cached.feature_cache.stats()
    assert (st.hits, st.misses) == (5, 5)
    np.testing.assert_allclose(cold, plain.score("first query", docs()), atol=1e-5, rtol=0)
    np.testing.assert_allclose(warm, plain.score("second query", docs()), atol=1e-5, rtol=0)
    assert plain.feature_cache.stats().entries == 0
    # A different pixel budget is a different key: no false hits.
    other = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", max_pixels=112 * 112)
    other.feature_cache = cached.feature_cache
    other.score("q", docs()[:1])
    assert cached.feature_cache.stats().misses == 6


def test_tiny_cache_still_gives_right_scores(jina_dir):
    """A budget smaller than one batch: entries are evicted between preparation and use."""
    pages = [sample_image(i, (84, 84)) for i in range(6)]
    tiny = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=2, feature_cache_bytes=1)
    plain = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=2, feature_cache_bytes=0)
    for _ in range(2):
        np.testing.assert_allclose(tiny.score("q", pages), plain.score("q", pages), atol=1e-6, rtol=0)
    one_entry = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=2)
    one_entry.score("q", pages[:1])
    size = one_entry.feature_cache.stats().bytes
    small = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=2, feature_cache_bytes=2 * size)
    for _ in range(2):
        np.testing.assert_allclose(small.score("q", pages), plain.score("q", pages), atol=1e-6, rtol=0)
    assert small.feature_cache.stats().entries <= 2
    assert small.feature_cache.stats().evictions >= 4
