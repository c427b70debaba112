"""Training objectives: the Plackett–Luce listwise loss of Rank-Nexus and the pairwise yes/no loss.

**Listwise** (Rank-Nexus eq. 4, 8, 9): for scores ``s`` of the ``n`` documents of a window and the teacher's
permutation ``π*`` (best first)::

    L = − Σ_{i=1..n} log( exp(s[π*(i)] / τ) / Σ_{j=i..n} exp(s[π*(j)] / τ) ),   τ = 0.1

**Ties.** When the teacher gives equal scores to documents (an oracle with graded labels puts all
non-relevant documents on one level), the order among them in ``π*`` is arbitrary and must not be learnt.
We use Breslow's rule for tied Plackett–Luce / Cox likelihoods: every member of a tied group that starts at
position ``g`` of ``π*`` uses the same denominator ``Σ_{j ≥ g} exp(s[π*(j)]/τ)`` — the group and everything
after it — so the loss is invariant to reordering inside a group and equals eq. 4 exactly when there are no
ties. ``tie_eps`` (default 0: exact equality) widens what counts as a tie.

The loss is summed over positions (as in the paper) and averaged over the windows of a batch. Padding
(windows of different sizes in one batch) is masked out.

**Pairwise**: the pairwise scorer reads ``P(yes) = softmax(logit_yes, logit_no)[0]``; its training loss is
the binary cross-entropy of that probability against the label, i.e. cross-entropy over the two logits.
"""

from __future__ import annotations

import torch

#: Rank-Nexus' temperature (section 3.3, eq. 8).
DEFAULT_TAU = 0.1


def plackett_luce_loss(scores: torch.Tensor, permutation: torch.Tensor, *, tau: float = DEFAULT_TAU,
                       teacher_scores: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                       tie_eps: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Plackett–Luce negative log-likelihood of the teacher permutation (Rank-Nexus eq. 4).

    Args:
        scores: ``(batch, n)`` or ``(n,)`` model scores ``s_θ(q, d_k)`` in **window order** (document ``k``).
        permutation: same shape, integer: ``permutation[i]`` is the document (window index) the teacher put
            at position ``i`` (best first). With a ``mask`` holding ``m`` real documents in a row, the first
            ``m`` entries must be those documents in teacher order; the entries after them are padding and
            are ignored (any value). A row that is not a permutation of its real documents is a ``ValueError``.
        tau: temperature (> 0).
        teacher_scores: optional ``(batch, n)`` teacher scores in window order; documents whose teacher
            scores are equal (within ``tie_eps``) form tied groups handled by Breslow's rule (module doc).
        mask: optional ``(batch, n)`` bool, True for real documents (in window order); padded documents
            take part neither as numerators nor in denominators.
        reduction: ``"mean"`` over windows, ``"sum"``, or ``"none"`` (per window).

    Computed in float64 after subtracting each window's largest score (the loss does not change when all
    scores of a window move together), so any finite float32/bfloat16/float16 logits give a finite loss.
    The result is float64; gradients flow back in ``scores``' dtype.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    squeeze = scores.dim() == 1
    if squeeze:
        scores, permutation = scores[None], permutation[None]
        teacher_scores = teacher_scores[None] if teacher_scores is not None else None
        mask = mask[None] if mask is not None else None
    if scores.dim() != 2 or permutation.shape != scores.shape:
        raise ValueError(f"scores and permutation must have the same shape (batch, n) or (n,), got "
                         f"{tuple(scores.shape)} and {tuple(permutation.shape)}")
    b, n = scores.shape
    mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.to(scores.device).bool()
    real = mask.sum(1, keepdim=True)                                  # real documents per window
    positions = torch.arange(n, device=scores.device).expand(b, n)
    m = positions < real                                             # real positions of the teacher order
    permutation = torch.where(m, permutation.long().to(scores.device), 0)
    _check_permutation(permutation, m, mask)
    s = torch.gather(scores.double(), 1, permutation)                # scores in teacher order
    s = s.masked_fill(~m, float("-inf"))
    top = s.amax(1, keepdim=True)
    s = (s - torch.where(torch.isfinite(top), top, torch.zeros_like(top)).detach()) / tau
    # log Σ_{j ≥ i} exp(s_j): reverse cumulative logsumexp
    tail = torch.logcumsumexp(s.flip(1), dim=1).flip(1)
    if teacher_scores is not None:
        t = torch.gather(teacher_scores.to(scores.device).double(), 1, permutation)
        # group start g(i): the first position of the run of (teacher-)equal scores that contains i
        starts = positions.clone()
        for i in range(1, n):
            tied = (t[:, i] - t[:, i - 1]).abs() <= tie_eps
            starts[:, i] = torch.where(tied & m[:, i], starts[:, i - 1], starts[:, i])
        tail = torch.gather(tail, 1, starts)
    terms = torch.where(m, tail - s, torch.zeros_like(s))
    per_window = terms.sum(1)
    if reduction == "none":
        return per_window[0] if squeeze else per_window
    if reduction == "sum":
        return per_window.sum()
    return per_window.mean()


def _check_permutation(permutation: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> None:
    """Each row's real positions name each real document exactly once (and nothing else)."""
    n = mask.shape[1]
    inside = ((permutation >= 0) & (permutation < n)) | ~positions
    hits = torch.zeros_like(permutation).scatter_add_(1, permutation.clamp(0, n - 1), positions.long())
    bad = ~inside.all(1) | (hits != mask.long()).any(1)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        real = int(positions[k].sum())
        raise ValueError(f"permutation row {k} is not a permutation of its {real} real documents: "
                         f"{permutation[k, :real].tolist()} (mask {mask[k].tolist()})")


def yes_no_loss(logits: torch.Tensor, yes_id: int, no_id: int, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the pairwise scorer's ``P(yes)`` (from ``(batch, vocab)`` logits at the answer
    position) against 0/1 ``labels``; mean over the batch."""
    pair = torch.stack([logits[:, yes_id], logits[:, no_id]], dim=-1).float()
    target = (1 - labels.long()).to(pair.device)  # class 0 = yes
    return torch.nn.functional.cross_entropy(pair, target)
