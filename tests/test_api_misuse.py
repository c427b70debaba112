"""Class 10 of issue 11 (library part): wrong types for any argument of a public entry point get a clear
:class:`InputError` naming the argument — never a raw TypeError/AttributeError from deep inside."""

from __future__ import annotations

import asyncio
import pathlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmrank import Document, ImagePolicy, InputError, Query, RemoteReranker, load_image
from mmrank.inputs.documents import coerce_documents
from mmrank_testkit import sample_image

COUNT: dict[str, int] = {}


class _Odd:
    def __repr__(self) -> str:
        return "<odd>"


# Values of the wrong type for most arguments (generated, plus a few awkward objects).
junk = st.one_of(
    st.integers(), st.floats(allow_nan=True), st.complex_numbers(), st.booleans(),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sets(st.integers(), max_size=2), st.tuples(st.integers()), st.just(object()), st.just(_Odd()),
    st.just(print), st.just(int), st.just(Ellipsis), st.just(NotImplemented),
)
not_text = st.one_of(junk, st.binary(max_size=8), st.just(None).filter(lambda _: False))
SETTINGS = settings(max_examples=60, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _input_error(fn, *a, **k) -> str:
    with pytest.raises(InputError) as exc:
        fn(*a, **k)
    return str(exc.value)


@SETTINGS
@given(junk)
def test_query_and_document_text_must_be_text(value):
    assert "text must be a str" in _input_error(Query, text=value)
    assert "Document.text must be a str" in _input_error(Document, text=value)


@SETTINGS
@given(junk.filter(lambda v: not isinstance(v, (str, bytes, bytearray, pathlib.Path))))
def test_image_arguments_must_be_images(value):
    assert "Query.image must be" in _input_error(Query, image=value)
    assert "Document.image must be" in _input_error(Document, image=value)


@SETTINGS
@given(junk.filter(lambda v: not isinstance(v, dict)))
def test_coerce_names_the_bad_value(value):
    assert "cannot make a query" in _input_error(Query.coerce, value)
    assert "cannot make a document" in _input_error(Document.coerce, value)


@SETTINGS
@given(st.one_of(junk.filter(lambda v: not isinstance(v, (list, set, tuple, dict))), st.none(), st.text(),
                 st.binary(), st.just(Document(text="x")), st.just(sample_image(0))))
def test_documents_must_be_a_list_of_documents(value):
    assert "documents must be a list" in _input_error(coerce_documents, value)


@SETTINGS
@given(st.lists(st.one_of(st.text(max_size=5), junk.filter(lambda v: not isinstance(v, dict))), min_size=1,
                max_size=4).filter(lambda xs: any(not isinstance(x, str) for x in xs)))
def test_a_bad_item_in_the_documents_is_named_by_position(items):
    first = next(i for i, x in enumerate(items) if not isinstance(x, str))
    assert f"document {first}:" in _input_error(coerce_documents, items)


@pytest.fixture(scope="module")
def scorers(jina_reranker):
    # The argument checks are the base class's, shared by every scorer: a local model and a remote client.
    return [jina_reranker, RemoteReranker("http://127.0.0.1:9", dialect="jina")]


ARGS = {
    "query": junk.filter(lambda v: not isinstance(v, dict)),
    "documents": st.one_of(st.none(), st.integers(), st.floats(), st.text(min_size=1), st.just(object())),
    "top_n": st.one_of(st.floats(), st.text(max_size=3), st.integers(max_value=-1), st.booleans(),
                       st.lists(st.integers(), max_size=1)),
    "score_threshold": st.one_of(st.text(max_size=3), st.booleans(), st.just(float("nan")),
                                 st.lists(st.floats(), max_size=1), st.just(object())),
    "on_error": st.one_of(st.text(max_size=5).filter(lambda t: t not in ("raise", "last")), st.integers(),
                          st.lists(st.text(), max_size=1), st.just(False), st.just(object())),
}


@SETTINGS
@given(st.sampled_from(sorted(ARGS)), st.data(), st.sampled_from(["rank", "score", "arank", "ascore"]))
def test_rank_and_score_arguments(scorers, name, data, method):
    value = data.draw(ARGS[name])
    if method in ("score", "ascore") and name in ("top_n", "score_threshold"):
        return
    kwargs = {"query": "q", "documents": ["a", "b"]}
    kwargs[name] = value
    for scorer in scorers:
        fn = getattr(scorer, method)
        call = (lambda f=fn: asyncio.run(f(**kwargs))) if method.startswith("a") else (lambda f=fn: f(**kwargs))
        msg = _input_error(call)
        COUNT[name] = COUNT.get(name, 0) + 1
        key = {"query": "query", "documents": "documents", "top_n": "top_n", "score_threshold": "score_threshold",
               "on_error": "on_error"}[name]
        assert key in msg, msg


def test_the_issue_examples(jina_reranker):
    assert "text must be a str, got int" in _input_error(Query, text=123)
    assert "documents must be a list" in _input_error(jina_reranker.rank, "q", None)
    assert "documents must be a list" in _input_error(lambda: asyncio.run(jina_reranker.arank("q", None)))
    assert "document 1:" in _input_error(jina_reranker.rank, "q", ["a", None])
    assert "on_error" in _input_error(jina_reranker.rank, "q", ["a"], on_error="")


POLICY_ARGS = {
    "max_bytes": st.one_of(st.floats(), st.text(max_size=3), st.integers(max_value=-1), st.none()),
    "max_pixels": st.one_of(st.floats(), st.text(max_size=3), st.integers(max_value=-1), st.none()),
    "timeout": st.one_of(st.text(max_size=3), st.integers(max_value=0), st.none(), st.just(float("nan"))),
    "schemes": st.one_of(st.text(min_size=1, max_size=5), st.integers(), st.lists(st.integers(), min_size=1)),
    "allow_private_addresses": st.one_of(st.integers(), st.text(max_size=3), st.none()),
    "max_redirects": st.one_of(st.floats(), st.text(max_size=3), st.integers(max_value=-1)),
    "root_path": st.one_of(st.integers(), st.lists(st.text(), max_size=1)),
}


@SETTINGS
@given(st.sampled_from(sorted(POLICY_ARGS)), st.data())
def test_image_policy_fields(name, data):
    value = data.draw(POLICY_ARGS[name])
    assert f"ImagePolicy.{name}" in _input_error(ImagePolicy, **{name: value})


@SETTINGS
@given(st.one_of(junk, st.just("strict"), st.none()))
def test_load_image_policy_and_source(value):
    if value is not None:
        assert "policy must be" in _input_error(load_image, sample_image(0), value)
    if not isinstance(value, (str, bytes, bytearray)):
        with pytest.raises(InputError):
            load_image(value)
