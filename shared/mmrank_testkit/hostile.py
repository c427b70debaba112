"""Hostile-input property checks shared by the three framework adapters' tests.

Hypothesis draws lists of abstract document specs (:class:`Spec`: text, empty text, image, text+image,
broken / truncated / missing images, text that is not valid Unicode, image values of no image type, no
content at all; with ids that repeat, the same document object given twice, the same content under another
id, retriever scores, large metadata), a ``top_n`` and a ``score_threshold``. A :class:`HostileDriver` turns
each spec into the framework's own document, runs the adapter on the real mmrank path (the tiny offline
model) and reads its output back. :func:`check_adapter` then checks, for any such input:

- the full ranking (``top_n=None``, no threshold) returns every input document exactly once — or, for
  frameworks whose rankers merge documents with the same id (Haystack), every id once, the one with the
  highest retriever score kept — and nothing else: no invented or duplicated document, content unchanged;
- readable documents come first with a float score, best first; documents that cannot be read come last,
  in input order, with ``score=None`` and an error that names the document;
- with a ``top_n`` and a threshold, the result is exactly the full ranking with scored documents below the
  threshold dropped, then trimmed to ``top_n`` (sync or async entry point alike);
- under ``on_error="raise"`` a call with an unreadable document raises an ``mmrank.InputError`` naming one;
- the caller's documents are never mutated.
"""

from __future__ import annotations

import asyncio
import base64
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mmrank
from hypothesis import strategies as st

from .samples import sample_image_bytes

#: Readable in every framework: scored.
TEXT, EMPTY_TEXT, IMAGE, TEXT_IMAGE = "text", "empty_text", "image", "text_image"
#: Unreadable in every framework that can express them: ranked last with an error.
BROKEN, TRUNCATED, MISSING, BAD_TEXT, BAD_IMAGE_TYPE = (
    "broken_image", "truncated_image", "missing_file", "bad_text", "bad_image_type")
#: A document with neither text nor image (what it means depends on the framework).
NO_CONTENT = "no_content"

IMAGE_KINDS = (IMAGE, TEXT_IMAGE, BROKEN, TRUNCATED, MISSING, BAD_IMAGE_TYPE)
BROKEN_BYTES = b"\x89PNG\r\n\x1a\n but then not a PNG at all"
IDS = ("a", "b", "c", "d")


@dataclass(frozen=True)
class Spec:
    """One hostile document, framework-neutral."""

    kind: str
    text: str = ""
    doc_id: str | None = None
    retrieval_score: float | None = None
    variant: int = 0
    big_metadata: bool = False


class Files:
    """The image files and bytes the specs refer to (made once per test)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.png = sample_image_bytes(3, size=(32, 28))
        self.png_path = folder / "good.png"
        self.png_path.write_bytes(self.png)
        self.broken = BROKEN_BYTES
        # The header (format and size) is intact, the pixel data is cut: it fails only when decoded.
        self.truncated = self.png[: len(self.png) * 2 // 3]
        self.missing_path = folder / "no-such-image.png"


class HostileDriver(ABC):
    """Teaches :func:`check_adapter` one framework."""

    name = "adapter"
    #: The kinds this framework can express.
    kinds: tuple[str, ...] = (TEXT, EMPTY_TEXT, IMAGE, TEXT_IMAGE, BROKEN, TRUNCATED, MISSING)
    #: The kinds that must come back last with an error.
    failing: frozenset[str] = frozenset({BROKEN, TRUNCATED, MISSING, BAD_TEXT, BAD_IMAGE_TYPE})
    #: Whether documents with the same id are one document (merged, the best retriever score kept).
    merges_ids = False
    #: Whether a document may have no id (then its error names its position instead).
    ids_optional = True

    @abstractmethod
    def build(self, reranker: mmrank.Reranker, *, top_n: int | None, score_threshold: float | None,
              on_error: str = "last") -> Any: ...

    @abstractmethod
    def make(self, spec: Spec, probe: int, files: Files) -> Any:
        """The framework document for ``spec``, carrying ``probe`` in its metadata (under ``"probe"``)."""

    @abstractmethod
    def same_content_new_id(self, doc: Any, spec: Spec, new_id: str, probe: int) -> Any:
        """A second document with ``doc``'s content under ``new_id`` (and its own probe)."""

    @abstractmethod
    def run(self, adapter: Any, docs: list[Any]) -> list[Any]: ...

    @abstractmethod
    async def arun(self, adapter: Any, docs: list[Any]) -> list[Any]: ...

    @abstractmethod
    def in_id(self, doc: Any) -> str | None: ...

    @abstractmethod
    def in_score(self, doc: Any) -> float | None:
        """The retriever's score an input document carries."""

    @abstractmethod
    def probe(self, doc: Any) -> int:
        """The probe of an input or output document."""

    @abstractmethod
    def text(self, doc: Any) -> Any:
        """The content of an input or output document (to prove copies keep it)."""

    @abstractmethod
    def out_id(self, doc: Any) -> str | None: ...

    @abstractmethod
    def out_score(self, doc: Any) -> float | None: ...

    @abstractmethod
    def out_error(self, doc: Any) -> str | None: ...

    @abstractmethod
    def snapshot(self, doc: Any) -> Any: ...


# ---------------------------------------------------------------------- strategies
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)


@st.composite
def spec_lists(draw: st.DrawFn, driver: HostileDriver, max_docs: int = 5) -> list[tuple[str, Any]]:
    """A list of ``("spec", Spec)`` entries, plus ``("again", i)`` (the i-th document object once more) and
    ``("renamed", i)`` (the i-th document's content under another id)."""
    ids = st.sampled_from(IDS) | st.none() if driver.ids_optional else st.sampled_from(IDS)
    score = st.none() | st.floats(-5, 5, allow_nan=False)
    one = st.builds(Spec, kind=st.sampled_from(driver.kinds), text=_text, doc_id=ids, retrieval_score=score,
                    variant=st.integers(0, 3), big_metadata=st.sampled_from([False, False, False, True]))
    base = draw(st.lists(one, max_size=max_docs))
    entries: list[tuple[str, Any]] = [("spec", s) for s in base]
    if base:
        for _ in range(draw(st.integers(0, 2))):
            entries.append((draw(st.sampled_from(["again", "renamed"])), draw(st.integers(0, len(base) - 1))))
    return entries


def materialize(driver: HostileDriver, entries: list[tuple[str, Any]], files: Files
                ) -> tuple[list[Any], dict[int, Spec]]:
    """The framework documents for ``entries`` and the spec behind each probe."""
    docs: list[Any] = []
    specs: dict[int, Spec] = {}
    first: list[tuple[Any, Spec]] = []
    for what, value in entries:
        probe = len(specs)
        if what == "spec":
            doc = driver.make(value, probe, files)
            specs[probe] = value
            first.append((doc, value))
        elif what == "again":
            doc, spec = first[value]  # the very same object: it keeps its probe
        else:
            src, spec = first[value]
            new_id = f"renamed-{probe}"
            doc = driver.same_content_new_id(src, spec, new_id, probe)
            specs[probe] = spec
        docs.append(doc)
    return docs, specs


# ---------------------------------------------------------------------- the checks
def _expected_full(driver: HostileDriver, docs: list[Any]) -> list[Any]:
    """The input documents the full ranking must return (Haystack-style id merging applied)."""
    if not driver.merges_ids:
        return list(docs)
    best: dict[Any, Any] = {}
    for d in docs:
        kept = best.get(driver.in_id(d))
        if kept is None or _rank_score(driver.in_score(d)) > _rank_score(driver.in_score(kept)):
            best[driver.in_id(d)] = d
    return list(best.values())


def _rank_score(score: float | None) -> float:
    return float("-inf") if score is None else score


def check_full(driver: HostileDriver, docs: list[Any], specs: dict[int, Spec], out: list[Any]) -> None:
    expected = _expected_full(driver, docs)
    got = [driver.probe(o) for o in out]
    assert Counter(got) == Counter(driver.probe(d) for d in expected), (
        f"{driver.name}: the full ranking must return each input document once: got probes {got}, "
        f"expected {[driver.probe(d) for d in expected]}")
    by_probe = {driver.probe(d): d for d in docs}
    n_scored = 0
    for position, o in enumerate(out):
        src = by_probe[driver.probe(o)]
        spec = specs[driver.probe(o)]
        assert driver.out_id(o) == driver.in_id(src), f"{driver.name}: id changed"
        assert driver.text(o) == driver.text(src), f"{driver.name}: content changed"
        fails = spec.kind in driver.failing
        score, error = driver.out_score(o), driver.out_error(o)
        if fails:
            assert score is None and error, f"{driver.name}: {spec.kind} must fail with an error, got {score} {error}"
            doc_id = driver.in_id(src)
            assert (doc_id in error) if doc_id is not None else ("document " in error), (
                f"{driver.name}: the error must name the document: {error!r}")
        else:
            assert isinstance(score, float) and error is None, (
                f"{driver.name}: {spec.kind} must be scored, got {score!r} {error!r}")
            assert position == n_scored, f"{driver.name}: a scored document after a failed one"
            n_scored += 1
    scores = [driver.out_score(o) for o in out[:n_scored]]
    assert scores == sorted(scores, reverse=True), f"{driver.name}: not best first: {scores}"
    failed_order = [driver.probe(d) for d in expected if specs[driver.probe(d)].kind in driver.failing]
    assert [driver.probe(o) for o in out[n_scored:]] == failed_order, f"{driver.name}: failed not in input order"


def threshold_between(scores: list[float], k: int) -> float | None:
    """A threshold between the k-th best distinct score and the next (``None`` when they are too close to
    tell apart reliably)."""
    distinct = sorted(set(scores), reverse=True)
    if k + 1 >= len(distinct) or distinct[k] - distinct[k + 1] < 1e-4:
        return None
    return (distinct[k] + distinct[k + 1]) / 2


def check_adapter(driver: HostileDriver, reranker: mmrank.Reranker, entries: list[tuple[str, Any]], files: Files,
                  data: st.DataObject) -> None:
    """All the checks of the module docstring for one drawn input (``data`` draws top_n and threshold)."""
    docs, specs = materialize(driver, entries, files)
    before = [driver.snapshot(d) for d in docs]

    full = driver.run(driver.build(reranker, top_n=None, score_threshold=None), docs)
    check_full(driver, docs, specs, full)

    top_n = data.draw(st.none() | st.integers(1, len(docs) + 2), label="top_n")
    scored = [driver.out_score(o) for o in full if driver.out_score(o) is not None]
    how = data.draw(st.sampled_from(["none", "below all", "above all", "between"]), label="threshold")
    threshold = {"none": None, "below all": -1.0, "above all": 2.0}.get(how)
    if how == "between":
        threshold = threshold_between(scored, data.draw(st.integers(0, max(0, len(scored) - 1)), label="k"))
    use_async = data.draw(st.booleans(), label="async")
    adapter = driver.build(reranker, top_n=top_n, score_threshold=threshold)
    got = asyncio.run(driver.arun(adapter, docs)) if use_async else driver.run(adapter, docs)
    want = [o for o in full if driver.out_score(o) is None or threshold is None or driver.out_score(o) >= threshold]
    want = want if top_n is None else want[:top_n]
    assert [driver.probe(o) for o in got] == [driver.probe(o) for o in want], (
        f"{driver.name}: top_n={top_n} threshold={threshold}: trimmed differently from the full ranking")
    for g, w in zip(got, want, strict=True):
        gs, ws = driver.out_score(g), driver.out_score(w)
        assert (gs is None) == (ws is None) and (gs is None or abs(gs - ws) < 1e-5)

    if any(specs[driver.probe(d)].kind in driver.failing for d in docs):
        try:
            driver.run(driver.build(reranker, top_n=top_n, score_threshold=threshold, on_error="raise"), docs)
        except mmrank.InputError as exc:
            failing_ids = {driver.in_id(d) for d in docs if specs[driver.probe(d)].kind in driver.failing}
            message = str(exc)
            assert any(i is not None and i in message for i in failing_ids) or "document " in message, message
        else:
            raise AssertionError(f"{driver.name}: on_error='raise' did not raise for an unreadable document")

    assert [driver.snapshot(d) for d in docs] == before, f"{driver.name}: the caller's documents were mutated"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def big_metadata() -> dict[str, Any]:
    """Metadata a hostile retriever might attach: many keys, one large value, nested structures."""
    meta: dict[str, Any] = {f"k{i}": i for i in range(200)}
    meta["large"] = "x" * 200_000
    meta["nested"] = {"list": list(range(50)), "deep": {"a": [{"b": None}]}}
    return meta
