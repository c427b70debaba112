"""When a listwise answer is complete: generation may stop there without changing what is parsed.

A window's answer ``[7] > [3] > … > [12]`` is read by :func:`mmrank.ranking.permutation.parse_permutation`:
bracketed identifiers in order of first mention, repaired (unknown ids ignored, duplicates dropped, missing
ids appended). Once an answer names **every** identifier of the window in brackets, anything a model writes
after it can only add later mentions, which the repair drops — so decoding may stop there and the parsed
ranking is the one a full decode would give. :func:`answer_complete` decides that, conservatively:

* only bracketed mentions count (a bare ``3 > 1 > 2`` could still turn into ``… > 20`` or be overridden by
  a later bracketed answer, which the parser prefers);
* the answer must end outside an identifier (its last character is not part of ``[…]`` still open);
* nothing inside an open ``<think>`` block counts (a reasoning model's draft is not its answer), and an
  answer whose prompt opened a think block (``think_open=True``) is complete only after ``</think>``.

The guarantee covers every continuation except one that closes a think block nobody opened (a lone
``</think>`` after the answer makes the parser read everything before it as reasoning); templates that
open the block in the prompt are the case ``think_open`` handles, and the listwise scorer sets it from the
rendered prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .permutation import parse_ranking

__all__ = ["answer_complete"]

_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_BRACKETED = re.compile(r"\[\s*([^\[\]\s]{1,16})\s*\]")


def answer_complete(text: str, identifiers: Sequence[str], *, think_open: bool = False) -> bool:
    """Whether ``text`` (a model's answer so far) already names every identifier in brackets, so that
    generation can stop without changing the parsed ranking.

    Args:
        text: the decoded continuation so far.
        identifiers: the window's identifiers (``["1", "2", …]`` or ``["A", "B", …]``).
        think_open: the prompt ended inside a ``<think>`` block (a reasoning template): only text after
            ``</think>`` is the answer.
    """
    if not identifiers or not isinstance(text, str):
        return False
    if "<" in text or think_open:
        closes = list(_THINK_CLOSE.finditer(text))
        if closes:
            text = text[closes[-1].end():]
        elif think_open:
            return False
        if _THINK_OPEN.search(text):  # a block opened after the answer began: stop only once it is closed
            return False
    tail = text.rstrip()
    if not tail.endswith("]"):  # an identifier may still be open ("[1" before "0]")
        last_open, last_close = tail.rfind("["), tail.rfind("]")
        if last_open > last_close:
            return False
    # every identifier in brackets: the parser reads the bracketed form (its bare-id fallback, which a
    # later bracketed mention could override, is out of play) ...
    index = {x.upper(): i for i, x in enumerate(identifiers)}
    if len({index[m.group(1).upper()] for m in _BRACKETED.finditer(text) if m.group(1).upper() in index}) \
            != len(identifiers):
        return False
    # ... and the parser itself agrees that every identifier is named
    found = set(parse_ranking(text, identifiers))
    found.discard(-1)
    return len(found) == len(identifiers)
