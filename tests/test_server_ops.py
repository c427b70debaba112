"""Operations of ``mmrank serve`` in-process (FastAPI TestClient, the real tiny model): the request schema in
OpenAPI (and that a request valid under it is accepted), Prometheus /metrics, liveness vs readiness, the
served name, what needs the API key, compatibility fields (accepted, type-checked, logged once), vLLM
content-part documents, /v2/rerank, every ``mmrank serve`` flag read from ``MMRANK_SERVE_<FLAG>``, and a
request whose client left while it waited for the model thread never reaching the model."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random

import jsonschema
import pytest
from fastapi.testclient import TestClient
from mmrank.server import ServerConfig, create_app
from mmrank.server.cli import ENV_PREFIX, build_parser, env_name, parse_args
from mmrank.server.config import default_served_name
from mmrank_testkit import sample_image_bytes

KEY = "ops-test-key-5678"
IMG = base64.b64encode(sample_image_bytes(2)).decode()


@pytest.fixture(scope="module")
def client(jina_reranker):
    with TestClient(create_app(jina_reranker, ServerConfig(served_model_names=("tiny-m0", "alias")))) as c:
        yield c


@pytest.fixture(scope="module")
def keyed(jina_reranker):
    with TestClient(create_app(jina_reranker, ServerConfig(api_key=KEY))) as c:
        yield c


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ------------------------------------------------------------------------------------------- OpenAPI
def _validator(spec: dict) -> jsonschema.Draft202012Validator:
    # Resolve "#/components/schemas/..." against the whole document, as generated clients do.
    return jsonschema.Draft202012Validator({**spec, "$ref": "#/components/schemas/RerankRequest"})


def test_openapi_has_the_request_schema_and_valid_requests_are_accepted(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/RerankRequest"}
        assert "RerankResponse" in str(spec["paths"][path]["post"]["responses"]["200"])
    validator = _validator(spec)
    good = [
        {"query": "pandas", "documents": ["bamboo", {"text": "t", "image": IMG}, {"image": IMG}], "top_n": 2},
        {"model": "tiny-m0", "query": {"image": IMG}, "documents": [{"text": "x", "title": "extra ok"}],
         "return_documents": False, "on_error": "last", "rank_fields": ["text"], "max_chunks_per_doc": 3},
        {"query": {"content": [{"type": "text", "text": "q"}]},
         "documents": {"content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": IMG}}]}},
    ]
    for body in good:
        assert not list(validator.iter_errors(body)), body
        resp = client.post("/v1/rerank", json=body)
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["results"]) == min(body.get("top_n") or 99, len(body["documents"]) if isinstance(
            body["documents"], list) else len(body["documents"]["content"]))
    bad = [{"query": "q"}, {"query": "q", "documents": [5]}, {"query": "q", "documents": ["a"], "top_n": -1},
           {"query": "q", "documents": ["a"], "colour": "red"}, {"query": "q", "documents": ["a"], "on_error": "x"}]
    for body in bad:  # what the schema refuses, the server refuses too
        assert list(validator.iter_errors(body)), body
        assert client.post("/v1/rerank", json=body).status_code == 422, body


def test_every_schema_reference_resolves(client):
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    refs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    assert len(refs) > 10
    for ref in set(refs):
        target = spec
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]  # KeyError: a dangling reference a client generator would choke on
        assert isinstance(target, dict)


def test_generated_schema_bodies_agree_with_the_server(client):
    """Random bodies built from the schema's own field list: schema-valid ones are 200, others 422."""
    spec = client.get("/openapi.json").json()
    validator = _validator(spec)
    rng = random.Random(7)
    values = {"top_n": [0, 1, 3, -2, "x", None], "return_documents": [True, False, "no", 1.5],
              "max_tokens_per_doc": [10, "ten", None], "truncation": [True, "maybe"], "priority": [0, 2.5],
              "truncation_side": ["left", "middle"], "rank_fields": [["text"], "text"], "user": ["u", 3]}
    agree = 0
    for _ in range(20):
        body = {"query": "pandas", "documents": ["bamboo", "stocks"]}
        for field in rng.sample(sorted(values), 3):
            body[field] = rng.choice(values[field])
        valid = not list(validator.iter_errors(body))
        status = client.post("/v1/rerank", json=body).status_code
        assert status == (200 if valid else 422), (body, status)
        agree += 1
    assert agree == 20


# ------------------------------------------------------------------------------------------- names, health
def test_served_name_in_responses_and_models(client):
    out = client.post("/v1/rerank", json={"query": "q", "documents": ["a"]}).json()
    assert out["model"] == "tiny-m0" and out["id"].startswith("rerank-")
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny-m0", "alias"]
    assert client.post("/v1/rerank", json={"model": "alias", "query": "q", "documents": ["a"]}).status_code == 200
    assert client.post("/v1/rerank", json={"model": "other", "query": "q", "documents": ["a"]}).status_code == 404


@pytest.mark.parametrize("model_id, name", [("jinaai/jina-reranker-m0", "jinaai/jina-reranker-m0"),
                                            ("/srv/models/m0/", "m0"), ("./ckpt/m0", "m0"),
                                            ("~/models/jina-m0", "jina-m0"), ("C:\\models\\m0", "m0")])
def test_default_served_name_is_never_a_path(model_id, name):
    assert default_served_name(model_id) == name


def test_liveness_and_readiness_say_nothing_internal(client, jina_dir):
    health = client.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert str(jina_dir) not in health.text + ready.text


def test_readiness_is_503_while_the_queue_is_full_or_the_server_stops(jina_reranker):
    app = create_app(jina_reranker, ServerConfig(max_queue=1))
    with TestClient(app) as c:
        service = app.state.service
        service.worker._pending = 1  # as if one request waited for the model
        try:
            resp = c.get("/ready")
            assert resp.status_code == 503 and resp.json()["reason"] == "the model queue is full"
        finally:
            service.worker._pending = 0
        assert c.get("/ready").status_code == 200
    assert app.state.service.not_ready_reason() == "shutting down"  # after the lifespan ended


def test_with_a_key_everything_but_liveness_needs_it_and_docs_are_off(keyed, client):
    assert keyed.get("/health").status_code == 200 and keyed.get("/ready").status_code == 200
    for path in ("/openapi.json", "/v1/models", "/v1/stats", "/metrics"):
        assert keyed.get(path).status_code == 401, path
        assert keyed.get(path, headers=auth("wrong")).status_code == 401, path
        assert keyed.get(path, headers=auth()).status_code == 200, path
    for path in ("/docs", "/redoc"):
        assert keyed.get(path).status_code == 404 and keyed.get(path, headers=auth()).status_code == 404
    assert keyed.post("/v2/rerank", json={"query": "q", "documents": ["a"]}).status_code == 401
    # without a key the browser pages are served
    assert client.get("/docs").status_code == 200 and "swagger" in client.get("/docs").text.lower()


# ------------------------------------------------------------------------------------------- metrics
def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + ("{" if labels else " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_documents_errors_and_latency(jina_reranker):
    with TestClient(create_app(jina_reranker, ServerConfig())) as c:
        assert c.post("/v1/rerank", json={"query": "q", "documents": ["a", "b", "c"]}).status_code == 200
        assert c.post("/v2/rerank", json={"query": "q", "documents": ["a", "b"]}).status_code == 200
        assert c.post("/v1/rerank", json={"query": "q"}).status_code == 422
        assert c.post("/v1/rerank", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
        body = {"query": "q", "on_error": "last", "documents": ["a", {"image": "http://10.0.0.1/x.png"}]}
        assert c.post("/v1/rerank", json=body).status_code == 200
        assert c.post("/v1/rerank", json={**body, "on_error": "raise"}).status_code == 422
        c.get("/no-such-path-" + "x" * 30)
        resp = c.get("/metrics")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        text = resp.text
    assert _sample(text, "mmrank_requests_total", route="/v1/rerank", status="200") == 2
    assert _sample(text, "mmrank_requests_total", route="/v2/rerank", status="200") == 1
    assert _sample(text, "mmrank_requests_total", route="/v1/rerank", status="422") == 2
    assert _sample(text, "mmrank_requests_total", route="other", status="404") == 1  # no label per unknown path
    assert "no-such-path" not in text
    assert _sample(text, "mmrank_documents_scored_total") == 6
    assert _sample(text, "mmrank_document_errors_total") == 2
    assert _sample(text, "mmrank_errors_total", kind="invalid") == 2
    assert _sample(text, "mmrank_errors_total", kind="bad_request") == 1
    assert _sample(text, "mmrank_request_duration_seconds_count", route="/v1/rerank") == 5
    assert _sample(text, "mmrank_model_calls_total") >= 3
    assert "mmrank_queue_depth 0.0" in text


def test_metrics_without_prometheus_client_say_how_to_install(jina_reranker, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_prometheus(name, *args, **kwargs):
        if name.startswith("prometheus_client"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_prometheus)
    with TestClient(create_app(jina_reranker, ServerConfig())) as c:
        assert c.post("/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 200
        resp = c.get("/metrics")
    assert resp.status_code == 501 and "pip install 'mmrank[metrics]'" in resp.text


# ------------------------------------------------------------------------------------------- compatibility
def test_compat_fields_are_ignored_and_logged_once(caplog, jina_reranker):
    client = TestClient(create_app(jina_reranker, ServerConfig()))
    body = {"query": "pandas", "documents": [{"text": "bamboo", "title": "food", "id": "d1"}, "stocks"],
            "rank_fields": ["text"], "max_chunks_per_doc": 4, "max_tokens_per_doc": 512, "truncation": True,
            "priority": 0, "truncate_prompt_tokens": -1, "relevant_spans": {"mode": "disabled"}}
    with caplog.at_level(logging.INFO, logger="mmrank.server"):
        first = client.post("/v1/rerank", json=body)
        second = client.post("/v1/rerank", json=body)
    assert first.status_code == second.status_code == 200
    local = jina_reranker.score("pandas", ["bamboo", "stocks"])
    for r in first.json()["results"]:
        assert r["relevance_score"] == pytest.approx(local[r["index"]], abs=1e-5)
    assert first.json()["results"][0]["document"] in ({"text": "bamboo"}, {"text": "stocks"})
    logged = [rec.getMessage() for rec in caplog.records if "accepted and ignored" in rec.getMessage()]
    assert any("request field 'rank_fields' (Cohere v1)" in m for m in logged) and any("document field 'title'" in m for m in logged)
    assert len(logged) == len(set(logged)) == 9  # 7 request fields + 2 document fields, each once
    # the names are the client's to choose: a flood of new ones is not logged (nor remembered) without bound
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mmrank.server"):
        for k in range(3):
            docs = [{"text": "t", **{f"f{k}_{j}": "v" for j in range(60)}}]
            assert client.post("/v1/rerank", json={"query": "q", "documents": docs}).status_code == 200
    flood = [rec.getMessage() for rec in caplog.records if "ignored" in rec.getMessage()]
    assert len(flood) == 100 - 9 + 1 and "no longer logging them" in flood[-1]


def test_v2_route_and_vllm_content_parts(client, jina_reranker):
    parts = {"content": [{"type": "text", "text": "bamboo"}, {"type": "image_url", "image_url": {"url": IMG}},
                         {"type": "image_url", "image_url": {"url": "data:image/png;base64," + IMG}}]}
    out = client.post("/v2/rerank", json={"model": "tiny-m0", "query": "pandas", "documents": parts}).json()
    assert out["meta"]["api_version"]["version"] == "2" and sorted(r["index"] for r in out["results"]) == [0, 1, 2]
    png = base64.b64decode(IMG)
    local = jina_reranker.score("pandas", ["bamboo", {"image": png}, {"image": png}])
    for r in out["results"]:
        assert r["relevance_score"] == pytest.approx(local[r["index"]], abs=1e-5)
    one = {"content": [{"type": "text", "text": "a chart"}, {"type": "image_url", "image_url": {"url": IMG}}]}
    out = client.post("/rerank", json={"query": {"content": [{"type": "text", "text": "pandas"}]},
                                       "documents": [one, "plain"]}).json()
    both = jina_reranker.score("pandas", [{"text": "a chart", "image": png}, "plain"])
    for r in out["results"]:
        assert r["relevance_score"] == pytest.approx(both[r["index"]], abs=1e-5)
    assert {"text": "a chart", "image": IMG} in [r["document"] for r in out["results"]]


@pytest.mark.parametrize("documents, message", [
    ([{"content": [{"type": "video_url", "video_url": {"url": "x"}}]}], "content part type 'video_url'"),
    ([{"content": [{"type": "image_url", "image_url": {"url": IMG}}] * 2}], "2 image_url parts"),
    ([{"content": []}], "'content' is an empty list"),
    ([{"content": [{"type": "text", "text": 3}]}], "documents[0].content[0].text"),
    ([{"content": [{"type": "text", "text": "a"}], "text": "b"}], "not both"),
    ([{"text": "a", "imgae": IMG}], "did you mean 'image'"),
    ([{"text": "a", "image": 5}], "documents[0].image"),
])
def test_bad_content_parts_and_typos_are_422_naming_the_document(client, documents, message):
    resp = client.post("/v1/rerank", json={"query": "q", "documents": ["ok", *documents]})
    assert resp.status_code == 422
    detail = resp.json()["detail"].replace("documents[1]", "documents[0]")
    assert message in detail, detail


# ------------------------------------------------------------------------------------------- env flags
def _value_for(action) -> tuple[str, object] | None:
    """A value for ``action`` as an environment string and as parsed; None for option types this test cannot
    make up a value for (it still checks their variable is documented)."""
    if action.choices:
        choice = list(action.choices)[-1]
        return str(choice), choice
    if action.nargs == 0:
        return "yes", action.const
    if action.type is int:
        return "17", 17
    if action.type is float:
        return "2.5", 2.5
    if action.type not in (None, str):
        return None
    if action.nargs is None and action.__class__.__name__ == "_AppendAction":
        return "a, b", ["a", "b"]
    return "from-env", "from-env"


def test_every_serve_flag_is_readable_from_the_environment():
    parser = build_parser()
    actions = [a for a in parser._actions if env_name(a)]
    assert len(actions) >= 25
    help_text = " ".join(parser.format_help().split())
    environ = {}
    expected = {}
    for action in actions:
        name = env_name(action)
        long = next(o for o in action.option_strings if o.startswith("--"))
        assert name == ENV_PREFIX + long[2:].upper().replace("-", "_")
        assert f"[env {name}]" in help_text, name
        made_up = _value_for(action)
        if made_up is not None:
            environ[name], expected[action.dest] = made_up
    assert len(expected) >= 25
    args = parse_args([], environ)
    for dest, value in expected.items():
        assert getattr(args, dest) == value, dest


def test_command_line_wins_and_bad_env_values_name_the_variable(capsys):
    env = {"MMRANK_SERVE_MAX_DOCUMENTS": "5", "MMRANK_SERVE_SERVED_MODEL_NAME": "a,b",
           "MMRANK_SERVE_ALLOW_LOCAL_FILES": "off"}
    args = parse_args(["--max-documents", "9", "--served-model-name", "c"], env)
    assert args.max_documents == 9 and args.served_model_name == ["c"] and args.allow_local_files is False
    args = parse_args([], env)
    assert args.max_documents == 5 and args.served_model_name == ["a", "b"]
    for name, raw in (("MMRANK_SERVE_MAX_DOCUMENTS", "many"), ("MMRANK_SERVE_MODE", "sideways"),
                      ("MMRANK_SERVE_ALLOW_PRIVATE_URLS", "perhaps")):
        with pytest.raises(SystemExit):
            parse_args([], {name: raw})
        assert f"environment variable {name}={raw!r}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- gone clients
async def _asgi_post(app, body: bytes, gone: asyncio.Event) -> list[dict]:
    """POST /v1/rerank straight into the ASGI app; the client 'disconnects' when ``gone`` is set."""
    delivered = False

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/rerank", "raw_path": b"/v1/rerank", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080)}
    await app(scope, receive, send)
    return sent


def test_a_request_whose_client_left_while_it_waited_for_the_model_is_skipped(jina_reranker):
    """Deterministic: the model thread is held inside request A's model call (by the scorer's own model lock)
    while B queues behind it and its client disconnects; B must never reach the model."""
    app = create_app(jina_reranker, ServerConfig())
    service = app.state.service
    body_a = json.dumps({"query": "pandas", "documents": ["bamboo", "stocks"]}).encode()
    body_b = json.dumps({"query": "other query", "documents": ["x", "y", "z"]}).encode()

    async def until(condition, what: str) -> None:
        for _ in range(1000):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")

    async def scenario():
        calls = service.worker.calls
        never, gone = asyncio.Event(), asyncio.Event()
        lock = jina_reranker._model_lock
        lock.acquire()
        try:
            a = asyncio.create_task(_asgi_post(app, body_a, never))
            await until(lambda: service.worker.calls == calls + 1, "A in the model thread")
            b = asyncio.create_task(_asgi_post(app, body_b, gone))
            await until(lambda: service.worker.pending == 2, "B queued behind A")
            gone.set()
            b_sent = await asyncio.wait_for(b, 10)
        finally:
            lock.release()
        a_sent = await asyncio.wait_for(a, 60)
        await until(lambda: service.worker.pending == 0, "the queue to drain")
        return calls, a_sent, b_sent

    calls, a_sent, b_sent = asyncio.run(scenario())
    assert a_sent[0]["status"] == 200 and json.loads(a_sent[1]["body"])["results"]
    assert b_sent[0]["status"] == 499  # recorded for the metrics; the client is gone
    assert service.worker.calls == calls + 1  # A only: B was skipped
    assert service.cancelled == 1 and service.documents_scored == 2
