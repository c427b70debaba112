"""ChatReranker against hostile or merely odd chat-completions servers.

Every answer ends in one of two ways: a documented repair (every document kept exactly once, scores best
first — generated rankings repaired as the local scorer repairs them, identifiers or answer words outside the
reported ``top_logprobs`` bounded) or a :class:`RemoteError` naming the server and what was wrong. Never a
bare KeyError / TypeError / IndexError, never a NaN score, never a silently wrong ranking.

Property tests (hypothesis) drive generated answers (any text: think blocks, refusals, other languages,
answers cut mid-way), whole bodies of arbitrary JSON, and ``logprobs`` with arbitrary tokens (odd spacing
and casing) and values (NaN, Infinity, strings, null, positive, huge) through the three ways of scoring;
table tests pin each odd shape's message. Secrets a server echoes never reach an error, a log line or
``last_responses``.
"""

from __future__ import annotations

import json
import logging
import math

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmrank import ChatReranker, RemoteError
from mmrank.errors import InputError
from mmrank.ranking.permutation import parse_permutation

URL = "http://chat.test/v1"
ENDPOINT = "http://chat.test/v1/chat/completions"
KEY = "sk-chat/SECRET+0123456789=abcdef"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KINDS = {"generate": {}, "single_pass": {"mode": "single_pass", "prefill": "continue"},
         "no_prefill": {"mode": "single_pass", "prefill": "none"}, "pairwise": {"method": "pairwise"}}


class Scripted:
    def __init__(self):
        self.body: bytes = b"{}"
        self.status = 200
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, content=self.body)


def scripted(kind: str = "generate", **kw) -> tuple[ChatReranker, Scripted]:
    s = Scripted()
    kw = {"max_retries": 0, **KINDS[kind], **kw}
    return ChatReranker(URL, "m", transport=httpx.MockTransport(s), **kw), s


def completion(content=None, logprobs=None, finish="stop", **message):
    return {"id": "x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, **message},
                         "logprobs": None if logprobs is None else {"content": logprobs},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}


def entry(pairs):
    tops = [{"token": t, "logprob": lp} for t, lp in pairs]
    return {**(tops[0] if tops else {"token": "?", "logprob": -1.0}), "top_logprobs": tops}


def raw(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def check_ranking(ranked, n: int) -> None:
    assert sorted(x.index for x in ranked) == list(range(n))
    scores = [x.score for x in ranked]
    assert all(isinstance(v, float) and math.isfinite(v) for v in scores)
    assert all(a >= b for a, b in zip(scores, scores[1:], strict=False))


# ------------------------------------------------------------------------------------------- generate
ANSWER = st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(["[1]", "[2]", "[3]", "[4]", "[9]", "[0]", "[-1]", "[10**30]", " > ", ">", ", ", "[",
                              "]", "<think>", "</think>", "第", "名", "I'm sorry, I can't", "1", "2", "3", "\n",
                              "［２］", "[ 3 ]", "Ranking:", "<|im_end|>"]), max_size=14).map("".join),
)


@FUZZ
@given(answer=ANSWER, finish=st.sampled_from(["stop", "length", None]), n=st.integers(2, 4))
def test_any_generated_answer_is_the_local_parsers_permutation_or_a_clear_error(answer, finish, n):
    r, s = scripted(window_size=4, step=2)
    s.body = raw(completion(answer, finish=finish))
    docs = [f"doc {i}" for i in range(n)]
    if not answer.strip():
        with pytest.raises(RemoteError, match=f"{ENDPOINT} returned an empty answer"):
            r.rank("q", docs)
        return
    ranked = r.rank("q", docs)
    check_ranking(ranked, n)
    assert [x.index for x in ranked] == parse_permutation(answer, [str(i + 1) for i in range(n)])


JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.sampled_from(["choices", "message", "content", "logprobs", "top_logprobs", "token",
                                         "logprob", "usage", "error", "type", "text", "refusal", "x"]),
                        inner, max_size=4),
                    max_leaves=14)


@FUZZ
@given(body=JSON, kind=st.sampled_from(list(KINDS)), status=st.sampled_from([200, 200, 400, 422, 500]))
def test_wrong_json_types_at_every_level_end_in_a_remote_error_or_a_full_ranking(body, kind, status):
    r, s = scripted(kind)
    s.body, s.status = raw(body), status
    try:
        ranked = r.rank("q", ["a", "b", "c"])
    except RemoteError as exc:
        assert ENDPOINT in str(exc)
    else:
        assert status == 200
        check_ranking(ranked, 3)


# ------------------------------------------------------------------------------------------- logprobs
TOKEN = st.sampled_from(["Yes", " Yes", "yes", "YES", "Yes\n", "No", " no", "NO", "Maybe", "[", " [", "[A", "[b",
                         "A", " A", "a", "B", "b ", "C", "D", "", " ", "1"])
LOGPROB = st.one_of(st.floats(min_value=-50, max_value=0), st.just(-9999.0), st.just(0.0),
                    st.sampled_from([float("-inf"), float("inf"), float("nan"), 2.5, 1e-4, "-0.5", None, True,
                                     10 ** 400, -(10 ** 400), [], {}]))


def well_formed(lp) -> bool:
    if isinstance(lp, bool) or not isinstance(lp, (int, float)):
        return False
    try:
        f = float(lp)
    except OverflowError:
        return False
    return not math.isnan(f) and f <= 1e-3


@FUZZ
@given(first=st.lists(st.tuples(TOKEN, LOGPROB), max_size=6), second=st.lists(st.tuples(TOKEN, LOGPROB), max_size=6),
       kind=st.sampled_from(["single_pass", "no_prefill", "pairwise"]))
def test_any_logprobs_give_finite_scores_in_order_or_a_remote_error(first, second, kind):
    r, s = scripted(kind)
    s.body = raw(completion("x", [entry(first), entry(second)]))
    try:
        ranked = r.rank("q", ["a", "b", "c"])
    except RemoteError as exc:
        assert ENDPOINT in str(exc)
        return
    check_ranking(ranked, 3)
    read = first if kind != "no_prefill" else first + second
    assert all(well_formed(lp) for _, lp in read)  # a malformed value was never used silently
    if kind == "pairwise":
        assert all(0.0 <= x.score <= 1.0 for x in ranked)
        tops = {}
        for t, lp in first:
            tops[t] = max(float(lp), tops.get(t, -math.inf))
        if "Yes" in tops and "No" in tops and max(tops["Yes"], tops["No"]) > -math.inf:
            y, n = min(tops["Yes"], 0.0), min(tops["No"], 0.0)  # parity with the local scorer's softmax
            assert ranked[0].score == pytest.approx(math.exp(y) / (math.exp(y) + math.exp(n)))


@pytest.mark.parametrize("value", ["Infinity", "NaN", "2.5", '"-0.5"', "null", "true", "1" + "0" * 400])
@pytest.mark.parametrize("kind", ["single_pass", "no_prefill", "pairwise"])
def test_a_malformed_logprob_is_a_remote_error_naming_the_token(value, kind):
    r, s = scripted(kind)
    tokens = {"pairwise": ("Yes", "No"), "single_pass": ("A", "B"), "no_prefill": ("[A", "[B")}[kind]
    body = json.dumps(completion("x", [entry([(tokens[0], -0.5), (tokens[1], -1.0)])]))
    s.body = body.replace("-0.5", value, 1).encode()
    with pytest.raises(RemoteError, match=f"{ENDPOINT} answered with malformed logprobs: token '.*' has "
                                          "log-probability .* not a number <= 0"):
        r.rank("q", ["a", "b"])


def test_pairwise_edge_values_never_give_nan():
    r, s = scripted("pairwise")
    s.body = raw(completion("Yes", [entry([("Yes", float("-inf")), ("No", float("-inf"))])]))
    with pytest.raises(RemoteError, match="neither 'Yes' nor 'No' .* probability above 0"):
        r.rank("q", ["a"])
    s.body = raw(completion("Yes", [entry([("Yes", -0.2), ("No", float("-inf"))])]))
    assert r.rank("q", ["a"])[0].score == 1.0
    s.body = raw(completion("No", [entry([("No", -9999.0), ("Yes", -9999.0)])]))  # vLLM's floor for -inf
    assert r.rank("q", ["a"])[0].score == pytest.approx(0.5)


def test_an_answer_word_outside_the_top_logprobs_is_bounded_by_the_mass_left_too():
    # Only the sampled token reported (a server that ignores top_logprobs): "No" has at most 1 - P(Yes).
    r, s = scripted("pairwise")
    s.body = raw(completion("Yes", [entry([("Yes", math.log(0.98))])]))
    (x,) = r.rank("q", ["a"])
    assert x.score == pytest.approx(0.98 / (0.98 + 0.02)) and r.stats["answer_word_bounded"] == 1
    s.body = raw(completion("No", [entry([("No", math.log(0.9)), ("Maybe", math.log(0.05))])]))
    assert r.rank("q", ["a"])[0].score == pytest.approx(0.05 / 0.95)  # the smaller bound: the mass left
    s.body = raw(completion("No", [entry([("No", math.log(0.5)), ("Maybe", math.log(0.01))])]))
    assert r.rank("q", ["a"])[0].score == pytest.approx(0.01 / 0.51)  # the smaller bound: the least reported


@pytest.mark.parametrize("yes, no", [(" Yes", " No"), ("yes", "no"), ("YES\n", "NO\n"), ("Yes", " No")])
def test_answer_words_with_odd_spacing_or_casing_are_read(yes, no):
    r, s = scripted("pairwise")
    s.body = raw(completion(yes, [entry([(yes, math.log(0.8)), (no, math.log(0.15))])]))
    assert r.rank("q", ["a"])[0].score == pytest.approx(0.8 / 0.95)
    assert r.stats["token_variants"] == (yes != "Yes") + (no != "No") and r.stats["answer_word_bounded"] == 0
    # Variants of one word add up; an exact token wins over its variants (the local scorer reads that token).
    s.body = raw(completion("yes", [entry([("yes", math.log(0.4)), (" yes", math.log(0.3)), ("No", math.log(0.1))])]))
    assert r.rank("q", ["a"])[0].score == pytest.approx(0.7 / 0.8)
    s.body = raw(completion("Yes", [entry([("Yes", math.log(0.4)), ("yes", math.log(0.3)), ("No", math.log(0.1))])]))
    assert r.rank("q", ["a"])[0].score == pytest.approx(0.4 / 0.5)


@pytest.mark.parametrize("kind, tokens", [("single_pass", [" C", " A", " B"]), ("single_pass", ["c", "a", "b"]),
                                          ("no_prefill", ["[c", "[ A", "[b"])])
def test_identifiers_with_odd_spacing_or_casing_are_read(kind, tokens):
    r, s = scripted(kind, window_size=3, step=3)
    s.body = raw(completion("x", [entry(list(zip(tokens, [-0.1, -1.0, -2.0], strict=True))), entry([])]))
    if tokens[1] == "[ A":  # a space inside the merged token is not a variant: A goes unreported, after the rest
        assert [x.index for x in r.rank("q", ["d0", "d1", "d2"])] == [2, 1, 0]
    else:
        assert [x.index for x in r.rank("q", ["d0", "d1", "d2"])] == [2, 0, 1]


# ------------------------------------------------------------------------------------------- odd shapes
@pytest.mark.parametrize("body, message", [
    ({"choices": []}, "answered with an empty 'choices' list"),
    ({"choices": None}, "answered without 'choices'"),
    ({"choices": {"0": {}}}, "answered without 'choices'"),
    ({"choices": [["x"]]}, r"answered with choices\[0\] a list, not an object"),
    ({"choices": [{"message": "[1] > [2]"}]}, r"choices\[0\].message a str, not an object"),
    ({"choices": [{"message": {"content": 5}}]}, "message content that is not text"),
    ({"choices": [{"message": {"content": [1, 2]}}]}, "message content that is not text"),
    ({"choices": [{"message": {"content": None}}]}, "returned an empty answer"),
    ({"choices": [{}]}, "returned an empty answer"),
    (completion(None, refusal="I can't help with that."), "empty answer .*the model refused: \"I can't help"),
    (completion(None, tool_calls=[{"id": "t", "type": "function", "function": {"name": "rank", "arguments": "{}"}}]),
     "empty answer .*called a tool"),
    (completion(None, finish="length", reasoning_content="<think>[1] vs [2]..."),
     "empty answer .*only reasoning.*enable_thinking.*finish_reason='length'"),
    ({"error": {"message": "model overloaded", "code": 503}}, "HTTP 200 with an error: model overloaded"),
    ({"object": "error", "message": "bad model"}, "without 'choices'"),
])
def test_each_odd_shape_is_a_remote_error_saying_what_was_wrong(body, message):
    r, s = scripted()
    s.body = raw(body)
    with pytest.raises(RemoteError, match=message) as info:
        r.rank("q", ["a", "b"])
    assert str(info.value).startswith(ENDPOINT)


@pytest.mark.parametrize("content, order", [
    ([{"type": "text", "text": "[2] > "}, {"type": "text", "text": "[1]"}], [1, 0]),
    ([{"type": "thinking", "thinking": "[1] > [2]"}, {"type": "text", "text": "[2] > [1]"}], [1, 0]),
    ("<think>first [1] then [2]</think>\n[2] > [1]", [1, 0]),
    ("Die Rangfolge: [2] > [1]", [1, 0]),
])
def test_content_parts_and_think_blocks_give_the_answer_not_the_reasoning(content, order):
    r, s = scripted()
    s.body = raw(completion(content))
    assert [x.index for x in r.rank("q", ["a", "b"])] == order and r.stats["repaired_windows"] == 0


def test_an_answer_cut_at_max_tokens_is_repaired_and_the_log_says_it_was_cut(caplog):
    caplog.set_level(logging.WARNING, "mmrank")
    r, s = scripted()
    s.body = raw(completion("[3] > [", finish="length"))
    ranked = r.rank("q", ["a", "b", "c"])
    assert [x.index for x in ranked] == [2, 0, 1] and r.stats["repaired_windows"] == 1
    assert "finish_reason='length'" in caplog.text
    strict, s2 = scripted(strict=True)
    s2.body = s.body
    with pytest.raises(RemoteError, match="not a ranking of all 3 .*cut at max_tokens.*strict=True"):
        strict.rank("q", ["a", "b", "c"])


@pytest.mark.parametrize("models", [{"data": 5}, {"data": [{"id": ""}, {"id": 7}]}, [1], "x", {"data": None}])
def test_odd_model_listings_are_a_clear_input_error(models):
    transport = httpx.MockTransport(lambda req: httpx.Response(200, content=raw(models)))
    r = ChatReranker(URL, None, max_retries=0, transport=transport)
    with pytest.raises(InputError, match="no model name given .* lists none"):
        r.rank("q", ["a", "b"])


# ------------------------------------------------------------------------------------------- secrets
@FUZZ
@given(pad=st.integers(0, 400), where=st.sampled_from(["content", "strict", "refusal", "error", "token"]))
def test_an_echoed_key_never_reaches_errors_logs_or_last_responses(pad, where, caplog):
    caplog.set_level(logging.DEBUG)
    text = "x" * pad + KEY + " [1]"
    kind = "pairwise" if where == "token" else "generate"
    r, s = scripted(kind, api_key=KEY, strict=where == "strict")
    if where in ("content", "strict"):
        s.body = raw(completion(text))
    elif where == "refusal":
        s.body = raw(completion(None, refusal=text))
    elif where == "error":
        s.body, s.status = raw({"error": {"message": text}}), 401
    else:
        s.body = raw(completion("Sure", [entry([(text, -0.1), ("Maybe", -2.0)])]))
    try:
        r.rank("q", ["a", "b"])
        seen = ""
    except RemoteError as exc:
        seen = " ".join([str(exc), repr(exc), exc.body or ""])
    assert s.requests[0].headers["authorization"] == f"Bearer {KEY}"
    seen += caplog.text + repr(r) + " ".join(r.last_responses)
    for i in range(len(KEY) - 8):
        assert KEY[i:i + 8] not in seen, seen[:300]
