"""The ASGI app of ``mmrank serve`` (FastAPI): ``POST /v1/rerank`` (and ``/rerank``, ``/v2/rerank``),
``GET /health`` (liveness), ``/ready`` (readiness), ``/v1/models``, ``/v1/stats``, ``/metrics``, ``/openapi.json``.

Request path, and where each step runs:

1. event loop: bearer-token check; Content-Type and Content-Encoding checks, the body read with a byte cap
   and a deadline (:mod:`mmrank.server.body`); from then on the connection is watched and the request's
   work is cancelled if the client goes away; strict JSON parsing, a document-count check before any
   validation, and pydantic validation (:mod:`mmrank.server.schemas`: unknown top-level fields refused,
   other APIs' fields type-checked and ignored) — on one of two decode threads for bodies over 256 KiB;
   cheap per-document checks (text length, image reference form — no local paths unless allowed).
2. image threads (``prep_workers``): images are fetched/decoded under the strict :class:`ImagePolicy`
   (SSRF guard, byte and pixel caps, timeout) with a running total-pixel budget, then the scorer's own
   per-document checks. A request without images is prepared on another thread pool, so requests waiting
   on slow image URLs never hold up text-only ones.
3. the model thread (:mod:`mmrank.server.batching`): scoring, merged across concurrent requests where the
   scorer allows it.

Unreadable documents: by default the request fails with **422 naming the document index** (``detail`` and
``document_index``); with ``"on_error": "last"`` in the request they are ranked after every scored document
with ``relevance_score: null`` and an ``error`` field instead. Error bodies and exception handlers:
:mod:`mmrank.server.errors`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, Response

from .._version import __version__
from ..errors import ImageLoadError, InputError
from ..inputs.documents import Document, Query
from ..inputs.images import _looks_base64
from ..scorers.base import PreparedRanking, RankedDocument, Ranking, Reranker
from .batching import ModelWorker, QueueFull
from .body import DECODE_IN_THREAD, check_headers, read_body, rerank_request
from .config import ServerConfig
from .errors import HTTPError, SafeJSONResponse, install_error_handlers
from .metrics import MISSING_MESSAGE, Metrics, MetricsMiddleware
from .schemas import IGNORED_FIELDS, ErrorResponse, RerankRequest, RerankResponse

logger = logging.getLogger("mmrank.server")

_URL_SAFE_BASE64 = str.maketrans("-_", "+/")
_MAX_LOGGED_NAMES = 100  # distinct ignored field names logged, at most (document field names are the client's)

RERANK_ROUTES = ("/v1/rerank", "/rerank", "/v2/rerank")
ROUTES = (*RERANK_ROUTES, "/health", "/ready", "/v1/models", "/v1/stats", "/metrics", "/openapi.json", "/docs",
          "/redoc")


class _PixelBudget:
    def __init__(self, limit: int):
        self.limit = limit
        self.total = 0
        self._lock = threading.Lock()

    def add(self, pixels: int) -> bool:
        with self._lock:
            self.total += pixels
            return self.total <= self.limit

    @property
    def exceeded(self) -> bool:
        return self.total > self.limit


class RerankService:
    """Everything the routes need: the scorer, its worker thread, the limits."""

    def __init__(self, scorer: Reranker, config: ServerConfig, mode: str):
        self.scorer = scorer
        self.config = config
        self.mode = mode
        # Every image is read under this policy before the scorer sees the request (the loaded image is
        # cached in the Document), so the scorer's own policy is never used to fetch anything.
        self.policy = config.image_policy()
        self.worker = ModelWorker(scorer, max_batch_documents=config.max_batch_documents, max_queue=config.max_queue)
        self.prep_pool = ThreadPoolExecutor(max_workers=config.prep_workers, thread_name_prefix="mmrank-images")
        # Requests without images are prepared here, never behind requests waiting on slow image URLs.
        self.text_pool = ThreadPoolExecutor(max_workers=config.prep_workers, thread_name_prefix="mmrank-text")
        # Large bodies are parsed and validated here, two at a time: parsing is CPU-bound under the GIL (more
        # threads would not be faster) and a parsed body can take ~10x its size in memory.
        self.decode_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mmrank-decode")
        self.started = time.time()
        self.requests = 0
        self.documents_scored = 0
        self.cancelled = 0
        self.served_name = config.served_name(scorer.model_name)
        self.served_names = [self.served_name, *[n for n in config.served_model_names if n != self.served_name]]
        self.metrics = Metrics(set(ROUTES), queue_depth=lambda: self.worker.pending,
                               model_calls=lambda: self.worker.calls, merged=lambda: self.worker.merged_jobs)
        self._logged_ignored: set[str] = set()
        self.accepting = False

    def not_ready_reason(self) -> str | None:
        """Why the server should not get traffic now (``None``: ready)."""
        if not self.accepting:
            return "shutting down"
        thread = getattr(self.worker, "_thread", None)
        if isinstance(thread, threading.Thread) and not thread.is_alive():
            return "the model thread is not running"
        if self.worker.pending >= self.config.max_queue:
            return "the model queue is full"
        return None

    # ------------------------------------------------------------------ helpers
    def image_source(self, ref: str) -> Any:
        """What to hand to the image loader for an image string of a request; refuses local files unless allowed.

        Bare base64 may be standard or URL-safe, with or without padding and line breaks; a ``data:`` URI's
        scheme and parameters are case-insensitive (``DATA:image/png;BASE64,...``)."""
        text = ref.strip()
        head = text[:16].lower()
        if not text:
            raise ImageLoadError("image is an empty string")
        if head.startswith("data:"):
            meta, comma, payload = text.partition(",")
            return meta.lower() + comma + payload
        if head.startswith(("http://", "https://")) or self.config.allow_local_files:
            return text
        if head.startswith("file:") or "://" in text[:32]:
            scheme = text.split(":", 1)[0].lower()
            raise ImageLoadError(f"image URL scheme {scheme!r} is refused by this server (http, https and data: "
                                 "only; start it with --allow-local-files to accept local files)")
        standard = text.translate(_URL_SAFE_BASE64)
        if _looks_base64(standard):
            if len(text) * 3 // 4 > self.config.max_image_bytes + 3:
                raise ImageLoadError(f"base64 image decodes to more than {self.config.max_image_bytes} bytes "
                                     "(--max-image-bytes)")
            compact = "".join(standard.split())
            try:
                return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
            except (binascii.Error, ValueError):
                raise ImageLoadError("image is not valid base64") from None
        raise ImageLoadError("image must be an http(s) URL, a data: URI or base64 image data; local paths and "
                             "file: URLs are refused by this server (start it with --allow-local-files)")

    def build(self, req: RerankRequest) -> tuple[Query, list[Document], list[InputError | None]]:
        cfg = self.config
        q = req.query
        if q.text is not None and len(q.text) > cfg.max_text_chars:
            raise HTTPError(422, f"query: text is {len(q.text)} characters, over the limit of {cfg.max_text_chars} "
                                 "(--max-text-chars)")
        try:
            query = Query(text=q.text, image=self.image_source(q.image) if q.image is not None else None)
        except InputError as exc:
            raise HTTPError(422, _about_query(exc)) from None
        docs: list[Document] = []
        errors: list[InputError | None] = []
        for i, d in enumerate(req.documents):
            err: InputError | None = None
            image = None
            if d.text is not None and len(d.text) > cfg.max_text_chars:
                err = InputError(f"document {i}: text is {len(d.text)} characters, over the limit of "
                                 f"{cfg.max_text_chars} (--max-text-chars)")
            elif d.image is not None:
                try:
                    image = self.image_source(d.image)
                except ImageLoadError as exc:
                    err = exc.for_document(i, None)
            docs.append(Document(text=d.text, image=image) if err is None else Document(text="(refused)"))
            errors.append(err)
        return query, docs, errors

    def prepare(self, req: RerankRequest, query: Query, docs: list[Document], errors: list[InputError | None],
                cancelled: threading.Event | None = None) -> tuple[PreparedRanking, int]:
        """In an image thread: read every image's size under the pixel budget (from its header where the
        format tells it; a streaming scorer decodes the pixels while it scores) and under the request's
        images deadline, then the scorer's own preparation (its query check and per-document checks);
        ``usage.total_tokens`` of the readable documents. ``cancelled`` (the client left): images not started
        yet are not read."""
        cfg = self.config
        budget = _PixelBudget(cfg.max_total_pixels)
        deadline = time.monotonic() + cfg.images_deadline
        try:
            if query.has_image:
                w, h = query.image_size(self.policy)
                budget.add(w * h)
        except InputError as exc:
            raise HTTPError(422, f"query: {exc}") from None

        def size(d: Document) -> tuple[int, int]:
            # "raise" answers 422 before any model work, so every image is decoded now; otherwise the scorer
            # may decode while it scores (and report a late failure as that document's error).
            return d.load_image(self.policy).size if req.on_error == "raise" else d.image_size(self.policy)

        def load(i: int) -> None:
            if budget.exceeded or (cancelled is not None and cancelled.is_set()):
                return
            if time.monotonic() > deadline:
                errors[i] = ImageLoadError(f"not read: the request's images took over {cfg.images_deadline:g} s "
                                           "(--images-deadline); send fewer image URLs per request, or faster "
                                           "ones").for_document(i, None)
                return
            try:
                w, h = size(docs[i])
            except ImageLoadError:
                return  # reported by the scorer's checks below, with its index
            budget.add(w * h)

        todo = [i for i, d in enumerate(docs) if d.has_image and errors[i] is None]
        if len(todo) > 1 and cfg.image_workers > 1:
            with ThreadPoolExecutor(max_workers=min(cfg.image_workers, len(todo))) as pool:
                list(pool.map(load, todo))
        else:
            for i in todo:
                load(i)
        if budget.exceeded:
            raise HTTPError(413, f"the images of this request add up to more than {cfg.max_total_pixels / 1e6:g} "
                                 "megapixels (--max-total-pixels); send fewer or smaller images per request")
        try:
            # on_error is the request's, answered as HTTP below: here every document error is recorded.
            call = self.scorer.prepare(query, docs, req.top_n or None, on_error="last", refused=errors)
        except InputError as exc:
            raise HTTPError(422, f"query: {exc}") from None
        return call, self.count_tokens(query, call.readable_documents)

    def count_tokens(self, query: Query, docs: list[Document]) -> int:
        """``usage.total_tokens``, approximate: the query once per document plus each document, text tokens
        (as truncated by the scorer) and image tokens (after the scorer's resize); no prompt template."""
        proc = getattr(self.scorer, "processor", None)
        tok = getattr(proc, "tokenizer", None)
        texts = [query.text or ""] + [d.text or "" for d in docs]
        try:
            if tok is not None:
                limit = getattr(self.scorer, "max_doc_length", None)
                kw = {"truncation": True, "max_length": limit} if limit else {}
                counts = [len(ids) for ids in tok(texts, add_special_tokens=False, **kw)["input_ids"]]
            else:
                counts = [len(t.split()) for t in texts]
            per_image = 0
            unit = None
            if proc is not None and hasattr(proc, "resized_size"):
                unit = (getattr(proc, "patch_size", 14) * getattr(proc, "merge_size", 2)) ** 2

            def image_tokens(item: Document | Query) -> int:
                if not item.has_image:
                    return 0
                w, h = item.image_size(self.policy)
                if unit:
                    rw, rh = proc.resized_size(w, h)  # type: ignore[union-attr]
                    return (rw * rh) // unit
                return 0

            per_image = image_tokens(query)
            total = (counts[0] + per_image) * len(docs) + sum(counts[1:])
            total += sum(image_tokens(d) for d in docs)
            return int(total)
        except Exception:  # never fail a request over a usage estimate
            logger.debug("token count failed", exc_info=True)
            return 0

    # ------------------------------------------------------------------ the endpoint
    async def rerank(self, request: Request, dialect: str = "v1") -> JSONResponse:
        cfg = self.config
        self.check_auth(request)
        check_headers(request)
        raw = await read_body(request, cfg.max_body_bytes, cfg.body_timeout)
        self.watch_disconnect(request)
        if len(raw) > DECODE_IN_THREAD:
            req = await asyncio.get_running_loop().run_in_executor(self.decode_pool, rerank_request, raw,
                                                                   cfg.max_documents)
        else:
            req = rerank_request(raw, cfg.max_documents)
        name = req.model_name
        if name is not None and cfg.served_model_names and name not in cfg.served_model_names:
            raise HTTPError(404, f"model {name!r} is not served here; this server serves "
                                 f"{list(cfg.served_model_names)}")
        self.note_ignored(req)
        return await self.answer(req, dialect)

    async def answer(self, req: RerankRequest, dialect: str = "v1") -> JSONResponse:
        """A valid request through the scorer's seam: prepare (image threads, or any thread when the request
        has no image), the model step (the model thread, merged with other requests where the scorer
        allows), finish."""
        query, docs, pre_errors = self.build(req)
        loop = asyncio.get_running_loop()
        has_images = query.has_image or any(d.has_image for d in docs)
        pool = self.prep_pool if has_images else self.text_pool
        cancelled = threading.Event()
        try:
            call, tokens = await loop.run_in_executor(pool, self.prepare, req, query, docs, pre_errors, cancelled)
        except asyncio.CancelledError:  # the client left: the images not started yet are not read
            cancelled.set()
            raise
        bad = call.failed
        self.metrics.document_errors(len(bad))
        if bad and req.on_error == "raise":
            more = f" (and {len(bad) - 1} more unreadable document(s))" if len(bad) > 1 else ""
            raise HTTPError(422, f"{call.errors[bad[0]]}{more}; send \"on_error\": \"last\" to rank unreadable "
                                 "documents last instead", document_index=bad[0])
        ranked = self.scorer.finish(call, await self.model_step(call))
        if len(call.failed) > len(bad):  # images whose pixels failed to decode while the scorer ran
            self.metrics.document_errors(len(call.failed) - len(bad))
        self.count_scored(len(call.readable_documents))
        return SafeJSONResponse({"id": f"rerank-{uuid.uuid4().hex}", "model": self.served_name,
                                 "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                                 "results": [self.result(req, r) for r in ranked],
                                 "meta": {"api_version": {"version": "2" if dialect == "v2" else "1"},
                                          "billed_units": {"search_units": 1}}})

    async def model_step(self, call: PreparedRanking) -> Ranking:
        if not call.readable:
            return []
        try:
            return await self.worker.rank(call.query, call.readable_documents)
        except QueueFull as exc:
            raise HTTPError(503, f"server busy: {exc}; retry shortly", _headers={"Retry-After": "1"}) from None

    def count_scored(self, scored: int) -> None:
        self.requests += 1
        self.documents_scored += scored
        self.metrics.documents_scored(scored)

    def note_ignored(self, req: RerankRequest) -> None:
        """Log, once per name, the compatibility fields that were accepted and ignored."""
        names = [f"request field '{n}' ({IGNORED_FIELDS[n]})" for n in req.ignored()]
        names += [f"document field '{n}'" for d in req.documents for n in d.ignored_fields]
        for name in dict.fromkeys(names):
            if name in self._logged_ignored or len(self._logged_ignored) > _MAX_LOGGED_NAMES:
                continue
            self._logged_ignored.add(name)
            if len(self._logged_ignored) > _MAX_LOGGED_NAMES:  # clients choose these names: bound the log
                logger.info("mmrank serve: more than %d distinct ignored field names seen; no longer logging them",
                            _MAX_LOGGED_NAMES)
            else:
                logger.info("mmrank serve: %s accepted and ignored (logged once)", name)

    def watch_disconnect(self, request: Request) -> None:
        """Once the body is read: if the client disconnects before its answer, cancel the request's work
        (image reading it awaits, its place in the model queue — the model thread skips cancelled jobs)."""
        task = asyncio.current_task()
        if task is None:
            return

        async def watch() -> None:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    break
            request.state.client_gone = True
            self.cancelled += 1
            task.cancel()

        watcher = asyncio.create_task(watch())
        request.state.disconnect_watcher = watcher

    @staticmethod
    def result(req: RerankRequest, ranked: RankedDocument) -> dict[str, Any]:
        index, score, error = ranked.index, ranked.score, ranked.error
        if score is not None and not math.isfinite(score):  # JSON has no NaN/inf: report it, never a 500
            score, error = None, "the model produced a non-finite score for this document"
        out: dict[str, Any] = {"index": index, "relevance_score": score}
        if req.return_documents:
            d = req.documents[index]  # as sent: its text and image, and any other fields of its object
            out["document"] = {**(d.model_extra or {}),
                               **{k: v for k, v in (("text", d.text), ("image", d.image)) if v is not None}}
        if error is not None:
            out["error"] = error
        return out

    def check_auth(self, request: Request) -> None:
        key = self.config.api_key
        if not key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise HTTPError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                            _headers={"WWW-Authenticate": "Bearer"})


def _about_query(exc: InputError) -> str:
    """The message of an error about the query, starting with "query:" once."""
    message = str(exc)
    return message if message.startswith("query") else f"query: {message}"


RERANK_DOC = """Rerank documents by relevance to a query (Jina dialect; Cohere v1/v2 and vLLM clients work too).

Body: `{model?, query, documents, top_n?, return_documents? (default true), on_error?}`.
`query`: a string, `{"text"}`, `{"image"}` or vLLM `{"content": [parts]}`. `documents`: a list of strings,
`{"text"}`, `{"image"}`, `{"text", "image"}` or `{"content": [parts]}` objects, or vLLM's
`{"content": [parts]}` with one document per part. Images: http(s) URL, `data:` URI or bare base64.
`on_error`: `raise` (default; 422 naming the unreadable document) or `last` (ranked last with an `error`).
Fields of other rerank APIs (`max_chunks_per_doc`, `rank_fields`, `max_tokens_per_doc`, `truncation`,
`priority`, ...) are type-checked and ignored; extra fields of document objects are ignored."""


def create_app(scorer: Reranker, config: ServerConfig | None = None, *, mode: str = "pointwise") -> FastAPI:
    """The ASGI app serving ``scorer`` under ``config`` (defaults: the safe limits of :class:`ServerConfig`).

    Public without a key: ``GET /health`` (liveness) and ``GET /ready`` (readiness), which say nothing about
    the model or the machine. With ``config.api_key`` set every other route needs ``Authorization: Bearer
    <key>`` — ``/openapi.json`` and ``/metrics`` included — and the browser pages ``/docs`` and ``/redoc`` are
    off (a browser cannot send the key when it fetches the schema)."""
    config = config or ServerConfig()
    service = RerankService(scorer, config, mode)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.worker.start()
        service.accepting = True
        try:
            yield
        finally:
            service.accepting = False
            service.worker.stop()
            for pool in (service.prep_pool, service.text_pool, service.decode_pool):
                pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="mmrank serve", version=__version__, lifespan=lifespan, openapi_url=None, docs_url=None,
                  redoc_url=None, default_response_class=SafeJSONResponse,
                  description="Jina-compatible multimodal rerank API over a local mmrank scorer "
                              "(Cohere v1/v2 and vLLM rerank clients work too).")
    app.state.service = service
    service.accepting = True
    service.worker.start()  # also when the app is driven without lifespan events
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)

    install_error_handlers(app)

    def rerank_route(dialect: str):
        async def rerank(request: Request):
            try:
                return await service.rerank(request, dialect)
            except asyncio.CancelledError:
                if not getattr(request.state, "client_gone", False):
                    raise
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                logger.info("mmrank serve: client disconnected before its answer; its work was cancelled")
                return Response(status_code=499)
            finally:
                watcher = getattr(request.state, "disconnect_watcher", None)
                if watcher is not None:
                    watcher.cancel()

        return rerank

    responses: dict[int | str, dict[str, Any]] = {
        200: {"model": RerankResponse, "description": "Documents best first"},
        **{code: {"model": ErrorResponse, "description": what} for code, what in (
            (400, "Malformed JSON"), (401, "Missing or wrong API key"), (404, "Model not served here"),
            (408, "Body not received in time"), (413, "Over a size limit"),
            (422, "Invalid request or unreadable document"), (503, "Server busy (Retry-After)"))}}
    body_schema = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/RerankRequest"}}}}}
    for path, dialect, op, summary in (("/v1/rerank", "v1", "rerank", "Rerank documents"),
                                       ("/rerank", "v1", "rerank_alias", "Rerank documents (alias of /v1/rerank)"),
                                       ("/v2/rerank", "v2", "rerank_v2", "Rerank documents (Cohere v2 / vLLM path)")):
        app.add_api_route(path, rerank_route(dialect), methods=["POST"], summary=summary, description=RERANK_DOC,
                          responses=responses, openapi_extra=body_schema, response_model=None, operation_id=op)

    @app.get("/health", summary="Liveness: the process answers", response_model=None)
    async def health():
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: the model thread is running and has room for requests",
             response_model=None)
    async def ready():
        reason = service.not_ready_reason()
        if reason:
            return JSONResponse({"status": "not ready", "reason": reason}, status_code=503,
                                headers={"Retry-After": "1"})
        return {"status": "ready"}

    @app.get("/v1/models", summary="The served model", response_model=None)
    async def models(request: Request):
        service.check_auth(request)
        return {"object": "list", "data": [{"id": n, "object": "model", "created": int(service.started),
                                            "owned_by": "mmrank", "mode": mode} for n in service.served_names]}

    @app.get("/v1/stats", summary="Server counters (JSON)", response_model=None)
    async def stats(request: Request):
        service.check_auth(request)
        return {"model": service.served_name, "mode": mode, "queue": service.worker.pending,
                "requests": service.requests, "documents_scored": service.documents_scored,
                "cancelled_requests": service.cancelled, "model_calls": service.worker.calls,
                "merged_requests": service.worker.merged_jobs, "uptime_s": round(time.time() - service.started, 1)}

    @app.get("/metrics", summary="Prometheus metrics", response_model=None)
    async def metrics(request: Request):
        service.check_auth(request)
        if not service.metrics.enabled:
            return Response(MISSING_MESSAGE + "\n", status_code=501, media_type="text/plain")
        data, content_type = service.metrics.render()
        return Response(data, media_type=content_type)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request):
        service.check_auth(request)
        return JSONResponse(app.openapi())

    if not config.api_key:
        @app.get("/docs", include_in_schema=False)
        async def docs():
            return get_swagger_ui_html(openapi_url="/openapi.json", title="mmrank serve")

        @app.get("/redoc", include_in_schema=False)
        async def redoc():
            return get_redoc_html(openapi_url="/openapi.json", title="mmrank serve")

    base_openapi = app.openapi

    def openapi_with_request_schema() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = base_openapi()
        request_schema = RerankRequest.model_json_schema(ref_template="#/components/schemas/{model}",
                                                         mode="validation")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request_schema.pop("$defs", {}))
        components["RerankRequest"] = request_schema
        app.openapi_schema = schema
        return schema

    app.openapi = openapi_with_request_schema  # type: ignore[method-assign]
    return app

