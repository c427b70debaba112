"""Time greedy maximum-diversity selection (Algorithm 1): 4,000 of 100,000 512-d embeddings.

    nice -n 10 python benchmarks/select_diversity.py [--n 100000] [--k 4000] [--dim 512] [--threads 2]
        [--data isotropic clustered] [--repeat 1] [--compare]

Two data sets: ``isotropic`` (i.i.d. Gaussian: cosines around 0, the worst case for any pruning) and
``clustered`` (anisotropic, CLIP-like: a power-law spectrum, 200 clusters of uneven size around a common mean,
pairwise cosines all positive, median ~0.67). ``--compare`` also times the float32 running sum that
``greedy_max_diversity`` used before (one full matrix–vector product per step), interleaved with the current
one, and checks their choices: at the first step where they differ it prints both picks' float64 average
similarity, so it shows which of the two took the lowest.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from mmrank.train.select import greedy_max_diversity


def isotropic(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def clustered(n: int, d: int, seed: int = 0, clusters: int = 200) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    spectrum = (torch.arange(d, dtype=torch.float32) + 1) ** -0.5
    centres = (torch.randn(d, generator=g) + 0.6 * torch.randn(clusters, d, generator=g)) * spectrum
    sizes = torch.exp(1.5 * torch.randn(clusters, generator=g))
    members = torch.multinomial(sizes, n, replacement=True, generator=g)
    return centres[members] + 0.4 * torch.randn(n, d, generator=g) * spectrum


def running_sum_float32(embeddings: torch.Tensor, k: int, start: int = 0) -> list[int]:
    """The previous implementation: float32 running totals, one ``addmv_`` over all items per step."""
    e = embeddings.float()
    norms = e.norm(dim=1, keepdim=True)
    e = torch.where(norms > 0, e / norms.clamp_min(1e-12), torch.zeros_like(e))
    chosen = [start]
    total = torch.mv(e, e[start])
    total[start] = float("inf")
    for _ in range(1, k):
        j = int(torch.argmin(total))
        chosen.append(j)
        total.addmv_(e, e[j])
        total[j] = float("inf")
    return chosen


def first_difference(emb: torch.Tensor, a: list[int], b: list[int]) -> str:
    step = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
    if step is None:
        return "same choices"
    u = torch.nn.functional.normalize(emb[a[:step]].double(), dim=1).sum(0)
    avg = [float(torch.nn.functional.normalize(emb[[j]].double(), dim=1)[0] @ u) / step for j in (a[step], b[step])]
    return (f"choices differ from step {step + 1} on: previous took {a[step]} (float64 average {avg[0]:.9f}), "
            f"current took {b[step]} (float64 average {avg[1]:.9f})")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=4_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", nargs="+", choices=("isotropic", "clustered"), default=["isotropic", "clustered"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--compare", action="store_true", help="also time the previous float32 running sum")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.data:
        emb = {"isotropic": isotropic, "clustered": clustered}[name](args.n, args.dim)
        runs = [("current", greedy_max_diversity)] + ([("previous", running_sum_float32)] if args.compare else [])
        for r in range(args.repeat):
            chosen = {}
            for label, fn in runs if r % 2 == 0 else runs[::-1]:  # alternate the order: shared, drifting load
                before = load()
                t0 = time.perf_counter()
                chosen[label] = fn(emb, args.k)
                dt = time.perf_counter() - t0
                assert len(set(chosen[label])) == args.k
                print(f"{name:9s} {label:8s} selected {args.k} of {args.n} {args.dim}-d embeddings in {dt:6.2f} s "
                      f"({dt / args.k * 1000:.2f} ms per step, {args.threads} threads; {before} -> {load()})",
                      flush=True)
            if args.compare:
                print(f"{name:9s} {first_difference(emb, chosen['previous'], chosen['current'])}", flush=True)


if __name__ == "__main__":
    main()
