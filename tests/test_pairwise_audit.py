"""Independent review of the pairwise (yes/no) scorer on the tiny real Qwen2-VL: every document exactly once
whatever the mix, equal documents get equal scores and keep input order whatever the batching, and an answer
that is neither "Yes" nor "No" is handled as documented (the score is the two-way softmax of their logits)."""

from __future__ import annotations

import pytest
import torch
from mmrank import Document, PairwiseReranker
from mmrank_testkit import sample_image, tiny_model_dir
from transformers import AutoModelForImageTextToText, AutoTokenizer

QUERY = "what do pandas eat?"
_cache: dict = {}


def _scorer(**kw) -> PairwiseReranker:
    key = tuple(sorted(kw.items()))
    if key not in _cache:
        _cache[key] = PairwiseReranker(tiny_model_dir("lm", "qwen2_vl"), device="cpu", dtype="float32", **kw)
    return _cache[key]


def test_equal_documents_get_equal_scores_and_keep_input_order_whatever_the_batching():
    """Before the fix, with batch_size=3 the last of seven equal texts sat alone in the last batch and got a
    score one float32 ulp below its twins (a batch of one takes another matrix-multiply path), so equal
    documents could be ranked out of input order."""
    photo = Document(image=sample_image(1), id="photo")
    docs = (["same text"] * 4 + ["a much longer text that pads the batch differently " * 3] + ["same text"] * 3
            + [photo, photo])
    twins = [0, 1, 2, 3, 5, 6, 7]
    reference = None
    for batch_size in (1, 3, 8):
        r = _scorer(batch_size=batch_size)
        scores = r.score("q", docs)
        assert len({scores[i] for i in twins}) == 1 and scores[8] == scores[9]
        ranked = [d.index for d in r.rank("q", docs)]
        assert sorted(ranked) == list(range(len(docs)))
        assert [i for i in ranked if i in twins] == twins and [i for i in ranked if i in (8, 9)] == [8, 9]
        if reference is None:
            reference = scores
        assert scores == pytest.approx(reference, abs=1e-6)
    r = _scorer(batch_size=2)  # a text equal to another one is one pair too, whatever object carries it
    scores = r.score(QUERY, ["same text", Document(text="same text", id="copy"), "other", "same text"])
    assert scores[0] == scores[1] == scores[3]


def test_every_document_once_with_unreadable_empty_and_mixed_documents():
    r = _scorer(batch_size=2)
    docs = ["pandas eat bamboo", {"image": b"\x89PNG broken", "id": "broken"}, Document(text="", id="empty"),
            Document(text="caption", image=sample_image(2)), {"image": "/nonexistent.png", "id": "gone"},
            Document(image=sample_image(3)), "pandas eat bamboo"]
    full = r.rank(QUERY, docs)
    assert sorted(d.index for d in full) == list(range(len(docs)))
    for top_n in (3, 0, 100):
        assert [d.index for d in r.rank(QUERY, docs, top_n=top_n)] == [d.index for d in full][:top_n]
    scored = [d.score for d in full if d.score is not None]
    assert scored == sorted(scored, reverse=True) and all(0.0 < s < 1.0 for s in scored)
    assert [d.index for d in full[-2:]] == [1, 4] and all(d.score is None for d in full[-2:])
    assert "broken" in full[-2].error and "gone" in full[-1].error


def test_an_answer_that_is_neither_yes_nor_no_is_scored_by_the_two_answer_logits():
    """The model's own greedy answer here starts with neither "Yes" nor "No"; as documented, the score is
    still softmax([logit(Yes), logit(No)])[0] at the answer's first position (no error, no fallback)."""
    path = tiny_model_dir("lm", "qwen2_vl")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    r = _scorer()
    prompt = r.vlm.render(r.conversation(QUERY, "the stock market fell today"))
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
    yes, no = tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")
    assert int(logits.argmax()) not in (yes, no)  # the model would answer something else
    first = r.vlm.generate(r.vlm.encode([prompt], [[]])[0], 1)[0]
    assert first not in ("Yes", "No")
    expected = float(torch.softmax(torch.stack([logits[yes], logits[no]]), 0)[0])
    assert r.score(QUERY, ["the stock market fell today"]) == pytest.approx([expected], abs=1e-6)
