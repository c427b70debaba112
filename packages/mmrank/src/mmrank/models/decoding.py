"""Decoding helpers of the generative scorers: stop each row as soon as its answer is complete.

:class:`TextStop` is a transformers ``StoppingCriteria`` that decodes each row's new tokens after every step
and asks a per-row predicate whether the answer so far is complete (for a listwise window:
:func:`mmrank.ranking.completion.answer_complete`). A finished row stops being extended (transformers pads
it) and generation ends once every row is finished, so a window costs the length of its answer, not the
token budget. Works with batched (left-padded) rows of different windows and with a static KV cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import StoppingCriteria

__all__ = ["TextStop"]


class TextStop(StoppingCriteria):
    """Stop row ``r`` once ``stops[r](text of its new tokens)`` is true (one predicate for all rows, or one
    per row). ``prompt_width``: the padded prompt length (new tokens start there). Rows already stopped stay
    stopped; ``steps[r]`` records how many new tokens row ``r`` had when it stopped (``None``: not stopped)."""

    def __init__(self, tokenizer: Any, prompt_width: int,
                 stops: Callable[[str], bool] | Sequence[Callable[[str], bool]]):
        self.tokenizer = tokenizer
        self.start = int(prompt_width)
        self.stops = stops
        self.done: torch.Tensor | None = None
        self.steps: list[int | None] = []

    def _stop_of(self, row: int) -> Callable[[str], bool]:
        return self.stops if callable(self.stops) else self.stops[row]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        rows, width = input_ids.shape[0], input_ids.shape[1] - self.start
        if self.done is None or self.done.shape[0] != rows:
            self.done = torch.zeros(rows, dtype=torch.bool)
            self.steps = [None] * rows
        todo = [r for r in range(rows) if not self.done[r]]
        if todo:
            texts = self.tokenizer.batch_decode(input_ids[todo, self.start:].cpu(), skip_special_tokens=True)
            for r, text in zip(todo, texts, strict=True):
                if self._stop_of(r)(text):
                    self.done[r] = True
                    self.steps[r] = width
        return self.done.to(input_ids.device).clone()
