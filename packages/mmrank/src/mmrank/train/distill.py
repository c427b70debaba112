"""``mmrank distill``: rank every input list with a teacher and write one distilled record per list.

The teacher is any mmrank :class:`~mmrank.Reranker` (a local jina-reranker-m0, a large listwise VLM, a
:class:`~mmrank.RemoteReranker`, ...), used through its public :meth:`~mmrank.Reranker.rank`. The record
format is described in :mod:`mmrank.train.records`.

* **Resumable.** Records are appended to the output, one complete line per record, in input order. A rerun
  reads the output first, skips the lists whose content hash it already holds (a torn last line left by a
  kill is cut off), and continues: killing and rerunning produces the same file as one uninterrupted run,
  without duplicates.
* **Concurrency.** ``concurrency`` lists are in flight at once (threads; useful for remote teachers, whose
  calls wait on the network). Results are still written in input order.
* A tqdm progress bar (``show_progress``). Any teacher error stops the run with the record named;
  documents the teacher could not read (``error`` set) are an error too — nothing is silently dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..scorers.base import Reranker
from .records import RankList, Record, RecordError, margin_confidence, parse_record, read_lists


def teacher_identity(teacher: Reranker) -> dict[str, Any]:
    cls = type(teacher)
    out: dict[str, Any] = {"model": getattr(teacher, "model_name", "unknown"),
                           "class": f"{cls.__module__}.{cls.__qualname__}"}
    mode = getattr(teacher, "mode", None)
    if isinstance(mode, str):
        out["mode"] = mode
    return out


def distill_one(teacher: Reranker, rl: RankList, identity: dict[str, Any]) -> Record:
    """The teacher's record for one list."""
    try:
        ranked = teacher.rank(rl.query(), rl.documents(), on_error="raise")
    except Exception as exc:
        raise RecordError(f"{rl.where}: the teacher failed: {exc.__class__.__name__}: {exc}") from exc
    if sorted(r.index for r in ranked) != list(range(len(rl.candidates))):
        raise RecordError(f"{rl.where}: the teacher returned {len(ranked)} of {len(rl.candidates)} candidates")
    perm = [r.index for r in ranked]
    scores: list[float | None] = [None] * len(rl.candidates)
    for r in ranked:
        scores[r.index] = r.score
    return Record(id=rl.id, query_text=rl.query_text, query_image=rl.query_image, candidates=rl.candidates,
                  labels=rl.labels, base_dir=rl.base_dir, where=rl.where, teacher_permutation=perm,
                  teacher_scores=scores, confidence=margin_confidence(scores), teacher=identity)


def _done_keys(out: Path) -> dict[str, tuple[str, str]]:
    """Location-independent keys (:attr:`RankList.resolved_hash`) of the records already in the output, each
    with its record id and where it is; a torn (unterminated) last line, as a kill mid-write leaves, is cut
    off first."""
    if not out.exists():
        return {}
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with out.open("r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    done: dict[str, tuple[str, str]] = {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError(f"{out}: not UTF-8 text; not a distilled records file, refusing to append to it") from None
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise RecordError(f"{out} line {no}: not a distilled record; refusing to append to it") from None
        rec = parse_record(obj, base_dir=out.parent, where=f"{out} line {no}")
        done[rec.resolved_hash] = (rec.id, rec.where)
    return done


def distill(teacher: Reranker, lists: str | os.PathLike | list[RankList], out: str | os.PathLike, *,
            concurrency: int = 1, show_progress: bool = True,
            on_record: Callable[[Record], None] | None = None) -> Path:
    """Distil ``lists`` (a JSONL path or parsed lists) into ``out`` with ``teacher``; returns ``out``.

    Image references are written relative to ``out``'s folder (absolute paths and URLs stay as they are)."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    items = read_lists(lists) if not isinstance(lists, list) else lists
    for rl in items:
        rl.check_images()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done_keys(out)
    done_ids = {rid: where for rid, where in done.values()}
    todo = [rl for rl in items if rl.resolved_hash not in done]
    for rl in todo:  # the same id with other content: the output would hold two records of that id
        if rl.id in done_ids:
            raise RecordError(f"{rl.where}: {out} already holds a record with this id for other content "
                              f"({done_ids[rl.id]}); was the input edited? Distil into a new file")
    identity = teacher_identity(teacher)
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="mmrank distill", unit="list")
    from .records import rebase

    try:
        with out.open("a", encoding="utf-8") as f, ThreadPoolExecutor(max_workers=concurrency) as pool:
            # Bounded in-flight window; results are written strictly in input order.
            futures: list[Any] = []
            it = iter(todo)
            for rl in it:
                futures.append(pool.submit(distill_one, teacher, rl, identity))
                if len(futures) >= concurrency:
                    break
            while futures:
                rec = futures.pop(0).result()
                f.write(json.dumps(rebase(rec, out.parent).to_json(), ensure_ascii=False) + "\n")
                f.flush()
                if on_record is not None:
                    on_record(rec)
                if bar is not None:
                    bar.update(1)
                nxt = next(it, None)
                if nxt is not None:
                    futures.append(pool.submit(distill_one, teacher, nxt, identity))
    finally:
        if bar is not None:
            bar.close()
    return out
