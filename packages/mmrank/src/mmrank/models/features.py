"""Image features: the vision tower run by mmrank itself, and a cache of its output.

Two things live here.

* :class:`FeatureCache` — a least-recently-used store of **vision-encoder outputs** (the merged visual
  tokens that replace ``<|image_pad|>`` in the language model's input), keyed by the image's content
  fingerprint and the pixel budget it was resized under. A page that comes back for another query skips
  the image preprocessing and the vision encoder. It is bounded by **bytes** (tensor storage, on
  whatever device the model runs), counts hits, misses and evictions (:meth:`FeatureCache.stats`), and is
  safe to share between threads.
* :class:`VisionEncoder` — runs a Qwen2-VL vision tower on a batch of preprocessed images. It computes
  exactly what ``Qwen2VisionTransformerPretrainedModel.forward`` computes (patch embedding, 2-D rotary
  embedding applied in float32, blocks of LayerNorm / attention / MLP, patch merger) but

  - attends over all images of the same patch grid in **one** batched attention call (transformers
    loops over the images one by one and reads the sequence lengths back from the GPU in every layer),
  - builds the rotary tables on the host once per grid size, so no step waits on the GPU,
  - can compile each block with ``torch.compile`` (fuses the norms, the float32 rotary and the
    activation; opt-in, GPU).

  If the tower is not laid out as expected (another transformers version, another family), it falls
  back to the tower's own ``forward``. Tests check it against that forward.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

#: Default bound of a scorer's feature cache (bytes of stored tensors).
DEFAULT_CACHE_BYTES = 512 * 1024 * 1024


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    max_bytes: int

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions, "entries": self.entries,
                "bytes": self.bytes, "max_bytes": self.max_bytes, "hit_rate": round(self.hit_rate, 4)}


class FeatureCache:
    """LRU cache of tensors bounded by total bytes; ``max_bytes=0`` disables it (every lookup misses)."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        """Presence test that does not count as a hit or a miss and does not refresh recency."""
        with self._lock:
            return key in self._data

    def get(self, key: Hashable) -> torch.Tensor | None:
        with self._lock:
            t = self._data.get(key)
            if t is None:
                self._misses += 1
                return None
            self._data.move_to_end(key)
            self._hits += 1
            return t

    def count_miss(self, n: int = 1) -> None:
        """Record a miss found without :meth:`get` (the caller knew the entry was absent)."""
        with self._lock:
            self._misses += n

    def put(self, key: Hashable, value: torch.Tensor) -> bool:
        """Store ``value`` (not copied: pass a tensor that owns its storage). Returns whether it was kept
        (an entry larger than the whole budget is not)."""
        size = tensor_bytes(value)
        if not self.enabled or size > self.max_bytes:
            return False
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= tensor_bytes(old)
            self._data[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, ev = self._data.popitem(last=False)
                self._bytes -= tensor_bytes(ev)
                self._evictions += 1
            return True

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def reset_stats(self) -> None:
        with self._lock:
            self._hits = self._misses = self._evictions = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, len(self._data), self._bytes,
                              self.max_bytes)


# ---------------------------------------------------------------------------------------------- vision tower
class VisionEncoder:
    """Runs a Qwen2-VL vision tower (``model.visual``) over preprocessed images.

    ``encode(pixel_values, grids)`` takes the processor's flattened patches of several images (concatenated
    in order) and their ``(t, h, w)`` grids, and returns one ``(tokens, hidden)`` tensor per image.
    """

    def __init__(self, visual: torch.nn.Module, *, compile_blocks: bool = False):
        self.visual = visual
        self.fast = _supports_fast_path(visual)
        cfg = visual.config
        self.merge = int(getattr(cfg, "spatial_merge_size", 2))
        if self.fast:
            self.num_heads = int(cfg.num_heads)
            self.head_dim = int(cfg.embed_dim) // self.num_heads
            theta = 10000.0
            rp = getattr(cfg, "rope_parameters", None) or {}
            if isinstance(rp, dict) and "rope_theta" in rp:
                theta = float(rp["rope_theta"])
            spatial = self.head_dim // 2
            self.inv_freq = 1.0 / (theta ** (torch.arange(0, spatial, 2, dtype=torch.float) / spatial))
        self._rope_cache: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._block_fn = _block_forward
        if compile_blocks and self.fast:
            self._block_fn = torch.compile(_block_forward, dynamic=True)

    @property
    def device(self) -> torch.device:
        return next(self.visual.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    def _rope(self, grid: tuple[int, int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables (patches, head_dim) of one grid, in the patch order of the image processor."""
        key = (*grid, )
        hit = self._rope_cache.get(key)
        if hit is not None and hit[0].device == torch.device(device):
            return hit
        t, h, w = grid
        m = self.merge
        hpos = torch.arange(h).view(h, 1).expand(h, w).reshape(h // m, m, w // m, m).transpose(1, 2).flatten()
        wpos = torch.arange(w).view(1, w).expand(h, w).reshape(h // m, m, w // m, m).transpose(1, 2).flatten()
        pos = torch.stack([hpos, wpos], dim=-1).repeat(t, 1)  # (patches, 2)
        freqs = pos[..., None].float() * self.inv_freq  # (patches, 2, head_dim/4)
        freqs = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)
        emb = torch.cat([freqs, freqs], dim=-1)
        out = (emb.cos().to(device), emb.sin().to(device))
        if len(self._rope_cache) > 64:
            self._rope_cache.clear()
        self._rope_cache[key] = out
        return out

    @torch.inference_mode()
    def encode(self, pixel_values: torch.Tensor, grids: Sequence[tuple[int, int, int]]) -> list[torch.Tensor]:
        grids = [tuple(int(x) for x in g) for g in grids]
        patches = [t * h * w for t, h, w in grids]
        tokens = [p // (self.merge ** 2) for p in patches]
        if not self.fast:
            grid_t = torch.tensor(grids, dtype=torch.long, device=pixel_values.device)
            out = self.visual(pixel_values.to(self.dtype), grid_thw=grid_t)
            merged = getattr(out, "pooler_output", out)
            if isinstance(merged, (tuple, list)):
                merged = torch.cat(list(merged), dim=0)
            return list(torch.split(merged, tokens))
        device = pixel_values.device
        # Attention runs per image; images with equal patch grids are attended in one batched call. Sort
        # the images so equal grids are adjacent; the original order is restored at the end.
        order = sorted(range(len(grids)), key=lambda i: (grids[i][1] * grids[i][2], grids[i]))
        starts = [0]
        for p in patches:
            starts.append(starts[-1] + p)
        if order != list(range(len(grids))):
            pixel_values = torch.cat([pixel_values[starts[i]:starts[i + 1]] for i in order], dim=0)
        groups: list[tuple[int, int, int]] = []  # (first row, frames, rows per frame)
        pos = 0
        for i in order:
            t, h, w = grids[i]
            if groups and groups[-1][2] == h * w and groups[-1][0] + groups[-1][1] * groups[-1][2] == pos:
                first, n, L = groups[-1]
                groups[-1] = (first, n + t, L)
            else:
                groups.append((pos, t, h * w))
            pos += t * h * w
        cos = torch.cat([self._rope(grids[i], device)[0] for i in order], dim=0)
        sin = torch.cat([self._rope(grids[i], device)[1] for i in order], dim=0)
        v = self.visual
        x = v.patch_embed(pixel_values.to(self.dtype))
        for blk in v.blocks:
            x = self._block_fn(blk, x, cos, sin, groups, self.num_heads, self.head_dim)
        merged = v.merger(x)
        sorted_tokens = [tokens[i] for i in order]
        pieces = list(torch.split(merged, sorted_tokens))
        out: list[torch.Tensor] = [None] * len(grids)  # type: ignore[list-item]
        for piece, i in zip(pieces, order, strict=True):
            out[i] = piece
        return out


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _block_forward(blk, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, groups, num_heads: int,
                   head_dim: int) -> torch.Tensor:
    n = x.shape[0]
    attn = blk.attn
    qkv = attn.qkv(blk.norm1(x)).view(n, 3, num_heads, head_dim)
    q, k, v = qkv.unbind(1)
    c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)
    qf, kf = q.float(), k.float()
    q = ((qf * c) + (_rotate_half(qf) * s)).to(x.dtype)
    k = ((kf * c) + (_rotate_half(kf) * s)).to(x.dtype)
    outs = []
    for first, frames, rows in groups:
        end = first + frames * rows
        qg, kg, vg = (t[first:end].view(frames, rows, num_heads, head_dim).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qg, kg, vg)
        outs.append(o.transpose(1, 2).reshape(frames * rows, num_heads * head_dim))
    o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
    x = x + attn.proj(o)
    return x + blk.mlp(blk.norm2(x))


def _supports_fast_path(visual: Any) -> bool:
    try:
        cfg = visual.config
        blk = visual.blocks[0]
        ok = (getattr(cfg, "model_type", "") in ("qwen2_vl", "qwen2_vl_vision") or
              type(visual).__name__ == "Qwen2VisionTransformerPretrainedModel")
        return bool(ok and hasattr(blk, "norm1") and hasattr(blk, "norm2") and hasattr(blk.attn, "qkv")
                    and hasattr(blk.attn, "proj") and hasattr(blk, "mlp") and hasattr(visual, "patch_embed")
                    and hasattr(visual, "merger") and int(cfg.temporal_patch_size) == 2
                    and int(cfg.embed_dim) % int(cfg.num_heads) == 0)
    except (AttributeError, IndexError, TypeError):
        return False
