"""The chat backend through the doors every scorer has: the LangChain adapter, `mmrank serve` (in-process
app and its CLI's scorer construction) and `mmrank rank`, against a fake chat-completions engine on
127.0.0.1 that ranks by the number after "doc" in each passage."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from mmrank import ChatReranker
from mmrank_testkit.http_server import serve
from test_chat import Engine, docs, relevance


def test_langchain_adapter_with_the_chat_mode():
    from langchain_core.documents import Document as LCDocument
    from langchain_mmrank import MMRankRerank

    eng = Engine()
    with serve(eng) as srv:
        compressor = MMRankRerank(mode="chat", model="served-model", url=srv.url, top_n=3, api_key="sk-chat-123456",
                                  reranker_kwargs={"window_size": 4, "step": 2, "max_retries": 0})
        assert isinstance(compressor.scorer, ChatReranker) and compressor.scorer.window_size == 4
        texts = docs(7)
        out = compressor.compress_documents([LCDocument(page_content=t, id=str(i)) for i, t in enumerate(texts)],
                                            "which doc")
        expected = ChatReranker(srv.url, "served-model", window_size=4, step=2).rank("which doc", texts)
        assert [d.id for d in out] == [str(x.index) for x in expected[:3]]
        assert [d.metadata["relevance_score"] for d in out] == [x.score for x in expected[:3]]
        assert srv.requests[0].headers["authorization"] == "Bearer sk-chat-123456"


def test_mmrank_serve_app_with_a_chat_scorer():
    from mmrank.server import ServerConfig, create_app

    eng = Engine()
    with serve(eng) as srv:
        scorer = ChatReranker(srv.url, "served-model", method="pairwise", max_retries=0)
        with TestClient(create_app(scorer, ServerConfig(), mode="chat")) as client:
            texts = docs(6)
            resp = client.post("/v1/rerank", json={"query": "q", "documents": texts, "top_n": 4})
            assert resp.status_code == 200, resp.text
            got = resp.json()["results"]
            assert [r["index"] for r in got] == sorted(range(6), key=lambda i: -relevance(texts[i]))[:4]
            assert client.get("/v1/stats").json()["mode"] == "chat"  # /health is liveness only
        assert len(eng.bodies) == 6


def test_serve_and_rank_clis_build_the_chat_scorer(capsys):
    from mmrank import cli
    from mmrank.server import cli as serve_cli

    args = serve_cli.build_parser().parse_args(["--mode", "chat", "--url", "http://127.0.0.1:1/v1", "--model",
                                                "my-adapter", "--chat-method", "pairwise"])
    scorer = serve_cli._scorer(args, serve_cli._config(args))
    assert isinstance(scorer, ChatReranker) and scorer.method == "pairwise" and scorer.model == "my-adapter"
    assert scorer.url == "http://127.0.0.1:1/v1/chat/completions"
    bad = serve_cli.build_parser().parse_args(["--url", "http://x"])
    with pytest.raises(SystemExit, match="apply to --mode chat"):
        serve_cli._scorer(bad, serve_cli._config(bad))
    eng = Engine()
    with serve(eng) as srv:
        texts = docs(5)
        code = cli.main(["rank", "--mode", "chat", "--url", srv.url, "--model", "served-model", "--window-size",
                         "3", "--step", "2", "--query", "which", "--json", *texts])
        assert code == 0
        out = json.loads(capsys.readouterr().out)
        results = out["results"] if isinstance(out, dict) else out
        assert len(results) == 5 and len(eng.bodies) == 2
        assert eng.bodies[0]["model"] == "served-model"
