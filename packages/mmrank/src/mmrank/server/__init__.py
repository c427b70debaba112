"""``mmrank serve``: a Jina-compatible rerank API over any local mmrank scorer.

    pip install "mmrank[serve]"
    mmrank serve --model jinaai/jina-reranker-m0 --port 8080          # or: python -m mmrank.server ...
    curl -s localhost:8080/v1/rerank -H 'Content-Type: application/json' \\
         -d '{"query": "what do pandas eat?", "documents": ["bamboo", {"image": "https://.../panda.png"}]}'

Endpoints: ``POST /v1/rerank`` (aliases ``/rerank`` and ``/v2/rerank``) in the Jina dialect, read leniently
enough for Cohere v1/v2 and vLLM clients; ``GET /health`` (liveness) and ``GET /ready`` (readiness), the only
public routes when an API key is set; ``GET /v1/models``, ``/v1/stats``, ``/metrics`` (Prometheus, the
``metrics`` extra) and ``/openapi.json``. Clients: :class:`mmrank.RemoteReranker` (``url="http://host:8080"``),
Jina's and Cohere's SDKs, LlamaIndex / Haystack / LangChain Jina rerankers, ``rerankers``. Every option is also
read from ``MMRANK_SERVE_<OPTION>``. The full reference (limits, endpoints, metrics, compatibility) is
``docs/server.md``.

Refused by default (each with a 4xx whose message names the limit and the flag that changes it):
bodies over 64 MiB (413), more than 1000 documents (413), an empty document list (422), images over
16 MiB or 25 megapixels (422, read from the header before decoding), more than 150 megapixels of images
per request (413), texts over 200,000 characters, unknown top-level JSON fields (422; fields the Jina, Cohere
and vLLM APIs define are type-checked and ignored), malformed JSON (400), request heads slower than 10 s
(closed) and bodies slower than 30 s (408), local paths and ``file:`` URLs (``--allow-local-files``), image
URLs whose host resolves to a non-public address — refused before any connection is made
(``--allow-private-urls``), image downloads over 10 s (``--image-timeout``), and — with ``--api-key`` or
``MMRANK_SERVE_API_KEY`` set — requests without ``Authorization: Bearer <key>`` (401). It listens on
127.0.0.1 unless ``--host`` says otherwise. A document that cannot be read fails the request with 422
naming its index, or — with ``"on_error": "last"`` in the request — is ranked last with
``relevance_score: null`` and an ``error`` field. A client that disconnects before its answer is not scored.
How concurrent requests are batched: :mod:`mmrank.server.batching`.
"""

from __future__ import annotations

from typing import Any

from .cli import build_parser, main

__all__ = ["main", "build_parser", "create_app", "ServerConfig"]


def __getattr__(name: str) -> Any:
    # fastapi is an optional dependency (the "serve" extra): import it only when the app is wanted.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "ServerConfig":
        from .config import ServerConfig

        return ServerConfig
    raise AttributeError(f"module 'mmrank.server' has no attribute {name!r}")
