"""Make a random-weights model write a given answer: a logits processor that forces a token sequence.

Random weights never write ``[7] > [3] > …`` on their own; a speed measurement or a stopping test needs a
model that writes a complete answer of realistic length (and, like a chatty model, keeps writing after it).
:class:`ForceTokens` sets every score but the next token of ``sequence`` (per row) to ``-inf``; after the
sequence ends it keeps forcing its last token. The model still runs its full forward pass at every step, so
the timing is the real cost of decoding that many tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

__all__ = ["ForceTokens"]


class ForceTokens(LogitsProcessor):
    """Force row ``r`` to write ``sequences[r]`` (or one sequence for every row). The prompt width is taken
    from the first call of each generation (a new instance per ``generate`` call, or call :meth:`reset`)."""

    def __init__(self, sequences: Sequence[int] | Sequence[Sequence[int]]):
        if sequences and isinstance(sequences[0], int):
            sequences = [sequences]  # type: ignore[list-item]
        self.sequences = [list(s) for s in sequences]  # type: ignore[arg-type]
        self.start: int | None = None

    def reset(self) -> None:
        self.start = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        k = input_ids.shape[1] - self.start
        out = torch.full_like(scores, float("-inf"))
        for r in range(scores.shape[0]):
            seq = self.sequences[r] if len(self.sequences) > 1 else self.sequences[0]
            out[r, seq[min(k, len(seq) - 1)]] = 0.0
        return out
