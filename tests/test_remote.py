"""RemoteReranker against recorded Jina / vLLM / Infinity responses (httpx.MockTransport stands in for those
services only; the real round trip against ``mmrank serve`` is in test_server.py).

Checks what goes on the wire per dialect, how each dialect's response is read, splitting and merging,
retries (429/5xx/connection errors, Retry-After), 4xx errors with the server's message, and that the API key
never shows up in repr, errors or logs."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from pathlib import Path

import httpx
import pytest
from mmrank import Document, ImagePolicy, RemoteError, RemoteReranker, UnsupportedInputError
from mmrank.errors import InputError
from mmrank_testkit import sample_image, sample_image_bytes
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "jina_SECRET-do-not-print-1234567890"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


class Recorder:
    """A MockTransport handler that records requests and answers from a script of responses."""

    def __init__(self, *answers, models=None):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.models = models
        self.seen: list[str] = []  # every URL asked for, models probes included

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(str(request.url))
        if request.url.path.endswith("/models"):
            if self.models is None:
                return httpx.Response(404, json={"detail": "Not Found"})
            return httpx.Response(200, json=self.models)
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if callable(answer):
            return answer(request)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.requests]


def echo_scores(request: httpx.Request) -> httpx.Response:
    """Answer any rerank request: the score of a document is a function of its text/image (pointwise)."""
    body = json.loads(request.content)
    results = []
    for i, d in enumerate(body["documents"]):
        key = json.dumps(d, sort_keys=True)
        results.append({"index": i, "relevance_score": (sum(map(ord, key)) % 997) / 997})
    results.sort(key=lambda r: -r["relevance_score"])
    return httpx.Response(200, json={"model": "m", "usage": {"total_tokens": 3 * len(results)}, "results": results})


def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# ------------------------------------------------------------------------------------------- Jina
def test_jina_request_shape_and_recorded_response(monkeypatch):
    rec = fixture("remote_jina_m0.json")
    monkeypatch.delenv("MMRANK_API_KEY", raising=False)
    monkeypatch.setenv("JINA_API_KEY", SECRET)
    h = Recorder(httpx.Response(200, json=rec["response"]))
    r = RemoteReranker(transport=httpx.MockTransport(h))  # default: Jina's API, jina-reranker-m0
    assert r.dialect == "jina" and r.url == "https://api.jina.ai/v1/rerank"
    docs = [Document(image=d["image"]) if "image" in d else d["text"] for d in rec["request"]["documents"]]
    ranked = r.rank(rec["request"]["query"], docs)
    (req,) = h.requests
    assert str(req.url) == "https://api.jina.ai/v1/rerank"
    assert req.headers["authorization"] == f"Bearer {SECRET}"
    body = json.loads(req.content)
    assert body["model"] == "jina-reranker-m0" and body["query"] == rec["request"]["query"]
    assert body["return_documents"] is False and "top_n" not in body
    # image URLs are passed through untouched (never fetched by the client); text goes as plain strings
    assert body["documents"][0] == rec["request"]["documents"][0]
    assert body["documents"][3] == rec["request"]["documents"][3]["text"]
    assert [x.index for x in ranked] == [1, 3, 7, 2, 0, 4, 6, 5]
    assert ranked[0].score == pytest.approx(0.9587112551898949)
    assert r.last_usage == 2829


def test_jina_images_are_sent_as_bare_base64_and_documents_echo_is_ignored(tmp_path):
    rec = fixture("remote_jina_m0.json")
    h = Recorder(httpx.Response(200, json=rec["response_with_documents"]))
    r = RemoteReranker("https://api.jina.ai/v1/rerank", api_key=SECRET, transport=httpx.MockTransport(h))
    png = sample_image_bytes(1)
    path = tmp_path / "page.png"
    path.write_bytes(png)
    ranked = r.rank("capital", [Document(image=path), Document(text="caption", image=png)])
    body = h.bodies()[0]
    assert body["documents"][0] == {"image": base64.b64encode(png).decode()}  # the file's own bytes
    assert body["documents"][1] == {"image": base64.b64encode(png).decode(), "text": "caption"}
    assert [x.index for x in ranked] == [1, 0]


def test_jina_error_bodies_become_remote_errors_with_the_server_message():
    rec = fixture("remote_jina_m0.json")
    h = Recorder(httpx.Response(401, json=rec["error_401"]))
    r = RemoteReranker("https://api.jina.ai/v1/rerank", api_key=SECRET, transport=httpx.MockTransport(h),
                       max_retries=3)
    with pytest.raises(RemoteError) as info:
        r.rank("q", ["a", "b"])
    assert info.value.status_code == 401 and len(h.requests) == 1  # 4xx: no retry
    assert "valid API key" in str(info.value) and "check the API key" in str(info.value)
    assert SECRET not in str(info.value)
    h = Recorder(httpx.Response(422, json=rec["error_422"]))
    r = RemoteReranker("http://127.0.0.1:9/v1/rerank", dialect="jina", transport=httpx.MockTransport(h))
    with pytest.raises(RemoteError, match=r"HTTP 422: query: Field required"):
        r.rank("q", ["a"])


# ------------------------------------------------------------------------------------------- vLLM
def test_vllm_request_uses_content_parts_and_data_uris():
    rec = fixture("remote_vllm_m0.json")
    h = Recorder(httpx.Response(200, json=rec["response"]))
    r = RemoteReranker("http://127.0.0.1:8000", model="jinaai/jina-reranker-m0", dialect="vllm",
                       transport=httpx.MockTransport(h))
    assert r.url == "http://127.0.0.1:8000/v1/rerank"
    urls = [d["content"][0]["image_url"]["url"] for d in rec["request"]["documents"][:2]]
    ranked = r.rank(rec["request"]["query"], [Document(image=urls[0]), Document(image=urls[1]),
                                              rec["request"]["documents"][2]])
    body = h.bodies()[0]
    assert body == rec["request"]  # exactly vLLM's format: no return_documents, no top_n
    assert [x.index for x in ranked] == [1, 2, 0] and ranked[0].score == pytest.approx(0.9163818359375)
    assert r.last_usage == 2073

    # local images travel as data: URIs; a text+image document adds a text part; an image query too
    h2 = Recorder(echo_scores)
    r2 = RemoteReranker("http://127.0.0.1:8000/rerank", dialect="vllm", transport=httpx.MockTransport(h2))
    img = sample_image(3)
    r2.rank({"image": img}, [Document(text="a caption", image=img), "plain"])
    body = h2.bodies()[0]
    uri = "data:image/png;base64," + png_b64(img)
    assert body["query"] == {"content": [{"type": "image_url", "image_url": {"url": uri}}]}
    assert body["documents"][0] == {"content": [{"type": "image_url", "image_url": {"url": uri}},
                                                {"type": "text", "text": "a caption"}]}
    assert body["documents"][1] == "plain" and "model" not in body


def test_vllm_openai_style_error_message():
    rec = fixture("remote_vllm_m0.json")
    h = Recorder(httpx.Response(404, json=rec["error_400"]))
    r = RemoteReranker("http://127.0.0.1:8000", dialect="vllm", model="jina-reranker-m0",
                       transport=httpx.MockTransport(h))
    with pytest.raises(RemoteError, match=r"HTTP 404: The model `jina-reranker-m0` does not exist"):
        r.rank("q", ["a"])


# ------------------------------------------------------------------------------------------- Infinity
@pytest.mark.parametrize("key", ["response", "response_with_documents", "response_legacy"])
def test_infinity_responses(key):
    rec = fixture("remote_infinity.json")
    h = Recorder(httpx.Response(200, json=rec[key]))
    r = RemoteReranker("http://127.0.0.1:7997", model=rec["request"]["model"], dialect="infinity",
                       transport=httpx.MockTransport(h))
    assert r.url == "http://127.0.0.1:7997/rerank"
    ranked = r.rank(rec["request"]["query"], rec["request"]["documents"])
    assert h.bodies()[0] == rec["request"]
    assert [x.index for x in ranked] == [2, 0, 1]
    assert [x.document.text for x in ranked][0] == "Munich is the capital of Bavaria."


def test_infinity_is_text_only():
    h = Recorder(echo_scores)
    r = RemoteReranker("http://127.0.0.1:7997", dialect="infinity", transport=httpx.MockTransport(h))
    with pytest.raises(UnsupportedInputError, match="document 1.*text-only"):
        r.rank("q", ["text", Document(image=sample_image_bytes(0))])
    with pytest.raises(UnsupportedInputError, match="image query"):
        r.rank({"image": sample_image_bytes(0)}, ["text"])
    assert h.requests == []


def test_auto_dialect_reads_the_models_endpoint():
    vllm, inf = fixture("remote_vllm_m0.json"), fixture("remote_infinity.json")
    h = Recorder(echo_scores, models=vllm["models"])
    r = RemoteReranker("http://127.0.0.1:8000", transport=httpx.MockTransport(h))
    assert r.dialect == "auto"
    r.rank("q", [Document(image="https://example.org/a.png")])
    assert r.dialect == "vllm" and "content" in h.bodies()[0]["documents"][0]
    h = Recorder(echo_scores, models=inf["models"])
    r = RemoteReranker("http://127.0.0.1:7997", transport=httpx.MockTransport(h))
    r.rank("q", ["a"])
    assert r.dialect == "infinity"
    h = Recorder(echo_scores)  # no models endpoint: Jina dialect
    r = RemoteReranker("http://127.0.0.1:9000", transport=httpx.MockTransport(h))
    r.rank("q", [Document(image="https://example.org/a.png")])
    assert r.dialect == "jina" and h.bodies()[0]["documents"][0] == {"image": "https://example.org/a.png"}


# ------------------------------------------------------------------------------------------- splitting
def _expected(docs):
    full = echo_scores(httpx.Request("POST", "http://x", json={"documents": docs})).json()["results"]
    return sorted(((r["index"], r["relevance_score"]) for r in full), key=lambda p: (-p[1], p[0]))


def test_long_lists_are_split_and_merged_globally():
    docs = [f"document number {i}" for i in range(23)]
    h = Recorder(echo_scores)
    r = RemoteReranker("http://127.0.0.1:9000", dialect="jina", max_documents_per_request=5, max_concurrency=3,
                       transport=httpx.MockTransport(h))
    ranked = r.rank("q", docs)
    assert sorted(len(b["documents"]) for b in h.bodies()) == [3, 5, 5, 5, 5]
    assert sorted(x.index for x in ranked) == list(range(23))
    assert [(x.index, x.score) for x in ranked] == _expected(docs)
    assert r.last_usage == 3 * 23
    top = r.rank("q", docs, top_n=4)
    assert [x.index for x in top] == [i for i, _ in _expected(docs)[:4]]


def test_requests_are_also_split_by_size():
    big = sample_image_bytes(0, size=(64, 64))
    docs = [Document(image=big) for _ in range(6)]
    one = len(base64.b64encode(big))
    h = Recorder(echo_scores)
    r = RemoteReranker("http://127.0.0.1:9000", dialect="jina", max_request_bytes=2 * one + 100,
                       transport=httpx.MockTransport(h))
    assert len(r.rank("q", docs)) == 6
    assert [len(b["documents"]) for b in h.bodies()] == [2, 2, 2]


async def test_async_uses_async_client_with_bounded_concurrency():
    docs = [f"doc {i}" for i in range(40)]
    state = {"now": 0, "peak": 0, "calls": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        state["now"] += 1
        state["calls"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.02)
        state["now"] -= 1
        return echo_scores(request)

    def sync_handler(request):
        raise AssertionError("the async API must not use the sync client")

    r = RemoteReranker("http://127.0.0.1:9000", dialect="jina", max_documents_per_request=4, max_concurrency=3,
                       transport=httpx.MockTransport(sync_handler), async_transport=httpx.MockTransport(handler))
    ranked = await r.arank("q", docs)
    assert state["calls"] == 10 and state["peak"] == 3
    assert [(x.index, x.score) for x in ranked] == _expected(docs)
    scores = await r.ascore("q", docs)
    assert scores == [dict(_expected(docs))[i] for i in range(40)]
    # The threshold is applied on the merged scores (never sent: servers do not share one), then top_n.
    cut = _expected(docs)[9][1]
    kept = await r.arank("q", docs, top_n=5, score_threshold=cut)
    assert [(x.index, x.score) for x in kept] == _expected(docs)[:5]
    assert [x.index for x in await r.arank("q", docs, score_threshold=cut)] == [i for i, s in _expected(docs)
                                                                                if s >= cut]
    await r.aclose()


# ------------------------------------------------------------------------------------------- retries
def test_retries_on_5xx_429_and_connection_errors_honouring_retry_after(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("mmrank.scorers.http._sleep", slept.append)
    h = Recorder(httpx.Response(503, json={"detail": "busy"}),
                 httpx.Response(429, headers={"Retry-After": "2"}, json={"detail": "slow down"}),
                 httpx.ConnectError("connection refused"),
                 echo_scores)
    r = RemoteReranker("http://127.0.0.1:9000", dialect="jina", max_retries=3, backoff=0.5,
                       transport=httpx.MockTransport(h))
    assert len(r.rank("q", ["a", "b"])) == 2
    assert len(h.requests) == 4
    assert len(slept) == 3 and slept[1] == 2.0  # Retry-After honoured
    assert 0 <= slept[0] <= 0.5 and 0 <= slept[2] <= 2.0  # full jitter, exponential cap


def test_gives_up_after_max_retries_and_on_long_retry_after(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("mmrank.scorers.http._sleep", slept.append)
    h = Recorder(httpx.ConnectError("connection refused"))
    r = RemoteReranker("http://user:pw@127.0.0.1:9000", dialect="jina", max_retries=2,
                       transport=httpx.MockTransport(h))
    with pytest.raises(RemoteError, match=r"could not reach http://127.0.0.1:9000/v1/rerank after 3 attempts") as e:
        r.rank("q", ["a"])
    assert "pw" not in str(e.value) and "pw" not in repr(r)
    assert len(h.requests) == 3
    h = Recorder(httpx.Response(503, headers={"Retry-After": "3600"}, json={"detail": "maintenance"}))
    r = RemoteReranker("http://127.0.0.1:9000", dialect="jina", transport=httpx.MockTransport(h))
    with pytest.raises(RemoteError, match="retry after 3600s.*maintenance"):
        r.rank("q", ["a"])
    assert len(h.requests) == 1


async def test_async_retries(monkeypatch):
    slept: list[float] = []

    async def fake_sleep(s):
        slept.append(s)

    monkeypatch.setattr("mmrank.scorers.http._asleep", fake_sleep)
    h = Recorder(httpx.Response(502, text="bad gateway"), echo_scores)

    async def handler(request):
        return h(request)

    r = RemoteReranker("http://127.0.0.1:9000", dialect="jina", async_transport=httpx.MockTransport(handler))
    assert len(await r.arank("q", ["a", "b", "c"])) == 3
    assert len(h.requests) == 2 and len(slept) == 1


# ------------------------------------------------------------------------------------------- bad answers
@pytest.mark.parametrize("results, message", [
    ([{"index": 0, "relevance_score": 0.5}], "returned 1 results for 2 documents"),
    ([{"index": 0, "relevance_score": 0.5}, {"index": 0, "relevance_score": 0.4}], "repeated document index 0"),
    ([{"index": 0, "relevance_score": 0.5}, {"index": 7, "relevance_score": 0.4}], "invalid or repeated"),
    ([{"index": 0, "relevance_score": "high"}, {"index": 1, "relevance_score": 0.4}], "non-numeric score"),
])
def test_malformed_answers_are_errors_not_silent_losses(results, message):
    h = Recorder(httpx.Response(200, json={"results": results}))
    r = RemoteReranker("http://127.0.0.1:9000", dialect="jina", transport=httpx.MockTransport(h))
    with pytest.raises(RemoteError, match=message):
        r.rank("q", ["a", "b"])
    h = Recorder(httpx.Response(200, text="<html>proxy login</html>"))
    r = RemoteReranker("http://127.0.0.1:9000", dialect="jina", transport=httpx.MockTransport(h))
    with pytest.raises(RemoteError, match="not JSON"):
        r.rank("q", ["a", "b"])


# ------------------------------------------------------------------------------------------- images
def test_unreadable_local_images_are_reported_per_document_and_urls_are_not_fetched(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(sample_image_bytes(0)[:60])
    h = Recorder(echo_scores)
    r = RemoteReranker("http://127.0.0.1:9000", dialect="jina", transport=httpx.MockTransport(h))
    docs = ["text", Document(image=broken, id="b"), Document(image="https://example.org/never-fetched.png"),
            Document(image=tmp_path / "missing.png"), b"not an image at all"]
    ranked = r.rank("q", docs)
    assert {x.index for x in ranked[:2]} == {0, 2} and all(x.score is not None for x in ranked[:2])
    assert {x.index for x in ranked[2:]} == {1, 3, 4} and all(x.score is None for x in ranked[2:])
    errors = {x.index: x.error for x in ranked[2:]}
    assert "document 1" in errors[1] and "id='b'" in errors[1] and "truncated" in errors[1]
    assert "does not exist" in errors[3] and "not an image" in errors[4]
    (body,) = h.bodies()
    assert body["documents"] == ["text", {"image": "https://example.org/never-fetched.png"}]
    assert h.seen == ["http://127.0.0.1:9000/v1/rerank"]  # nothing else was requested
    with pytest.raises(InputError, match="document 1"):
        r.rank("q", docs, on_error="raise")


def test_pil_images_go_as_lossless_png_and_bytes_as_given():
    img = sample_image(5)
    jpeg = sample_image_bytes(2, fmt="JPEG")
    h = Recorder(echo_scores)
    r = RemoteReranker("http://127.0.0.1:9000", dialect="vllm", transport=httpx.MockTransport(h))
    r.rank("q", [img, jpeg, Document(image="data:image/jpeg;base64," + base64.b64encode(jpeg).decode())])
    d0, d1, d2 = (d["content"][0]["image_url"]["url"] for d in h.bodies()[0]["documents"])
    sent = Image.open(io.BytesIO(base64.b64decode(d0.split(",", 1)[1])))
    assert sent.format == "PNG" and sent.tobytes() == img.tobytes()
    assert d1 == "data:image/jpeg;base64," + base64.b64encode(jpeg).decode() and d2 == d1


def test_every_local_image_form_goes_as_the_files_own_bytes_and_the_policy_applies(tmp_path):
    jpeg = sample_image_bytes(3, fmt="JPEG")
    f = tmp_path / "page.jpg"
    f.write_bytes(jpeg)
    b64 = base64.b64encode(jpeg).decode()
    h = Recorder(echo_scores)
    r = RemoteReranker("http://127.0.0.1:9000", dialect="jina", transport=httpx.MockTransport(h))
    r.rank("q", [Document(image=str(f)), Document(image=f), Document(image=f.as_uri()), Document(image=b64)])
    assert [d["image"] for d in h.bodies()[0]["documents"]] == [b64] * 4
    # A server-style policy (no local files) refuses paths per document, as the local scorers do.
    strict = RemoteReranker("http://127.0.0.1:9000", dialect="jina", transport=httpx.MockTransport(h),
                            image_policy=ImagePolicy.strict())
    ranked = strict.rank("q", ["text", Document(image=f), Document(image=f.as_uri())])
    assert [x.index for x in ranked][0] == 0 and all("local files are not allowed" in x.error for x in ranked[1:])


# ------------------------------------------------------------------------------------------- secrets
def test_api_key_never_in_repr_errors_or_logs(monkeypatch, caplog):
    monkeypatch.setenv("MMRANK_API_KEY", SECRET)
    monkeypatch.setenv("JINA_API_KEY", "other-key")
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr("mmrank.scorers.http._sleep", lambda s: None)
    h = Recorder(httpx.Response(500, json={"detail": "boom"}), httpx.Response(403, json={"detail": "forbidden"}))
    r = RemoteReranker("http://127.0.0.1:9000", dialect="jina", transport=httpx.MockTransport(h))
    assert r.has_api_key and SECRET not in repr(r) and "api_key=<set>" in repr(r)
    with pytest.raises(RemoteError) as info:
        r.rank("q", ["a"])
    assert h.requests[0].headers["authorization"] == f"Bearer {SECRET}"  # MMRANK_API_KEY wins
    assert SECRET not in str(info.value) and SECRET not in (info.value.body or "")
    assert SECRET not in caplog.text and "retrying" in caplog.text


def test_jina_service_without_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("MMRANK_API_KEY", raising=False)
    monkeypatch.delenv("JINA_API_KEY", raising=False)
    with pytest.raises(InputError, match="needs an API key"):
        RemoteReranker()
    with pytest.raises(InputError, match="http"):
        RemoteReranker("ftp://example.org/rerank")
    with pytest.raises(InputError, match="dialect"):
        RemoteReranker("http://127.0.0.1:1", dialect="cohere")  # type: ignore[arg-type]


def test_factory_builds_the_remote_scorer():
    from mmrank import load_reranker

    r = load_reranker("remote", "my-model", url="http://127.0.0.1:1", dialect="jina")
    assert isinstance(r, RemoteReranker) and r.model == "my-model" and r.model_name == "my-model"


@pytest.mark.parametrize("mode, setting", [("remote", {"device": "cpu"}), ("remote", {"batch_size": 4}),
                                           ("listwise", {"batch_size": 4}), ("pointwise", {"url": "http://x"}),
                                           ("pairwise", {"api_key": "k"})])
def test_factory_refuses_a_setting_the_mode_would_not_use(mode, setting):
    from mmrank import load_reranker

    name = next(iter(setting))
    with pytest.raises(InputError, match=f"{name} applies to modes .*not '{mode}'"):
        load_reranker(mode, None, **setting)
    with pytest.raises(InputError, match="unknown mode"):
        load_reranker("bogus")
