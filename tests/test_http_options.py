"""HttpOptions: the one options object for the HTTP knobs of RemoteReranker and ChatReranker.

Checked by behaviour, through transports that count attempts and record the headers sent: ``http=`` and the
flat keywords give scorers that behave the same, a flat keyword replaces that field of ``http=``, bad values
are refused with messages that name them (and never show a credential), and the command-line flags of
``mmrank rank`` and ``mmrank serve`` reach the scorer."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import threading
import time

import httpx
import pytest
from mmrank import ChatReranker, HttpOptions, InputError, RemoteError, RemoteReranker, load_reranker
from mmrank.scorers.http import HttpClient
from mmrank.scorers.http_options import add_http_arguments, http_kwargs_from_args
from mmrank_testkit.http_server import Reply, Request, serve

SECRET = "sk-opts-SECRET-0123456789abcdef"
RERANK_URL = "http://127.0.0.1:9/v1/rerank"
CHAT_URL = "http://127.0.0.1:9/v1"


# ------------------------------------------------------------------------------------------- a scripted server
class Script:
    """A MockTransport handler (sync and async) that fails the first ``fail`` requests with ``status`` (and
    ``retry_after``), then answers like a rerank or chat server; records the headers of every request."""

    def __init__(self, kind: str, fail: int = 0, status: int = 503, retry_after: str | None = None):
        self.kind, self.fail, self.status, self.retry_after = kind, fail, status, retry_after
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(request.headers)
        if len(self.headers) <= self.fail:
            extra = {"Retry-After": self.retry_after} if self.retry_after else {}
            return httpx.Response(self.status, json={"detail": "busy"}, headers=extra)
        body = json.loads(request.content)
        if self.kind == "rerank":
            n = len(body["documents"])
            return httpx.Response(200, json={"results": [{"index": i, "relevance_score": i / n} for i in range(n)]})
        return httpx.Response(200, json={"choices": [{"index": 0, "message": {"role": "assistant",
                                                                              "content": "[2] > [1]"}}]})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def build(kind: str, script: Script, **kw):
    """A scorer of ``kind`` ("rerank": RemoteReranker, "chat": ChatReranker) talking to ``script``."""
    t = script.transport()
    if "http" in kw:
        kw["http"] = HttpOptions.merge(kw["http"], transport=t, async_transport=t)
    else:
        kw |= {"transport": t, "async_transport": t}
    if kind == "rerank":
        return RemoteReranker(RERANK_URL, dialect="jina", **kw)
    return ChatReranker(CHAT_URL, "m", **kw)


def observe(kind: str, use_async: bool, script_kw: dict, **kw) -> dict:
    """What a scorer built with ``kw`` does against a fresh script: the outcome, the attempts, the headers."""
    script = Script(kind, **script_kw)
    r = build(kind, script, **kw)
    try:
        ranked = asyncio.run(r.arank("q", ["a", "b"])) if use_async else r.rank("q", ["a", "b"])
        outcome = [x.index for x in ranked]
    except RemoteError as exc:
        outcome = str(exc)
    sent = script.headers[0]
    return {"outcome": outcome, "attempts": len(script.headers), "authorization": sent.get_list("authorization"),
            "tenant": sent.get_list("x-tenant"), "user_agent": sent.get_list("user-agent")}


@pytest.fixture(autouse=True)
def _no_waits(monkeypatch):
    monkeypatch.setattr("mmrank.scorers.http._sleep", lambda s: None)

    async def no_sleep(s):
        return None

    monkeypatch.setattr("mmrank.scorers.http._asleep", no_sleep)
    for name in ("MMRANK_API_KEY", "JINA_API_KEY", "MMRANK_CHAT_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------------------------- http= == flat keywords
KNOBS = [
    # (knobs, what the script does) -> the behaviour the knobs decide
    ({"max_retries": 2, "api_key": SECRET, "headers": {"X-Tenant": "t1"}}, {"fail": 2}),
    ({"max_retries": 1, "headers": {"X-Tenant": "t2", "User-Agent": "mine/1"}}, {"fail": 2}),
    ({"max_retries": 3, "max_retry_after": 1.0}, {"fail": 1, "retry_after": "30"}),
    ({"max_retries": 0}, {"fail": 1, "status": 500}),
]


@pytest.mark.parametrize("kind", ["rerank", "chat"])
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("knobs,script_kw", KNOBS, ids=["retries-key-header", "retries-exhausted-ua",
                                                         "retry-after-cap", "no-retries"])
def test_http_options_and_flat_keywords_give_scorers_that_behave_the_same(kind, use_async, knobs, script_kw):
    flat = observe(kind, use_async, script_kw, **knobs)
    grouped = observe(kind, use_async, script_kw, http=HttpOptions(**knobs))
    assert flat == grouped
    # ... and the behaviour is the one the knobs ask for (not two equal defaults)
    retries, fails = knobs["max_retries"], script_kw["fail"]
    if "retry_after" in script_kw:
        assert flat["attempts"] == 1 and "more than max_retry_after=1s" in flat["outcome"]
    elif retries >= fails:
        assert flat["attempts"] == fails + 1 and flat["outcome"] == [1, 0]
    else:
        assert flat["attempts"] == retries + 1 and f"after {retries + 1} attempt" in flat["outcome"]
    assert flat["authorization"] == ([f"Bearer {SECRET}"] if "api_key" in knobs else [])
    assert flat["tenant"] == [v for k, v in knobs.get("headers", {}).items() if k == "X-Tenant"]
    # a caller's User-Agent replaces ours (one header, whatever the case), else ours is sent
    assert len(flat["user_agent"]) == 1
    assert (flat["user_agent"] == ["mine/1"]) == ("User-Agent" in knobs.get("headers", {}))


@pytest.mark.parametrize("kind", ["rerank", "chat"])
def test_a_flat_keyword_replaces_that_field_of_http(kind):
    http = HttpOptions(max_retries=4, headers={"X-Tenant": "from-http"}, api_key=SECRET)
    # max_retries=0 wins over http's 4: one attempt; the other fields of http still hold
    got = observe(kind, False, {"fail": 1}, http=http, max_retries=0)
    assert got["attempts"] == 1 and "after 1 attempt" in got["outcome"]
    assert got["tenant"] == ["from-http"] and got["authorization"] == [f"Bearer {SECRET}"]
    # a keyword replaces the whole field (headers are not merged)
    got = observe(kind, False, {}, http=http, headers={"X-Other": "1"})
    assert got["tenant"] == [] and got["outcome"] == [1, 0]
    # the scorer keeps what it was given, http= unchanged
    r = build(kind, Script(kind), http=http, max_retries=0, timeout=5)
    assert (r.http.max_retries, r.http.timeout, r.max_concurrency) == (0, 5, 8)
    assert http.max_retries == 4


def test_the_deadline_and_timeout_reach_the_client_through_http():
    def slow(req: Request) -> Reply:
        req.stopping.wait(2.0)
        return Reply(json={"results": []})

    with serve(slow) as srv:
        r = RemoteReranker(srv.url + "/v1/rerank", dialect="jina", http=HttpOptions(timeout=0.3, max_retries=0))
        start = time.monotonic()
        # the read timeout or the whole-attempt limit, whichever fires first on a busy machine
        with pytest.raises(RemoteError, match=r"could not reach .* after 1 attempt: .*(0.3s|timed out)"):
            r.rank("q", ["a"])
        assert time.monotonic() - start < 1.5  # the server would answer after 2 s
        r = RemoteReranker(srv.url + "/v1/rerank", dialect="jina",
                           http=HttpOptions(timeout=0.3, deadline=0.5, max_retries=10), backoff=0.0)
        with pytest.raises(RemoteError, match=r"deadline of 0.5s"):
            r.rank("q", ["a"])
        assert len(srv.requests) <= 4  # 1 + at most ceil(0.5 / 0.3) attempts, not 11


def test_max_concurrency_bounds_the_requests_in_flight():
    state = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def handler(req: Request) -> Reply:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.1)
        with lock:
            state["now"] -= 1
        return Reply(json={"choices": [{"message": {"content": "Yes"}, "logprobs": {"content": [
            {"token": "Yes", "logprob": -0.1, "top_logprobs": [{"token": "Yes", "logprob": -0.1},
                                                               {"token": "No", "logprob": -2.0}]}]}}]})

    with serve(handler) as srv:
        r = ChatReranker(srv.url, "m", method="pairwise", http=HttpOptions(max_concurrency=2, max_retries=0))
        r.rank("q", [f"doc {i}" for i in range(8)])
        assert state["peak"] == 2


# ------------------------------------------------------------------------------------------- credentials
@pytest.mark.parametrize("kind,env", [("rerank", "MMRANK_API_KEY"), ("chat", "MMRANK_CHAT_API_KEY")])
def test_an_authorization_header_wins_over_the_environment_key(kind, env, monkeypatch):
    monkeypatch.setenv(env, "env-key-0123456789")
    got = observe(kind, False, {}, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert got["authorization"] == ["Basic dXNlcjpwYXNz"]  # one header, the caller's
    got = observe(kind, False, {})
    assert got["authorization"] == ["Bearer env-key-0123456789"]
    got = observe(kind, False, {}, api_key="")  # an explicit empty key: none sent, the environment not read
    assert got["authorization"] == []


def test_jina_service_accepts_an_authorization_header_instead_of_a_key():
    with pytest.raises(InputError, match="needs an API key"):
        RemoteReranker()
    r = RemoteReranker(headers={"Authorization": f"Bearer {SECRET}"})
    assert r.url == "https://api.jina.ai/v1/rerank"


def test_repr_never_shows_a_credential():
    opts = HttpOptions(api_key=SECRET, headers={"X-Api-Key": SECRET + "2", "Cookie": "s=" + SECRET, "X-Tenant": "t"})
    text = repr(opts) + str(opts)
    assert SECRET not in text and "api_key=<set>" in text and "'X-Tenant': 't'" in text
    assert "'X-Api-Key': '***'" in text
    assert "api_key=None" in repr(HttpOptions())
    r = RemoteReranker(RERANK_URL, http=opts)
    assert SECRET not in repr(r) and SECRET not in repr(r.http)


# ------------------------------------------------------------------------------------------- validation
BAD = [
    ({"timeout": 0}, "timeout must be a positive number of seconds, got 0"),
    ({"timeout": -1.5}, "timeout must be a positive number"),
    ({"timeout": float("inf")}, "timeout must be a positive number"),
    ({"timeout": float("nan")}, "timeout must be a positive number"),
    ({"timeout": "30"}, r"timeout must be a positive number of seconds, got '30'"),
    ({"timeout": True}, "timeout must be a positive number"),
    ({"timeout": object()}, r"timeout must be a positive number of seconds, an httpx.Timeout or None, got object"),
    ({"deadline": 0}, "deadline must be a positive number of seconds"),
    ({"deadline": float("inf")}, "deadline must be a positive number of seconds"),
    ({"max_retries": -1}, "max_retries must be an integer >= 0, got -1"),
    ({"max_retries": 1.5}, "max_retries must be an integer >= 0"),
    ({"max_retries": True}, "max_retries must be an integer >= 0, got True"),
    ({"backoff": -0.1}, "backoff must be a number of seconds >= 0"),
    ({"backoff": float("nan")}, "backoff must be a number of seconds >= 0"),
    ({"max_backoff": "1"}, "max_backoff must be a number of seconds >= 0"),
    ({"max_retry_after": -1}, "max_retry_after must be a number of seconds >= 0"),
    ({"max_concurrency": 0}, "max_concurrency must be an integer >= 1, got 0"),
    ({"max_concurrency": 2.0}, "max_concurrency must be an integer >= 1"),
    ({"max_response_bytes": 0}, "max_response_bytes must be an integer >= 1"),
    ({"headers": "X-A: 1"}, "headers must be a mapping of header names to values, got str"),
    ({"headers": {"Bad Name": "v"}}, "header name 'Bad Name' is not a valid HTTP field name"),
    ({"headers": {"": "v"}}, "header name '' is not a valid HTTP field name"),
    ({"headers": {"X-A": 1}}, "header 'X-A' must have a string value, got int"),
    ({"headers": {"X-A": "a\r\nInjected: 1"}}, "header 'X-A' has a line break, a control character or a non-ASCII"),
    ({"headers": {"X-A": "café"}}, r"header 'X-A' has .* non-ASCII character in its value 'café' \(HTTP header"),
    ({"api_key": "kéy-0123456789"}, "api_key has .*non-ASCII character"),
    ({"headers": {"X-A": "1", "x-a": "2"}}, "header 'x-a' is given twice"),
    ({"api_key": 123}, "api_key must be a string, got int"),
    ({"api_key": SECRET + "\n"}, "api_key has surrounding whitespace, a line break"),
    ({"api_key": SECRET, "headers": {"authorization": "Basic x"}}, "pass the credential once"),
    ({"verify": None}, "verify must be True, False or an ssl.SSLContext, got NoneType"),
    ({"transport": "http://proxy"}, "transport must be an httpx.BaseTransport, got str"),
    ({"transport": httpx.AsyncHTTPTransport()}, r"got AsyncHTTPTransport \(an async transport goes to async_transport\)"),
    ({"async_transport": httpx.HTTPTransport()}, r"got HTTPTransport \(a sync transport goes to transport\)"),
]


@pytest.mark.parametrize("kw,message", BAD, ids=[f"{next(iter(k))}-{i}" for i, (k, _) in enumerate(BAD)])
def test_bad_values_are_refused_with_a_message_naming_them(kw, message):
    with pytest.raises(InputError, match=message):
        HttpOptions(**kw)
    # the same check and message through each scorer's flat keywords and through the client
    with pytest.raises(InputError, match=message):
        RemoteReranker(RERANK_URL, **kw)
    with pytest.raises(InputError, match=message):
        ChatReranker(CHAT_URL, "m", **kw)
    with pytest.raises(InputError, match=message):
        HttpClient(**kw)


def test_a_secret_header_value_is_not_shown_in_its_error():
    with pytest.raises(InputError) as err:
        HttpOptions(headers={"Authorization": f"Bearer {SECRET}\r\nX-Evil: 1"})
    assert SECRET not in str(err.value) and "value not shown" in str(err.value)
    with pytest.raises(InputError) as err:
        HttpOptions(api_key=f" {SECRET}")
    assert SECRET not in str(err.value)


def test_good_values_are_kept_and_the_options_are_immutable():
    headers = {"X-Tenant": "t"}
    ctx = ssl.create_default_context()
    opts = HttpOptions(timeout=httpx.Timeout(5.0, connect=1.0), deadline=30, headers=headers, verify=ctx)
    headers["X-Tenant"] = "changed"  # the caller's dict is copied
    assert opts.headers == {"X-Tenant": "t"} and opts.verify is ctx
    with pytest.raises(TypeError):
        opts.headers["X-Tenant"] = "x"  # type: ignore[index]
    with pytest.raises(AttributeError):
        opts.timeout = 1  # type: ignore[misc]
    # copies and pickles are equal options (the read-only headers view included)
    import copy
    import pickle

    plain = HttpOptions(api_key=SECRET, headers={"X-Tenant": "t"}, max_retries=1)
    for clone in (copy.copy(plain), copy.deepcopy(plain), pickle.loads(pickle.dumps(plain))):
        assert clone == plain and clone.headers == {"X-Tenant": "t"}
    client = HttpClient(opts)
    assert client.attempt_limit == 5.0 and client.deadline == 30.0
    assert HttpClient(timeout=None).attempt_limit is None
    assert HttpOptions(timeout=None).timeout is None and HttpOptions(verify=False).verify is False


def test_unknown_keywords_and_wrong_http_types_are_refused():
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'timout' \(keyword options are: .*dialect.*"
                                        r"timeout"):
        RemoteReranker(RERANK_URL, timout=5)
    with pytest.raises(TypeError, match=r"'max_pixel'.*max_pixels"):
        ChatReranker(CHAT_URL, "m", max_pixel=5)
    with pytest.raises(InputError, match="http must be an HttpOptions, got dict"):
        RemoteReranker(RERANK_URL, http={"timeout": 5})
    with pytest.raises(InputError, match="http must be an HttpOptions"):
        ChatReranker(CHAT_URL, "m", http=30)
    # http= belongs to the modes that talk to a server
    with pytest.raises(InputError, match="http applies to modes remote, chat, not 'pointwise'"):
        load_reranker("pointwise", http=HttpOptions())
    r = load_reranker("chat", "m", url=CHAT_URL, http=HttpOptions(max_concurrency=3))
    assert r.max_concurrency == 3


# ------------------------------------------------------------------------------------------- command lines
def _ns(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_http_arguments(p)
    return p.parse_args(argv)


def test_http_flags_build_one_http_options():
    assert http_kwargs_from_args(_ns([]), "remote") == {}
    got = http_kwargs_from_args(_ns(["--http-timeout", "7.5", "--http-deadline", "20", "--http-retries", "0",
                                     "--http-concurrency", "2", "--http-header", "X-Tenant: t",
                                     "--http-header", "X-Trace:  a:b "]), "chat")
    assert got == {"http": HttpOptions(timeout=7.5, deadline=20.0, max_retries=0, max_concurrency=2,
                                       headers={"X-Tenant": "t", "X-Trace": "a:b"})}
    with pytest.raises(InputError, match=r"--http-timeout, --http-retries apply to the modes that talk to a server "
                                         r"\(remote, chat\), not listwise"):
        http_kwargs_from_args(_ns(["--http-timeout", "5", "--http-retries", "1"]), "listwise")
    with pytest.raises(InputError, match="--http-header 'x-a' is given twice"):
        HttpOptions.from_args(_ns(["--http-header", "X-A: 1", "--http-header", "x-a: 2"]))
    for bad in (["--http-timeout", "0"], ["--http-retries", "-1"], ["--http-concurrency", "0"],
                ["--http-header", "no colon"], ["--http-timeout", "soon"]):
        with pytest.raises(SystemExit):
            _ns(bad)


def test_mmrank_rank_passes_the_http_flags_to_the_remote_scorer(capsys, monkeypatch):
    from mmrank.cli import main

    monkeypatch.setenv("MMRANK_API_KEY", SECRET)

    def handler(req: Request) -> Reply:
        if req.method == "GET":
            return Reply(404, json={"detail": "Not Found"})
        if len(handler.posts) == 0:
            handler.posts.append(req)
            return Reply(503, json={"detail": "warming up"})
        handler.posts.append(req)
        n = len(req.json()["documents"])
        return Reply(json={"results": [{"index": i, "relevance_score": float(i)} for i in range(n)]})

    handler.posts = []
    with serve(handler) as srv:
        argv = ["rank", "--mode", "remote", "--url", srv.url, "--query", "q", "--text", "alpha", "beta", "--json",
                "--http-header", "X-Tenant: t9"]
        assert main([*argv, "--http-retries", "0"]) == 1
        assert "HTTP 503: warming up (after 1 attempt)" in capsys.readouterr().err
        assert len(handler.posts) == 1
        handler.posts.clear()
        assert main([*argv, "--http-retries", "1"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert [r["index"] for r in out["results"]] == [1, 0]
        assert len(handler.posts) == 2
        assert {p.headers["x-tenant"] for p in handler.posts} == {"t9"}
        assert {p.headers["authorization"] for p in handler.posts} == {f"Bearer {SECRET}"}
    # the flags are refused for a local mode, before any model is loaded
    assert main(["rank", "--query", "q", "--text", "alpha", "--http-timeout", "5"]) == 2
    assert "--http-timeout applies to the modes that talk to a server" in capsys.readouterr().err


def test_mmrank_serve_passes_the_http_flags_and_their_environment_variables_to_the_chat_scorer():
    from mmrank.server.cli import _config, _scorer, parse_args

    seen: list[Request] = []

    def engine(req: Request) -> Reply:
        seen.append(req)
        return Reply(json={"choices": [{"index": 0, "message": {"role": "assistant", "content": "[2] > [1]"}}]})

    with serve(engine) as srv:
        args = parse_args(["--mode", "chat", "--url", srv.url, "--model", "m", "--http-header", "X-Tenant: s1"],
                          environ={"MMRANK_SERVE_HTTP_TIMEOUT": "7", "MMRANK_SERVE_HTTP_CONCURRENCY": "3"})
        scorer = _scorer(args, _config(args))
        assert [x.index for x in scorer.rank("q", ["a", "b"])] == [1, 0]
        assert seen[0].headers["x-tenant"] == "s1"
        assert (scorer.http.timeout, scorer.max_concurrency, scorer.http.max_retries) == (7.0, 3, 3)
    args = parse_args(["--http-retries", "0"], environ={})
    with pytest.raises(InputError, match="--http-retries applies to the modes that talk to a server"):
        _scorer(args, _config(args))
