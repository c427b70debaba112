"""mmrank.integration, the adapters' kit: the shared-reranker conflict check, adapter settings → scorer
arguments checked against the mode, image-source normalisation. Pure argument handling: no model is loaded
(the adapters' own tests and the conformance suite run the kit on the real model path)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmrank import InputError, RemoteReranker
from mmrank.integration import (
    HTTP_MODES,
    MODES,
    build_reranker,
    check_shared_reranker,
    data_uri,
    path_or_url,
    scorer_kwargs,
)


def test_modes_and_http_modes():
    assert MODES == ("pointwise", "listwise", "pairwise", "remote", "chat")
    assert HTTP_MODES == ("remote", "chat")


def test_shared_reranker_conflicts_name_every_setting():
    scorer = RemoteReranker("http://127.0.0.1:1", dialect="jina")
    assert check_shared_reranker(None, "X", device="cpu") is None
    assert check_shared_reranker(scorer, "X", device=None, batch_size=None, reranker_kwargs={}) is scorer
    with pytest.raises(ValueError, match=r"^device, reranker_kwargs configure a scorer that MyRanker loads"):
        check_shared_reranker(scorer, "MyRanker", device="cpu", batch_size=None, reranker_kwargs={"dtype": "auto"})
    with pytest.raises(TypeError, match="reranker must be an mmrank.Reranker, got str"):
        check_shared_reranker("jinaai/jina-reranker-m0", "X")


def test_scorer_kwargs_checks_each_setting_against_the_mode():
    assert scorer_kwargs("pointwise", device="cpu", batch_size=4, token="t", reranker_kwargs={"dtype": "float32"}) == {
        "device": "cpu", "batch_size": 4, "token": "t", "dtype": "float32"}
    assert scorer_kwargs("remote", url="http://h", api_key="k") == {"url": "http://h", "api_key": "k"}
    assert scorer_kwargs("listwise") == {}
    for mode, setting in (("remote", {"device": "cpu"}), ("remote", {"token": "t"}), ("listwise", {"batch_size": 2}),
                          ("pointwise", {"url": "http://h"}), ("pairwise", {"api_key": "k"})):
        name = next(iter(setting))
        with pytest.raises(InputError, match=f"{name} applies to modes"):
            scorer_kwargs(mode, **setting)
    with pytest.raises(InputError, match="unknown mode 'bogus'"):
        scorer_kwargs("bogus")  # type: ignore[arg-type]


def test_build_reranker_builds_the_mode():
    scorer = build_reranker("remote", "served-name", url="http://127.0.0.1:1", api_key="secret",
                            reranker_kwargs={"dialect": "vllm", "max_retries": 0})
    assert isinstance(scorer, RemoteReranker) and scorer.model == "served-name" and scorer.dialect == "vllm"
    assert scorer.has_api_key and "secret" not in repr(scorer)


def test_image_sources():
    assert data_uri("iVBORw0KGgo=", "image/png") == "data:image/png;base64,iVBORw0KGgo="
    assert data_uri(b"iVBORw0KGgo=") == "data:;base64,iVBORw0KGgo="
    assert data_uri("data:image/jpeg;base64,AAAA", "image/png") == "data:image/jpeg;base64,AAAA"
    assert path_or_url("pics/cat.png") == Path("pics/cat.png")
    for kept in ("https://x/cat.png", "HTTP://x/y", "file:///tmp/a.png", "data:image/png;base64,AA", b"bytes"):
        assert path_or_url(kept) == kept
