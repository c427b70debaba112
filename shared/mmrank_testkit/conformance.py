"""The conformance suite every framework adapter runs.

An adapter's tests subclass :class:`AdapterConformance` and provide a ``driver`` fixture: an
:class:`AdapterDriver` that knows how to build the adapter around a given :class:`mmrank.Reranker`, how to
make the framework's own text and image documents, how to call it (sync and async) and how to read ids,
scores, errors and retrieval scores back from its output. The suite then checks, on the real mmrank
pointwise path with the tiny offline model:

- every document comes back exactly once (only ``top_n`` trims), best first, with the core's scores;
- the ranking does not depend on the input order;
- ``top_n`` returns the prefix of the full ranking; ``score_threshold`` keeps exactly the documents at or
  above it;
- text, image (file and bytes) and text+image documents mix in one call and score as the core scores them;
- unreadable images (broken bytes, a missing file) are ranked last with ``score=None`` and the error in
  metadata under ``on_error="last"`` and raise an error naming the document under ``on_error="raise"``;
- async results equal sync results, and async does not block the event loop;
- the caller's documents are not mutated; the retriever's score is kept on request.

Usage (in ``packages/<adapter>/tests/test_<adapter>_conformance.py``)::

    from mmrank_testkit.conformance import AdapterConformance, AdapterDriver

    class MyDriver(AdapterDriver): ...

    class TestMyAdapterConformance(AdapterConformance):
        @pytest.fixture
        def driver(self):
            return MyDriver()
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import mmrank
import pytest

from .models import tiny_model_dir
from .samples import sample_image_bytes, write_sample_images

#: Text documents of clearly different lengths and content (distinct scores on the tiny model).
TEXTS = [
    "Paris is the capital of France.",
    "Berlin is the capital and largest city of Germany, on the river Spree.",
    "Bananas are yellow.",
    "The mitochondria is the powerhouse of the cell; it makes ATP from glucose and oxygen.",
    "A haiku has three lines of five, seven and five syllables.",
    "Rust guarantees memory safety without a garbage collector by tracking ownership and borrowing.",
    "Tea.",
    "Mount Everest, 8,849 metres, is the highest mountain above sea level; it lies in the Himalayas.",
]
QUERY = "Which city is the capital of Germany?"
BROKEN_IMAGE = b"\x89PNG\r\n\x1a\n this is not really a PNG image"
SCORE_TOL = 1e-5


@functools.lru_cache(maxsize=1)
def shared_tiny_reranker() -> mmrank.Reranker:
    """One tiny jina-reranker-m0 (random weights, CPU) per test process, shared by every adapter's tests."""
    from mmrank import JinaRerankerM0

    return JinaRerankerM0(tiny_model_dir("jina"), device="cpu", dtype="float32")


class AdapterDriver(ABC):
    """Teaches the suite one framework. Documents passed to ``build``'s adapter are framework objects."""

    #: Shown in assertion messages.
    name: str = "adapter"
    #: Whether the framework can carry an image query (then implement :meth:`rank_image_query`).

    @abstractmethod
    def build(self, reranker: mmrank.Reranker, *, top_n: int | None = None, score_threshold: float | None = None,
              on_error: str = "last", keep_retrieval_score: bool = False) -> Any:
        """The adapter around ``reranker``; ``top_n=None`` means return every document."""

    @abstractmethod
    def text_doc(self, text: str, doc_id: str, retrieval_score: float | None = None) -> Any:
        """A framework text document with this id (and retriever score, where it has one)."""

    @abstractmethod
    def image_doc(self, doc_id: str, *, path: Path | None = None, data: bytes | None = None,
                  text: str | None = None, retrieval_score: float | None = None) -> Any:
        """A framework image document: the image is the file ``path`` or the encoded bytes ``data``; with
        ``text`` it is a text+image document."""

    @abstractmethod
    def rank(self, adapter: Any, query: str, docs: list[Any]) -> list[Any]:
        """Run the adapter synchronously; return its output documents."""

    @abstractmethod
    async def arank(self, adapter: Any, query: str, docs: list[Any]) -> list[Any]:
        """Run the adapter through the framework's async entry point."""

    def rank_image_query(self, adapter: Any, image: Path, docs: list[Any]) -> list[Any]:
        raise NotImplementedError

    @abstractmethod
    def out_id(self, doc: Any) -> str: ...

    @abstractmethod
    def out_score(self, doc: Any) -> float | None: ...

    @abstractmethod
    def out_error(self, doc: Any) -> str | None:
        """The error recorded in the output document's metadata, or None."""

    @abstractmethod
    def out_retrieval_score(self, doc: Any) -> float | None: ...

    @abstractmethod
    def snapshot(self, doc: Any) -> Any:
        """A deep, comparable picture of an input document (to prove it was not mutated)."""


class _LoopProbe(mmrank.Reranker):
    """Wraps a real scorer; scoring waits until the event loop has run a callback. If the adapter's async
    path blocked the loop, that callback could never run and the wait times out."""

    def __init__(self, inner: mmrank.Reranker, timeout: float = 10.0):
        super().__init__()
        self.inner = inner
        self.model_name = inner.model_name
        self.released = threading.Event()
        self.timeout = timeout

    def _rank_documents(self, query, documents):
        if not self.released.wait(self.timeout):
            raise AssertionError("the event loop was blocked while the adapter was ranking (async path is not async)")
        return self.inner.rank_documents(query, documents)


class AdapterConformance:
    """Mixin of conformance tests; subclasses provide a ``driver`` fixture."""

    @pytest.fixture
    def reranker(self) -> mmrank.Reranker:
        return shared_tiny_reranker()

    @pytest.fixture
    def images(self, tmp_path) -> list[Path]:
        return write_sample_images(tmp_path / "imgs", n=3)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _text_docs(driver: AdapterDriver, n: int = len(TEXTS)) -> list[Any]:
        return [driver.text_doc(t, f"t{i}", retrieval_score=round(0.9 - i * 0.1, 3)) for i, t in enumerate(TEXTS[:n])]

    @staticmethod
    def _core_scores(reranker: mmrank.Reranker, query: Any, docs: list[mmrank.Document]) -> dict[str, float]:
        return {d.id: s for d, s in zip(docs, reranker.score(query, docs), strict=True)}  # type: ignore[misc]

    def _text_core(self, reranker) -> dict[str, float]:
        return self._core_scores(reranker, QUERY, [mmrank.Document(text=t, id=f"t{i}") for i, t in enumerate(TEXTS)])

    @staticmethod
    def _ids(driver, out) -> list[str]:
        return [driver.out_id(d) for d in out]

    def _assert_ranked(self, driver, out, expected: dict[str, float]) -> None:
        ids = self._ids(driver, out)
        assert len(ids) == len(set(ids)), f"{driver.name}: duplicated documents {ids}"
        scores = [driver.out_score(d) for d in out]
        assert all(s is not None for s in scores), f"{driver.name}: missing scores {scores}"
        assert scores == sorted(scores, reverse=True), f"{driver.name}: not best first: {scores}"
        for i, s in zip(ids, scores, strict=True):
            assert s == pytest.approx(expected[i], abs=SCORE_TOL), f"{driver.name}: {i} scored {s}, core {expected[i]}"

    # ------------------------------------------------------------------ tests
    def test_every_document_once_best_first_with_core_scores(self, driver, reranker):
        out = driver.rank(driver.build(reranker), QUERY, self._text_docs(driver))
        expected = self._text_core(reranker)
        assert sorted(self._ids(driver, out)) == sorted(expected), f"{driver.name}: lost or added documents"
        self._assert_ranked(driver, out, expected)

    def test_ranking_does_not_depend_on_input_order(self, driver, reranker):
        adapter = driver.build(reranker)
        docs = self._text_docs(driver)
        base = self._ids(driver, driver.rank(adapter, QUERY, docs))
        expected = self._text_core(reranker)
        rng = random.Random(1234)
        for _ in range(3):
            shuffled = docs[:]
            rng.shuffle(shuffled)
            out = driver.rank(adapter, QUERY, shuffled)
            self._assert_ranked(driver, out, expected)
            ids = self._ids(driver, out)
            # Same order, except between documents whose scores tie within float rounding.
            for a in range(len(ids)):
                for b in range(a + 1, len(ids)):
                    if abs(expected[ids[a]] - expected[ids[b]]) > 1e-4:
                        assert base.index(ids[a]) < base.index(ids[b]), f"{driver.name}: order depends on input"

    def test_top_n_is_the_prefix_of_the_full_ranking(self, driver, reranker):
        docs = self._text_docs(driver)
        full = self._ids(driver, driver.rank(driver.build(reranker), QUERY, docs))
        for n in (1, 3, len(docs), len(docs) + 5):
            out = driver.rank(driver.build(reranker, top_n=n), QUERY, docs)
            assert self._ids(driver, out) == full[: min(n, len(docs))], f"{driver.name}: top_n={n}"

    def test_score_threshold_keeps_exactly_the_documents_at_or_above(self, driver, reranker):
        docs = self._text_docs(driver)
        expected = self._text_core(reranker)
        ranked = sorted(expected, key=lambda i: -expected[i])
        cut = (expected[ranked[3]] + expected[ranked[4]]) / 2  # between the 4th and 5th best
        out = driver.rank(driver.build(reranker, score_threshold=cut), QUERY, docs)
        assert self._ids(driver, out) == ranked[:4], f"{driver.name}: threshold {cut}"
        out = driver.rank(driver.build(reranker, score_threshold=cut, top_n=2), QUERY, docs)
        assert self._ids(driver, out) == ranked[:2], f"{driver.name}: threshold then top_n"
        out = driver.rank(driver.build(reranker, score_threshold=2.0), QUERY, docs)
        assert out == [] or list(out) == [], f"{driver.name}: threshold above every score must return nothing"

    def test_mixed_text_and_image_documents(self, driver, reranker, images):
        png = sample_image_bytes(7)
        docs = [
            driver.text_doc(TEXTS[0], "text-a"),
            driver.image_doc("img-path", path=images[0]),
            driver.text_doc(TEXTS[1], "text-b"),
            driver.image_doc("img-bytes", data=png),
            driver.image_doc("img-text", path=images[1], text="A colourful gradient with a circle."),
        ]
        core_docs = [
            mmrank.Document(text=TEXTS[0], id="text-a"),
            mmrank.Document(image=images[0], id="img-path"),
            mmrank.Document(text=TEXTS[1], id="text-b"),
            mmrank.Document(image=png, id="img-bytes"),
            mmrank.Document(image=images[1], text="A colourful gradient with a circle.", id="img-text"),
        ]
        expected = self._core_scores(reranker, QUERY, core_docs)
        out = driver.rank(driver.build(reranker), QUERY, docs)
        assert sorted(self._ids(driver, out)) == sorted(expected)
        self._assert_ranked(driver, out, expected)
        assert all(driver.out_error(d) is None for d in out)

    def _bad_docs(self, driver, tmp_path) -> list[Any]:
        return [
            driver.text_doc(TEXTS[0], "t0"),
            driver.image_doc("broken-bytes", data=BROKEN_IMAGE),
            driver.text_doc(TEXTS[1], "t1"),
            driver.image_doc("missing-file", path=tmp_path / "no-such-image.png"),
            driver.text_doc(TEXTS[2], "t2"),
        ]

    def test_unreadable_images_are_kept_last_with_the_error(self, driver, reranker, tmp_path):
        out = driver.rank(driver.build(reranker, on_error="last"), QUERY, self._bad_docs(driver, tmp_path))
        ids = self._ids(driver, out)
        assert len(ids) == 5 and set(ids) == {"t0", "t1", "t2", "broken-bytes", "missing-file"}
        assert set(ids[3:]) == {"broken-bytes", "missing-file"}, f"{driver.name}: failed documents not last: {ids}"
        self._assert_ranked(driver, out[:3], self._text_core(reranker))
        for d in out[3:]:
            assert driver.out_score(d) is None
            err = driver.out_error(d)
            assert err and driver.out_id(d) in err, f"{driver.name}: error must name the document: {err!r}"

    def test_unreadable_images_raise_under_raise_policy(self, driver, reranker, tmp_path):
        adapter = driver.build(reranker, on_error="raise")
        with pytest.raises(mmrank.ImageLoadError) as info:
            driver.rank(adapter, QUERY, self._bad_docs(driver, tmp_path))
        assert "broken-bytes" in str(info.value) or "missing-file" in str(info.value)

    def test_failed_documents_survive_a_threshold(self, driver, reranker, tmp_path):
        out = driver.rank(driver.build(reranker, score_threshold=2.0), QUERY, self._bad_docs(driver, tmp_path))
        assert set(self._ids(driver, out)) == {"broken-bytes", "missing-file"}
        # The threshold applies before top_n: top_n must not first keep only scored documents.
        out = driver.rank(driver.build(reranker, score_threshold=2.0, top_n=3), QUERY, self._bad_docs(driver, tmp_path))
        assert set(self._ids(driver, out)) == {"broken-bytes", "missing-file"}

    async def test_async_equals_sync(self, driver, reranker, images):
        docs = self._text_docs(driver, 5) + [driver.image_doc("img", path=images[2])]
        adapter = driver.build(reranker, top_n=4, keep_retrieval_score=True)
        sync = driver.rank(adapter, QUERY, docs)
        asyn = await driver.arank(adapter, QUERY, docs)
        assert self._ids(driver, asyn) == self._ids(driver, sync)
        for a, s in zip(asyn, sync, strict=True):
            assert driver.out_score(a) == pytest.approx(driver.out_score(s), abs=SCORE_TOL)
            assert driver.out_retrieval_score(a) == driver.out_retrieval_score(s)

    async def test_async_does_not_block_the_event_loop(self, driver, reranker):
        probe = _LoopProbe(reranker)
        adapter = driver.build(probe)

        async def release():
            await asyncio.sleep(0.01)
            probe.released.set()

        out, _ = await asyncio.gather(driver.arank(adapter, QUERY, self._text_docs(driver, 4)), release())
        assert len(out) == 4

    def test_input_documents_are_not_mutated(self, driver, reranker, tmp_path):
        docs = self._text_docs(driver, 4) + self._bad_docs(driver, tmp_path)[1:2]
        before = [driver.snapshot(d) for d in docs]
        driver.rank(driver.build(reranker, keep_retrieval_score=True, top_n=2), QUERY, docs)
        driver.rank(driver.build(reranker, keep_retrieval_score=True), QUERY, docs)
        assert [driver.snapshot(d) for d in docs] == before

    def test_keep_retrieval_score(self, driver, reranker):
        docs = self._text_docs(driver, 4)
        given = {f"t{i}": round(0.9 - i * 0.1, 3) for i in range(4)}
        out = driver.rank(driver.build(reranker, keep_retrieval_score=True), QUERY, docs)
        assert {driver.out_id(d): driver.out_retrieval_score(d) for d in out} == given
        out = driver.rank(driver.build(reranker), QUERY, docs)
        assert all(driver.out_retrieval_score(d) is None for d in out)

    def test_identical_documents_are_not_merged(self, driver, reranker):
        docs = [driver.text_doc(TEXTS[0], "a"), driver.text_doc(TEXTS[0], "b"), driver.text_doc(TEXTS[2], "c")]
        out = driver.rank(driver.build(reranker), QUERY, docs)
        assert sorted(self._ids(driver, out)) == ["a", "b", "c"]

    def test_empty_input(self, driver, reranker):
        assert list(driver.rank(driver.build(reranker), QUERY, [])) == []


class ImageQueryConformance:
    """Extra checks for adapters whose framework can carry an image query: mix it into the test class next to
    :class:`AdapterConformance` (whose helpers it uses); the driver implements ``rank_image_query``.
    Adapters whose framework has no way to carry an image query (LangChain) do not mix it in."""

    def test_image_query(self, driver, reranker, images):
        docs = [driver.image_doc(f"i{k}", path=p) for k, p in enumerate(images)] + [driver.text_doc(TEXTS[0], "t0")]
        core = [mmrank.Document(image=p, id=f"i{k}") for k, p in enumerate(images)] + [
            mmrank.Document(text=TEXTS[0], id="t0")]
        expected = self._core_scores(reranker, mmrank.Query(image=images[0]), core)
        out = driver.rank_image_query(driver.build(reranker), images[0], docs)
        assert sorted(self._ids(driver, out)) == sorted(expected)
        self._assert_ranked(driver, out, expected)
