"""``mmrank rerank-run`` then ``mmrank eval``, end to end through the real tiny pointwise model on the test kit's
BEIR-style dataset (text, page-image and text+image documents, graded qrels, a lexical first stage); corpus
readers (BEIR, ViDoRe-style image folders, JSONL) and their errors."""

from __future__ import annotations

import json

import pytest
from mmrank import Document, Query
from mmrank.cli import main as cli_main
from mmrank.errors import InputError
from mmrank.evaluation import compare, evaluate, load_qrels, load_run, parse_metrics, rank_documents
from mmrank.rerank_run import load_corpus, load_queries
from mmrank_testkit.datasets import build_beir_dataset

TOP_K = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_beir_dataset(tmp_path_factory.mktemp("beir"))


def _trec_lines(path):
    rows = [line.split() for line in path.read_text().splitlines()]
    by_q: dict[str, list[tuple[str, int, float, str]]] = {}
    for q, q0, d, rank, score, tag in rows:
        assert q0 == "Q0"
        by_q.setdefault(q, []).append((d, int(rank), float(score), tag))
    return by_q


def test_rerank_run_then_eval_end_to_end(dataset, jina_dir, jina_reranker, tmp_path, capsys):
    first = dataset / "runs" / "first_stage.trec"
    out = tmp_path / "reranked.trec"
    assert cli_main(["rerank-run", "--dataset", str(dataset), "--run", str(first), "--output", str(out),
                     "--top-k", str(TOP_K), "--model", str(jina_dir), "--device", "cpu", "--tag", "tiny"]) == 0
    err = capsys.readouterr().err
    assert "mmrank rerank-run" in err and "reranked the top 8 of 6 queries (48 documents)" in err
    assert f"compare with: mmrank eval --qrels {dataset / 'qrels' / 'test.tsv'} --run {first} --run {out}" in err
    got = _trec_lines(out)
    base = load_run(first)
    corpus, queries = load_corpus(dataset), load_queries(dataset)
    assert set(got) == set(base)
    modalities = set()
    for qid, rows in got.items():
        order = rank_documents(base[qid])
        docs = [r[0] for r in rows]
        assert sorted(docs) == sorted(order)  # nothing lost, nothing twice
        assert [r[1] for r in rows] == list(range(1, len(rows) + 1)) and {r[3] for r in rows} == {"tiny"}
        assert set(docs[:TOP_K]) == set(order[:TOP_K]) and docs[TOP_K:] == order[TOP_K:]  # the tail keeps its order
        scores = [r[2] for r in rows]
        assert scores == sorted(scores, reverse=True)
        # The head is the scorer's ranking of the first stage's top k, with its scores.
        head = [Document(text=corpus[d].text, image=corpus[d].image, id=d) for d in order[:TOP_K]]
        expected = jina_reranker.rank(Query(text=queries[qid].text), head)
        assert docs[:TOP_K] == [e.document.id for e in expected]
        assert scores[:TOP_K] == pytest.approx([e.score for e in expected], abs=1e-6)
        modalities |= {d.modality for d in head}
    assert modalities == {"text", "image", "text+image"}

    # The comparison: the numbers are those of evaluate() on the two files, the deltas their differences.
    qrels_path = dataset / "qrels" / "test.tsv"
    assert cli_main(["eval", "--qrels", str(qrels_path), "--run", str(first), "--run", str(out), "--metrics",
                     "ndcg@10,recall@5,mrr@10", "--significance", "randomization", "--json",
                     "--per-query-deltas"]) == 0
    data = json.loads(capsys.readouterr().out)
    qrels = load_qrels(qrels_path)
    ev_first = evaluate(qrels, base, "ndcg@10,recall@5,mrr@10")
    ev_new = evaluate(qrels, load_run(out), "ndcg@10,recall@5,mrr@10")
    assert data[str(first)]["metrics"] == pytest.approx(ev_first.means)
    assert data[str(out)]["metrics"] == pytest.approx(ev_new.means)
    comp = data[str(out)]["comparison"]
    ref = compare(ev_first, ev_new, parse_metrics("ndcg@10,recall@5,mrr@10"), test="randomization")
    assert comp["delta"] == pytest.approx(ref.delta) and comp["p_value"] == pytest.approx(ref.p_value)
    for q, d in comp["per_query_delta"].items():
        assert d["ndcg@10"] == pytest.approx(ev_new.per_query[q]["ndcg@10"] - ev_first.per_query[q]["ndcg@10"])
    assert comp["queries"] == 6 and 1 / 64 <= comp["p_value"]["ndcg@10"] <= 1.0  # exact test over 2^6 patterns
    # And the table a user reads.
    assert cli_main(["eval", "--qrels", str(qrels_path), "--run", str(first), "--run", str(out),
                     "--metrics", "ndcg@10,recall@5,mrr@10", "--significance", "randomization"]) == 0
    table = capsys.readouterr().out
    print(table)
    assert table.splitlines()[0].split() == ["metric", "first_stage.trec", "reranked.trec", "Δ", "+/-", "p"]


def test_rerank_run_drop_tail_unreadable_documents_and_jsonl_inputs(dataset, jina_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in [
        {"doc_id": "a", "title": "Pandas", "text": "eat bamboo"}, {"doc_id": "b", "text": "stock markets"},
        {"doc_id": "c", "image": str(tmp_path / "broken.png")}]) + "\n")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"query-id": "1", "query": "what do pandas eat"}) + "\n")
    run = tmp_path / "run.tsv"
    run.write_text("1\ta\t3.0\n1\tb\t2.0\n1\tc\t1.0\n")
    out = tmp_path / "out.trec"
    assert cli_main(["rerank-run", "--corpus", str(corpus), "--queries", str(queries), "--run", str(run), "-o",
                     str(out), "--top-k", "3", "--drop-tail", "--model", str(jina_dir), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "unreadable, kept after the scored documents" in err and "'c'" in err
    rows = _trec_lines(out)["1"]
    assert [r[0] for r in rows][-1] == "c" and len(rows) == 3
    assert load_corpus(corpus)["a"].text == "Pandas eat bamboo"  # BEIR: title + text


def test_vidore_style_image_folder(tmp_path):
    from mmrank_testkit import sample_image

    (tmp_path / "images").mkdir()
    sample_image(1).save(tmp_path / "images" / "page-1.png")
    sample_image(2).save(tmp_path / "images" / "page-2.jpg")
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"corpus-id": "page-2", "text": "caption"}) + "\n")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"query-id": "q", "query": "a photo"}) + "\n")
    corpus = load_corpus(tmp_path)
    assert corpus["page-1"].text is None and corpus["page-1"].image == tmp_path / "images" / "page-1.png"
    assert corpus["page-2"].text == "caption" and corpus["page-2"].image == tmp_path / "images" / "page-2.jpg"
    assert load_queries(tmp_path)["q"].text == "a photo"


@pytest.mark.parametrize("rows, needle", [
    ([{"text": "no id"}], "no id"),
    ([{"_id": "a", "text": "x"}, {"_id": "a", "text": "y"}], "appears twice"),
    ([{"_id": "a"}], "neither text nor an image"),
    ([{"_id": "a", "text": 5}], "text must be a string"),
    ([{"_id": "a", "image": "missing/page.png"}], "image file 'missing/page.png' not found"),
])
def test_bad_corpus_rows_say_where(tmp_path, rows, needle):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(InputError, match=needle) as info:
        load_corpus(path)
    assert str(path) in str(info.value)


def test_run_documents_missing_from_the_corpus_are_an_error(dataset, jina_dir, tmp_path, capsys):
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 pandas-t0 1 2.0 x\nq1 Q0 ghost 2 1.0 x\n")
    argv = ["rerank-run", "--dataset", str(dataset), "--run", str(run), "-o", str(tmp_path / "o.trec"),
            "--model", str(jina_dir), "--quiet"]
    assert cli_main(argv) == 2
    assert "not in the corpus" in capsys.readouterr().err and not (tmp_path / "o.trec").exists()
    run.write_text("nope Q0 pandas-t0 1 2.0 x\n")
    assert cli_main(argv) == 2
    assert "not in the queries" in capsys.readouterr().err
    assert cli_main(["rerank-run", "--run", str(run), "-o", "x.trec"]) == 2
    assert "--dataset" in capsys.readouterr().err


def test_parquet_needs_pyarrow_or_reads_it(tmp_path, monkeypatch):
    import sys

    path = tmp_path / "corpus.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1")
    else:
        from mmrank_testkit import sample_image_bytes

        pq.write_table(pa.table({"corpus-id": ["p1", "t1"], "text": [None, "hello"],
                                 "image": [{"bytes": sample_image_bytes(1), "path": "p1.png"}, None]}), path)
        corpus = load_corpus(path)
        assert corpus["t1"].text == "hello" and isinstance(corpus["p1"].image, bytes)
        Document(image=corpus["p1"].image).load_image()
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(InputError, match="needs pyarrow"):
        load_corpus(path)


def test_ids_a_trec_file_cannot_hold_are_refused_before_any_scoring(dataset, tmp_path, capsys):
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"q1": {"pandas t0": 1.0}}))
    assert cli_main(["rerank-run", "--dataset", str(dataset), "--run", str(run), "-o", str(tmp_path / "o.trec"),
                     "--model", "nobody/never-loaded", "--quiet"]) == 2
    assert "holds whitespace" in capsys.readouterr().err
    from mmrank.rerank_run import write_trec

    with pytest.raises(InputError, match="empty or holds whitespace"):
        write_trec({"q 1": [("d", 1.0)]}, tmp_path / "x.trec", "t")
    assert not (tmp_path / "x.trec").exists()
