"""Classes 2 and 3 of issue 11: text is text, and a document that cannot fit is that document's problem.

* Strings that are not UTF-8-encodable (lone surrogates from JSON escapes) are a per-document error naming
  the document (a query: InputError), never a tokenizer TypeError or an encoding error.
* Special-token strings in user text never create or remove image slots. Pointwise (jina-reranker-m0) text
  is tokenized exactly as the reference tokenizes its prompt string (specials recognised); a document whose
  text holds ``<|image_pad|>`` next to its own image — which the reference cannot score — is that
  document's error. Listwise and pairwise scorers defuse the strings and rank every document.
* An image query after a very long text document: the document's text is cut so the image stays whole.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmrank import Document, InputError, ListwiseReranker, PairwiseReranker, Query
from mmrank.models.processing import IMAGE_PAD
from mmrank.scorers.pointwise import SCORE_TOKEN_ID, jina_prompt
from mmrank_testkit import sample_image, tiny_model_dir

SPECIALS = ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|vision_pad|>",
            "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|object_ref_start|>", "<|box_start|>",
            "<|im_start|>system\n", "<|vision_start|><|image_pad|><|vision_end|>", "<|image_pad", "|>"]
def SLOW(n: int):  # noqa: N802 - a settings decorator
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])

plain_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@st.composite
def text_with_specials(draw) -> str:
    pieces = draw(st.lists(st.one_of(plain_text, st.sampled_from(SPECIALS)), min_size=1, max_size=6))
    return "".join(pieces)


@st.composite
def text_with_surrogate(draw) -> str:
    base = draw(plain_text)
    pos = draw(st.integers(0, len(base)))
    sur = chr(draw(st.integers(0xD800, 0xDFFF)))
    return base[:pos] + sur + base[pos:]


# ------------------------------------------------------------------ not-text
@settings(max_examples=200, derandomize=True, database=None)
@given(text_with_surrogate())
def test_query_with_a_lone_surrogate_is_an_input_error(text):
    with pytest.raises(InputError, match="not valid Unicode: lone surrogate"):
        Query(text=text)


@settings(max_examples=200, derandomize=True, database=None)
@given(st.one_of(text_with_surrogate(), text_with_specials(), plain_text))
def test_document_problem_is_exactly_the_not_encodable_text(text):
    doc = Document(text=text)
    try:
        text.encode("utf-8")
        assert doc.problem() is None
    except UnicodeEncodeError:
        assert "lone surrogate" in doc.problem()


@SLOW(6)
@given(text_with_surrogate(), st.sampled_from(["jina", "remote"]))
def test_a_surrogate_document_is_its_own_error_and_the_rest_is_ranked(jina_reranker, text, path):
    docs = [Document(text="fine one"), Document(text=text, id="bad"), Document(image=sample_image(2), text="ok")]
    if path == "jina":
        out = jina_reranker.rank("q", docs)
    else:
        from mmrank.scorers.base import Reranker

        # the shared preparation step every scorer (remote included) runs before encoding anything
        errors = Reranker._prepare_documents(jina_reranker, docs)
        assert errors[0] is None and errors[2] is None and "document 1 (id='bad')" in str(errors[1])
        return
    assert sorted(r.index for r in out) == [0, 1, 2]
    bad = [r for r in out if r.index == 1][0]
    assert bad.score is None and "document 1 (id='bad')" in bad.error and "lone surrogate" in bad.error
    assert all(r.score is not None for r in out if r.index != 1)


def test_remote_client_never_sends_a_surrogate(monkeypatch):
    from mmrank import RemoteReranker

    sent = []
    rr = RemoteReranker("http://127.0.0.1:9", dialect="jina")
    monkeypatch.setattr(rr, "_rank_documents", lambda q, docs: sent.extend(docs) or
                        [(i, 1.0 - i / 10) for i in range(len(docs))])
    out = rr.rank("q", ["a", "b\ud800", "c"])
    assert [d.text for d in sent] == ["a", "c"]
    assert [r.index for r in out if r.error] == [1]
    with pytest.raises(InputError, match="lone surrogate"):
        rr.rank("q\udfff", ["a"])


# ------------------------------------------------------------------ special tokens, pointwise
def _encoded(reranker, query, docs):
    return reranker._plan(Query.coerce(query), [Document.coerce(d) for d in docs])


@SLOW(120)
@given(text_with_specials(), text_with_specials())
def test_pointwise_text_pairs_tokenize_exactly_like_the_reference_prompt(jina_reranker, doc, query):
    """Text-only pairs: the ids are the tokenizer's ids of the reference's prompt string (specials
    recognised, as the reference's processor does when a batch has no image), plus token 100 — and no
    position is an image slot."""
    if not query.strip("\n"):
        query = "q"
    tok = jina_reranker.processor.tokenizer
    (item,) = _encoded(jina_reranker, query, [doc])
    expected = tok(jina_prompt(doc, query), add_special_tokens=False)["input_ids"][: jina_reranker.max_length - 1]
    assert item.ids == expected + [SCORE_TOKEN_ID]
    assert not any(item.types) and item.images == []


@SLOW(80)
@given(text_with_specials(), st.booleans())
def test_pointwise_special_strings_never_make_or_remove_image_slots(jina_reranker, text, image_query):
    """However the text is spelled, the image tokens of a pair are exactly those of its real images."""
    proc = jina_reranker.processor
    q = Query(image=sample_image(7)) if image_query else Query(text=text or "q")
    docs = [Document(text=text or "x"), Document(image=sample_image(3), text=text.replace(IMAGE_PAD, "") or None)]
    items = _encoded(jina_reranker, q, docs)
    for item in items:
        expect = sum(proc.num_image_tokens(r.grid) for r in item.images)
        assert sum(item.types) == expect
        assert len(item.images) == (1 if image_query else 0) + (item is items[1])


@SLOW(5)
@given(text_with_specials())
def test_pointwise_ranking_with_special_strings_keeps_every_document(jina_reranker, text):
    docs = [Document(text=text, id="t"), Document(image=sample_image(3), text=text, id="img"),
            Document(text="plain", id="p")]
    out = jina_reranker.rank("q " + text, docs)
    assert sorted(r.index for r in out) == [0, 1, 2]
    img = [r for r in out if r.id == "img"][0]
    if IMAGE_PAD in text:  # the reference cannot score it: this document's error, named
        assert img.score is None and "document 1 (id='img')" in img.error and IMAGE_PAD in img.error
    else:
        assert img.score is not None
    assert all(r.score is not None for r in out if r.id != "img")


def test_image_pad_next_to_a_real_image_raises_naming_the_document_on_request(jina_reranker):
    docs = ["a", Document(image=sample_image(1), text="see <|image_pad|>", id="cap")]
    with pytest.raises(InputError, match=r"document 1 \(id='cap'\).*image placeholder"):
        jina_reranker.rank("q", docs, on_error="raise")


# ------------------------------------------------------------------ special tokens, listwise and pairwise
_vlm_cache: dict = {}


def _listwise():
    if "l" not in _vlm_cache:
        _vlm_cache["l"] = ListwiseReranker(tiny_model_dir("lm", "qwen2_vl"), device="cpu", dtype="float32",
                                           mode="single_pass", window_size=4, step=2)
    return _vlm_cache["l"]


def _pairwise():
    if "p" not in _vlm_cache:
        _vlm_cache["p"] = PairwiseReranker(tiny_model_dir("lm", "qwen2_vl"), device="cpu", dtype="float32")
    return _vlm_cache["p"]


@SLOW(3)
@given(st.lists(text_with_specials(), min_size=2, max_size=3), text_with_specials(), st.booleans())
def test_listwise_and_pairwise_rank_every_document_with_special_strings(texts, query, with_image):
    docs = [Document(text=t, id=f"d{i}") for i, t in enumerate(texts)]
    if with_image:
        docs.append(Document(image=sample_image(4), text=texts[0], id="img"))
    q = query if query.strip() else "q"
    for scorer in (_listwise(), _pairwise()):
        out = scorer.rank(q, docs, on_error="raise")
        assert sorted(r.index for r in out) == list(range(len(docs)))
        assert all(r.score is not None for r in out)
    conv, _ = _listwise().window_conversation(q, docs)
    text = _listwise().vlm.render(conv)
    assert text.count(IMAGE_PAD) == len(conv.images) == (1 if with_image else 0)


# ------------------------------------------------------------------ class 3: documents that cannot fit
@SLOW(12)
@given(st.integers(50, 3000), st.integers(150, 700))
def test_image_query_and_long_text_documents_fit_by_cutting_the_text(jina_reranker, words, max_length):
    """An image query after a long text document would be cut through its image: the text is cut instead
    (the image stays whole), other documents are untouched, nothing fails."""
    from mmrank import JinaRerankerM0

    key = ("jina", max_length)
    if key not in _vlm_cache:
        _vlm_cache[key] = JinaRerankerM0(tiny_model_dir("jina"), device="cpu", dtype="float32",
                                         max_length=max_length, max_query_length=64, max_pixels=64 * 28 * 28)
    rr = _vlm_cache[key]
    q = Query(image=sample_image(9, size=(200, 160)))
    long = " ".join(f"w{i}" for i in range(words))
    items = _encoded(rr, q, [long, "short"])
    n_img = rr.processor.num_image_tokens(items[0].images[0].grid)
    for item in items:
        assert len(item.ids) <= max_length
        assert sum(item.types) == n_img  # the image is whole
        assert item.types[-1 - n_img - 1:-1].count(1) == n_img  # and last, before token 100 and vision_end
    short_ids = rr.processor.token_ids(jina_prompt("short", "<|vision_start|><|image_pad|><|vision_end|>"),
                                       [items[1].images[0].grid])[0]
    assert items[1].ids == short_ids + [SCORE_TOKEN_ID]


def test_a_document_that_cannot_fit_at_all_names_itself():
    from mmrank import JinaRerankerM0

    rr = JinaRerankerM0(tiny_model_dir("jina"), device="cpu", dtype="float32", max_length=40, max_query_length=8)
    with pytest.raises(InputError, match=r"document 0 \(id='big'\).*max_length=40"):
        rr.rank(Query(image=sample_image(9, size=(200, 160))), [Document(text="a b c", id="big")])
