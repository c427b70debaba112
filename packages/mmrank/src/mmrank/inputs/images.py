"""Safe image loading.

An image may be given as a PIL image, raw bytes, a local path (str or ``pathlib.Path``), a ``file://`` URL,
an ``http(s)://`` URL, a ``data:`` URI, or a bare base64 string. :func:`load_image` turns any of them into
an RGB PIL image under an :class:`ImagePolicy`: byte caps, a pixel cap checked from the header before the
pixels are decoded (decompression bombs), URL timeouts, a scheme allow-list, and optionally a refusal of
loopback / private / link-local addresses (SSRF) for servers that fetch URLs on behalf of others.

Like ``transformers.image_utils.load_image`` (which jina-reranker-m0's reference code calls for paths and
URLs), an image read from a file, bytes, base64 or a URL is EXIF-transposed and converted to RGB, so both
paths feed the same pixels to the image processor. A PIL image the caller passes is **not** touched (no EXIF
rotation, no mode conversion), as the reference passes PIL images to the processor as they are; the model's
image processor converts its mode. The only change is dropping a transparency colour key from an RGB image
(see :func:`_drop_colour_key`).

Whatever goes wrong while reading one image — a decoder raising any exception type, a URL that fails or
redirects somewhere it may not — surfaces as :class:`~mmrank.errors.ImageLoadError` and nothing else, so
callers can turn it into that one document's error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import ipaddress
import os
import socket
import urllib.parse
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageLoadError, InputError

ImageInput = Union["Image.Image", bytes, bytearray, str, os.PathLike]

_MiB = 1024 * 1024


@dataclass(frozen=True)
class ImagePolicy:
    """Limits applied to every image mmrank reads.

    The defaults suit a library called by its own user (local files and any URL allowed). A server that
    fetches URLs for untrusted clients should use :meth:`strict`.
    """

    max_bytes: int = 32 * _MiB
    """Largest encoded image accepted (file size, download size or decoded base64)."""
    max_pixels: int = 64_000_000
    """Largest width*height accepted; checked from the header, before decoding."""
    timeout: float = 10.0
    """Seconds allowed for connecting and for the whole download of an image URL."""
    schemes: frozenset[str] = field(default_factory=lambda: frozenset({"http", "https", "data", "file"}))
    """URL schemes that may be used. Local paths count as ``file``."""
    allow_private_addresses: bool = True
    """Whether http(s) URLs may point at loopback, private, link-local or otherwise non-public addresses."""
    max_redirects: int = 3
    """Most HTTP redirects followed for an image URL (each hop is checked like the first)."""
    root_path: str | None = None
    """If set, local files must lie under this directory (guards path traversal)."""

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_redirects"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"ImagePolicy.{name} must be a non-negative integer, got {v!r}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise InputError(f"ImagePolicy.timeout must be a positive number of seconds, got {self.timeout!r}")
        if isinstance(self.schemes, (str, bytes)) or not isinstance(self.schemes, (set, frozenset, list, tuple)) \
                or not all(isinstance(x, str) for x in self.schemes):
            raise InputError(f"ImagePolicy.schemes must be a set of scheme names, got {self.schemes!r}")
        object.__setattr__(self, "schemes", frozenset(x.lower() for x in self.schemes))
        if not isinstance(self.allow_private_addresses, bool):
            raise InputError("ImagePolicy.allow_private_addresses must be True or False")
        if self.root_path is not None and not isinstance(self.root_path, (str, os.PathLike)):
            raise InputError(f"ImagePolicy.root_path must be a path or None, got {type(self.root_path).__name__}")

    @classmethod
    def strict(cls, **overrides: Any) -> ImagePolicy:
        """Policy for servers: no local files, no private addresses, http(s) and data URIs only.

        Args:
            **overrides: fields to change from that base, e.g. ``ImagePolicy.strict(timeout=5.0)``.
        """
        base = cls(schemes=frozenset({"http", "https", "data"}), allow_private_addresses=False)
        return replace(base, **overrides) if overrides else base


DEFAULT_POLICY = ImagePolicy()


def _describe(source: Any) -> str:
    if isinstance(source, Image.Image):
        return f"PIL image {source.size[0]}x{source.size[1]}"
    if isinstance(source, (bytes, bytearray)):
        return f"{len(source)} bytes"
    text = str(source)
    if text.startswith("data:"):
        return text[:40] + "..."
    if len(text) > 200:
        return text[:60] + f"... ({len(text)} chars)"
    return text


def _check_header(img: Image.Image, policy: ImagePolicy, source: str) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageLoadError(f"image has an empty size {w}x{h}", source=source)
    if w * h > policy.max_pixels:
        raise ImageLoadError(
            f"image is {w}x{h} = {w * h / 1e6:.1f} megapixels, over the limit of "
            f"{policy.max_pixels / 1e6:.1f} megapixels (ImagePolicy.max_pixels)", source=source)


def _check_bytes(data: bytes, policy: ImagePolicy, source: str) -> None:
    if len(data) > policy.max_bytes:
        raise ImageLoadError(f"image is {len(data)} bytes, over the limit of {policy.max_bytes} bytes "
                             "(ImagePolicy.max_bytes)", source=source)
    if not data:
        raise ImageLoadError("image is empty (0 bytes)", source=source)


def decode_image_bytes(data: bytes, policy: ImagePolicy = DEFAULT_POLICY, source: str | None = None) -> Image.Image:
    """Decode encoded image bytes into an RGB image, enforcing the policy's byte and pixel caps."""
    source = source or f"{len(data)} bytes"
    _check_bytes(data, policy, source)
    try:
        with warnings.catch_warnings():
            # Our own pixel cap replaces PIL's global one; turn its warning into nothing and its error
            # into ours below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_header(img, policy, source)
            img.load()
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"image refused: over the {policy.max_pixels / 1e6:.1f} megapixels limit "
                             f"(decompression-bomb guard): {exc}", source=source) from None
    except UnidentifiedImageError:
        raise ImageLoadError("bytes are not an image format Pillow can read", source=source) from None
    except Exception as exc:  # noqa: BLE001 - decoders raise anything (OSError, SyntaxError, RuntimeError, ...)
        # Truncated or corrupt files land here ("image file is truncated", "broken data stream", a corrupted
        # AVIF's RuntimeError, an EOFError, a struct.error, ...): whatever the decoder raises is this image's
        # problem, never the caller's whole call.
        raise ImageLoadError(f"image data is corrupt or truncated: {type(exc).__name__}: {exc}",
                             source=source) from None
    try:
        return _to_rgb(img)
    except Exception as exc:  # noqa: BLE001 - some formats decode lazily inside convert()
        raise ImageLoadError(f"image data is corrupt or truncated: {type(exc).__name__}: {exc}",
                             source=source) from None


def _drop_colour_key(img: Image.Image) -> Image.Image:
    """``img`` without a transparency colour key when it is RGB.

    ``Image.convert("RGB")`` keeps a PNG's ``tRNS`` colour key in ``info["transparency"]``; transformers 5's
    ``convert_to_rgb`` honours that key and paints those pixels white, which the reference (transformers 4.x,
    whose ``convert_to_rgb`` returns RGB images as they are) never does. The pixels are not changed."""
    if img.mode == "RGB" and "transparency" in img.info:
        img.info.pop("transparency", None)
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
        pass
    out = img.convert("RGB") if img.mode != "RGB" else img
    return _drop_colour_key(out)


def _pass_through(img: Image.Image, policy: ImagePolicy, source: str) -> Image.Image:
    """A caller's PIL image as the reference would feed it to the processor: untouched (no EXIF rotation,
    no mode conversion; the image processor converts the mode), except that a colour key on an RGB image
    is dropped on a shallow copy (see :func:`_drop_colour_key`). Lazily opened images are loaded here so
    that a corrupt one is this image's error."""
    _check_header(img, policy, source)
    try:
        img.load()
    except Exception as exc:  # noqa: BLE001 - a lazily opened file may be corrupt
        raise ImageLoadError(f"image data is corrupt or truncated: {type(exc).__name__}: {exc}",
                             source=source) from None
    if img.mode == "RGB" and "transparency" in img.info:
        img = img.copy()
        img.info.pop("transparency", None)
    return img


def processor_rgb(img: Image.Image) -> Image.Image:
    """The RGB image a Qwen-VL image processor makes of ``img`` (transformers 4.x ``convert_to_rgb``: RGB as
    it is, anything else composited onto white) — for paths that must send pixels, not the PIL object."""
    if img.mode == "RGB":
        return img
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def read_file_bytes(path: Path, policy: ImagePolicy, source: str) -> bytes:
    """The bytes of a local image file, under the policy's scheme, root and byte-cap rules."""
    if "file" not in policy.schemes:
        raise ImageLoadError("local files are not allowed by this image policy", source=source)
    try:
        resolved = path.expanduser().resolve()
    except OSError as exc:
        raise ImageLoadError(f"cannot resolve path: {exc}", source=source) from None
    if policy.root_path is not None:
        root = Path(policy.root_path).expanduser().resolve()
        if resolved != root and root not in resolved.parents:
            raise ImageLoadError(f"path lies outside the allowed root {root}", source=source)
    if not resolved.is_file():
        raise ImageLoadError("file does not exist or is not a regular file", source=source)
    try:
        size = resolved.stat().st_size
        if size > policy.max_bytes:
            raise ImageLoadError(f"file is {size} bytes, over the limit of {policy.max_bytes} bytes",
                                 source=source)
        return resolved.read_bytes()
    except OSError as exc:  # permissions, a file removed meanwhile, I/O errors
        raise ImageLoadError(f"cannot read file: {exc.strerror or exc}", source=source) from None


def _decode_base64(text: str, policy: ImagePolicy, source: str) -> bytes:
    # 4 base64 characters carry 3 bytes: refuse before allocating the decoded buffer.
    if len(text) * 3 // 4 > policy.max_bytes + 3:
        raise ImageLoadError(f"base64 image decodes to more than {policy.max_bytes} bytes", source=source)
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageLoadError("not valid base64", source=source) from None


def _data_uri_bytes(uri: str, policy: ImagePolicy, source: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise ImageLoadError("malformed data: URI (no comma)", source=source)
    if ";base64" in header.lower():  # RFC 2397 parameters are case-insensitive
        return _decode_base64(payload, policy, source)
    return urllib.parse.unquote_to_bytes(payload)


@dataclass(frozen=True)
class ResolvedSource:
    """What an image input is, before any decoding or download: exactly one of ``image`` (a PIL image the
    caller gave), ``data`` (encoded bytes read from a file, a ``data:`` URI, base64 or raw bytes) or ``url``
    (an ``http(s)`` URL, not fetched). ``source`` describes the input for error messages."""

    source: str
    image: Image.Image | None = None
    data: bytes | None = None
    url: str | None = None


def resolve_source(source: ImageInput, policy: ImagePolicy = DEFAULT_POLICY) -> ResolvedSource:
    """Classify an image input and read its encoded bytes where they are local (files, ``data:`` URIs,
    base64), applying the policy's scheme, root and byte caps. URLs are returned unfetched."""
    desc = _describe(source)
    if isinstance(source, Image.Image):
        return ResolvedSource(desc, image=source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return ResolvedSource(desc, data=bytes(source))
    if isinstance(source, os.PathLike):
        return ResolvedSource(desc, data=read_file_bytes(Path(source), policy, desc))
    if not isinstance(source, str):
        raise ImageLoadError(f"cannot read an image from a {type(source).__name__}", source=desc)
    text = source.strip()
    if not text:
        raise ImageLoadError("image reference is an empty string")
    lowered = text[:16].lower()
    if lowered.startswith("data:"):
        if "data" not in policy.schemes:
            raise ImageLoadError("data: URIs are not allowed by this image policy", source=desc)
        return ResolvedSource(desc, data=_data_uri_bytes(text, policy, desc))
    if lowered.startswith(("http://", "https://")):
        scheme = lowered.split(":", 1)[0]
        if scheme not in policy.schemes:
            raise ImageLoadError(f"URL scheme {scheme!r} is not allowed", source=desc)
        return ResolvedSource(desc, url=text)
    if lowered.startswith("file://"):
        parsed = urllib.parse.urlsplit(text)
        if parsed.netloc not in ("", "localhost"):
            raise ImageLoadError("file:// URLs must name a local path", source=desc)
        return ResolvedSource(desc, data=read_file_bytes(Path(urllib.parse.unquote(parsed.path)), policy, desc))
    scheme = urllib.parse.urlsplit(text).scheme.lower()
    if scheme and len(scheme) > 1 and "://" in text:
        raise ImageLoadError(f"URL scheme {scheme!r} is not supported (use http, https, data or file)",
                             source=desc)
    # A string that names an existing file is a path; otherwise, if it is long and base64-shaped, it is
    # an inline image (the Jina API sends images as bare base64).
    if len(text) < 4096 and os.path.exists(text):
        return ResolvedSource(desc, data=read_file_bytes(Path(text), policy, desc))
    if _looks_base64(text):
        if "data" not in policy.schemes:
            raise ImageLoadError("inline base64 images are not allowed by this image policy", source=desc)
        return ResolvedSource(desc, data=_decode_base64(text, policy, desc))
    raise ImageLoadError("not an existing file, a URL, a data: URI or base64 image data", source=desc)


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# Not globally reachable (IANA special-purpose registries) whatever this Python's ``ipaddress`` tables say
# (they changed between 3.11 patch releases): refused in addition to ``not is_global``.
_ALSO_BLOCKED = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "240.0.0.0/4", "::/127", "::ffff:0:0/96", "100::/64", "2001:db8::/32", "fc00::/7",
    "fe80::/10", "fec0::/10"))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and may deliver to: IPv4-mapped and IPv4-compatible
    (``::a.b.c.d``), 6to4 (``2002:AABB:CCDD::/48``), Teredo (server and client), NAT64 (``64:ff9b::/96`` and
    the local-use ``64:ff9b:1::/48``, last 32 bits)."""
    out: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    packed = int(ip)
    if any(ip in net for net in _NAT64) or (packed >> 32 == 0 and packed > 0xFFFF):
        out.append(ipaddress.IPv4Address(packed & 0xFFFFFFFF))  # NAT64, and deprecated ::a.b.c.d
    return out


def is_public_address(addr: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address may be fetched by a server on behalf of others: only **globally routable**
    addresses (``ipaddress``'s ``is_global``: no loopback, private, link-local, shared 100.64.0.0/10,
    documentation, benchmarking, reserved, deprecated site-local fec0::/10 ...), never multicast, and the
    same for every IPv4 address it embeds (IPv4-mapped, 6to4, Teredo, NAT64)."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0] if isinstance(addr, str) else addr)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = embedded_ipv4(ip)
        if ip.ipv4_mapped is not None:  # the address *is* the IPv4 one
            return is_public_address(ip.ipv4_mapped)
        if embedded and not all(is_public_address(v4) for v4 in embedded):
            return False
    if ip.is_multicast or any(ip in net for net in _ALSO_BLOCKED if net.version == ip.version):
        return False
    return ip.is_global


_is_public = is_public_address


def check_url_host(url: str, policy: ImagePolicy) -> str | None:
    """Refuse a URL whose host resolves to a non-public address when the policy says so (SSRF guard).

    Returns the checked address to connect to (``None`` when the policy allows any address): the fetch
    connects to that address itself, so a second DNS answer (rebinding) cannot redirect it."""
    if policy.allow_private_addresses:
        return None
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        raise ImageLoadError("URL has no host", source=url)
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ImageLoadError(f"cannot resolve host {host!r}: {exc}", source=url) from None
    for info in infos:
        addr = info[4][0]
        if not _is_public(addr):
            raise ImageLoadError(
                f"URL host {host!r} resolves to the non-public address {addr}; fetching it is refused "
                "(only globally routable addresses are allowed by this image policy: loopback, private, "
                "link-local, shared and reserved addresses, and IPv6 forms embedding them, are blocked)",
                source=url)
    return str(infos[0][4][0])


def _pinned_request(url: str, addr: str | None) -> tuple[str, dict[str, str], dict[str, str]]:
    """(URL with the host replaced by the checked address, Host header, TLS server name) for ``url``."""
    if addr is None:
        return url, {}, {}
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    ip_text = f"[{addr}]" if ":" in addr else addr
    netloc = ip_text + (f":{parts.port}" if parts.port else "")
    pinned = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    host_header = host + (f":{parts.port}" if parts.port else "")
    extensions = {"sni_hostname": host} if parts.scheme.lower() == "https" else {}
    return pinned, {"Host": host_header}, extensions


def _fetch_url(url: str, policy: ImagePolicy) -> Image.Image:
    return decode_image_bytes(_download(url, policy), policy, url)


def _download(url: str, policy: ImagePolicy) -> bytes:
    """The bytes at ``url`` under the policy (schemes, addresses pinned per hop, redirects, byte cap, one
    deadline for the whole download)."""
    import time

    import httpx

    # The timeout bounds the whole fetch (a server trickling bytes must not hold a worker for long), not
    # only each read: checked after every chunk, so a fetch ends within about twice the timeout at worst.
    deadline = time.monotonic() + policy.timeout
    current = url
    for _ in range(policy.max_redirects + 1):
        scheme = urllib.parse.urlsplit(current).scheme.lower()
        if scheme not in ("http", "https") or scheme not in policy.schemes:
            raise ImageLoadError(f"URL scheme {scheme!r} is not allowed", source=url)
        target, headers, extensions = _pinned_request(current, check_url_host(current, policy))
        try:
            with httpx.Client(timeout=httpx.Timeout(policy.timeout), follow_redirects=False) as client:
                with client.stream("GET", target, headers=headers, extensions=extensions) as resp:
                    if resp.is_redirect:
                        location = resp.headers.get("location")
                        if not location:
                            raise ImageLoadError(f"redirect {resp.status_code} without a Location", source=url)
                        current = urllib.parse.urljoin(current, location)
                        continue
                    if resp.status_code >= 400:
                        raise ImageLoadError(f"HTTP {resp.status_code} fetching image", source=url)
                    declared = resp.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                        raise ImageLoadError(f"image is {declared} bytes, over the limit of {policy.max_bytes}",
                                             source=url)
                    buf = bytearray()
                    for chunk in resp.iter_bytes():
                        buf.extend(chunk)
                        if len(buf) > policy.max_bytes:
                            raise ImageLoadError(f"image download exceeds {policy.max_bytes} bytes", source=url)
                        if time.monotonic() > deadline:
                            raise httpx.ReadTimeout("whole-download deadline passed")
                    return bytes(buf)
        except httpx.TimeoutException:
            raise ImageLoadError(f"timed out after {policy.timeout:g}s fetching image", source=url) from None
        except httpx.HTTPError as exc:
            raise ImageLoadError(f"could not fetch image: {exc.__class__.__name__}: {exc}", source=url) from None
    raise ImageLoadError(f"more than {policy.max_redirects} redirects", source=url)


def load_image(source: ImageInput, policy: ImagePolicy = DEFAULT_POLICY) -> Image.Image:
    """Load ``source`` into a PIL image, or raise :class:`ImageLoadError` saying why not — and nothing else.

    Files, bytes, base64, ``data:`` URIs and URLs are decoded, EXIF-transposed and converted to RGB (as
    ``transformers.image_utils.load_image`` does in the reference). A PIL image passed by the caller is
    returned as it is — no EXIF rotation, no mode conversion — like the reference, which hands PIL images to
    the image processor untouched; only its size is checked against the policy (and a colour key on an RGB
    image dropped, on a copy).

    Args:
        source: a PIL image, encoded bytes, a path (``str`` or ``pathlib.Path``), a ``file://`` /
            ``http(s)://`` URL, a ``data:`` URI or a bare base64 string.
        policy: the limits that apply (sizes, pixels, URL timeout, schemes, addresses, root folder).

    Raises:
        ImageLoadError: the image cannot be read or breaks the policy — whatever failed underneath (any
            decoder exception, a failed or redirected download); the message names the source.
        InputError: ``policy`` is not an :class:`ImagePolicy`.
    """
    if not isinstance(policy, ImagePolicy):
        raise InputError(f"policy must be an mmrank.ImagePolicy, got {type(policy).__name__}")
    try:
        got = resolve_source(source, policy)
        if got.image is not None:
            return _pass_through(got.image, policy, got.source)
        if got.url is not None:
            return _fetch_url(got.url, policy)
        return decode_image_bytes(got.data, policy, got.source)  # type: ignore[arg-type]
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - reading one image must never fail anything but that image
        raise ImageLoadError(f"could not read the image: {type(exc).__name__}: {exc}",
                             source=_safe_describe(source)) from None


# Formats whose final size (after EXIF orientation) the header tells for sure; others are decoded at once.
_SIZE_FROM_HEADER = frozenset({"JPEG", "MPO", "PNG", "WEBP"})
# PNG chunks that can carry an orientation (EXIF, raw EXIF profile text, XMP): after IDAT they are read only
# when the pixels are, so the header alone does not know the final size.
_PNG_METADATA = frozenset({b"eXIf", b"tEXt", b"zTXt", b"iTXt"})
_ORIENTATION = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)  # transpose, rotate 270, transverse, rotate 90


class PendingImage:
    """An image read as far as its header: encoded bytes whose format, size and policy caps are checked, the
    pixels not decoded yet. ``size`` is the size :meth:`decode` returns (after EXIF orientation), so callers
    can plan with it (patch grids, batches) and decode later, off their critical path.

    Attributes:
        data: the encoded bytes.
        size: ``(width, height)`` of the decoded, EXIF-transposed image.
        source: what the bytes came from, for error messages.
        decoded: the decoded image when :func:`open_image` had to decode it to know its size, else ``None``.
    """

    __slots__ = ("data", "size", "source", "policy", "decoded")

    def __init__(self, data: bytes, size: tuple[int, int], source: str, policy: ImagePolicy,
                 decoded: Image.Image | None = None):
        self.data = data
        self.size = size
        self.source = source
        self.policy = policy
        #: the pixels, when they had to be decoded to know the size (else ``None`` until :meth:`decode`)
        self.decoded = decoded

    def decode(self) -> Image.Image:
        """The decoded RGB image, exactly what :func:`load_image` returns for the same source.

        Raises:
            ImageLoadError: the pixels are corrupt or truncated, or they decode to another size than the
                header promised (a malformed file).
        """
        img = decode_image_bytes(self.data, self.policy, self.source)
        if img.size != self.size:
            raise ImageLoadError(f"image decoded to {img.size[0]}x{img.size[1]}, not the {self.size[0]}x"
                                 f"{self.size[1]} its header announced (malformed metadata)", source=self.source)
        return img


def open_image(source: ImageInput, policy: ImagePolicy = DEFAULT_POLICY) -> Image.Image | PendingImage:
    """Read ``source`` as far as its final size: every check of :func:`load_image` that does not need the pixels
    (source rules, byte cap, format, size, pixel cap) is made now. Encoded bytes (a file, a URL, base64,
    bytes) come back as a :class:`PendingImage`; the pixel decoding is left to :meth:`PendingImage.decode`
    where the header alone tells the final size (JPEG, PNG, WebP) — for another format, or an orientation
    stored after a PNG's pixel data, the pixels are decoded now (``PendingImage.decoded``). A caller's PIL
    image comes back as :func:`load_image` returns it.

    Args:
        source: anything :func:`load_image` reads.
        policy: the limits that apply.

    Raises:
        ImageLoadError: the image cannot be read or breaks the policy (as :func:`load_image`).
        InputError: ``policy`` is not an :class:`ImagePolicy`.
    """
    if not isinstance(policy, ImagePolicy):
        raise InputError(f"policy must be an mmrank.ImagePolicy, got {type(policy).__name__}")
    try:
        got = resolve_source(source, policy)
        if got.image is not None:
            return _pass_through(got.image, policy, got.source)
        data, desc = (_download(got.url, policy), got.url) if got.url is not None else (got.data, got.source)
        size = _final_size_from_header(data, policy, desc)  # type: ignore[arg-type]
        if size is None:
            img = decode_image_bytes(data, policy, desc)  # type: ignore[arg-type]
            return PendingImage(data, img.size, desc, policy, decoded=img)  # type: ignore[arg-type]
        return PendingImage(data, size, desc, policy)  # type: ignore[arg-type]
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - as load_image: one image's failure is only that image's
        raise ImageLoadError(f"could not read the image: {type(exc).__name__}: {exc}",
                             source=_safe_describe(source)) from None


def _final_size_from_header(data: bytes, policy: ImagePolicy, source: str) -> tuple[int, int] | None:
    """The size :func:`decode_image_bytes` will return, read from the header only; ``None`` when the header
    cannot tell for sure (the caller then decodes at once, which also reports any error the usual way)."""
    _check_bytes(data, policy, source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_header(img, policy, source)
            if img.format not in _SIZE_FROM_HEADER or (img.format == "PNG" and _png_metadata_after_pixels(data)):
                return None
            # The base class's reader: it looks only at what the header gave (EXIF, raw profile, XMP), where
            # PNG's own would decode the pixels to look for more. exif_transpose reads the same tags.
            orientation = Image.Image.getexif(img).get(_ORIENTATION, 1)
    except ImageLoadError:
        raise
    except Exception:  # noqa: BLE001 - whatever the header reader raises, the full decode reports it
        return None
    w, h = img.size
    try:
        swapped = orientation in _SWAPS_AXES
    except Exception:  # noqa: BLE001 - an exotic tag value: let the decoder decide
        return None
    return (h, w) if swapped else (w, h)


def _png_metadata_after_pixels(data: bytes) -> bool:
    """Whether a PNG holds a chunk that may carry an orientation after its first IDAT (or cannot be walked)."""
    pos, seen_pixels = 8, False
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"IEND":
            return False
        if kind == b"IDAT":
            seen_pixels = True
        elif seen_pixels and kind in _PNG_METADATA:
            return True
        pos += 12 + length
    return True  # no IEND where it should be: malformed, decode at once


def _safe_describe(source: Any) -> str:
    try:
        return _describe(source)
    except Exception:  # noqa: BLE001
        return f"a {type(source).__name__}"


def _looks_base64(text: str) -> bool:
    """Whether ``text`` looks like inline base64 image data (the Jina API's bare form): at least 16
    characters, and its first 512 non-space characters all from the standard base64 alphabet. The one rule
    used by the library's loader and by ``mmrank serve``."""
    window = text[:512].strip()
    if " " in window:  # prose, not base64 (line breaks inside base64 are fine)
        return False
    head = "".join(window.split())
    return len(head) >= 16 and all(c.isascii() and (c.isalnum() or c in "+/=") for c in head)


def image_fingerprint(img: Image.Image) -> str:
    """A content hash of a decoded image (mode, size and pixels) — the key of feature caches."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    if img.mode in ("P", "PA"):  # a caller's palette image: same indices, other colours, other image
        h.update(bytes(img.getpalette() or []))
        h.update(repr(img.info.get("transparency")).encode())
    h.update(img.tobytes())
    return h.hexdigest()
