"""Exceptions raised by mmrank. Every error names what failed and, where one is involved, which document."""

from __future__ import annotations


class MMRankError(Exception):
    """Base class of every error mmrank raises on purpose."""


class InputError(MMRankError, ValueError):
    """The caller passed something mmrank cannot use (empty query, unknown document shape, ...)."""


class ImageLoadError(InputError):
    """An image could not be read: bad bytes, dead URL, refused scheme or address, over a size limit.

    ``document_index`` / ``document_id`` name the document when the image belonged to one.
    """

    def __init__(self, message: str, *, source: str | None = None, document_index: int | None = None,
                 document_id: str | None = None):
        self.reason = message
        self.source = source
        self.document_index = document_index
        self.document_id = document_id
        super().__init__(self._render())

    def _render(self) -> str:
        # the one form every document error takes: "document 3 (id='x'): ..." (docs/safety.md)
        if self.document_index is not None:
            ident = f" (id={self.document_id!r})" if self.document_id is not None else ""
            prefix = f"document {self.document_index}{ident}: "
        else:
            prefix = f"id={self.document_id!r}: " if self.document_id is not None else ""
        src = f" (source: {self.source})" if self.source else ""
        return f"{prefix}{self.reason}{src}"

    def for_document(self, index: int, doc_id: str | None) -> ImageLoadError:
        """The same error, now naming the document it belongs to."""
        return ImageLoadError(self.reason, source=self.source, document_index=index, document_id=doc_id)


class ModelLoadError(MMRankError, OSError):
    """A model, tokenizer or processor could not be loaded; the message says how to fix it."""


class UnsupportedInputError(InputError):
    """The chosen scorer cannot handle this kind of input (e.g. an image query on a text-only server)."""


class IdentifierTokenError(MMRankError, ValueError):
    """Single-pass listwise ranking needs every identifier to be exactly one token; this tokenizer disagrees."""


class RemoteError(MMRankError):
    """A remote rerank server answered with an error or could not be reached."""

    def __init__(self, message: str, *, status_code: int | None = None, body: str | None = None):
        self.status_code = status_code
        self.body = body
        super().__init__(message)
