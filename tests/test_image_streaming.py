"""Images stream into the pointwise scorer's prefetch pipeline (issue 15, host side).

``prepare`` reads each image only as far as its final size (header, format, policy caps); the producer of
each batch decodes that batch's images; a late decode failure becomes that document's error in ``finish``.
These tests hold the three promises that makes: the header's size is the decoded size (whatever the format
and wherever the orientation is stored), nothing is decoded before the first batch needs it, and a failure
found late loses only its own document.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmrank import Document, ImagePolicy, JinaRerankerM0
from mmrank.errors import ImageLoadError
from mmrank.inputs.images import PendingImage, load_image, open_image
from mmrank_testkit import sample_image
from PIL import Image

ORIENTATION = 0x0112


# ---------------------------------------------------------------------------------------------- builders
def _png_chunks(data: bytes) -> list[bytes]:
    pos, out = 8, []
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        out.append(data[pos:pos + 12 + length])
        pos += 12 + length
    return out


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _move_after_pixels(data: bytes, kinds: set[bytes]) -> bytes:
    """The same PNG with its chunks of ``kinds`` moved after the pixel data (before IEND)."""
    chunks = _png_chunks(data)
    moved = [c for c in chunks if c[4:8] in kinds]
    assert moved, "nothing to move"
    rest = [c for c in chunks if c[4:8] not in kinds]
    return data[:8] + b"".join(rest[:-1] + moved + rest[-1:])


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


def _xmp(orientation: int) -> bytes:
    return (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="'
            + str(orientation).encode() + b'"/></rdf:RDF></x:xmpmeta>')


def encoded(fmt: str, orientation: int, where: str, size=(60, 34), seed: int = 0) -> bytes:
    """An image of ``size`` whose orientation tag says ``orientation``, stored ``where``: "exif" (the format's
    EXIF block), "xmp", "exif-late" / "xmp-late" / "raw-late" (PNG: after the pixel data)."""
    img = sample_image(seed, size)
    buf = io.BytesIO()
    if where == "none":
        img.save(buf, format=fmt)
    elif where in ("exif", "exif-late"):
        img.save(buf, format=fmt, exif=_exif(orientation))
    elif where in ("xmp", "xmp-late"):
        if fmt == "PNG":
            from PIL.PngImagePlugin import PngInfo
            info = PngInfo()
            info.add_itxt("XML:com.adobe.xmp", _xmp(orientation).decode())
            img.save(buf, format=fmt, pnginfo=info)
        else:
            img.save(buf, format=fmt, xmp=_xmp(orientation))
    elif where == "raw-late":
        img.save(buf, format=fmt)
        raw = _exif(orientation).tobytes()
        body = b"Raw profile type exif\x00" + f"\nexif\n{len(raw):8}\n{raw.hex()}\n".encode()
        chunks = _png_chunks(buf.getvalue())
        return buf.getvalue()[:8] + b"".join(chunks[:-1]) + _chunk(b"tEXt", body) + chunks[-1]
    data = buf.getvalue()
    if where.endswith("-late") and where != "raw-late":
        data = _move_after_pixels(data, {b"eXIf", b"iTXt"})
    return data


CASES = ([(fmt, "exif") for fmt in ("JPEG", "PNG", "WEBP", "TIFF")]
         + [("JPEG", "xmp"), ("PNG", "xmp"), ("WEBP", "xmp")]
         + [("PNG", "exif-late"), ("PNG", "xmp-late"), ("PNG", "raw-late")]
         + [(fmt, "none") for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")])


# ------------------------------------------------------------------------------- header size == decoded
@pytest.mark.parametrize("fmt,where", CASES)
@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_size_read_from_the_header_is_the_decoded_size(fmt, where, orientation):
    data = encoded(fmt, orientation, where)
    full = load_image(data)
    if where != "none" and fmt != "TIFF":  # the case is what it claims: the tag is honoured by the decoder
        assert full.size == ((34, 60) if orientation >= 5 else (60, 34)), (fmt, where, orientation)
    got = open_image(data)
    assert got.size == full.size
    doc = Document(image=data)
    assert doc.image_size() == full.size
    if isinstance(got, PendingImage):
        pixels = got.decode()
        assert pixels.size == full.size and pixels.mode == full.mode
        assert np.array_equal(np.asarray(pixels), np.asarray(full))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_common_formats_are_not_decoded_to_read_their_size(fmt):
    for data in (encoded(fmt, 6, "exif"), encoded(fmt, 1, "none")):
        got = open_image(data)
        assert isinstance(got, PendingImage) and got.decoded is None and got.data == data


@pytest.mark.parametrize("where", ["exif-late", "xmp-late", "raw-late"])
def test_a_png_orientation_after_the_pixels_is_found_by_decoding_at_once(where):
    got = open_image(encoded("PNG", 6, where))
    assert isinstance(got, PendingImage) and got.decoded is not None and got.size == got.decoded.size == (34, 60)


def test_a_callers_pil_image_is_returned_as_it_is():
    img = sample_image(1, (40, 30)).convert("P")
    got = open_image(img)
    assert isinstance(got, Image.Image) and got.mode == "P" and got.size == (40, 30)


def _corrupt_png(size=(300, 200), seed=3) -> bytes:
    """A well-formed PNG (chunks, CRCs, header) whose compressed pixel data is garbage from a third in:
    readable size, undecodable pixels."""
    buf = io.BytesIO()
    sample_image(seed, size).save(buf, format="PNG")
    out = []
    for c in _png_chunks(buf.getvalue()):
        kind, body = c[4:8], c[8:-4]
        if kind == b"IDAT":
            body = body[: len(body) // 3] + bytes((b * 7 + 13) % 256 for b in body[len(body) // 3:])
        out.append(_chunk(kind, body))
    return buf.getvalue()[:8] + b"".join(out)


def test_a_cut_png_is_found_from_its_chunk_walk_without_waiting_for_the_decoder():
    buf = io.BytesIO()
    sample_image(1, (300, 200)).save(buf, format="PNG")
    data = buf.getvalue()
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        Document(image=data[: len(data) // 2]).image_size()


def test_pixels_that_do_not_decode_fail_at_load_not_at_size():
    doc = Document(image=_corrupt_png(), id="cut")
    assert doc.image_size() == (300, 200)
    assert doc.image_error is None
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        doc.load_image()
    assert isinstance(doc.image_error, ImageLoadError)
    with pytest.raises(ImageLoadError):  # the failure is kept, not retried
        doc.image_size()


def test_header_checks_still_refuse_before_any_decoding():
    data = encoded("PNG", 1, "none", size=(400, 300))
    with pytest.raises(ImageLoadError, match="megapixels"):
        open_image(data, ImagePolicy(max_pixels=100_000))
    with pytest.raises(ImageLoadError, match="max_bytes"):
        open_image(data, ImagePolicy(max_bytes=100))
    with pytest.raises(ImageLoadError, match="not an image format"):
        open_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=0, max_size=64), st.integers(0, 2000), st.sampled_from(CASES))
def test_mutated_headers_size_or_fail_and_a_size_always_decodes_to_itself(junk, at, case):
    """Hostile bytes: open_image either refuses, or promises a size that decoding keeps or refuses — it never
    raises anything but ImageLoadError and never hands back pixels of another size."""
    fmt, where = case
    data = bytearray(encoded(fmt, 6, where))
    at = at % (len(data) + 1)
    data[at:at + len(junk)] = junk
    try:
        got = open_image(bytes(data))
    except ImageLoadError:
        return
    if isinstance(got, PendingImage):
        try:
            pixels = got.decode()
        except ImageLoadError:
            return
        assert pixels.size == got.size


# ------------------------------------------------------------------------------------ the scorer's pipeline
def _png(seed: int, size=(84, 84)) -> bytes:
    buf = io.BytesIO()
    sample_image(seed, size).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def decodes(monkeypatch):
    """Every pixel decode of a pending image, in order: (thread name, source size)."""
    seen: list[tuple[str, tuple[int, int]]] = []
    orig = PendingImage.decode

    def spy(self):
        seen.append((threading.current_thread().name, self.size))
        return orig(self)

    monkeypatch.setattr(PendingImage, "decode", spy)
    return seen


def test_prepare_decodes_nothing_and_the_first_batch_waits_only_for_its_own_images(jina_dir, decodes):
    r = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=1, feature_cache_bytes=0)
    events: list[str] = []
    orig = r._forward_prepared
    r._forward_prepared = lambda prep: events.append(f"forward after {len(decodes)} decodes") or orig(prep)
    docs = [Document(image=_png(i)) for i in range(10)]
    call = r.prepare("q", docs)
    assert decodes == [] and call.failed == []
    ranking = r.score_documents(call.query, call.readable_documents)
    assert len(decodes) == 10 and all(name != threading.main_thread().name for name, _ in decodes)
    first = int(events[0].split()[2])
    # batches of one; the producer runs at most the queue's depth (2) + the batch it is preparing ahead
    assert first <= 4, events
    assert len(ranking) == 10 and not any(np.isnan(ranking))


def test_streamed_scores_equal_the_eager_path_and_the_reference_order(jina_dir, decodes):
    r = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=3, feature_cache_bytes=0)
    data = [_png(i, (84 + 14 * (i % 3), 84)) for i in range(7)] + [encoded("JPEG", 6, "exif", (70, 112))]
    texts = ["a", None, "caption", None, None, "b", None, "rotated"]
    streamed = r.score("q", [Document(text=t, image=d) for t, d in zip(texts, data, strict=True)])
    assert len(decodes) == 8
    eager = r.score("q", [Document(text=t, image=d) for t, d in zip(texts, data, strict=True)], on_error="raise")
    pil = r.score("q", [Document(text=t, image=load_image(d)) for t, d in zip(texts, data, strict=True)])
    np.testing.assert_allclose(streamed, eager, atol=1e-6, rtol=0)
    np.testing.assert_allclose(streamed, pil, atol=1e-6, rtol=0)


def test_an_image_that_fails_to_decode_late_is_its_documents_error_and_the_rest_is_scored(jina_dir):
    r = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=2, feature_cache_bytes=0)
    good = [_png(i) for i in range(5)]
    docs = [Document(image=good[0], id="a"), Document(image=_corrupt_png(), id="cut"),
            Document(image=good[1], id="b"), Document(text="plain text", id="t"),
            Document(image=b"not an image", id="junk"), Document(image=good[2], id="c")]
    out = r.rank("q", docs)
    assert sorted(x.index for x in out) == list(range(6))
    assert [x.id for x in out[-2:]] == ["cut", "junk"]  # unreadable: last, in input order
    cut = out[-2]
    assert cut.score is None and "document 1" in cut.error and "id='cut'" in cut.error \
        and "truncated" in cut.error
    assert out[-1].score is None and "document 4" in out[-1].error
    alone = r.score("q", [Document(image=good[0]), Document(image=good[1]), Document(text="plain text"),
                          Document(image=good[2])])
    got = {x.id: x.score for x in out[:4]}
    np.testing.assert_allclose([got["a"], got["b"], got["t"], got["c"]], alone, atol=1e-6, rtol=0)
    # score(): None in input order, for the late failure as for the early one
    scores = r.score("q", [Document(image=good[3]), Document(image=_corrupt_png(seed=4))])
    assert scores[0] is not None and scores[1] is None


def test_a_batch_of_only_undecodable_images_is_skipped(jina_dir):
    r = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=2, feature_cache_bytes=0)
    docs = [Document(image=_corrupt_png(seed=s)) for s in range(4)] + [Document(text="t")]
    call = r.prepare("q", docs)
    scores = r.score_documents(call.query, call.readable_documents)
    assert [np.isnan(s) for s in scores] == [True] * 4 + [False]
    out = r.finish(call, r.rank_documents(call.query, call.readable_documents))
    assert [x.index for x in out] == [4, 0, 1, 2, 3] and all(x.error for x in out[1:])


def test_on_error_raise_still_decodes_every_image_before_any_model_work(jina_dir):
    r = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=2)
    ran = []
    orig = r._forward_prepared
    r._forward_prepared = lambda prep: ran.append(1) or orig(prep)
    with pytest.raises(ImageLoadError, match=r"document 2 \(id='cut'\).*truncated"):
        r.rank("q", [Document(image=_png(0)), Document(text="x"), Document(image=_corrupt_png(), id="cut")],
               on_error="raise")
    assert ran == []


def test_pixels_are_released_after_their_batch_and_a_warm_cache_needs_no_decode(jina_dir, decodes):
    r = JinaRerankerM0(jina_dir, device="cpu", dtype="float32", batch_size=2)
    docs = [Document(image=_png(i)) for i in range(6)]
    first = r.score("q", docs)
    assert len(decodes) == 6
    assert all(d._lazy._image is None for d in docs)  # released: the call held a few batches, not all
    again = r.score("another query", docs)  # same documents: features cached, found by their bytes
    assert len(decodes) == 6
    fresh = r.score("a third query", [Document(image=_png(i)) for i in range(6)])  # new objects, same bytes
    assert len(decodes) == 6  # a page whose features are cached is never decoded
    assert r.feature_cache.stats().hits >= 12
    assert docs[0].load_image().size == (84, 84)  # still readable for the caller (decoded again)
    assert len(decodes) == 7
    assert len(first) == len(again) == len(fresh) == 6
    # a caller's PIL image is keyed by its pixels, checked each call: changed in place, it is encoded anew
    img = sample_image(7, (84, 84))
    before = r.score("q", [Document(image=img)])[0]
    img.paste((255, 0, 0), (0, 0, 84, 84))
    assert r.score("q", [Document(image=img)])[0] != before


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["ok", "cut", "junk", "text", "big"]), min_size=1, max_size=7),
       st.integers(1, 3), st.booleans())
def test_any_mix_of_good_and_bad_images_keeps_every_document_once(jina_reranker, kinds, batch_size, prefetch):
    r = jina_reranker
    r.batch_size, r.prefetch = batch_size, prefetch
    make = {"ok": lambda i: Document(image=_png(i)), "cut": lambda i: Document(image=_corrupt_png(seed=i)),
            "junk": lambda i: Document(image=b"\x89PNG junk"), "text": lambda i: Document(text=f"text {i}"),
            "big": lambda i: Document(image=_png(i, (196, 56)))}
    try:
        out = r.rank("q", [make[k](i) for i, k in enumerate(kinds)], top_n=None)
    finally:
        r.batch_size, r.prefetch = 8, True
    assert sorted(x.index for x in out) == list(range(len(kinds)))
    for x in out:
        assert (x.score is None) == (kinds[x.index] in ("cut", "junk")), (kinds, x)
        assert (x.error is not None) == (x.score is None)
    scored = [x.score for x in out if x.score is not None]
    assert scored == sorted(scored, reverse=True)


def test_the_server_reports_a_late_decode_failure_per_document(jina_reranker):
    import base64

    from mmrank.server.app import create_app
    from starlette.testclient import TestClient

    app = create_app(jina_reranker)
    with TestClient(app) as client:
        body = {"query": "q", "documents": [{"image": base64.b64encode(_png(1)).decode()},
                                            {"image": base64.b64encode(_corrupt_png()).decode()},
                                            "some text"], "on_error": "last"}
        resp = client.post("/v1/rerank", json=body)
        strict = client.post("/v1/rerank", json={**body, "on_error": "raise"})
        metrics = client.get("/metrics").text
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert sorted(x["index"] for x in results) == [0, 1, 2]
    bad = [x for x in results if x["index"] == 1][0]
    assert bad["relevance_score"] is None and "truncated" in bad["error"]
    # a request that asks for "raise" is answered before any model work, naming the document
    assert strict.status_code == 422 and "document 1" in strict.text and "truncated" in strict.text
    errors = [line for line in metrics.splitlines() if line.startswith("mmrank_document_errors_total")]
    assert errors and float(errors[0].split()[-1]) == 2.0, errors  # the late one counted, and the strict one
