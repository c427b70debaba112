"""Time greedy maximum-diversity selection (Algorithm 1, running sum): 4,000 of 100,000 512-d embeddings.

    nice -n 10 python benchmarks/select_diversity.py [--n 100000] [--k 4000] [--dim 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from mmrank.train.select import greedy_max_diversity


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=4_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    emb = torch.randn(args.n, args.dim, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    chosen = greedy_max_diversity(emb, args.k)
    dt = time.perf_counter() - t0
    assert len(set(chosen)) == args.k
    print(f"selected {args.k} of {args.n} {args.dim}-d embeddings in {dt:.2f} s "
          f"({dt / args.k * 1000:.2f} ms per step, {args.threads} threads)")


if __name__ == "__main__":
    main()
