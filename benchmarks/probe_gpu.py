"""Where the GPU time of the full-size model goes: vision-tower and language-model variants, one table.

    python benchmarks/probe_gpu.py [--images 8] [--profile]

Vision tower on N pages of 3072 patches (768 visual tokens each): transformers' forward, mmrank's pass with
each SDPA backend, and mmrank's pass with ``torch.compile``'d blocks; language model (28 layers) on
8 x 790 tokens (an image batch) eager and compiled. Random weights and inputs (the cost does not depend
on the values). Prints images/s, tokens/s, achieved TFLOP/s and the max difference to the eager result.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from mmrank.models.features import VisionEncoder  # noqa: E402
from mmrank.scorers.pointwise import JinaRerankerM0  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from benchmarks.bench_rerank import lm_flops, vision_flops  # noqa: E402


def timed(fn, reps=5):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps, out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    dev = torch.device("cuda")
    r = JinaRerankerM0("jinaai/jina-reranker-m0", load_format="dummy", device=dev)
    vis = r.model.model.visual
    vcfg = r.model.config.vision_config
    grid = (1, 48, 64)
    n = args.images
    patches = 48 * 64
    pv = torch.randn(n * patches, 1176, device=dev, dtype=torch.bfloat16)
    grids = [grid] * n
    vf = vision_flops(vcfg, patches) * n
    rows = []
    hf = VisionEncoder(vis)
    hf.fast = False
    s, base = timed(lambda: hf.encode(pv, grids), 3)
    base = torch.cat(base)
    rows.append(("vision: transformers forward", s, vf, 0.0))
    fast = VisionEncoder(vis)
    for name, backend in [("default", None), ("flash", SDPBackend.FLASH_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        try:
            if backend is None:
                s, out = timed(lambda: fast.encode(pv, grids), 3)
            else:
                def run(backend=backend):
                    with sdpa_kernel([backend]):
                        return fast.encode(pv, grids)
                s, out = timed(run, 3)
            rows.append((f"vision: mmrank pass, sdpa {name}", s, vf, (torch.cat(out) - base).abs().max().item()))
        except Exception as exc:
            print(f"vision sdpa {name}: {type(exc).__name__}: {str(exc)[:200]}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fast.encode(pv, grids)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18))
    if not args.no_compile:
        for mode in ("default", "cudnn"):
            try:
                comp = VisionEncoder(vis, compile_blocks=True)
                t0 = time.perf_counter()
                if mode == "cudnn":
                    def run_c(comp=comp):
                        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
                            return comp.encode(pv, grids)
                else:
                    def run_c(comp=comp):
                        return comp.encode(pv, grids)
                run_c()
                torch.cuda.synchronize()
                ct = time.perf_counter() - t0
                s, out = timed(run_c, 3)
                rows.append((f"vision: mmrank pass compiled ({mode}; compile {ct:.0f}s)", s, vf,
                             (torch.cat(out) - base).abs().max().item()))
            except Exception as exc:
                print(f"vision compile {mode}: {type(exc).__name__}: {str(exc)[:300]}")
    # Language model on an image batch shape.
    lm = r.model.model.language_model
    b, L = 8, 790
    emb = torch.randn(b, L, 1536, device=dev, dtype=torch.bfloat16)
    mask = torch.ones(b, L, dtype=torch.long, device=dev)
    pos = torch.arange(L, device=dev).view(1, 1, L).expand(3, b, L)
    lf = lm_flops(r.model.config.text_config, L) * b
    with torch.inference_mode():
        s, ref = timed(lambda: lm(inputs_embeds=emb, attention_mask=mask, position_ids=pos).last_hidden_state, 5)
        rows.append(("lm: eager 8x790", s, lf, 0.0))
        mask2 = mask.clone()
        mask2[1:, :100] = 0  # left padding: the masked SDPA path
        s, _ = timed(lambda: lm(inputs_embeds=emb, attention_mask=mask2, position_ids=pos).last_hidden_state, 5)
        rows.append(("lm: eager 8x790 with padding mask", s, lf, float("nan")))
        if not args.no_compile:
            try:
                clm = torch.compile(lm, dynamic=True)
                t0 = time.perf_counter()
                clm(inputs_embeds=emb, attention_mask=mask, position_ids=pos)
                torch.cuda.synchronize()
                ct = time.perf_counter() - t0
                s, out = timed(lambda: clm(inputs_embeds=emb, attention_mask=mask, position_ids=pos).last_hidden_state, 5)
                rows.append((f"lm: compiled 8x790 (compile {ct:.0f}s)", s, lf, (out - ref).abs().max().item()))
                emb2 = torch.randn(12, 700, 1536, device=dev, dtype=torch.bfloat16)
                t0 = time.perf_counter()
                clm(inputs_embeds=emb2, attention_mask=torch.ones(12, 700, dtype=torch.long, device=dev),
                    position_ids=torch.arange(700, device=dev).view(1, 1, -1).expand(3, 12, 700))
                torch.cuda.synchronize()
                print(f"lm compiled: a second shape took {time.perf_counter() - t0:.1f} s (recompile?)")
            except Exception as exc:
                print(f"lm compile: {type(exc).__name__}: {str(exc)[:300]}")
    print(f"\n{'variant':<58} {'ms':>8} {'TFLOP/s':>8} {'max|diff|':>10}")
    for name, s, fl, d in rows:
        print(f"{name:<58} {s * 1e3:8.1f} {fl / s / 1e12:8.0f} {d:10.2e}")
    print(f"vision: {n} images -> images/s = {n}/ms*1000; LM tokens/s = {b * L}/ms*1000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
