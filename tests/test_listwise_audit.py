"""Independent review of the listwise model path on the tiny real Qwen2-VL (random weights, real tokenizer,
real ``from_pretrained``): single-pass (FIRST) identifiers whose first tokens could collide, the mixed
"[x"-merged / "[" + "x" tokenization, windows beyond the single-token identifiers, deterministic ties, and
images interleaved in a window (slots, order, an unreadable image in the middle). Expected values are computed
here from the model and tokenizer directly, not through mmrank."""

from __future__ import annotations

import shutil

import pytest
import torch
from mmrank import ChatReranker, Document, IdentifierTokenError, ImageLoadError, InputError, ListwiseReranker
from mmrank.ranking.permutation import make_identifiers
from mmrank_testkit import sample_image, tiny_model_dir
from mmrank_testkit.answers import ForceTokens
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoTokenizer, LogitsProcessorList

QUERY = "what do pandas eat?"
PASSAGES = [f"passage {i} about {w}" for i, w in enumerate(
    "pandas bamboo market fox dog forest reranker query image photo chart table".split())]

_cache: dict = {}


def _scorer(path, **kw) -> ListwiseReranker:
    key = (str(path), tuple(sorted(kw.items())))
    if key not in _cache:
        _cache[key] = ListwiseReranker(path, device="cpu", dtype="float32", **kw)
    return _cache[key]


def _raw(path):
    key = ("raw", str(path))
    if key not in _cache:
        _cache[key] = (AutoTokenizer.from_pretrained(path),
                       AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval())
    return _cache[key]


def _paper_prompt(tok, passages: list[str], ids: list[str], kind: str) -> str:
    """Rank-Nexus Table 8 text listwise prompt, restated (as in tests/test_listwise.py)."""
    n = len(passages)
    msgs = [{"role": "system", "content": "You are RankGPT, an intelligent assistant that can rank passages based "
                                          "on their relevancy to the query."},
            {"role": "user", "content": f"I will provide you with {n} passages, each indicated by {kind} identifier "
                                        f"[]. Rank the passages based on their relevance to query: {QUERY}."},
            {"role": "assistant", "content": "Okay, please provide the passages."}]
    for x, p in zip(ids, passages, strict=True):
        msgs += [{"role": "user", "content": f"[{x}] {p}"}, {"role": "assistant", "content": f"Received passage [{x}]."}]
    msgs.append({"role": "user", "content": f"Search Query: {QUERY}. Rank the {n} passages above based on their "
                                            f"relevance. The output format should be [] > [], e.g., [{ids[0]}] > "
                                            f"[{ids[1]}]. Only response the ranking results, do not say any word or "
                                            "explain."})
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def _last_logits(model, tok, text: str) -> torch.Tensor:
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float()


def _argsort(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """Copies of the tiny Qwen2-VL: ``merged`` has "[C" as one token (a tokenizer that writes some "[x" as one
    token, as Qwen's does for letters); ``ties`` has the output rows of "A", "B" and "D" set to zero, so
    their logits are exactly equal (0.0) whatever the input."""
    src = tiny_model_dir("lm", "qwen2_vl")
    out = {}
    for name in ("merged", "ties"):
        dst = tmp_path_factory.mktemp(name)
        shutil.copytree(src, dst, dirs_exist_ok=True)
        tok = AutoTokenizer.from_pretrained(src)
        model = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32)
        if name == "merged":
            tok.add_tokens(["[C"])
            model.resize_token_embeddings(len(tok), mean_resizing=False)
        else:
            with torch.no_grad():
                for x in "ABD":
                    model.lm_head.weight[tok.convert_tokens_to_ids(x)] = 0.0
        tok.save_pretrained(dst)
        model.save_pretrained(dst)
        out[name] = dst
    return out


# ---------------------------------------------------------------- single pass: identifier tokens
def test_numeric_identifiers_1_and_10_are_distinct_single_tokens_and_rank_by_their_own_logits():
    """In this tokenizer "10", "11", "12" are single tokens (its corpus holds "[10] > [11] > [12]") while "13"
    is "1" + "3". So "[1" and "[10" begin with different tokens and a 12-document window reads each number's
    own logit; a window of 13 is refused, naming "13" and the largest window that works."""
    path = tiny_model_dir("lm", "qwen2_vl")
    r = _scorer(path, mode="single_pass", identifiers="numbers", window_size=12, step=6)
    tok, model = _raw(path)
    ids = make_identifiers("numbers", 12)
    plan = r.first_token_plan(12)
    assert plan.kinds == ("split",) * 12 and plan.opener_ids == (tok.convert_tokens_to_ids("["),)
    assert list(plan.token_ids) == [tok.convert_tokens_to_ids(x) for x in ids]
    assert tok.convert_tokens_to_ids("1") != tok.convert_tokens_to_ids("10")
    logits = _last_logits(model, tok, _paper_prompt(tok, PASSAGES, ids, "number") + "[")
    expected = _argsort([float(logits[tok.convert_tokens_to_ids(x)]) for x in ids])
    assert [d.index for d in r.rank(QUERY, PASSAGES)] == expected
    with pytest.raises(IdentifierTokenError, match=r"'13'.*\['1', '3'\].*window_size=12 or less"):
        ListwiseReranker(path, device="cpu", dtype="float32", mode="single_pass", identifiers="numbers",
                         window_size=13, step=6)
    with pytest.raises(InputError, match="at most 26"):
        ListwiseReranker(path, device="cpu", dtype="float32", mode="single_pass", window_size=27, step=6)


def test_mixed_merged_and_split_identifier_tokens_compare_first_token_probabilities(variants):
    """A tokenizer that writes "[C" as one token but "[A" as "[" + "A": single pass must compare
    log P("[C") at the answer's start with log P("[") + log P("A" | "["), computed here from two forwards."""
    path = variants["merged"]
    r = _scorer(path, mode="single_pass", window_size=5, step=2)
    tok, model = _raw(path)
    ids = make_identifiers("letters", 5)
    plan = r.first_token_plan(5)
    assert plan.kinds == ("split", "split", "merged", "split", "split") and plan.keep == 2
    prompt = _paper_prompt(tok, PASSAGES[:5], ids, "letter")
    at_start = torch.log_softmax(_last_logits(model, tok, prompt), -1)
    after_open = torch.log_softmax(_last_logits(model, tok, prompt + "["), -1)
    opener = tok.convert_tokens_to_ids("[")
    scores = [float(at_start[tok.convert_tokens_to_ids("[C")]) if x == "C" else
              float(at_start[opener] + after_open[tok.convert_tokens_to_ids(x)]) for x in ids]
    assert [d.index for d in r.rank(QUERY, PASSAGES[:5])] == _argsort(scores)


def test_single_pass_ties_keep_the_windows_current_order(variants):
    """"A", "B" and "D" have exactly equal logits (0.0) in this model: the tie is broken by the position in
    the window's current order, the same on every call."""
    path = variants["ties"]
    r = _scorer(path, mode="single_pass", window_size=5, step=2)
    tok, model = _raw(path)
    ids = make_identifiers("letters", 5)
    for docs in (PASSAGES[:5], PASSAGES[5:10][::-1]):
        logits = _last_logits(model, tok, _paper_prompt(tok, docs, ids, "letter") + "[")
        scores = [float(logits[tok.convert_tokens_to_ids(x)]) for x in ids]
        assert scores[0] == scores[1] == scores[3] == 0.0  # the tie is real
        first = [d.index for d in r.rank(QUERY, docs)]
        assert first == _argsort(scores) == [d.index for d in r.rank(QUERY, docs)]
        assert [i for i in first if i in (0, 1, 3)] == [0, 1, 3]


def test_chat_single_pass_refuses_prefix_identifiers():
    """The local scorer refuses numbers beyond 9 in single pass on a Qwen tokenizer (digits are split, so
    "[1" begins both [1] and [10]); ChatReranker cannot see the tokenizer and reads ``top_logprobs`` by token
    text, so it should refuse identifiers of which one is a prefix of another."""
    with pytest.raises(InputError, match=r"'1' and '10' begin with the same character.*window_size <= 9"):
        ChatReranker("http://127.0.0.1:9/v1", "qwen-vl", method="listwise", mode="single_pass",
                     identifiers="numbers", window_size=12, step=6)
    with pytest.raises(InputError, match="'a' and 'A'|'ab' and 'ac'"):
        ChatReranker("http://127.0.0.1:9/v1", "qwen-vl", method="listwise", mode="single_pass",
                     identifiers=["ab", "ac", "b"], window_size=3, step=1)
    # what works: numbers up to 9, letters up to 26, and generate mode with any numbers
    ChatReranker("http://127.0.0.1:9/v1", "qwen-vl", method="listwise", mode="single_pass",
                 identifiers="numbers", window_size=9, step=4)
    ChatReranker("http://127.0.0.1:9/v1", "qwen-vl", method="listwise", mode="single_pass", window_size=26, step=13)
    ChatReranker("http://127.0.0.1:9/v1", "qwen-vl", method="listwise", mode="generate", window_size=20, step=10)


# ---------------------------------------------------------------- images interleaved in a window
def _img(w: int, h: int, seed: int) -> Image.Image:
    return sample_image(seed, size=(w, h))


def _image_runs(input_ids: torch.Tensor, image_token: int) -> list[int]:
    runs, n = [], 0
    for t in input_ids.tolist():
        if t == image_token:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs + ([n] if n else [])


def _tokens(r: ListwiseReranker, image: Image.Image) -> int:
    t, h, w = r.vlm.image_features(image).grid_thw
    return t * h * w // 4


def test_window_with_image_text_and_mixed_documents_and_an_image_query_holds_each_image_in_its_slot():
    r = _scorer(tiny_model_dir("lm", "qwen2_vl"), window_size=6, step=3)
    q, a, b, c = _img(56, 56, 1), _img(112, 56, 2), _img(168, 56, 3), _img(56, 224, 4)
    docs = [Document(image=a), "plain text", Document(text="a caption", image=b), Document(image=c)]
    conv, ids = r.window_conversation({"text": "this animal", "image": q}, docs)
    assert ids == ["1", "2", "3", "4"] and conv.images == [q, a, b, c]
    prompt = r.vlm.render(conv)
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    assert prompt.count(vision) == 4
    # each image sits inside its own passage turn, in order
    assert prompt.index("relevance to query: " + vision) < prompt.index("[1] Image: " + vision) \
        < prompt.index("[2] Text: plain text") < prompt.index("[3] Text: a caption\nImage: " + vision) \
        < prompt.index("[4] Image: " + vision)
    inputs, _ = r.vlm.encode([prompt], [conv.images])
    expected = [_tokens(r, im) for im in (q, a, b, c)]
    assert len(set(expected)) == 4  # distinct sizes, so the order is visible in the token runs
    assert _image_runs(inputs["input_ids"][0], r.vlm.processor.image_token_id) == expected
    assert [tuple(g) for g in inputs["image_grid_thw"].tolist()] == [r.vlm.image_features(im).grid_thw
                                                                    for im in (q, a, b, c)]


@pytest.mark.parametrize("on_error", ["last", "raise"])
def test_an_unreadable_image_in_the_middle_does_not_shift_the_other_identifiers(monkeypatch, on_error):
    """The model (forced through real ``generate``) answers "[4] > [1] > [3] > [2]" about the window it was
    shown; the unreadable document is not in that window, so [3] is the text+image document after it."""
    r = _scorer(tiny_model_dir("lm", "qwen2_vl"), window_size=8, step=4)
    a, b = _img(56, 56, 5), _img(168, 56, 6)
    docs = [Document(image=a, id="img"), "text one", {"image": b"not an image", "id": "bad"},
            Document(text="caption", image=b, id="mixed"), "text two"]
    seen = []
    real = r.vlm.generate

    def forced(inputs, budget, stop=None, **kw):
        seen.append(r.vlm.tokenizer.decode(inputs["input_ids"][0]))
        seq = r.vlm.token_ids("[4] > [1] > [3] > [2]")
        return real(inputs, len(seq) + 2, stop, logits_processor=LogitsProcessorList([ForceTokens(seq)]), **kw)

    monkeypatch.setattr(r.vlm, "generate", forced)
    if on_error == "raise":
        with pytest.raises(ImageLoadError, match="document 2.*bad"):
            r.rank(_img(56, 56, 7), docs, on_error="raise")
        assert seen == []  # refused before any model work
        return
    ranked = r.rank(_img(56, 56, 7), docs)
    assert [d.index for d in ranked] == [4, 0, 3, 1, 2]
    assert ranked[-1].score is None and "bad" in ranked[-1].error
    assert [d.score for d in ranked[:4]] == [1.0, 0.75, 0.5, 0.25]
    assert r.last_responses == ["[4] > [1] > [3] > [2]"]
    (shown,) = seen
    assert shown.count("Received document [") == 4 and "[5]" not in shown
    assert shown.count("<|vision_start|>") == 3  # the query image, "img" and "mixed"
    assert shown.index("[3] Text: caption\nImage: <|vision_start|>") > shown.index("[2] Text: text one")


def test_generate_walk_with_hostile_answers_keeps_every_document_once(monkeypatch):
    """Real generation forced to write hostile answers, one per window, through the scorer's own walk."""
    r = _scorer(tiny_model_dir("lm", "qwen2_vl"), window_size=4, step=2)
    answers = iter(["[4] > [4] > [9] > [0]", "<think>[1] > [2]</think> ［３］ > [١]", "[2] > [1", "garbage [x]"])
    real = r.vlm.generate

    def forced(inputs, budget, stop=None, **kw):
        seq = r.vlm.token_ids(next(answers))
        return real(inputs, len(seq), None, logits_processor=LogitsProcessorList([ForceTokens(seq)]), **kw)

    monkeypatch.setattr(r.vlm, "generate", forced)
    ranked = r.rank(QUERY, [f"doc {i}" for i in range(8)])
    # windows [4,8) [2,6) [0,4): [4]=7 first; then "[3] > [1]" (think block set aside); then "[2] > [1"
    order = list(range(8))
    for (s, e), local in zip([(4, 8), (2, 6), (0, 4)], [[3, 0, 1, 2], [2, 0, 1, 3], [1, 0, 2, 3]], strict=True):
        items = order[s:e]
        order[s:e] = [items[j] for j in local]
    assert [d.index for d in ranked] == order
    assert sorted(d.index for d in ranked) == list(range(8))
    assert [d.score for d in ranked] == sorted((d.score for d in ranked), reverse=True)
    assert r.last_responses[1] == "<think>[1] > [2]</think> ［３］ > [١]"


def test_an_empty_window_is_a_clear_error():
    """``window_conversation(query, [])`` raised a bare IndexError (the prompt's example ranking)."""
    r = _scorer(tiny_model_dir("lm", "qwen2_vl"), window_size=6, step=3)
    with pytest.raises(InputError, match="at least one document"):
        r.window_conversation(QUERY, [])
    assert r.rank(QUERY, []) == []


@pytest.mark.parametrize("kv_cache", ["static", "dynamic"])
def test_text_stop_stops_each_row_of_a_left_padded_batch_at_its_own_answer(kv_cache):
    """TextStop's claim: rows of different windows (different prompt lengths, left padded) each stop at their
    own complete answer; a stopped row stays stopped while the other goes on; ``steps`` says when."""
    from mmrank.models.decoding import TextStop
    from mmrank.ranking.completion import answer_complete

    r = _scorer(tiny_model_dir("lm", "qwen2_vl"), window_size=6, step=3)
    vlm = r.vlm
    windows = [r.window_conversation(QUERY, PASSAGES[:2]), r.window_conversation(QUERY, PASSAGES[2:7])]
    inputs, lengths = vlm.encode([vlm.render(c) for c, _ in windows], [c.images for c, _ in windows])
    assert lengths[0] != lengths[1]
    answers = ["[2] > [1]", "[5] > [3] > [1] > [2] > [4]"]
    forced = [vlm.token_ids(a + " and then [1] chatter that goes on") for a in answers]
    stop = TextStop(vlm.tokenizer, inputs["input_ids"].shape[1],
                    [lambda t, ids=ids: answer_complete(t, ids) for _, ids in windows])
    out = vlm.generate(inputs, max(map(len, forced)), kv_cache=kv_cache, stopping_criteria=[stop],
                       logits_processor=LogitsProcessorList([ForceTokens(forced)]))
    assert out == answers
    assert stop.steps == [len(vlm.token_ids(a)) for a in answers]


def test_first_token_plan_is_kept_per_opener():
    """``first_token_plan(n, opener)`` cached by ``n`` alone returned the "[" plan when asked for "(" later."""
    r = _scorer(tiny_model_dir("lm", "qwen2_vl"), mode="single_pass", window_size=5, step=2)
    tok, _ = _raw(tiny_model_dir("lm", "qwen2_vl"))
    assert r.first_token_plan(3).opener_ids == (tok.convert_tokens_to_ids("["),)
    assert r.first_token_plan(3, opener="(").opener_ids == (tok.convert_tokens_to_ids("("),)
    assert r.first_token_plan(3).opener_ids == (tok.convert_tokens_to_ids("["),)
