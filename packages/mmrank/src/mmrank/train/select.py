"""``mmrank select``: the data curation of Rank-Nexus (section 3.4).

1. **Quality-aware filtering** — image–text cosine similarity from a CLIP-style dual encoder
   (``transformers``' ``CLIPModel`` or ``SiglipModel``, whichever the checkpoint is): a record is kept when
   the mean cosine between its query text and its teacher's top-``quality_top`` candidate images is at least
   ``min_similarity``. Records without images (or without query text) are not filtered by it.
2. **Teacher confidence** — keep the ``top_confidence`` records with the highest ``confidence`` (ties:
   input order).
3. **Greedy maximum diversity** (Algorithm 1) over one embedding per record (the mean of the normalised
   CLIP embeddings of its query text and candidate images/texts), down to ``k`` records.

:func:`greedy_max_diversity` keeps the sum ``v = Σ_{i∈S} ê_i`` of the selected unit vectors, so the average
cosine of a candidate to ``S`` is ``(ê_j · v) / |S|``: at most O(N·d) per step instead of O(N·|S|·d). Only
candidates get exact (float64) totals: a float16 screen of all items (one matrix–vector pass over a copy a
quarter the size of float64, with a proven error bound) names the items that can be lowest, and on clustered
data a pool of candidates often serves many steps without a screen. **Start and ties**: ``S`` starts with item
``start`` (default 0, Algorithm 1's ``v₁``); averages within 1e-9 of the lowest count as tied and the smallest
index wins.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .records import Record, RecordError

_TIE = 1e-9  # averages within this of the lowest tie; the smallest index wins
_POOL = 2048  # how many candidates' exact totals to keep between screens, when that can save a screen


def greedy_max_diversity(embeddings: Any, k: int, *, start: int = 0) -> list[int]:
    """Algorithm 1: indices of ``k`` items, in selection order. ``embeddings``: ``(N, d)`` array, tensor or
    nested list of finite numbers (need not be normalised; zero vectors count as orthogonal to everything).

    Each step adds the item with the lowest total ``ê_j · v`` (``v``: the sum of the selected unit vectors),
    computed in float64; totals within ``1e-9 · |S|`` of the lowest (averages within 1e-9) tie, and the
    smallest index wins. Only candidates get exact totals: a screen (:class:`_Screen`, one float16 pass)
    bounds every total with a proven error margin and names the items that can be lowest. When few items
    are near the lowest, the exact totals of a pool of them serve the next steps too, for as long as ``v``
    has moved too little for any item outside the pool to catch up (one selected unit vector changes a
    total by at most 1)."""
    x = _matrix(embeddings)
    n = x.shape[0]
    k, start = operator.index(k), operator.index(start)
    if not 0 <= k <= n:
        raise ValueError(f"k must be between 0 and the number of items ({n}), got {k}")
    if k == 0:
        return []
    if not 0 <= start < n:
        raise ValueError(f"start must index an item (0..{n - 1}), got {start}")
    screen = _Screen(x)
    v = screen.unit(start)
    taken = torch.zeros(n, dtype=torch.float64)         # +inf marks the selected items
    taken[start] = math.inf
    chosen, pool, rows, v0, floor = [start], None, None, v, -math.inf
    while len(chosen) < k:
        tol = _TIE * len(chosen)
        if pool is not None:                            # can an item outside the pool be lowest by now?
            exact = rows @ v + taken[pool]
            if not floor - float((v - v0).norm()) > float(exact.min()) + tol:
                pool = None
        if pool is None:
            pool, floor = screen(v, taken, tol, room=n - len(chosen))
            v0 = v.clone()
            if len(pool) <= screen.keep:
                rows = screen.unit(pool)
                exact = rows @ v
            else:                                       # mass ties: exact totals in blocks, for this step only
                rows = None
                exact = torch.cat([screen.unit(p) @ v for p in pool.split(screen.keep)])
        i = int(torch.nonzero(exact <= float(exact.min()) + tol)[0])   # the pool is in index order
        j = int(pool[i])
        chosen.append(j)
        v += screen.unit(j)
        taken[j] = math.inf
        if rows is None:
            pool = None
    return chosen


def _matrix(embeddings: Any) -> torch.Tensor:
    """``embeddings`` as a 2-d float32/float64 CPU tensor of finite numbers (nested lists read as float64)."""
    if isinstance(embeddings, (list, tuple)):
        embeddings = torch.as_tensor(embeddings, dtype=torch.float64)
    x = torch.as_tensor(embeddings)
    if x.is_complex() or x.dim() != 2:
        raise ValueError(f"embeddings must be a 2-d real array (N, d), got shape {tuple(x.shape)} ({x.dtype})")
    x = x.detach().cpu()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float64)
    if x.shape[1] == 0:                                 # no dimensions: every item is the zero vector
        x = x.new_zeros(x.shape[0], 1)
    bad = torch.nonzero(~torch.isfinite(x).all(dim=1))
    if len(bad):
        raise ValueError(f"embeddings row {int(bad[0])} is not finite (NaN or infinity)")
    return x


class _Screen:
    """The rows as float64 unit vectors on demand (:meth:`unit`), and the screen (:meth:`__call__`): every
    item's total from a float16 copy ``q_j`` of the centred unit vectors ``r_j = ê_j − μ`` (centring keeps
    clustered, all-positive embeddings precise) in one matrix–vector pass, a quarter of the bytes of the
    float64 vectors, with a proven bound on its error."""

    def __init__(self, x: torch.Tensor):
        n, d = x.shape
        self.x, self.keep = x, max(1, 2 ** 21 // d)    # rows per 16 MB of float64
        self.scale, self.length = torch.ones(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
        for c in range(0, n, self.keep):                # ê_j = (x_j / max|x_j|) / ‖x_j / max|x_j|‖, no overflow
            xc = x[c:c + self.keep].double()
            s = xc.abs().amax(dim=1)
            s[s == 0] = 1
            length = (xc / s[:, None]).norm(dim=1)
            length[length == 0] = 1
            self.scale[c:c + self.keep], self.length[c:c + self.keep] = s, length
        self.mu = self.unit(torch.arange(0, n, max(1, n // self.keep))).mean(0)
        # float16 relies on torch's CPU float16 matrix–vector product summing in float32 (it does unless the
        # reduced-precision mode is switched on); otherwise, or for very wide vectors, float32
        reduced = getattr(torch._C, "_get_cpu_allow_fp16_reduced_precision_reduction", lambda: True)()
        half = not reduced and d < 2 ** 20
        self.dtype = torch.float16 if half else torch.float32
        self.rel = 2.0 ** -10 if half else 2.0 ** -23   # twice the unit roundoff of the screen's results
        u = d * 2.0 ** -24                               # γ_d of a float32 sum of d products
        self.gamma = u / (1 - u) if u < 0.5 else 1e300
        self.q = torch.empty(n, d, dtype=self.dtype)
        self.err = self.size = 0.0                      # max ‖r_j − q_j‖ and max ‖q_j‖
        for c in range(0, n, self.keep):
            r = self.unit(slice(c, c + self.keep)) - self.mu
            qc = self.q[c:c + self.keep] = r.to(self.dtype)
            self.err = max(self.err, float((r - qc.double()).norm(dim=1).max()))
            self.size = max(self.size, float(qc.double().norm(dim=1).max()))

    def unit(self, rows: Any) -> torch.Tensor:
        return self.x[rows].double() / self.scale[rows, None] / self.length[rows, None]

    def __call__(self, v: torch.Tensor, taken: torch.Tensor, tol: float, room: int) -> tuple[torch.Tensor, float]:
        """The items (in index order) whose total ``ê_j · v`` can be within ``tol`` of the lowest, and ``floor``,
        a lower bound on the total of every other item. Adds the pool when few items are near the lowest."""
        big = float(v.abs().max())
        c = 2.0 ** math.ceil(math.log2(big)) if big > 0 else 1.0   # a power of two: w = v / c exactly, |w| ≤ 1
        w = v / c
        wq = w.to(self.dtype)
        # a_j = fl(q_j · wq) differs from r_j · w = (ê_j · v − μ · v) / c by at most b + rel·|a_j|:
        # ‖r_j − q_j‖‖w‖ + ‖q_j‖‖w − wq‖ (rounding r_j and w), + γ_d‖q_j‖‖wq‖ (summing the products in float32,
        # in any order; float16 products are exact in float32), + rel·|a_j| + 2⁻²⁴ (rounding the result to the
        # screen's type, subnormals included). b is doubled: the surplus covers the float64 rounding of these
        # bounds, of the comparisons made with them and of the exact totals.
        b = 2 * (self.err * float(w.norm()) + 2.0 ** -24
                 + self.size * (float((w - wq.double()).norm()) + self.gamma * float(wq.double().norm())))
        rel = self.rel

        def below(y: float) -> float:                   # the largest a with a − b − rel·|a| ≤ y (increasing in a)
            z = y + b
            return z / (1 - rel) if z >= 0 else z / (1 + rel)

        a = torch.add(torch.mv(self.q, wq), taken)      # float64, +inf for the selected items
        low = float(a.min())
        top = low + b + rel * abs(low)                  # ≥ (lowest total − μ · v) / c
        cut = below(top + tol / c)                      # a_j > cut: item j's total is above the lowest + tol
        target = min(_POOL, self.keep // 2)
        if room > target and int((a <= below(top + (1 + tol) / c)).sum()) <= target:
            cut = max(cut, float(torch.kthvalue(a, target).values))   # a pool that can outlast a step
        pool = torch.nonzero(a <= cut).squeeze(1)
        return pool, c * (cut - b - rel * abs(cut)) + float(self.mu @ v)


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
