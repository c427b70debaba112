"""Command line of ``mmrank serve`` (``main(argv) -> exit code``)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import Any

from ..models.options import add_load_arguments, scorer_kwargs_from_args

_MiB = 1024 * 1024


def build_parser() -> argparse.ArgumentParser:
    from ..scorers.factory import DEVICE_MODES
    from .config import ServerConfig

    d = ServerConfig()
    p = argparse.ArgumentParser(prog="mmrank serve",
                                description="Serve a Jina-compatible /v1/rerank API over a local mmrank scorer.")
    g = p.add_argument_group("model")
    g.add_argument("--mode", default="pointwise", choices=(*DEVICE_MODES, "chat"),
                   help="chat: listwise or pairwise over an OpenAI-compatible chat server (--url), e.g. vLLM")
    g.add_argument("--url", default=None, help="chat mode: the chat server's base URL (http://host:8000/v1)")
    g.add_argument("--chat-method", default=None, choices=["listwise", "pairwise"],
                   help="chat mode: listwise (default) or pairwise")
    g.add_argument("--model", default=os.environ.get("MMRANK_MODEL"),
                   help="model id or local folder (default: the mode's default; env MMRANK_MODEL)")
    g.add_argument("--batch-size", type=int, default=None, help="pairs per forward pass")
    add_load_arguments(p.add_argument_group("model loading"))
    g.add_argument("--served-model-name", action="append", default=[], metavar="NAME",
                   help="name(s) a request's 'model' may use (repeatable); default: any name is accepted")
    g.add_argument("--no-warmup", action="store_true", help="skip the warm-up request at start")
    n = p.add_argument_group("network")
    n.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    n.add_argument("--port", type=int, default=8080, help="port (0: any free port; the URL is printed)")
    n.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: env MMRANK_SERVE_API_KEY; none: open)")
    n.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    n.add_argument("--no-access-log", action="store_true")
    n.add_argument("--limit-concurrency", type=int, default=512,
                   help="open connections at most; more get 503 from uvicorn")
    lim = p.add_argument_group("limits (the defaults are the safe ones)")
    lim.add_argument("--max-documents", type=int, default=d.max_documents)
    lim.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    lim.add_argument("--max-image-bytes", type=int, default=d.max_image_bytes)
    lim.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels)
    lim.add_argument("--max-total-pixels", type=int, default=d.max_total_pixels)
    lim.add_argument("--max-text-chars", type=int, default=d.max_text_chars)
    lim.add_argument("--image-timeout", type=float, default=d.image_timeout,
                     help="seconds to fetch one image URL")
    lim.add_argument("--allow-private-urls", action="store_true",
                     help="fetch image URLs on loopback/private/link-local addresses (SSRF guard off)")
    lim.add_argument("--allow-local-files", action="store_true", help="accept local paths and file: URLs as images")
    lim.add_argument("--local-files-root", default=None, help="with --allow-local-files: only under this folder")
    b = p.add_argument_group("batching")
    b.add_argument("--max-batch-documents", type=int, default=d.max_batch_documents,
                   help="pointwise: documents of concurrent same-query requests merged into one model call")
    b.add_argument("--max-queue", type=int, default=d.max_queue, help="requests waiting for the model; more get 503")
    b.add_argument("--prep-workers", type=int, default=d.prep_workers, help="threads reading images")
    return p


def _config(args: argparse.Namespace):
    from .config import ServerConfig

    return ServerConfig(
        max_documents=args.max_documents, max_body_bytes=args.max_body_bytes, max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels, max_total_pixels=args.max_total_pixels,
        max_text_chars=args.max_text_chars, image_timeout=args.image_timeout,
        allow_private_urls=args.allow_private_urls, allow_local_files=args.allow_local_files,
        local_files_root=args.local_files_root,
        api_key=args.api_key or os.environ.get("MMRANK_SERVE_API_KEY") or None,
        served_model_names=tuple(args.served_model_name), max_batch_documents=args.max_batch_documents,
        max_queue=args.max_queue, prep_workers=max(1, args.prep_workers))


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
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
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
    print(f"mmrank serve: {scorer.model_name} ({args.mode}) listening on http://{shown}:{port} — "
          f"auth {'on' if config.api_key else 'off'}; refusing: {', '.join(config.refusals())}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=not args.no_access_log,
                                           limit_concurrency=args.limit_concurrency, timeout_keep_alive=15))
    server.run(sockets=[sock])
    return 0
