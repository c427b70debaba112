"""RemoteReranker and the shared HTTP client against hostile or merely odd rerank servers.

Property tests (hypothesis) throw arbitrary answers at the rerank parser — results with missing, repeated,
out-of-range, negative, float, string or boolean indices; NaN / Infinity / string / null / huge scores;
wrong JSON types at every level; bytes that are not JSON — and require one of two outcomes: a ranking that
keeps every document exactly once with the server's own scores, best first, exactly when the answer is
valid, or a :class:`RemoteError` naming the server. Never another exception, never a silently wrong
ranking. Secrets echoed by the server at any offset (also where a message is cut) never show, and any
``Retry-After`` ends in a bounded wait or a clear error.

Real sockets (the test kit's server on 127.0.0.1) for what only a wire can do: compression bombs (the size
limit holds on the decompressed answer, with bounded memory), oversized and trickling chunked answers,
encodings not asked for, corrupt gzip, redirects to other hosts / ``file:`` / loops (never followed, so
credentials never travel on), and TLS verification (refused once, not retried; ``verify=False`` and a
private CA work).
"""

from __future__ import annotations

import datetime
import email.utils
import gzip
import json
import logging
import math
import ssl
import time
import tracemalloc
import zlib

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmrank import RemoteError, RemoteReranker
from mmrank.scorers import http as http_mod
from mmrank.scorers.http import retry_after
from mmrank_testkit.http_server import FakeServer, Reply, Request, serve

URL = "http://rr.test/v1/rerank"
KEY = "sk-live/SECRET+0123456789=abcdefXYZ"  # URL-quoting changes it: its quoted form must be masked too
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Scripted:
    """A MockTransport handler answering whatever the test set last."""

    def __init__(self):
        self.answer: httpx.Response | None = None
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer


def scripted(**kw) -> tuple[RemoteReranker, Scripted]:
    s = Scripted()
    kw.setdefault("max_retries", 0)
    return RemoteReranker(URL, dialect="jina", transport=httpx.MockTransport(s), **kw), s


def raw_json(value) -> bytes:
    """JSON as a lenient server writes it (NaN / Infinity tokens included)."""
    return json.dumps(value, allow_nan=True).encode()


def check_ranking(ranked, n: int) -> None:
    """Every document exactly once, finite scores, best first."""
    assert sorted(x.index for x in ranked) == list(range(n))
    scores = [x.score for x in ranked]
    assert all(isinstance(s, float) and math.isfinite(s) for s in scores)
    assert all(a >= b for a, b in zip(scores, scores[1:], strict=False))


# ------------------------------------------------------------------------------------------- result fuzz
ODD = st.one_of(st.none(), st.booleans(), st.text(max_size=8), st.floats(allow_nan=True, allow_infinity=True),
                st.integers(min_value=-(10 ** 30), max_value=10 ** 30), st.just(10 ** 400), st.just(-(10 ** 400)),
                st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
INDEX = st.one_of(st.integers(min_value=-2, max_value=6), st.integers(min_value=-2, max_value=6).map(float), ODD)
SCORE = st.one_of(st.floats(min_value=-1e300, max_value=1e300), st.integers(-5, 5), ODD)


@st.composite
def result_item(draw):
    if draw(st.integers(0, 19)) == 0:
        return draw(ODD)  # not an object at all
    item = {}
    if draw(st.integers(0, 9)):
        item["index"] = draw(INDEX)
    key = draw(st.sampled_from(["relevance_score", "relevance_score", "score", None]))
    if key:
        item[key] = draw(SCORE)
    if draw(st.booleans()):
        item["document"] = draw(st.one_of(st.text(max_size=5), st.none(), st.dictionaries(st.text(max_size=3),
                                                                                            st.text(max_size=3))))
    return item


def good_results(n: int):
    """Valid answers (a permutation with finite scores), so the fuzz also exercises the success path."""
    return st.permutations(range(n)).flatmap(lambda perm: st.lists(
        st.floats(min_value=-1e6, max_value=1e6), min_size=n, max_size=n).map(
        lambda scores: [{"index": i, "relevance_score": s} for i, s in zip(perm, scores, strict=True)]))


def valid(results, n: int) -> bool:
    if not isinstance(results, list) or len(results) != n:
        return False
    seen = set()
    for item in results:
        if not isinstance(item, dict):
            return False
        idx = item.get("index")
        score = item.get("relevance_score", item.get("score"))
        if type(idx) is not int or not 0 <= idx < n or idx in seen:
            return False
        if type(score) not in (int, float):
            return False
        try:
            if not math.isfinite(score):
                return False
        except OverflowError:
            return False
        seen.add(idx)
    return True


@FUZZ
@given(n=st.integers(1, 4), data=st.data())
def test_any_results_list_gives_the_servers_ranking_exactly_when_valid_else_a_remote_error(n, data):
    results = data.draw(st.one_of(good_results(n), st.lists(result_item(), max_size=n + 2)))
    r, s = scripted()
    s.answer = httpx.Response(200, content=raw_json({"results": results, "usage": {"total_tokens": 3}}))
    try:
        ranked = r.rank("q", [f"d{i}" for i in range(n)])
    except RemoteError as exc:
        assert not valid(results, n), results
        assert "http://rr.test/v1/rerank" in str(exc) and exc.status_code == 200
        return
    assert valid(results, n), results
    check_ranking(ranked, n)
    given_scores = {it["index"]: float(it.get("relevance_score", it.get("score"))) for it in results}
    assert {x.index: x.score for x in ranked} == given_scores
    assert r.last_usage == 3


@pytest.mark.parametrize("results", [
    [{"index": 0, "relevance_score": 10 ** 400}],  # JSON allows any number of digits; no float holds this one
    [{"index": 0, "relevance_score": -(10 ** 400)}],
    [{"index": 10 ** 400, "relevance_score": 0.5}],
    [{"index": 0, "relevance_score": 0.5}, {"index": 0, "relevance_score": 0.5}],
    [{"index": 0.0, "relevance_score": 0.5}],
    [{"index": True, "relevance_score": 0.5}],
    [{"index": "0", "relevance_score": 0.5}],
    [{"index": 0, "relevance_score": "0.5"}],
    [{"index": 0, "relevance_score": None}],
    [{"index": 0, "relevance_score": None, "score": 0.5}],
])
def test_each_kind_of_bad_result_is_a_remote_error_naming_the_server(results):
    r, s = scripted()
    s.answer = httpx.Response(200, content=raw_json({"results": results}))
    with pytest.raises(RemoteError, match="http://rr.test/v1/rerank (returned an invalid|returned a non-numeric)"):
        r.rank("q", ["a"])


JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["results", "data", "index", "relevance_score", "score", "usage",
                                         "total_tokens", "error", "detail", "message", "x"]), inner, max_size=4),
                    max_leaves=12)


@FUZZ
@given(body=JSON, status=st.sampled_from([200, 200, 201, 400, 401, 404, 422, 500, 503]))
def test_wrong_json_types_at_every_level_end_in_a_remote_error_or_a_full_ranking(body, status):
    r, s = scripted()
    s.answer = httpx.Response(status, content=raw_json(body))
    try:
        ranked = r.rank("q", ["a", "b"])
    except RemoteError as exc:
        assert "http://rr.test/v1/rerank" in str(exc)
        assert exc.status_code == status
    else:
        assert status < 300
        check_ranking(ranked, 2)


@FUZZ
@given(body=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
       status=st.sampled_from([200, 400, 404, 500, 502]),
       ctype=st.sampled_from(["application/json", "text/html", "text/plain; charset=latin-1", ""]))
def test_bytes_that_are_not_a_rerank_answer_end_in_a_remote_error(body, status, ctype):
    r, s = scripted()
    s.answer = httpx.Response(status, content=body, headers={"Content-Type": ctype} if ctype else {})
    with pytest.raises(RemoteError) as info:
        r.rank("q", ["a", "b"])
    assert "http://rr.test/v1/rerank" in str(info.value)


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"results":' * 50_000])
@pytest.mark.parametrize("status", [200, 400])
def test_json_nested_too_deeply_is_a_remote_error_not_a_recursion_error(body, status):
    r, s = scripted()
    s.answer = httpx.Response(status, content=body)
    with pytest.raises(RemoteError, match=f"HTTP {status}"):
        r.rank("q", ["a"])


@pytest.mark.parametrize("detail", [
    {"detail": [{"loc": 5, "msg": "bad"}]}, {"detail": [{"loc": None, "msg": "bad"}]},
    {"detail": [{"loc": "body", "msg": "bad"}]}, {"detail": [None, 3, "bad"]}, {"error": {"message": "bad"}},
])
def test_odd_error_shapes_keep_the_servers_message(detail):
    r, s = scripted()
    s.answer = httpx.Response(422, json=detail)
    with pytest.raises(RemoteError, match="HTTP 422: .*bad"):
        r.rank("q", ["a"])
    s.answer = httpx.Response(200, json=detail)  # an error object sent with 200 is still an error, with its text
    with pytest.raises(RemoteError, match="HTTP 200 with an error: .*bad"):
        r.rank("q", ["a"])


@pytest.mark.parametrize("models", [{"data": 5}, {"data": "vllm"}, {"data": None}, [1, 2], "x", {"data": [3, None]}])
def test_odd_models_listings_fall_back_to_the_jina_dialect(models):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, content=raw_json(models))
        return httpx.Response(200, json={"results": [{"index": 0, "relevance_score": 0.5}]})

    r = RemoteReranker("http://rr.test", max_retries=0, transport=httpx.MockTransport(handler))
    assert [x.index for x in r.rank("q", ["a"])] == [0] and r.dialect == "jina"
    # Early Infinity releases answered one model object rather than a list.
    one = RemoteReranker("http://rr.test", max_retries=0, transport=httpx.MockTransport(
        lambda req: httpx.Response(200, json={"data": {"id": "m", "owned_by": "infinity"}}) if req.method == "GET"
        else httpx.Response(200, json={"results": [{"index": 0, "relevance_score": 0.5}]})))
    one.rank("q", ["a"])
    assert one.dialect == "infinity" and one.url == "http://rr.test/rerank"


# ------------------------------------------------------------------------------------------- secrets
def echo(shape: str, text: str) -> bytes:
    return {
        "text": text.encode(),
        "html": f"<html><body><h1>502</h1><pre>{text}</pre></body></html>".encode(),
        "detail": json.dumps({"detail": text}).encode(),
        "detail_list": json.dumps({"detail": [{"loc": ["body", text], "msg": text}]}).encode(),
        "openai": json.dumps({"error": {"message": text, "type": "invalid_request_error"}}).encode(),
        "message": json.dumps({"message": text}).encode(),
        "results": json.dumps({"results": [{"index": text, "relevance_score": 1}]}).encode(),
        "keys": json.dumps({text: 1}).encode(),
    }[shape]


@FUZZ
@given(pad=st.integers(0, 2100), form=st.sampled_from(["raw", "bearer", "quoted", "json"]),
       shape=st.sampled_from(["text", "html", "detail", "detail_list", "openai", "message", "results", "keys"]),
       status=st.sampled_from([200, 400, 401, 403, 404, 422, 500, 503]))
def test_an_echoed_key_never_shows_wherever_the_server_puts_it(pad, form, shape, status, caplog):
    import urllib.parse

    caplog.set_level(logging.DEBUG)
    shown = {"raw": KEY, "bearer": f"Bearer {KEY}", "quoted": urllib.parse.quote(KEY, safe=""),
             "json": json.dumps(KEY)[1:-1]}[form]
    text = "x" * pad + shown + " tail"
    r, s = scripted(api_key=KEY, max_retries=1, backoff=0.0)
    s.answer = httpx.Response(status, content=echo(shape, text), headers={"Retry-After": "0"})
    with pytest.raises(RemoteError) as info:
        r.rank("q", ["a"])
    assert s.requests[0].headers["authorization"] == f"Bearer {KEY}"
    seen = " ".join([str(info.value), repr(info.value), info.value.body or "", caplog.text, repr(r), repr(r.http)])
    # No 8 characters of the key, in any of its forms, survive (a message cut in the middle of it included).
    for f in (KEY, urllib.parse.quote(KEY, safe="")):
        for i in range(len(f) - 8):
            assert f[i:i + 8] not in seen, (f[i:i + 8], seen[:300])


# ------------------------------------------------------------------------------------------- Retry-After
RETRY_AFTER = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10 ** 30), 10 ** 30).map(str),
    st.sampled_from(["1e400", "-1e400", "nan", "inf", "-0", "0x10", "5, 6", " 3 ", "Infinity",
                     "Wed, 21 Oct 2099 07:28:00 GMT", "Sun, 06 Nov 1994 08:49:37 GMT",
                     "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994", "Sun Nov  6 08:49:37 2094",
                     "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 32 Foo 2024 99:99:99 GMT"]),
    st.integers(-100, 100).map(lambda s: email.utils.format_datetime(
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=s), usegmt=True)),
)


@FUZZ
@given(value=RETRY_AFTER, status=st.sampled_from([429, 503]))
def test_any_retry_after_ends_in_a_bounded_wait_or_a_clear_error(value, status, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(http_mod, "_sleep", waits.append)
    assert (retry_after(httpx.Response(status, headers={"Retry-After": value})) or 0.0) >= 0.0
    answers = iter([httpx.Response(status, headers={"Retry-After": value}, text="busy"),
                    httpx.Response(200, json={"results": [{"index": 0, "relevance_score": 0.5}]})])
    r = RemoteReranker(URL, dialect="jina", max_retries=1, max_retry_after=30, max_backoff=2,
                       transport=httpx.MockTransport(lambda req: next(answers)))
    try:
        ranked = r.rank("q", ["a"])
    except RemoteError as exc:
        assert "max_retry_after=30s" in str(exc) and f"HTTP {status}" in str(exc) and not waits
        assert retry_after(httpx.Response(status, headers={"Retry-After": value})) > 30
        return
    assert [x.index for x in ranked] == [0]
    assert len(waits) == 1 and 0.0 <= waits[0] <= 30 and math.isfinite(waits[0])
    try:
        seconds = float(value)
    except ValueError:
        return
    if 0 <= seconds <= 30:
        assert waits[0] == pytest.approx(seconds)


def test_a_zoneless_http_date_is_read_as_gmt():
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=600)
    asctime = later.strftime("%a %b %d %H:%M:%S %Y")  # the asctime form carries no zone
    assert retry_after(httpx.Response(429, headers={"Retry-After": asctime})) == pytest.approx(600, abs=3)


# ------------------------------------------------------------------------------------------- sizes, bombs
def bomb(megabytes: int, wbits: int) -> bytes:
    """A small compressed answer that inflates to ``megabytes`` MiB (a JSON string of zeros)."""
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    zeros = b"0" * (1 << 20)
    parts = [c.compress(b'{"results": [], "pad": "')]
    parts += [c.compress(zeros) for _ in range(megabytes)]
    parts += [c.compress(b'"}'), c.flush()]
    return b"".join(parts)


@pytest.fixture(scope="module")
def bombs():
    return {"gzip": bomb(128, 31), "deflate": bomb(128, 15), "deflate-raw": bomb(128, -15)}


@pytest.mark.parametrize("coding", ["gzip", "deflate", "deflate-raw"])
@pytest.mark.parametrize("use_async", [False, True])
async def test_a_compression_bomb_is_refused_at_max_response_bytes_with_bounded_memory(bombs, coding, use_async):
    data = bombs[coding]
    assert len(data) < 200_000  # 128 MiB once inflated
    with serve(lambda req: Reply(body=data, headers={"Content-Encoding": coding.split("-")[0]})) as srv:
        r = RemoteReranker(srv.url + "/v1/rerank", dialect="jina", max_retries=0, max_response_bytes=2_000_000)
        tracemalloc.start()
        try:
            with pytest.raises(RemoteError, match=r"127\.0\.0\.1.*max_response_bytes=2000000.*decompressed"):
                await r.arank("q", ["a"]) if use_async else r.rank("q", ["a"])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 24_000_000, peak  # the whole answer would be 128 MiB
        assert srv.requests[0].headers["accept-encoding"] == "gzip, deflate"


@pytest.mark.parametrize("use_async", [False, True])
async def test_compressed_answers_within_the_limit_are_read(use_async):
    answer = json.dumps({"results": [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.1}],
                         "pad": "z" * 5000}).encode()
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    forms = {"gzip": gzip.compress(answer), "deflate": zlib.compress(answer),
             "x-gzip": gzip.compress(answer), "gzip, gzip": gzip.compress(gzip.compress(answer)),
             "identity": answer, "deflate ": raw.compress(answer) + raw.flush()}
    for coding, body in forms.items():
        with serve(lambda req, b=body, c=coding: Reply(body=b, headers={"Content-Encoding": c})) as srv:
            r = RemoteReranker(srv.url + "/v1/rerank", dialect="jina", max_retries=0, max_response_bytes=6000)
            ranked = await r.arank("q", ["a", "b"]) if use_async else r.rank("q", ["a", "b"])
            assert [x.index for x in ranked] == [1, 0], coding


@pytest.mark.parametrize("use_async", [False, True])
async def test_oversized_corrupt_and_unasked_encodings_are_clear_errors(use_async):
    big = json.dumps({"results": [], "pad": "y" * 3_000_000}).encode()
    cases = [
        (Reply(body=big), "max_response_bytes=1000000"),
        (Reply(body=b"\x1f\x8b\x08\x00garbage-not-gzip", headers={"Content-Encoding": "gzip"}), "corrupt"),
        (Reply(body=b"\x8b\x00\x80{}", headers={"Content-Encoding": "br"}), "'br', which was not asked for"),
        (Reply(body=b"{}", headers={"Content-Encoding": "zstd"}), "'zstd', which was not asked for"),
        (Reply(body=b"{}", headers={"Content-Encoding": "gzip, gzip, gzip"}), "compressed 3 times"),
    ]
    for reply, message in cases:
        with serve(lambda req, rep=reply: rep) as srv:
            r = RemoteReranker(srv.url + "/v1/rerank", dialect="jina", max_retries=2, backoff=0.01,
                               max_response_bytes=1_000_000)
            with pytest.raises(RemoteError, match=message) as info:
                await r.arank("q", ["a"]) if use_async else r.rank("q", ["a"])
            assert srv.url in str(info.value) and len(srv.requests) == 1  # not retried: it would not change


def test_a_custom_transports_complete_answer_is_held_to_the_limit_too():
    r, s = scripted(max_response_bytes=1000)
    s.answer = httpx.Response(200, content=b'{"results": [], "x": "' + b"a" * 5000 + b'"}')
    with pytest.raises(RemoteError, match="max_response_bytes=1000"):
        r.rank("q", ["a"])


def chunked_trickle(req: Request) -> None:
    req.write_head(200, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    end = time.monotonic() + 8
    while time.monotonic() < end and not req.stopping.is_set():
        if not req.write(b"1\r\n \r\n"):
            return
        req.stopping.wait(0.05)


@pytest.mark.parametrize("use_async", [False, True])
async def test_a_chunked_answer_that_trickles_cannot_stretch_the_timeout_or_the_deadline(use_async):
    with serve(chunked_trickle) as srv:
        for kw, bound in (({"timeout": 0.5, "max_retries": 1}, 1.0), ({"timeout": 30, "deadline": 0.8}, 0.8)):
            r = RemoteReranker(srv.url + "/v1/rerank", dialect="jina", backoff=0.01, **{"max_retries": 5, **kw})
            start = time.monotonic()
            with pytest.raises(RemoteError, match="no complete answer within"):
                await r.arank("q", ["a"]) if use_async else r.rank("q", ["a"])
            assert time.monotonic() - start < bound + 1.0


# ------------------------------------------------------------------------------------------- redirects
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("use_async", [False, True])
async def test_redirects_are_never_followed_so_credentials_never_travel_on(status, use_async):
    with serve(lambda req: Reply(json={"results": [{"index": 0, "relevance_score": 1.0}]})) as other:
        targets = [other.url + "/v1/rerank", "file:///etc/passwd", None,  # None: back to itself (a loop)
                   other.url.replace("http://", "http://u:pw-LEAK-42@") + "/v1/rerank?api_key=QLEAK-99"]
        for target in targets:
            def handler(req: Request, target=target) -> Reply:
                return Reply(status, body=b"moved", headers={"Location": target or req.path})

            with serve(handler) as srv:
                r = RemoteReranker(srv.url + "/v1/rerank", dialect="jina", api_key=KEY, max_retries=2)
                with pytest.raises(RemoteError, match=f"HTTP {status}.*redirects are not followed") as info:
                    await r.arank("q", ["a"]) if use_async else r.rank("q", ["a"])
                assert len(srv.requests) == 1
                assert "pw-LEAK-42" not in str(info.value) and "QLEAK-99" not in str(info.value)
        assert other.requests == []


# ------------------------------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """The test kit's server behind TLS with a certificate for 127.0.0.1 signed by a throwaway CA."""
    cryptography = pytest.importorskip("cryptography")  # in requirements-dev.txt; a missing one is reported
    del cryptography
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mmrank test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    srv = FakeServer(lambda req: Reply(json={"results": [{"index": 0, "relevance_score": 0.7}]}))
    srv._server.socket = ctx.wrap_socket(srv._server.socket, server_side=True)
    srv.url = srv.url.replace("http://", "https://")
    srv.ca = str(folder / "ca.pem")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("use_async", [False, True])
async def test_tls_verification_is_honoured_and_a_failure_is_not_retried(tls_server, use_async):
    url = tls_server.url + "/v1/rerank"
    tls_server.requests.clear()
    r = RemoteReranker(url, dialect="jina", max_retries=3, backoff=0.5, api_key=KEY)
    start = time.monotonic()
    with pytest.raises(RemoteError, match="certificate failed verification.*verify=") as info:
        await r.arank("q", ["a"]) if use_async else r.rank("q", ["a"])
    assert time.monotonic() - start < 1.0 and KEY not in str(info.value)  # no backoff: retrying cannot help
    assert tls_server.requests == []  # nothing, credentials included, was sent over the unverified connection
    for verify in (False, ssl.create_default_context(cafile=tls_server.ca)):
        ok = RemoteReranker(url, dialect="jina", max_retries=0, verify=verify)
        ranked = await ok.arank("q", ["a"]) if use_async else ok.rank("q", ["a"])
        assert [(x.index, x.score) for x in ranked] == [(0, 0.7)]


# ------------------------------------------------------------------------------------------- published shapes
def test_vllm_score_endpoint_gets_text_1_and_text_2_and_its_data_list_is_read():
    from mmrank_testkit import sample_image_bytes

    bodies = []

    def vllm(req: Request) -> Reply:
        if req.method == "GET":
            return Reply(json={"object": "list", "data": [{"id": "jinaai/jina-reranker-m0", "object": "model",
                                                           "owned_by": "vllm"}]})
        body = req.json()
        bodies.append(body)
        # vLLM's ScoreResponse: id, object, created, model, data[{index, object, score}], usage
        data = [{"index": i, "object": "score", "score": 0.1 * (i + 1)} for i in range(len(body["text_2"]))]
        return Reply(json={"id": "score-1", "object": "list", "created": 1, "model": "jinaai/jina-reranker-m0",
                           "data": data[::-1], "usage": {"prompt_tokens": 9, "total_tokens": 9,
                                                         "completion_tokens": 0}})

    with serve(vllm) as srv:
        r = RemoteReranker(srv.url + "/score", max_retries=0)
        ranked = r.rank("q", ["a", {"text": "b", "image": sample_image_bytes(1)}, "c"])
        assert r.dialect == "vllm" and [x.index for x in ranked] == [2, 1, 0] and r.last_usage == 9
        (body,) = bodies
        assert set(body) == {"text_1", "text_2"} and body["text_1"] == "q"
        assert body["text_2"][0] == "a" and body["text_2"][1]["content"][0]["type"] == "image_url"
    with pytest.raises(Exception, match="/score URL is vLLM's scoring endpoint"):
        RemoteReranker("http://h/v1/score", dialect="infinity")


def test_cohere_v2_rerank_gets_no_return_documents_and_its_answer_is_read():
    cohere_types = pytest.importorskip("cohere.v2.types")  # the real SDK's response model checks our recording
    answer = {"id": "07734bd2-2473-4f07-94e1-0d9f0e6843cf", "results": [
        {"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.2}],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}}
    cohere_types.V2RerankResponse.model_validate(answer)
    bodies = []

    def cohere(req: Request) -> Reply:
        bodies.append(req.json())
        return Reply(json=answer)

    with serve(cohere) as srv:
        r = RemoteReranker(srv.url + "/v2/rerank", model="rerank-v3.5", dialect="jina", max_retries=0)
        assert [(x.index, x.score) for x in r.rank("q", ["a", "b"])] == [(1, 0.9), (0, 0.2)]
        assert bodies == [{"model": "rerank-v3.5", "query": "q", "documents": ["a", "b"]}]
        assert r.last_usage is None  # Cohere bills search units, not tokens
