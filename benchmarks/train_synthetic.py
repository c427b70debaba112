"""Longer / harder variants of the synthetic training task (tests/test_train_e2e.py is the short one).

    nice -n 10 python benchmarks/train_synthetic.py --query-colours red,blue --list-size 4 --steps 400

Distils the synthetic task with its oracle, trains one listwise stage on a tiny random Qwen2-VL (LoRA +
trainable embeddings / LM head, as the test) and prints held-out nDCG@10 before and after training.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from mmrank import ListwiseReranker  # noqa: E402
from mmrank.train.distill import distill  # noqa: E402
from mmrank.train.records import read_lists  # noqa: E402
from mmrank.train.trainer import Stage, TrainConfig, train_curriculum, validation_ndcg  # noqa: E402
from mmrank_testkit import tiny_model_dir  # noqa: E402
from mmrank_testkit.synthetic import make_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--query-colours", default="red")
    ap.add_argument("--list-size", type=int, default=3)
    ap.add_argument("--modality", default="text", choices=["text", "image", "mixed", "any"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="mmrank-train-bench-"))
    task = make_task(root / "task", n_train=max(200, args.steps * args.batch_size // 3), n_val=16, n_test=60,
                     list_size=args.list_size, modality=args.modality,
                     query_colours=tuple(args.query_colours.split(",")))
    distill(task.oracle(), task.train, root / "records.jsonl", show_progress=False)
    base = str(tiny_model_dir("lm"))
    test = read_lists(task.test)
    n = args.list_size
    before = validation_ndcg(ListwiseReranker(base, mode="single_pass", window_size=n, step=1, device="cpu"), test)
    cfg = TrainConfig(model=base, output_dir=str(root / "run"), lora_r=16, lora_alpha=16, learning_rate=args.lr,
                      lr_scheduler="constant", warmup_ratio=0.0, batch_size=args.batch_size, grad_accum=1,
                      modules_to_save=("lm_head", "embed_tokens"), gradient_checkpointing=False, device="cpu",
                      eval_steps=max(1, args.steps // 4), early_stopping_patience=None)
    t0 = time.perf_counter()
    adapter = train_curriculum([Stage("s", "listwise", train=str(root / "records.jsonl"), val=str(task.val),
                                      max_steps=args.steps)], cfg)
    dt = time.perf_counter() - t0
    after = validation_ndcg(ListwiseReranker(str(adapter), mode="single_pass", window_size=n, step=1,
                                             device="cpu"), test)
    print(f"query colours {args.query_colours}, {n} per list, {args.modality}: held-out nDCG@10 "
          f"{before:.3f} -> {after:.3f} after {args.steps} steps ({dt:.0f} s, {args.threads} thread(s))")


if __name__ == "__main__":
    main()
