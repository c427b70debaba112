"""``mmrank serve`` against hostile request bodies, in-process (FastAPI TestClient, the real tiny model).

The contract checked for every body, by class and by property (hypothesis): the answer is a JSON object
with the right status — 400 for what is not strict JSON (NaN/Infinity, duplicate names, invalid UTF-8,
truncation, numbers beyond Python's limits, nesting too deep), 415 for a body that is not declared as
uncompressed UTF-8 JSON, 422 for JSON of the wrong shape or type (naming the field), 413 for too many
documents — with a ``detail`` string, never a 500 and never a traceback; lone surrogate escapes anywhere
never turn an answer into a 500; and a valid request gets every document back exactly once (cut to
``top_n``), scored ones best first, unreadable ones last."""

from __future__ import annotations

import base64
import gzip
import json
import time

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmrank.server import ServerConfig, create_app
from mmrank.server.schemas import MAX_CONTENT_PARTS, RerankRequest
from mmrank_testkit import sample_image_bytes

IMG = base64.b64encode(sample_image_bytes(4, size=(40, 32))).decode()
DATA_URI = "data:image/png;base64," + IMG
BROKEN = base64.b64encode(sample_image_bytes(5, size=(40, 32))[:60]).decode()  # a truncated PNG
JSON_HEADERS = {"Content-Type": "application/json"}
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def client(jina_reranker):
    with TestClient(create_app(jina_reranker, ServerConfig(max_documents=50, served_model_names=("m0", "alias"))),
                    raise_server_exceptions=False) as c:
        yield c


def post(client, body: bytes | object, headers: dict[str, str] | None = None, path: str = "/v1/rerank"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=raw, headers=JSON_HEADERS if headers is None else headers)


def answer(resp) -> dict:
    """The response body, checked to be strict JSON (no NaN) in a JSON response; errors carry a detail."""
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    out = json.loads(resp.content, parse_constant=lambda name: pytest.fail(f"{name} in a response"))
    assert isinstance(out, dict)
    if resp.status_code >= 400:
        assert isinstance(out.get("detail"), str) and out["detail"], out
        assert "Traceback" not in out["detail"]
    return out


def assert_every_document_once(out: dict, n: int, top_n: int | None) -> None:
    results = out["results"]
    indices = [r["index"] for r in results]
    assert len(indices) == len(set(indices)) and all(0 <= i < n for i in indices), indices
    assert len(results) == (min(top_n, n) if top_n else n)
    scored = [r["relevance_score"] for r in results if r["relevance_score"] is not None]
    assert scored == sorted(scored, reverse=True)
    assert [r["relevance_score"] is None for r in results] == sorted(r["relevance_score"] is None for r in results)


# ------------------------------------------------------------------------------------------- not strict JSON
VALID = b'{"query": "q", "documents": ["a", {"text": "b"}], "top_n": 1}'


@pytest.mark.parametrize("raw, message", [
    (b'{"query": "q", "documents": ["a"], "top_n": NaN}', "NaN is not a JSON value"),
    (b'{"query": "q", "documents": ["a"], "relevant_spans": {"x": [1, Infinity]}}', "Infinity is not a JSON value"),
    (b'{"query": "q", "documents": [{"text": "a", "score": -Infinity}]}', "-Infinity is not a JSON value"),
    (b'{"query": "q", "documents": ["a"], "documents": ["a", "b"]}', "duplicate member name 'documents'"),
    (b'{"query": "q", "documents": [{"text": "a", "text": "b"}]}', "duplicate member name 'text'"),
    (b'{"query": {"content": [{"type": "text", "text": "a", "type": "image_url"}]}, "documents": ["a"]}',
     "duplicate member name 'type'"),
    (b'{"query": "q", "documents": ["a"], "top_n": 1' + b"0" * 5000 + b"}", "too many digits"),
    (b'{"query": "q", "documents": ["a"], "priority": -' + b"9" * 4400 + b"}", "too many digits"),
    (b'{"query": "q", "documents": ["a\xff"]}', "not UTF-8"),  # invalid byte
    (b'{"query": "q", "documents": ["\xed\xa0\x80"]}', "not UTF-8"),  # a surrogate encoded as UTF-8 bytes
    (b'{"query": "q", "documents": ["\xc0\xaf"]}', "not UTF-8"),  # overlong encoding
    (b'{"query": "q", "documents": ["\xe2\x82"]}', "not UTF-8"),  # truncated sequence
    ('{"query": "q", "documents": ["a"]}'.encode("utf-16"), "not UTF-8"),
    ('{"query": "q", "documents": ["a"]}'.encode("utf-32-le"), "malformed JSON"),
    (b'{"query": "q", "documents": ["a"]} {}', "Extra data"),
    (b'{"query": "q", "documents": ["a"], "relevant_spans": {"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}",
     "nested too deeply"),
    (b"", "empty request body"),
    (b"\xef\xbb\xbf  \n", "empty request body"),
    (b"'query'", "malformed JSON"),
])
def test_what_is_not_strict_json_is_a_400_naming_the_rule(client, raw, message):
    resp = post(client, raw)
    assert resp.status_code == 400, resp.text[:300]
    assert message in answer(resp)["detail"]


def test_every_truncation_of_a_valid_body_is_a_400(client):
    for cut in range(len(VALID)):
        resp = post(client, VALID[:cut])
        assert resp.status_code == 400, (cut, VALID[:cut], resp.text[:200])
        answer(resp)
    assert post(client, VALID).status_code == 200


def test_a_utf8_byte_order_mark_is_skipped(client):
    resp = post(client, b"\xef\xbb\xbf" + VALID)
    assert resp.status_code == 200 and len(answer(resp)["results"]) == 1


@given(raw=st.binary(max_size=300))
@FUZZ
def test_arbitrary_bytes_get_a_json_4xx(client, raw):
    resp = post(client, raw)
    assert resp.status_code in (200, 400, 413, 422), resp.text[:300]
    answer(resp)


# ------------------------------------------------------------------------------------------- headers
@pytest.mark.parametrize("headers, status", [
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ({"Content-Type": "text/plain"}, 415),  # what a web page may send cross-site without a preflight
    ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
    ({"Content-Type": "application/json; charset=utf-16"}, 415),
    ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, 415),
    ({"Content-Type": "application/json", "Content-Encoding": "br"}, 415),
    ({}, 200),  # no type: read as JSON
    ({"Content-Type": "application/json; charset=UTF-8"}, 200),
    ({"Content-Type": "Application/JSON"}, 200),
    ({"Content-Type": "application/vnd.api+json"}, 200),
    ({"Content-Type": "application/json", "Content-Encoding": "identity"}, 200),
])
def test_only_uncompressed_utf8_json_is_read(client, headers, status):
    resp = post(client, VALID, headers=headers)
    assert resp.status_code == status, resp.text[:300]
    out = answer(resp)
    if status == 415:
        assert "Content-" in out["detail"] or "charset" in out["detail"]


def test_a_gzip_bomb_is_never_decompressed(client):
    bomb = gzip.compress(b'{"query": "q", "documents": ["' + b"a" * 50_000_000 + b'"]}', compresslevel=9)
    assert len(bomb) < 100_000
    t0 = time.monotonic()
    resp = post(client, bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert resp.status_code == 415 and time.monotonic() - t0 < 5
    assert "uncompressed" in answer(resp)["detail"]


# ------------------------------------------------------------------------------------------- wrong types
@pytest.mark.parametrize("field, value", [
    ("top_n", "2"), ("top_n", True), ("top_n", 2.0), ("top_n", 2.5), ("top_n", [2]), ("top_n", -1),
    ("return_documents", "false"), ("return_documents", 0), ("return_documents", None),
    ("on_error", "skip"), ("on_error", True), ("model", 5), ("model", ["m0"]),
    ("max_chunks_per_doc", "10"), ("rank_fields", "text"), ("rank_fields", [1]), ("truncation", "true"),
    ("raw_scores", 1), ("padding", "yes"), ("priority", 1.5), ("truncate_prompt_tokens", -2),
    ("mm_processor_kwargs", []), ("instruction", {}), ("query", 5), ("query", None), ("query", ["q"]),
    ("query", {"text": 5}), ("query", {"text": "q", "colour": "red"}), ("documents", "abc"),
    ("documents", {"a": 1}), ("documents", None), ("documents", [None]), ("documents", [["a"]]),
    ("documents", [{"text": 1}]), ("documents", [{"image": False}]), ("documents", [{}]),
    ("documents", [{"content": "abc"}]), ("documents", [{"content": [None]}]),
    ("documents", [{"content": [{"type": "text"}]}]), ("documents", [{"content": [{"type": 1, "text": "a"}]}]),
    ("documents", [{"content": [{"type": "image_url", "image_url": "x"}]}]),
])
def test_a_wrong_type_at_any_field_is_a_422_naming_it(client, field, value):
    resp = post(client, {"query": "q", "documents": ["a", "b"], field: value})
    assert resp.status_code == 422, resp.text[:300]
    assert answer(resp)["detail"].startswith("invalid request: " + field)


def _json_values():
    scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(st.characters(exclude_categories=()),
                                                                            max_size=8))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


FIELDS = list(RerankRequest.model_fields) + ["unknown_field", "Documents", "top-n"]


@given(field=st.sampled_from(FIELDS), value=_json_values(), where=st.sampled_from(["top", "doc", "query"]))
@FUZZ
def test_any_json_value_at_any_field_is_a_json_answer_and_never_loses_a_document(client, field, value, where):
    body: dict = {"query": "q", "documents": ["a", {"text": "b"}, "c"], "on_error": "last"}
    if where == "top":
        body[field] = value
    elif where == "doc":
        body["documents"][1] = {"text": "b", field: value} if field != "text" else {"text": value}
    else:
        body["query"] = {"text": "q", field: value} if field != "text" else {"text": value}
    resp = post(client, body)
    out = answer(resp)
    assert resp.status_code in (200, 404, 413, 422), (body, resp.text[:300])
    if resp.status_code == 200:
        top_n = body.get("top_n") if where == "top" and field == "top_n" else None
        docs = body["documents"] if not (where == "top" and field == "documents") else value
        n = len(docs) if isinstance(docs, list) else len(docs["content"])
        assert_every_document_once(out, n, top_n)


# ------------------------------------------------------------------------------------------- surrogates
SURROGATE = r"\ud800"


@pytest.mark.parametrize("template", [
    '{"query": "q%s", "documents": ["a"]}',
    '{"query": "q", "documents": ["a%s", "b"]}',
    '{"query": "q", "documents": [{"text": "a", "image": "http://x%s.example/p.png"}, "b"]}',
    '{"query": "q", "documents": [{"image": "https://example.invalid/%s.png"}, "b"]}',
    '{"query": "q", "documents": [{"image": "data:image/png;base64,%s"}, "b"]}',
    '{"query": "q", "documents": [{"image": "AAAA%s"}, "b"]}',
    '{"query": {"image": "http://%s/"}, "documents": ["a"]}',
    '{"query": "q", "documents": [{"content": [{"type": "text", "text": "%s"}]}, "b"]}',
    '{"query": "q", "documents": [{"content": [{"type": "image_url", "image_url": {"url": "%s"}}]}, "b"]}',
    '{"query": "q", "documents": [{"text": "a", "title": "t%s"}, "b"]}',
    '{"query": "q", "documents": [{"text": "a", "x%s": 1}, "b"]}',
    '{"query": "q", "documents": ["a"], "model": "m%s"}',
    '{"query": "q", "documents": ["a"], "instruction": "%s", "user": "%s"}',
    '{"query": "q", "documents": ["a"], "field%s": 1}',
])
@pytest.mark.parametrize("on_error", ["raise", "last"])
def test_lone_surrogates_anywhere_never_make_a_500(client, template, on_error):
    text = template.replace("%s", SURROGATE)
    body = json.loads(text)
    body["on_error"] = on_error
    resp = post(client, json.dumps(body).encode())  # json.dumps keeps the escape: the bytes are valid UTF-8
    assert resp.status_code in (200, 404, 422), resp.text[:300]
    out = answer(resp)
    if resp.status_code == 200:
        n = len(body["documents"])
        assert_every_document_once(out, n, None)
        sent = [d if isinstance(d, dict) else {"text": d} for d in body["documents"]]
        for r in out["results"]:  # the document comes back exactly as sent, escapes and all
            if "content" not in sent[r["index"]]:
                assert r["document"] == sent[r["index"]]


# ------------------------------------------------------------------------------------------- sizes
def test_content_parts_are_counted_before_they_are_validated(client):
    parts = [{"type": "text", "text": "x"}] * (MAX_CONTENT_PARTS + 1) + [{"type": "bogus"}] * 20_000
    for body in ({"query": "q", "documents": [{"content": parts}]},
                 {"query": {"content": parts}, "documents": ["a"]}):
        out = answer(resp := post(client, body))
        assert resp.status_code == 422
        assert f"{len(parts)} content parts, at most {MAX_CONTENT_PARTS}" in out["detail"]
        assert len(out["errors"]) == 1  # not one error per bogus part: the items were never validated
    parts = [{"type": "text", "text": "x"}] * MAX_CONTENT_PARTS
    assert post(client, {"query": "q", "documents": [{"content": parts}]}).status_code == 200


def test_document_and_list_limits(client):
    resp = post(client, {"query": "q", "documents": ["d"] * 51})
    assert resp.status_code == 413 and "51 documents" in answer(resp)["detail"]
    resp = post(client, {"query": "q", "documents": {"content": [{"type": "text", "text": "d"}] * 51}})
    assert resp.status_code == 413
    resp = post(client, {"query": "q", "documents": []})
    assert resp.status_code == 422 and "empty" in answer(resp)["detail"]
    resp = post(client, {"query": "q", "documents": ["a"], "rank_fields": ["text"] * 1001})
    assert resp.status_code == 422 and "1001 items, at most 1000" in answer(resp)["detail"]


def test_many_or_long_extra_field_names_stay_cheap(client):
    """Cohere-style free-form document objects: every extra name is checked for a typo of 'text'/'image'
    once, and names that cannot be a typo are not compared at all."""
    docs = [{"text": f"d{i}", **{f"field_{i}_{j}": j for j in range(200)}, ("y" * 20_000): i} for i in range(50)]
    t0 = time.monotonic()
    resp = post(client, {"query": "q", "documents": docs, "return_documents": False})
    assert resp.status_code == 200 and time.monotonic() - t0 < 10
    assert_every_document_once(answer(resp), 50, None)
    resp = post(client, {"query": "q", "documents": ["a", {"Text": "b"}]})
    assert resp.status_code == 422 and "did you mean 'text'" in answer(resp)["detail"]


# ------------------------------------------------------------------------------------------- valid requests
def _document():
    text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
    return st.one_of(
        text, st.builds(lambda t: {"text": t}, text), st.just({"image": IMG}), st.just({"image": DATA_URI}),
        st.builds(lambda t: {"text": t, "image": IMG}, text), st.just({"image": BROKEN}),
        st.builds(lambda t: {"content": [{"type": "text", "text": t},
                                         {"type": "image_url", "image_url": {"url": DATA_URI}}]}, text),
        st.builds(lambda t, i: {"text": t, "id": i, "title": "x"}, text, st.integers()))


@given(docs=st.lists(_document(), min_size=1, max_size=8), top_n=st.none() | st.integers(0, 10),
       return_documents=st.booleans(), route=st.sampled_from(["/v1/rerank", "/rerank", "/v2/rerank"]),
       model=st.sampled_from([None, "m0", "alias", "default/not-specified"]))
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_valid_requests_keep_every_document_exactly_once(client, docs, top_n, return_documents, route, model):
    body = {"query": "what is shown?", "documents": docs, "return_documents": return_documents, "on_error": "last"}
    if top_n is not None:
        body["top_n"] = top_n
    if model is not None:
        body["model"] = model
    resp = post(client, body, path=route)
    assert resp.status_code == 200, resp.text[:300]
    out = answer(resp)
    assert_every_document_once(out, len(docs), top_n)
    assert out["model"] == "m0" and out["id"].startswith("rerank-")
    assert out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"] >= 0
    assert out["meta"]["api_version"]["version"] == ("2" if route == "/v2/rerank" else "1")
    for r in out["results"]:
        sent = docs[r["index"]]
        if (r["relevance_score"] is None) != (sent in ({"image": BROKEN},)):
            pytest.fail(f"document {r['index']} {sent} scored {r['relevance_score']}")
        if not return_documents:
            assert "document" not in r
        elif isinstance(sent, str):
            assert r["document"] == {"text": sent}
        elif "content" in sent:
            assert r["document"] == {"text": sent["content"][0]["text"], "image": DATA_URI}
        else:
            assert r["document"] == sent  # as sent, extra fields (ids, titles) included


# ------------------------------------------------------------------------------------------- image encodings
PNG = base64.b64decode(IMG)


@pytest.mark.parametrize("image", [
    IMG, "  " + IMG + "\n", base64.encodebytes(PNG).decode(),  # MIME line breaks
    base64.urlsafe_b64encode(PNG).decode(), IMG.rstrip("="), base64.urlsafe_b64encode(PNG).decode().rstrip("="),
    DATA_URI, "DATA:image/png;BASE64," + IMG, "data:image/png;charset=utf-8;base64," + IMG, "data:;base64," + IMG,
    "data:image/png;base64," + base64.encodebytes(PNG).decode(),
    "data:image/png," + "".join(f"%{b:02X}" for b in PNG),  # percent-encoded, no base64
], ids=["base64", "spaces", "mime-lines", "url-safe", "unpadded", "url-safe-unpadded", "data-uri", "DATA-upper",
        "data-charset", "data-no-type", "data-mime-lines", "data-percent"])
def test_every_encoding_of_one_image_scores_the_same(client, jina_reranker, image):
    resp = post(client, {"query": "a picture", "documents": [{"image": image}, "text"]})
    assert resp.status_code == 200, resp.text[:300]
    scores = {r["index"]: r["relevance_score"] for r in answer(resp)["results"]}
    local = jina_reranker.score("a picture", [{"image": PNG}, "text"])
    assert scores == {0: pytest.approx(local[0], abs=1e-5), 1: pytest.approx(local[1], abs=1e-5)}
