"""Safe image loading: every source shape, every limit, clear errors."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from mmrank import ImageLoadError, ImagePolicy, load_image
from mmrank.inputs.images import check_url_host, image_fingerprint
from mmrank_testkit import sample_image, sample_image_bytes
from PIL import Image


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (pixel data tiny): a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_all_source_shapes_give_the_same_pixels(tmp_path: Path):
    raw = sample_image_bytes(3)
    ref = Image.open(io.BytesIO(raw)).convert("RGB")
    p = tmp_path / "a.png"
    p.write_bytes(raw)
    b64 = base64.b64encode(raw).decode()
    sources = [raw, bytearray(raw), p, str(p), f"file://{p}", f"data:image/png;base64,{b64}", f"DATA:image/PNG;BASE64,{b64}", b64,
               Image.open(io.BytesIO(raw))]
    for src in sources:
        img = load_image(src)
        assert img.mode == "RGB" and img.size == ref.size
        assert img.tobytes() == ref.tobytes(), f"pixels differ for {type(src).__name__}"


def test_rgba_and_palette_files_are_converted_to_rgb_pil_images_pass_through():
    buf = io.BytesIO()
    sample_image(2).convert("P").save(buf, format="PNG")
    assert load_image(buf.getvalue()).mode == "RGB"
    # A caller's PIL image is handed to the image processor as it is, like the reference does.
    rgba = sample_image(1).convert("RGBA")
    assert load_image(rgba) is rgba


def _with_exif_rotation(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    img.save(buf, format="JPEG", exif=exif)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_exif_rotation_applies_to_files_not_to_caller_pil_images():
    opened = _with_exif_rotation(sample_image(1, size=(96, 40)))
    assert load_image(opened).size == (96, 40)  # PIL input: untouched, as the reference
    buf = io.BytesIO()
    opened.save(buf, format="JPEG", exif=opened.getexif())
    assert load_image(buf.getvalue()).size == (40, 96)  # bytes/files: EXIF-transposed, as load_image does


@pytest.mark.parametrize("mode", ["RGB", "P", "L"])
def test_png_colour_key_is_not_kept_after_rgb_conversion(mode):
    """A PNG tRNS colour key survives Image.convert("RGB") in info; transformers 5's convert_to_rgb would
    then paint those pixels white (the reference, transformers 4.x, does not): the loader drops it."""
    from transformers.image_transforms import convert_to_rgb

    img = sample_image(4, size=(32, 32)).convert(mode)
    key = img.getpixel((0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=key)
    assert "transparency" in Image.open(io.BytesIO(buf.getvalue())).info
    loaded = load_image(buf.getvalue())
    assert loaded.mode == "RGB" and "transparency" not in loaded.info
    assert np.array_equal(np.array(convert_to_rgb(loaded)), np.array(loaded))
    expected = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    assert loaded.tobytes() == expected.tobytes()
    # A caller's RGB PIL image with a key: the key goes (on a copy), the pixels and the caller's object stay.
    opened = Image.open(io.BytesIO(buf.getvalue()))
    if opened.mode == "RGB":
        out = load_image(opened)
        assert "transparency" not in out.info and "transparency" in opened.info
        assert out.tobytes() == opened.tobytes()


def test_truncated_png_is_a_clear_error():
    raw = sample_image_bytes(4, size=(200, 200))
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_image(raw[: len(raw) // 2])


def test_non_image_bytes():
    with pytest.raises(ImageLoadError, match="not an image format"):
        load_image(b"%PDF-1.7 this is not an image at all" * 4)


def test_empty_and_missing():
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(Path("/nonexistent/dir/x.png"))
    with pytest.raises(ImageLoadError, match="not an existing file"):
        load_image("just some words")


def test_pixel_cap_refuses_bombs_before_decoding():
    bomb = _png_header_only(50_000, 50_000)  # 2.5 gigapixels claimed, a few hundred bytes
    with pytest.raises(ImageLoadError, match="megapixels"):
        load_image(bomb)
    with pytest.raises(ImageLoadError, match="megapixels"):
        load_image(sample_image_bytes(0, size=(100, 100)), ImagePolicy(max_pixels=5_000))


def test_byte_caps(tmp_path: Path):
    raw = sample_image_bytes(0, size=(64, 64))
    small = ImagePolicy(max_bytes=len(raw) - 1)
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(raw, small)
    p = tmp_path / "x.png"
    p.write_bytes(raw)
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(p, small)
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(base64.b64encode(raw).decode(), small)
    # far over: refused from the base64 length, before decoding
    with pytest.raises(ImageLoadError, match="decodes to more than"):
        load_image(base64.b64encode(raw).decode(), ImagePolicy(max_bytes=100))


def test_schemes_and_strict_policy(tmp_path: Path):
    p = tmp_path / "x.png"
    p.write_bytes(sample_image_bytes(0))
    strict = ImagePolicy.strict()
    with pytest.raises(ImageLoadError, match="local files are not allowed"):
        load_image(p, strict)
    with pytest.raises(ImageLoadError, match="local files are not allowed"):
        load_image(f"file://{p}", strict)
    with pytest.raises(ImageLoadError, match="not supported"):
        load_image("ftp://example.org/x.png")
    with pytest.raises(ImageLoadError, match="non-public address"):
        load_image("http://127.0.0.1:9/x.png", strict)  # refused before connecting
    with pytest.raises(ImageLoadError, match="non-public address"):
        check_url_host("http://10.1.2.3/x.png", strict)
    with pytest.raises(ImageLoadError, match="non-public address"):
        check_url_host("http://[::ffff:192.168.0.1]/x.png", strict)


def test_root_path_guards_traversal(tmp_path: Path):
    inside = tmp_path / "root"
    inside.mkdir()
    (inside / "ok.png").write_bytes(sample_image_bytes(0))
    (tmp_path / "secret.png").write_bytes(sample_image_bytes(1))
    policy = ImagePolicy(root_path=str(inside))
    assert load_image(inside / "ok.png", policy).size == (96, 80)
    with pytest.raises(ImageLoadError, match="outside the allowed root"):
        load_image(str(inside / ".." / "secret.png"), policy)


def test_dead_url_is_an_error_not_a_hang():
    # Port 9 (discard) on loopback: connection refused at once.
    with pytest.raises(ImageLoadError, match="could not fetch|timed out"):
        load_image("http://127.0.0.1:9/x.png", ImagePolicy(timeout=2))


def test_fingerprint_is_content_based():
    a, b = sample_image(1), sample_image(1)
    assert image_fingerprint(a) == image_fingerprint(b)
    assert image_fingerprint(a) != image_fingerprint(sample_image(2))


def test_strict_fetch_connects_to_the_checked_address(monkeypatch):
    """DNS rebinding: the address that passed the check is the one connected to (Host header and TLS name
    keep the original host)."""
    import httpx
    from mmrank.inputs import images

    seen = {}

    def fake_getaddrinfo(host, *a, **k):
        return [(2, 1, 6, "", ("93.184.216.34", 0))]

    def fake_stream(self, method, url, headers=None, extensions=None, **kw):
        seen.update(url=str(url), headers=dict(headers or {}), extensions=dict(extensions or {}))
        raise httpx.ConnectError("stop here")

    monkeypatch.setattr(images.socket, "getaddrinfo", fake_getaddrinfo)
    monkeypatch.setattr(httpx.Client, "stream", fake_stream)
    with pytest.raises(ImageLoadError, match="could not fetch"):
        load_image("https://images.example.org:8443/a/b.png?x=1", ImagePolicy.strict())
    assert seen["url"] == "https://93.184.216.34:8443/a/b.png?x=1"
    assert seen["headers"]["Host"] == "images.example.org:8443"
    assert seen["extensions"]["sni_hostname"] == "images.example.org"
