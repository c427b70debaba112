"""Documents and queries: text, an image, or both.

A :class:`Document` keeps the caller's own object in ``payload`` untouched and an optional ``id`` so that
adapters and users can map results back. Images load lazily, once, through :mod:`mmrank.inputs.images`.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..errors import ImageLoadError, InputError
from .images import (
    DEFAULT_POLICY,
    ImageInput,
    ImagePolicy,
    PendingImage,
    image_fingerprint,
    open_image,
)


def text_problem(text: Any) -> str | None:
    """Why ``text`` cannot be used as text, or None: it must be a ``str`` that encodes to UTF-8 (no lone
    surrogates — what JSON escapes such as ``"\\ud800"`` decode to, which no tokenizer or HTTP body takes)."""
    if not isinstance(text, str):
        return f"text must be a str, got {type(text).__name__}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        return (f"text is not valid Unicode: lone surrogate U+{ord(bad):04X} at character {exc.start} (an unpaired "
                "\\ud800-\\udfff escape); send well-formed UTF-8 text")
    return None


def _check_image_type(image: Any, what: str) -> None:
    if image is not None and not isinstance(image, (Image.Image, bytes, bytearray, memoryview, str, os.PathLike)):
        raise InputError(f"{what}.image must be a PIL image, bytes, a path, a URL, a data: URI or base64 text, "
                         f"got {type(image).__name__}")


class _LazyImage:
    """Holds an image source and reads it on first use, at most once, thread-safe. :meth:`size` reads as far
    as the final size (the header only, where the format tells it); :meth:`get` decodes. Encoded bytes (from
    a file, a URL, base64, bytes) are kept, so the pixels can be released and decoded again, and the image's
    fingerprint is a hash of those bytes (the same bytes always decode to the same pixels). A failure is
    kept and raised again."""

    __slots__ = ("source", "_image", "_pending", "_error", "_lock", "_fingerprint")

    def __init__(self, source: ImageInput):
        self.source = source
        self._image: Image.Image | None = None
        self._pending: PendingImage | None = None  # the encoded bytes and their final size
        self._error: ImageLoadError | None = None
        self._lock = threading.Lock()
        self._fingerprint: str | None = None

    def _open(self, policy: ImagePolicy) -> None:
        """Read as far as the size (holding the lock); raise the kept failure."""
        if self._error is None and self._image is None and self._pending is None:
            try:
                got = open_image(self.source, policy)
            except ImageLoadError as exc:
                self._error = exc
            else:
                if isinstance(got, PendingImage):
                    self._pending = got
                    self._image, got.decoded = got.decoded, None  # decoded at once when the header could not tell
                else:
                    self._image = got
        if self._error is not None:
            raise self._error

    def size(self, policy: ImagePolicy) -> tuple[int, int]:
        with self._lock:
            self._open(policy)
            return self._image.size if self._image is not None else self._pending.size  # type: ignore[union-attr]

    def get(self, policy: ImagePolicy) -> Image.Image:
        with self._lock:
            self._open(policy)
            if self._image is None:
                try:
                    self._image = self._pending.decode()  # type: ignore[union-attr]
                except ImageLoadError as exc:
                    self._error = exc
                    raise
            return self._image

    @property
    def error(self) -> ImageLoadError | None:
        return self._error

    def fingerprint(self, policy: ImagePolicy) -> str:
        """A content key of the image: a hash of its encoded bytes (no decoding needed), or of the pixels of a
        caller's PIL image (hashed each time: it may have been changed in place)."""
        with self._lock:
            self._open(policy)
            if self._pending is not None:
                if self._fingerprint is None:
                    digest = hashlib.blake2b(self._pending.data, digest_size=16).hexdigest()
                    self._fingerprint = f"bytes:{digest}"
                return self._fingerprint
            image = self._image
        return image_fingerprint(image)  # type: ignore[arg-type]

    def release(self) -> None:
        """Drop the decoded pixels when the encoded bytes are kept (they are decoded again if needed)."""
        with self._lock:
            if self._pending is not None:
                self._image = None


@dataclass(eq=False)
class Document:
    """A candidate to rerank: ``text``, ``image`` or both.

    Args:
        text: the document's text (``None`` or ``""``: no text).
        image: the document's image: anything :func:`mmrank.load_image` reads — a PIL image, encoded bytes,
            a path, a ``file://`` / ``http(s)://`` / ``data:`` URL or a base64 string. It is read lazily,
            once, under the scorer's :class:`mmrank.ImagePolicy`.
        id: your identifier; returned with the result and named in error messages.
        payload: your own object (a LangChain ``Document``, a LlamaIndex node, ...), returned untouched with
            the result.
        metadata: free-form metadata, carried along (not scored).
    """

    text: str | None = None
    image: ImageInput | None = None
    id: str | None = None
    payload: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    _lazy: _LazyImage | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.text is not None and not isinstance(self.text, str):
            raise InputError(f"Document.text must be a str, got {type(self.text).__name__}")
        _check_image_type(self.image, "Document")
        if self.image is not None:
            self._lazy = _LazyImage(self.image)

    @property
    def has_text(self) -> bool:
        """Whether the document has non-empty text (an image document's ``""`` caption is no text)."""
        return self.text is not None and self.text != ""

    @property
    def has_image(self) -> bool:
        """Whether the document names an image (readable or not)."""
        return self.image is not None

    @property
    def modality(self) -> str:
        """``"text"``, ``"image"``, ``"text+image"`` or ``"empty"`` (neither text nor image).

        ``Document(text="")`` is a text document whose text is empty — scored like the reference scores
        it (Haystack and LlamaIndex send ``""`` for empty documents); ``Document(text="", image=...)`` is an
        image document."""
        if self.has_text and self.has_image:
            return "text+image"
        if self.has_image:
            return "image"
        if self.text is not None:
            return "text"
        return "empty"

    def problem(self) -> str | None:
        """Why this document cannot be scored by any scorer (no text and no image, text that is not text),
        or None. Scorers turn it into this document's error; the rest of the call goes on."""
        if self.modality == "empty":
            return "document has neither text nor image"
        if self.text is not None:
            return text_problem(self.text)
        return None

    def load_image(self, policy: ImagePolicy = DEFAULT_POLICY) -> Image.Image:
        """The decoded image (loaded once, then cached on the document): RGB for files, bytes and URLs; a
        caller's PIL image as it is.

        Args:
            policy: the limits that apply when reading it (size, pixels, URL timeout, allowed sources).

        Raises:
            ImageLoadError: the image cannot be read; the message names the source.
            InputError: the document has no image.
        """
        if self._lazy is None:
            raise InputError("document has no image")
        return self._lazy.get(policy)

    def image_size(self, policy: ImagePolicy = DEFAULT_POLICY) -> tuple[int, int]:
        """``(width, height)`` of the image :meth:`load_image` returns, read from the header where the format
        tells it (JPEG, PNG, WebP: the pixels are decoded later, when :meth:`load_image` is called); every
        check of the policy that does not need the pixels is made here.

        Args:
            policy: the limits that apply when reading it.

        Raises:
            ImageLoadError: the image cannot be read; the message names the source.
            InputError: the document has no image.
        """
        if self._lazy is None:
            raise InputError("document has no image")
        return self._lazy.size(policy)

    @property
    def image_error(self) -> ImageLoadError | None:
        """Why reading this document's image failed, once it was tried (``None``: no image, not tried yet, or
        read). Scorers that decode images while scoring report it through :meth:`mmrank.Reranker.finish`."""
        return self._lazy.error if self._lazy is not None else None

    def image_fingerprint(self, policy: ImagePolicy = DEFAULT_POLICY) -> str:
        """A content key of the image, the key of the image-feature caches: a hash of the encoded bytes for an
        image read from a file, a URL, base64 or bytes (found without decoding the pixels: a page whose
        features are cached is never decoded), or of the pixels of a caller's PIL image
        (:func:`mmrank.inputs.images.image_fingerprint`).

        Args:
            policy: the limits that apply when reading it.
        """
        if self._lazy is None:
            raise InputError("document has no image")
        return self._lazy.fingerprint(policy)

    def release_image(self) -> None:
        """Free the decoded pixels of an image read from encoded bytes (a file, bytes, a URL, base64); the
        bytes are kept and decoded again by the next :meth:`load_image`. A caller's PIL image is kept."""
        if self._lazy is not None:
            self._lazy.release()

    @classmethod
    def coerce(cls, value: Any) -> Document:
        """Build a Document from the shapes users naturally pass.

        - ``Document`` → itself; ``str`` → a text document (a string is never taken as a path);
        - PIL image, ``bytes`` or ``pathlib.Path`` → an image document;
        - mapping with ``text`` and/or ``image`` (plus optional ``id``, ``metadata``) → as named;
          the Jina API's ``{"image": "<url or base64>"}`` and ``{"text": ...}`` objects fit this shape.

        Args:
            value: the document in one of the shapes above.

        Raises:
            InputError: ``value`` fits none of them (the message says which shapes do).
        """
        if isinstance(value, Document):
            return value
        if isinstance(value, str):
            return cls(text=value)
        if isinstance(value, (Image.Image, bytes, bytearray, os.PathLike)):
            return cls(image=value)
        if isinstance(value, Mapping):
            unknown = set(value) - {"text", "image", "id", "metadata", "payload"}
            if unknown:
                raise InputError(f"unknown document field(s) {sorted(unknown)}; use 'text', 'image', 'id', "
                                 "'metadata'")
            if value.get("text") is None and value.get("image") is None:
                raise InputError("a document mapping needs 'text' or 'image'")
            return cls(text=value.get("text"), image=value.get("image"), id=value.get("id"),
                       payload=value.get("payload"), metadata=dict(value.get("metadata") or {}))
        raise InputError(f"cannot make a document from a {type(value).__name__}; pass a str, a PIL image, "
                         "a Path, bytes, a mapping with 'text'/'image', or mmrank.Document")


@dataclass(eq=False)
class Query:
    """A query: text or an image (some scorers also accept both).

    Args:
        text: the query text.
        image: a query image, in any form :class:`Document` accepts.

    Raises:
        InputError: neither text nor an image was given.
    """

    text: str | None = None
    image: ImageInput | None = None
    _lazy: _LazyImage | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.text is not None:
            why = text_problem(self.text)
            if why:
                raise InputError(f"query: {why}")
        _check_image_type(self.image, "Query")
        if self.image is not None:
            self._lazy = _LazyImage(self.image)
        if (self.text is None or self.text == "") and self.image is None:
            raise InputError("the query is empty: give query text or a query image")

    @property
    def has_text(self) -> bool:
        """Whether the query has non-empty text."""
        return self.text is not None and self.text != ""

    @property
    def has_image(self) -> bool:
        """Whether the query has an image."""
        return self.image is not None

    @property
    def modality(self) -> str:
        """``"text"``, ``"image"`` or ``"text+image"``."""
        if self.has_text and self.has_image:
            return "text+image"
        return "image" if self.has_image else "text"

    def load_image(self, policy: ImagePolicy = DEFAULT_POLICY) -> Image.Image:
        """The decoded query image (loaded once): RGB for files, bytes and URLs; a caller's PIL image as it is.

        Args:
            policy: the limits that apply when reading it.

        Raises:
            ImageLoadError: the image cannot be read; the message names the source.
            InputError: the query has no image.
        """
        if self._lazy is None:
            raise InputError("query has no image")
        return self._lazy.get(policy)

    def image_size(self, policy: ImagePolicy = DEFAULT_POLICY) -> tuple[int, int]:
        """``(width, height)`` of the query image, from its header where the format tells it (see
        :meth:`Document.image_size`).

        Args:
            policy: the limits that apply when reading it.
        """
        if self._lazy is None:
            raise InputError("query has no image")
        return self._lazy.size(policy)

    @classmethod
    def coerce(cls, value: Any) -> Query:
        """Build a Query from the shapes users naturally pass.

        ``str`` → text query; PIL image, bytes or ``Path`` → image query; a mapping with ``text`` and/or
        ``image``; a ``Query`` → itself.

        Args:
            value: the query in one of those shapes.

        Raises:
            InputError: ``value`` fits none of them, or is empty.
        """
        if isinstance(value, Query):
            return value
        if isinstance(value, str):
            return cls(text=value)
        if isinstance(value, (Image.Image, bytes, bytearray, os.PathLike)):
            return cls(image=value)
        if isinstance(value, Mapping):
            unknown = set(value) - {"text", "image"}
            if unknown:
                raise InputError(f"unknown query field(s) {sorted(unknown)}; use 'text' and/or 'image'")
            return cls(text=value.get("text"), image=value.get("image"))
        raise InputError(f"cannot make a query from a {type(value).__name__}; pass a str, a PIL image, a Path, "
                         "bytes, a mapping with 'text'/'image', or mmrank.Query")


def _check_documents_container(documents: Any) -> None:
    if documents is None or isinstance(documents, (str, bytes, bytearray, Mapping, Document, Image.Image,
                                                   os.PathLike)):
        raise InputError("documents must be a list (or another iterable) of documents, not "
                         + ("None" if documents is None else "a single " + type(documents).__name__))
    if not isinstance(documents, Iterable):
        raise InputError(f"documents must be a list (or another iterable) of documents, not a "
                         f"{type(documents).__name__}")


def coerce_documents(documents: Iterable[Any]) -> list[Document]:
    """Coerce every item, naming the position of the first that does not fit."""
    _check_documents_container(documents)
    out = []
    for i, d in enumerate(documents):
        try:
            out.append(Document.coerce(d))
        except InputError as exc:
            raise InputError(f"document {i}: {exc}") from None
    return out


def as_sequence(documents: Sequence[Any] | Iterable[Any]) -> list[Any]:
    """``documents`` as a list (a generator is consumed here), or :class:`InputError` if it is no list of
    documents at all (None, a single string, a number, ...)."""
    _check_documents_container(documents)
    return list(documents)
