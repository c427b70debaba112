"""Pointwise scoring, jina-reranker-m0 compatible.

Each (query, document) pair is one sequence; the model's score head reads the final hidden state of the
last token. Every choice below reproduces the reference ``compute_score`` of jina-reranker-m0 (its Hugging
Face ``modeling.py``; vLLM's ``jina_vl.py`` does the same) — the comments name which:

* prompt, no chat template, document first:
  ``"**Document**:\\n" + doc + "\\n" + "**Query**:\\n" + query`` where an image is
  ``<|vision_start|><|image_pad|><|vision_end|>``                                     [formatting_prompts_func]
* a text document is cut to ``max_doc_length`` tokens (encode with truncation, and only when the limit was
  reached, decode back to text); ``max_doc_length`` defaults to
  ``max(max_length - max_query_length, max_query_length)``; the query is not cut by itself   [compute_score]
* the whole prompt is truncated on the right to ``max_length - 1`` tokens, then token id 100 is appended
  to every sequence and scored at position ``-1``                                    [compute_score]
* left padding                                                                      [relied on by [:, -1]]
* images resized between ``min_pixels=3136`` (56²) and ``max_pixels=602112`` (768·28²)   [_setup_processor]
* with an image query and an image document, the document's image comes first      [batch_images order]
* score = ``sigmoid(logit - 2.65)``, always                                          [LOGIT_BIAS]

Extensions beyond the reference (documented, opt-out where they could change numbers):

* documents of different kinds (text, image, text+image) may be mixed in one call; a text+image document
  is ``<image>\\n<text>`` inside the document slot;
* batches are formed from documents sorted by length (less padding; left padding makes the scores
  independent of the batch, up to float rounding) — ``sort_by_length=False`` keeps input order;
  ``max_batch_tokens`` fills batches by a token budget instead of a fixed count;
* rotary positions start at 0 at each sequence's first real token (the reference starts text-only rows
  at the padding count; RoPE is shift-invariant, so this changes scores only by float rounding and makes
  them independent of the batch a document lands in);
* images are not decoded up front: ``prepare`` reads each image's header (size, format, policy caps; under
  ``on_error="last"``), a batch's prompt length follows from the image size alone, so batches are formed
  before any pixel work, and a producer thread decodes, fingerprints and preprocesses the images of batch
  k+1 (in a pool) while the model runs batch k; the first batch waits only for its own images. An image
  that fails to decode there becomes its document's error (``finish``), the rest of the batch is scored.
  The decoded pixels of an image read from bytes are released once its batch is prepared (the bytes are
  kept), so a call holds a few batches' pixels at a time, not all of them;
* the vision tower runs through :class:`mmrank.models.features.VisionEncoder` (same computation as transformers',
  images of equal grid attended in one call), and its outputs are kept in an image-feature cache
  (:class:`mmrank.models.features.FeatureCache`, keyed by image content + pixel budget, bounded by bytes): a page
  that returns for another query skips preprocessing and the vision encoder; an image query is encoded
  once per call, not once per pair;
* text is tokenized once (one batched call for all pieces); a document shorter than ``max_doc_length``
  bytes/3 is not tokenized separately for the truncation check (byte-level BPE cannot exceed it).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from PIL import Image

from ..errors import ImageLoadError, InputError
from ..inputs.documents import Document, Query
from ..inputs.images import DEFAULT_POLICY, ImagePolicy
from ..models.batching import DeviceFeed, DocumentImage, ImageRef, Item, WorkerPool, plan_batches, prefetched
from ..models.features import DEFAULT_CACHE_BYTES, FeatureCache
from ..models.jina import SCORE_TOKEN_ID, JinaVLForRanking, logits_to_scores
from ..models.loading import guarded_load
from ..models.options import DEFAULT_POINTWISE_MODEL, MAX_PIXELS, MIN_PIXELS, LoadOptions, load_model
from ..models.processing import IMAGE_PAD, IMAGE_PLACEHOLDER, ImageFeatures, VisionTextProcessor, protect_text
from .base import OnError, PointwiseReranker

logger = logging.getLogger("mmrank")

DEFAULT_MODEL = DEFAULT_POINTWISE_MODEL


def jina_prompt(doc: str, query: str) -> str:
    """The reference prompt: document first, then query, no chat template."""
    return "**Document**:\n" + doc + "\n" + "**Query**:\n" + query


@dataclass(frozen=True)
class SpeedOptions:
    """How :class:`JinaRerankerM0` schedules its work; none of these change the scores beyond float rounding.

    Args:
        max_batch_tokens: when set, a batch holds as many pairs as fit in this many padded tokens (at most
            ``batch_size``); default None: ``batch_size`` pairs per batch, as the reference.
        sort_by_length: form batches from documents sorted by length (less padding); False keeps input order.
        prefetch: prepare batch k+1 (image fingerprints and preprocessing, padding, host-to-device copy) in a
            background thread while batch k runs (default True).
        feature_cache_bytes: bound of the image-feature cache (vision-encoder outputs keyed by image content
            and pixel budget; ``reranker.feature_cache.stats()``); 0 disables it. Default 512 MiB.
        compile_vision: ``torch.compile`` the vision blocks (GPU; compiles once on first use, ~20-40 s).
        compile_lm: ``torch.compile`` the decoder layers (GPU; compiles once on first use, ~20-40 s; one graph
            serves all layers and all batch shapes).
        gpu_preprocess: on CUDA, run the image processor on the GPU when it can (torchvision backend).
    """

    max_batch_tokens: int | None = None
    sort_by_length: bool = True
    prefetch: bool = True
    feature_cache_bytes: int = DEFAULT_CACHE_BYTES
    compile_vision: bool = False
    compile_lm: bool = False
    gpu_preprocess: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise InputError("max_batch_tokens must be >= 1 (or None)")
        if self.feature_cache_bytes < 0:
            raise InputError("feature_cache_bytes must be >= 0")


_SPEED_FIELDS = {f.name for f in fields(SpeedOptions)}


class JinaRerankerM0(PointwiseReranker):
    """jina-reranker-m0 (Qwen2-VL-2B + MLP score head): one relevance score in (0, 1) per document.

    Under ``on_error="last"`` document images are decoded by the scoring pipeline, batch by batch, while the
    model runs the batch before; :meth:`score_documents` gives NaN to a document whose image fails to
    decode there, and :meth:`finish` (so :meth:`rank`) reports it as that document's error.

    Args:
        model: model id on the Hugging Face hub or a local folder (default: the real checkpoint).
        batch_size: pairs per forward pass (reference default 8).
        max_length: token limit of a whole prompt (reference default 10240).
        max_query_length: token limit of the query (reference default 512).
        max_doc_length: token limit of a text document (reference default
            ``max(max_length - max_query_length, max_query_length)``).
        min_pixels: smallest image budget in pixels (reference 56²).
        max_pixels: largest image budget in pixels (reference 768·28²).
        load: :class:`~mmrank.models.options.LoadOptions` — device (default: CUDA if available), dtype
            (``"auto"``: bfloat16 on CUDA, float32 on CPU), attention implementation, load format
            (``"dummy"``: the real architecture with random weights, for benchmarks and smoke tests; scores
            mean nothing, and it says so), hub options, quantization, device map, extra ``from_pretrained``
            kwargs.
        speed: :class:`SpeedOptions` — token-budget batches, length sorting, prefetch, the image-feature
            cache, ``torch.compile``, GPU preprocessing.
        on_error: what to do with a document that cannot be read (see :class:`mmrank.Reranker`).
        image_policy: limits and sources allowed for images (see :class:`mmrank.Reranker`).
        show_progress: show a progress bar (see :class:`mmrank.Reranker`).
        image_workers: threads reading images (see :class:`mmrank.Reranker`).
        **options: any field of :class:`~mmrank.models.options.LoadOptions` or :class:`SpeedOptions` as a
            keyword (``device="cpu"``, ``dtype="float32"``, ``max_batch_tokens=4096``, ``prefetch=False``,
            ``feature_cache_bytes=0``, …); it overrides ``load`` / ``speed``.
    """

    streams_images = True

    def __init__(self, model: str | os.PathLike = DEFAULT_MODEL, *, batch_size: int = 8, max_length: int = 10240,
                 max_query_length: int = 512, max_doc_length: int | None = None, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS, load: LoadOptions | None = None, speed: SpeedOptions | None = None,
                 on_error: OnError = "last", image_policy: ImagePolicy = DEFAULT_POLICY,
                 show_progress: bool = False, image_workers: int = 4, **options: Any):
        super().__init__(on_error=on_error, image_policy=image_policy, show_progress=show_progress,
                         image_workers=image_workers)
        speed = replace(speed or SpeedOptions(), **{k: options.pop(k) for k in list(options) if k in _SPEED_FIELDS})
        load = LoadOptions.merge(load, also=sorted(_SPEED_FIELDS), **options)
        if batch_size < 1:
            raise InputError("batch_size must be >= 1")
        if max_doc_length is None:
            max_doc_length = max(max_length - max_query_length, max_query_length)  # reference default
        if max_doc_length < max_query_length:
            raise InputError("max_doc_length must be >= max_query_length (as in the reference)")
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.max_query_length = int(max_query_length)
        self.max_doc_length = int(max_doc_length)
        self.load_options = load
        self.speed = speed
        loaded = load_model(model, load, head="jina", what="jina-reranker-m0 scorer",
                            load=lambda path, kw: JinaVLForRanking.from_pretrained(path, **kw),
                            build_random=JinaVLForRanking)
        self.model = loaded.model
        self.model_name = "dummy:jina-reranker-m0" if loaded.name == f"dummy:{DEFAULT_MODEL}" else loaded.name
        self.is_dummy = loaded.is_dummy
        self.device, self.dtype = loaded.device, loaded.dtype
        self.model_path = loaded.path  # folder the tokenizer and image processor were read from
        self.processor = guarded_load(loaded.path, lambda: VisionTextProcessor.from_pretrained(
            loaded.path, min_pixels=min_pixels, max_pixels=max_pixels, **loaded.hub))
        # Scheduling knobs, read at every call (a benchmark may flip them between calls).
        self.sort_by_length = speed.sort_by_length
        self.max_batch_tokens = speed.max_batch_tokens
        self.prefetch = speed.prefetch
        #: Vision-encoder outputs by image content + pixel budget; ``feature_cache.stats()`` for hit counts.
        self.feature_cache = FeatureCache(speed.feature_cache_bytes)
        self.model.configure_fast_paths(compile_vision=speed.compile_vision, compile_lm=speed.compile_lm)
        self._pool = WorkerPool(self.image_workers)
        self._feed = DeviceFeed(self.device, self.dtype)
        self._call_local: dict = {}
        self._pinned_scheduled: set = set()
        # Image preprocessing on the GPU (side stream) when the processor can: frees the CPU and the GIL.
        self._gpu_preprocess = self.device.type == "cuda" and self.processor.supports_device and speed.gpu_preprocess

    # ------------------------------------------------------------------ preparation
    def _check_image_size(self, width: int, height: int) -> None:
        self.processor.resized_size(width, height)  # InputError for sizes the image processor refuses

    def _read_image(self, item: Document | Query) -> None:
        super()._read_image(item)
        _check_no_placeholder(item)

    def _peek_image(self, item: Document) -> None:
        super()._peek_image(item)
        _check_no_placeholder(item)


    def _doc_text(self, text: str, limit: int | None = None) -> str:
        # Reference: encode with truncation at max_doc_length; only if the limit was reached, decode.
        limit = self.max_doc_length if limit is None else limit
        bound = self.processor.max_tokens_bound(text)
        if bound is not None and bound < limit:
            return text  # cannot reach the limit: no need to tokenize it here (it is tokenized once, later)
        ids = self.processor.tokenize_segment(text) if len(text) < 4096 else \
            self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= limit:
            return self.processor.tokenizer.decode(ids[: max(0, limit)])
        return text

    def _image_ref(self, source: Image.Image | DocumentImage, size: tuple[int, int]) -> ImageRef:
        return ImageRef(source, self.processor.image_grid(*size), (self.processor.min_pixels, self.processor.max_pixels))

    def _plan(self, query: Query, documents: list[Document]) -> list[Item | None]:
        """Prompts, token ids and image grids of every pair — no image is processed here (its patch grid
        follows from its size), so the batches can be formed before any pixel work starts. ``None`` for a
        document whose image is known to be unreadable (its error stays on the document)."""
        query_ref = None
        if query.has_image:
            if query.has_text:
                raise InputError("jina-reranker-m0 takes a text query or an image query, not both")
            image = query.load_image(self.image_policy)
            query_ref = self._image_ref(image, image.size)
            query_ref.pinned = True  # the same image in every pair: encoded once per call
        # protect_text: a caller's "<|image_pad|>" stays the token the reference makes of it, never a slot
        query_part = IMAGE_PLACEHOLDER if query_ref is not None else protect_text(query.text or "")
        def prompt_of(d: Document, text_limit: int | None = None) -> str:
            if d.has_image:
                doc_part = IMAGE_PLACEHOLDER + ("\n" + protect_text(self._doc_text(d.text, text_limit))
                                                if d.has_text else "")
            else:
                doc_part = protect_text(self._doc_text(d.text or "", text_limit))
            return jina_prompt(doc_part, query_part)

        prompts, refs, live = [], [], []
        for k, d in enumerate(documents):
            images: list[ImageRef] = []
            if d.has_image:
                try:  # header size only: the pixels are decoded by the batch's producer
                    size = d.image_size(self.image_policy)
                except ImageLoadError:
                    continue  # failed earlier (e.g. a late decode failure of a document passed again)
                images.append(self._image_ref(DocumentImage(d, self.image_policy), size))
            live.append(k)
            if query_ref is not None:
                images.append(query_ref)  # reference order: document image first, then the query image
            prompts.append(prompt_of(d))
            refs.append(images)
        token_lists = self.processor.token_ids_many(prompts, [[r.grid for r in imgs] for imgs in refs])
        limit = self.max_length - 1  # reference: the processor gets max_length - 1, token 100 is appended
        items: list[Item | None] = [None] * len(documents)
        for k, (ids, tt), imgs in zip(live, token_lists, refs, strict=True):
            if len(ids) > limit and any(tt[limit:]):
                ids, tt = self._fit_text(documents[k], k, prompt_of, [r.grid for r in imgs], len(ids) - limit)
            if len(ids) > limit:
                ids, tt = ids[:limit], tt[:limit]
            items[k] = Item(ids + [SCORE_TOKEN_ID], tt + [0], imgs)
        return items

    def _fit_text(self, doc: Document, index: int, prompt_of, grids, excess: int) -> tuple[list[int], list[int]]:
        """A prompt whose right-truncation would cut through an image (an image query after a long text
        document): the reference fails there; cut the document's text by as many tokens instead, the way the
        reference cuts a document (encode, cut, decode). If that cannot help, the error names the document."""
        limit = self.max_length - 1
        if doc.has_text:
            n_text = len(self.processor.tokenize_segment(doc.text or "")) if len(doc.text or "") < 4096 else \
                len(self.processor.tokenizer(doc.text, add_special_tokens=False)["input_ids"])
            budget = min(n_text, self.max_doc_length)
            for _ in range(4):  # decode/encode may not round-trip exactly: a few tries at most
                budget -= excess
                if budget < 0:
                    break
                ids, tt = self.processor.token_ids(prompt_of(doc, budget), grids)
                if len(ids) <= limit or not any(tt[limit:]):
                    return ids, tt
                excess = max(1, len(ids) - limit)
        raise InputError(f"document {index}{' (id=' + repr(doc.id) + ')' if doc.id is not None else ''}: its prompt "
                         f"does not fit in max_length={self.max_length} tokens without cutting through an image; "
                         "raise max_length or lower max_pixels")

    def _batches(self, items: list[Item | None]) -> list[list[int]]:
        live = [k for k, it in enumerate(items) if it is not None]
        batches = plan_batches([len(items[k].ids) for k in live], self.batch_size,  # type: ignore[union-attr]
                               self.max_batch_tokens, self.sort_by_length)
        return [[live[j] for j in b] for b in batches]

    # ------------------------------------------------------------------ scoring
    def _score_documents(self, query: Query, documents: list[Document]) -> list[float]:
        items = self._plan(query, documents)
        batches = self._batches(items)
        scores: list[float] = [math.nan] * len(documents)  # NaN stays where an image failed to decode
        self._call_local = {}
        self._pinned_scheduled = set()
        try:
            prepared = prefetched(batches, lambda b: self._prepare_batch(items, b), enabled=self.prefetch)
            for prep in _progress(prepared, self.show_progress, "mmrank pointwise", total=len(batches)):
                if not prep.rows:
                    continue
                logits = self._forward_prepared(prep)
                for j, s in zip(prep.rows, logits_to_scores(logits).tolist(), strict=True):
                    scores[j] = float(s)
        finally:
            self._call_local = {}
            self._pinned_scheduled = set()
        return scores

    # ------------------------------------------------------------------ batch preparation (producer side)
    def _prepare_batch(self, items: list[Item], batch: list[int]) -> _Prepared:
        """Everything batch ``batch`` needs before the model runs: its images decoded and fingerprinted (a
        row whose image fails to decode is left out: its document's error is kept on the document), the
        images it must encode preprocessed; padded ids, host-built positions and image-token positions on the
        device."""
        keep = self._decoded_rows(items, batch)
        if not keep:
            return _Prepared({}, [], [], [], {}, keep)
        rows = [items[j] for j in keep]
        refs = [r for it in rows for r in it.images]
        need = self._images_to_encode(refs)
        feats = self._pool.map(self._process_image_on_device if self._gpu_preprocess else self._process_image,
                               need)
        for r in refs:
            if not r.pinned:
                r.release()  # the pixels are in feats (or the cache); the bytes stay on the document
        host = self._host_tensors(rows)
        pixels = lambda: torch.cat([f.pixel_values for f in feats], dim=0)  # noqa: E731
        if feats and not self._gpu_preprocess:
            host["pixel_values"] = pixels()
        inputs = self._feed.to_device(host)  # pinned, on the side stream on CUDA
        if feats and self._gpu_preprocess:
            self._feed.add_on_device(inputs, "pixel_values", pixels)
        return _Prepared(inputs, [r.key for r in refs], [r.key for r in need], [f.grid_thw for f in feats],
                         {r.key: r for r in refs}, keep)

    def _decoded_rows(self, items: list[Item], batch: list[int]) -> list[int]:
        """The rows of ``batch`` whose images are ready: keyed (a hash of the encoded bytes: no decoding) and,
        unless their features are already at hand (cache, this call), decoded — in the pool, each document's
        own image, so a failure lands on every document it concerns (``Document.image_error``, where
        :meth:`finish` finds it)."""
        distinct = list({id(r): r for j in batch for r in items[j].images}.values())

        def ready(r: ImageRef) -> bool:
            try:
                if not self._features_at_hand(r.ensure_key()):
                    r.image  # noqa: B018 - decode now, off the model's thread
            except ImageLoadError:
                return False
            return True

        ok = {id(r) for r, good in zip(distinct, self._pool.map(ready, distinct), strict=True) if good}
        return [j for j in batch if all(id(r) in ok for r in items[j].images)]

    def _features_at_hand(self, key: tuple) -> bool:
        return key in self._call_local or key in self._pinned_scheduled or key in self.feature_cache

    def _images_to_encode(self, refs: list[ImageRef]) -> list[ImageRef]:
        """The distinct images of a batch (keys computed) not yet encoded in this call, not scheduled by an
        earlier batch (a pinned query image) and not in the feature cache."""
        distinct = list({id(r): r for r in refs}.values())
        need: dict[Any, ImageRef] = {}
        for r in distinct:
            if r.key in need or self._features_at_hand(r.key):  # type: ignore[arg-type]
                continue
            if r.pinned:  # the consumer keeps it for the rest of the call (batches run in order)
                self._pinned_scheduled.add(r.key)
            need[r.key] = r
        return list(need.values())

    def _host_tensors(self, rows: list[Item]) -> dict[str, torch.Tensor]:
        """Padded ids and mask, M-RoPE positions and the flat positions of the image tokens (on the host)."""
        types = [it.types for it in rows]
        enc = self.processor.pad([it.ids for it in rows], types, [])
        width = enc.inputs["input_ids"].shape[1]
        positions = self.processor.mrope_position_ids(types, [[r.grid for r in it.images] for it in rows], width)
        image_rows = torch.nonzero(enc.inputs["mm_token_type_ids"].view(-1) == 1).view(-1)
        return {"input_ids": enc.inputs["input_ids"], "attention_mask": enc.inputs["attention_mask"],
                "position_ids": positions, "image_index": image_rows}

    def _process_image(self, ref: ImageRef) -> ImageFeatures:
        return _checked(ref, self.processor.image_features(ref.image))

    def _process_image_on_device(self, ref: ImageRef) -> ImageFeatures:
        """The image processor run on the GPU (torchvision backend), on the side stream, so the pixel work
        neither waits for nor blocks the model."""
        with torch.cuda.stream(self._feed.side_stream()):
            return _checked(ref, self.processor.image_features(ref.image, device=self.device))

    # ------------------------------------------------------------------ model (consumer side)
    @torch.inference_mode()
    def _forward_prepared(self, prep: _Prepared) -> torch.Tensor:
        inputs = prep.inputs
        self._feed.wait(inputs)
        slots = self._image_slots(prep)
        logits = self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            position_ids=inputs["position_ids"], image_embeds=slots or None,
                            image_index=inputs["image_index"])
        return logits.float().cpu()

    def _image_slots(self, prep: _Prepared) -> list[torch.Tensor]:
        """Vision features of every image slot of the batch, in order: encoded now (the batch's new images,
        stored in the feature cache), kept for the call (a pinned query image) or read from the cache.
        Stats: a lookup served by the cache is a hit; an image that had to be encoded is a miss."""
        encoded: dict[Any, torch.Tensor] = {}
        if prep.need_keys:
            embs = self.model.encode_images(prep.inputs["pixel_values"], prep.need_grids)
            for key, emb in zip(prep.need_keys, embs, strict=True):
                encoded[key] = emb
                if self.feature_cache.enabled:
                    self.feature_cache.put(key, emb.clone())
        slots: list[torch.Tensor] = []
        fresh = set(encoded)
        for key in prep.slot_keys:
            ref = prep.refs[key]
            emb = self._call_local.get(key)
            if emb is None:
                if key in fresh:
                    fresh.discard(key)
                    self.feature_cache.count_miss()
                    emb = encoded[key]
                else:
                    emb = self.feature_cache.get(key)
                if emb is None:
                    emb = encoded.get(key)
                if emb is None:  # evicted between preparation and use (or no cache): encode now
                    f = self._process_image(ref)
                    emb = self.model.encode_images(f.pixel_values.to(self.device), [f.grid_thw])[0]
                    encoded[key] = emb
                if ref.pinned:
                    self._call_local[key] = emb
            slots.append(emb)
        return slots

    @property
    def vision(self):
        """The model's vision encoder (what :meth:`JinaVLForRanking.encode_images` runs)."""
        return self.model.vision_encoder

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        self._pool.shutdown()
        self.feature_cache.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _checked(ref: ImageRef, feats: ImageFeatures) -> ImageFeatures:
    if tuple(feats.grid_thw) != tuple(ref.grid):
        raise RuntimeError(f"internal error: image of {ref.image.size} processed to grid {feats.grid_thw}, "
                           f"expected {ref.grid}")
    return feats


class _Prepared:
    __slots__ = ("inputs", "slot_keys", "need_keys", "need_grids", "refs", "rows")

    def __init__(self, inputs, slot_keys, need_keys, need_grids, refs, rows):
        self.inputs = inputs
        self.slot_keys = slot_keys
        self.need_keys = need_keys
        self.need_grids = need_grids
        self.refs = refs
        self.rows = rows  # positions (in the call's documents) of the batch's rows that are scored


def _check_no_placeholder(item: Document | Query) -> None:
    if item.text and IMAGE_PAD in item.text:
        # The reference cannot score it: its processor counts one more image slot than there are images.
        raise InputError(f"the text contains the image placeholder token {IMAGE_PAD} next to a real image; "
                         "jina-reranker-m0 cannot tell them apart — remove the token from the text")


def _progress(items, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="batch", total=total)
