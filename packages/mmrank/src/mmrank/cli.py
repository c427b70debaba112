"""The ``mmrank`` command (also ``python -m mmrank``).

    mmrank rank --query "what is a panda?" doc1.txt page.png "some passage text" [--json]
    mmrank rank --input requests.jsonl --output results.jsonl        # many queries, JSONL in / JSONL out
    mmrank rerank-run --dataset ./beir-folder --run bm25.trec --output reranked.trec --top-k 100
    mmrank eval --qrels qrels.tsv --run bm25.trec --run reranked.trec --per-query-deltas
    mmrank serve --model jinaai/jina-reranker-m0 --port 8080

Every error the user can cause is one line on stderr (``mmrank: error: ...``) and a non-zero exit status,
never a traceback: 2 for bad arguments or input, 1 for a model that cannot be loaded or used, 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".ico",
                  ".ppm", ".pgm", ".pbm", ".tga", ".jp2"}
#: Encodings tried, in order, for text files (a BOM is dropped; Latin-1 decodes any byte sequence).
TEXT_ENCODINGS = ("utf-8-sig", "latin-1")
DEFAULT_MODEL_HELP = (
    "model id or local folder (env MMRANK_MODEL). Defaults: pointwise jinaai/jina-reranker-m0 — licensed "
    "CC-BY-NC-4.0, NON-COMMERCIAL use only (commercial use needs a licence from Jina AI); listwise and "
    "pairwise Qwen/Qwen2-VL-2B-Instruct (Apache-2.0)")
#: Magic numbers of image formats, to recognise an image file whatever its name.
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
_PATH_SUFFIX = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,5}$")


class UsageError(Exception):
    """A mistake in the command line or its input files: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------- documents
def read_text_file(path: Path) -> str:
    """The text of ``path``: UTF-8 (a BOM is dropped), else Latin-1 (which never fails)."""
    data = path.read_bytes()
    for enc in TEXT_ENCODINGS:
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def looks_like_path(arg: str) -> bool:
    """Whether a DOC argument is meant as a file name: one line, and either no whitespace and a path
    separator, a leading ``~``/``.``, or a file suffix (``notes.txt``); or a separator and a suffix."""
    if not arg or "\n" in arg or "\r" in arg or len(arg) > 4096:
        return False
    has_sep = "/" in arg or "\\" in arg
    has_suffix = bool(_PATH_SUFFIX.search(arg))
    if any(c.isspace() for c in arg):
        return has_sep and has_suffix
    return has_sep or has_suffix or arg.startswith(("~", "./", "../"))


def _is_image_file(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(16)
    return head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP") or \
        head[4:12] in (b"ftypavif", b"ftypheic", b"ftypmif1")


def document_from_arg(arg: str, index: int, *, literal: bool = False) -> Any:
    """A DOC argument → :class:`mmrank.Document`.

    An http(s) or ``data:image`` URL is an image; an existing image file (by suffix or content) is an image;
    another existing file is text (see :func:`read_text_file`); a directory, an unreadable or binary file,
    or a string that looks like a path but names nothing is a :class:`UsageError`. Any other string is a
    passage. ``literal=True`` (``--text``) takes every argument as a passage."""
    from .inputs.documents import Document

    if literal:
        return Document(text=arg, id=f"doc{index}")
    lower = arg[:16].lower()
    if lower.startswith(("http://", "https://", "data:image")):
        return Document(image=arg, id=arg if len(arg) < 200 else f"doc{index}")
    if not looks_like_path(arg) and not (len(arg) < 4096 and "\n" not in arg and os.path.lexists(arg)):
        return Document(text=arg, id=f"doc{index}")
    path = Path(os.path.expanduser(arg))
    what = f"DOC {index + 1} ({arg!r})"
    if path.is_dir():
        raise UsageError(f"{what} is a directory, not a file; pass the files in it (or --text for literal "
                         "passages)")
    if not path.exists():
        raise UsageError(f"{what} looks like a file name but no such file exists; pass --text to rank the "
                         "arguments as literal passages")
    if not path.is_file():
        raise UsageError(f"{what} is not a regular file")
    try:
        if _is_image_file(path):
            return Document(image=path, id=arg)
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{what} cannot be read: {exc.strerror or exc}") from None
    if b"\x00" in data[:8192]:
        raise UsageError(f"{what} is a binary file: neither text nor an image format mmrank recognises")
    return Document(text=read_text_file(path), id=arg)


def _query_from_args(args: argparse.Namespace) -> Any:
    from .inputs.documents import Query

    if args.query_image:
        ref = args.query_image
        if ref[:16].lower().startswith(("http://", "https://", "data:image")):
            return Query(text=args.query or None, image=ref)
        path = Path(os.path.expanduser(ref))
        if path.is_dir():
            raise UsageError(f"--query-image {ref!r} is a directory, not an image file")
        if not path.is_file():
            raise UsageError(f"--query-image {ref!r}: no such file (give an image file or an http(s) URL)")
        return Query(text=args.query or None, image=path)
    if not args.query:
        raise UsageError("give --query TEXT or --query-image PATH")
    return Query(text=args.query)


# ---------------------------------------------------------------------------------------------- options
def _int_at_least(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
    return v


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?|xpu(:\d+)?)$")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The scorer options shared by ``rank`` and ``rerank-run`` (model loading: the flags of
    :func:`mmrank.models.options.add_load_arguments`, which ``mmrank serve`` shares too)."""
    from .models.options import add_load_arguments
    from .scorers.factory import MODES
    from .scorers.http_options import add_http_arguments

    g = p.add_argument_group("scorer")
    g.add_argument("--mode", default="pointwise", choices=MODES,
                   help="scorer: pointwise (jina-reranker-m0, default), listwise (RankGPT-style over an "
                        "instruct VLM), pairwise (yes/no over an instruct VLM), remote (a rerank API), chat "
                        "(listwise or pairwise over an OpenAI-compatible /v1/chat/completions server such as vLLM)")
    g.add_argument("--model", default=os.environ.get("MMRANK_MODEL"), help=DEFAULT_MODEL_HELP)
    g.add_argument("--batch-size", type=_positive_int, default=None,
                   help="query-document pairs per forward pass (pointwise, pairwise; default 8)")
    g.add_argument("--url", default=None,
                   help="remote mode: rerank API URL (e.g. http://host:8080); chat mode: chat server base URL")
    g.add_argument("--chat-method", default=None, choices=["listwise", "pairwise"],
                   help="chat mode: listwise (default) or pairwise yes/no")
    add_load_arguments(p.add_argument_group("model loading (local modes)"))
    add_http_arguments(p.add_argument_group("HTTP (remote and chat modes)"))
    lw = p.add_argument_group("listwise")
    lw.add_argument("--listwise-mode", default=None, choices=["generate", "single_pass"],
                    help="generate the [] > [] ordering (default) or rank from the first token's logits (FIRST)")
    lw.add_argument("--window-size", type=_positive_int, default=None, help="candidates per window (default 20)")
    lw.add_argument("--step", type=_positive_int, default=None, help="window step (default: half the window, 10 for 20)")


def scorer_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Scorer keyword arguments from the command line; an option the mode cannot use is a
    :class:`UsageError` (or the loader's :class:`~mmrank.errors.InputError`), never silently dropped."""
    from .models.options import scorer_kwargs_from_args
    from .scorers.http_options import http_kwargs_from_args

    kw: dict[str, Any] = http_kwargs_from_args(args, args.mode)  # {} or {"http": ...}; refused for local modes
    listwise_opts = (("mode", args.listwise_mode), ("window_size", args.window_size), ("step", args.step))
    if args.mode in ("remote", "chat"):
        if args.batch_size:
            raise UsageError(f"--batch-size applies to the local pointwise and pairwise modes, not --mode {args.mode}")
        if args.url:
            kw["url"] = args.url
        if args.mode == "chat":
            for name, value in (("method", args.chat_method), *listwise_opts):
                if value is not None:
                    kw[name] = value
        elif args.chat_method or any(v is not None for _, v in listwise_opts):
            raise UsageError("--chat-method/--listwise-mode/--window-size/--step do not apply to --mode remote")
        return kw | scorer_kwargs_from_args(args, args.mode)
    if args.url:
        raise UsageError("--url applies to --mode remote and --mode chat only")
    if args.chat_method:
        raise UsageError("--chat-method applies to --mode chat only")
    kw.update(scorer_kwargs_from_args(args, args.mode))
    if args.batch_size:
        if args.mode == "listwise":
            raise UsageError("--batch-size applies to pointwise and pairwise (listwise batches by window)")
        kw["batch_size"] = args.batch_size
    if args.mode == "listwise":
        for name, value in listwise_opts:
            if value is not None:
                kw[name] = value
    elif any(v is not None for _, v in listwise_opts):
        raise UsageError("--listwise-mode/--window-size/--step apply to --mode listwise only")
    return kw


def check_device(device: str | None) -> None:
    """Refuse a device this machine does not have, in one line, before any model is loaded."""
    if device is None or device in ("auto", "cpu"):
        return
    if not _DEVICE_RE.match(device):
        raise UsageError(f"--device {device!r} is not a device; use auto, cpu, cuda, cuda:N, mps or xpu")
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise UsageError(f"--device {device}: CUDA is not available (torch {torch.__version__} is {build}, "
                             "or no GPU is visible); use --device cpu or leave --device out")
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError("--device mps: Apple MPS is not available here; use --device cpu")
    elif device.startswith("xpu"):
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not xpu.is_available():
            raise UsageError(f"--device {device}: Intel XPU is not available here; use --device cpu")


@contextmanager
def _loading_notice(args: argparse.Namespace, quiet: bool) -> Iterator[None]:
    """For ``--load-format dummy`` at full size: say up front what it costs, and tick while it builds."""
    full_dummy = args.mode not in ("remote", "chat") and args.load_format == "dummy" and args.model != "tiny"
    if not full_dummy:
        yield
        return
    print("mmrank: building the full-size Qwen2-VL-2B architecture with random weights (--load-format dummy): "
          "about 40 s and ~9 GB of RAM on a CPU, a few seconds on a GPU. Its scores mean nothing.",
          file=sys.stderr, flush=True)
    if quiet:
        yield
        return
    from tqdm.auto import tqdm

    done = threading.Event()
    bar = tqdm(desc="mmrank: building dummy model", unit="s", file=sys.stderr,
               bar_format="{desc}: {elapsed} elapsed (about 40 s on a CPU)")

    def tick() -> None:
        while not done.wait(1.0):
            bar.update(1)

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()
        bar.close()


def load_scorer(args: argparse.Namespace, *, show_progress: bool, quiet: bool = False) -> Any:
    """Check the scorer options, then build the scorer they name."""
    kw = scorer_kwargs(args)
    check_device(args.device)
    from .scorers.factory import load_reranker

    with _loading_notice(args, quiet):
        return load_reranker(args.mode, args.model, show_progress=show_progress, **kw)


# ---------------------------------------------------------------------------------------------- rank
def _documents_from_args(args: argparse.Namespace) -> list[Any]:
    """The single query's documents: the DOC arguments, then ``--documents-file``; at least one."""
    docs = [document_from_arg(d, i, literal=args.text) for i, d in enumerate(args.documents)]
    if args.documents_file is not None:
        from .batch import read_documents_file

        docs.extend(read_documents_file(args.documents_file, start=len(docs)))
    if not docs:
        raise UsageError("no documents given (DOC arguments, --documents-file, or --input JSONL)")
    return docs


def _print_ranked_json(model_name: str, ranked: list[Any], return_documents: bool) -> None:
    out = {"model": model_name,
           "results": [{**r.to_dict(include_document=return_documents), "id": r.document.id} for r in ranked]}
    json.dump(out, sys.stdout, indent=2)  # ASCII: survives any terminal encoding and odd file names
    sys.stdout.write("\n")


def _table_label(document: Any) -> str:
    """What the table shows for a document: its id, or the passage for an unnamed ("docN") text document,
    cut to 70 characters, with undecodable file-name bytes escaped."""
    label = document.id or ""
    if document.has_text and (document.id or "").startswith("doc"):
        label = document.text.replace("\n", " ")
    label = label if len(label) <= 70 else label[:67] + "..."
    return label.encode("utf-8", "backslashreplace").decode("utf-8")  # undecodable file names


def _print_ranked_table(ranked: list[Any]) -> None:
    print(f"{'rank':>4}  {'score':>8}  {'index':>5}  document")
    for pos, r in enumerate(ranked, 1):
        label = _table_label(r.document)
        score = "error" if r.score is None else f"{r.score:.4f}"
        print(f"{pos:>4}  {score:>8}  {r.index:>5}  {label}" + (f"  [{r.error}]" if r.error else ""))


def cmd_rank(args: argparse.Namespace) -> int:
    if args.input is not None:
        if args.documents or args.query or args.query_image or args.documents_file:
            raise UsageError("--input reads queries and candidates from JSONL; do not also give DOC arguments, "
                             "--query, --query-image or --documents-file")
        from .batch import run_batch

        return run_batch(args)
    if args.output is not None:
        raise UsageError("--output goes with --input (JSONL); a single query prints to stdout")
    query = _query_from_args(args)
    docs = _documents_from_args(args)
    reranker = load_scorer(args, show_progress=not args.quiet and not args.json, quiet=args.quiet)
    ranked = reranker.rank(query, docs, top_n=args.top_n, score_threshold=args.score_threshold,
                           on_error=args.on_error)
    if args.json:
        _print_ranked_json(reranker.model_name, ranked, args.return_documents)
    else:
        _print_ranked_table(ranked)
    return 0


# ---------------------------------------------------------------------------------------------- parser
def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmrank", description="Multimodal reranking with vision-language models. "
        "Default model: jinaai/jina-reranker-m0 (CC-BY-NC-4.0, non-commercial).")
    parser.add_argument("--version", action="version", version=f"mmrank {_version()}",
                        help="print the mmrank version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "rank", help="rank documents for a query (arguments, a file, or JSONL with many queries)",
        description="Rank documents for a query. DOC arguments: an http(s) image URL, an image file, a text "
        "file (read as UTF-8 — a BOM is dropped — falling back to Latin-1), or a passage. An argument that "
        "looks like a file name but names nothing, or a directory, is an error; --text takes every DOC as a "
        "literal passage. Many queries: --input JSONL (schema in docs/cli.md; one query with its candidates "
        "per line) writes JSONL, with a progress bar on stderr, resuming where an interrupted run stopped.")
    p.add_argument("documents", nargs="*", metavar="DOC",
                   help="a passage, a text file, an image file, or an http(s) image URL")
    p.add_argument("--text", action="store_true",
                   help="take every DOC as a literal passage, never as a file name or URL")
    p.add_argument("--documents-file", metavar="FILE", default=None,
                   help="JSONL of candidates for the query, one per line: a JSON string (a passage) or an object "
                        "with id, text and/or image ('-' reads stdin)")
    p.add_argument("--query", "-q", help="query text")
    p.add_argument("--query-image", help="query image (a file or an http(s) URL); with --query: both")
    p.add_argument("--input", "-i", metavar="JSONL", default=None,
                   help="many queries: JSONL, one query with its candidates per line ('-' reads stdin)")
    p.add_argument("--output", "-o", metavar="JSONL", default=None,
                   help="with --input: write results here (JSONL, one line per query). Re-running with the same "
                        "--output skips queries already in it (resume); default: stdout")
    p.add_argument("--top-n", type=_non_negative_int, default=None,
                   help="keep only the best N documents of each query (default: all)")
    p.add_argument("--score-threshold", type=_finite_float, default=None,
                   help="drop scored documents below this score (unreadable ones are still listed)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (single query)")
    p.add_argument("--return-documents", action="store_true",
                   help="with --json or --input, include each document's text in the results")
    p.add_argument("--on-error", default="last", choices=["last", "raise"],
                   help="unreadable documents: rank last with the error shown (default) or fail")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(p)
    p.set_defaults(func=cmd_rank)

    r = sub.add_parser("rerank-run", help="rerank the top k of a first-stage TREC run; write a TREC run",
                       add_help=False)
    r.set_defaults(func=None, passthrough="rerank-run")
    s = sub.add_parser("serve", help="serve a Jina-compatible /v1/rerank API", add_help=False)
    s.set_defaults(func=None, passthrough="serve")
    e = sub.add_parser("eval", help="nDCG / Recall / MRR of runs against qrels, side by side", add_help=False)
    e.set_defaults(func=None, passthrough="eval")
    from .train.cli import add_commands as add_train_commands  # distill, select, train (issue 12)

    add_train_commands(sub)
    return parser


def _fail(message: str, code: int) -> int:
    print(f"mmrank: error: {message}", file=sys.stderr)
    return code


def run_guarded(fn: Any, *args: Any) -> int:
    """Call a command; turn every error a user can cause into one line on stderr and an exit status."""
    from .errors import InputError, MMRankError

    try:
        return int(fn(*args) or 0)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except InputError as exc:
        return _fail(str(exc), 2)
    except MMRankError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        print("mmrank: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mmrank rank ... | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 0
    except MemoryError:
        return _fail("out of memory (try a smaller --batch-size, --dtype bfloat16, or a GPU)", 1)
    except OSError as exc:  # a file that cannot be written or read (permissions, a full disk, ...)
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        return _fail(f"{exc.strerror or exc}{where}", 1)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # serve, eval and rerank-run own their arguments.
    if argv and argv[0] == "serve":
        from .server import main as serve_main

        return serve_main(argv[1:])
    if argv and argv[0] == "eval":
        from .evaluation import main as eval_main

        return eval_main(argv[1:])
    if argv and argv[0] == "rerank-run":
        from .rerank_run import main as rerank_run_main

        return rerank_run_main(argv[1:])
    args = build_parser().parse_args(argv)
    return run_guarded(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
