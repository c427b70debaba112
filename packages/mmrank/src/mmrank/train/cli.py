"""``mmrank distill`` / ``mmrank select`` / ``mmrank train`` (registered by :func:`add_commands`).

    mmrank distill lists.jsonl -o records.jsonl --teacher-mode pointwise --teacher-model jinaai/jina-reranker-m0
    mmrank select records.jsonl -o selected.jsonl --top-confidence 4000 --k 2100 --clip-model openai/clip-vit-base-patch32
    mmrank train --model Qwen/Qwen2-VL-2B-Instruct --output runs/mine \\
        --stage text-listwise:listwise:text:selected.jsonl --stage mixed:listwise:any:selected.jsonl --val val.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from typing import Any

from ..cli import UsageError, _finite_float, _positive_int, check_device
from ..scorers.factory import MODES


def _positive_float(text: str) -> float:
    v = _finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def _non_negative_float(text: str) -> float:
    v = _finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def _window_size(text: str) -> int:
    v = _positive_int(text)
    if v < 2:
        raise argparse.ArgumentTypeError(f"a window ranks at least 2 documents, got {v}")
    return v


def _cosine(text: str) -> float:
    v = _finite_float(text)
    if not -1 <= v <= 1:
        raise argparse.ArgumentTypeError(f"a cosine similarity is between -1 and 1, got {text}")
    return v


def _output_file(path: str, source: str, flag: str = "-o/--output") -> None:
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a folder; give the JSONL file to write")
    if os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
        raise UsageError(f"{flag} {path!r} is the input file; write to another file")


def add_commands(sub: Any) -> None:
    """Add the three subcommands to the ``mmrank`` parser's subparsers."""
    d = sub.add_parser("distill", help="rank input lists with a teacher reranker and write distilled records")
    d.add_argument("lists", help="input lists (JSONL: query, candidates, optional labels)")
    d.add_argument("-o", "--output", required=True, help="records JSONL (appended to; reruns resume)")
    d.add_argument("--teacher-mode", default="pointwise", choices=MODES,
                   help="which mmrank scorer is the teacher (default: pointwise jina-reranker-m0)")
    d.add_argument("--teacher-model", default=None, help="teacher model id / folder (remote: served model name)")
    d.add_argument("--url", default=None, help="remote / chat teacher: API URL")
    d.add_argument("--device", default=None, help="local teachers: torch device (default: cuda if available, else cpu)")
    d.add_argument("--load-format", default="auto", choices=["auto", "dummy"],
                   help="dummy: the real architecture with random weights (smoke tests; its orderings mean nothing)")
    d.add_argument("--concurrency", type=_positive_int, default=1, help="lists in flight at once (remote teachers)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_distill)

    s = sub.add_parser("select", help="quality filter + confidence top-k + greedy max-diversity selection")
    s.add_argument("records", help="distilled records JSONL")
    s.add_argument("-o", "--output", required=True, help="selected records JSONL (written anew)")
    s.add_argument("--k", type=_positive_int, default=None, help="records to keep by diversity (Algorithm 1)")
    s.add_argument("--top-confidence", type=_positive_int, default=None,
                   help="keep the N most confident records first")
    s.add_argument("--min-similarity", type=_cosine, default=None,
                   help="CLIP cosine(query text, teacher's top image) threshold")
    s.add_argument("--clip-model", default=None, help="CLIP / SigLIP checkpoint (needed for --k/--min-similarity)")
    s.set_defaults(func=cmd_select)

    t = sub.add_parser("train", help="LoRA-train a listwise reranker through a curriculum of stages")
    t.add_argument("--model", required=True, help="base Qwen-VL instruct model (hub id or folder)")
    t.add_argument("--output", required=True, help="output folder (one subfolder per stage)")
    t.add_argument("--stage", action="append", required=True, metavar="NAME:KIND:MODALITY:RECORDS[:EPOCHS]",
                   help="a stage, in curriculum order; KIND listwise|pairwise, MODALITY any|text|image|mixed")
    t.add_argument("--val", default=None, help="validation lists with labels (early stopping on nDCG@10)")
    t.add_argument("--start-adapter", default=None, help="adapter to start the first stage from")
    t.add_argument("--lr", type=_positive_float, default=1e-5, help="learning rate (paper: 1e-5, cosine schedule, 3%% warm-up)")
    t.add_argument("--lora-r", type=_positive_int, default=8, help="LoRA rank (paper: 8)")
    t.add_argument("--lora-alpha", type=_positive_int, default=8, help="LoRA alpha (paper: 8)")
    t.add_argument("--modules-to-save", default=None, metavar="A,B",
                   help="modules trained in full besides LoRA, e.g. lm_head,embed_tokens (default: none)")
    t.add_argument("--batch-size", type=_positive_int, default=4, help="windows per device step (paper: 4)")
    t.add_argument("--grad-accum", type=_positive_int, default=4, help="gradient accumulation steps")
    t.add_argument("--max-steps", type=_positive_int, default=None, help="per stage (overrides epochs)")
    t.add_argument("--window-size", type=_window_size, default=20,
                   help="documents per training window; longer lists are cut into windows (RankGPT walk)")
    t.add_argument("--tau", type=_positive_float, default=0.1, help="Plackett-Luce temperature (paper: 0.1)")
    t.add_argument("--lm-weight", type=_non_negative_float, default=0.1,
                   help="weight of the language-modelling loss on the teacher's [] > [] answer (0: single-pass only)")
    t.add_argument("--load-in-8bit", action="store_true", help="QLoRA (CUDA + bitsandbytes)")
    t.add_argument("--no-gradient-checkpointing", action="store_true",
                   help="turn gradient checkpointing off (faster, more memory; tiny models)")
    t.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    t.add_argument("--merge", default=None, metavar="FOLDER",
                   help="also write the merged model here (a new folder, or one an earlier --merge wrote)")
    t.add_argument("--overwrite", action="store_true",
                   help="delete these stages' folders under --output first and train them afresh (default: a "
                        "rerun skips finished stages and resumes an interrupted one from its last checkpoint)")
    t.set_defaults(func=cmd_train)


def cmd_distill(args: argparse.Namespace) -> int:
    from ..scorers.factory import load_reranker
    from .distill import distill
    from .records import read_lists

    _output_file(args.output, args.lists)
    kw: dict[str, Any] = {}
    if args.teacher_mode in ("remote", "chat"):
        if args.url:
            kw["url"] = args.url
    else:
        check_device(args.device)
        kw["device"] = args.device
        if args.load_format != "auto":
            kw["load_format"] = args.load_format
    lists = read_lists(args.lists)  # every list checked before a teacher is loaded
    teacher = load_reranker(args.teacher_mode, args.teacher_model, **kw)
    out = distill(teacher, lists, args.output, concurrency=args.concurrency, show_progress=not args.quiet)
    print(f"mmrank distill: records in {out}", file=sys.stderr)
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from .records import read_records, write_records
    from .select import ClipEmbedder, select_records

    _output_file(args.output, args.records)
    if (args.k is not None or args.min_similarity is not None) and not args.clip_model:
        raise UsageError("--k and --min-similarity need --clip-model (a CLIP / SigLIP checkpoint)")
    records = read_records(args.records)  # every record checked before the CLIP model is loaded
    embedder = ClipEmbedder(args.clip_model) if args.clip_model else None
    chosen = select_records(records, k=args.k, top_confidence=args.top_confidence,
                            min_similarity=args.min_similarity, embedder=embedder)
    write_records(args.output, chosen)
    print(f"mmrank select: {len(chosen)} records in {args.output}", file=sys.stderr)
    return 0


def parse_stage(spec: str, val: str | None, max_steps: int) -> Any:
    """``NAME:KIND:MODALITY:RECORDS[:EPOCHS]``. RECORDS may itself hold ``:`` (a path is taken whole when such
    a file exists; otherwise a number after the last ``:`` is EPOCHS)."""
    from ..errors import InputError
    from .trainer import Stage

    parts = spec.split(":", 3)
    if len(parts) != 4 or not parts[3]:
        raise InputError(f"--stage {spec!r}: expected NAME:KIND:MODALITY:RECORDS[:EPOCHS]")
    name, kind, modality, records = parts
    epochs = 3.0
    head, sep, tail = records.rpartition(":")
    if sep and not os.path.exists(records):
        try:
            epochs = float(tail)
        except ValueError:
            raise InputError(f"--stage {spec!r}: {records!r} is not a file, and {tail!r} after its last ':' is "
                             "not a number of epochs") from None
        records = head
        if not math.isfinite(epochs) or epochs <= 0:
            raise InputError(f"--stage {spec!r}: epochs must be a number > 0, got {tail!r}")
    stage = Stage(name=name, kind=kind, train=records, val=val, modality=modality, epochs=epochs,
                  max_steps=max_steps)
    stage.check()
    return stage


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import TrainConfig, merge_adapter, train_curriculum

    check_device(args.device)
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UsageError(f"--output {args.output!r} is a file; give a folder (one subfolder per stage)")
    stages = [parse_stage(s, args.val, args.max_steps or -1) for s in args.stage]
    cfg = TrainConfig(model=args.model, output_dir=args.output, learning_rate=args.lr, lora_r=args.lora_r,
                      lora_alpha=args.lora_alpha, batch_size=args.batch_size, grad_accum=args.grad_accum,
                      window_size=args.window_size, tau=args.tau, lm_weight=args.lm_weight,
                      load_in_8bit=args.load_in_8bit, gradient_checkpointing=not args.no_gradient_checkpointing,
                      device=args.device,
                      modules_to_save=tuple(args.modules_to_save.split(",")) if args.modules_to_save else None)
    # stdout carries only the result line (a JSON object); the Trainer's progress logs go to stderr
    with contextlib.redirect_stdout(sys.stderr):
        adapter = train_curriculum(stages, cfg, start_adapter=args.start_adapter, overwrite=args.overwrite)
        result = {"adapter": str(adapter)}
        if args.merge:
            result["merged"] = str(merge_adapter(adapter, args.merge))
    print(json.dumps(result))
    return 0
