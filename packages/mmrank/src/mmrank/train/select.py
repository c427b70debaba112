"""``mmrank select``: the data curation of Rank-Nexus (section 3.4).

1. **Quality-aware filtering** — image–text cosine similarity from a CLIP-style dual encoder
   (``transformers``' ``CLIPModel`` or ``SiglipModel``, whichever the checkpoint is): a record is kept when
   the mean cosine between its query text and its teacher's top-``quality_top`` candidate images is at least
   ``min_similarity``. Records without images (or without query text) are not filtered by it.
2. **Teacher confidence** — keep the ``top_confidence`` records with the highest ``confidence`` (ties:
   input order).
3. **Greedy maximum diversity** (Algorithm 1) over one embedding per record (the mean of the normalised
   CLIP embeddings of its query text and candidate images/texts), down to ``k`` records.

:func:`greedy_max_diversity` keeps a running sum ``Σ_{i∈S} ê_i`` of the selected unit vectors, so the
average cosine of every candidate to ``S`` is ``(ê_j · sum) / |S|``: one step costs O(N·d), the whole
selection O(k·N·d), instead of O(N·|S|·d) per step (in practice one streaming pass over the
embedding matrix per step, bound by memory bandwidth). **Start and ties**: ``S`` starts with item
``start`` (default 0, Algorithm 1's ``v₁``); when several candidates share the lowest average similarity
the one with the smallest index wins (``argmin``'s first-occurrence rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .records import Record, RecordError


def greedy_max_diversity(embeddings: Any, k: int, *, start: int = 0) -> list[int]:
    """Algorithm 1: indices of ``k`` items, in selection order. ``embeddings``: ``(N, d)`` array or tensor
    (need not be normalised; zero vectors count as orthogonal to everything)."""
    e = torch.as_tensor(embeddings, dtype=torch.float32)
    if e.dim() != 2:
        raise ValueError(f"embeddings must be a 2-d array (N, d), got shape {tuple(e.shape)}")
    n = e.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k must be between 0 and the number of items ({n}), got {k}")
    if k == 0:
        return []
    if not 0 <= start < n:
        raise ValueError(f"start must index an item (0..{n - 1}), got {start}")
    norms = e.norm(dim=1, keepdim=True)
    e = torch.where(norms > 0, e / norms.clamp_min(1e-12), torch.zeros_like(e))
    chosen = [start]
    # total[j] = Σ_{i∈S} cos(e_j, e_i), the running sum (the average is total / |S|, the same argmin);
    # selected items are set to +inf, which no later addition changes.
    total = torch.mv(e, e[start])
    total[start] = float("inf")
    for _ in range(1, k):
        j = int(torch.argmin(total))               # first minimum on ties
        chosen.append(j)
        total.addmv_(e, e[j])                      # one matrix–vector product per step: O(N·d)
        total[j] = float("inf")
    return chosen


class ClipEmbedder:
    """Image and text embeddings from a CLIP / SigLIP checkpoint through ``transformers``
    (``AutoModel`` + ``AutoProcessor``-free: tokenizer and image processor loaded separately)."""

    def __init__(self, model: str, *, device: Any = None):
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        from ..models.loading import guarded_load

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = guarded_load(model, lambda: AutoModel.from_pretrained(model)).to(self.device).eval()
        if not (hasattr(self.model, "get_text_features") and hasattr(self.model, "get_image_features")):
            raise ValueError(f"{model} is not a CLIP-style dual encoder (CLIPModel / SiglipModel)")
        self.tokenizer = guarded_load(model, lambda: AutoTokenizer.from_pretrained(model))
        self.image_processor = guarded_load(model, lambda: AutoImageProcessor.from_pretrained(model))
        self.siglip = "siglip" in type(self.model).__name__.lower()

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor:
        if isinstance(out, torch.Tensor):
            return out
        for name in ("text_embeds", "image_embeds", "pooler_output"):
            v = getattr(out, name, None)
            if isinstance(v, torch.Tensor):
                return v
        raise TypeError(f"unexpected embedding output {type(out).__name__}")

    @torch.inference_mode()
    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        limit = int(getattr(getattr(self.model.config, "text_config", None), "max_position_embeddings", 64) or 64)
        kw = {"padding": "max_length"} if self.siglip else {"padding": True}
        enc = self.tokenizer(list(texts), truncation=True, max_length=limit, return_tensors="pt", **kw).to(self.device)
        f = self._tensor(self.model.get_text_features(**enc)).float().cpu()
        return torch.nn.functional.normalize(f, dim=-1)

    @torch.inference_mode()
    def images(self, images: Sequence[Any]) -> torch.Tensor:
        enc = self.image_processor(images=list(images), return_tensors="pt").to(self.device)
        f = self._tensor(self.model.get_image_features(**enc)).float().cpu()
        return torch.nn.functional.normalize(f, dim=-1)


def record_embeddings(records: Sequence[Record], embedder: ClipEmbedder, *, quality_top: int = 1
                      ) -> tuple[torch.Tensor, list[float | None]]:
    """Per record: the diversity embedding (mean of its normalised parts) and the quality similarity
    (mean cosine of the query text with the teacher's top ``quality_top`` candidate images; None when the
    record has no such pair)."""
    embs, quality = [], []
    for r in records:
        try:
            emb, q = _record_embedding(r, embedder, quality_top)
        except (InputError, OSError) as exc:  # an image that cannot be read: name the record
            if isinstance(exc, RecordError):
                raise
            raise RecordError(f"{r.where}: {exc}") from exc
        embs.append(emb)
        quality.append(q)
    return torch.stack(embs), quality


def _record_embedding(r: Record, embedder: ClipEmbedder, quality_top: int) -> tuple[torch.Tensor, float | None]:
    """One record's diversity embedding and quality similarity (see :func:`record_embeddings`)."""
    parts = []
    q = embedder.texts([r.query_text]) if r.query_text else None
    if r.query_image is not None:
        parts.append(embedder.images([r.query().load_image()]))
    if q is not None:
        parts.append(q)
    docs = r.documents()
    images = [d.load_image() for d in docs if d.has_image]
    texts = [d.text for d in docs if d.has_text]
    img_emb = embedder.images(images) if images else None
    if img_emb is not None:
        parts.append(img_emb)
    if texts:
        parts.append(embedder.texts(texts))
    top = [i for i in r.teacher_permutation[:quality_top] if docs[i].has_image]
    quality = None
    if q is not None and top:
        ims = embedder.images([docs[i].load_image() for i in top])
        quality = float((ims @ q[0]).mean())
    return torch.cat(parts).mean(0), quality


def select_records(records: Sequence[Record], *, k: int | None = None, top_confidence: int | None = None,
                   min_similarity: float | None = None, embedder: ClipEmbedder | None = None,
                   quality_top: int = 1) -> list[Record]:
    """Filter by quality, keep the most confident, then pick ``k`` diverse records (Algorithm 1).
    Returns the records in selection order. ``embedder`` is needed for ``min_similarity`` and ``k``."""
    for name, v in (("k", k), ("top_confidence", top_confidence), ("quality_top", quality_top)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    items = list(records)
    emb = quality = None
    if (min_similarity is not None or k is not None) and items:
        if embedder is None:
            raise ValueError("quality filtering and diversity selection need a CLIP-style embedder (--clip-model)")
        emb, quality = record_embeddings(items, embedder, quality_top=quality_top)
    idx = list(range(len(items)))
    if min_similarity is not None:
        idx = [i for i in idx if quality[i] is None or quality[i] >= min_similarity]  # type: ignore[index]
    if top_confidence is not None:
        idx = sorted(sorted(idx, key=lambda i: -items[i].confidence)[:top_confidence])
    if k is not None and k < len(idx):
        sub = greedy_max_diversity(emb[idx], k)  # type: ignore[index]
        idx = [idx[j] for j in sub]
    return [items[i] for i in idx]


def select_file(records_path: str | Path, out: str | Path, **kw: Any) -> list[Record]:
    from .records import read_records, write_records

    chosen = select_records(read_records(records_path), **kw)
    write_records(out, chosen)
    return chosen
