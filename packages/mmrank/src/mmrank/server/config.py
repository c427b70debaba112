"""Limits and switches of ``mmrank serve`` — every default is the safe one."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..inputs.images import ImagePolicy

_MiB = 1024 * 1024


@dataclass
class ServerConfig:
    """What the server accepts. Requests over a limit get a 4xx naming the limit and how to raise it."""

    max_documents: int = 1000
    """Documents per request (413 above)."""
    max_body_bytes: int = 64 * _MiB
    """Size of a request body (413 above; checked from Content-Length and while reading)."""
    max_image_bytes: int = 16 * _MiB
    """Encoded size of one image: decoded base64, data: URI or download."""
    max_image_pixels: int = 25_000_000
    """Width × height of one image, read from its header before decoding (a 50-megapixel image is refused)."""
    max_total_pixels: int = 150_000_000
    """Sum of width × height of every image in one request (413 above; checked while images are read)."""
    max_text_chars: int = 200_000
    """Characters of one text (query or document). The model truncates far below this anyway."""
    image_timeout: float = 10.0
    """Seconds allowed to fetch one image URL (connect + whole download)."""
    images_deadline: float = 60.0
    """Seconds one request may spend reading its images, all of them; an image not started by then is that
    document's error (so a request costs at most this plus one ``image_timeout`` of image reading)."""
    allow_private_urls: bool = False
    """Fetch image URLs whose host is loopback / private / link-local (off: SSRF guard)."""
    allow_local_files: bool = False
    """Accept local paths and file: URLs as images (off: a client must not read the server's files)."""
    local_files_root: str | None = None
    """With ``allow_local_files``, only files under this folder."""
    api_key: str | None = field(default=None, repr=False)
    """Bearer token required on /v1/* and /rerank when set."""
    served_model_names: tuple[str, ...] = ()
    """Names of the model: the first is reported in responses and ``/v1/models``; when given, a request's
    ``model`` must be one of them (404 otherwise). Empty: the name is derived from the model id
    (:func:`default_served_name`) and any requested name is accepted."""
    max_batch_documents: int = 64
    """Pointwise scorers: documents of concurrent same-query requests merged into one model call, at most."""
    max_queue: int = 256
    """Requests waiting for the model at once; more get 503 with Retry-After."""
    prep_workers: int = 8
    """Threads that read and decode images (off the event loop and off the model thread)."""
    image_workers: int = 4
    """Images of one request read in parallel."""
    body_timeout: float = 30.0
    """Seconds a client has to send the whole request body once its headers are in (408 and the connection
    closed above), so slow-body clients cannot hold connections."""
    header_timeout: float = 10.0
    """Seconds a client has, from opening a connection (or from the first byte of a following request), to
    send the request line and headers; the connection is closed above (``mmrank serve`` only: it is
    enforced by the HTTP protocol, not by the ASGI app)."""

    def served_name(self, model_name: str) -> str:
        """The name responses report: the first ``served_model_names``, else :func:`default_served_name`."""
        return self.served_model_names[0] if self.served_model_names else default_served_name(model_name)

    def image_policy(self) -> ImagePolicy:
        schemes = {"http", "https", "data"} | ({"file"} if self.allow_local_files else set())
        return ImagePolicy.strict(
            max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels, timeout=self.image_timeout,
            schemes=frozenset(schemes), allow_private_addresses=self.allow_private_urls,
            root_path=os.path.abspath(self.local_files_root) if self.local_files_root else None)

    def refusals(self) -> list[str]:
        """What this configuration refuses, in words (printed at start-up)."""
        out = [f"more than {self.max_documents} documents per request",
               f"bodies over {self.max_body_bytes // _MiB} MiB",
               f"images over {self.max_image_bytes // _MiB} MiB or {self.max_image_pixels / 1e6:g} megapixels",
               f"over {self.max_total_pixels / 1e6:g} megapixels of images per request",
               f"texts over {self.max_text_chars} characters"]
        if not self.allow_local_files:
            out.append("local paths and file: URLs")
        if not self.allow_private_urls:
            out.append("image URLs on loopback/private/link-local addresses")
        return out


def default_served_name(model_name: str) -> str:
    """What a model is called in responses when no ``--served-model-name`` is given: a hub id as it is
    (``jinaai/jina-reranker-m0``), a local folder by its last path component (``/models/m0/`` → ``m0``) —
    never a filesystem path."""
    name = str(model_name).strip()
    looks_local = (os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or os.path.exists(name)
                   or name.count("/") > 1)
    if looks_local:
        tail = os.path.basename(os.path.normpath(os.path.expanduser(name.replace("\\", "/"))))
        return tail or "mmrank-model"
    return name or "mmrank-model"
