"""Pure listwise algorithms (no model): RankGPT's window walk, parsing and repair of ``[2] > [1]`` answers,
identifier escaping, rank scores. Property tests check that nothing is ever lost or duplicated."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mmrank import InputError
from mmrank.ranking.permutation import (
    escape_identifiers,
    format_ranking,
    make_identifiers,
    parse_permutation,
    parse_ranking,
    rank_scores,
    repair_permutation,
    rerank_with_windows,
    sliding_windows,
)
from mmrank.scorers.listwise import FirstTokenPlan


# ---------------------------------------------------------------- window walking
def test_rankgpt_windows_100_20_10():
    w = sliding_windows(100, 20, 10)
    assert len(w) == 9
    assert w[0] == (80, 100) and w[-1] == (0, 20)
    assert w == [(s, s + 20) for s in range(80, -1, -10)]


@pytest.mark.parametrize("n,window,step,expected", [
    (0, 20, 10, []),
    (1, 20, 10, [(0, 1)]),
    (20, 20, 10, [(0, 20)]),
    (25, 20, 10, [(5, 25), (0, 15)]),
    (30, 20, 10, [(10, 30), (0, 20)]),
    (7, 4, 2, [(3, 7), (1, 5), (0, 3)]),
    (5, 1, 1, [(4, 5), (3, 4), (2, 3), (1, 2), (0, 1)]),
])
def test_windows_small_cases(n, window, step, expected):
    assert sliding_windows(n, window, step) == expected


@pytest.mark.parametrize("window,step", [(0, 1), (3, 0), (2, 3), (-1, 1), (2.0, 1), (True, 1)])
def test_invalid_window_or_step(window, step):
    with pytest.raises(InputError):
        sliding_windows(10, window, step)


@given(n=st.integers(0, 300), window=st.integers(1, 40), data=st.data())
def test_windows_cover_everything_back_to_front(n, window, data):
    step = data.draw(st.integers(1, window))
    ws = sliding_windows(n, window, step)
    covered = set()
    for s, e in ws:
        assert 0 <= s < e <= n and e - s <= window
        covered.update(range(s, e))
    assert covered == set(range(n))
    if ws:
        assert ws[0][1] == n and ws[-1][0] == 0
        assert [e for _, e in ws] == sorted((e for _, e in ws), reverse=True)  # end to front


_junk = st.one_of(st.integers(-5, 60), st.none(), st.text(max_size=3), st.booleans(), st.floats(allow_nan=True))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 120), window=st.integers(1, 30), data=st.data())
def test_any_window_ranker_yields_a_permutation(n, window, data):
    """A window ranker that returns anything (wrong ids, duplicates, junk) cannot lose or duplicate a candidate."""
    step = data.draw(st.integers(1, window))
    answers = data.draw(st.lists(st.lists(_junk, max_size=2 * window), min_size=len(sliding_windows(n, window, step)),
                                 max_size=len(sliding_windows(n, window, step))))
    it = iter(answers)
    seen_windows = []

    def ranker(items):
        seen_windows.append(list(items))
        return next(it)

    order = rerank_with_windows(n, window, step, ranker)
    assert sorted(order) == list(range(n))
    assert all(len(set(w)) == len(w) for w in seen_windows)
    # windows of one candidate never reach the ranker
    assert all(len(w) > 1 for w in seen_windows)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 80), window=st.integers(2, 25), seed=st.integers(0, 10_000), data=st.data())
def test_oracle_ranker_bubbles_the_best_to_the_top(n, window, seed, data):
    step = data.draw(st.integers(1, window - 1))
    rel = list(range(n))
    random.Random(seed).shuffle(rel)

    def oracle(items):  # local order, best first
        return sorted(range(len(items)), key=lambda j: -rel[items[j]])

    order = rerank_with_windows(n, window, step, oracle)
    assert sorted(order) == list(range(n))
    assert rel[order[0]] == n - 1  # the best candidate always ends first
    if n <= window:
        assert [rel[i] for i in order] == sorted(rel, reverse=True)


def test_window_ranker_sees_current_order():
    """Each window is ranked in the order left by the previous (later) window: strong ones bubble up."""
    calls = []

    def reverse(items):
        calls.append(list(items))
        return list(range(len(items)))[::-1]

    order = rerank_with_windows(6, 4, 2, reverse)
    assert calls == [[2, 3, 4, 5], [0, 1, 5, 4]]
    assert order == [4, 5, 1, 0, 3, 2]


# ---------------------------------------------------------------- parsing and repair
NUM5 = make_identifiers("numbers", 5)
LET5 = make_identifiers("letters", 5)


@pytest.mark.parametrize("text,ids,expected", [
    ("[2] > [1] > [3] > [5] > [4]", NUM5, [1, 0, 2, 4, 3]),
    ("[2] > [1] > [3]", NUM5, [1, 0, 2, 3, 4]),  # missing appended in prior order
    ("[2] > [2] > [9] > [0] > [1]", NUM5, [1, 0, 2, 3, 4]),  # duplicate, out of range, zero
    ("[4] > [x] > [2]", NUM5, [3, 1, 0, 2, 4]),  # unknown id ignored
    ("I think 3 > 1 > 2", NUM5, [2, 0, 1, 3, 4]),  # bare digits, as RankGPT keeps
    ("[05] > [1]", NUM5, [4, 0, 1, 2, 3]),
    ("the passages are all great", NUM5, [0, 1, 2, 3, 4]),  # garbage -> identity
    ("", NUM5, [0, 1, 2, 3, 4]),
    ("[C] > [a] > [E]", LET5, [2, 0, 4, 1, 3]),
    ("C > B > Answer", LET5, [2, 1, 0, 3, 4]),
    ("[Z] > [B]", LET5, [1, 0, 2, 3, 4]),
    ("\ufffd\x00[[[]]] >>> ]]", LET5, [0, 1, 2, 3, 4]),
])
def test_parse_and_repair(text, ids, expected):
    assert parse_permutation(text, ids) == expected


def test_parse_ranking_keeps_raw_mentions():
    assert parse_ranking("[3] > [3] > [7]", NUM5) == [2, 2, -1]


def test_repair_permutation_rules():
    assert repair_permutation([3, 3, 1, -1, 7, "2", None, True, 1.0], 5) == [3, 1, 0, 2, 4]
    assert repair_permutation([], 3) == [0, 1, 2]
    assert repair_permutation([0], 0) == []


@given(text=st.text(max_size=200), n=st.integers(1, 26), letters=st.booleans())
def test_parse_any_text_gives_permutation(text, n, letters):
    ids = make_identifiers("letters" if letters else "numbers", n)
    assert sorted(parse_permutation(text, ids)) == list(range(n))


@given(perm=st.permutations(list(range(12))))
def test_format_then_parse_roundtrip(perm):
    ids = make_identifiers("numbers", 12)
    assert parse_permutation(format_ranking([ids[i] for i in perm]), ids) == list(perm)
    lids = make_identifiers("letters", 12)
    assert parse_permutation(format_ranking([lids[i] for i in perm]), lids) == list(perm)


# ---------------------------------------------------------------- identifiers, escaping, scores
def test_make_identifiers():
    assert make_identifiers("numbers", 3) == ["1", "2", "3"]
    assert make_identifiers("letters", 3) == ["A", "B", "C"]
    assert len(make_identifiers("letters", 26)) == 26
    with pytest.raises(InputError, match="at most 26"):
        make_identifiers("letters", 27)
    assert make_identifiers(["x", "y", "z"], 2) == ["x", "y"]
    for bad in (["x", "x"], ["x", ""], ["[x]"], [" x"]):
        with pytest.raises(InputError):
            make_identifiers(bad, 1)
    with pytest.raises(InputError):
        make_identifiers(["x"], 2)
    with pytest.raises(InputError):
        make_identifiers("roman", 2)


def test_escape_identifiers():
    text = "see [3], [ 12 ] and [B] but keep [citation needed] and a[i]"
    out = escape_identifiers(text)
    assert out == "see (3), (12) and (B) but keep [citation needed] and a(i)"
    assert parse_ranking(out, NUM5) == [2, -1]  # no bracketed identifier left: only bare digits 3, 12
    assert parse_ranking(escape_identifiers("[2] > [1]"), make_identifiers("letters", 3)) == []


@given(n=st.integers(1, 500))
def test_rank_scores_monotone(n):
    s = rank_scores(n)
    assert s[0] == 1.0 and s[-1] == pytest.approx(1 / n)
    assert all(a > b for a, b in zip(s, s[1:], strict=False))
    assert all(0 < x <= 1 for x in s)


def test_first_token_plan_scores_mixed_tokenization():
    """Where a tokenizer writes some "[x" as one token and others as "[" + "x", single pass compares
    log P(answer starts with "[x") under each one's own tokens."""
    logits = torch.zeros(2, 10)
    logits[0, 5] = 2.0  # "[" (opener) before
    logits[0, 7] = 3.0  # merged "[A"
    logits[1, 2] = 4.0  # "B" after "["
    plan = FirstTokenPlan(("A", "B", "C"), (5,), (7, 2, 3), ("merged", "split", "split"))
    assert plan.keep == 2 and plan.append_ids == (5,)
    before = torch.log_softmax(logits[0], -1)
    after = torch.log_softmax(logits[1], -1)
    assert plan.scores(logits) == pytest.approx(
        [float(before[7]), float(before[5] + after[2]), float(before[5] + after[3])])
    split = FirstTokenPlan(("A", "B"), (5,), (2, 3), ("split", "split"))
    assert split.keep == 1 and split.scores(logits) == [4.0, 0.0]
    merged = FirstTokenPlan(("A", "B"), (5,), (7, 5), ("merged", "merged"))
    assert merged.append_ids == () and merged.scores(logits[:1]) == [3.0, 2.0]


# ---------------------------------------------------------------- odd model output (issue 11 class 9)
DIGIT_LOOKALIKES = ["³", "①", "⑩", "２", "١", "٣", "۵", "𝟕", "¹", "₂", "Ⅻ", "½", "〇", "߃"]
OUTPUT_PIECES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["[", "]", "［", "］", " > ", ">", "<think>", "</think>", "\n", "[1", "[A", "1]", "[12"]),
    st.sampled_from(DIGIT_LOOKALIKES),
    st.integers(0, 30).map(lambda i: f"[{i}]"),
)


@settings(max_examples=250, derandomize=True, database=None)
@given(pieces=st.lists(OUTPUT_PIECES, max_size=25), n=st.integers(1, 26),
       kind=st.sampled_from(["numbers", "letters", "custom"]))
def test_any_unicode_output_parses_to_a_permutation_and_never_raises(pieces, n, kind):
    ids = [f"p{i}" for i in range(n)] if kind == "custom" else make_identifiers(kind, n)
    text = "".join(pieces)
    mentions = parse_ranking(text, ids)
    assert all(isinstance(i, int) and -1 <= i < n for i in mentions)
    assert sorted(parse_permutation(text, ids)) == list(range(n))


@settings(max_examples=300, derandomize=True, database=None)
@given(text=st.text(alphabet=st.characters(codec=None), max_size=300), n=st.integers(1, 30))
def test_arbitrary_unicode_including_surrogates_never_raises(text, n):
    assert sorted(parse_permutation(text, make_identifiers("numbers", n))) == list(range(n))


@pytest.mark.parametrize("text,expected", [
    ("[³] > [①] > [2]", [2, 0, 1]),  # superscript and circled digits read as their value
    ("［２］ > ［１］", [1, 0]),  # full-width brackets and digits
    ("[١٢] > [2]", [11, 1]),  # Arabic-Indic digits
    ("<think>[5] > [4] first?</think>\n[2] > [1]", [1, 0]),  # reasoning is not the answer
    ("<THINK>hmm</THINK>[3]>[1]", [2, 0]),
    ("<think>draft: [5] > [4] > [3]\nand more", [4, 3, 2]),  # cut while thinking: the last draft
    ("</think>[7] > [6]", [6, 5]),  # block opened in the prompt
    ("[3] > [5] > [2", [2, 4, 1]),  # truncated last identifier, unambiguous
    ("[3] > [5] > [1", [2, 4]),  # "[1" could be 1, 10, 11, 12: not guessed
    ("[3] > [5] > [10] > [11] > [12] > [1", [2, 4, 9, 10, 11, 0]),  # only 1 is left that it can be
])
def test_odd_outputs_parse_as_well_as_they_can(text, expected):
    assert parse_ranking(text, make_identifiers("numbers", 12)) == expected


def test_truncated_letter_identifier():
    assert parse_ranking("[C] > [A] > [B", LET5) == [2, 0, 1]


@settings(max_examples=200, derandomize=True, database=None)
@given(text=st.text(max_size=60), lookalike=st.sampled_from(DIGIT_LOOKALIKES + ["7", "B"]))
def test_escaped_passages_never_read_as_identifiers(text, lookalike):
    """Whatever a passage holds, after escaping it names no bracketed identifier (look-alikes included)."""
    passage = escape_identifiers(f"{text} [{lookalike}] ［{lookalike}］ {text}")
    from mmrank.ranking.permutation import _BRACKETED, _normalise

    for m in _BRACKETED.finditer(_normalise(passage)):
        assert not m.group(1).isdigit() and not (len(m.group(1)) <= 2 and m.group(1).isalpha()), passage
