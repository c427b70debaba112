"""Property tests (hypothesis) of greedy maximum-diversity selection (Rank-Nexus Algorithm 1): the fast
implementation (float16 screen with a proven error bound, exact float64 totals for the candidates, a pool of
exact totals kept across steps) chooses what a brute-force float64 restatement chooses, on random and hostile
inputs: exact ties, duplicates, zero vectors, opposite vectors, near-duplicates below float16 resolution,
clustered data, one dimension, k = 1 and k = N, any start, tiny pools; the screen's own guarantee is checked
directly; and bad input is refused with the row named."""

import math
from unittest import mock

import pytest
import torch

pytest.importorskip("peft")  # the train extra
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from mmrank.train import select as select_mod  # noqa: E402
from mmrank.train.select import greedy_max_diversity  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(emb, k, start=0):
    """Algorithm 1 restated in float64: every candidate's average cosine to every selected item, recomputed from
    scratch each step; averages within 1e-9 of the lowest tie and the smallest index wins."""
    e = torch.as_tensor(emb, dtype=torch.float64)
    e = e / e.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)   # rows of 1e-300 or 1e300: no under/overflow
    norm = e.norm(dim=1)
    cos = (e @ e.T) / (norm[:, None] * norm[None, :])
    cos[(norm[:, None] == 0) | (norm[None, :] == 0)] = 0.0
    chosen = [start]
    while len(chosen) < k:
        avg = cos[:, chosen].sum(dim=1) / len(chosen)
        avg[chosen] = math.inf
        chosen.append(int(torch.nonzero(avg <= avg.min() + 1e-9)[0]))
    return chosen


def running(emb, k, start=0):
    """Algorithm 1 as a float64 running sum (one full matrix–vector product per step), same tie rule."""
    u = emb.double() / emb.double().norm(dim=1, keepdim=True)
    total, chosen = u @ u[start], [start]
    total[start] = math.inf
    while len(chosen) < k:
        j = int(torch.nonzero(total <= total.min() + 1e-9 * len(chosen))[0])
        chosen.append(j)
        total += u @ u[j]
        total[j] = math.inf
    return chosen


def clustered(n, d, seed, clusters=8):
    """CLIP-like: a common mean, uneven clusters, a power-law spectrum; all-positive cosines."""
    g = torch.Generator().manual_seed(seed)
    spectrum = (torch.arange(d, dtype=torch.float64) + 1) ** -0.5
    centres = (torch.randn(d, generator=g, dtype=torch.float64)
               + 0.6 * torch.randn(clusters, d, generator=g, dtype=torch.float64)) * spectrum
    members = torch.multinomial(torch.exp(torch.randn(clusters, generator=g)), n, replacement=True, generator=g)
    return centres[members] + 0.4 * torch.randn(n, d, generator=g, dtype=torch.float64) * spectrum


def fan(n, d, step, seed, axes=False):
    """Item 0 and, almost orthogonal to it, n − 1 unit vectors at angles π/2 + j·step (shuffled), in a random plane
    of R^d (``axes``: the first two coordinates, so that item 0 is exact in float16 and only the rounding of the
    others is left to bound): their totals against item 0 differ by ~step, far below float16's resolution."""
    g = torch.Generator().manual_seed(seed)
    plane = torch.linalg.qr(torch.randn(max(d, 2), 2, generator=g, dtype=torch.float64))[0][:d]
    if axes:
        plane = torch.eye(max(d, 2), 2, dtype=torch.float64)[:d]
    angles = torch.cat([torch.zeros(1, dtype=torch.float64),
                        math.pi / 2 + step * torch.randperm(n - 1, generator=g).double()])
    return torch.stack([angles.cos(), angles.sin()], dim=1) @ plane.T


# ---- inputs ---------------------------------------------------------------------------------------------------

small_ints = st.integers(-2, 2).map(float)                      # exact ties, duplicates, zeros, opposites
moderate = st.floats(-10, 10, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def matrices(draw):
    n = draw(st.integers(1, 12))
    d = draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["ints", "floats", "copies", "near", "lopsided", "fan"]))
    if kind == "fan":                                           # totals closer than float16 can tell apart
        return fan(n, d, draw(st.sampled_from([1e-4, 1e-6, 1e-8])), draw(st.integers(0, 2 ** 32 - 1)),
                   draw(st.booleans())).tolist()
    if kind in ("ints", "floats"):
        return draw(st.lists(st.lists(small_ints if kind == "ints" else moderate, min_size=d, max_size=d),
                             min_size=n, max_size=n))
    bases = draw(st.lists(st.lists(moderate, min_size=d, max_size=d), min_size=1, max_size=3))
    rows = []
    for _ in range(n):
        base = draw(st.sampled_from(bases))
        if kind == "copies":                                    # positive multiples of a few vectors
            rows.append([x * draw(st.sampled_from([1.0, 2.0, 0.5, 3.0])) for x in base])
        elif kind == "near":                                    # perturbed far below float16 resolution
            eps = draw(st.sampled_from([1e-5, 1e-7, 1e-9]))
            rows.append([x + eps * draw(st.integers(-3, 3)) for x in base])
        else:                                                   # one coordinate dominates by 1e6
            rows.append([x * (1e6 if i == 0 else 1.0) for i, x in enumerate(base)])
    return rows


# ---- choices ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pool", [1, 3, 2048])
@given(data=st.data())
@SETTINGS
@example(data=None)
def test_same_choices_as_the_float64_restatement(pool, data):
    """Any input, any k and start, pools from 1 (the pool path runs on tiny inputs) to the default."""
    if data is None:  # the explicit example: every vector orthogonal to the start → all tie
        emb, k, start = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], 5, 3
    else:
        emb = data.draw(matrices())
        k = data.draw(st.integers(1, len(emb)))
        start = data.draw(st.integers(0, len(emb) - 1))
    with mock.patch.object(select_mod, "_POOL", pool):
        assert greedy_max_diversity(emb, k, start=start) == reference(emb, k, start)


@given(emb=matrices(), data=st.data())
@SETTINGS
def test_the_float32_screen_makes_the_same_choices(emb, data):
    """Where float16 sums may not be float32 (torch's reduced-precision mode on), the screen is float32."""
    k = data.draw(st.integers(1, len(emb)))
    with mock.patch.object(torch._C, "_get_cpu_allow_fp16_reduced_precision_reduction", lambda: True, create=True):
        assert select_mod._Screen(torch.tensor(emb)).dtype == torch.float32
        assert greedy_max_diversity(emb, k) == reference(emb, k)


@given(n=st.integers(100, 300), d=st.integers(1, 16), clusters=st.integers(1, 6), seed=st.integers(0, 2 ** 32 - 1),
       pool=st.integers(10, 80), data=st.data())
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_clustered_data_with_small_pools(n, d, clusters, seed, pool, data):
    """Clustered data, pools of 10–80 items, k from N/3 to N, any start: the pool serves some steps (as in most
    of these examples) and the choices stay those of a float64 running sum."""
    emb = clustered(n, d, seed, clusters)
    k = data.draw(st.integers(n // 3, n))
    start = data.draw(st.integers(0, n - 1))
    with mock.patch.object(select_mod, "_POOL", pool):
        assert greedy_max_diversity(emb, k, start=start) == running(emb, k, start)


@pytest.mark.parametrize(("n", "d", "k", "seed"), [(3000, 16, 600, 0), (2000, 3, 1999, 1), (1500, 64, 300, 2)])
def test_clustered_data_at_scale_uses_the_pool_and_matches(n, d, k, seed):
    """Clustered, all-positive-cosine embeddings at sizes the brute force cannot reach, with k up to N − 1: the
    same choices as a float64 running sum, and far fewer screens than steps (a pool of 500 serves most steps)."""
    emb = clustered(n, d, seed).to(torch.float32 if seed == 0 else torch.float64)
    want = running(emb, k, start=5)
    screens = []
    real_call = select_mod._Screen.__call__

    def counting(self, *a, **kw):
        screens.append(1)
        return real_call(self, *a, **kw)

    with mock.patch.object(select_mod._Screen, "__call__", counting), mock.patch.object(select_mod, "_POOL", 500):
        assert greedy_max_diversity(emb, k, start=5) == want
    assert len(screens) < (k - 1) / 2


@pytest.mark.parametrize(("n", "d", "step", "axes"), [(40, 2, 1e-6, True), (200, 2, 1e-7, True), (60, 16, 1e-6, True),
                                                     (60, 16, 1e-6, False), (250, 2, 5e-9, False)])
def test_totals_closer_than_float16_resolution(n, d, step, axes):
    """Totals 1e-6 to 5e-9 apart (float16 resolves ~1e-3): the screen's bound must keep every such candidate.
    (Not a step of exactly 2e-9: then averages differ by 1e-9·(1 ± 3e-8), the tie tolerance itself, which float64
    rounding decides — for this code and for the restatement alike.)"""
    emb = fan(n, d, step, seed=n, axes=axes)
    assert greedy_max_diversity(emb, n) == reference(emb, n)
    assert greedy_max_diversity(emb, n, start=n // 2) == reference(emb, n, n // 2)


def test_totals_that_cancel_out():
    """After e₁ and e₂, v = (1, 1, 0) is exact in float16 and each total is u₁ + u₂ = s − s + ε: large components
    that cancel, so only the bound on rounding the vectors themselves (not the result's) keeps the candidates."""
    g = torch.Generator().manual_seed(0)
    s = 0.05 + 0.65 * torch.rand(2000, generator=g, dtype=torch.float64)
    eps = 1e-6 * torch.randperm(2000, generator=g).double()
    rows = torch.stack([s, -s + eps, (1 - s ** 2 - (s - eps) ** 2).sqrt()], dim=1)
    emb = torch.cat([torch.eye(2, 3, dtype=torch.float64), rows])
    assert greedy_max_diversity(emb, 6) == reference(emb, 6)


def test_scale_and_dtype_do_not_matter():
    emb = clustered(300, 6, 3)
    want = reference(emb, 40)
    assert greedy_max_diversity(emb, 40) == want
    assert greedy_max_diversity(emb * 2.0 ** 600, 40) == want          # float64 norm would overflow
    assert greedy_max_diversity(emb * 2.0 ** -600, 40) == want
    assert greedy_max_diversity((emb * 2.0 ** 100).float(), 40) == greedy_max_diversity(emb.float(), 40)
    assert greedy_max_diversity(emb.tolist(), 40) == want                 # nested lists are read as float64
    ints = torch.randint(-3, 4, (30, 4), generator=torch.Generator().manual_seed(0))
    assert greedy_max_diversity(ints, 30) == reference(ints, 30)


def test_no_dimensions_and_zero_start():
    assert greedy_max_diversity(torch.zeros(4, 0), 3, start=2) == [2, 0, 1]
    emb = [[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]
    assert greedy_max_diversity(emb, 4) == reference(emb, 4) == [0, 1, 2, 3]   # v stays 0 → all tie
    assert greedy_max_diversity(emb, 4, start=1) == reference(emb, 4, 1) == [1, 2, 0, 3]


def test_mass_ties_beyond_the_kept_rows():
    """More tied candidates than the exact rows it keeps (16 MB; 100 here): their totals are computed in blocks
    for that step, with the same choices."""
    emb = torch.zeros(3000, 2, dtype=torch.float64)
    emb[:, 0] = 1.0
    emb[::3] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with mock.patch.object(select_mod._Screen, "__init__", _small_keep(select_mod._Screen.__init__)):
        assert greedy_max_diversity(emb, 50) == running(emb, 50)


def _small_keep(init):
    def wrapped(self, x):
        init(self, x)
        self.keep = 100
    return wrapped


# ---- the screen's guarantee -------------------------------------------------------------------------------------

@given(emb=matrices(), data=st.data())
@SETTINGS
def test_the_screen_names_every_possible_lowest_and_bounds_the_rest(emb, data):
    """For any running sum v (of selected items, or arbitrary, huge, tiny or zero): every item whose exact total
    is within tol of the lowest is in the pool, and every item outside it has a total ≥ floor."""
    x = torch.tensor(emb, dtype=torch.float64)
    n = len(emb)
    screen = select_mod._Screen(x)
    taken = torch.zeros(n, dtype=torch.float64)
    gone = data.draw(st.lists(st.integers(0, n - 1), max_size=n - 1, unique=True))
    taken[gone] = math.inf
    mode = data.draw(st.sampled_from(["selected", "random"]))
    if mode == "selected":
        v = sum((screen.unit(i) for i in gone), torch.zeros(x.shape[1], dtype=torch.float64))
    else:
        v = torch.tensor(data.draw(st.lists(moderate, min_size=x.shape[1], max_size=x.shape[1])),
                         dtype=torch.float64) * data.draw(st.sampled_from([1.0, 1e-30, 1e30]))
    tol = data.draw(st.sampled_from([0.0, 1e-9, 1e-3]))
    pool, floor = screen(v, taken, tol, room=n - len(gone))
    exact = screen.unit(slice(None)) @ v + taken
    lowest = float(exact.min())
    inside = set(pool.tolist())
    assert {j for j in range(n) if exact[j] <= lowest + tol} <= inside
    assert all(exact[j] >= floor for j in range(n) if j not in inside and j not in gone)
    assert not inside & set(gone)
    assert pool.tolist() == sorted(inside)


# ---- refusals ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rows_are_refused_naming_the_row(bad):
    emb = [[1.0, 0.0], [0.0, 1.0], [0.5, bad]]
    with pytest.raises(ValueError, match="row 2 is not finite"):
        greedy_max_diversity(emb, 2)
    with pytest.raises(ValueError, match="row 2 is not finite"):
        greedy_max_diversity(torch.tensor(emb, dtype=torch.float32), 1)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="2-d real"):
        greedy_max_diversity(torch.ones(3, 2, dtype=torch.complex64), 1)
    with pytest.raises(ValueError, match="start must"):
        greedy_max_diversity([[1.0], [2.0]], 1, start=2)
    with pytest.raises(TypeError):
        greedy_max_diversity([[1.0], [2.0]], 1.5)
    assert greedy_max_diversity(torch.zeros(0, 3), 0) == []
