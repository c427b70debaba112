"""``mmrank eval``: metrics cross-checked against pytrec_eval (trec_eval), file formats, the command line."""

from __future__ import annotations

import json
import math
import sys

import pytest
import pytrec_eval
from hypothesis import given, settings
from hypothesis import strategies as st
from mmrank.errors import InputError
from mmrank.evaluation import Metric, evaluate, load_qrels, load_run, main, parse_metrics, rank_documents

CUTS = (1, 3, 5, 10)

qids = st.sampled_from(["q1", "q2", "q3", "q4", "10", "2"])
docids = st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h", "D1", "d10", "d2", "Z"])
# Few distinct scores: many ties, which trec_eval breaks by document id (descending).
scores = st.sampled_from([0.0, 0.5, 1.0, 1.5, -2.0, 3.25])
qrels_st = st.dictionaries(qids, st.dictionaries(docids, st.integers(0, 3), min_size=1, max_size=8), max_size=5)
run_st = st.dictionaries(qids, st.dictionaries(docids, scores | st.floats(-5, 5, allow_nan=False), min_size=1,
                                               max_size=12), max_size=5)


def _pytrec(qrels, run, measures):
    return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)


@settings(max_examples=150, deadline=None)
@given(qrels=qrels_st, run=run_st)
def test_metrics_match_pytrec_eval(qrels, run):
    ours = evaluate(qrels, run, [f"ndcg@{k}" for k in CUTS] + [f"recall@{k}" for k in CUTS] + [f"p@{k}" for k in CUTS]
                    + [f"map@{k}" for k in CUTS] + ["map", "ndcg", "mrr"])
    cut = ",".join(map(str, CUTS))
    ref = _pytrec(qrels, run, {f"ndcg_cut.{cut}", f"recall.{cut}", f"P.{cut}", f"map_cut.{cut}", "map", "ndcg",
                               "recip_rank"})
    assert set(ours.per_query) == set(ref)  # the same queries: judged and ranked
    for q, vals in ref.items():
        got = ours.per_query[q]
        for k in CUTS:
            assert got[f"ndcg@{k}"] == pytest.approx(vals[f"ndcg_cut_{k}"], abs=1e-9)
            assert got[f"recall@{k}"] == pytest.approx(vals[f"recall_{k}"], abs=1e-9)
            assert got[f"p@{k}"] == pytest.approx(vals[f"P_{k}"], abs=1e-9)
            assert got[f"map@{k}"] == pytest.approx(vals[f"map_cut_{k}"], abs=1e-9)
        assert got["map"] == pytest.approx(vals["map"], abs=1e-9)
        assert got["ndcg"] == pytest.approx(vals["ndcg"], abs=1e-9)
        assert got["mrr"] == pytest.approx(vals["recip_rank"], abs=1e-9)
    if ref:
        assert ours.means["ndcg@10"] == pytest.approx(sum(v["ndcg_cut_10"] for v in ref.values()) / len(ref))
    assert ours.queries == len(ref)
    assert ours.missing_in_run == sorted(set(qrels) - set(run))


@settings(max_examples=100, deadline=None)
@given(qrels=qrels_st, run=run_st, k=st.sampled_from(CUTS))
def test_mrr_at_k_is_reciprocal_rank_of_the_run_cut_at_k(qrels, run, k):
    ours = evaluate(qrels, run, [f"mrr@{k}"])
    cut_run = {q: {d: docs[d] for d in rank_documents(docs)[:k]} for q, docs in run.items()}
    ref = _pytrec(qrels, cut_run, {"recip_rank"})
    for q, vals in ref.items():
        assert ours.per_query[q][f"mrr@{k}"] == pytest.approx(vals["recip_rank"], abs=1e-12)


def test_ties_are_broken_by_document_id_descending():
    assert rank_documents({"a": 1.0, "c": 1.0, "b": 1.0, "z": 0.5}) == ["c", "b", "a", "z"]
    # Scores equal in single precision are ties (trec_eval stores them as C floats).
    assert rank_documents({"a": 0.1 + 1e-12, "b": 0.1}) == ["b", "a"]
    assert rank_documents({"a": 1e300, "b": -1e300, "c": 0.0}) == ["a", "c", "b"]
    # trec_eval's order decides which tied document is first: here "b" (irrelevant) precedes "a" (relevant).
    ev = evaluate({"q": {"a": 1}}, {"q": {"a": 2.0, "b": 2.0}}, "mrr@10")
    assert ev.means["mrr@10"] == 0.5


def test_graded_gain_linear_and_exponential():
    qrels = {"q": {"a": 3, "b": 1, "c": 0}}
    run = {"q": {"b": 3.0, "a": 2.0, "c": 1.0}}
    lin = evaluate(qrels, run, "ndcg@2").means["ndcg@2"]
    exp = evaluate(qrels, run, "ndcg@2", gain="exponential").means["ndcg@2"]
    d = math.log2(3)
    assert lin == pytest.approx((1 + 3 / d) / (3 + 1 / d))
    assert exp == pytest.approx((1 + 7 / d) / (7 + 1 / d))
    # Binary judgements: both gains agree.
    b = {"q": {"a": 1, "b": 0}}
    assert evaluate(b, run, "ndcg@3").means == evaluate(b, run, "ndcg@3", gain="exponential").means
    with pytest.raises(InputError):
        evaluate(qrels, run, "ndcg@2", gain="cubic")


def test_missing_queries_are_reported_and_count_zero_with_complete():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    run = {"q1": {"a": 1.0}, "qx": {"z": 1.0}}
    ev = evaluate(qrels, run, "recall@10")
    assert ev.queries == 1 and ev.means["recall@10"] == 1.0
    assert ev.missing_in_run == ["q2", "q3"] and ev.unjudged_in_run == ["qx"]
    full = evaluate(qrels, run, "recall@10", complete=True)
    assert full.queries == 3 and full.means["recall@10"] == pytest.approx(1 / 3)


def test_relevance_level():
    qrels = {"q": {"a": 1, "b": 2}}
    run = {"q": {"a": 2.0, "b": 1.0}}
    assert evaluate(qrels, run, "mrr").means["mrr"] == 1.0
    assert evaluate(qrels, run, "mrr", relevance_level=2).means["mrr"] == 0.5


def test_metric_parsing():
    assert parse_metrics("nDCG@10, Recall@100,mrr@10,map,P@5,ndcg@10") == [
        Metric("ndcg", 10), Metric("recall", 100), Metric("mrr", 10), Metric("map", None), Metric("p", 5)]
    for bad in ("ndcg@0", "ndcg@x", "bleu@4", "recall", ""):
        with pytest.raises(InputError):
            parse_metrics(bad)


def test_run_scores_must_be_numbers():
    with pytest.raises(InputError, match="not a number"):
        evaluate({"q": {"a": 1}}, {"q": {"a": float("nan")}}, "mrr")


# ---------------------------------------------------------------------------------------------- files
def test_formats_read_the_same(tmp_path):
    (tmp_path / "q.trec").write_text("q1 0 d1 2\nq1 0 d2 0\nq2 0 d3 1\n")
    (tmp_path / "q.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td3\t1\n")
    (tmp_path / "q.json").write_text(json.dumps({"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}))
    expected = {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}
    for name in ("q.trec", "q.tsv", "q.json"):
        assert load_qrels(tmp_path / name) == expected
    (tmp_path / "r.trec").write_text("q1 Q0 d1 1 3.5 sys\nq1 Q0 d2 2 1.25 sys\nq2 Q0 d3 1 0.5 sys\n")
    (tmp_path / "r.tsv").write_text("qid\tdocid\tscore\nq1\td1\t3.5\nq1\td2\t1.25\nq2\td3\t0.5\n")
    (tmp_path / "r.json").write_text(json.dumps({"q1": {"d1": 3.5, "d2": 1.25}, "q2": {"d3": 0.5}}))
    runs = {"q1": {"d1": 3.5, "d2": 1.25}, "q2": {"d3": 0.5}}
    for name in ("r.trec", "r.tsv", "r.json"):
        assert load_run(tmp_path / name) == runs


@pytest.mark.parametrize("content, kind, match", [
    ("q1 0 d1 1 extra\n", "qrels", "fields"),
    ("q1 0 d1 1\nq1 0 d1 2\n", "qrels", "judged twice"),
    ("q1 0 d1 high\n", "qrels", "not a number"),
    ("q1 0 d1 1.5\n", "qrels", "not an integer"),
    ("q1 Q0 d1 1 2.0 run\nq1 Q0 d1 2 1.0 run\n", "run", "twice"),
    ("q1 Q0 d1 1 nan run\n", "run", "NaN"),
    ("q1 d1\n", "run", "fields"),
])
def test_bad_files_say_where(tmp_path, content, kind, match):
    p = tmp_path / f"bad.{kind}"
    p.write_text(content)
    with pytest.raises(InputError, match=match) as info:
        (load_qrels if kind == "qrels" else load_run)(p)
    assert str(p) in str(info.value)


def test_bad_json(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"q": {"d": "high"}}))
    with pytest.raises(InputError, match="not a number"):
        load_run(p)
    p.write_text("[1, 2]")
    with pytest.raises(InputError, match="JSON object"):
        load_run(p)
    with pytest.raises(InputError, match="not found"):
        load_qrels(tmp_path / "missing.tsv")


# ---------------------------------------------------------------------------------------------- command line
@pytest.fixture
def files(tmp_path):
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\nq1\tb\t2\nq2\tc\t1\nq3\td\t1\n")
    (tmp_path / "good.json").write_text(json.dumps({"q1": {"b": 3, "a": 2, "x": 1}, "q2": {"c": 1.0}}))
    (tmp_path / "bad.trec").write_text("q1 Q0 x 1 3 s\nq1 Q0 a 2 2 s\nq2 Q0 z 1 1 s\n")
    return tmp_path


def test_cli_table_and_json(files, capsys):
    assert main(["--qrels", str(files / "qrels.tsv"), "--run", str(files / "good.json"), "--run",
                 str(files / "bad.trec"), "--metrics", "ndcg@10,recall@2,mrr@10"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0].split() == ["metric", "good.json", "bad.trec", "Δ", "+/-"]
    assert lines[1].split()[0] == "ndcg@10" and float(lines[1].split()[1]) == pytest.approx(1.0)
    assert lines[3].split() == ["mrr@10", "1.0000", "0.2500", "-0.7500", "0/2"]
    assert lines[4].split() == ["queries", "2", "2"]
    assert "1 judged queries have no ranking" in err
    assert main(["--qrels", str(files / "qrels.tsv"), "--run", str(files / "good.json"), "--metrics", "mrr@10",
                 "--json", "--per-query", "--complete"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["metrics"]["mrr@10"] == pytest.approx(2 / 3)
    assert data["queries"] == 3 and data["missing_in_run"] == 1
    assert data["per_query"]["q3"] == {"mrr@10": 0.0}


def test_cli_errors_exit_2(files, capsys):
    assert main(["--qrels", str(files / "nope.tsv"), "--run", str(files / "good.json")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["--qrels", str(files / "qrels.tsv"), "--run", str(files / "good.json"), "--metrics", "bleu"]) == 2
    assert "unknown metric" in capsys.readouterr().err


def test_mmrank_command_dispatches_to_eval(files, capsys):
    from mmrank.cli import main as cli_main

    assert cli_main(["eval", "--qrels", str(files / "qrels.tsv"), "--run", str(files / "good.json"),
                     "--metrics", "recall@1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["recall@1"] == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------- comparing runs
def test_randomization_test_exact_small_cases():
    from mmrank.evaluation import paired_randomization_test as rt

    assert rt([0, 0, 0], [1, 1, 1]) == 0.25  # sums ±3 (2 of 8 sign patterns) reach |3|
    assert rt([0, 0], [1, -1]) == 1.0  # observed mean 0: every pattern is as extreme
    assert rt([], []) == 1.0
    assert rt([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == 1.0
    with pytest.raises(InputError):
        rt([1.0], [1.0, 2.0])


@settings(max_examples=30, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.sampled_from([0.0, 0.25, 0.5, 1.0])),
                      min_size=2, max_size=9))
def test_randomization_test_matches_scipy_permutation_test(pairs):
    import numpy as np
    from mmrank.evaluation import paired_randomization_test
    from scipy import stats

    a = [x for x, _ in pairs]
    b = [y for _, y in pairs]
    ours = paired_randomization_test(a, b)
    ref = stats.permutation_test((np.array(b), np.array(a)), lambda x, y, axis: np.mean(x - y, axis=axis),
                                 permutation_type="samples", n_resamples=np.inf, alternative="two-sided",
                                 vectorized=True).pvalue
    assert ours == pytest.approx(min(1.0, ref), abs=1e-9)
    assert paired_randomization_test(b, a) == ours  # symmetric


def test_randomization_test_monte_carlo_is_seeded_and_close_to_exact():
    import random

    from mmrank.evaluation import paired_randomization_test

    rng = random.Random(3)
    a = [rng.random() for _ in range(30)]
    b = [x + rng.gauss(0.05, 0.2) for x in a]
    p1 = paired_randomization_test(a, b, trials=4000, seed=1)
    assert p1 == paired_randomization_test(a, b, trials=4000, seed=1)
    assert 0 < p1 <= 1
    # A strong, consistent improvement is significant; noise around zero is not.
    assert paired_randomization_test(a, [x + 0.3 for x in a], trials=2000) < 0.001
    assert paired_randomization_test(a, a, trials=2000) == 1.0


def test_t_test_is_scipys_and_says_when_scipy_is_missing(monkeypatch):
    from mmrank.evaluation import paired_t_test
    from scipy import stats

    a, b = [0.1, 0.4, 0.35, 0.8], [0.2, 0.5, 0.3, 0.9]
    assert paired_t_test(a, b) == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert paired_t_test(a, a) == 1.0
    monkeypatch.setitem(sys.modules, "scipy", None)
    with pytest.raises(InputError, match="needs scipy: pip install scipy"):
        paired_t_test(a, b)


def test_compare_side_by_side_with_deltas_and_significance(files, capsys):
    (files / "second.json").write_text(json.dumps({"q1": {"a": 3, "b": 2}, "q2": {"z": 2.0, "c": 1.0}}))
    argv = ["--qrels", str(files / "qrels.tsv"), "--run", str(files / "good.json"), "--run",
            str(files / "second.json"), "--metrics", "mrr@10,ndcg@10"]
    assert main([*argv, "--significance", "randomization", "--per-query-deltas"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["metric", "good.json", "second.json", "Δ", "+/-", "p"]
    # q1: good ranks b (rel 2) first -> 1.0; second ranks a (rel 1) first -> 1.0. q2: 1.0 vs 0.5.
    assert lines[1].split() == ["mrr@10", "1.0000", "0.7500", "-0.2500", "0/1", "1.0000"]
    assert "per-query mrr@10" in out
    q2 = next(line for line in lines if line.startswith("q2"))
    assert q2.split() == ["q2", "1.0000", "0.5000", "-0.5000"]
    assert main([*argv, "--significance", "ttest", "--json", "--per-query-deltas"]) == 0
    data = json.loads(capsys.readouterr().out)
    comp = data[str(files / "second.json")]["comparison"]
    assert comp["test"] == "ttest" and comp["queries"] == 2
    assert comp["delta"]["mrr@10"] == pytest.approx(-0.25) and comp["per_query_delta"]["q2"]["mrr@10"] == -0.5
    assert 0 < comp["p_value"]["mrr@10"] <= 1
    assert data[str(files / "second.json")]["compared_with"] == str(files / "good.json")
    assert main([*argv[:4], "--run", str(files / "good.json")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main([*argv[:4], "--significance", "ttest"]) == 2
    assert "at least one more --run" in capsys.readouterr().err
