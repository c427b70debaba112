"""The Plackett–Luce loss against the paper's formula (Rank-Nexus eq. 4, τ = 0.1), computed by hand."""

import math

import pytest
import torch

pytest.importorskip("peft")  # the train extra

from mmrank.train.loss import plackett_luce_loss, yes_no_loss  # noqa: E402


def pl_by_hand(s, perm, tau):
    """Eq. 4 written out: −Σ_i log(exp(s[π(i)]/τ) / Σ_{j≥i} exp(s[π(j)]/τ))."""
    total = 0.0
    for i in range(len(perm)):
        num = math.exp(s[perm[i]] / tau)
        den = sum(math.exp(s[perm[j]] / tau) for j in range(i, len(perm)))
        total -= math.log(num / den)
    return total


def test_three_documents_hand_computed():
    s = [0.3, 0.1, 0.2]
    perm = [0, 2, 1]  # teacher: d0 > d2 > d1
    # by hand with τ = 0.1: exp(3), exp(2), exp(1) → −log(e³/(e³+e²+e¹)) − log(e²/(e²+e¹)) − log(1)
    expected = -math.log(math.e**3 / (math.e**3 + math.e**2 + math.e)) - math.log(math.e**2 / (math.e**2 + math.e))
    assert expected == pytest.approx(math.log(1 + math.exp(-1) + math.exp(-2)) + math.log(1 + math.exp(-1)))
    assert expected == pytest.approx(0.72086765, abs=1e-8)
    got = plackett_luce_loss(torch.tensor(s), torch.tensor(perm))
    assert float(got) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("tau", [0.1, 1.0, 0.5])
def test_matches_formula_random(tau):
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 5, 8):
        s = torch.randn(n, generator=g)
        perm = torch.randperm(n, generator=g)
        got = float(plackett_luce_loss(s, perm, tau=tau))
        assert got == pytest.approx(pl_by_hand(s.tolist(), perm.tolist(), tau), rel=1e-5, abs=1e-6)


def test_tau_scales_scores():
    s, perm = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([1, 2, 0])
    assert float(plackett_luce_loss(s, perm, tau=0.1)) == pytest.approx(
        float(plackett_luce_loss(s * 10, perm, tau=1.0)), rel=1e-6)
    with pytest.raises(ValueError):
        plackett_luce_loss(s, perm, tau=0.0)


def test_ties_use_breslow_risk_sets_and_ignore_order_inside_a_group():
    s = [2.0, 1.0, 0.5, 0.0]
    teacher = torch.tensor([1.0, 0.0, 0.0, 0.0])  # d0 relevant, d1..d3 tied
    tau = 0.1
    e = [math.exp(x / tau) for x in s]
    # position 0: d0 over all; tied group {d1,d2,d3} all share the risk set {d1,d2,d3}
    expected = -math.log(e[0] / sum(e)) - sum(math.log(e[k] / (e[1] + e[2] + e[3])) for k in (1, 2, 3))
    for perm in ([0, 1, 2, 3], [0, 3, 1, 2], [0, 2, 3, 1]):
        got = float(plackett_luce_loss(torch.tensor(s), torch.tensor(perm), teacher_scores=teacher))
        assert got == pytest.approx(expected, rel=1e-6)
    # without tie information the order inside the group matters (plain eq. 4)
    assert float(plackett_luce_loss(torch.tensor(s), torch.tensor([0, 1, 2, 3]))) == pytest.approx(
        pl_by_hand(s, [0, 1, 2, 3], tau), rel=1e-5, abs=1e-6)
    # no ties in the teacher scores → exactly eq. 4
    distinct = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert float(plackett_luce_loss(torch.tensor(s), torch.tensor([0, 1, 2, 3]), teacher_scores=distinct)) == \
        pytest.approx(pl_by_hand(s, [0, 1, 2, 3], tau), rel=1e-5, abs=1e-6)


def test_batch_with_padding_masks_padded_documents():
    s1, p1 = [0.2, -0.1, 0.4], [2, 0, 1]
    s2, p2 = [0.5, 0.0], [1, 0]
    scores = torch.tensor([s1, s2 + [99.0]])
    perm = torch.tensor([p1, p2 + [2]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    got = plackett_luce_loss(scores, perm, mask=mask, reduction="none")
    assert got.tolist() == pytest.approx([pl_by_hand(s1, p1, 0.1), pl_by_hand(s2, p2, 0.1)], rel=1e-5)
    assert float(plackett_luce_loss(scores, perm, mask=mask)) == pytest.approx(float(got.mean()), rel=1e-6)


def test_gradient_prefers_the_teacher_order():
    s = torch.zeros(3, requires_grad=True)
    plackett_luce_loss(s, torch.tensor([2, 0, 1])).backward()
    assert s.grad[2] < s.grad[0] < s.grad[1]  # descending the loss raises d2 most, lowers d1


def test_yes_no_loss_is_cross_entropy_of_p_yes():
    logits = torch.zeros(2, 10)
    logits[0, 3], logits[0, 4] = 2.0, 0.0   # yes=3, no=4
    logits[1, 3], logits[1, 4] = 0.0, 1.0
    labels = torch.tensor([1, 0])
    p0 = 1 / (1 + math.exp(-2.0))
    p1_no = 1 / (1 + math.exp(-1.0))
    expected = (-math.log(p0) - math.log(p1_no)) / 2
    assert float(yes_no_loss(logits, 3, 4, labels)) == pytest.approx(expected, rel=1e-6)
