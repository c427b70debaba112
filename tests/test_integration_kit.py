"""mmrank.integration, the adapters' kit: the shared-reranker conflict check, adapter settings → scorer
arguments checked against the mode, image-source normalisation. Pure argument handling: no model is loaded
(the adapters' own tests and the conformance suite run the kit on the real model path)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from mmrank import ImageLoadError, ImagePolicy, InputError, RemoteReranker
from mmrank.integration import (
    HTTP_MODES,
    MODES,
    build_reranker,
    check_shared_reranker,
    check_threshold,
    check_top_n,
    core_document,
    data_uri,
    image_source_problem,
    kwargs_from_data,
    kwargs_to_data,
    path_or_url,
    scorer_kwargs,
)
from PIL import Image


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


def test_top_n_and_threshold_checks_name_the_parameter():
    assert check_top_n(None) is None and check_top_n(3) == 3
    for bad in (0, -1, True, False, 2.0, "3"):
        with pytest.raises(InputError, match=r"^top_k must be a positive integer or None"):
            check_top_n(bad, "top_k")
    assert check_threshold(None) is None and check_threshold(0) == 0 and check_threshold(-0.5) == -0.5
    for bad in (float("nan"), True, "0.5", [1]):
        with pytest.raises(InputError, match=r"^score_threshold must be a number or None"):
            check_threshold(bad)


def test_core_document_never_fails_the_call():
    doc, err = core_document(3, text="hi", image=None, doc_id="x", payload="P")
    assert err is None and doc.text == "hi" and doc.id == "x" and doc.payload == "P"
    doc, err = core_document(2, text=None, image=12, doc_id="img", payload="P")
    assert isinstance(err, ImageLoadError) and str(err).startswith("document 2 (id='img'): int is not an image source")
    assert doc.payload == "P" and doc.image is None
    _, err = core_document(0, text=5, image=None, doc_id=None, payload=None)
    assert type(err) is InputError and str(err) == "document 0: Document.text must be a str, got int"
    _, err = core_document(1, text="t", image=b"x", doc_id=7, payload=None, image_problem="blob.data is a str")
    assert str(err) == "document 1 (id='7'): blob.data is a str"
    for ok in (b"x", bytearray(b"x"), memoryview(b"x"), "a.png", Path("a.png"), Image.new("RGB", (2, 2))):
        assert image_source_problem(ok) is None
    for bad in (1, 1.5, {"url": "x"}, ["a.png"], object()):
        assert "is not an image source" in image_source_problem(bad)


def test_reranker_kwargs_to_and_from_data():
    policy = ImagePolicy.strict(timeout=2.5, root_path=Path("/data"))
    data = kwargs_to_data({"image_policy": policy, "max_length": 100})
    assert data == {"max_length": 100, "image_policy": {
        "max_bytes": policy.max_bytes, "max_pixels": policy.max_pixels, "timeout": 2.5,
        "schemes": ["data", "http", "https"], "allow_private_addresses": False, "max_redirects": 3,
        "root_path": "/data"}}
    assert json.loads(json.dumps(data)) == data
    back = kwargs_from_data(data)
    assert back["image_policy"] == replace(policy, root_path="/data") and back["max_length"] == 100
    assert kwargs_from_data(None) == {} == kwargs_to_data(None)
    with pytest.raises(InputError, match=r"image_policy'\] has unknown field\(s\) \['bogus'\]"):
        kwargs_from_data({"image_policy": {"bogus": 1}})
    # The loader takes the data form too (what a saved pipeline hands back).
    assert scorer_kwargs("pointwise", reranker_kwargs=data)["image_policy"] == back["image_policy"]
