"""Make a random-weights model write a chosen answer: a logits processor for ``generate``.

Random weights never write a ranking by themselves; tests and the listwise benchmark use this to decode a
realistic answer (a complete ``[a] > [b] > …`` permutation, then more text, as a chatty model would)."""

from __future__ import annotations

import torch


class ForceAnswer:
    """Logits processor forcing the token ids ``ids`` one by one after ``start`` prompt tokens (then the
    last one again and again)."""

    def __init__(self, start: int, ids: list[int]):
        if not ids:
            raise ValueError("nothing to force")
        self.start, self.ids = start, list(ids)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(input_ids.shape[1] - self.start, len(self.ids) - 1)
        out = torch.full_like(scores, float("-inf"))
        out[:, self.ids[k]] = 0.0
        return out
