"""The ``mmrank`` command.

    mmrank rank --query "what is a panda?" doc1.txt page.png "some passage text" [--json]
    mmrank serve --model jinaai/jina-reranker-m0 --port 8080
    mmrank eval --qrels qrels.tsv --run run.json --metrics ndcg@10,recall@100,mrr@10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .models.options import add_load_arguments, scorer_kwargs_from_args

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def _document_arg(arg: str, index: int) -> Any:
    """A DOC argument: an image file or image URL → image; a text file → its text; anything else → text."""
    from .inputs.documents import Document

    lower = arg.lower()
    if lower.startswith(("http://", "https://", "data:image")):
        return Document(image=arg, id=arg if len(arg) < 200 else f"doc{index}")
    path = Path(arg)
    if len(arg) < 4096 and path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return Document(image=path, id=arg)
        try:
            return Document(text=path.read_text(encoding="utf-8"), id=arg)
        except UnicodeDecodeError:
            return Document(image=path, id=arg)  # let the image loader say what it is
    return Document(text=arg, id=f"doc{index}")


def _query_arg(args: argparse.Namespace) -> Any:
    from .inputs.documents import Query

    if args.query_image:
        return Query(image=Path(args.query_image) if Path(args.query_image).exists() else args.query_image)
    if not args.query:
        raise SystemExit("mmrank rank: give --query TEXT or --query-image PATH")
    return Query(text=args.query)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .scorers.factory import MODES

    p.add_argument("--mode", default="pointwise", choices=MODES,
                   help="scorer (default: pointwise, jina-reranker-m0; chat: listwise or pairwise over an "
                        "OpenAI-compatible /v1/chat/completions server such as vLLM)")
    p.add_argument("--model", default=os.environ.get("MMRANK_MODEL"),
                   help="model id or local folder (default: the mode's default model; env MMRANK_MODEL)")
    p.add_argument("--batch-size", type=int, default=None)
    add_load_arguments(p.add_argument_group("model loading (local modes)"))
    p.add_argument("--url", default=None, help="remote mode: rerank API URL; chat mode: chat server base URL")
    p.add_argument("--chat-method", default=None, choices=["listwise", "pairwise"],
                   help="chat mode: listwise (default) or pairwise yes/no")
    g = p.add_argument_group("listwise")
    g.add_argument("--listwise-mode", default=None, choices=["generate", "single_pass"],
                   help="generate the [] > [] ordering (default) or rank from the first token's logits (FIRST)")
    g.add_argument("--window-size", type=int, default=None, help="candidates per window (default 20)")
    g.add_argument("--step", type=int, default=None, help="window step (default 10)")


def _scorer_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if args.mode in ("remote", "chat"):
        if args.url:
            kw["url"] = args.url
        if args.mode == "chat":
            for name, value in (("method", args.chat_method), ("mode", args.listwise_mode),
                                ("window_size", args.window_size), ("step", args.step)):
                if value is not None:
                    kw[name] = value
        return kw | scorer_kwargs_from_args(args, args.mode)
    if args.chat_method:
        raise SystemExit("mmrank: --chat-method applies to --mode chat only")
    kw.update(scorer_kwargs_from_args(args, args.mode))
    if args.batch_size and args.mode != "listwise":
        kw["batch_size"] = args.batch_size
    if args.mode == "listwise":
        for name, value in (("mode", args.listwise_mode), ("window_size", args.window_size), ("step", args.step)):
            if value is not None:
                kw[name] = value
    elif args.listwise_mode or args.window_size or args.step:
        raise SystemExit("mmrank: --listwise-mode/--window-size/--step apply to --mode listwise only")
    return kw


def cmd_rank(args: argparse.Namespace) -> int:
    from .scorers.factory import load_reranker

    if not args.documents:
        print("mmrank rank: no documents given", file=sys.stderr)
        return 2
    query = _query_arg(args)
    docs = [_document_arg(d, i) for i, d in enumerate(args.documents)]
    reranker = load_reranker(args.mode, args.model, show_progress=not args.quiet and not args.json,
                             **_scorer_kwargs(args))
    ranked = reranker.rank(query, docs, top_n=args.top_n, score_threshold=args.score_threshold,
                           on_error=args.on_error)
    if args.json:
        out = {"model": reranker.model_name,
               "results": [r.to_dict(include_document=args.return_documents) for r in ranked]}
        json.dump(out, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    print(f"{'rank':>4}  {'score':>8}  {'index':>5}  document")
    for pos, r in enumerate(ranked, 1):
        label = r.document.id or ""
        if r.document.has_text and (r.document.id or "").startswith("doc"):
            label = r.document.text.replace("\n", " ")  # type: ignore[union-attr]
        label = label if len(label) <= 70 else label[:67] + "..."
        score = "error" if r.score is None else f"{r.score:.4f}"
        print(f"{pos:>4}  {score:>8}  {r.index:>5}  {label}" + (f"  [{r.error}]" if r.error else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmrank", description="Multimodal reranking with vision-language models")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("rank", help="rank documents (text, text files, image files or URLs) for a query")
    p.add_argument("documents", nargs="*", metavar="DOC",
                   help="a text string, a text file, an image file, or an http(s) image URL")
    p.add_argument("--query", "-q", help="query text")
    p.add_argument("--query-image", help="query image (path or URL)")
    p.add_argument("--top-n", type=int, default=None)
    p.add_argument("--score-threshold", type=float, default=None,
                   help="drop scored documents below this score (unreadable ones are still listed)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--return-documents", action="store_true", help="with --json, include document text")
    p.add_argument("--on-error", default="last", choices=["last", "raise"],
                   help="unreadable documents: rank last with the error shown (default) or fail")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_args(p)
    p.set_defaults(func=cmd_rank)

    s = sub.add_parser("serve", help="serve a Jina-compatible /v1/rerank API", add_help=False)
    s.set_defaults(func=None, passthrough="serve")
    e = sub.add_parser("eval", help="nDCG / Recall / MRR of a run against qrels", add_help=False)
    e.set_defaults(func=None, passthrough="eval")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # serve and eval own their arguments.
    if argv and argv[0] == "serve":
        from .server import main as serve_main

        return serve_main(argv[1:])
    if argv and argv[0] == "eval":
        from .evaluation import main as eval_main

        return eval_main(argv[1:])
    args = build_parser().parse_args(argv)
    from .errors import MMRankError

    try:
        return args.func(args)
    except MMRankError as exc:
        print(f"mmrank: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
