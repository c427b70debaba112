"""The distilled-record format (JSONL, one ranked list per line) and its validation.

Input lists (what ``mmrank distill`` reads; also what ``mmrank train`` takes as validation data)::

    {"id": "q17",                                   # optional; default: the content hash
     "query": "red" | {"text": "...", "image": "q.png"},
     "candidates": ["passage text", {"id": "d3", "text": "...", "image": "imgs/3.png"}, ...],
     "labels": {"d3": 1, ...}}                        # optional graded relevance (qrels), by candidate id

Distilled records (what ``mmrank distill`` writes, ``mmrank select`` filters and ``mmrank train`` learns)::

    {"id": "q17",
     "hash": "sha256:…",                 # of the canonical JSON of query + candidates (resume, dedup)
     "query": {"text": "red", "image": null},
     "candidates": [{"id": "d0", "text": "a red circle", "image": "images/red-circle-0.png"}, ...],
     "teacher_permutation": [2, 0, 1],   # candidate indices, best first (π*)
     "teacher_scores": [0.1, 0.0, 0.9],  # in candidate order (None where the teacher could not score)
     "confidence": 0.9,                  # in [0, 1]: see :func:`margin_confidence`
     "teacher": {"model": "jinaai/jina-reranker-m0", "class": "mmrank.scorers.pointwise.JinaRerankerM0"},
     "labels": {"d0": 1}}                # copied from the input when given

Images are **references** — a file path (relative paths are resolved against the folder of the JSONL file
that names them) or an ``http(s)://`` URL — never inlined bytes: a ``data:`` URL or a base64 blob is
refused with an error that names the record. Every error about a record names the file, the line and the
record id (:class:`RecordError`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..inputs.documents import Document, Query, text_problem


class RecordError(InputError):
    """A record (input list or distilled record) that cannot be used; the message names it."""


@dataclass
class Candidate:
    id: str
    text: str | None = None
    image: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "image": self.image}


@dataclass
class RankList:
    """One query and its candidates (an input list, or the input part of a distilled record)."""

    id: str
    query_text: str | None
    query_image: str | None
    candidates: list[Candidate]
    labels: dict[str, int] | None = None
    base_dir: Path = field(default_factory=Path)
    where: str = ""

    @property
    def hash(self) -> str:
        return content_hash(self.query_text, self.query_image, self.candidates)

    @property
    def resolved_hash(self) -> str:
        """The content hash with image references resolved to absolute paths: the same list read from files
        in different folders has the same key (what distillation resumes by)."""
        def absolute(ref: str | None) -> str | None:
            res = self.resolve(ref)
            return res if res is None or res.startswith(("http://", "https://")) else os.path.abspath(res)

        return content_hash(self.query_text, absolute(self.query_image),
                            [Candidate(c.id, c.text, absolute(c.image)) for c in self.candidates])

    @property
    def has_image(self) -> bool:
        return self.query_image is not None or any(c.image is not None for c in self.candidates)

    @property
    def modality(self) -> str:
        """``"text"`` (no image anywhere), ``"image"`` (every candidate has an image and none has text) or
        ``"mixed"``."""
        if not self.has_image:
            return "text"
        if all(c.image is not None and not c.text for c in self.candidates):
            return "image"
        return "mixed"

    def resolve(self, ref: str | None) -> str | None:
        if ref is None or ref.startswith(("http://", "https://")):
            return ref
        p = Path(ref)
        return str(p if p.is_absolute() else self.base_dir / p)

    def query(self) -> Query:
        return Query(text=self.query_text, image=_path_or_url(self.resolve(self.query_image)))

    def documents(self) -> list[Document]:
        return [Document(text=c.text, image=_path_or_url(self.resolve(c.image)), id=c.id) for c in self.candidates]

    def input_json(self) -> dict[str, Any]:
        return {"id": self.id, "hash": self.hash, "query": {"text": self.query_text, "image": self.query_image},
                "candidates": [c.to_json() for c in self.candidates]}

    def check_images(self) -> None:
        """Every local image reference exists (URLs are checked when they are read)."""
        refs = [("query", self.query_image)] + [(f"candidate {i} (id={c.id!r})", c.image)
                                                 for i, c in enumerate(self.candidates)]
        for what, ref in refs:
            path = self.resolve(ref)
            if path is not None and not path.startswith(("http://", "https://")) and not os.path.isfile(path):
                raise RecordError(f"{self.where}: {what}: image file {path!r} does not exist")


@dataclass
class Record(RankList):
    """A distilled record: a :class:`RankList` plus the teacher's answer."""

    teacher_permutation: list[int] = field(default_factory=list)
    teacher_scores: list[float | None] = field(default_factory=list)
    confidence: float = 0.0
    teacher: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = self.input_json()
        out.update({"teacher_permutation": list(self.teacher_permutation),
                    "teacher_scores": list(self.teacher_scores), "confidence": self.confidence,
                    "teacher": dict(self.teacher)})
        if self.labels is not None:
            out["labels"] = dict(self.labels)
        return out


def _path_or_url(ref: str | None) -> Any:
    if ref is None or ref.startswith(("http://", "https://")):
        return ref
    return Path(ref)


def content_hash(query_text: str | None, query_image: str | None, candidates: Sequence[Candidate]) -> str:
    """sha256 of the canonical JSON of the query and the candidates (ids, texts and image references)."""
    blob = json.dumps({"q": [query_text, query_image], "c": [[c.id, c.text, c.image] for c in candidates]},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()


def margin_confidence(scores: Sequence[float | None]) -> float:
    """The teacher's confidence in its top choice: ``(s₁ − s₂) / (max − min)`` over the scored candidates,
    in [0, 1] (0 when all scores are equal, and with fewer than two scored candidates: a list of one says
    nothing about ranking, so ``--top-confidence`` must not prefer it). For a listwise teacher whose scores
    are ranks it is the constant ``1/(n−1)``: filter such records by another criterion."""
    xs = sorted((float(s) for s in scores if s is not None), reverse=True)
    if len(xs) < 2:
        return 0.0
    spread = xs[0] - xs[-1]
    return 0.0 if spread <= 0 else (xs[0] - xs[1]) / spread


# ---------------------------------------------------------------------------------------------- parsing
def _image_ref(value: Any, where: str, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise RecordError(f"{where}: {what}: image must be a file path or an http(s) URL string, got "
                          f"{type(value).__name__}")
    if value.startswith("data:") or (len(value) > 1024 and "/" not in value[:200]) or "\n" in value:
        raise RecordError(f"{where}: {what}: inline image data is not allowed in records; write the image to a "
                          "file and give its path (or an http(s) URL)")
    why = text_problem(value)
    if why:
        raise RecordError(f"{where}: {what}: image reference: {why}")
    return value


def _text(value: Any, where: str, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise RecordError(f"{where}: {what}: text must be a string, got {type(value).__name__}")
    why = text_problem(value) if value is not None else None
    if why:  # e.g. a lone surrogate ("\ud800" in the JSON): no tokenizer takes it, and it cannot be written back
        raise RecordError(f"{where}: {what}: {why}")
    return value


def _id(value: Any, where: str, what: str) -> str:
    """An id: a non-empty string or an integer (kept as its decimal string)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise RecordError(f"{where}: {what} must be a non-empty string or an integer, got {value!r}")
    why = text_problem(str(value))
    if why:
        raise RecordError(f"{where}: {what}: {why}")
    return str(value)


def _query(q: Any, where: str) -> tuple[str | None, str | None]:
    """``(text, image)`` of a list's ``query`` field (a string, or an object with text and/or image)."""
    if isinstance(q, str):
        qt, qi = _text(q, where, "query"), None
    elif isinstance(q, dict):
        unknown = set(q) - {"text", "image"}
        if unknown:
            raise RecordError(f"{where}: unknown query field(s) {sorted(unknown)}")
        qt, qi = _text(q.get("text"), where, "query"), _image_ref(q.get("image"), where, "query")
    else:
        raise RecordError(f"{where}: 'query' must be a string or an object with text and/or image")
    if not qt and qi is None:
        raise RecordError(f"{where}: the query has neither text nor image")
    return qt, qi


def _candidate(c: Any, i: int, where: str) -> Candidate:
    """Candidate ``i`` of a list: a string (its text, id ``i``) or an object with id, text and/or image."""
    what = f"candidate {i}"
    if isinstance(c, str):
        return Candidate(id=f"{i}", text=c)
    if not isinstance(c, dict):
        raise RecordError(f"{where}: {what} must be a string or an object")
    unknown = set(c) - {"id", "text", "image"}
    if unknown:
        raise RecordError(f"{where}: {what}: unknown field(s) {sorted(unknown)}")
    cid = _id(c["id"], where, f"{what}: id") if "id" in c else str(i)
    cand = Candidate(id=cid, text=_text(c.get("text"), where, what),
                     image=_image_ref(c.get("image"), where, f"{what} (id={cid!r})"))
    if not cand.text and cand.image is None:
        raise RecordError(f"{where}: {what} (id={cid!r}) has neither text nor image")
    return cand


def _candidates(cands_raw: Any, where: str) -> list[Candidate]:
    """A list's non-empty ``candidates``, with unique ids."""
    if not isinstance(cands_raw, list) or not cands_raw:
        raise RecordError(f"{where}: 'candidates' must be a non-empty list")
    cands = [_candidate(c, i, where) for i, c in enumerate(cands_raw)]
    ids = [c.id for c in cands]
    if len(set(ids)) != len(ids):
        dup = sorted({x for x in ids if ids.count(x) > 1})
        raise RecordError(f"{where}: candidate ids must be unique, repeated: {dup}")
    return cands


def _labels(labels: Any, ids: list[str], where: str) -> dict[str, int] | None:
    """A list's optional ``labels``: candidate id -> integer relevance, for known ids only."""
    if labels is None:
        return None
    if not isinstance(labels, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                               for v in labels.values()):
        raise RecordError(f"{where}: 'labels' must map candidate ids to integer relevance")
    unknown = set(labels) - set(ids)
    if unknown:
        raise RecordError(f"{where}: labels name unknown candidate id(s) {sorted(unknown)}")
    return labels


#: The fields of an input list and of a distilled record (a record is also a valid input list).
LIST_FIELDS = ("id", "query", "candidates", "labels")
RECORD_FIELDS = (*LIST_FIELDS, "hash", "teacher_permutation", "teacher_scores", "confidence", "teacher")


def parse_list(obj: Any, *, base_dir: Path, where: str) -> RankList:
    """An input list (or the input part of a record) from decoded JSON; :class:`RecordError` names ``where``."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
    rid = obj.get("id")
    if rid is not None:
        rid = _id(rid, where, "id")
    unknown = sorted(set(obj) - set(RECORD_FIELDS))
    if unknown:  # a misspelt field ("label", "teacher_perm") must not be silently ignored
        raise RecordError(f"{where}{'' if rid is None else f' (id={rid!r})'}: unknown field(s) {unknown}; a "
                          f"record has {', '.join(RECORD_FIELDS)}")
    outer = where
    if rid is not None:
        where = f"{where} (id={str(rid)!r})"
    qt, qi = _query(obj.get("query"), where)
    cands = _candidates(obj.get("candidates"), where)
    labels = _labels(obj.get("labels"), [c.id for c in cands], where)
    out = RankList(id="", query_text=qt, query_image=qi, candidates=cands, labels=labels, base_dir=base_dir,
                   where=where)
    out.id = str(rid) if rid is not None else out.hash
    out.where = where if rid is not None else outer
    return out


def _is_number(v: Any) -> bool:
    """A finite JSON number (``NaN``/``Infinity``, which Python's json accepts, are not)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _permutation(perm: Any, n: int, where: str) -> list[int]:
    """``teacher_permutation``: a permutation of the candidate indices ``0..n-1``."""
    if (not isinstance(perm, list) or any(isinstance(x, bool) or not isinstance(x, int) for x in perm)
            or sorted(perm) != list(range(n))):
        raise RecordError(f"{where}: teacher_permutation {perm!r} is not a permutation of the {n} candidate "
                          f"indices 0..{n - 1}")
    return list(perm)


def _scores(scores: Any, n: int, where: str) -> list[float | None]:
    """``teacher_scores``: ``n`` numbers or nulls in candidate order (absent: all null)."""
    if scores is None:
        scores = [None] * n
    if not isinstance(scores, list) or len(scores) != n or not all(s is None or _is_number(s) for s in scores):
        raise RecordError(f"{where}: teacher_scores must be a list of {n} finite numbers (or nulls) in candidate "
                          "order")
    return [None if s is None else float(s) for s in scores]


def _check_order(perm: list[int], scores: list[float | None], where: str) -> None:
    """The permutation ranks the scored candidates best first: training reads the order from the
    permutation and the ties from the scores, so a record where they disagree is refused, not learnt."""
    prev: int | None = None
    for i in perm:
        if scores[i] is None:
            continue
        if prev is not None and scores[i] > scores[prev]:  # type: ignore[operator]
            raise RecordError(f"{where}: teacher_permutation {perm} does not rank teacher_scores best first: "
                              f"candidate {i} (score {scores[i]:g}) comes after candidate {prev} (score "
                              f"{scores[prev]:g})")
        prev = i


def parse_record(obj: Any, *, base_dir: Path, where: str) -> Record:
    """A distilled record; checks that π* is a permutation of the candidates and the scores fit."""
    rl = parse_list(obj, base_dir=base_dir, where=where)
    where = rl.where
    n = len(rl.candidates)
    perm = _permutation(obj.get("teacher_permutation"), n, where)
    scores = _scores(obj.get("teacher_scores"), n, where)
    _check_order(perm, scores, where)
    conf = obj.get("confidence", 0.0)
    if not _is_number(conf):
        raise RecordError(f"{where}: confidence must be a finite number, got {conf!r}")
    teacher = obj.get("teacher") or {}
    if not isinstance(teacher, dict):
        raise RecordError(f"{where}: teacher must be an object")
    h = obj.get("hash")
    if h is not None and h != rl.hash:
        raise RecordError(f"{where}: content hash {h!r} does not match the record's query and candidates "
                          f"({rl.hash}); was the record edited?")
    return Record(id=rl.id, query_text=rl.query_text, query_image=rl.query_image, candidates=rl.candidates,
                  labels=rl.labels, base_dir=rl.base_dir, where=where, teacher_permutation=perm,
                  teacher_scores=scores, confidence=float(conf), teacher=teacher)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """``(line number, decoded object)`` of each non-empty line; :class:`RecordError` for bad JSON."""
    path = Path(path)
    if path.is_dir():
        raise RecordError(f"{path}: is a folder, not a JSONL file")
    if not path.is_file():
        raise RecordError(f"{path}: no such file")
    with path.open("rb") as f:
        for no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if no == 1 else "utf-8")  # a byte-order mark is tolerated
            except UnicodeDecodeError as exc:
                raise RecordError(f"{path} line {no}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                                  f"{exc.start + 1})") from None
            if not line.strip():
                continue
            try:
                yield no, json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{path} line {no}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise RecordError(f"{path} line {no}: JSON nested too deeply") from None


def read_lists(path: str | os.PathLike, *, check_images: bool = True) -> list[RankList]:
    path = Path(path)
    out = [parse_list(obj, base_dir=path.parent, where=f"{path} line {no}") for no, obj in iter_jsonl(path)]
    _check_unique(out)
    if check_images:
        for r in out:
            r.check_images()
    return out


def read_records(path: str | os.PathLike, *, check_images: bool = True) -> list[Record]:
    path = Path(path)
    out = [parse_record(obj, base_dir=path.parent, where=f"{path} line {no}") for no, obj in iter_jsonl(path)]
    _check_unique(out)
    if check_images:
        for r in out:
            r.check_images()
    return out


def _check_unique(items: Sequence[RankList]) -> None:
    seen: dict[str, str] = {}
    for r in items:
        if r.id in seen:
            raise RecordError(f"{r.where}: duplicate record id {r.id!r} (also at {seen[r.id]})")
        seen[r.id] = r.where


def write_records(path: str | os.PathLike, records: Sequence[Record]) -> None:
    """Write records (relative image references are re-based onto ``path``'s folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(rebase(r, path.parent).to_json(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def rebase(r: Record, new_dir: Path) -> Record:
    """The record with relative image paths rewritten relative to ``new_dir`` (content hash recomputed)."""
    if Path(r.base_dir).resolve() == Path(new_dir).resolve():
        return r

    def fix(ref: str | None) -> str | None:
        res = r.resolve(ref)
        if res is None or res.startswith(("http://", "https://")):
            return res
        return os.path.relpath(Path(res).resolve(), Path(new_dir).resolve())

    cands = [Candidate(c.id, c.text, fix(c.image)) for c in r.candidates]
    return Record(id=r.id, query_text=r.query_text, query_image=fix(r.query_image), candidates=cands,
                  labels=r.labels, base_dir=Path(new_dir), where=r.where,
                  teacher_permutation=r.teacher_permutation, teacher_scores=r.teacher_scores,
                  confidence=r.confidence, teacher=r.teacher)
