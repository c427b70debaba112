"""CPU measurement: one 20-document listwise window, generation at a realistic answer length.

Random weights never write a ranking on their own, so a logits processor makes the model write a complete
answer (``[7] > [3] > … > [12]``, all 20 identifiers) and then keep writing text after it, as a chatty model
would. Three ways to decode that window are timed on the same model and prompt:

* ``budget``  — what mmrank did before: greedy decoding up to the library budget (tokens of a full ranking
  + 8), i.e. past the end of the ranking;
* ``stopped`` — the stopping criterion: decoding ends as soon as the permutation is complete;
* ``single_pass`` — FIRST: one forward pass, no decoding (the fast path), for reference.

Run: ``python benchmarks/cpu_listwise_stop.py [--model tiny] [--words 80] [--reps 5]``. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "shared"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import torch  # noqa: E402
from mmrank import ListwiseReranker  # noqa: E402
from mmrank.ranking.permutation import format_ranking  # noqa: E402
from mmrank.scorers.listwise import ranking_complete  # noqa: E402
from mmrank_testkit.forcing import ForceAnswer  # noqa: E402
from transformers import LogitsProcessorList  # noqa: E402

WORDS = ("revenue report quarter panda forest market growth chart page figure table retrieval model image "
         "document query answer result value increase decrease share price annual").split()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny", help="dummy size: tiny or full")
    ap.add_argument("--words", type=int, default=80, help="words per passage")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(args.words)) for _ in range(20)]
    query = "which page reports the quarterly revenue growth?"
    gen = ListwiseReranker(args.model, load_format="dummy", device="cpu", dtype="float32", mode="generate")
    conv, ids = gen.window_conversation(query, docs)
    vlm = gen.vlm
    inputs, _ = vlm.encode([vlm.render(conv)], [conv.images])
    order = ids[:]
    rng.shuffle(order)
    answer_text = format_ranking(order)
    answer = vlm.token_ids(answer_text + " These passages were ranked by relevance to the query, most relevant first.")
    answer_len = len(vlm.token_ids(answer_text))
    budget = len(vlm.token_ids(format_ranking(ids))) + 8  # the library's default budget
    force = LogitsProcessorList([ForceAnswer(inputs["input_ids"].shape[1], answer)])

    def run(stop):
        t0 = time.perf_counter()
        text = vlm.generate(inputs, budget, stop=stop, logits_processor=force)[0]
        return time.perf_counter() - t0, text

    stop = lambda t: ranking_complete(t, ids)  # noqa: E731
    run(None), run(stop)  # warm-up
    plain, stopped = [], []
    for _ in range(args.reps):  # interleaved, so load from other processes hits both alike
        plain.append(run(None))
        stopped.append(run(stop))
    assert stopped[0][1] == answer_text, stopped[0][1]
    sp = ListwiseReranker(args.model, load_format="dummy", device="cpu", dtype="float32", mode="single_pass")
    sp.rank(query, docs)
    single = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        sp.rank(query, docs)
        single.append(time.perf_counter() - t0)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
        "model": f"dummy {args.model} Qwen2-VL (random weights), float32",
        "prompt_tokens": int(inputs["input_ids"].shape[1]), "answer_tokens": answer_len, "budget_tokens": budget,
        "budget_s": med([t for t, _ in plain]), "stopped_s": med([t for t, _ in stopped]),
        "single_pass_s": med(single), "budget_text": plain[0][1][:80], "stopped_text": stopped[0][1][:80],
    }
    out["speedup_stopped_vs_budget"] = out["budget_s"] / out["stopped_s"]
    out["speedup_single_pass_vs_budget"] = out["budget_s"] / out["single_pass_s"]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
