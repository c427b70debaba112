"""Turning prompts with image placeholders into model inputs for the Qwen-VL family.

This re-implements what ``Qwen2VLProcessor`` (and its Qwen2.5-VL / Qwen3-VL siblings) do for images, from
the model's own tokenizer and image processor, because

* in transformers 5 the ``AutoProcessor`` of these models needs torchvision (for its video processor),
  which many CPU installs lack, and
* doing it ourselves lets us process each image once (and cache it), tokenize each text segment once,
  and batch images from any mix of documents.

The rules reproduced (checked against the real processor in the test suite):

* every ``<|image_pad|>`` in a prompt stands for one image, in order, and becomes
  ``prod(image_grid_thw) // merge_size**2`` copies of the image token;
* images are resized by the model's image processor (``smart_resize`` between ``min_pixels`` and
  ``max_pixels``) — each image is processed alone, which yields the same patches as a batched call;
* ``mm_token_type_ids`` is 1 at image-token positions and 0 elsewhere (transformers 5 needs it);
* sequences are padded on the **left** (the last position is the one that is scored / continued);
* truncation (when asked) cuts on the right at ``max_length``, like the tokenizer does.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..errors import InputError

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
#: What ``<|image_pad|>`` written in user text becomes in a prompt (see :func:`protect_text`): a lone
#: surrogate, which user text can never hold (mmrank refuses such text as not being text), so no string a
#: caller sends can create or remove an image slot.
USER_IMAGE_PAD = "\udbff"


def protect_text(text: str) -> str:
    """User text ready to be put into a prompt whose ``<|image_pad|>`` markers stand for images.

    The text's own ``<|image_pad|>`` strings stay the token the tokenizer makes of them (as in the reference,
    which tokenizes user text with the special tokens recognised) but no longer count as image slots: they are
    tokenized as that token id with ``mm_token_type_ids`` 0 — plain text to the model. Every other special
    token string is tokenized as the tokenizer does."""
    return text.replace(IMAGE_PAD, USER_IMAGE_PAD)


@dataclass(frozen=True)
class ImageFeatures:
    """One image after the image processor: flattened patches and its (t, h, w) patch grid."""

    pixel_values: torch.Tensor  # (num_patches, patch_dim)
    grid_thw: tuple[int, int, int]

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w


@dataclass
class EncodedBatch:
    """Model inputs for one batch, plus what was needed to build them."""

    inputs: dict[str, torch.Tensor]
    lengths: list[int]  # unpadded sequence lengths

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in self.inputs.items():
            if k == "pixel_values" and dtype is not None:
                out[k] = v.to(device=device, dtype=dtype, non_blocking=True)
            else:
                out[k] = v.to(device, non_blocking=True)
        return out


class VisionTextProcessor:
    """Tokenizer + image processor of a Qwen-VL model, with the processor's image-token expansion."""

    def __init__(self, tokenizer: Any, image_processor: Any, *, preprocess_cache_size: int = 256,
                 preprocess_cache_bytes: int = 256 * 1024 * 1024):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.merge_size = int(getattr(image_processor, "merge_size", 2))
        self.patch_size = int(getattr(image_processor, "patch_size", 14))
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        if self.image_token_id is None or self.image_token_id == getattr(tokenizer, "unk_token_id", -1):
            raise InputError(f"the tokenizer has no {IMAGE_PAD} token: not a Qwen-VL tokenizer")
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._segment_cache: OrderedDict[str, list[int]] = OrderedDict()
        self._image_cache: OrderedDict[tuple, ImageFeatures] = OrderedDict()
        self._image_cache_size = preprocess_cache_size
        # Processed pixels of a full-budget page are ~14 MB (float32): bound the memo by bytes too.
        self._image_cache_bytes = preprocess_cache_bytes
        self._image_cache_used = 0
        self._byte_level = _is_byte_level(tokenizer)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, min_pixels: int | None = None,
                        max_pixels: int | None = None, **hub_kwargs: Any) -> VisionTextProcessor:
        from transformers import AutoImageProcessor, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, **hub_kwargs)
        ip_kwargs: dict[str, Any] = {}
        if min_pixels is not None:
            ip_kwargs["min_pixels"] = min_pixels
        if max_pixels is not None:
            ip_kwargs["max_pixels"] = max_pixels
        image_processor = AutoImageProcessor.from_pretrained(path, **ip_kwargs, **hub_kwargs)
        return cls(tok, image_processor)

    @property
    def min_pixels(self) -> int:
        return int(self.image_processor.size["shortest_edge"])

    @property
    def max_pixels(self) -> int:
        return int(self.image_processor.size["longest_edge"])

    # ------------------------------------------------------------------ images
    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the image processor will resize to; raises ``InputError`` if it cannot."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        try:
            h, w = smart_resize(height, width, factor=self.patch_size * self.merge_size,
                                min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        except ValueError as exc:
            raise InputError(f"image of {width}x{height} cannot be processed: {exc}") from None
        return w, h

    def image_grid(self, width: int, height: int) -> tuple[int, int, int]:
        """The ``(t, h, w)`` patch grid the image processor will produce for an image of this size, without
        processing it (what the batch planner needs to know a prompt's length)."""
        w, h = self.resized_size(width, height)
        return (1, h // self.patch_size, w // self.patch_size)

    def num_image_tokens(self, feats: ImageFeatures | tuple[int, int, int]) -> int:
        if isinstance(feats, ImageFeatures):
            return feats.num_patches // (self.merge_size ** 2)
        t, h, w = feats
        return t * h * w // (self.merge_size ** 2)

    @property
    def supports_device(self) -> bool:
        """Whether the image processor can run on a given device (transformers' torchvision backend can; the
        PIL one cannot)."""
        names = {c.__name__ for c in type(self.image_processor).__mro__}
        return "TorchvisionBackend" in names or "BaseImageProcessorFast" in names

    def image_features(self, image: Image.Image, key: str | None = None, device: Any = None) -> ImageFeatures:
        """Process one RGB image (cached by ``key`` — a content fingerprint — when given). ``device``: run
        the image processor there (torchvision backend only; the pixels come back on that device)."""
        cache_key = (key, self.min_pixels, self.max_pixels) if key is not None else None
        if cache_key is not None and cache_key in self._image_cache:
            self._image_cache.move_to_end(cache_key)
            return self._image_cache[cache_key]
        self.resized_size(*image.size)  # clear error for absurd aspect ratios
        extra = {"device": device} if device is not None and self.supports_device else {}
        out = self.image_processor(images=[image], return_tensors="pt", **extra)
        grid = tuple(int(x) for x in out["image_grid_thw"][0].tolist())
        feats = ImageFeatures(pixel_values=out["pixel_values"], grid_thw=grid)  # type: ignore[arg-type]
        size = feats.pixel_values.numel() * feats.pixel_values.element_size()
        if cache_key is not None and self._image_cache_size > 0 and size <= self._image_cache_bytes:
            old = self._image_cache.pop(cache_key, None)
            if old is not None:
                self._image_cache_used -= old.pixel_values.numel() * old.pixel_values.element_size()
            self._image_cache[cache_key] = feats
            self._image_cache_used += size
            while len(self._image_cache) > self._image_cache_size or self._image_cache_used > self._image_cache_bytes:
                _, ev = self._image_cache.popitem(last=False)
                self._image_cache_used -= ev.pixel_values.numel() * ev.pixel_values.element_size()
        return feats

    # ------------------------------------------------------------------ text
    def tokenize_segment(self, text: str) -> list[int]:
        """Token ids of a text segment without special-token additions (memoised: prompts repeat)."""
        ids = self._segment_cache.get(text)
        if ids is None:
            ids = self._tokenize([text])[0]
            if len(text) < 4096:
                self._segment_cache[text] = ids
                if len(self._segment_cache) > 4096:
                    self._segment_cache.popitem(last=False)
        return list(ids)

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text; a user's ``<|image_pad|>`` (see :func:`protect_text`) is the image token id
        there, as the tokenizer would make it, but stays text."""
        if not any(USER_IMAGE_PAD in t for t in texts):
            return [list(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        out = []
        for t in texts:
            pieces = t.split(USER_IMAGE_PAD)
            enc = self.tokenizer([p for p in pieces if p], add_special_tokens=False)["input_ids"] \
                if any(pieces) else []
            it = iter(enc)
            ids: list[int] = []
            for k, p in enumerate(pieces):
                if k:
                    ids.append(self.image_token_id)
                if p:
                    ids.extend(next(it))
            out.append(ids)
        return out

    def max_tokens_bound(self, text: str) -> int | None:
        """An upper bound on the token count of ``text`` without tokenizing it, or None if unknown.

        For byte-level BPE tokenizers (all Qwen models) every token covers at least one byte after
        normalisation, and Unicode normalisation (NFC) grows a string at most threefold."""
        if not self._byte_level:
            return None
        return 3 * len(text.encode("utf-8", errors="surrogatepass"))

    def tokenize_segments(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many segments: one batched (parallel) tokenizer call for those not memoised."""
        out: list[list[int] | None] = [self._segment_cache.get(t) for t in texts]
        todo = list(dict.fromkeys(t for t, ids in zip(texts, out, strict=True) if ids is None))
        if todo:
            enc = self._tokenize(todo)
            fresh = dict(zip(todo, enc, strict=True))
            for t, ids in fresh.items():
                if len(t) < 4096:
                    self._segment_cache[t] = ids
            while len(self._segment_cache) > 4096:
                self._segment_cache.popitem(last=False)
            out = [o if o is not None else fresh[t] for t, o in zip(texts, out, strict=True)]
        return [list(o) for o in out]  # type: ignore[arg-type]

    def token_ids_many(self, prompts: Sequence[str], images: Sequence[Sequence[ImageFeatures | tuple[int, int, int]]]
                       ) -> list[tuple[list[int], list[int]]]:
        """:meth:`token_ids` of many prompts, tokenizing every text piece once, in one batched call."""
        split = [p.split(IMAGE_PAD) for p in prompts]
        for i, (parts, imgs) in enumerate(zip(split, images, strict=True)):
            if len(parts) - 1 != len(imgs):
                raise InputError(f"prompt {i} has {len(parts) - 1} image placeholders but {len(imgs)} images")
        pieces = [part for parts in split for part in parts if part]
        table = dict(zip(pieces, self.tokenize_segments(pieces), strict=True))
        result = []
        for parts, imgs in zip(split, images, strict=True):
            ids: list[int] = []
            types: list[int] = []
            for i, part in enumerate(parts):
                if part:
                    seg = table[part]
                    ids.extend(seg)
                    types.extend([0] * len(seg))
                if i < len(imgs):
                    n = self.num_image_tokens(imgs[i])
                    ids.extend([self.image_token_id] * n)
                    types.extend([1] * n)
            result.append((ids, types))
        return result

    def token_ids(self, prompt: str, images: Sequence[ImageFeatures | tuple[int, int, int]]
                  ) -> tuple[list[int], list[int]]:
        """Ids and mm_token_type_ids of one prompt whose ``<|image_pad|>`` markers stand for ``images``
        (processed images, or just their ``(t, h, w)`` grids)."""
        parts = prompt.split(IMAGE_PAD)
        if len(parts) - 1 != len(images):
            raise InputError(f"prompt has {len(parts) - 1} image placeholders but {len(images)} images")
        ids: list[int] = []
        types: list[int] = []
        for i, part in enumerate(parts):
            if part:
                seg = self.tokenize_segment(part)
                ids.extend(seg)
                types.extend([0] * len(seg))
            if i < len(images):
                n = self.num_image_tokens(images[i])
                ids.extend([self.image_token_id] * n)
                types.extend([1] * n)
        return ids, types

    def encode(self, prompts: Sequence[str], images: Sequence[Sequence[ImageFeatures]], *,
               max_length: int | None = None, append_token_id: int | None = None) -> EncodedBatch:
        """Build a left-padded batch. ``max_length`` truncates on the right (before ``append_token_id``,
        which is added to every sequence afterwards, as jina-reranker-m0's reference code does)."""
        seqs: list[list[int]] = []
        type_seqs: list[list[int]] = []
        for p, imgs in zip(prompts, images, strict=True):
            ids, types = self.token_ids(p, imgs)
            if max_length is not None and len(ids) > max_length:
                if any(types[max_length:]):
                    raise InputError(f"the prompt is {len(ids)} tokens and truncating it to {max_length} would "
                                     "cut through an image; raise max_length or lower max_pixels")
                ids, types = ids[:max_length], types[:max_length]
            if append_token_id is not None:
                ids = ids + [append_token_id]
                types = types + [0]
            seqs.append(ids)
            type_seqs.append(types)
        return self.pad(seqs, type_seqs, [f for imgs in images for f in imgs])

    def mrope_position_ids(self, type_seqs: list[list[int]], grids: list[list[tuple[int, int, int]]],
                           width: int) -> torch.Tensor:
        """Qwen2-VL's 3-D rotary positions ``(3, batch, width)`` for left-padded sequences, built on the host.

        Same values as the model's ``get_rope_index``: text tokens advance all three axes by one; an image
        of merged grid ``(t, h, w)`` starting at position ``p`` gets ``(p + t_i, p + h_i, p + w_i)`` and
        the text after it resumes at ``p + max(h, w)``; padding gets 0.
        """
        m = self.merge_size
        out = torch.zeros((3, len(type_seqs), width), dtype=torch.long)
        for r, (types, row_grids) in enumerate(zip(type_seqs, grids, strict=True)):
            n = len(types)
            start = width - n
            pieces: list[torch.Tensor] = []
            pos = 0
            img = 0
            i = 0
            while i < n:
                if types[i] == 0:
                    j = i
                    while j < n and types[j] == 0:
                        j += 1
                    pieces.append(torch.arange(pos, pos + (j - i)).view(1, -1).expand(3, -1))
                    pos += j - i
                    i = j
                else:
                    t, h, w = row_grids[img]
                    img += 1
                    gt, gh, gw = t, h // m, w // m
                    tt = torch.arange(gt).view(-1, 1, 1).expand(gt, gh, gw).flatten()
                    hh = torch.arange(gh).view(1, -1, 1).expand(gt, gh, gw).flatten()
                    ww = torch.arange(gw).view(1, 1, -1).expand(gt, gh, gw).flatten()
                    pieces.append(torch.stack([tt, hh, ww]) + pos)
                    pos += max(gh, gw)
                    i += gt * gh * gw
            if pieces:
                out[:, r, start:] = torch.cat(pieces, dim=1)
        return out

    def pad(self, seqs: list[list[int]], type_seqs: list[list[int]], flat_images: list[ImageFeatures]) -> EncodedBatch:
        width = max(len(s) for s in seqs)
        n = len(seqs)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        mm_types = torch.zeros((n, width), dtype=torch.long)
        for r, (s, t) in enumerate(zip(seqs, type_seqs, strict=True)):
            if s:
                input_ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
                attention[r, width - len(s):] = 1
                mm_types[r, width - len(t):] = torch.tensor(t, dtype=torch.long)
        inputs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention,
                                           "mm_token_type_ids": mm_types}
        if flat_images:
            inputs["pixel_values"] = torch.cat([f.pixel_values for f in flat_images], dim=0)
            inputs["image_grid_thw"] = torch.tensor([f.grid_thw for f in flat_images], dtype=torch.long)
        return EncodedBatch(inputs=inputs, lengths=[len(s) for s in seqs])


def _is_byte_level(tokenizer: Any) -> bool:
    """Whether a (fast) tokenizer is byte-level BPE (every token covers at least one byte)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        model = type(backend.model).__name__
        pre = str(backend.pre_tokenizer)
        return model == "BPE" and "ByteLevel" in pre
    except Exception:  # pragma: no cover - exotic tokenizers
        return False
