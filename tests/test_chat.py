"""ChatReranker (listwise / pairwise over POST /v1/chat/completions) against servers on 127.0.0.1.

A fake OpenAI-compatible engine reads the messages it is sent and answers like a model that knows the true
relevance (the number after "doc" in a passage): generated rankings, single-pass identifier logprobs,
yes/no logprobs. Recorded response shapes of vLLM / OpenAI / transformers serve are in
tests/fixtures/chat_completions.json. The real-engine test (transformers serve) is test_chat_engine.py."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import re
import threading
import time
from pathlib import Path

import pytest
from mmrank import ChatReranker, Document, ImagePolicy, RemoteError, load_reranker
from mmrank.errors import InputError
from mmrank.ranking.permutation import format_ranking, rerank_with_windows
from mmrank.scorers.chat import defuse_special_tokens
from mmrank_testkit import sample_image, sample_image_bytes
from mmrank_testkit.http_server import Reply, Request, serve
from PIL import Image

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "chat_completions.json").read_text(encoding="utf-8"))
SECRET = "sk-chat-SECRET-0123456789"
_DOC = re.compile(r"^\[(\w+)\] (?:Text: )?.*?doc (\d+)", re.S)


def relevance(text: str) -> int:
    m = re.search(r"doc (\d+)", text)
    return int(m.group(1)) if m else -1


def window_of(body: dict) -> list[tuple[str, int]]:
    """(identifier, true relevance) of each passage turn of a listwise request."""
    out = []
    for m in body["messages"]:
        text = m["content"] if isinstance(m["content"], str) else "".join(
            p.get("text", "") for p in m["content"] if p["type"] == "text")
        hit = _DOC.match(text) if m["role"] == "user" else None
        if hit:
            out.append((hit.group(1), int(hit.group(2))))
    return out


def completion(content=None, logprobs=None, usage=(100, 5)):
    return {"id": "chatcmpl-x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": {"content": logprobs} if logprobs is not None else None,
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}}


def top(pairs, chosen=None):
    entries = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in pairs]
    first = chosen or entries[0]
    return {**first, "top_logprobs": entries}


class Engine:
    """A fake chat-completions engine that ranks by the true relevance; records bodies and concurrency."""

    def __init__(self, *, logprobs=True, prefill=True, delay=0.0, answer=None):
        self.logprobs, self.prefill, self.delay, self.answer = logprobs, prefill, delay, answer
        self.bodies: list[dict] = []
        self.now = self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, req: Request) -> Reply:
        if req.method == "GET":
            return Reply(json={"object": "list", "data": [{"id": "served-model", "object": "model",
                                                           "owned_by": "vllm"}]})
        body = req.json()
        with self.lock:
            self.bodies.append(body)
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            time.sleep(self.delay)
            return self.reply(body)
        finally:
            with self.lock:
                self.now -= 1

    def reply(self, body: dict) -> Reply:
        if "continue_final_message" in body and not self.prefill:
            return Reply(422, json=FIXTURES["transformers_serve_unexpected_fields"])
        window = window_of(body)
        if window:  # listwise
            ranked = [x for x, _ in sorted(window, key=lambda p: -p[1])]
            if body.get("logprobs") and self.logprobs:
                lps = [(x, -0.5 * k) for k, (x) in enumerate(ranked)]
                if body.get("continue_final_message"):
                    return Reply(json=completion(ranked[0], [top(lps)]))
                return Reply(json=completion("[" + ranked[0], [top([("[", -0.01)]), top(lps)]))
            return Reply(json=completion(self.answer(ranked) if self.answer else format_ranking(ranked)))
        user = body["messages"][-1]["content"]
        text = user if isinstance(user, str) else "".join(p.get("text", "") for p in user if p["type"] == "text")
        p = 1 / (1 + math.exp(-(relevance(text.split("Document")[1] if "Document" in text else text) - 5)))
        if not (body.get("logprobs") and self.logprobs):
            return Reply(json=completion("Yes" if p > 0.5 else "No"))
        return Reply(json=completion("Yes", [top([("Yes", math.log(p)), ("No", math.log(1 - p)), ("yes", -9.0)])]))


def docs(n):
    order = [(i * 7) % n for i in range(n)]  # relevance scrambled against position
    return [f"this is doc {r} about things" for r in order]


# ------------------------------------------------------------------------------------------- listwise
@pytest.mark.parametrize("use_async", [False, True])
async def test_generate_mode_walks_the_local_windows_and_reports_usage(use_async):
    eng = Engine()
    with serve(eng) as srv:
        r = ChatReranker(srv.url, "served-model", window_size=6, step=3, max_retries=0)
        d = docs(14)
        ranked = await r.arank("which doc", d) if use_async else r.rank("which doc", d)
        expected = rerank_with_windows(14, 6, 3, lambda items: sorted(range(len(items)),
                                                                       key=lambda j: -relevance(d[items[j]])))
        assert [x.index for x in ranked] == expected
        assert [x.score for x in ranked] == [(14 - k) / 14 for k in range(14)]
        assert len(eng.bodies) == 4 and r.last_usage.requests == 4 and r.last_usage.total_tokens == 4 * 105
        b = eng.bodies[0]
        assert b["model"] == "served-model" and b["temperature"] == 0.0
        assert b["max_tokens"] == len(format_ranking([str(i) for i in range(1, 7)])) + 8
        assert "logprobs" not in b and "continue_final_message" not in b
        assert all(isinstance(m["content"], str) for m in b["messages"])  # text-only turns stay strings
        assert r.stats["repaired_windows"] == 0 and len(r.last_responses) == 4


@pytest.mark.parametrize("prefill_ok", [True, False])
def test_single_pass_prefills_where_the_engine_can_and_falls_back_where_it_cannot(prefill_ok, caplog):
    caplog.set_level(logging.INFO)
    eng = Engine(prefill=prefill_ok)
    with serve(eng) as srv:
        r = ChatReranker(srv.url + "/v1", "served-model", mode="single_pass", window_size=5, step=2,
                         max_retries=0)
        d = docs(9)
        ranked = r.rank("q", d)
        assert [x.index for x in ranked] == rerank_with_windows(
            9, 5, 2, lambda items: sorted(range(len(items)), key=lambda j: -relevance(d[items[j]])))
        first = eng.bodies[0]
        assert first["continue_final_message"] is True and first["add_generation_prompt"] is False
        assert first["messages"][-1] == {"role": "assistant", "content": "["} and first["max_tokens"] == 1
        assert first["logprobs"] is True and first["top_logprobs"] == 20
        if prefill_ok:
            assert len(eng.bodies) == 3
        else:  # refused once (422 Unexpected fields), then every window asks without prefill
            assert len(eng.bodies) == 4 and "does not continue a pre-filled" in caplog.text
            assert all("continue_final_message" not in b and b["max_tokens"] == 2 for b in eng.bodies[1:])


def test_recorded_vllm_and_openai_logprob_shapes():
    for key, prefill in (("vllm_single_pass", "continue"), ("openai_no_prefill", "none")):
        with serve(lambda req, key=key: Reply(json=FIXTURES[key])) as srv:
            r = ChatReranker(srv.url, "m", mode="single_pass", prefill=prefill, window_size=4, step=2, max_retries=0)
            ranked = r.rank("q", ["w", "x", "y", "z"] if key == "vllm_single_pass" else ["x", "y", "z"])
            if key == "vllm_single_pass":  # C > A > D > B ("1" and " C" are not identifiers)
                assert [x.index for x in ranked] == [2, 0, 3, 1]
            else:  # log P([) + log P(x | [): B > A > C
                assert [x.index for x in ranked] == [1, 0, 2]
    with serve(lambda req: Reply(json=FIXTURES["vllm_generate"])) as srv:
        r = ChatReranker(srv.url, "m", max_retries=0)
        assert [x.index for x in r.rank("q", ["a", "b", "c"])] == [1, 2, 0]
        assert r.last_usage.to_dict() == {"requests": 1, "prompt_tokens": 1123, "completion_tokens": 12,
                                          "total_tokens": 1135}


def test_no_prefill_reads_merged_opener_tokens_and_ignores_what_follows_them():
    # The model's first token is "[B" (opener and identifier merged); position 2 follows "[B", not "[".
    answer = completion("[B] >", [top([("[B", -0.2), ("[C", -1.5), ("[A", -2.5)]),
                                  top([("A", -0.01), ("C", -6.0)])])
    with serve(lambda req: Reply(json=answer)) as srv:
        r = ChatReranker(srv.url, "m", mode="single_pass", prefill="none", window_size=3, step=3, max_retries=0)
        assert [x.index for x in r.rank("q", ["x", "y", "z"])] == [1, 2, 0]


def test_identifiers_outside_the_reported_top_logprobs_keep_their_order_and_are_counted():
    answer = completion("B", [top([("B", -0.1), ("D", -0.9)])])
    with serve(lambda req: Reply(json=answer)) as srv:
        r = ChatReranker(srv.url, "m", mode="single_pass", prefill="continue", window_size=5, step=5, max_retries=0)
        assert [x.index for x in r.rank("q", list("vwxyz"))] == [1, 3, 0, 2, 4]
        assert r.stats["identifiers_not_reported"] == 3
    none = completion("Sure", [top([("Sure", -0.1), ("Here", -0.9)])])
    with serve(lambda req: Reply(json=none)) as srv:
        r = ChatReranker(srv.url, "m", mode="single_pass", prefill="continue", max_retries=0)
        with pytest.raises(RemoteError, match="none of the window's identifiers.*mode='generate'"):
            r.rank("q", ["a", "b"])
        r = ChatReranker(srv.url, "m", mode="single_pass", prefill="none", max_retries=0)
        with pytest.raises(RemoteError, match="began with 'Sure'.*prefill='continue'.*mode='generate'"):
            r.rank("q", ["a", "b"])


@pytest.mark.parametrize("answer, stats, message", [
    ("[3] > [1]", 1, "not a ranking of all 3 identifiers"),  # missing [2]
    ("I think [2] is best, then [2] again, then [7]", 1, "not a ranking"),
    ("no idea", 1, "not a ranking"),
    ("[3] > [1] > [2]", 0, None),
    ("<think>[1] first?</think>[3] > [2] > [1]", 0, None),
])
def test_answers_that_are_not_a_permutation_are_repaired_as_locally_or_refused_when_strict(answer, stats, message):
    with serve(lambda req: Reply(json=completion(answer))) as srv:
        r = ChatReranker(srv.url, "m", max_retries=0)
        from mmrank.ranking.permutation import parse_permutation

        assert [x.index for x in r.rank("q", ["a", "b", "c"])] == parse_permutation(answer, ["1", "2", "3"])
        assert r.stats["repaired_windows"] == stats and r.last_responses == [answer]
        strict = ChatReranker(srv.url, "m", strict=True, max_retries=0)
        if message:
            with pytest.raises(RemoteError, match=message):
                strict.rank("q", ["a", "b", "c"])
        else:
            assert len(strict.rank("q", ["a", "b", "c"])) == 3


# ------------------------------------------------------------------------------------------- pairwise
def test_pairwise_reads_yes_no_from_logprobs_with_bounded_concurrency():
    eng = Engine(delay=0.05)
    with serve(eng) as srv:
        r = ChatReranker(srv.url, "served-model", method="pairwise", max_concurrency=3, max_retries=0)
        d = docs(10)
        ranked = r.rank("query", d)
        assert [x.index for x in ranked] == sorted(range(10), key=lambda i: -relevance(d[i]))
        for x in ranked:
            p = 1 / (1 + math.exp(-(relevance(d[x.index]) - 5)))
            assert x.score == pytest.approx(p, rel=1e-9)
        assert eng.peak == 3 and len(eng.bodies) == 10
        b = eng.bodies[0]
        assert b["max_tokens"] == 1 and b["logprobs"] is True and b["messages"][0]["role"] == "system"
    rec = FIXTURES["vllm_pairwise"]
    with serve(lambda req: Reply(json=rec)) as srv:
        r = ChatReranker(srv.url, "m", method="pairwise", max_retries=0)
        (x,) = r.rank("q", ["a"])
        assert x.score == pytest.approx(math.exp(-0.1053) / (math.exp(-0.1053) + math.exp(-2.3026)))


def test_pairwise_answer_words_outside_the_top_logprobs():
    one = completion("Yes", [top([("Yes", -0.2), ("Maybe", -3.0)])])
    with serve(lambda req: Reply(json=one)) as srv:
        r = ChatReranker(srv.url, "m", method="pairwise", max_retries=0)
        (x,) = r.rank("q", ["a"])
        assert x.score == pytest.approx(math.exp(-0.2) / (math.exp(-0.2) + math.exp(-3.0)))
        assert r.stats["answer_word_bounded"] == 1
    neither = completion("The", [top([("The", -0.2), ("I", -3.0)])])
    with serve(lambda req: Reply(json=neither)) as srv:
        r = ChatReranker(srv.url, "m", method="pairwise", max_retries=0)
        with pytest.raises(RemoteError, match="neither 'Yes' nor 'No'"):
            r.rank("q", ["a"])


@pytest.mark.parametrize("kw", [{"method": "pairwise"}, {"mode": "single_pass"}])
def test_missing_logprobs_is_a_clear_error_naming_the_mode_that_works(kw):
    for answer in (FIXTURES["vllm_no_logprobs"], FIXTURES["transformers_serve_generate"]):
        with serve(lambda req, a=answer: Reply(json=a)) as srv:
            r = ChatReranker(srv.url, "m", max_retries=0, prefill="none", **kw)
            with pytest.raises(RemoteError, match="returned no logprobs.*method='listwise', mode='generate'"):
                r.rank("q", ["a", "b"])


# ------------------------------------------------------------------------------------------- failures
def scripted(*replies):
    it = iter(replies)
    return lambda req: (lambda s: s(req) if callable(s) else s)(next(it))


def test_retries_429_with_retry_after_and_5xx_then_answers():
    ok = Reply(json=completion("[2] > [1]"))
    with serve(scripted(Reply(429, json={"error": {"message": "rate limited"}}, headers={"Retry-After": "0.2"}),
                        Reply(503, body=b"upstream busy", headers={"Content-Type": "text/plain"}), ok)) as srv:
        r = ChatReranker(srv.url, "m", max_retries=2, backoff=0.01)
        start = time.monotonic()
        assert [x.index for x in r.rank("q", ["a", "b"])] == [1, 0]
        assert time.monotonic() - start >= 0.2
    with serve(lambda req: Reply(404, json=FIXTURES["vllm_error_404"])) as srv:
        r = ChatReranker(srv.url, "qwen-vl-ranker-typo", max_retries=3)
        with pytest.raises(RemoteError, match="HTTP 404: The model `qwen-vl-ranker-typo` does not exist.*model name"):
            r.rank("q", ["a", "b"])


def _trickle(req: Request):
    data = json.dumps(completion("[1] > [2]")).encode()
    req.write_head(200, {"Content-Type": "application/json", "Content-Length": str(len(data))})
    req.trickle(data, every=0.05)


def _truncated(req: Request):
    req.write_head(200, {"Content-Type": "application/json", "Content-Length": "400"})
    req.write(json.dumps(completion("[1] > [2]")).encode()[:40])


@pytest.mark.parametrize("handler, message", [
    (_trickle, "no complete answer within 0.5s"),
    (_truncated, "RemoteProtocolError"),
    (lambda req: Reply(200, body=b"<html>gateway login</html>", headers={"Content-Type": "text/html"}), "not JSON"),
    (lambda req: Reply(json={"object": "list", "data": []}), "without 'choices'"),
    (lambda req: Reply(json=completion(None)), "empty answer"),
    (lambda req: Reply(json=completion("   ")), "empty answer"),
    (lambda req: Reply(json=[1, 2]), "JSON list"),
])
def test_broken_answers_are_clear_errors_never_partial_rankings(handler, message):
    with serve(handler) as srv:
        r = ChatReranker(srv.url, "m", timeout=0.5, max_retries=0)
        with pytest.raises(RemoteError, match=message):
            r.rank("q", ["a", "b"])


def test_api_key_from_env_never_shown_and_openai_key_stays_with_openai(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MMRANK_CHAT_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-ONLY-FOR-OPENAI")

    def echo(req: Request) -> Reply:
        return Reply(401, json={"error": {"message": f"bad key {req.headers.get('authorization')}"}})

    with serve(echo) as srv:
        r = ChatReranker(srv.url, "m", max_retries=0)
        assert r.has_api_key and SECRET not in repr(r)
        with pytest.raises(RemoteError) as info:
            r.rank("q", ["a", "b"])
        assert srv.requests[0].headers["authorization"] == f"Bearer {SECRET}"
        assert SECRET not in str(info.value) + (info.value.body or "") + caplog.text
        assert "check the API key" in str(info.value)
        monkeypatch.delenv("MMRANK_CHAT_API_KEY")
        r = ChatReranker(srv.url, "m", max_retries=0)
        with pytest.raises(RemoteError):
            r.rank("q", ["a", "b"])
        assert "authorization" not in srv.requests[-1].headers  # OPENAI_API_KEY is not sent to another host
    assert ChatReranker("https://api.openai.com/v1", "gpt-4o").has_api_key


# ------------------------------------------------------------------------------------------- images
def _png_of(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_images_travel_as_image_url_parts_at_the_pixel_budget(tmp_path):
    big = tmp_path / "page.png"
    Image.new("RGB", (1000, 700), (200, 30, 30)).save(big)
    small = sample_image_bytes(3, size=(56, 84))
    with serve(lambda req: Reply(body=small, headers={"Content-Type": "image/png"})) as img_host:
        png_url = img_host.url + "/page.png"
        eng = Engine()
        with serve(eng) as srv:
            r = ChatReranker(srv.url, "m", max_pixels=64 * 28 * 28, allow_remote_urls=True, max_retries=0)
            ranked = r.rank({"image": sample_image(1), "text": "red"},
                            [Document(text="doc 1 caption", image=big), Document(image=png_url), "doc 3"])
            assert len(ranked) == 3 and all(x.score is not None for x in ranked)
            msgs = eng.bodies[0]["messages"]
            parts = [p for m in msgs if isinstance(m["content"], list) for p in m["content"]]
            urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
            assert len(urls) == 3 and urls[2] == png_url  # query image, local page, remote URL as given
            page = _png_of(urls[1])
            assert page.size == (252, 168) and page.width * page.height <= 64 * 28 * 28  # smart_resize, 28-multiples
            assert page.getpixel((10, 10)) == (200, 30, 30)
            assert msgs[1]["content"][0]["type"] == "text" and msgs[1]["content"][1]["type"] == "image_url"
            assert img_host.requests == []  # the URL was passed on, not fetched
            # Without allow_remote_urls the URL is fetched here, under the policy, and sent as data.
            eng.bodies.clear()
            r = ChatReranker(srv.url, "m", max_retries=0)
            r.rank("q", [Document(image=png_url), "doc 2"])
            assert len(img_host.requests) == 1
            sent = [p["image_url"]["url"] for m in eng.bodies[0]["messages"] if isinstance(m["content"], list)
                    for p in m["content"] if p["type"] == "image_url"]
            assert _png_of(sent[0]).tobytes() == Image.open(io.BytesIO(small)).convert("RGB").tobytes()
            # A policy that refuses private addresses refuses them for the engine too, per document.
            strict = ChatReranker(srv.url, "m", allow_remote_urls=True, image_policy=ImagePolicy.strict(),
                                  max_retries=0)
            ranked = strict.rank("q", [Document(image=png_url), "doc 2"])
            assert ranked[-1].index == 0 and "non-public address" in ranked[-1].error
            broken = tmp_path / "broken.png"
            broken.write_bytes(sample_image_bytes(0)[:50])
            ranked = r.rank("q", [Document(image=broken), "doc 2", Document(image=sample_image_bytes(2))])
            assert [x.index for x in ranked][-1] == 0 and "truncated" in ranked[-1].error
            assert len(img_host.requests) == 1


# ------------------------------------------------------------------------------------------- many queries
async def test_rank_many_and_arank_many_bound_concurrency_and_sum_usage():
    eng = Engine(delay=0.03)
    lists = [(f"query {k}", docs(5 + k % 3)) for k in range(9)]
    with serve(eng) as srv:
        r = ChatReranker(srv.url, "served-model", window_size=20, max_concurrency=4, max_retries=0)
        out = r.rank_many(lists)
        assert eng.peak <= 4 and len(eng.bodies) == 9
        for (_q, d), ranked in zip(lists, out, strict=True):
            assert [x.index for x in ranked] == sorted(range(len(d)), key=lambda i: -relevance(d[i]))
        assert r.last_usage.requests == 9 and r.last_usage.total_tokens == 9 * 105
        eng.peak = 0
        out2 = await r.arank_many(lists, top_n=2)
        assert [[x.index for x in o] for o in out2] == [[x.index for x in o][:2] for o in out]
        assert eng.peak <= 4 and r.last_usage.requests == 9 and r.usage.requests == 18
        with pytest.raises(InputError, match="request 1 must be a"):
            r.rank_many([("q", ["a"]), "not a pair"])
        # no model given: the first one /v1/models lists
        r2 = ChatReranker(srv.url, max_retries=0)
        r2.rank("q", ["a", "b"])
        assert r2.model == "served-model" and eng.bodies[-1]["model"] == "served-model"
        await r.aclose()


def test_settings_are_checked_at_construction():
    for kw, msg in (({"method": "pointwise"}, "method"), ({"method": "pairwise", "mode": "single_pass"}, "mode"),
                    ({"top_logprobs": 21}, "top_logprobs"), ({"prefill": "yes"}, "prefill"),
                    ({"max_concurrency": 0}, "max_concurrency"), ({"window_size": 5, "step": 6}, "step"),
                    ({"model": ""}, "model"), ({"pairwise_prompt": "nope"}, "pairwise_prompt"),
                    ({"mode": "single_pass", "window_size": 27}, "26")):
        with pytest.raises(InputError, match=msg):
            ChatReranker("http://127.0.0.1:1", **{"model": "m", **kw})
    with pytest.raises(InputError, match="http"):
        ChatReranker("ftp://x", "m")
    assert ChatReranker("http://h:8000", "m").url == "http://h:8000/v1/chat/completions"
    assert ChatReranker("http://h:8000/v1/", "m").url == "http://h:8000/v1/chat/completions"
    assert ChatReranker("http://h/api/chat/completions", "m").url == "http://h/api/chat/completions"
    assert defuse_special_tokens("a<|im_end|>b<|x|") == "a< |im_end|>b<|x|"


def test_factory_mode():
    r = load_reranker("chat", "my-lora-adapter", url="http://127.0.0.1:1", method="pairwise", api_key=SECRET)
    assert isinstance(r, ChatReranker) and r.model == "my-lora-adapter" and r.method == "pairwise" and r.has_api_key
    r = load_reranker("chat", "m", url="http://127.0.0.1:1", mode="single_pass")
    assert r.mode == "single_pass"
    with pytest.raises(InputError, match="device applies to modes"):
        load_reranker("chat", "m", device="cpu")


def test_async_requests_run_on_the_event_loop():
    eng = Engine()

    async def main(url):
        r = ChatReranker(url, "m", method="pairwise", max_concurrency=2, max_retries=0)
        loop_thread = threading.current_thread()
        seen = []
        orig = r._http.asend

        async def spy(*a, **k):
            seen.append(threading.current_thread())
            return await orig(*a, **k)

        r._http.asend = spy
        out = await r.arank("q", docs(4))
        await r.aclose()
        return out, seen, loop_thread

    with serve(eng) as srv:
        out, seen, loop_thread = asyncio.run(main(srv.url))
    assert len(out) == 4 and len(seen) == 4 and all(t is loop_thread for t in seen)


# ------------------------------------------------------------------------------------------- local agreement
def test_chat_messages_equal_the_local_scorers_prompt_turns(tmp_path):
    """The same window / pair gives the same turns as the local ListwiseReranker / PairwiseReranker, images
    being the local image at the size the model's processor resizes it to."""
    from mmrank import ListwiseReranker, PairwiseReranker
    from mmrank.scorers.chat import fit_size
    from mmrank_testkit import tiny_model_dir

    path = tiny_model_dir("lm", "qwen2_vl")
    local_lw = ListwiseReranker(path, device="cpu", dtype="float32")
    local_pw = PairwiseReranker(path, device="cpu", dtype="float32")
    proc = local_lw.vlm.processor
    for w, h in [(1, 1), (13, 900), (28, 28), (1000, 700), (640, 480), (3000, 20), (57, 55), (4000, 4000)]:
        assert fit_size(w, h, 28, proc.min_pixels, proc.max_pixels) == proc.resized_size(w, h)
    page = tmp_path / "page.png"
    Image.new("RGB", (900, 500), (10, 120, 240)).save(page)
    q = {"text": "what about {query} and [2]?", "image": sample_image(4)}
    window = ["plain text <|im_end|> with [3] inside", Document(text="caption", image=page),
              Document(image=sample_image_bytes(5)), "  spaced   words  " * 3]
    chat_lw = ChatReranker("http://127.0.0.1:1", "m", min_pixels=proc.min_pixels, max_pixels=proc.max_pixels)

    def expected_url(im: Image.Image, budget) -> str:
        size = budget.resized_size(*im.size)
        im = im.resize(size, Image.Resampling.BICUBIC) if size != im.size else im
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    conv, ids = local_lw.window_conversation(q, window)
    sent, sent_ids = chat_lw.window_messages(q, window)
    assert sent_ids == ids
    assert sent == conv.openai_messages(image_url=lambda im: expected_url(im, proc))
    assert sum(isinstance(m["content"], list) for m in sent) == 3  # query turn and two image passages
    pproc = local_pw.vlm.processor
    chat_pw = ChatReranker("http://127.0.0.1:1", "m", method="pairwise", min_pixels=pproc.min_pixels,
                           max_pixels=pproc.max_pixels)
    for d in window:
        local = local_pw.conversation(q, d).openai_messages(image_url=lambda im: expected_url(im, pproc))
        assert chat_pw.pair_messages(q, d) == local
