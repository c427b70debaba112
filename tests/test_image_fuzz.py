"""Class 1 of issue 11: any failure to read one document's image is that document's error, on every path.

A fuzzer mutates valid files of every format Pillow both opens and saves on this machine (bit flips,
truncation, insertion, chunk duplication) and checks the loader's contract: a mutated file either decodes to
an image or raises :class:`ImageLoadError` — never another exception type. Then rankings with mutated
documents (pointwise, and the remote wire encoding) keep every other document.
"""

from __future__ import annotations

import http.server
import io
import threading
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmrank import Document, ImageLoadError, ImagePolicy, load_image
from mmrank.inputs.images import decode_image_bytes
from mmrank_testkit import sample_image
from PIL import Image, features

FUZZ_POLICY = ImagePolicy(max_pixels=2_000_000, max_bytes=4 * 1024 * 1024)
TRIED: dict[str, int] = {}


def _save(fmt: str) -> bytes | None:
    """A small valid file in ``fmt``, or None where this Pillow cannot write one that it reads back."""
    base = sample_image(3, size=(40, 32))
    for mode in ("RGB", "L", "1", "RGBA", "P"):
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                base.convert(mode).save(buf, format=fmt)
                data = buf.getvalue()
                Image.open(io.BytesIO(data)).load()
        except Exception:  # noqa: BLE001 - this mode/format pair is not writable here
            continue
        return data
    return None


def _formats() -> dict[str, bytes]:
    Image.init()
    out = {}
    for fmt in sorted(set(Image.SAVE) & set(Image.OPEN)):
        data = _save(fmt)
        if data:
            out[fmt] = data
    return out


VALID = _formats()
FORMATS = sorted(VALID)


def test_the_fuzzer_covers_the_common_formats():
    # The formats a web page or a scan comes in must be among those fuzzed (those this Pillow can write).
    expected = {"PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"} & {f for f in FORMATS}
    assert {"PNG", "JPEG", "GIF", "BMP", "TIFF"} <= expected
    if features.check("avif"):
        assert "AVIF" in FORMATS
    assert len(FORMATS) >= 10, FORMATS


@st.composite
def mutated(draw, fmt: str | None = None) -> tuple[str, bytes]:
    fmt = fmt or draw(st.sampled_from(FORMATS))
    data = bytearray(VALID[fmt])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "duplicate", "zero"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif kind == "duplicate":
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 64))]
        else:
            data[pos:pos + 4] = b"\xff\xff\xff\x7f"  # a huge length / size field
    return fmt, bytes(data)


def _check_contract(data: bytes) -> bool:
    try:
        img = load_image(data, FUZZ_POLICY)
    except ImageLoadError as exc:
        assert str(exc)
        return False
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    assert img.size[0] * img.size[1] <= FUZZ_POLICY.max_pixels
    return True


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=20, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_files_decode_or_raise_image_load_error(fmt, data):
    _, mutant = data.draw(mutated(fmt))
    TRIED[fmt] = TRIED.get(fmt, 0) + 1
    _check_contract(mutant)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_truncation_point_of_each_format(fmt):
    """Exhaustive over cut points (every byte for small files, a stride for big ones)."""
    data = VALID[fmt]
    step = max(1, len(data) // (150 if len(data) < 10_000 else 40))
    for cut in range(0, len(data), step):
        _check_contract(data[:cut])


def test_decoder_exceptions_of_any_type_become_image_load_error(monkeypatch):
    """A decoder raising outside OSError/ValueError (a corrupted AVIF raises RuntimeError) is still the
    image's error, from bytes, from a lazily opened PIL image and inside the mode conversion."""
    good = io.BytesIO()
    sample_image(1).convert("P").save(good, format="PNG")  # a palette image: convert() runs
    for exc in (RuntimeError("avif: decode failed"), EOFError(), MemoryError(), KeyError("x"), IndexError(),
                AssertionError("decoder"), TypeError("bad")):
        def boom(self, *a, exc=exc, **k):
            raise exc

        with monkeypatch.context() as m:
            m.setattr(Image.Image, "load", boom)
            with pytest.raises(ImageLoadError, match=type(exc).__name__):
                decode_image_bytes(good.getvalue())
        with monkeypatch.context() as m:
            m.setattr(Image.Image, "convert", boom)
            with pytest.raises(ImageLoadError, match=type(exc).__name__):
                load_image(good.getvalue())


def _ranking_keeps_the_others(reranker, bad: bytes, query="a red circle"):
    docs = [Document(text="first text", id="t0"), Document(image=bad, id="bad"),
            Document(image=sample_image(5), id="img"), Document(text="last text", id="t3")]
    out = reranker.rank(query, docs)
    assert sorted(r.index for r in out) == [0, 1, 2, 3]
    by_id = {r.id: r for r in out}
    for i in ("t0", "img", "t3"):
        assert by_id[i].score is not None and by_id[i].error is None
    if by_id["bad"].score is None:
        assert "document 1" in by_id["bad"].error and "id='bad'" in by_id["bad"].error
        assert out[-1].id == "bad"


@pytest.fixture(scope="module")
def fuzz_reranker(jina_reranker):
    before = jina_reranker.image_policy
    jina_reranker.image_policy = FUZZ_POLICY
    yield jina_reranker
    jina_reranker.image_policy = before


@settings(max_examples=8, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(mutated())
def test_pointwise_ranking_with_a_mutated_document_keeps_every_other(fuzz_reranker, case):
    _ranking_keeps_the_others(fuzz_reranker, case[1])


def test_a_broken_image_query_is_an_input_error_not_a_crash(fuzz_reranker):
    from mmrank import InputError

    for bad in (VALID["PNG"][:40], VALID["PNG"][:100], VALID["JPEG"][:300]):
        with pytest.raises(InputError, match="not an image format|corrupt or truncated"):
            fuzz_reranker.rank(bad, ["a", "b"])


@settings(max_examples=60, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_remote_wire_encoding_raises_only_image_load_error(case):
    from mmrank.scorers.remote import encode_image

    try:
        encode_image(case[1], FUZZ_POLICY)
    except ImageLoadError:
        pass


# ------------------------------------------------------------------ URLs: redirects anywhere, bad answers
class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def do_GET(self):  # noqa: N802
        status, headers, body = self.routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


LOCATIONS = ["data:image/png;base64,iVBORw0KGgo=", "javascript:alert(1)", "mailto:a@b.c", "ftp://example.com/x.png",
             "file:///etc/passwd", "gopher://x", "http://[::1", "http://exa mple.com/x", "http://\udcff/x",
             "//", "http://" + "a" * 300 + ".com/x", "http://x:99999/", "\x00", "http://%zz/", "https://[fe80::1%25eth0]/"]


@pytest.mark.parametrize("location", LOCATIONS)
def test_any_redirect_is_the_image_error(image_host, location):
    _Handler.routes["/r"] = (302, {"Location": location.encode("utf-8", "surrogateescape").decode("latin-1")}, b"")
    with pytest.raises(ImageLoadError):
        load_image(image_host + "/r", ImagePolicy(timeout=2.0, max_redirects=2))


@pytest.mark.parametrize("body,ctype", [(b"", "image/png"), (b"<html>", "text/html"), (VALID["PNG"][:30], "image/png"),
                                        (b"\x00" * 100, "image/avif")])
def test_url_answers_that_are_no_image(image_host, body, ctype):
    _Handler.routes["/x"] = (200, {"Content-Type": ctype}, body)
    with pytest.raises(ImageLoadError):
        load_image(image_host + "/x", ImagePolicy(timeout=2.0))


# ------------------------------------------------------------------ the server reads through the same loader
@pytest.fixture(scope="module")
def server_client(jina_reranker):
    from fastapi.testclient import TestClient
    from mmrank.server import ServerConfig, create_app

    with TestClient(create_app(jina_reranker, ServerConfig())) as client:
        yield client


@settings(max_examples=10, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(mutated())
def test_server_answers_a_mutated_image_document_with_200_or_a_422_naming_it(server_client, case):
    import base64

    body = {"query": "q", "documents": ["a text", {"image": base64.b64encode(case[1]).decode()}]}
    resp = server_client.post("/v1/rerank", json=body)
    assert resp.status_code in (200, 422), resp.text[:300]
    if resp.status_code == 422:
        assert "document 1" in resp.json()["detail"]
    else:
        assert sorted(r["index"] for r in resp.json()["results"]) == [0, 1]


def test_server_decoder_exception_of_any_type_is_the_documents_error(server_client, monkeypatch):
    """A decoder raising RuntimeError (as a corrupt AVIF does) inside the server's image reading."""
    import base64

    real_load = Image.Image.load

    def boom(self, *a, **k):
        if getattr(self, "format", None) == "GIF":
            raise RuntimeError("decoder exploded")
        return real_load(self, *a, **k)

    monkeypatch.setattr(Image.Image, "load", boom)
    body = {"query": "q", "documents": ["a text", {"image": base64.b64encode(VALID["GIF"]).decode()}]}
    resp = server_client.post("/v1/rerank", json=body)
    assert resp.status_code == 422 and "document 1" in resp.json()["detail"]
    assert "RuntimeError" in resp.json()["detail"]
