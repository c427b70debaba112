"""Listwise generate mode at a realistic answer length: the cost of one 20-document window (issue 15).

Random weights never write a ranking, and left alone decode to ``max_new_tokens``. Here the model is made to
write a complete answer — a random permutation ``[7] > [3] > … > [12]`` of the window's 20 identifiers —
followed by chatter (as a talkative model would), by a logits processor that forces those tokens
(``mmrank_testkit.answers.ForceTokens``; every step still runs the model's full forward pass). Rows, each
on the same model and prompt:

* ``plain generate, exact answer length`` — transformers' ``generate`` (dynamic KV cache) decoding exactly
  the answer's tokens: the real cost of the window without any of our changes;
* ``plain generate, library budget`` — what mmrank did before: decoding to the budget (answer + 8 tokens);
* ``ours: stop at complete answer (dynamic cache)`` / ``(static cache)`` — the stopping criterion
  (``mmrank.ranking.completion.answer_complete``), the budget left as it is; the static cache is the
  library default;
* ``ours: B windows of B queries in one generate`` — windows of different queries decoded as one batch
  (per window: the batch's time / B);
* ``single pass (FIRST)`` — one forward pass per window, no decoding: the fast path.

    python benchmarks/bench_listwise_decode.py                      # tiny model, CPU
    python benchmarks/bench_listwise_decode.py --model full --words 4 --reps 1 --batch 0   # Qwen2-VL-2B shape

Prints one line per row and a JSON object (``--json PATH`` writes it).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
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
from mmrank.ranking.permutation import format_ranking, make_identifiers, parse_permutation  # noqa: E402
from mmrank_testkit.answers import ForceTokens  # noqa: E402
from transformers import LogitsProcessorList  # noqa: E402

WORDS = ("revenue report quarter panda forest market growth chart page figure table retrieval model image "
         "document query answer result value increase decrease share price annual").split()
CHATTER = " These passages are ranked by their relevance to the query, the most relevant first."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="dummy architecture: tiny, or full (Qwen2-VL-2B shape)")
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--words", type=int, default=25, help="words per passage")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4, help="windows of different queries per batch (0: skip)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed call (a big model on a CPU)")
    ap.add_argument("--skip-budget", action="store_true",
                    help="leave out the library-budget and dynamic-cache stop rows (a big model on a CPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = random.Random(0)
    queries = [f"which page reports the {w} growth?" for w in ("revenue", "market", "share", "price")]
    docsets = [[" ".join(rng.choice(WORDS) for _ in range(args.words)) for _ in range(args.window)]
               for _ in range(max(1, args.batch))]
    t0 = time.perf_counter()
    scorer = ListwiseReranker(args.model, load_format="dummy", device="cpu", dtype=args.dtype, mode="generate",
                              window_size=args.window)
    load_s = time.perf_counter() - t0
    vlm = scorer.vlm

    def window(k: int):
        conv, ids = scorer.window_conversation(queries[k % len(queries)], docsets[k])
        prompt = vlm.render(conv)
        order = ids[:]
        random.Random(k).shuffle(order)
        return prompt, conv.images, ids, format_ranking(order)

    prompt, images, ids, answer = window(0)
    inputs, _ = vlm.encode([prompt], [images])
    answer_len = len(vlm.token_ids(answer))
    forced = vlm.token_ids(answer + CHATTER)
    budget = len(vlm.token_ids(format_ranking(ids))) + 8  # the library's default budget

    def gen(n, stop=None, kv="dynamic", inp=inputs, seqs=None):
        proc = LogitsProcessorList([ForceTokens(seqs or forced)])
        return vlm.generate(inp, n, stop, kv_cache=kv, logits_processor=proc)

    rows = []

    def row(name, seconds, windows=1, text=None, note=""):
        per = seconds / windows
        rows.append({"system": name, "s_per_window": per, "windows": windows, "note": note,
                     "new_tokens": len(vlm.token_ids(text)) if text is not None else None})
        print(f"{name:66s} {per * 1000:9.1f} ms/window  {note}", flush=True)

    print(f"prompt {inputs['input_ids'].shape[1]} tokens, answer {answer_len} tokens, budget {budget}; "
          f"model {args.model} ({sum(p.numel() for p in vlm.model.parameters()) / 1e6:.1f} M params, "
          f"{args.dtype}), loaded in {load_s:.1f} s; torch threads {torch.get_num_threads()}", flush=True)
    stop = scorer._stop(prompt, ids)
    systems = [  # (name, fn, windows per call, expected answer(s))
        ("plain generate, exact answer length", lambda: gen(answer_len), 1),
        ("plain generate, library budget (answer + 8)", lambda: gen(budget), 1),
        ("ours: stop at complete answer (dynamic cache)", lambda: gen(budget, stop), 1),
        ("ours: stop at complete answer + static cache (default)", lambda: gen(budget, stop, "static"), 1),
    ]
    if args.batch > 1:
        ws = [window(k) for k in range(args.batch)]
        binp, _ = vlm.encode([w[0] for w in ws], [w[1] for w in ws])
        seqs = [vlm.token_ids(w[3] + CHATTER) for w in ws]
        stops = [scorer._stop(w[0], w[2]) for w in ws]
        systems.append((f"ours: {args.batch} windows of {args.batch} queries in one generate (static, stop)",
                        lambda: gen(budget, stops, "static", binp, seqs), args.batch))
    # the single-pass scorer shares the generate scorer's model (a second full-size model would double the
    # memory): same object, single-pass mode and its letter identifiers
    sp = copy.copy(scorer)
    sp.mode, sp.identifiers, sp._plans = "single_pass", "letters", {}
    sp.identifier_list = make_identifiers("letters", args.window)
    sp.first_token_plan(args.window)
    systems.append(("single pass (FIRST), whole rank call", lambda: sp.rank(queries[0], docsets[0]), 1))
    # Interleaved: every rep runs each system once, so a load change on a shared machine hits all of them.
    if args.skip_budget:
        systems = [x for x in systems if "budget" not in x[0] and "dynamic" not in x[0]]
    outs, times = {}, {name: [] for name, _, _ in systems}
    if not args.no_warmup:
        for name, fn, _ in systems:
            outs[name] = fn()  # untimed warm-up
    for _ in range(args.reps):
        for name, fn, _ in systems:
            t = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t)
            print(f"  {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    # what each system decoded: the stopped rows end at the answer; the parse is the full decode's
    full_parse = parse_permutation(answer + CHATTER, ids)
    for name, _fn, nwin in systems:
        if name.startswith("plain generate, exact"):
            assert outs[name][0] == answer
        elif name.startswith("ours") and nwin == 1:
            assert outs[name][0] == answer and parse_permutation(outs[name][0], ids) == full_parse
        elif name.startswith("ours"):
            assert [o.strip() for o in outs[name]] == [w[3] for w in ws]
    base = statistics.median(times[systems[0][0]])
    for name, _fn, nwin in systems:
        s = statistics.median(times[name])
        out = outs[name]
        text = out[0] if isinstance(out, list) and out and isinstance(out[0], str) else None
        row(name, s, nwin, text, note=f"{base / (s / nwin):.2f}x exact-length plain; runs "
            + ", ".join(f"{t / nwin * 1000:.0f}" for t in times[name]) + " ms")
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "load_avg": os.getloadavg()},
              "model": args.model, "dtype": args.dtype, "window": args.window, "words": args.words,
              "prompt_tokens": int(inputs["input_ids"].shape[1]), "answer_tokens": answer_len, "budget": budget,
              "reps": args.reps, "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
