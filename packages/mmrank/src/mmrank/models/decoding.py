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
    stopped; ``steps[r]`` records how many new tokens row ``r`` had when it stopped (``None``: not stopped).
    ``trigger``: the predicate is asked only after a token whose text holds it (default ``"]"``: a listwise
    answer can only become complete when an identifier closes), so most steps decode nothing."""

    def __init__(self, tokenizer: Any, prompt_width: int,
                 stops: Callable[[str], bool] | Sequence[Callable[[str], bool]], *, trigger: str | None = "]"):
        self.tokenizer = tokenizer
        self.trigger = trigger
        self._triggers: dict[int, bool] = {}
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
        todo = [r for r in range(rows) if not self.done[r] and self._may_stop(int(input_ids[r, -1]))]
        if todo:
            texts = self.tokenizer.batch_decode(input_ids[todo, self.start:].cpu(), skip_special_tokens=True)
            for r, text in zip(todo, texts, strict=True):
                if self._stop_of(r)(text):
                    self.done[r] = True
                    self.steps[r] = width
        return self.done.to(input_ids.device).clone()

    def _may_stop(self, token: int) -> bool:
        """Whether the answer can have become complete with this token: only a token that writes
        ``trigger`` (the ``]`` closing an identifier) can complete a listwise answer, so the row's text is
        decoded and checked only then (``trigger=None``: after every token)."""
        if self.trigger is None:
            return True
        hit = self._triggers.get(token)
        if hit is None:
            hit = self._triggers[token] = self.trigger in self.tokenizer.decode([token])
        return hit
