"""Host side of the pointwise scorer on full-size pages: when does the first batch run (issue 15).

N document pages of 1700x2200 px (PNG files made by code, a scanned-letter size) are ranked by the tiny
random jina-reranker-m0 on the CPU, where the run is host-bound. Two systems, interleaved in one run:

* ``up-front``: every image decoded in ``prepare`` before any model work — the library's path before the
  streaming change, and still its path under ``on_error="raise"`` (which must see every error before
  scoring), so it is measured with ``on_error="raise"``;
* ``streaming`` (the default, ``on_error="last"``): ``prepare`` reads headers only; each batch's producer
  decodes its own images while the model runs the batch before.

Each system runs cold (feature cache cleared) and then warm (the same pages as new ``Document`` objects, for
another query). Printed per run: the time of ``prepare``, the time from the call's start to the first model
batch, the total, and the most decoded pages held at once (sampled after prepare, after each batch's
decoding and at each model batch).

    python benchmarks/bench_host_stream.py --n 100 --threads 1 --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "shared"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import torch  # noqa: E402
from mmrank import Document, JinaRerankerM0  # noqa: E402

SIZE = (1700, 2200)
WORDS = "revenue report quarter growth chart table figure section method result annual summary".split()


def make_pages(folder: Path, n: int) -> list[Path]:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"page{i:04d}.png"
        if not p.exists():
            rng = random.Random(i)
            img = Image.new("RGB", SIZE, "white")
            d = ImageDraw.Draw(img)
            y = 60
            while y < SIZE[1] - 80:
                if rng.random() < 0.1:
                    h = rng.randint(80, 300)
                    d.rectangle([80, y, rng.randint(600, 1600), y + h], outline="black",
                                fill=(rng.randint(120, 255), rng.randint(120, 255), rng.randint(120, 255)))
                    y += h + 20
                else:
                    d.text((80, y), f"{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))),
                           fill="black")
                    y += 22
            img.save(p, format="PNG")
        paths.append(p)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "mmrank-bench-pages-1700x2200"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t = time.perf_counter()
    paths = make_pages(Path(args.folder), args.n)
    print(f"{args.n} pages of {SIZE[0]}x{SIZE[1]} ready in {time.perf_counter() - t:.1f} s "
          f"({sum(p.stat().st_size for p in paths) / 1e6:.1f} MB)", flush=True)
    # no feature cache: every run encodes every page (cold), as a new set of pages would
    # the feature cache is cleared before every cold run; the warm run that follows ranks the same pages (new
    # Document objects, as a new request would make) for another query
    ranker = JinaRerankerM0("tiny", load_format="dummy", device="cpu", dtype="float32")
    first: list[float] = []
    held: list[int] = []
    docs: list[Document] = []
    real_forward, real_rows = ranker._forward_prepared, ranker._decoded_rows

    def pages_held() -> int:
        return sum(d._lazy is not None and d._lazy._image is not None for d in docs)

    def forward(prep):
        if not first:
            first.append(time.perf_counter())
        held.append(pages_held())
        return real_forward(prep)

    def decoded_rows(items, batch):
        out = real_rows(items, batch)
        held.append(pages_held())  # the producer, right after decoding a batch's images
        return out

    ranker._forward_prepared = forward  # type: ignore[method-assign]
    ranker._decoded_rows = decoded_rows  # type: ignore[method-assign]
    ranker.rank("warm-up", [Document(text="x")])
    rows = []
    for rep in range(args.reps):
        for system, on_error in (("up-front", "raise"), ("streaming", "last")):
            ranker.feature_cache.clear()
            for cache in ("cold", "warm"):
                first.clear()
                held.clear()
                docs[:] = [Document(image=p) for p in paths]  # fresh documents: nothing decoded or cached on them
                t0 = time.perf_counter()
                call = ranker.prepare(f"query {rep} {cache}", docs, on_error=on_error)
                t_prep = time.perf_counter()
                held.append(pages_held())
                ranking = ranker.rank_documents(call.query, call.readable_documents)
                out = ranker.finish(call, ranking)
                t_end = time.perf_counter()
                assert len(out) == args.n and all(r.error is None for r in out)
                row = {"system": system, "cache": cache, "rep": rep, "prepare_s": t_prep - t0,
                       "first_batch_s": first[0] - t0, "total_s": t_end - t0, "max_pages_held": max(held)}
                rows.append(row)
                print(f"run {rep} {system:>9} {cache}: prepare {row['prepare_s']:.2f} s, first batch starts at "
                      f"{row['first_batch_s']:.2f} s, total {row['total_s']:.2f} s, at most "
                      f"{row['max_pages_held']} decoded pages held", flush=True)
    result = {"n": args.n, "page": SIZE, "rows": rows, "threads": torch.get_num_threads(),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
