"""The shared HTTP layer (mmrank.scorers.http) against real servers on 127.0.0.1: an Infinity-shaped
rerank server (dialect detection must switch the endpoint to /rerank), servers that trickle their answer or
their headers (whole-attempt timeout and overall deadline, sync and async), servers that echo the
credentials back in error bodies (redaction everywhere), Retry-After, 5xx and truncated answers."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
import pytest
from mmrank import RemoteError, RemoteReranker
from mmrank.scorers.http import HttpClient, Redactor, redact_url, retry_after
from mmrank_testkit.http_server import Reply, Request, serve

SECRET = "sk-live-SECRET-0123456789abcdef"


def rerank_answer(req: Request) -> Reply:
    docs = req.json()["documents"]
    results = [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(len(docs))]
    return Reply(json={"object": "rerank", "results": results, "usage": {"total_tokens": 7}})


# ------------------------------------------------------------------------------------------- dialects
def infinity(req: Request) -> Reply:
    """Paths and shapes of a default Infinity server: /models and /rerank, nothing under /v1."""
    if req.method == "GET" and req.path == "/models":
        return Reply(json={"object": "list", "data": [{"id": "mxbai-rerank", "owned_by": "infinity",
                                                       "backend": "torch", "capabilities": ["rerank"]}]})
    if req.method == "POST" and req.path == "/rerank":
        body = req.json()
        assert all(isinstance(d, str) for d in body["documents"])
        results = [{"relevance_score": 0.1 * (i + 1), "index": i, "document": d}
                   for i, d in enumerate(body["documents"])]
        return Reply(json={"object": "rerank", "data": results[::-1], "model": "mxbai-rerank",
                           "usage": {"prompt_tokens": 9, "total_tokens": 9}})
    return Reply(404, json={"detail": "Not Found"})


@pytest.mark.parametrize("use_async", [False, True])
async def test_auto_detected_infinity_is_sent_to_its_own_path(use_async):
    with serve(infinity) as srv:
        r = RemoteReranker(srv.url, max_retries=0)
        ranked = await r.arank("q", ["a", "b", "c"]) if use_async else r.rank("q", ["a", "b", "c"])
        assert r.dialect == "infinity" and r.url == srv.url + "/rerank"
        assert [x.index for x in ranked] == [2, 1, 0]
        assert srv.paths("POST") == ["/rerank"]
        assert srv.paths("GET") == ["/v1/models", "/models"]
        # A path the caller wrote is kept as written, whatever the dialect.
        r2 = RemoteReranker(srv.url + "/v1/rerank", max_retries=0)
        with pytest.raises(RemoteError, match="HTTP 404.*check the URL"):
            r2.rank("q", ["a"])
        assert r2.dialect == "infinity"
        await r.aclose()


# ------------------------------------------------------------------------------------------- time limits
def trickle_body(req: Request) -> None:
    body = json.dumps({"results": [{"index": 0, "relevance_score": 0.5}]}).encode()
    req.write_head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))})
    req.trickle(body, every=0.1)


def trickle_head(req: Request) -> None:
    req.trickle(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: " + b"x" * 200, every=0.1)


@pytest.mark.parametrize("handler", [trickle_body, trickle_head], ids=["body", "headers"])
@pytest.mark.parametrize("use_async", [False, True])
async def test_a_trickling_server_cannot_stretch_the_timeout(handler, use_async):
    with serve(handler) as srv:
        r = RemoteReranker(srv.url + "/v1/rerank", dialect="jina", timeout=0.6, max_retries=0)
        start = time.monotonic()
        with pytest.raises(RemoteError, match=r"could not reach .* after 1 attempt: no complete answer within 0.6s"):
            if use_async:
                await r.arank("q", ["a"])
            else:
                r.rank("q", ["a"])
        took = time.monotonic() - start
        assert 0.5 < took < 1.2, took  # the trickle would take ~5 s (body) / ~25 s (headers)


@pytest.mark.parametrize("use_async", [False, True])
async def test_the_deadline_bounds_retries_and_waits(use_async):
    with serve(trickle_body) as srv:
        r = RemoteReranker(srv.url + "/v1/rerank", dialect="jina", timeout=0.6, deadline=1.5, max_retries=50,
                           backoff=0.01)
        start = time.monotonic()
        with pytest.raises(RemoteError, match="deadline of 1.5s"):
            if use_async:
                await r.arank("q", ["a"])
            else:
                r.rank("q", ["a"])
        took = time.monotonic() - start
        assert 1.3 < took < 2.0, took
        assert 2 <= len(srv.requests) <= 4  # attempts of 0.6 s each (the last cut short) in 1.5 s


def test_a_retry_after_beyond_the_deadline_fails_at_once():
    with serve(lambda req: Reply(503, json={"detail": "busy"}, headers={"Retry-After": "5"})) as srv:
        r = RemoteReranker(srv.url + "/v1/rerank", dialect="jina", deadline=2.0, max_retries=3)
        start = time.monotonic()
        with pytest.raises(RemoteError, match=r"HTTP 503: busy \(within the deadline of 2s \(1 attempt\)\)"):
            r.rank("q", ["a"])
        assert time.monotonic() - start < 1.0 and len(srv.requests) == 1


# ------------------------------------------------------------------------------------------- retries
def scripted(*replies):
    it = iter(replies)

    def handler(req: Request):
        step = next(it)
        return step(req) if callable(step) else step

    return handler


def truncated(req: Request) -> None:
    req.write_head(200, {"Content-Type": "application/json", "Content-Length": "500"})
    req.write(b'{"results": [{"index": 0, "rel')


@pytest.mark.parametrize("use_async", [False, True])
async def test_429_with_retry_after_5xx_and_truncated_answers_are_retried(use_async):
    with serve(scripted(Reply(429, json={"detail": "slow down"}, headers={"Retry-After": "0.3"}),
                        Reply(502, body=b"<html>bad gateway</html>", headers={"Content-Type": "text/html"}),
                        truncated, rerank_answer)) as srv:
        r = RemoteReranker(srv.url + "/v1/rerank", dialect="jina", max_retries=3, backoff=0.01)
        start = time.monotonic()
        ranked = await r.arank("q", ["a", "b"]) if use_async else r.rank("q", ["a", "b"])
        assert [x.index for x in ranked] == [0, 1] and r.last_usage == 7
        assert len(srv.requests) == 4 and time.monotonic() - start >= 0.3  # Retry-After honoured


def test_truncated_and_non_json_answers_end_in_clear_errors():
    with serve(truncated) as srv:
        r = RemoteReranker(srv.url + "/v1/rerank", dialect="jina", max_retries=1, backoff=0.01)
        with pytest.raises(RemoteError, match="after 2 attempts: RemoteProtocolError"):
            r.rank("q", ["a"])
    with serve(lambda req: Reply(200, body=b"<html>login</html>", headers={"Content-Type": "text/html"})) as srv:
        r = RemoteReranker(srv.url + "/v1/rerank", dialect="jina", max_retries=1)
        with pytest.raises(RemoteError, match="not JSON.*login"):
            r.rank("q", ["a"])
        assert len(srv.requests) == 1  # a 200 that is not JSON is not retried


# ------------------------------------------------------------------------------------------- secrets
def echo_headers(status: int):
    """An error page that echoes the request's headers and URL back — as some proxies and debug servers do."""
    def handler(req: Request) -> Reply:
        text = json.dumps({"detail": f"bad request {req.path} headers={req.headers}",
                           "debug": {"auth": req.headers.get("authorization"), "key": req.headers.get("x-api-key")}})
        return Reply(status, body=text.encode())
    return handler


@pytest.mark.parametrize("status", [400, 401, 500])
@pytest.mark.parametrize("use_async", [False, True])
async def test_secrets_echoed_by_the_server_never_reach_errors_or_logs(status, use_async, caplog):
    caplog.set_level(logging.DEBUG)
    other = "tenant-key-ABCDEFGHIJ"
    with serve(echo_headers(status)) as srv:
        url = srv.url + "/v1/rerank?api_key=QUERYSECRET1"
        r = RemoteReranker(url, dialect="jina", api_key=SECRET, headers={"X-API-Key": other}, max_retries=1,
                           backoff=0.01)
        with pytest.raises(RemoteError) as info:
            if use_async:
                await r.arank("q", ["a"])
            else:
                r.rank("q", ["a"])
        assert srv.requests[0].headers["authorization"] == f"Bearer {SECRET}"
        assert srv.requests[0].headers["x-api-key"] == other and "QUERYSECRET1" in srv.requests[0].path
        seen = " ".join([str(info.value), info.value.body or "", repr(info.value), caplog.text, repr(r)])
        for secret in (SECRET, other, "QUERYSECRET1"):
            assert secret not in seen
        assert f"HTTP {status}" in str(info.value) and "***" in str(info.value)
        # User info in the URL travels as HTTP Basic credentials: masked as well, in either form.
        url = srv.url.replace("http://", "http://alice:pw-XYZ-123@") + "/v1/rerank"
        r = RemoteReranker(url, dialect="jina", max_retries=0)
        with pytest.raises(RemoteError) as info:
            if use_async:
                await r.arank("q", ["a"])
            else:
                r.rank("q", ["a"])
        basic = srv.requests[-1].headers["authorization"]
        assert basic.startswith("Basic ")
        seen = " ".join([str(info.value), info.value.body or "", caplog.text, repr(r)])
        assert "pw-XYZ-123" not in seen and basic.split()[1] not in seen


def test_redactor_forms():
    red = Redactor(["Bearer tok-123456", "a\"b\\c/d+e"])
    assert red("got tok-123456 and Bearer tok-123456") == "got *** and ***"
    assert red(json.dumps({"k": "a\"b\\c/d+e"})) == '{"k": "***"}'
    assert red("a%22b%5Cc%2Fd%2Be in a URL") == "*** in a URL"
    assert Redactor(["ab"])("ab is too short to be a key and is kept") == "ab is too short to be a key and is kept"
    assert redact_url("https://u:p@h:1/x?token=T&x=1") == "https://h:1/x?token=***&x=1"


# ------------------------------------------------------------------------------------------- client unit rules
def test_retry_after_forms_and_settings_checks():
    def resp(v):
        return httpx.Response(429, headers={"Retry-After": v})

    assert retry_after(resp("2")) == 2.0 and retry_after(resp("-3")) == 0.0
    assert retry_after(resp("nan")) is None and retry_after(resp("soon")) is None
    assert retry_after(resp("Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0  # a date in the past
    assert HttpClient(timeout=None).attempt_limit is None and HttpClient(timeout=2).attempt_limit == 2.0
    for bad in ({"timeout": 0}, {"timeout": -1}, {"deadline": 0}, {"max_retries": -1}, {"backoff": -1},
                {"timeout": float("inf")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            HttpClient(**bad)


async def test_async_attempt_is_cancelled_at_the_limit_and_the_client_stays_usable():
    calls = []

    def handler(req: Request):
        calls.append(req.path)
        if len(calls) == 1:
            return trickle_body(req)
        return rerank_answer(req)

    with serve(handler) as srv:
        client = HttpClient(timeout=0.5, max_retries=1, backoff=0.01)
        resp = await client.asend("POST", srv.url + "/v1/rerank", {"documents": ["a", "b"]})
        assert resp.json()["results"][1]["index"] == 1 and len(calls) == 2
        resp = await asyncio.to_thread(client.send, "POST", srv.url + "/v1/rerank", {"documents": ["a"]})
        assert resp.status_code == 200
        await client.aclose()


def test_text_that_is_not_unicode_is_a_clear_input_error_before_anything_is_sent():
    from mmrank.errors import InputError

    with serve(rerank_answer) as srv:
        client = HttpClient(max_retries=0)
        for bad in ("\ud800", "ok \udfff tail", "\udc80" * 3):
            with pytest.raises(InputError, match="not valid Unicode"):
                client.send("POST", srv.url + "/v1/rerank", {"query": "q", "documents": ["fine", bad]})
            with pytest.raises(InputError, match="not valid Unicode"):
                asyncio.run(client.asend("POST", srv.url + "/v1/rerank", {"model": bad, "documents": ["a"]}))
        with pytest.raises(InputError, match="JSON"):
            client.send("POST", srv.url + "/v1/rerank", {"score": float("nan")})
        assert srv.requests == []
        # Through the scorer such a document is that document's error; the others are ranked.
        r = RemoteReranker(srv.url + "/v1/rerank", dialect="jina", max_retries=0)
        ranked = r.rank("q", ["a", "bad \ud800 text", "b"])
        assert [x.index for x in ranked] == [0, 2, 1] and ranked[-1].score is None
        assert json.loads(srv.requests[0].body) == {"query": "q", "documents": ["a", "b"], "return_documents": False}
