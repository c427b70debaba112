"""Property tests (hypothesis) of the Plackett–Luce loss: it equals a straightforward float64 restatement of
Rank-Nexus eq. 4 with Breslow ties, does not depend on the order the documents are given in, is smallest when
the scores sort like the teacher's order, stays finite for extreme logits, has the right gradients
(``gradcheck`` on doubles) and ignores padded documents wherever they sit in the window."""

import math

import pytest
import torch

pytest.importorskip("peft")  # the train extra
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from mmrank.train.loss import plackett_luce_loss  # noqa: E402

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pl_reference(scores, order, tau, teacher=None):
    """−Σ_i log(exp(s[π(i)]/τ) / Σ_{j ≥ g(i)} exp(s[π(j)]/τ)), g(i) = start of i's run of equal teacher scores
    (g(i) = i without teacher scores): plain Python floats, log-sum-exp with the maximum taken out."""
    total = 0.0
    for i, d in enumerate(order):
        g = i
        if teacher is not None:
            while g > 0 and teacher[order[g - 1]] == teacher[order[i]]:
                g -= 1
        risk = [scores[order[j]] / tau for j in range(g, len(order))]
        top = max(risk)
        total += top + math.log(math.fsum(math.exp(x - top) for x in risk)) - scores[d] / tau
    return total


@st.composite
def windows(draw, max_n=7, padded=True, ties=True, extreme=False):
    """A batch of windows: scores, permutation (real documents first, padding after), mask (padding anywhere
    in window order), teacher scores (small integers, so ties happen) and the reference per window."""
    b = draw(st.integers(1, 3))
    n = draw(st.integers(1, max_n))
    value = (st.floats(allow_nan=False, allow_infinity=False, width=32) if extreme
             else st.floats(-5.0, 5.0, allow_nan=False, width=64))
    scores, perms, masks, teach = [], [], [], []
    for _ in range(b):
        m = draw(st.lists(st.booleans(), min_size=n, max_size=n)) if padded else [True] * n
        real = [k for k in range(n) if m[k]]
        order = draw(st.permutations(real))
        t = [float(draw(st.integers(0, 2))) for _ in range(n)] if ties else [float(-i) for i in range(n)]
        # the teacher order sorts its scores best first (as distilled records do); equal scores may come
        # in any order
        order = sorted(order, key=lambda k: -t[k])
        pad = draw(st.lists(st.integers(0, n - 1), min_size=n - len(real), max_size=n - len(real)))
        scores.append(draw(st.lists(value, min_size=n, max_size=n)))
        perms.append(list(order) + pad)
        masks.append(m)
        teach.append(t)
    return (torch.tensor(scores, dtype=torch.float64), torch.tensor(perms), torch.tensor(masks),
            torch.tensor(teach, dtype=torch.float64))


taus = st.sampled_from([0.1, 0.05, 0.5, 1.0, 2.0])


@SETTINGS
@given(windows(), taus, st.booleans())
def test_equals_the_float64_restatement(batch, tau, use_ties):
    scores, perm, mask, teacher = batch
    got = plackett_luce_loss(scores, perm, tau=tau, mask=mask, teacher_scores=teacher if use_ties else None,
                             reduction="none")
    assert got.dtype == torch.float64
    for k in range(scores.shape[0]):
        real = int(mask[k].sum())
        ref = pl_reference(scores[k].tolist(), perm[k, :real].tolist(), tau,
                           teacher[k].tolist() if use_ties else None)
        assert float(got[k]) == pytest.approx(ref, rel=1e-9, abs=1e-9)
    mean = plackett_luce_loss(scores, perm, tau=tau, mask=mask, teacher_scores=teacher if use_ties else None)
    assert float(mean) == pytest.approx(float(got.mean()), rel=1e-12, abs=1e-12)


@SETTINGS
@given(windows(), taus, st.randoms(use_true_random=False))
def test_invariant_to_the_order_the_documents_are_given_in(batch, tau, rnd):
    scores, perm, mask, teacher = batch
    n = scores.shape[1]
    sigma = list(range(n))
    rnd.shuffle(sigma)                       # new window position j holds old document sigma[j]
    inv = [0] * n
    for j, old in enumerate(sigma):
        inv[old] = j
    idx = torch.tensor(sigma)
    perm2 = torch.tensor([[inv[x] for x in row] for row in perm.tolist()])
    a = plackett_luce_loss(scores, perm, tau=tau, mask=mask, teacher_scores=teacher, reduction="none")
    b = plackett_luce_loss(scores[:, idx], perm2, tau=tau, mask=mask[:, idx], teacher_scores=teacher[:, idx],
                           reduction="none")
    assert b.tolist() == pytest.approx(a.tolist(), rel=1e-10, abs=1e-10)


@SETTINGS
@given(st.lists(st.floats(-4.0, 4.0, allow_nan=False), min_size=1, max_size=7), st.randoms(use_true_random=False),
       taus)
def test_smallest_when_the_scores_sort_like_the_teacher_order(values, rnd, tau):
    n = len(values)
    order = list(range(n))
    rnd.shuffle(order)
    perm = torch.tensor(order)
    given_scores = torch.tensor(values, dtype=torch.float64)
    target = torch.empty(n, dtype=torch.float64)
    target[perm] = torch.tensor(sorted(values, reverse=True), dtype=torch.float64)  # best score to π*(0), ...
    best = float(plackett_luce_loss(target, perm, tau=tau))
    assert best <= float(plackett_luce_loss(given_scores, perm, tau=tau)) + 1e-9
    for _ in range(3):  # and below every other arrangement of the same values
        other = values[:]
        rnd.shuffle(other)
        assert best <= float(plackett_luce_loss(torch.tensor(other, dtype=torch.float64), perm, tau=tau)) + 1e-9


EXTREME = (torch.tensor([[3.0e38, -3.0e38, 0.0]], dtype=torch.float64), torch.tensor([[1, 0, 2]]),
           torch.tensor([[True, True, True]]), torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64))


@SETTINGS
@given(windows(extreme=True), st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), taus)
@example(EXTREME, torch.float32, 0.1)  # s/τ alone overflows float32 (the loss was nan before the fix)
def test_finite_loss_and_gradients_for_extreme_logits(batch, dtype, tau):
    scores, perm, mask, teacher = batch
    s = scores.to(dtype)
    s = torch.where(torch.isfinite(s), s, torch.zeros_like(s)).requires_grad_(True)  # bf16/fp16 overflow
    loss = plackett_luce_loss(s, perm, tau=tau, mask=mask, teacher_scores=teacher)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(s.grad.float()).all()


@settings(max_examples=25, deadline=None)
@given(windows(max_n=5), st.sampled_from([0.1, 0.7]), st.booleans())
def test_gradcheck_on_doubles(batch, tau, use_ties):
    scores, perm, mask, teacher = batch
    s = (scores / 5.0).requires_grad_(True)  # |s/τ| ≤ 10: finite differences stay accurate
    fn = lambda x: plackett_luce_loss(x, perm, tau=tau, mask=mask,  # noqa: E731
                                      teacher_scores=teacher if use_ties else None, reduction="none")
    assert torch.autograd.gradcheck(fn, (s,), eps=1e-6, atol=1e-5)


@SETTINGS
@given(windows(), taus, st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30, -3.0]))
def test_padded_documents_neither_count_nor_get_gradient(batch, tau, filler):
    scores, perm, mask, teacher = batch
    a = plackett_luce_loss(scores, perm, tau=tau, mask=mask, teacher_scores=teacher, reduction="none")
    poisoned = torch.where(mask, scores, torch.full_like(scores, filler)).requires_grad_(True)
    t2 = torch.where(mask, teacher, torch.full_like(teacher, filler))
    b = plackett_luce_loss(poisoned, perm, tau=tau, mask=mask, teacher_scores=t2, reduction="none")
    assert b.tolist() == pytest.approx(a.tolist(), rel=1e-12, abs=1e-12)
    b.sum().backward()
    assert (poisoned.grad[~mask] == 0).all() and torch.isfinite(poisoned.grad).all()
    # each window alone, unpadded, gives its padded row's loss
    for k in range(scores.shape[0]):
        real = mask[k].nonzero().flatten()
        if len(real) == 0:
            assert float(a[k]) == 0.0
            continue
        where = {int(d): j for j, d in enumerate(real)}
        alone = plackett_luce_loss(scores[k, real], torch.tensor([where[int(d)] for d in perm[k, :len(real)]]),
                                   tau=tau, teacher_scores=teacher[k, real])
        assert float(alone) == pytest.approx(float(a[k]), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("perm, mask", [
    ([0, 0, 1], None),                        # a document twice
    ([0, 1, 3], None),                        # an index outside the window
    ([0, -1, 1], None),                       # a negative index
    ([0, 2, 0], [True, True, False]),         # names the padded document among the real ones
])
def test_a_non_permutation_is_an_error_not_a_loss(perm, mask):
    s = torch.zeros(3)
    with pytest.raises(ValueError, match="not a permutation"):
        plackett_luce_loss(s, torch.tensor(perm), mask=None if mask is None else torch.tensor(mask))


def test_padding_entries_after_the_real_documents_may_hold_any_index():
    """The documented contract: with m real documents, entries after the first m are ignored — even when
    they name a real document (before the fix that document was counted twice)."""
    s = torch.tensor([[0.5, 0.0, 9.0]])
    mask = torch.tensor([[True, True, False]])
    ref = float(plackett_luce_loss(torch.tensor([0.5, 0.0]), torch.tensor([1, 0])))
    for pad in (0, 1, 2):
        got = float(plackett_luce_loss(s, torch.tensor([[1, 0, pad]]), mask=mask))
        assert got == pytest.approx(ref, rel=1e-12)
