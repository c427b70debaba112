"""Command line of ``mmrank serve`` (``main(argv) -> exit code``)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import Any

from ..models.options import add_load_arguments, scorer_kwargs_from_args
from ..scorers.http_options import add_http_arguments, http_kwargs_from_args

_MiB = 1024 * 1024


def build_parser() -> argparse.ArgumentParser:
    from ..scorers.factory import DEVICE_MODES
    from .config import ServerConfig

    d = ServerConfig()
    p = argparse.ArgumentParser(
        prog="mmrank serve", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve a Jina-compatible /v1/rerank API (also /rerank and /v2/rerank for Cohere and vLLM "
                    "clients) over a local mmrank scorer.",
        epilog=f"Every option can also be set by an environment variable {ENV_PREFIX}<OPTION> (upper case, '-' "
               f"as '_'; e.g. {ENV_PREFIX}MAX_DOCUMENTS=500, {ENV_PREFIX}ALLOW_PRIVATE_URLS=1, "
               f"{ENV_PREFIX}SERVED_MODEL_NAME=a,b); the command line wins over the environment.\n"
               "Endpoints: POST /v1/rerank /rerank /v2/rerank; GET /health (liveness) /ready (readiness) "
               "/v1/models /v1/stats /metrics /openapi.json /docs. See docs/server.md.")
    g = p.add_argument_group("model")
    g.add_argument("--mode", default="pointwise", choices=(*DEVICE_MODES, "chat"),
                   help="chat: listwise or pairwise over an OpenAI-compatible chat server (--url), e.g. vLLM")
    g.add_argument("--url", default=None, help="chat mode: the chat server's base URL (http://host:8000/v1)")
    g.add_argument("--chat-method", default=None, choices=["listwise", "pairwise"],
                   help="chat mode: listwise (default) or pairwise")
    g.add_argument("--model", default=os.environ.get("MMRANK_MODEL"),
                   help="model id or local folder (default: the mode's default; also env MMRANK_MODEL)")
    g.add_argument("--batch-size", type=int, default=None, help="pairs per forward pass")
    add_load_arguments(p.add_argument_group("model loading"))
    add_http_arguments(p.add_argument_group("HTTP to the chat server (--mode chat)"))
    g.add_argument("--served-model-name", action="append", default=None, metavar="NAME",
                   help="the model's name in responses and /v1/models (repeatable: more names a request's "
                        "'model' may use; with any given, other names get 404); default: the model id, or the "
                        "last path component of a local folder, and any requested name is accepted")
    g.add_argument("--no-warmup", action="store_true", help="skip the warm-up request at start")
    n = p.add_argument_group("network")
    n.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    n.add_argument("--port", type=int, default=8080, help="port (0: any free port; the URL is printed)")
    n.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health and /ready (also "
                        "/openapi.json and /metrics; /docs is then off); default: open")
    n.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    n.add_argument("--no-access-log", action="store_true")
    n.add_argument("--limit-concurrency", type=int, default=512,
                   help="open connections at most; more get 503 from uvicorn")
    n.add_argument("--header-timeout", type=float, default=d.header_timeout,
                   help="seconds to receive a request's line and headers; slower connections are closed")
    n.add_argument("--body-timeout", type=float, default=d.body_timeout,
                   help="seconds to receive a request's whole body once its headers are in; slower gets 408")
    n.add_argument("--keep-alive-timeout", type=float, default=15.0,
                   help="seconds an idle keep-alive connection stays open")
    lim = p.add_argument_group("limits (the defaults are the safe ones)")
    lim.add_argument("--max-documents", type=int, default=d.max_documents,
                     help="documents per request; more get 413")
    lim.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                     help="bytes of a request body; more get 413")
    lim.add_argument("--max-image-bytes", type=int, default=d.max_image_bytes,
                     help="encoded bytes of one image (base64 decoded, or downloaded)")
    lim.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels,
                     help="width x height of one image, read from its header before decoding")
    lim.add_argument("--max-total-pixels", type=int, default=d.max_total_pixels,
                     help="sum of width x height of the images of one request; more get 413")
    lim.add_argument("--max-text-chars", type=int, default=d.max_text_chars,
                     help="characters of one query or document text")
    lim.add_argument("--image-timeout", type=float, default=d.image_timeout,
                     help="seconds to fetch one image URL")
    lim.add_argument("--images-deadline", type=float, default=d.images_deadline,
                     help="seconds one request may spend reading all its images; images not started by then "
                          "are those documents' errors")
    lim.add_argument("--allow-private-urls", action="store_true",
                     help="fetch image URLs on loopback/private/link-local addresses (SSRF guard off)")
    lim.add_argument("--allow-local-files", action="store_true", help="accept local paths and file: URLs as images")
    lim.add_argument("--local-files-root", default=None, help="with --allow-local-files: only under this folder")
    b = p.add_argument_group("batching")
    b.add_argument("--max-batch-documents", type=int, default=d.max_batch_documents,
                   help="pointwise: documents of concurrent same-query requests merged into one model call")
    b.add_argument("--max-queue", type=int, default=d.max_queue, help="requests waiting for the model; more get 503")
    b.add_argument("--prep-workers", type=int, default=d.prep_workers, help="threads reading images")
    _document_env(p)
    return p


ENV_PREFIX = "MMRANK_SERVE_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(action: argparse.Action) -> str | None:
    """``MMRANK_SERVE_MAX_DOCUMENTS`` for ``--max-documents``; ``None`` for --help."""
    longs = [o for o in action.option_strings if o.startswith("--")]
    if not longs or action.dest == "help":
        return None
    return ENV_PREFIX + longs[0][2:].upper().replace("-", "_")


def _document_env(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        name = env_name(action)
        if name and action.help is not argparse.SUPPRESS:
            action.help = (action.help + f" [env {name}]") if action.help else f"[env {name}]"


def _env_value(parser: argparse.ArgumentParser, action: argparse.Action, name: str, raw: str) -> Any:
    """The value of one environment variable as ``action`` would parse it, or a parser error naming it."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        word = raw.strip().lower()
        if word not in _TRUE | _FALSE:
            parser.error(f"environment variable {name}={raw!r}: expected 1/0, true/false, yes/no or on/off")
        on = word in _TRUE
        return on if isinstance(action, argparse._StoreTrueAction) else not on
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+") or (
            isinstance(action.nargs, int) and action.nargs >= 1):
        items = [x.strip() for x in raw.split(",") if x.strip()]
        return [_convert(parser, action, name, x) for x in items]
    return _convert(parser, action, name, raw)


def _convert(parser: argparse.ArgumentParser, action: argparse.Action, name: str, raw: str) -> Any:
    try:
        value = action.type(raw) if callable(action.type) else raw
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        parser.error(f"environment variable {name}={raw!r}: {exc or 'invalid value'}")
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(repr, action.choices))
        parser.error(f"environment variable {name}={raw!r}: invalid choice (choose from {choices})")
    return value


def parse_args(argv: list[str], environ: dict[str, str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; an option not on the command line is read from ``MMRANK_SERVE_<OPTION>`` when that is
    set (the command line wins; a repeatable option given on the command line replaces the variable's list)."""
    environ = dict(os.environ if environ is None else environ)
    parser = build_parser()
    defaults = {}
    for action in parser._actions:
        if action.dest != "help":
            defaults[action.dest] = action.default
            action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv))  # only what the command line set
    for action in parser._actions:
        if action.dest in defaults:
            action.default = defaults[action.dest]
    values = {}
    for action in parser._actions:
        if action.dest == "help":
            continue
        name = env_name(action)
        if action.dest in given:
            values[action.dest] = given[action.dest]
        elif name and name in environ:
            values[action.dest] = _env_value(parser, action, name, environ[name])
        else:
            values[action.dest] = defaults[action.dest]
    if values.get("served_model_name") is None:
        values["served_model_name"] = []
    return argparse.Namespace(**values)


def _config(args: argparse.Namespace):
    from .config import ServerConfig

    return ServerConfig(
        max_documents=args.max_documents, max_body_bytes=args.max_body_bytes, max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels, max_total_pixels=args.max_total_pixels,
        max_text_chars=args.max_text_chars, image_timeout=args.image_timeout,
        images_deadline=args.images_deadline,
        allow_private_urls=args.allow_private_urls, allow_local_files=args.allow_local_files,
        local_files_root=args.local_files_root,
        api_key=args.api_key or None,
        served_model_names=tuple(args.served_model_name or ()), max_batch_documents=args.max_batch_documents,
        max_queue=args.max_queue, prep_workers=max(1, args.prep_workers), body_timeout=args.body_timeout,
        header_timeout=args.header_timeout)


def _scorer(args: argparse.Namespace, config) -> Any:
    from ..scorers.factory import load_reranker

    kw: dict[str, Any] = {"image_policy": config.image_policy()}
    if args.mode == "chat":
        # The chat server's key comes from MMRANK_CHAT_API_KEY (never from --api-key, which guards this server).
        if args.url:
            kw["url"] = args.url
        if args.chat_method:
            kw["method"] = args.chat_method
    elif args.url or args.chat_method:
        raise SystemExit("mmrank serve: --url/--chat-method apply to --mode chat only")
    kw.update(scorer_kwargs_from_args(args, args.mode))
    kw.update(http_kwargs_from_args(args, args.mode))
    if args.batch_size:
        kw["batch_size"] = args.batch_size
    return load_reranker(args.mode, args.model, **kw)


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(addr)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        print(f"mmrank serve: needs the 'serve' extra ({exc.name} is missing): pip install 'mmrank[serve]'",
              file=sys.stderr)
        return 2
    from ..errors import MMRankError

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    config = _config(args)
    try:
        scorer = _scorer(args, config)
    except MMRankError as exc:
        print(f"mmrank serve: error: {exc}", file=sys.stderr)
        return 1
    if not args.no_warmup:
        try:
            scorer.rank("warm-up", ["warm-up document"])
        except Exception as exc:  # a scorer that cannot warm up still serves; its first request will say why
            print(f"mmrank serve: warm-up failed: {exc}", file=sys.stderr)
    app = create_app(scorer, config, mode=args.mode)
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"mmrank serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    from .metrics import MISSING_MESSAGE, available
    from .protocol import guarded_h11_protocol

    served = app.state.service.served_name
    print(f"mmrank serve: {served} ({args.mode}) listening on http://{shown}:{port} — "
          f"auth {'on' if config.api_key else 'off'}; refusing: {', '.join(config.refusals())}", flush=True)
    if not available():
        print(f"mmrank serve: {MISSING_MESSAGE}", file=sys.stderr, flush=True)
    http: Any = guarded_h11_protocol(args.header_timeout)
    if http is None:
        print("mmrank serve: this uvicorn has no h11 protocol class to guard; --header-timeout is not enforced",
              file=sys.stderr)
        http = "auto"
    server = uvicorn.Server(uvicorn.Config(app, http=http, log_level=args.log_level,
                                           access_log=not args.no_access_log,
                                           limit_concurrency=args.limit_concurrency,
                                           timeout_keep_alive=max(1, round(args.keep_alive_timeout))))
    server.run(sockets=[sock])
    return 0
