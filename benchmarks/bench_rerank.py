"""Speed of mmrank's scorers against jina-reranker-m0's reference algorithm, on the same inputs, in one run.

    python benchmarks/bench_rerank.py                       # GPU if present (full-size model), else CPU (tiny)
    python benchmarks/bench_rerank.py --device cpu --n 32   # quick CPU run
    python benchmarks/bench_rerank.py --throughput          # also: plain LM tokens/s and vision images/s

Systems, all on one model object (identical weights; the reference wraps the very same modules):

* ``reference`` — jina-reranker-m0's ``compute_score`` as its model card runs it (shared/mmrank_testkit/reference_jina.py):
  plain transformers forward, fixed batches of 8 in input order, padding to the longest, the real
  ``Qwen2VLProcessor``; a mixed workload is two calls (text documents, image documents), as that API takes
  one document type per call;
* ``ours:*`` — mmrank's pointwise scorer (``JinaRerankerM0.score``), one row per speed step, each step
  adding to the previous one (cold image-feature cache), then the library defaults, then a warm cache
  (the same pages for another query);
* ``listwise:*`` — mmrank's listwise scorer (generative and single-pass), when ``mmrank.scorers.listwise`` exists.

Workloads: ``text`` (N documents of ~500 tokens), ``image`` (N document pages at the maximum pixel budget:
896x672 = 768 visual tokens, PNG files read from disk), ``mixed`` (half each). On a GPU the model is the
full-size Qwen2-VL-2B architecture with **random weights** — the cost of a forward pass does not depend on
the weight values, so the timings hold for the real checkpoint; the scores mean nothing. On a CPU the tiny
test architecture is used (the timings then measure the Python and preprocessing overheads, not a model).

The compute bound is the FLOPs the model must do for the workload (vision encoder and language model,
counted from the config and the exact token counts, causal attention counted once) divided by the GPU's
bf16 matrix-multiply rate (measured here; the datasheet figure is printed too).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "shared"):  # the test kit holds the reference restatement
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import torch  # noqa: E402
from mmrank import Document  # noqa: E402
from mmrank.scorers.pointwise import JinaRerankerM0  # noqa: E402
from mmrank_testkit.reference_jina import ReferenceJinaM0  # noqa: E402

DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
PAGE_SIZE = (896, 672)  # 896*672 = 602112 px = 768 * 28 * 28: exactly the maximum budget, 768 visual tokens
WORDS = ("retrieval ranking model page chart table revenue quarter growth figure section method result "
         "dataset query passage document image vision language token score relevance benchmark latency "
         "throughput memory cache batch encoder decoder layer attention head report summary annual").split()


# ---------------------------------------------------------------------------------------------- workloads
def make_text_docs(tokenizer, n: int, seed: int = 0, lo: int = 450, hi: int = 550) -> list[str]:
    """n documents whose token counts (with the model's tokenizer) are spread over [lo, hi]."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        target = rng.randint(lo, hi)
        words = [rng.choice(WORDS) for _ in range(target * 2)]
        words[0] = f"Document {i}."
        a, b = 1, len(words)
        while a < b:  # fewest words reaching the target token count
            m = (a + b) // 2
            if len(tokenizer(" ".join(words[:m]), add_special_tokens=False)["input_ids"]) >= target:
                b = m
            else:
                a = m + 1
        docs.append(" ".join(words[:a]))
    return docs


def make_pages(folder: Path, n: int, seed: int = 0, prefix: str = "page") -> list[Path]:
    """n distinct document-page screenshots (PNG) of PAGE_SIZE, text and boxes on white."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = Image.new("RGB", PAGE_SIZE, "white")
        d = ImageDraw.Draw(img)
        d.text((40, 30), f"{prefix} {i}: quarterly report", fill="black")
        y = 70
        while y < PAGE_SIZE[1] - 40:
            if rng.random() < 0.15:
                h = rng.randint(40, 120)
                d.rectangle([40, y, rng.randint(300, 850), y + h], outline="black",
                            fill=(rng.randint(150, 255), rng.randint(150, 255), rng.randint(150, 255)))
                y += h + 10
            else:
                d.text((40, y), " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))), fill="black")
                y += 16
        p = folder / f"{prefix}{i:04d}.png"
        img.save(p, format="PNG")
        paths.append(p)
    return paths


class Workload:
    def __init__(self, name: str, docs: list[tuple[str, Any]]):
        self.name = name
        self.docs = docs  # ("text", str) | ("image", Path)

    def __len__(self) -> int:
        return len(self.docs)

    def mm_documents(self) -> list[Document]:
        return [Document(text=x) if kind == "text" else Document(image=x) for kind, x in self.docs]


# ---------------------------------------------------------------------------------------------- FLOPs
def vision_flops(vcfg, patches: int) -> float:
    e = int(vcfg.embed_dim)
    m = int(e * float(vcfg.mlp_ratio))
    depth = int(vcfg.depth)
    merge = int(vcfg.spatial_merge_size) ** 2
    patch_dim = int(vcfg.in_channels) * int(vcfg.temporal_patch_size) * int(vcfg.patch_size) ** 2
    linear = 2.0 * patches * (patch_dim * e + depth * (e * 3 * e + e * e + 2 * e * m))
    attention = depth * 4.0 * patches * patches * e  # QK^T and AV over the image's patches
    tokens = patches // merge
    merger = 2.0 * tokens * ((merge * e) ** 2 + merge * e * int(vcfg.hidden_size))
    return linear + attention + merger


def lm_flops(tcfg, length: int) -> float:
    h = int(tcfg.hidden_size)
    inter = int(tcfg.intermediate_size)
    layers = int(tcfg.num_hidden_layers)
    heads = int(tcfg.num_attention_heads)
    kv = int(tcfg.num_key_value_heads)
    hd = h // heads
    per_token = 2.0 * (h * h + 2 * h * kv * hd + h * h + 3 * h * inter)
    attention = 2.0 * length * length * h  # causal: half of 4·L²·h
    head = 2.0 * (h * h + h)
    return layers * (length * per_token + attention) + head


def workload_flops(ranker: JinaRerankerM0, workload: Workload, query: str) -> dict[str, float]:
    """FLOPs the model must do to score the workload (exact token counts of mmrank's plan, no padding)."""
    docs = workload.mm_documents()
    for d in docs:
        if d.has_image:
            d.load_image(ranker.image_policy)
    from mmrank.inputs.documents import Query

    items = [it for it in ranker._plan(Query(text=query), docs) if it is not None]
    cfg = ranker.model.config
    vis = sum(vision_flops(cfg.vision_config, r.grid[0] * r.grid[1] * r.grid[2]) for it in items for r in it.images)
    lm = sum(lm_flops(cfg.text_config, len(it.ids)) for it in items)
    return {"vision": vis, "lm": lm, "total": vis + lm, "tokens": float(sum(len(it.ids) for it in items))}


# ---------------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device, repeat: int, warmup: int = 1) -> dict[str, Any]:
    """Median wall time of ``repeat`` calls after ``warmup`` untimed calls on the same inputs (first calls
    with new shapes pay one-off costs: allocator growth, kernel selection, lazy initialisation)."""
    for _ in range(warmup):
        fn()
    times, result = [], None
    peak = 0
    for _ in range(repeat):
        gc.collect()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if device.type == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated(device))
    if device.type != "cuda":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process maximum (CPU)
    return {"seconds": statistics.median(times), "all_seconds": times, "peak_bytes": peak, "result": result}


def matmul_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 20
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    sync(device)
    ms = start.elapsed_time(end) / reps
    del a, b
    return 2 * n ** 3 / (ms / 1e3) / 1e12


def datasheet_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for k, v in DATASHEET_BF16_TFLOPS.items():
        if k in name:
            return v
    return None


# ---------------------------------------------------------------------------------------------- systems
def reference_call(ref: ReferenceJinaM0, workload: Workload, query: str, batch_size: int) -> Callable[[], list]:
    def run():
        texts = [(i, x) for i, (k, x) in enumerate(workload.docs) if k == "text"]
        images = [(i, str(x)) for i, (k, x) in enumerate(workload.docs) if k == "image"]
        scores: list[float] = [0.0] * len(workload)
        for kind, part in (("text", texts), ("image", images)):
            if part:
                got = ref.compute_score([(query, x) for _, x in part], query_type="text", doc_type=kind,
                                        batch_size=batch_size)
                for (i, _), s in zip(part, got, strict=True):
                    scores[i] = s
        return scores
    return run


def ours_call(ranker: JinaRerankerM0, workload: Workload, query: str, *, clear_cache: bool) -> Callable[[], list]:
    def run():
        if clear_cache:
            ranker.feature_cache.clear()
        return ranker.score(query, workload.mm_documents())
    return run


# (name, settings): each step keeps the previous ones.
def ours_steps(args) -> list[tuple[str, dict[str, Any]]]:
    steps = [
        ("ours:1 plain (input order, HF vision forward, no overlap)",
         dict(sort_by_length=False, fast_vision=False, prefetch=False, gpu_preprocess=False, batch_size=8,
              max_batch_tokens=None, compile=False)),
        ("ours:2 +length-sorted batches", dict(sort_by_length=True)),
        ("ours:3 +own vision pass (grid-batched attention)", dict(fast_vision=True)),
        ("ours:4 +prefetch thread (preprocessing overlapped)", dict(prefetch=True)),
        ("ours:5 +preprocessing on the GPU side stream", dict(gpu_preprocess=True)),
        (f"ours:6 +token-budget batches ({args.max_batch_tokens} tok, <= {args.big_batch})",
         dict(max_batch_tokens=args.max_batch_tokens, batch_size=args.big_batch)),
    ]
    if args.compile:
        steps.append(("ours:7 +torch.compile (vision blocks, decoder layers)", dict(compile=True)))
    return steps


class Settings:
    """Switches the speed steps on one JinaRerankerM0 (compiled variants are built once and reused)."""

    def __init__(self, ranker: JinaRerankerM0):
        self.ranker = ranker
        self.eager_vision = ranker.vision
        self.fast_capable = ranker.vision.fast
        self._compiled = None

    def apply(self, settings: dict[str, Any]) -> None:
        r = self.ranker
        for k, v in settings.items():
            if k == "fast_vision":
                self.eager_vision.fast = bool(v) and self.fast_capable
            elif k == "gpu_preprocess":
                r._gpu_preprocess = bool(v) and r.device.type == "cuda" and r.processor.supports_device
            elif k == "compile":
                if v:
                    if self._compiled is None:
                        from mmrank.models.features import VisionEncoder
                        from mmrank.models.jina import decoder_layer

                        self._compiled = (VisionEncoder(r.model.model.visual, compile_blocks=True),
                                          torch.compile(decoder_layer, dynamic=True))
                    r.model.configure_fast_paths(vision_encoder=self._compiled[0], decoder_layer_fn=self._compiled[1])
                else:
                    r.model.configure_fast_paths(vision_encoder=self.eager_vision)
            else:
                setattr(r, k, v)


def listwise_systems(args, device) -> list[tuple[str, Any]]:
    try:
        import mmrank.scorers.listwise  # noqa: F401
    except ImportError as exc:
        print(f"note: mmrank.scorers.listwise is not available ({exc}); listwise rows skipped")
        return []
    try:
        from mmrank import ListwiseReranker

        model = "tiny" if args.size == "tiny" else "Qwen/Qwen2-VL-2B-Instruct"
        out = []
        gen = ListwiseReranker(model, load_format="dummy", device=device, mode="generate",
                               image_workers=args.image_workers)
        out.append(("listwise:generate (random weights: decodes to max_new_tokens)", gen))
        single = ListwiseReranker(model, load_format="dummy", device=device, mode="single_pass",
                                  image_workers=args.image_workers)
        single.vlm.model = gen.vlm.model  # one set of weights on the device
        out.append(("listwise:single_pass (FIRST)", single))
        return out
    except Exception as exc:  # the listwise API is another engineer's: report, don't fail the run
        print(f"note: listwise scorer could not be set up for the benchmark ({type(exc).__name__}: {exc}); skipped")
        return []


# ---------------------------------------------------------------------------------------------- throughput
def plain_throughput(ranker: JinaRerankerM0, device: torch.device, quick: bool) -> dict[str, Any]:
    """Tokens/s of the language model and images/s of the vision encoder, with random inputs."""
    from mmrank.models.features import VisionEncoder

    out: dict[str, Any] = {}
    lm = ranker.model.model.language_model
    vocab = ranker.model.config.text_config.vocab_size

    def timed(fn, reps):
        fn()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        return (time.perf_counter() - t0) / reps

    shapes = [(4, 128)] if quick else [(8, 512), (16, 512), (32, 512), (8, 1024), (16, 1024)]
    for b, L in shapes:
        ids = torch.randint(0, min(vocab, 5000), (b, L), device=device)
        with torch.inference_mode():
            s = timed(lambda ids=ids: lm(input_ids=ids, use_cache=False), 3 if quick else 5)
        out[f"lm_tokens_per_s@{b}x{L}"] = round(b * L / s)
    vcfg = ranker.model.config.vision_config
    grid = (1, PAGE_SIZE[1] // 14, PAGE_SIZE[0] // 14)
    patches = grid[1] * grid[2]
    patch_dim = int(vcfg.in_channels) * int(vcfg.temporal_patch_size) * int(vcfg.patch_size) ** 2
    for nimg in ([2] if quick else [8, 16]):
        pv = torch.randn(nimg * patches, patch_dim, device=device, dtype=ranker.dtype)
        grids = [grid] * nimg
        hf = VisionEncoder(ranker.model.model.visual)
        hf.fast = False
        fast = VisionEncoder(ranker.model.model.visual)
        s_hf = timed(lambda hf=hf, pv=pv, grids=grids: hf.encode(pv, grids), 2 if quick else 3)
        s_fast = timed(lambda fast=fast, pv=pv, grids=grids: fast.encode(pv, grids), 2 if quick else 3)
        out[f"vision_images_per_s@{nimg}_hf_forward"] = round(nimg / s_hf, 2)
        out[f"vision_images_per_s@{nimg}_mmrank"] = round(nimg / s_fast, 2)
        flops = vision_flops(vcfg, patches)
        out[f"vision_tflops@{nimg}_mmrank"] = round(flops * nimg / s_fast / 1e12, 1)
    tcfg = ranker.model.config.text_config
    key = "lm_tokens_per_s@16x512" if not quick else "lm_tokens_per_s@4x128"
    L = 512 if not quick else 128
    out["lm_tflops@" + key.split("@")[1]] = round(out[key] * lm_flops(tcfg, L) / L / 1e12, 1)
    return out


# ---------------------------------------------------------------------------------------------- main
def fmt_bytes(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if present), cuda, cpu")
    p.add_argument("--size", default="auto", choices=["auto", "tiny", "full"],
                   help="model architecture: full Qwen2-VL-2B (GPU default) or tiny (CPU default)")
    p.add_argument("--n", type=int, default=100, help="documents per workload")
    p.add_argument("--workloads", default="text,image,mixed")
    p.add_argument("--repeat", type=int, default=2, help="timed runs per system (median reported)")
    p.add_argument("--batch-size", type=int, default=8, help="reference batch size (and ours by default)")
    p.add_argument("--max-batch-tokens", type=int, default=16384)
    p.add_argument("--big-batch", type=int, default=64, help="batch cap with the token budget")
    p.add_argument("--image-workers", type=int, default=min(8, os.cpu_count() or 2))
    p.add_argument("--compile", action="store_true",
                   help="also measure torch.compile'd vision blocks and decoder layers (GPU; compiles ~1 min)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: skip the listwise rows when the run has already taken longer")
    p.add_argument("--no-steps", action="store_true", help="skip the step-by-step rows (keep reference, defaults, "
                   "tuned, warm)")
    p.add_argument("--throughput", action="store_true", help="also measure plain LM tokens/s, vision images/s")
    p.add_argument("--no-listwise", action="store_true", help="skip the listwise rows")
    p.add_argument("--json", default=None, help="write results here (default benchmarks/results/bench-<dev>.json)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (few documents, 1 repeat)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeat = min(args.n, 12), 1

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.size == "auto":
        args.size = "full" if device.type == "cuda" else "tiny"
    torch.manual_seed(0)
    t_start = t0 = time.perf_counter()
    ranker = JinaRerankerM0("tiny" if args.size == "tiny" else "jinaai/jina-reranker-m0", load_format="dummy",
                            device=device, dtype="auto", batch_size=args.batch_size, image_workers=args.image_workers)
    ref = ReferenceJinaM0.sharing(ranker)
    build_s = time.perf_counter() - t0
    cfg = ranker.model.config
    print(f"model: {'Qwen2-VL-2B (full size)' if args.size == 'full' else 'tiny Qwen2-VL'} + jina score head, "
          f"RANDOM WEIGHTS ({sum(p.numel() for p in ranker.model.parameters()) / 1e9:.2f} B parameters, "
          f"{ranker.dtype}, built in {build_s:.1f} s). The cost of a forward pass does not depend on the weight "
          f"values; the scores mean nothing. "
          + ("The timings hold for the real checkpoint." if args.size == "full" else
             "This tiny architecture is not the real one: its timings measure preprocessing and framework "
             "overheads, not the cost of jina-reranker-m0."))
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}"
          f"; torch {torch.__version__}; transformers {__import__('transformers').__version__}; "
          f"attention: {cfg._attn_implementation}; both sides share one model object.")

    peak = matmul_peak_tflops(device)
    sheet = datasheet_tflops(device)
    if peak:
        print(f"bf16 matmul peak measured: {peak:.0f} TFLOP/s (datasheet dense bf16: {sheet or '?'} TFLOP/s)")

    tmp = Path(tempfile.mkdtemp(prefix="mmrank-bench-"))
    tok = ranker.processor.tokenizer
    n = args.n
    text_docs = make_text_docs(tok, n, seed=1)
    pages = make_pages(tmp / "pages", n, seed=2)
    mixed = [("text", text_docs[i]) if i % 2 == 0 else ("image", pages[i]) for i in range(n)]
    all_workloads = {
        "text": Workload("text", [("text", t) for t in text_docs]),
        "image": Workload("image", [("image", p) for p in pages]),
        "mixed": Workload("mixed", mixed),
    }
    workloads = [all_workloads[w] for w in args.workloads.split(",") if w]
    query = "which page reports the quarterly revenue growth of the retrieval benchmark?"
    query2 = "what is the latency and memory of the vision encoder?"

    results: list[dict[str, Any]] = []
    bounds: dict[str, Any] = {}
    ref_seconds: dict[str, float] = {}
    sw = Settings(ranker)
    ctx = dict(args=args, device=device, ranker=ranker, ref=ref, sw=sw, query=query, query2=query2, peak=peak,
               results=results)
    for w in workloads:
        bounds[w.name], ref_seconds[w.name] = run_workload(w, **ctx)
        write_json(args, device, ranker, peak, sheet, bounds, results, None)

    if args.time_budget and time.perf_counter() - t_start > args.time_budget:
        print(f"note: {time.perf_counter() - t_start:.0f} s elapsed > --time-budget: listwise rows skipped")
        args.no_listwise = True
    if not args.no_listwise:
        systems = listwise_systems(args, device)
        for w in workloads:
            if not systems:
                break
            print(f"\n== listwise, workload {w.name} ({len(w)} documents; 1 timed run, no warm-up) ==", flush=True)
            for name, lw in systems:
                try:
                    m = measure(lambda lw=lw, w=w: lw.rank(query, w.mm_documents()), device, 1, warmup=0)
                except Exception as exc:
                    print(f"note: {name} failed on {w.name}: {type(exc).__name__}: {exc}")
                    continue
                m.pop("result")
                r = {"workload": w.name, "system": name, "docs": len(w), "seconds": m["seconds"],
                     "all_seconds": m["all_seconds"], "docs_per_s": len(w) / m["seconds"],
                     "peak_bytes": m["peak_bytes"], "speedup_vs_reference": ref_seconds[w.name] / m["seconds"],
                     "x_compute_bound": None}
                results.append(r)
                _print_row(r)
        write_json(args, device, ranker, peak, sheet, bounds, results, None)

    throughput = None
    if args.throughput:
        try:
            throughput = plain_throughput(ranker, device, args.quick)
        except Exception as exc:
            print(f"note: throughput measurement failed: {type(exc).__name__}: {exc}")
    if throughput:
        print("\n== plain throughput (random inputs) ==")
        for k, v in throughput.items():
            print(f"  {k}: {v}")

    print("\n" + summary_table(results, bounds))
    path = write_json(args, device, ranker, peak, sheet, bounds, results, throughput)
    print(f"\nwrote {path}")
    return 0


def run_workload(w: Workload, *, args, device, ranker, ref, sw: Settings, query, query2, peak, results) -> tuple[dict[str, Any], float]:
    print(f"\n== workload {w.name}: {len(w)} documents ==", flush=True)
    fl = workload_flops(ranker, w, query)
    bound_s = fl["total"] / (peak * 1e12) if peak else None
    sheet = datasheet_tflops(device)
    bound = {"flops": fl, "bound_seconds_measured_peak": bound_s,
             "bound_seconds_datasheet": fl["total"] / (sheet * 1e12) if sheet else None}
    if bound_s:
        print(f"compute bound: {fl['total'] / 1e12:.1f} TFLOP (vision {fl['vision'] / 1e12:.1f}, LM "
              f"{fl['lm'] / 1e12:.1f}; {int(fl['tokens'])} LM tokens) -> {bound_s * 1e3:.0f} ms at the measured "
              f"{peak:.0f} TFLOP/s = {len(w) / bound_s:.0f} docs/s")
    m_ref = measure(reference_call(ref, w, query, args.batch_size), device, args.repeat)
    ref_scores = m_ref.pop("result")

    def record(name, m, **extra):
        results.append({"workload": w.name, "system": name, "docs": len(w), "seconds": m["seconds"],
                        "all_seconds": m["all_seconds"], "docs_per_s": len(w) / m["seconds"],
                        "peak_bytes": m["peak_bytes"], "speedup_vs_reference": m_ref["seconds"] / m["seconds"],
                        "x_compute_bound": (m["seconds"] / bound_s) if bound_s else None, **extra})
        _print_row(results[-1])

    record("reference (model card compute_score, batch 8)", m_ref, max_abs_score_diff=0.0)

    def ours_row(name: str, settings: dict[str, Any], *, warm: bool = False) -> None:
        try:
            sw.apply(settings)
            if warm:  # the same pages come back for another query
                ranker.feature_cache.clear()
                ranker.score(query, w.mm_documents())
                ranker.feature_cache.reset_stats()
                m = measure(ours_call(ranker, w, query2, clear_cache=False), device, args.repeat)
                m.pop("result")
                st = ranker.feature_cache.stats().as_dict()
                record(name, m, cache=st)
                return
            m = measure(ours_call(ranker, w, query, clear_cache=True), device, args.repeat)
        except Exception as exc:  # keep the other rows
            import traceback

            traceback.print_exc()
            print(f"note: {name!r} failed: {type(exc).__name__}: {exc}")
            return
        scores = m.pop("result")
        record(name, m, max_abs_score_diff=max(abs(a - b) for a, b in zip(scores, ref_scores, strict=True)))

    if not args.no_steps:
        for name, settings in ours_steps(args):
            ours_row(name, settings)
    defaults = dict(sort_by_length=True, fast_vision=True, prefetch=True, gpu_preprocess=True,
                    batch_size=args.batch_size, max_batch_tokens=None, compile=False)
    tuned = dict(defaults, max_batch_tokens=args.max_batch_tokens, batch_size=args.big_batch, compile=args.compile)
    tuned_name = "token budget" + (" + compile" if args.compile else "")
    ours_row("ours: library defaults, cold cache", defaults)
    ours_row(f"ours: tuned ({tuned_name}), cold cache", tuned)
    ours_row("ours: library defaults, warm cache (same pages, new query)", defaults, warm=True)
    ours_row(f"ours: tuned ({tuned_name}), warm cache", tuned, warm=True)
    sw.apply(defaults)
    return bound, m_ref["seconds"]


def write_json(args, device, ranker, peak, sheet, bounds, results, throughput) -> Path:
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "model_size": args.size,
        "dtype": str(ranker.dtype), "random_weights": True, "n": args.n, "repeat": args.repeat,
        "batch_size": args.batch_size, "image_workers": args.image_workers,
        "matmul_peak_tflops": peak, "datasheet_tflops": sheet, "bounds": bounds, "results": results,
        "throughput": throughput,
        "note": "random weights: the cost of a forward pass does not depend on weight values",
    }
    path = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"bench-{out['device'].replace(' ', '_')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    return path


def _print_row(r: dict[str, Any]) -> None:
    bound = f"{r['x_compute_bound']:.2f}x bound" if r.get("x_compute_bound") else ""
    diff = f"max|dscore| {r['max_abs_score_diff']:.1e}" if r.get("max_abs_score_diff") is not None else ""
    cache = f"cache {r['cache']['hits']}h/{r['cache']['misses']}m" if r.get("cache") else ""
    print(f"  {r['system']:<62} {r['docs_per_s']:8.1f} docs/s {r['seconds'] * 1e3:9.0f} ms/query "
          f"{fmt_bytes(r['peak_bytes']):>10}  x{r['speedup_vs_reference']:.2f} vs ref  {bound} {diff} {cache}",
          flush=True)


def summary_table(results: list[dict[str, Any]], bounds: dict[str, Any]) -> str:
    lines = ["| workload | system | docs/s | ms/query | peak mem | vs reference | x compute bound |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        xb = f"{r['x_compute_bound']:.2f}" if r.get("x_compute_bound") else "-"
        lines.append(f"| {r['workload']} | {r['system']} | {r['docs_per_s']:.1f} | {r['seconds'] * 1e3:.0f} | "
                     f"{fmt_bytes(r['peak_bytes'])} | {r['speedup_vs_reference']:.2f}x | {xb} |")
    for name, b in bounds.items():
        if b.get("bound_seconds_measured_peak"):
            lines.append(f"\ncompute bound {name}: {b['flops']['total'] / 1e12:.1f} TFLOP -> "
                         f"{b['bound_seconds_measured_peak'] * 1e3:.0f} ms (measured peak), "
                         f"{(b['bound_seconds_datasheet'] or 0) * 1e3:.0f} ms (datasheet)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
