"""Greedy maximum-diversity selection (Rank-Nexus Algorithm 1) against a brute-force restatement."""

import pytest
import torch

pytest.importorskip("peft")  # the train extra

from mmrank.train.select import greedy_max_diversity  # noqa: E402


def brute_force(emb, k, start=0):
    """Algorithm 1 as printed: average cosine of every candidate to every selected item, recomputed each
    step from scratch; ties → smallest index."""
    e = [torch.tensor(v, dtype=torch.float64) for v in emb]
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm())) if a.norm() > 0 and b.norm() > 0 else 0.0  # noqa: E731
    chosen = [start]
    while len(chosen) < k:
        best, best_j = None, None
        for j in range(len(e)):
            if j in chosen:
                continue
            avg = sum(cos(e[i], e[j]) for i in chosen) / len(chosen)
            if best is None or avg < best - 1e-9:
                best, best_j = avg, j
        chosen.append(best_j)
    return chosen


@pytest.mark.parametrize("seed", range(8))
def test_same_choices_as_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n, d = 30 + seed, 6
    emb = torch.randn(n, d, generator=g).tolist()
    for k in (1, 2, 7, n):
        assert greedy_max_diversity(emb, k) == brute_force(emb, k)


def test_ties_go_to_the_smallest_index():
    # items 1, 2, 3 are all orthogonal to item 0 → tie at step 2, smallest index wins; 2 and 3 are copies
    emb = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]
    assert greedy_max_diversity(emb, 4) == [0, 1, 2, 3] == brute_force(emb, 4)
    assert greedy_max_diversity(emb, 3, start=3) == [3, 0, 1] == brute_force(emb, 3, start=3)


def test_average_not_maximum_similarity_and_scale_does_not_matter():
    # after 0 and its opposite 3, the copy of 0 (item 1) averages cos 1 and −0.995 → 0.0025, below item 2's
    # 0.05: Algorithm 1 takes the *average*, so a duplicate can come before a new direction
    emb = torch.tensor([[1.0, 0.0], [5.0, 0.0], [0.0, 1.0], [-1.0, 0.1]])
    assert greedy_max_diversity(emb, 3) == [0, 3, 1] == brute_force(emb.tolist(), 3)
    assert greedy_max_diversity(emb * 7, 4) == greedy_max_diversity(emb, 4) == brute_force(emb.tolist(), 4)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="k must be"):
        greedy_max_diversity([[1.0, 0.0]], 2)
    with pytest.raises(ValueError, match="2-d"):
        greedy_max_diversity([1.0, 0.0], 1)
    assert greedy_max_diversity([[1.0, 0.0]], 0) == []


def _running_sum(emb: torch.Tensor, k: int, start: int = 0) -> list[int]:
    """Algorithm 1 with the plain running sum: one full matrix-vector product per step (float64)."""
    e = emb.double()
    e = e / e.norm(dim=1, keepdim=True)
    total = e @ e[start]
    total[start] = float("inf")
    chosen = [start]
    while len(chosen) < k:
        j = int(torch.argmin(total))
        chosen.append(j)
        total += e @ e[j]
        total[j] = float("inf")
    return chosen


@pytest.mark.parametrize(("n", "d", "k"), [(5000, 32, 300), (3000, 8, 200), (700, 4, 699)])
def test_the_float32_running_sum_makes_the_float64_choices_at_scale(n, d, k):
    """At sizes the brute force cannot reach (thousands of items, k close to N, low dimensions where totals
    crowd), the float32 running sum chooses what a float64 running sum chooses."""
    g = torch.Generator().manual_seed(n + d)
    emb = torch.randn(n, d, generator=g)
    assert greedy_max_diversity(emb, k, start=7) == _running_sum(emb, k, start=7)
