"""Pure algorithms of listwise reranking: sliding windows, identifiers, parsing and repair of rankings.

Nothing here touches a model, so these functions are tested exhaustively (hypothesis) on their own.

* :func:`sliding_windows` — RankGPT's walk: windows of ``window`` candidates, moved ``step`` towards the
  front each time, **from the end of the list to the front**, so that strong candidates found late in
  the list bubble up into the next window (100 candidates, window 20, step 10 → 9 windows,
  ``[80, 100)`` first, ``[0, 20)`` last).
* :func:`rerank_with_windows` — applies a window ranker along that walk to a working order; each window
  only permutes its own slice, so the result is always a permutation of the input.
* :func:`parse_ranking` / :func:`repair_permutation` — read ``[2] > [1] > [3]`` back into positions and
  repair what a model got wrong: unknown or out-of-range identifiers are ignored, duplicates are dropped
  (the first mention wins), identifiers the model left out are appended in their prior order; output
  with no usable identifier falls back to the identity order.
* :func:`escape_identifiers` — rewrites ``[n]``-like patterns inside passage text (``[3]`` → ``(3)``) so
  that the text cannot be mistaken for an identifier, as RankGPT / rank_llm do.
* :func:`rank_scores` — the scores a listwise ranking reports: ``(n - rank) / n``.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable, Sequence

from ..errors import InputError

__all__ = [
    "sliding_windows", "rerank_with_windows", "parse_ranking", "repair_permutation", "parse_permutation",
    "escape_identifiers", "rank_scores", "make_identifiers", "format_ranking",
]

#: Single-pass (FIRST) default identifiers, as rank_llm's FIRST uses: one letter each.
LETTERS = tuple(string.ascii_uppercase)


def default_step(window: int, step: int | None) -> int:
    """``step`` as given, or half the window (at least 1) when ``None`` — RankGPT's 20/10, for any window."""
    if step is None:
        return max(1, window // 2) if isinstance(window, int) and not isinstance(window, bool) else 10
    return step


def sliding_windows(n: int, window: int, step: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` windows of a RankGPT walk over ``n`` candidates, in the order they are ranked.

    The first window is the last ``window`` candidates; each next one ends ``step`` earlier; the walk stops
    with the window that reaches the front, which is cut at position 0 and so may be shorter than
    ``window`` when ``n - window`` is not a multiple of ``step`` (25 candidates, window 20, step 10:
    ``[5, 25)`` then ``[0, 15)``; consecutive windows always overlap by ``window - step``). This is rank_llm's
    walk; RankGPT's original loop stops before that front window (it never reorders ``[0, 5)`` there, nor
    anything when ``n < window``). ``n <= window`` gives one window. Every candidate lies in at least one
    window because ``1 <= step <= window``.
    """
    _check_window(window, step)
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    if n == 0:
        return []
    out: list[tuple[int, int]] = []
    end = n
    while True:
        start = max(0, end - window)
        out.append((start, end))
        if start == 0:
            return out
        end -= step


def _check_window(window: int, step: int) -> None:
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise InputError(f"window_size must be a positive integer, got {window!r}")
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise InputError(f"step must be a positive integer, got {step!r}")
    if step > window:
        raise InputError(f"step ({step}) must not exceed window_size ({window}): candidates between windows "
                         "would never be compared")


def rerank_with_windows(n: int, window: int, step: int,
                        rank_window: Callable[[list[int]], Sequence[int]],
                        on_window: Callable[[], None] | None = None) -> list[int]:
    """Run a sliding-window walk and return the final order (positions ``0..n-1``, best first).

    ``rank_window(items)`` receives the positions currently in a window (in their current order) and
    returns the window's new order as **local** indices into ``items`` (best first). Whatever it returns
    is repaired with :func:`repair_permutation`, so a faulty ranker cannot lose or duplicate a candidate.
    ``on_window`` is called after each window (progress bars).
    """
    order = list(range(n))
    for start, end in sliding_windows(n, window, step):
        items = order[start:end]
        local = repair_permutation(rank_window(list(items)), len(items)) if len(items) > 1 else [0]
        order[start:end] = [items[j] for j in local]
        if on_window is not None:
            on_window()
    return order


def repair_permutation(order: Sequence[object], n: int) -> list[int]:
    """Turn a model's (possibly faulty) order into a permutation of ``range(n)``.

    Entries that are not integers in ``[0, n)`` are ignored, repeated ones keep their first place, and
    positions never mentioned are appended in their prior (ascending) order. An empty or useless input
    yields the identity order."""
    seen: set[int] = set()
    out: list[int] = []
    for x in order:
        if isinstance(x, bool) or not isinstance(x, int):
            continue
        if 0 <= x < n and x not in seen:
            seen.add(x)
            out.append(x)
    out.extend(i for i in range(n) if i not in seen)
    return out


def make_identifiers(kind: str | Sequence[str], n: int) -> list[str]:
    """``n`` identifiers: ``"numbers"`` → ``1..n`` (RankGPT, Rank-Nexus), ``"letters"`` → ``A..`` (FIRST,
    at most 26), or an explicit sequence of distinct, non-empty strings (at least ``n`` of them)."""
    if isinstance(kind, str):
        if kind == "numbers":
            return [str(i + 1) for i in range(n)]
        if kind == "letters":
            if n > len(LETTERS):
                raise InputError(f"letter identifiers cover at most {len(LETTERS)} candidates per window, "
                                 f"but the window holds {n}; lower window_size")
            return list(LETTERS[:n])
        raise InputError(f"identifiers must be 'numbers', 'letters' or a list of strings, got {kind!r}")
    ids = [str(x) for x in kind]
    keys: dict[str, str] = {}
    for x in ids:
        key = identifier_key(x)
        if not x or any(c.isspace() for c in x + key) or "[" in key or "]" in key:
            raise InputError(f"custom identifier {x!r} is empty or holds a space or a bracket; identifiers are "
                             "read back from answers written as [id] > [id]")
        if len(key) > _MAX_ID_CHARS:
            raise InputError(f"custom identifier {x!r} is longer than {_MAX_ID_CHARS} characters")
        if key in keys:
            raise InputError(f"custom identifiers {keys[key]!r} and {x!r} cannot be told apart in an answer "
                             "(answers are read case-insensitively, with Unicode look-alikes folded)")
        keys[key] = x
    if len(ids) < n:
        raise InputError(f"{len(ids)} identifiers given but the window holds {n} candidates")
    return ids[:n]


def format_ranking(identifiers: Sequence[str]) -> str:
    """``["2", "1"]`` → ``"[2] > [1]"``."""
    return " > ".join(f"[{x}]" for x in identifiers)


_MAX_ID_CHARS = 16  # the longest identifier the parser reads between brackets
_BRACKETED = re.compile(r"\[\s*([^\[\]\s]{1,16})\s*\]")
_THINK_TAG = re.compile(r"<(/?)think>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_TRAILING_OPEN = re.compile(r"\[\s*([^\[\]\s]{1,16})\s*$")


def _normalise(text: str) -> str:
    """NFKC folds the digit and bracket look-alikes models emit into ASCII: ``[³]`` → ``[3]``, ``[①]`` →
    ``[1]``, ``［２］`` → ``[2]``, ``⑩`` → ``10``. Text NFKC cannot take (lone surrogates) is kept as it is."""
    try:
        return unicodedata.normalize("NFKC", text)
    except Exception:  # noqa: BLE001 - never let odd model output raise
        return text


def identifier_key(identifier: object) -> str:
    """How an identifier is matched against an answer: NFKC-folded (as the answer is) and upper-cased, so a
    custom identifier such as ``"①"`` is found as ``[①]`` or ``[1]``, and ``[b]`` names ``B``."""
    return _normalise(str(identifier)).upper()


def _answer_part(text: str) -> tuple[str, str]:
    """(the answer, the reasoning) of a model's output: ``<think>…</think>`` blocks are reasoning; an
    unclosed ``<think>`` (output cut while thinking) makes the rest reasoning; text before a lone ``</think>``
    (a template that opened the block in the prompt) is reasoning too.

    One pass over the tags (a block runs from an opening tag to the first closing tag after it; openings
    inside it are part of it): a regular expression ``<think>.*?</think>`` rescans the rest of the text from
    every unclosed opening tag, which took seconds on an answer of a few thousand ``<think>``."""
    thoughts: list[str] = []
    pieces: list[str] = []
    pos, opened_at = 0, -1
    for m in _THINK_TAG.finditer(text):
        if m.group(1) != "/":
            if opened_at < 0:
                opened_at = m.start()
        elif opened_at >= 0:
            thoughts.append(text[opened_at:m.end()])
            pieces += [text[pos:opened_at], " "]
            pos, opened_at = m.end(), -1
    pieces.append(text[pos:])
    answer = "".join(pieces)
    close = list(_THINK_CLOSE.finditer(answer))
    if close:
        thoughts.append(answer[: close[-1].start()])
        answer = answer[close[-1].end():]
    opened = _THINK_OPEN.search(answer)
    if opened:
        thoughts.append(answer[opened.end():])
        answer = answer[: opened.start()]
    return answer, "\n".join(thoughts)


def _to_int(token: str) -> int | None:
    """The number a token of decimal digits writes (any script: "١٢" is 12); ``None`` for anything else —
    ``int`` alone would also read "1_0" as 10 and "+3" as 3."""
    if not token.isdecimal():
        return None
    try:
        return int(token)
    except ValueError:
        return None


def _cut_tail(token: str, found: list[str], index: dict[str, int]) -> str | None:
    """The identifier an answer cut inside its last one ("... > [2") names: ``token`` when it can only be that
    one (no identifier not yet ``found`` is longer and starts with it), else ``None``."""
    key = token.upper()
    seen = {f.upper() for f in found}
    longer = [x for x in index if x != key and x.startswith(key) and x not in seen]
    return token if key in index and not longer else None


_BARE_TOKEN = re.compile(r"[^\s>\[\],;.()]+|[>,]")
_JOINERS = (">", ",")
_ARROW = re.compile(r"[-=]+>")


def _chains(tokens: list[str], known: Callable[[str], bool]) -> list[str]:
    """The words of every run of ``known`` words joined by ``>`` (and ``,``, with at least one ``>``:
    ``3 > 1, 2``), in order."""
    chained: list[str] = []
    run: list[str] = []  # the chain being read; it ends with the last word seen, or is empty
    ranked = False  # whether the run has a ">"

    def flush() -> None:
        if len(run) >= 2 and ranked:
            chained.extend(run)

    for k, tok in enumerate(tokens):
        if tok in _JOINERS:
            continue
        if known(tok) and run and tokens[k - 1] in _JOINERS and tokens[k - 2] not in _JOINERS:
            run.append(tok)  # "<last word> > <tok>" or "<last word>, <tok>"
            ranked = ranked or tokens[k - 1] == ">"
            continue
        flush()
        run, ranked = ([tok] if known(tok) else []), False
    flush()
    return chained


def _bare_words(text: str, index: dict[str, int], exact: set[str], numeric: bool) -> list[str]:
    """Identifiers written without brackets. Chains ``B > A > C`` (or ``b -> a``, ``2 > 1 > 3``) are read
    first, letters in any case. Without a chain, numeric identifiers take every run of digits (RankGPT keeps
    only the digits) and others only words written exactly as an identifier — so neither the "3" of "Ranking
    of 3 passages: 2 > 1 > 3" nor the words "a" and "I" in "Here is a ranking: B > C > A" are identifiers."""
    tokens = _BARE_TOKEN.findall(_ARROW.sub(">", text))
    if numeric:
        return _chains(tokens, str.isdecimal) or re.findall(r"\d+", text)
    return _chains(tokens, lambda w: w.upper() in index) or [w for w in tokens if w in exact and w != ","]


def _candidate_tokens(text: str, index: dict[str, int], numeric: bool, exact: set[str]) -> list[str]:
    """The identifier-like tokens of an answer, in order: bracketed ones if any is usable, else bare ones
    (:func:`_bare_words`); then an identifier cut open at the very end ("... > [2") if it is unambiguous."""
    cut = _TRAILING_OPEN.search(text)
    body = text[:cut.start()] if cut else text
    found = [m.group(1) for m in _BRACKETED.finditer(body)]
    if any(f.upper() in index or (numeric and _to_int(f) is not None) for f in found):
        tokens = found
    else:
        tokens = _bare_words(body, index, exact, numeric)
    tail = _cut_tail(cut.group(1), tokens, index) if cut else None
    return tokens if tail is None else [*tokens, tail]


def _position(token: str, index: dict[str, int], numeric: bool) -> int:
    """The position a token names; ``-1`` for an unknown one ("[07]" is 7; out-of-range numbers are left
    for repair to ignore)."""
    key = token.upper()
    if key in index:
        return index[key]
    if numeric and (value := _to_int(key)) is not None:
        return index.get(str(value), -1)
    return -1


def _mentions(text: str, index: dict[str, int], numeric: bool, exact: set[str]) -> list[int]:
    return [_position(f, index, numeric) for f in _candidate_tokens(text, index, numeric, exact)]


def parse_ranking(text: str, identifiers: Sequence[str]) -> list[int]:
    """Positions mentioned in a model's answer, in order of mention (not yet repaired). Never raises.

    The text is NFKC-normalised first (``[³]``, ``[①]``, full-width ``［２］`` read as ASCII), and
    ``<think>…</think>`` reasoning is set aside: the answer after it is read; only if the answer names no
    identifier is the reasoning's last line that does used (an output cut while thinking). Identifiers in
    brackets (``[2] > [1]``) are read first; an answer cut inside its last identifier (``[3] > [2``) keeps
    it when it is unambiguous (``[3] > [1`` with 12 identifiers may be cut from ``[10]``: not guessed). If the
    answer has no bracketed identifier, bare identifiers are accepted: identifiers chained by ``>`` first
    (``2 > 1 > 3``, ``B > A > C`` or ``b -> a``), else any run of decimal digits for numeric identifiers (as
    RankGPT keeps only the digits) and words written exactly as an identifier for others (so the "3" of
    "Ranking of 3 passages: 2 > 1 > 3" and the "a" of "Here is a ranking: B > C > A" are not identifiers).
    Unknown identifiers map to ``-1`` so that repair can ignore them."""
    if not isinstance(text, str) or not identifiers:
        return []
    text = _normalise(text)
    index = {identifier_key(x): i for i, x in enumerate(identifiers)}
    exact = {_normalise(str(x)) for x in identifiers}
    numeric = all(str(x).isascii() and str(x).isdigit() for x in identifiers)
    answer, thoughts = _answer_part(text)
    out = _mentions(answer, index, numeric, exact)
    if not any(i >= 0 for i in out) and thoughts:
        for line in reversed(thoughts.splitlines()):
            got = _mentions(line, index, numeric, exact)
            if sum(i >= 0 for i in got) >= 2:
                return got
    return out


def parse_permutation(text: str, identifiers: Sequence[str]) -> list[int]:
    """:func:`parse_ranking` followed by :func:`repair_permutation`: always a permutation."""
    return repair_permutation(parse_ranking(text, identifiers), len(identifiers))


# "[" and "]" and every character NFKC folds into one (full-width, vertical presentation forms)
_IDENTIFIER_LIKE = re.compile(r"[\[\uff3b\ufe47]\s*([^\[\]\uff3b\uff3d\ufe47\ufe48\s]{1,16})\s*[\]\uff3d\ufe48]")
_ID_SHAPE = re.compile(r"\d+|[A-Za-z]{1,2}")


def escape_identifiers(text: str) -> str:
    """Rewrite identifier-like patterns in passage text — ``[12]``, ``[B]``, and their look-alikes that the
    parser would read as identifiers (``[³]``, ``[①]``, ``［２］``, ``﹇2﹈``) — as ``(12)``, ``(B)``, ``(³)``, so that
    neither the model nor the parser confuses the text with the identifiers of the prompt."""
    def sub(m: re.Match) -> str:
        inner = m.group(1)
        if _ID_SHAPE.fullmatch(unicodedata.normalize("NFKC", inner)):
            return f"({inner})"
        return m.group(0)

    return _IDENTIFIER_LIKE.sub(sub, text)


def rank_scores(n: int) -> list[float]:
    """Scores of a listwise ranking of ``n`` candidates, best first: ``(n - rank) / n`` with ``rank`` 0-based
    — 1.0 for the first, ``1/n`` for the last, strictly decreasing. They encode **positions**, not
    calibrated relevance: comparable within one ranking only."""
    return [(n - r) / n for r in range(n)]
