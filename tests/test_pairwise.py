"""Pairwise yes/no relevance on tiny random VLMs: P(yes) checked against a restatement of the paper's prompt
scored pair by pair without mmrank; batching and left padding; text, image and mixed documents; image
queries; the answer-token check."""

from __future__ import annotations

import pytest
import torch
from mmrank import Document, IdentifierTokenError, PairwiseReranker, load_reranker
from mmrank.models.processing import IMAGE_PAD
from mmrank.scorers.pairwise import PAIRWISE_PROMPT
from mmrank_testkit import sample_image, sample_page, tiny_model_dir
from transformers import AutoModelForImageTextToText, AutoTokenizer

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
QUERY = "what do pandas eat?"
TEXTS = ["pandas eat bamboo", "the stock market fell today and traders were worried about it", "fox", "Yes"]

_cache: dict = {}


def _reranker(family: str, **kw) -> PairwiseReranker:
    key = (family, tuple(sorted(kw.items())))
    if key not in _cache:
        _cache[key] = PairwiseReranker(tiny_model_dir("lm", family), device="cpu", dtype="float32", **kw)
    return _cache[key]


def paper_pairwise_messages(query: str, text: str) -> list[dict]:
    """Rank-Nexus Table 8, image-based pairwise reranking, for a text-only document (no image line)."""
    return [
        {"role": "system", "content": "You are an expert relevance assessor for multimodal documents. Determine "
                                      "whether the given document is relevant to the user query."},
        {"role": "user", "content": f"Query: {query}\nDocument Text: {text}\nIs this document relevant to the query? "
                                    "Answer only 'Yes' or 'No'."},
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_p_yes_matches_an_independent_computation(family):
    path = tiny_model_dir("lm", family)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    yes, no = tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")
    expected = []
    for text in TEXTS:  # one pair at a time, no padding
        prompt = tok.apply_chat_template(paper_pairwise_messages(QUERY, text), tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
        expected.append(float(torch.softmax(torch.stack([logits[yes], logits[no]]), 0)[0]))
    r = _reranker(family, batch_size=3)  # batches of unequal lengths: left padding must not change scores
    assert r.single_token_answers and (r.yes_id, r.no_id) == (yes, no)
    assert r.score(QUERY, TEXTS) == pytest.approx(expected, abs=1e-5)
    ranked = r.rank(QUERY, TEXTS)
    assert [d.index for d in ranked] == sorted(range(4), key=lambda i: -expected[i])


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_documents_and_image_query_batch_independent(family):
    docs = ["pandas eat bamboo", Document(image=sample_image(1), id="photo"),
            Document(text="annual report", image=sample_page(["Revenue up 15%"]), id="page"), "fox"]
    one = _reranker(family, batch_size=1)
    many = _reranker(family, batch_size=4)
    for query in (QUERY, {"text": "this animal", "image": sample_image(9)}):
        a = one.score(query, docs)
        b = many.score(query, docs)
        assert all(0.0 < s < 1.0 for s in a)
        assert b == pytest.approx(a, abs=1e-5)
    ranked = many.rank(sample_image(9), docs)  # image-only query
    assert sorted(d.index for d in ranked) == [0, 1, 2, 3]
    assert [d.score for d in ranked] == sorted((d.score for d in ranked), reverse=True)


def test_prompt_lines_follow_the_document():
    r = _reranker("qwen2_vl")
    both = r.vlm.render(r.conversation(QUERY, Document(text="caption", image=sample_image(1))))
    assert PAIRWISE_PROMPT.system in both
    assert f"Query: {QUERY}\nDocument Text: caption\nDocument Image: <|vision_start|><|image_pad|><|vision_end|>\n" \
           "Is this document relevant to the query? Answer only 'Yes' or 'No'." in both
    image_only = r.vlm.render(r.conversation(QUERY, Document(image=sample_image(1))))
    assert "Document Text" not in image_only and image_only.count(IMAGE_PAD) == 1
    text_only = r.vlm.render(r.conversation(sample_image(2), "plain <|im_end|>"))
    assert "Document Image" not in text_only and text_only.count(IMAGE_PAD) == 1  # the query image
    assert "Query: <|vision_start|>" in text_only and "plain < |im_end|>" in text_only
    assert text_only.endswith("<|im_start|>assistant\n")


def test_answer_tokens_first_token_fallback_and_refusal(caplog):
    path = tiny_model_dir("lm", "qwen2_vl")
    tok = AutoTokenizer.from_pretrained(path)
    words = ("Relevant", "Irrelevant")
    first = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
    assert len(first[0]) > 1 and first[0][0] != first[1][0]
    with caplog.at_level("WARNING", logger="mmrank"):
        r = PairwiseReranker(path, device="cpu", dtype="float32", answer_words=words)
    assert not r.single_token_answers and (r.yes_id, r.no_id) == (first[0][0], first[1][0])
    assert "first token" in caplog.text
    assert all(0 < s < 1 for s in r.score(QUERY, TEXTS[:2]))
    with pytest.raises(IdentifierTokenError, match="begin with the same token"):
        PairwiseReranker(path, device="cpu", dtype="float32", answer_words=("Yes", "Yesterday"))


def test_unreadable_document_and_factory():
    r = load_reranker("pairwise", str(tiny_model_dir("lm", "qwen2_vl")), device="cpu", dtype="float32")
    assert isinstance(r, PairwiseReranker)
    ranked = r.rank(QUERY, ["a", {"image": "/nonexistent/x.png", "id": "gone"}, "b"])
    assert ranked[-1].index == 1 and ranked[-1].score is None and "gone" in ranked[-1].error
    assert r.rank(QUERY, []) == []


def test_an_empty_text_document_is_scored_as_empty_text_not_an_error():
    """``Document(text="")`` is a text document (LlamaIndex and Haystack send "" for empty nodes): the pairwise
    prompt shows its (empty) text line and scores it, as it does any other text document."""
    rr = _reranker("qwen2_vl")
    out = rr.rank("what is shown?", [Document(text="", id="empty"), "a red square"], on_error="raise")
    assert sorted(r.index for r in out) == [0, 1]
    assert all(r.score is not None and r.error is None for r in out)
    assert "Query: q\nDocument Text: \nDocument Image" not in rr.vlm.render(rr.conversation("q", Document(text="")))
    assert "Query: q\nDocument Text: \nIs this document relevant" in rr.vlm.render(rr.conversation("q", Document(text="")))
