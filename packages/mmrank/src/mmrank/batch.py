"""Many queries from the command line: JSONL in, JSONL out (``mmrank rank --input``), resumable.

Input: one JSON object per line, one query with its candidates::

    {"id": "q1", "query": "what do pandas eat?",
     "candidates": ["a passage", {"id": "d2", "text": "another passage"},
                    {"id": "p3", "image": "pages/p3.png"}, {"id": "f4", "text": "Figure 4", "image": "f4.jpg"}],
     "top_n": 10}

* ``id`` — the query's id (a string or an integer; default: the line number). Ids must be unique: resuming
  relies on them.
* ``query`` — text, or an object ``{"text": ..., "image": ...}`` (an image query, or both).
* ``candidates`` (or ``documents``, as in a Jina ``/v1/rerank`` body) — a list; each is a string (a passage)
  or an object with ``id`` (default: its position), ``text`` and/or ``image`` and optional ``metadata``.
  Candidate ids must be unique within a line.
* ``top_n`` (optional) — keep the best N; ``metadata`` (optional) — echoed back unchanged.

An ``image`` is an http(s) URL, a ``data:`` URI, base64, or a file path; a relative path is taken relative to
the JSONL file's folder (to the working directory for stdin).

Output: one line per query, in input order::

    {"id": "q1", "model": "jinaai/jina-reranker-m0",
     "results": [{"index": 2, "id": "p3", "relevance_score": 0.91}, ..., {"index": 4, "id": "x",
                 "relevance_score": null, "error": "document 4 (id='x'): ..."}]}

``index`` is the candidate's position in its input line. Every candidate appears exactly once (unless
``top_n``/``--top-n``/``--score-threshold`` trims), unreadable ones last with ``relevance_score: null``.

Resume: with ``--output FILE``, queries whose id is already in FILE are skipped and new lines are appended, so
an interrupted run (Ctrl-C, a killed job) continues where it stopped; a half-written last line from a killed
run is removed first. Each line is written and flushed whole, so the file never holds a query twice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import InputError

REQUEST_FIELDS = {"id", "query", "candidates", "documents", "top_n", "metadata"}
CANDIDATE_FIELDS = {"id", "text", "image", "metadata"}


@dataclass
class Request:
    line: int
    id: str
    query: Any  # mmrank.Query
    documents: list[Any]  # mmrank.Document
    top_n: int | None
    metadata: Any


def _where(source: str, line: int) -> str:
    return f"{source}:{line}"


def _image_ref(value: Any, base: Path | None, where: str) -> Any:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: image must be a non-empty string (a URL, data: URI, base64 or a path)")
    low = value[:16].lower()
    if low.startswith(("http://", "https://", "data:", "file:")) or len(value) >= 4096:
        return value
    path = Path(os.path.expanduser(value))
    if not path.is_absolute() and base is not None and (base / path).exists():
        return str(base / path)
    return value  # an absolute path, a path relative to the working directory, or base64: load_image decides


def _is_id(value: Any) -> bool:
    """Whether ``value`` can be a query or candidate id: a non-empty string or an integer (not a bool)."""
    return not isinstance(value, bool) and isinstance(value, (str, int)) and str(value) != ""


def _candidate(value: Any, position: int, base: Path | None, where: str) -> Any:
    from .inputs.documents import Document

    if isinstance(value, str):
        return Document(text=value, id=str(position))
    if not isinstance(value, dict):
        raise InputError(f"{where}: candidate {position} must be a string or an object with text/image, "
                         f"got {type(value).__name__}")
    unknown = set(value) - CANDIDATE_FIELDS
    if unknown:
        raise InputError(f"{where}: candidate {position}: unknown field(s) {sorted(unknown)}; use "
                         f"{sorted(CANDIDATE_FIELDS)}")
    text, image = value.get("text"), value.get("image")
    if text is None and image is None:
        raise InputError(f"{where}: candidate {position} has neither 'text' nor 'image'")
    if text is not None and not isinstance(text, str):
        raise InputError(f"{where}: candidate {position}: text must be a string, got {type(text).__name__}")
    cid = value.get("id", position)
    if not _is_id(cid):
        raise InputError(f"{where}: candidate {position}: id must be a non-empty string or an integer")
    meta = value.get("metadata") or {}
    if not isinstance(meta, dict):
        raise InputError(f"{where}: candidate {position}: metadata must be an object")
    return Document(text=text, image=None if image is None else _image_ref(image, base, f"{where}: candidate "
                                                                                     f"{position}"),
                    id=str(cid), metadata=meta)


def _query(q: Any, where: str, base: Path | None) -> Any:
    """The request's ``query`` field (text, or an object with text and/or image) as a :class:`Query`."""
    from .inputs.documents import Query

    if isinstance(q, str):
        if not q:
            raise InputError(f"{where}: the query is empty")
        return Query(text=q)
    if not isinstance(q, dict):
        raise InputError(f"{where}: 'query' must be text or an object with text/image")
    extra = set(q) - {"text", "image"}
    if extra:
        raise InputError(f"{where}: query: unknown field(s) {sorted(extra)}; use 'text' and/or 'image'")
    if q.get("text") is not None and not isinstance(q.get("text"), str):
        raise InputError(f"{where}: query text must be a string")
    if not q.get("text") and q.get("image") is None:
        raise InputError(f"{where}: the query has neither text nor image")
    image = q.get("image")
    return Query(text=q.get("text") or None,
                 image=None if image is None else _image_ref(image, base, f"{where}: query"))


def _documents(obj: dict[str, Any], where: str, base: Path | None) -> list[Any]:
    """The request's candidates (or documents) as documents with distinct ids."""
    if "candidates" in obj and "documents" in obj:
        raise InputError(f"{where}: give 'candidates' or 'documents', not both")
    cands = obj.get("candidates", obj.get("documents"))
    if not isinstance(cands, list):
        raise InputError(f"{where}: 'candidates' must be a list")
    docs = [_candidate(c, i, base, where) for i, c in enumerate(cands)]
    seen: dict[str, int] = {}
    for i, d in enumerate(docs):
        if d.id in seen:
            raise InputError(f"{where}: candidates {seen[d.id]} and {i} have the same id {d.id!r}")
        seen[d.id] = i
    return docs


def parse_request(obj: Any, line: int, source: str, base: Path | None) -> Request:
    """Check one input line's object and build its query and documents; :class:`InputError` naming the
    line (and the candidate) otherwise."""
    where = _where(source, line)
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object with 'query' and 'candidates', got "
                         f"{type(obj).__name__}")
    unknown = set(obj) - REQUEST_FIELDS
    if unknown:
        raise InputError(f"{where}: unknown field(s) {sorted(unknown)}; use {sorted(REQUEST_FIELDS)}")
    qid = obj.get("id", line)
    if not _is_id(qid):
        raise InputError(f"{where}: id must be a non-empty string or an integer")
    query = _query(obj.get("query"), where, base)
    docs = _documents(obj, where, base)
    top_n = obj.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
        raise InputError(f"{where}: top_n must be a non-negative integer")
    return Request(line, str(qid), query, docs, top_n, obj.get("metadata"))


def _read_lines(path: str) -> tuple[list[tuple[int, str]], str, Path | None]:
    """Non-blank lines of ``path`` ('-': stdin) with their numbers; the name for messages; the base folder."""
    if path == "-":
        text = sys.stdin.buffer.read().decode("utf-8-sig", errors="strict")
        return [(i, s) for i, s in enumerate(text.splitlines(), 1) if s.strip()], "<stdin>", Path.cwd()
    p = Path(path)
    if p.is_dir():
        raise InputError(f"--input {path}: is a directory, not a JSONL file")
    if not p.is_file():
        raise InputError(f"--input {path}: no such file")
    out = []
    with open(p, encoding="utf-8-sig") as f:
        for i, s in enumerate(f, 1):
            if s.strip():
                out.append((i, s))
    return out, str(p), p.parent


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def load_requests(path: str) -> tuple[list[tuple[int, str]], str, Path | None, list[str], dict[str, int]]:
    """Read and check every line up front (before any model loads): returns the lines, the source name, the
    base folder, the query ids in order and the candidates per query id."""
    try:
        lines, source, base = _read_lines(path)
    except UnicodeDecodeError as exc:
        raise InputError(f"--input {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    ids: list[str] = []
    counts: dict[str, int] = {}
    first_line: dict[str, int] = {}
    for no, text in lines:
        req = parse_request(_loads(text, _where(source, no)), no, source, base)
        if req.id in first_line:
            raise InputError(f"{_where(source, no)}: query id {req.id!r} was already used on line "
                             f"{first_line[req.id]}; ids must be unique (resuming relies on them)")
        first_line[req.id] = no
        ids.append(req.id)
        counts[req.id] = len(req.documents)
    return lines, source, base, ids, counts


def done_ids(path: Path) -> set[str]:
    """Ids of the queries already in an output file; removes a half-written last line (a killed run)."""
    if not path.exists():
        return set()
    if path.is_dir():
        raise InputError(f"--output {path}: is a directory")
    data = path.read_bytes()
    if not data:
        return set()
    keep = data
    if not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        keep = data[:cut]
        print(f"mmrank: {path}: removed a half-written last line ({len(data) - cut} bytes) left by an "
              "interrupted run", file=sys.stderr)
        with open(path, "r+b") as f:
            f.truncate(cut)
    ids: set[str] = set()
    for no, raw in enumerate(keep.decode("utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        obj = _loads(raw, f"{path}:{no}")
        if not isinstance(obj, dict) or "id" not in obj or "results" not in obj:
            raise InputError(f"{path}:{no}: not a result line of mmrank rank --input (no 'id'/'results'); "
                             "refusing to append to it")
        if obj["id"] in ids:
            raise InputError(f"{path}:{no}: query id {obj['id']!r} appears twice")
        ids.add(str(obj["id"]))
    return ids


def _result_line(req: Request, ranked: list[Any], model: str, with_text: bool) -> str:
    results = []
    for r in ranked:
        item = r.to_dict(include_document=with_text)
        item["id"] = r.document.id
        results.append(item)
    out: dict[str, Any] = {"id": req.id, "model": model, "results": results}
    if req.metadata is not None:
        out["metadata"] = req.metadata
    return json.dumps(out) + "\n"  # ASCII: a line is valid UTF-8 whatever the texts hold


def iter_requests(lines: list[tuple[int, str]], source: str, base: Path | None,
                  skip: set[str]) -> Iterator[Request]:
    for no, text in lines:
        req = parse_request(json.loads(text), no, source, base)
        if req.id not in skip:
            yield req


def run_batch(args: argparse.Namespace) -> int:
    """``mmrank rank --input IN [--output OUT]``: rank every query of IN, append results to OUT (or stdout)."""
    from .cli import load_scorer

    lines, source, base, ids, counts = load_requests(args.input)
    out_path = Path(args.output) if args.output not in (None, "-") else None
    if out_path is not None and not out_path.resolve().parent.is_dir():
        raise InputError(f"--output {args.output}: folder {out_path.resolve().parent} does not exist")
    skip = done_ids(out_path) if out_path is not None else set()
    pending = [i for i in ids if i not in skip]
    if skip:
        stale = len(skip - set(ids))
        print(f"mmrank: resuming: {len(ids) - len(pending)} of {len(ids)} queries already in {out_path}"
              + (f" ({stale} result lines there are for ids not in the input)" if stale else ""), file=sys.stderr)
    if not pending:
        print(f"mmrank: nothing to do: all {len(ids)} queries are done", file=sys.stderr)
        return 0
    reranker = load_scorer(args, show_progress=False, quiet=args.quiet)
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(counts[i] for i in pending), unit="doc", desc="mmrank rank", file=sys.stderr,
               disable=args.quiet, dynamic_ncols=True)
    sink: IO[str]
    sink = open(out_path, "a", encoding="utf-8") if out_path is not None else sys.stdout  # noqa: SIM115
    done = 0
    try:
        for req in iter_requests(lines, source, base, skip):
            top_n = req.top_n if req.top_n is not None else args.top_n
            try:
                ranked = reranker.rank(req.query, req.documents, top_n=top_n,
                                       score_threshold=args.score_threshold, on_error=args.on_error)
            except InputError as exc:
                raise InputError(f"{_where(source, req.line)} (query {req.id!r}): {exc}") from None
            sink.write(_result_line(req, ranked, reranker.model_name, args.return_documents))
            sink.flush()
            done += 1
            bar.update(len(req.documents))
            bar.set_postfix_str(f"{done}/{len(pending)} queries", refresh=False)
    finally:
        bar.close()
        if sink is not sys.stdout:
            sink.close()
    return 0


def read_documents_file(path: str, *, start: int = 0) -> list[Any]:
    """``--documents-file``: JSONL of candidates (a JSON string or an object with id/text/image per line)."""
    try:
        lines, source, base = _read_lines(path)
    except UnicodeDecodeError as exc:
        raise InputError(f"--documents-file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    docs = []
    seen: dict[str, int] = {}
    for k, (no, text) in enumerate(lines):
        where = _where(source, no)
        doc = _candidate(_loads(text, where), start + k, base, where)
        if doc.id in seen:
            raise InputError(f"{where}: candidate id {doc.id!r} was already used on line {seen[doc.id]}")
        seen[doc.id] = no
        docs.append(doc)
    return docs
