"""Shared prompt plumbing (mmrank.scorers.prompts): one model-agnostic conversation rendered by the chat
template for local scorers and as OpenAI messages for chat backends; the MonoQwen2-VL preset restated from
its model card; pairwise no longer depends on listwise."""

from __future__ import annotations

import ast
import base64
import io
from pathlib import Path

import pytest
import torch
from mmrank import Document, InputError, PairwiseReranker, Query
from mmrank.scorers.prompts import (
    MONOQWEN_PROMPT,
    TEXT_PROMPT,
    Conversation,
    cut_words,
    fill,
    listwise_conversation,
    pairwise_conversation,
)
from mmrank_testkit import sample_image, tiny_model_dir
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoTokenizer

SCORERS = Path(__file__).resolve().parents[1] / "packages" / "mmrank" / "src" / "mmrank" / "scorers"


def test_fill_keeps_braces_and_places_images():
    img = sample_image(1)
    parts = fill("a {x} b {image} {unknown} {{y}}", x="{not a field}", image=img)
    assert parts == ["a ", "{not a field}", " b ", img, " ", "{unknown}", " {", "{y}", "}"]


def test_cut_words():
    assert cut_words("a  b\nc d", 3) == "a b c"
    assert cut_words("a  b", 3) == "a  b" and cut_words("x " * 5, None) == "x " * 5


def test_one_conversation_two_renderings():
    img = sample_image(3)
    conv, ids = listwise_conversation(Query(text="q [1]"), [Document(text="see [2]"), Document(image=img)],
                                      TEXT_PROMPT)
    assert ids == ["1", "2"] and conv.images == [img]
    assert [t.role for t in conv.turns] == ["system", "user", "assistant", "user", "assistant", "user",
                                            "assistant", "user"]
    hf = conv.messages
    assert hf[3] == {"role": "user", "content": "[1] see (2)"}  # identifiers in user text rewritten
    assert hf[5]["content"] == [{"type": "text", "text": "[2] "}, {"type": "image"}]
    oa = conv.openai_messages()
    assert oa[3] == {"role": "user", "content": "[1] see (2)"} and oa[0]["role"] == "system"
    url = oa[5]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    back = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert back.size == img.size
    assert oa[-1]["content"].startswith("Search Query: q (1).")
    assert conv.openai_messages(lambda im: "https://x/img.png")[5]["content"][1]["image_url"]["url"] == \
        "https://x/img.png"


def test_pairwise_does_not_import_listwise():
    tree = ast.parse((SCORERS / "pairwise.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "listwise" not in imported and "prompts" in imported


def test_monoqwen_preset_matches_its_model_card():
    """MonoQwen2-VL-v0.1's card: one user turn [image, instruction with the query], chat template with the
    generation prompt, score = softmax over the True/False logits at the last position."""
    path = tiny_model_dir("lm", "qwen2_vl")
    r = PairwiseReranker(path, device="cpu", dtype="float32", prompt="monoqwen")
    assert r.answer_words == ("True", "False")
    page = sample_image(5)
    query = "what is the revenue?"
    conv = r.conversation(query, Document(image=page, text="ignored caption"))
    assert [t.role for t in conv.turns] == ["user"] and conv.images == [page]
    instruction = ("Assert the relevance of the previous image document to the following query, answer True or "
                   f"False. The query is: {query}")
    card = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    assert conv.messages == card
    tok = AutoTokenizer.from_pretrained(path)
    expected = tok.apply_chat_template(card, tokenize=False, add_generation_prompt=True)
    assert r.vlm.render(conv) == expected
    # the score: the raw model's last-position logits on the card's prompt (tiny tokenizer: first tokens)
    inputs, _ = r.vlm.encode([expected], [[page]])
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    base = len(tok("assistant\n", add_special_tokens=False)["input_ids"])
    t, f = (tok("assistant\n" + w, add_special_tokens=False)["input_ids"][base] for w in ("True", "False"))
    assert (t, f) == (r.yes_id, r.no_id)
    want = float(torch.softmax(torch.stack([logits[t], logits[f]]), 0)[0])
    assert r.score(query, [Document(image=page)])[0] == pytest.approx(want, abs=1e-4)
    ranked = r.rank(query, [Document(text="words only", id="txt"), Document(image=page)])
    assert [d.index for d in ranked] == [1, 0] and ranked[1].score is None
    assert "document 0 (id='txt')" in ranked[1].error and "only text" in ranked[1].error
    with pytest.raises(InputError, match="only text"):
        r.score(query, [Document(image=page), Document(text="words only")], on_error="raise")


def test_pairwise_conversation_refuses_what_the_template_cannot_show():
    with pytest.raises(InputError, match="no place for a document's text"):
        pairwise_conversation(Query(text="q"), Document(text="t"), MONOQWEN_PROMPT)
    conv = Conversation().add("user", "a", "", "b", sample_image(1), "c")
    assert conv.turns[0].parts[0] == "ab" and len(conv.turns[0].parts) == 3
