"""``mmrank rerank-run``: turn a first-stage run into a reranked run.

    mmrank rerank-run --dataset ./scifact --run bm25.trec --output reranked.trec --top-k 100
    mmrank rerank-run --corpus corpus.jsonl --queries queries.jsonl --run bm25.trec -o reranked.trec \\
        --mode listwise --model Qwen/Qwen2-VL-2B-Instruct
    mmrank eval --qrels ./scifact/qrels/test.tsv --run bm25.trec --run reranked.trec --significance randomization

Inputs:

* ``--dataset DIR`` — a BEIR-style folder: ``corpus.jsonl``, ``queries.jsonl`` (and ``qrels/*.tsv``, which
  ``mmrank eval`` reads). ViDoRe-style folders work too: corpus rows may name an image file (``image``,
  ``image_path`` or ``image_file``, relative to the folder), and image files in ``DIR/images/`` or
  ``DIR/corpus/`` whose name (without suffix) is a document id become that document's image. Parquet instead
  of JSONL (``corpus.parquet`` / ``corpus/*.parquet``, as the Hugging Face hub stores BEIR and ViDoRe
  datasets, image columns as ``{"bytes", "path"}``) needs ``pyarrow`` (``pip install "mmrank[eval]"``).
* or ``--corpus FILE|DIR`` and ``--queries FILE`` separately (JSONL or Parquet).
* Rows: documents have an id (``_id``, ``corpus-id``, ``doc_id``, ``docid`` or ``id``) and ``text`` (with an
  optional ``title``, joined to the text by a space as BEIR's cross-encoder reranking does) and/or an image;
  queries have an id (``_id``, ``query-id``, ``qid`` or ``id``) and ``text`` (or ``query``) and/or an image.
* ``--run`` — the first stage: TREC (``qid Q0 docid rank score tag``), ``qid docid score`` or JSON
  ``{qid: {docid: score}}``, read by :func:`mmrank.evaluation.load_run`.

For every query of the run, its ``--top-k`` documents (in trec_eval's order: score descending, ties by id
descending) are reranked with the chosen scorer, and the output TREC run lists them first, best first, followed
by the rest of the first-stage list in its order (scores below every reranked one), so recall at depths beyond
k stays comparable; ``--drop-tail`` writes only the top k. A document the scorer cannot read (e.g. a broken
image) is kept, after the scored ones of its query, and reported. A run document missing from the corpus, or a
run query missing from the queries, is an error (nothing is dropped silently). The output is written to a
temporary file and renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

DOC_ID_KEYS = ("_id", "corpus-id", "corpus_id", "doc_id", "docid", "id")
QUERY_ID_KEYS = ("_id", "query-id", "query_id", "qid", "id")
IMAGE_KEYS = ("image", "image_path", "image_file")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


@dataclass
class Item:
    """A corpus document or a query: text and/or an image reference (path, URL, base64 or bytes)."""

    text: str | None
    image: Any


# ---------------------------------------------------------------------------------------------- reading
def _rows_jsonl(path: Path) -> Iterable[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{no}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{where}: expected a JSON object")
            yield where, obj


def _rows_parquet(path: Path) -> Iterable[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow (or 'mmrank[eval]'), "
                         "or convert the file to JSONL") from None
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    for file in files:
        table = pq.read_table(file)
        for no, row in enumerate(table.to_pylist()):
            yield f"{file}[row {no}]", row


def _rows(path: Path) -> Iterable[tuple[str, dict]]:
    if path.suffix.lower() == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
        return _rows_parquet(path)
    if path.is_dir():
        raise InputError(f"{path}: a folder without *.parquet files; give a JSONL or Parquet file")
    return _rows_jsonl(path)


def _pick(row: dict, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if row.get(k) is not None:
            return row[k]
    return None


def _image_value(value: Any, base: Path, where: str) -> Any:
    if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: image must be a path, a URL, base64 or bytes")
    low = value[:16].lower()
    if low.startswith(("http://", "https://", "data:", "file:")) or len(value) >= 4096:
        return value
    p = Path(value)
    if not p.is_absolute() and (base / p).exists():
        return base / p
    if p.is_absolute() and p.exists():
        return p
    if len(value) >= 64 and p.suffix.lower() not in IMAGE_SUFFIXES:
        return value  # base64 (or not an image at all: the scorer reports it for that document)
    raise InputError(f"{where}: image file {value!r} not found (relative paths are relative to {base})")


def _item(row: dict, where: str, base: Path, *, query: bool) -> Item:
    if query:
        text = _pick(row, ("text", "query"))
        title = None
    else:
        text = row.get("text")
        title = row.get("title")
    for name, v in (("text", text), ("title", title)):
        if v is not None and not isinstance(v, str):
            raise InputError(f"{where}: {name} must be a string, got {type(v).__name__}")
    joined = " ".join(s.strip() for s in (title, text) if s and s.strip()) or None
    image = _pick(row, IMAGE_KEYS)
    image = None if image is None else _image_value(image, base, where)
    if joined is None and image is None:
        raise InputError(f"{where}: neither text nor an image")
    return Item(joined, image)


def _read_items(path: Path, *, query: bool, base: Path | None = None) -> dict[str, Item]:
    base = base if base is not None else (path if path.is_dir() else path.parent)
    keys = QUERY_ID_KEYS if query else DOC_ID_KEYS
    out: dict[str, Item] = {}
    for where, row in _rows(path):
        rid = _pick(row, keys)
        if rid is None or isinstance(rid, bool) or str(rid) == "":
            raise InputError(f"{where}: no id (one of {', '.join(keys)})")
        rid = str(rid)
        if rid in out:
            raise InputError(f"{where}: id {rid!r} appears twice")
        out[rid] = _item(row, where, base, query=query)
    return out


def _find(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.jsonl", f"{stem}.parquet"):
        if (folder / name).is_file():
            return folder / name
    if (folder / stem).is_dir() and any((folder / stem).glob("*.parquet")):
        return folder / stem
    return None


def load_corpus(path: str | Path) -> dict[str, Item]:
    """Documents by id from a JSONL/Parquet file or a BEIR/ViDoRe folder (see the module documentation)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"corpus not found: {p}")
    if not p.is_dir():
        return _read_items(p, query=False)
    src = _find(p, "corpus")
    corpus = _read_items(src, query=False, base=p) if src is not None else {}
    images = [f for d in ("images", "corpus") if (p / d).is_dir() for f in sorted((p / d).iterdir())
              if f.suffix.lower() in IMAGE_SUFFIXES]
    for f in images:
        item = corpus.get(f.stem)
        if item is None:
            corpus[f.stem] = Item(None, f)
        elif item.image is None:
            item.image = f
    if not corpus:
        raise InputError(f"{p}: no corpus.jsonl / corpus.parquet / corpus/*.parquet and no images/ folder")
    return corpus


def load_queries(path: str | Path) -> dict[str, Item]:
    """Queries by id from a JSONL/Parquet file or the ``queries.*`` of a BEIR/ViDoRe folder."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"queries not found: {p}")
    if p.is_dir():
        src = _find(p, "queries")
        if src is None:
            raise InputError(f"{p}: no queries.jsonl / queries.parquet / queries/*.parquet")
        return _read_items(src, query=True, base=p)
    return _read_items(p, query=True)


# ---------------------------------------------------------------------------------------------- reranking
def check_trec_ids(run: Any) -> None:
    """Refuse query or document ids that a TREC run file cannot hold (empty, or containing whitespace)."""
    for qid, docs in run.items():
        for name, value in [("query", qid)] + [("document", d) for d in docs]:
            if not value or any(c.isspace() for c in value):
                raise InputError(f"{name} id {value!r} is empty or holds whitespace, which a TREC run cannot "
                                 "represent")


def write_trec(run: dict[str, list[tuple[str, float]]], path: str | Path, tag: str) -> None:
    """Write ``{qid: [(docid, score), ...best first]}`` as a TREC run, atomically (temporary file + rename)."""
    check_trec_ids({q: [d for d, _ in docs] for q, docs in run.items()})
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=str(target.parent.resolve()))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for qid, docs in run.items():
                for rank, (did, score) in enumerate(docs, 1):
                    f.write(f"{qid} Q0 {did} {rank} {score!r} {tag}\n")
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _check_coverage(run: dict[str, dict[str, float]], corpus: dict[str, Item], queries: dict[str, Item],
                    top_k: int) -> None:
    """Every query of the run, and every document within its ``top_k``, must be known (:class:`InputError`)."""
    from .evaluation import rank_documents

    missing_q = [q for q in run if q not in queries]
    if missing_q:
        raise InputError(f"{len(missing_q)} run queries are not in the queries file, e.g. {missing_q[:5]}")
    missing_d = sorted({(q, d) for q, docs in run.items() for d in rank_documents(docs)[:top_k] if d not in corpus})
    if missing_d:
        raise InputError(f"{len(missing_d)} run documents (within the top {top_k}) are not in the corpus, e.g. "
                         + ", ".join(f"{d!r} (query {q!r})" for q, d in missing_d[:5]))


def _rerank_query(reranker: Any, qid: str, q: Item, head: list[str], tail: list[str], corpus: dict[str, Item],
                  *, keep_tail: bool, on_error: str, errors: list[str]) -> list[tuple[str, float]]:
    """One query's new rows: the scored documents best first, then the failed ones (their errors appended to
    ``errors``) below the lowest score, then — with ``keep_tail`` — the first-stage tail in its order."""
    from .inputs.documents import Document, Query

    try:
        query = Query(text=q.text, image=q.image)
        docs = [Document(text=corpus[d].text, image=corpus[d].image, id=d) for d in head]
        ranked = reranker.rank(query, docs, on_error=on_error)
    except InputError as exc:
        raise InputError(f"query {qid!r}: {exc}") from None
    scored = [(r.document.id, float(r.score)) for r in ranked if r.score is not None]
    floor = min((s for _, s in scored), default=0.0)
    rows = list(scored)
    failed = [r for r in ranked if r.score is None]
    for i, r in enumerate(failed, 1):
        errors.append(f"query {qid!r}: {r.error}")
        rows.append((r.document.id, floor - i))
    if keep_tail:
        last = rows[-1][1] if rows else 0.0
        rows.extend((d, last - i) for i, d in enumerate(tail, 1))
    return rows


def rerank_run(reranker: Any, run: dict[str, dict[str, float]], corpus: dict[str, Item],
               queries: dict[str, Item], *, top_k: int = 100, keep_tail: bool = True,
               on_error: str = "last", progress: bool = False) -> tuple[dict[str, list[tuple[str, float]]],
                                                                        list[str]]:
    """Rerank the ``top_k`` of every query of ``run``; returns the new run (best first) and the errors of
    documents that could not be scored (kept after the scored ones)."""
    from .evaluation import rank_documents

    _check_coverage(run, corpus, queries, top_k)
    from tqdm.auto import tqdm

    out: dict[str, list[tuple[str, float]]] = {}
    errors: list[str] = []
    bar = tqdm(total=sum(min(top_k, len(d)) for d in run.values()), unit="doc", desc="mmrank rerank-run",
               file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        for qid, scores in run.items():
            order = rank_documents(scores)
            head, tail = order[:top_k], order[top_k:]
            out[qid] = _rerank_query(reranker, qid, queries[qid], head, tail, corpus, keep_tail=keep_tail,
                                     on_error=on_error, errors=errors)
            bar.update(len(head))
    finally:
        bar.close()
    return out, errors


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    from .cli import add_model_arguments

    p = argparse.ArgumentParser(
        prog="mmrank rerank-run",
        description="Rerank the top k documents of every query of a first-stage run with any mmrank scorer and "
        "write a TREC run. Then compare: mmrank eval --qrels QRELS --run FIRST --run RERANKED.")
    src = p.add_argument_group("data")
    src.add_argument("--dataset", metavar="DIR", default=None,
                     help="BEIR/ViDoRe-style folder with corpus.jsonl (or .parquet) and queries.jsonl; image files "
                          "in DIR/images/ named by document id")
    src.add_argument("--corpus", metavar="PATH", default=None,
                     help="corpus JSONL/Parquet file or folder (instead of --dataset)")
    src.add_argument("--queries", metavar="PATH", default=None,
                     help="queries JSONL/Parquet file (instead of --dataset)")
    src.add_argument("--run", required=True, metavar="FILE",
                     help="first-stage run: TREC, 'qid docid score', or JSON {qid: {docid: score}}")
    src.add_argument("--output", "-o", required=True, metavar="FILE", help="where to write the reranked TREC run")
    src.add_argument("--top-k", type=int, default=100, help="documents per query to rerank (default 100)")
    src.add_argument("--drop-tail", action="store_true",
                     help="write only the reranked top k (default: the rest of the first-stage list follows)")
    src.add_argument("--tag", default="mmrank", help="run tag, the TREC file's last column (default mmrank)")
    src.add_argument("--on-error", default="last", choices=["last", "raise"],
                     help="unreadable documents: keep them after the scored ones and report (default) or stop")
    src.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(p)
    return p


def _command(args: argparse.Namespace) -> int:
    from .cli import UsageError, load_scorer
    from .evaluation import load_run

    if args.top_k < 1:
        raise UsageError("--top-k must be >= 1")
    if args.dataset is None and (args.corpus is None or args.queries is None):
        raise UsageError("give --dataset DIR, or both --corpus and --queries")
    corpus = load_corpus(args.corpus or args.dataset)
    queries = load_queries(args.queries or args.dataset)
    run = load_run(args.run)
    if not run:
        raise InputError(f"{args.run}: the run is empty")
    check_trec_ids(run)
    out_dir = Path(args.output).resolve().parent
    if not out_dir.is_dir():
        raise UsageError(f"--output {args.output}: folder {out_dir} does not exist")
    reranker = load_scorer(args, show_progress=False, quiet=args.quiet)
    new_run, errors = rerank_run(reranker, run, corpus, queries, top_k=args.top_k, keep_tail=not args.drop_tail,
                                 on_error=args.on_error, progress=not args.quiet)
    write_trec(new_run, args.output, args.tag)
    n_docs = sum(min(args.top_k, len(d)) for d in run.values())
    print(f"mmrank rerank-run: reranked the top {args.top_k} of {len(run)} queries ({n_docs} documents) with "
          f"{reranker.model_name}; wrote {args.output}", file=sys.stderr)
    for e in errors[:20]:
        print(f"mmrank rerank-run: unreadable, kept after the scored documents: {e}", file=sys.stderr)
    if len(errors) > 20:
        print(f"mmrank rerank-run: ... and {len(errors) - 20} more unreadable documents", file=sys.stderr)
    qrels = sorted(Path(args.dataset).glob("qrels/*.tsv")) if args.dataset else []
    if qrels:
        print(f"mmrank rerank-run: compare with: mmrank eval --qrels {qrels[0]} --run {args.run} --run "
              f"{args.output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .cli import run_guarded

    args = build_parser().parse_args(argv)
    return run_guarded(_command, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
