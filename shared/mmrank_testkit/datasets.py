"""A small retrieval dataset made by code, laid out as BEIR / ViDoRe folders are, with a first-stage run.

``build_beir_dataset(folder)`` writes::

    folder/corpus.jsonl        {"_id", "title", "text"} text documents, {"_id", "image": "images/<id>.png"}
                               page screenshots, and {"_id", "text", "image"} text+image documents
    folder/images/*.png        the page images (rendered text) and photos
    folder/queries.jsonl       {"_id", "text"}
    folder/qrels/test.tsv      query-id  corpus-id  score   (graded 0-2, BEIR header)
    folder/runs/first_stage.trec   a lexical first stage (TREC run: qid Q0 docid rank score tag)

The first stage is a word-overlap scorer that cannot read images (image-only documents get a small score from
their id), so relevant pages sit low in it: exactly what a multimodal reranker is for. Everything is
deterministic in ``seed``.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from .samples import sample_image, sample_page

TOPICS = [
    ("pandas", "what do giant pandas eat", ["Giant pandas eat bamboo shoots and leaves almost exclusively.",
                                           "A panda spends up to fourteen hours a day eating bamboo."]),
    ("revenue", "how did revenue develop in 2024", ["Revenue grew twelve percent in 2024, driven by services.",
                                                    "Quarterly revenue rose in every quarter of 2024."]),
    ("volcano", "why do volcanoes erupt", ["Volcanoes erupt when pressure from magma and gas builds up.",
                                           "Magma rises because it is lighter than the surrounding rock."]),
    ("coffee", "where does coffee grow best", ["Coffee grows best at high altitude in the tropics.",
                                               "Arabica coffee plants need shade, rain and mild temperatures."]),
    ("tides", "what causes ocean tides", ["Ocean tides are caused by the gravity of the moon and the sun.",
                                          "Spring tides happen when the sun and moon line up."]),
    ("bridges", "how are suspension bridges built", ["Suspension bridges hang the deck from cables on towers.",
                                                     "The main cables of a suspension bridge are spun on site."]),
]
FILLER = ["The committee will meet again next week to discuss the budget.",
          "Bananas are rich in potassium and easy to carry.",
          "The train to the coast leaves every hour on weekdays.",
          "Chess openings have been studied for centuries.",
          "A good night's sleep improves memory and mood.",
          "The museum is closed on Mondays for maintenance."]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def build_beir_dataset(folder: str | Path, *, seed: int = 0, n_topics: int = 6) -> Path:
    """Write the dataset described in the module docstring to ``folder`` and return the folder."""
    rng = random.Random(seed)
    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    (root / "runs").mkdir(exist_ok=True)
    corpus: list[dict] = []
    qrels: list[tuple[str, str, int]] = []
    queries: list[dict] = []
    for t, (name, question, passages) in enumerate(TOPICS[:n_topics]):
        qid = f"q{t + 1}"
        queries.append({"_id": qid, "text": question})
        # Two text passages (relevance 2 and 1), one page screenshot (2), one text+image document (1).
        for j, passage in enumerate(passages):
            did = f"{name}-t{j}"
            corpus.append({"_id": did, "title": name.capitalize(), "text": passage})
            qrels.append((qid, did, 2 - j))
        page = f"{name}-page"
        sample_page([question.capitalize() + "?", *passages]).save(root / "images" / f"{page}.png")
        corpus.append({"_id": page, "image": f"images/{page}.png"})
        qrels.append((qid, page, 2))
        photo = f"{name}-photo"
        sample_image(seed * 100 + t).save(root / "images" / f"{photo}.png")
        corpus.append({"_id": photo, "text": f"Photo: {name}", "image": f"images/{photo}.png"})
        qrels.append((qid, photo, 1))
    for k, text in enumerate(FILLER):
        corpus.append({"_id": f"filler-{k}", "title": "", "text": text})
    rng.shuffle(corpus)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for doc in corpus:
            f.write(json.dumps(doc) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
        for q in queries:
            f.write(json.dumps(q) + "\n")
    with open(root / "qrels" / "test.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, did, rel in qrels:
            f.write(f"{qid}\t{did}\t{rel}\n")
    # Lexical first stage over every document: word overlap with the title + text; a tiny tie-breaker noise.
    with open(root / "runs" / "first_stage.trec", "w", encoding="utf-8") as f:
        for q in queries:
            qw = _words(q["text"])
            scored = []
            for doc in corpus:
                overlap = len(qw & _words(f"{doc.get('title', '')} {doc.get('text', '')}"))
                scored.append((overlap + rng.random() * 0.5, doc["_id"]))
            scored.sort(key=lambda x: (-x[0], x[1]))
            for rank, (score, did) in enumerate(scored, 1):
                f.write(f"{q['_id']} Q0 {did} {rank} {score:.6f} lexical\n")
    return root
