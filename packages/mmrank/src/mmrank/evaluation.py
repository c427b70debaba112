"""Retrieval quality of a run against relevance judgements: ``mmrank eval``.

    mmrank eval --qrels qrels.tsv --run run.json --metrics ndcg@10,recall@100,mrr@10
    mmrank eval --qrels qrels.trec --run a.trec --run b.trec --json

Metrics (``name@k``; without ``@k`` the whole ranking counts):

* ``ndcg@k`` — normalised discounted cumulative gain, ``DCG = Σ gain(rel_i) / log2(i + 1)`` over the top k,
  divided by the DCG of the ideal ordering of the judged documents. Gain is **linear** by default
  (``gain = rel``, as trec_eval / pytrec_eval and BEIR report); ``--gain exponential`` uses ``2**rel - 1``
  (Burges et al.; identical for binary judgements). Relevance ≤ 0 gives no gain.
* ``recall@k`` — relevant documents in the top k / all relevant documents of the query.
* ``mrr@k`` — reciprocal rank of the first relevant document within the top k (0 if none).
* ``map`` / ``map@k`` — average precision (the sum of precision at each relevant document retrieved within
  the top k, divided by the number of relevant documents).
* ``p@k`` — precision at k (relevant in the top k / k).

Conventions are trec_eval's, so numbers match published ones (the test suite checks them against
pytrec_eval): a document is relevant when its judgement is ≥ 1 (``--relevance-level``); a run is ordered by
score, descending, **ties broken by document id, descending** (trec_eval's rule; the rank column of a TREC
run file is ignored; like trec_eval, scores are compared in single precision, so scores that differ only
beyond float32 precision are ties); unjudged documents are not relevant; a query judged but with no relevant document
scores 0; the mean is taken over the queries present in both the qrels and the run — ``--complete``
averages over every judged query instead, a query missing from the run scoring 0 (trec_eval ``-c``). Queries
in one file but not the other are counted and reported.

Input formats (detected from the content; ``.json`` files are JSON):

* qrels — TREC (``qid iter docid rel``, whitespace separated), BEIR / ViDoRe TSV (header
  ``query-id corpus-id score``, tab separated), or JSON ``{qid: {docid: rel}}``;
* run — TREC (``qid Q0 docid rank score tag``), a three-column ``qid docid score`` file (header optional),
  or JSON ``{qid: {docid: score}}`` (what BEIR and ``mmrank`` pipelines write).

Comparing runs (``--run A --run B ...``): the first run is the baseline; every other run gets, per metric, its
mean difference from the baseline over the queries both rank (``Δ``), the number of queries it helps / hurts,
and with ``--significance`` a two-sided paired test over those per-query differences:

* ``randomization`` (built in) — the sign-flip permutation test (Fisher; Smucker et al., CIKM 2007): exact
  over all 2^n sign patterns for n ≤ 16 queries, else ``--trials`` random ones (seeded, so repeatable);
  p = (patterns with |mean| ≥ observed) / patterns (the Monte Carlo estimate counts the observed one).
* ``ttest`` — the paired Student t-test, ``scipy.stats.ttest_rel`` (scipy is optional: ``pip install scipy``
  or ``mmrank[eval]``).

``--per-query-deltas`` lists every query's values and differences.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]

METRICS = ("ndcg", "recall", "mrr", "map", "p")
GAINS = ("linear", "exponential")


# ---------------------------------------------------------------------------------------------- metrics spec
@dataclass(frozen=True)
class Metric:
    name: str  # one of METRICS
    k: int | None  # cutoff; None = the whole ranking

    @property
    def label(self) -> str:
        return self.name if self.k is None else f"{self.name}@{self.k}"

    @classmethod
    def parse(cls, text: str) -> Metric:
        raw = text.strip().lower()
        name, _, k = raw.partition("@")
        name = {"precision": "p", "p": "p", "mrr": "mrr", "rr": "mrr", "ndcg": "ndcg", "recall": "recall",
                "map": "map", "ap": "map"}.get(name, name)
        if name not in METRICS:
            raise InputError(f"unknown metric {text!r}; use ndcg@k, recall@k, mrr@k, map, map@k or p@k")
        if not k:
            if name in ("recall", "p"):
                raise InputError(f"{name} needs a cutoff: {name}@k")
            return cls(name, None)
        if not k.isdigit() or int(k) < 1:
            raise InputError(f"bad cutoff in metric {text!r}: expected a positive integer after '@'")
        return cls(name, int(k))


def parse_metrics(spec: str | Iterable[str]) -> list[Metric]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = [Metric.parse(s) for s in items if s.strip()]
    if not out:
        raise InputError("no metrics given")
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------- per query
def _as_float32(x: float) -> float:
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def rank_documents(scores: Mapping[str, float]) -> list[str]:
    """Document ids by score descending, ties by id descending — trec_eval's order, which also compares the
    scores in single precision (its ``sim`` is a C float), so scores equal as float32 are ties."""
    return [d for d, _ in sorted(scores.items(), key=lambda x: (_as_float32(float(x[1])), x[0]), reverse=True)]


def _gain(rel: int, kind: str) -> float:
    if rel <= 0:
        return 0.0
    return float(rel) if kind == "linear" else float(2 ** rel - 1)


def _ndcg(m: Metric, k: int, rels: list[int], hit: list[bool], judged: Mapping[str, int], num_rel: int,
          gain: str) -> float:
    dcg = sum(_gain(r, gain) / math.log2(i + 2) for i, r in enumerate(rels[:k]))
    ideal_rels = sorted((r for r in judged.values() if r > 0), reverse=True)
    cut = len(ideal_rels) if m.k is None else m.k
    idcg = sum(_gain(r, gain) / math.log2(i + 2) for i, r in enumerate(ideal_rels[:cut]))
    return dcg / idcg if idcg > 0 else 0.0


def _recall(m: Metric, k: int, rels: list[int], hit: list[bool], judged: Mapping[str, int], num_rel: int,
            gain: str) -> float:
    return sum(hit[:k]) / num_rel if num_rel else 0.0


def _precision(m: Metric, k: int, rels: list[int], hit: list[bool], judged: Mapping[str, int], num_rel: int,
               gain: str) -> float:
    return sum(hit[:k]) / m.k  # type: ignore[operator]


def _mrr(m: Metric, k: int, rels: list[int], hit: list[bool], judged: Mapping[str, int], num_rel: int,
         gain: str) -> float:
    first = next((i for i, h in enumerate(hit[:k]) if h), None)
    return 1.0 / (first + 1) if first is not None else 0.0


def _average_precision(m: Metric, k: int, rels: list[int], hit: list[bool], judged: Mapping[str, int],
                       num_rel: int, gain: str) -> float:
    found, total = 0, 0.0
    for i, h in enumerate(hit[:k]):
        if h:
            found += 1
            total += found / (i + 1)
    return total / num_rel if num_rel else 0.0


# metric name -> its value for one query, from (metric, depth, relevance grades and hits in ranked order,
# the judgements, the number of relevant documents, the gain kind)
_METRIC_FUNCTIONS = {"ndcg": _ndcg, "recall": _recall, "p": _precision, "mrr": _mrr, "map": _average_precision}


def query_metrics(judged: Mapping[str, int], scores: Mapping[str, float], metrics: list[Metric], *,
                  gain: str = "linear", relevance_level: int = 1) -> dict[str, float]:
    ranking = rank_documents(scores)
    num_rel = sum(1 for r in judged.values() if r >= relevance_level)
    rels = [judged.get(d, 0) for d in ranking]
    hit = [r >= relevance_level for r in rels]
    out: dict[str, float] = {}
    for m in metrics:
        fn = _METRIC_FUNCTIONS.get(m.name)
        if fn is None:
            continue
        k = len(ranking) if m.k is None else min(m.k, len(ranking))
        out[m.label] = fn(m, k, rels, hit, judged, num_rel, gain)
    return out


@dataclass
class Evaluation:
    """Mean metrics over ``queries`` evaluated, with per-query values and the coverage of the run."""

    means: dict[str, float]
    per_query: dict[str, dict[str, float]]
    queries: int
    missing_in_run: list[str]  # judged queries the run has no ranking for
    unjudged_in_run: list[str]  # queries of the run without judgements (ignored)

    def as_dict(self, per_query: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"metrics": self.means, "queries": self.queries,
                               "missing_in_run": len(self.missing_in_run),
                               "unjudged_in_run": len(self.unjudged_in_run)}
        if per_query:
            out["per_query"] = self.per_query
        return out


def evaluate(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
             metrics: str | Iterable[str] | list[Metric] = "ndcg@10,recall@100,mrr@10", *, gain: str = "linear",
             complete: bool = False, relevance_level: int = 1) -> Evaluation:
    """Evaluate ``run`` ({qid: {docid: score}}) against ``qrels`` ({qid: {docid: relevance}})."""
    if gain not in GAINS:
        raise InputError(f"gain must be one of {GAINS}, got {gain!r}")
    ms = metrics if isinstance(metrics, list) and all(isinstance(m, Metric) for m in metrics) else \
        parse_metrics(metrics)  # type: ignore[arg-type]
    for qid, docs in run.items():
        for d, s in docs.items():
            if not isinstance(s, (int, float)) or isinstance(s, bool) or math.isnan(float(s)):
                raise InputError(f"run: query {qid!r}, document {d!r}: score {s!r} is not a number")
    judged_q = set(qrels)
    run_q = set(run)
    both = sorted(judged_q & run_q)
    missing = sorted(judged_q - run_q)
    per_query = {q: query_metrics(qrels[q], run[q], ms, gain=gain, relevance_level=relevance_level) for q in both}
    if complete:
        zero = {m.label: 0.0 for m in ms}
        for q in missing:
            per_query[q] = dict(zero)
    n = len(per_query)
    means = {m.label: (sum(v[m.label] for v in per_query.values()) / n if n else 0.0) for m in ms}
    return Evaluation(means, per_query, n, missing, sorted(run_q - judged_q))


# ---------------------------------------------------------------------------------------------- reading files
def _lines(path: Path) -> list[tuple[int, list[str]]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                out.append((no, line.rstrip("\n").split("\t") if "\t" in line else line.split()))
    return out


def _is_header(fields: list[str]) -> bool:
    low = [x.strip().lower() for x in fields]
    return any(x in ("query-id", "query_id", "qid", "query", "corpus-id", "corpus_id", "docid", "doc-id")
               for x in low)


def _number(text: str, what: str, path: Path, no: int, integer: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        raise InputError(f"{path}:{no}: {what} {text!r} is not a number") from None
    if math.isnan(v):
        raise InputError(f"{path}:{no}: {what} is NaN")
    if integer:
        if v != int(v):
            raise InputError(f"{path}:{no}: relevance {text!r} is not an integer")
        return int(v)
    return v


def _load_json(path: Path, what: str, integer: bool) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object {{query id: {{document id: {what}}}}}")
    out: dict[str, dict[str, Any]] = {}
    for q, docs in data.items():
        if not isinstance(docs, dict):
            raise InputError(f"{path}: query {q!r}: expected an object {{document id: {what}}}")
        row = {}
        for d, v in docs.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(float(v)):
                raise InputError(f"{path}: query {q!r}, document {d!r}: {what} {v!r} is not a number")
            if integer and v != int(v):
                raise InputError(f"{path}: query {q!r}, document {d!r}: relevance {v!r} is not an integer")
            row[str(d)] = int(v) if integer else float(v)
        out[str(q)] = row
    return out


def load_qrels(path: str | Path) -> Qrels:
    """Read TREC qrels, BEIR/ViDoRe TSV (``query-id corpus-id score`` header) or JSON."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"qrels file not found: {path}")
    if path.suffix.lower() == ".json":
        return _load_json(path, "relevance", integer=True)  # type: ignore[return-value]
    qrels: Qrels = {}
    lines = _lines(path)
    if lines and _is_header(lines[0][1]):
        lines = lines[1:]
    for no, f in lines:
        if len(f) == 4:
            q, _, d, rel = f
        elif len(f) == 3:
            q, d, rel = f
        else:
            raise InputError(f"{path}:{no}: expected 'qid iter docid rel' (TREC) or 'query-id corpus-id score' "
                             f"(BEIR), got {len(f)} fields")
        row = qrels.setdefault(q.strip(), {})
        d = d.strip()
        if d in row:
            raise InputError(f"{path}:{no}: document {d!r} judged twice for query {q!r}")
        row[d] = int(_number(rel, "relevance", path, no, integer=True))
    return qrels


def load_run(path: str | Path) -> Run:
    """Read a TREC run (``qid Q0 docid rank score tag``), a ``qid docid score`` file, or JSON."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"run file not found: {path}")
    if path.suffix.lower() == ".json":
        return _load_json(path, "score", integer=False)  # type: ignore[return-value]
    run: Run = {}
    lines = _lines(path)
    if lines and _is_header(lines[0][1]):
        lines = lines[1:]
    for no, f in lines:
        if len(f) == 6:
            q, _, d, _, score, _ = f
        elif len(f) == 3:
            q, d, score = f
        else:
            raise InputError(f"{path}:{no}: expected 'qid Q0 docid rank score tag' (TREC) or 'qid docid score', "
                             f"got {len(f)} fields")
        row = run.setdefault(q.strip(), {})
        d = d.strip()
        if d in row:
            raise InputError(f"{path}:{no}: document {d!r} appears twice for query {q!r}")
        row[d] = float(_number(score, "score", path, no, integer=False))
    return run


# ---------------------------------------------------------------------------------------------- comparing runs
TESTS = ("randomization", "ttest")


def paired_randomization_test(a: list[float], b: list[float], *, trials: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value of the sign-flip randomization test on the paired differences ``b - a``.

    Exact (every sign pattern) for up to 16 pairs, else ``trials`` random patterns with a fixed ``seed``."""
    if len(a) != len(b):
        raise InputError("paired test: the two lists differ in length")
    d = [y - x for x, y in zip(a, b, strict=True)]
    n = len(d)
    if n == 0:
        return 1.0
    observed = abs(sum(d)) - 1e-12 * max(1.0, sum(abs(x) for x in d))  # tolerate float noise in ties
    if n <= 16:
        hits = 0
        for mask in range(1 << n):
            total = sum(-x if (mask >> i) & 1 else x for i, x in enumerate(d))
            hits += abs(total) >= observed
        return hits / (1 << n)
    import random

    rng = random.Random(seed)
    hits = 0
    for _ in range(trials):
        total = sum(x if rng.random() < 0.5 else -x for x in d)
        hits += abs(total) >= observed
    return (hits + 1) / (trials + 1)


def paired_t_test(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of the paired t-test (``scipy.stats.ttest_rel``); 1.0 when every difference is 0."""
    try:
        from scipy import stats
    except ImportError:
        raise InputError("--significance ttest needs scipy: pip install scipy (or 'mmrank[eval]'); "
                         "--significance randomization needs nothing extra") from None
    if len(a) < 2:
        return 1.0
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    if all(abs(x - diffs[0]) <= 1e-15 for x in diffs):
        return 1.0 if abs(diffs[0]) <= 1e-15 else 0.0  # no variance: the t statistic is 0 or infinite
    return float(stats.ttest_rel(b, a).pvalue)


@dataclass
class Comparison:
    """A run against the baseline, per metric, over the queries both were evaluated on."""

    queries: list[str]
    delta: dict[str, float]  # mean difference (run - baseline)
    wins: dict[str, int]  # queries where the run is better
    losses: dict[str, int]
    p_value: dict[str, float | None]
    per_query: dict[str, dict[str, float]]  # query -> metric -> difference

    def as_dict(self, per_query: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"queries": len(self.queries), "delta": self.delta, "wins": self.wins,
                               "losses": self.losses, "p_value": self.p_value}
        if per_query:
            out["per_query_delta"] = self.per_query
        return out


def compare(baseline: Evaluation, other: Evaluation, metrics: list[Metric], *, test: str | None = None,
            trials: int = 10000, seed: int = 0) -> Comparison:
    """Per-metric mean difference of ``other`` over ``baseline`` on their common queries, with an optional
    paired significance test (``"randomization"`` or ``"ttest"``)."""
    if test is not None and test not in TESTS:
        raise InputError(f"unknown significance test {test!r}; use one of {TESTS}")
    common = sorted(set(baseline.per_query) & set(other.per_query))
    delta, wins, losses, pvals = {}, {}, {}, {}
    per_query = {q: {m.label: other.per_query[q][m.label] - baseline.per_query[q][m.label] for m in metrics}
                 for q in common}
    for m in metrics:
        a = [baseline.per_query[q][m.label] for q in common]
        b = [other.per_query[q][m.label] for q in common]
        diffs = [per_query[q][m.label] for q in common]
        delta[m.label] = sum(diffs) / len(diffs) if diffs else 0.0
        wins[m.label] = sum(1 for x in diffs if x > 1e-12)
        losses[m.label] = sum(1 for x in diffs if x < -1e-12)
        if test == "randomization":
            pvals[m.label] = paired_randomization_test(a, b, trials=trials, seed=seed)
        elif test == "ttest":
            pvals[m.label] = paired_t_test(a, b)
        else:
            pvals[m.label] = None
    return Comparison(common, delta, wins, losses, pvals, per_query)


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmrank eval", description="nDCG / Recall / MRR / MAP of one or more runs against qrels, side by "
        "side; the first run is the baseline the others are compared with (trec_eval conventions; see the "
        "module documentation of mmrank.evaluation).")
    p.add_argument("--qrels", required=True, help="TREC qrels, BEIR/ViDoRe qrels TSV, or JSON {qid: {docid: rel}}")
    p.add_argument("--run", required=True, action="append",
                   help="TREC run, 'qid docid score' file, or JSON {qid: {docid: score}}; repeat to compare runs "
                        "(the first is the baseline)")
    p.add_argument("--metrics", default="ndcg@10,recall@100,mrr@10",
                   help="comma-separated: ndcg@k, recall@k, mrr@k, map, map@k, p@k (default %(default)s)")
    p.add_argument("--gain", default="linear", choices=GAINS,
                   help="nDCG gain: linear = rel (trec_eval, BEIR; default) or exponential = 2^rel - 1")
    p.add_argument("--relevance-level", type=int, default=1, help="judgement >= this is relevant (default 1)")
    p.add_argument("--complete", action="store_true",
                   help="average over every judged query; queries missing from the run score 0 (trec_eval -c)")
    p.add_argument("--significance", default=None, choices=TESTS,
                   help="paired two-sided test of each run against the first: randomization (built in, exact "
                        "up to 16 queries) or ttest (needs scipy)")
    p.add_argument("--trials", type=int, default=10000,
                   help="random sign patterns of the randomization test beyond 16 queries (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomization test (default 0)")
    p.add_argument("--per-query-deltas", action="store_true",
                   help="list each query's value of the first metric in every run and its difference from the "
                        "first run (with --json: every metric)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--per-query", action="store_true", help="with --json, include per-query values")
    return p


def _fmt_p(p: float | None) -> str:
    if p is None:
        return ""
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _check_args(args: argparse.Namespace) -> None:
    """Reject option combinations that cannot be evaluated (raises :class:`InputError`)."""
    if len(set(args.run)) != len(args.run):
        raise InputError("the same --run is given twice")
    if args.trials < 1:
        raise InputError("--trials must be >= 1")
    if args.significance and len(args.run) < 2:
        raise InputError("--significance compares runs: give the baseline and at least one more --run")


def _evaluate_runs(args: argparse.Namespace, metrics: list[Metric]
                   ) -> tuple[dict[str, Evaluation], dict[str, Comparison]]:
    """Evaluate every ``--run`` and compare each run after the first with the first (the baseline)."""
    qrels = load_qrels(args.qrels)
    results = {}
    for r in args.run:
        results[r] = evaluate(qrels, load_run(r), metrics, gain=args.gain, complete=args.complete,
                              relevance_level=args.relevance_level)
    names = list(results)
    base = results[names[0]]
    comparisons = {n: compare(base, results[n], metrics, test=args.significance, trials=args.trials,
                              seed=args.seed) for n in names[1:]}
    return results, comparisons


def _warn_coverage(args: argparse.Namespace, results: dict[str, Evaluation],
                   comparisons: dict[str, Comparison]) -> None:
    """Tell on stderr which queries a run misses, has unjudged, or a comparison leaves out."""
    for r, ev in results.items():
        if ev.missing_in_run:
            note = "scored 0 (--complete)" if args.complete else "not averaged (use --complete to count them as 0)"
            print(f"mmrank eval: {r}: {len(ev.missing_in_run)} judged queries have no ranking in the run: {note}",
                  file=sys.stderr)
        if ev.unjudged_in_run:
            print(f"mmrank eval: {r}: {len(ev.unjudged_in_run)} queries of the run have no judgements (ignored)",
                  file=sys.stderr)
        if ev.queries == 0:
            print(f"mmrank eval: {r}: no query is both judged and ranked", file=sys.stderr)
    names = list(results)
    base = results[names[0]]
    for n, c in comparisons.items():
        if len(c.queries) != base.queries or len(c.queries) != results[n].queries:
            print(f"mmrank eval: {n}: compared with {names[0]} on the {len(c.queries)} queries both rank",
                  file=sys.stderr)


def _print_json(args: argparse.Namespace, results: dict[str, Evaluation],
                comparisons: dict[str, Comparison]) -> None:
    """One run: its evaluation object; several: one object per run, later ones with their comparison."""
    first = next(iter(results))
    out: Any = {r: ev.as_dict(per_query=args.per_query) for r, ev in results.items()}
    for n, c in comparisons.items():
        out[n]["compared_with"] = first
        out[n]["comparison"] = c.as_dict(per_query=args.per_query_deltas)
        if args.significance:
            out[n]["comparison"]["test"] = args.significance
    if len(results) == 1:
        out = next(iter(out.values()))
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _print_table(args: argparse.Namespace, metrics: list[Metric], results: dict[str, Evaluation],
                 comparisons: dict[str, Comparison]) -> None:
    """One row per metric, one column per run; later runs add Δ, wins/losses (and p) against the first."""
    names = list(results)
    width = max(8, *(len(m.label) for m in metrics))
    cols: list[str] = []
    for i, n in enumerate(names):
        cols.append(Path(n).name)
        if i:
            cols += ["Δ", "+/-"] + (["p"] if args.significance else [])
    colw = [max(8, len(c)) for c in cols]

    def row(label: str, cells: list[str]) -> str:
        return f"{label:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, colw, strict=True))

    print(row("metric", cols))
    for m in metrics:
        cells = []
        for i, n in enumerate(names):
            cells.append(f"{results[n].means[m.label]:.4f}")
            if i:
                c = comparisons[n]
                cells += [f"{c.delta[m.label]:+.4f}", f"{c.wins[m.label]}/{c.losses[m.label]}"]
                if args.significance:
                    cells.append(_fmt_p(c.p_value[m.label]))
        print(row(m.label, cells))
    cells = []
    for i, n in enumerate(names):
        cells.append(str(results[n].queries))
        if i:
            cells += [""] * (2 + bool(args.significance))
    print(row("queries", cells))
    if len(names) > 1:
        print(f"(Δ: mean difference from {Path(names[0]).name} over the queries both rank; +/-: queries better/"
              f"worse{'; p: paired ' + args.significance + ' test, two-sided' if args.significance else ''})")


def _print_per_query_deltas(metric: Metric, results: dict[str, Evaluation],
                            comparisons: dict[str, Comparison]) -> None:
    """Each query's value of ``metric`` in every run and its difference from the first run ("-": not ranked)."""
    names = list(results)
    base = results[names[0]]
    print()
    header = ["query"] + [Path(n).name for n in names] + [f"Δ {Path(n).name}" for n in names[1:]]
    qw = max(5, *(len(q) for q in base.per_query)) if base.per_query else 5
    hw = [max(8, len(h)) for h in header[1:]]
    print(f"per-query {metric.label}")
    print(f"{header[0]:<{qw}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(header[1:], hw, strict=True)))
    queries = sorted(set().union(*(set(results[n].per_query) for n in names)))
    for q in queries:
        vals = [results[n].per_query.get(q, {}).get(metric.label) for n in names]
        deltas = [comparisons[n].per_query.get(q, {}).get(metric.label) for n in names[1:]]
        cells = [("-" if v is None else f"{v:.4f}") for v in vals] + \
                [("-" if d is None else f"{d:+.4f}") for d in deltas]
        print(f"{q:<{qw}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, hw, strict=True)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        metrics = parse_metrics(args.metrics)
        results, comparisons = _evaluate_runs(args, metrics)
    except InputError as exc:
        print(f"mmrank eval: error: {exc}", file=sys.stderr)
        return 2
    _warn_coverage(args, results, comparisons)
    if args.json:
        _print_json(args, results, comparisons)
        return 0
    _print_table(args, metrics, results, comparisons)
    if args.per_query_deltas and len(results) > 1:
        _print_per_query_deltas(metrics[0], results, comparisons)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
