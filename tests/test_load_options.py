"""One LoadOptions object and one loader for every local scorer; the same flags in `mmrank rank` and
`mmrank serve`; clear errors when an option needs a missing package or CUDA."""

from __future__ import annotations

import argparse

import pytest
import torch
from mmrank import InputError, JinaRerankerM0, ListwiseReranker, PairwiseReranker
from mmrank.models import options as opts
from mmrank.models.jina import JinaVLForRanking
from mmrank.models.options import LoadOptions, add_load_arguments, load_model, scorer_kwargs_from_args
from mmrank_testkit import tiny_model_dir


def test_merge_keeps_the_common_keywords_and_names_a_misspelt_one():
    base = LoadOptions(dtype="bfloat16", revision="v1")
    got = LoadOptions.merge(base, device="cpu", dtype="float32")
    assert (got.device, got.dtype, got.revision) == ("cpu", "float32", "v1")
    with pytest.raises(TypeError, match="'devcie'"):
        LoadOptions.merge(None, devcie="cpu")


@pytest.mark.parametrize("kw, match", [
    ({"dtype": "float64"}, "unknown dtype 'float64'"),
    ({"load_format": "pt"}, "load_format must be one of"),
    ({"quantization": "3bit"}, "quantization must be one of"),
    ({"quantization": "4bit", "quantization_config": object()}, "not both"),
    ({"model_kwargs": {"torch_dtype": "float16"}}, "must not set torch_dtype"),
    ({"load_format": "dummy", "device_map": "auto"}, "checkpoints only"),
])
def test_bad_options_are_refused_when_made(kw, match):
    with pytest.raises(InputError, match=match):
        LoadOptions(**kw)


def test_missing_packages_and_cuda_give_clear_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA is not available"):
        LoadOptions(device="cuda").resolve_device()
    with pytest.raises(InputError, match="unknown device 'gpu0'"):
        LoadOptions(device="gpu0").resolve_device()
    cpu = torch.device("cpu")
    monkeypatch.setattr(opts, "_installed", lambda name: False)
    with pytest.raises(InputError, match="needs the bitsandbytes package"):
        LoadOptions(quantization="8bit").check_requirements(cpu)
    with pytest.raises(InputError, match="device_map needs the accelerate package"):
        LoadOptions(device_map="auto").check_requirements(cpu)
    with pytest.raises(InputError, match="flash_attn package"):
        LoadOptions(attn_implementation="flash_attention_2").check_requirements(cpu)
    monkeypatch.setattr(opts, "_installed", lambda name: True)
    with pytest.raises(InputError, match="needs a CUDA device"):
        LoadOptions(quantization="4bit").check_requirements(cpu)
    with pytest.raises(InputError, match="runs on CUDA only"):
        LoadOptions(attn_implementation="flash_attention_2").check_requirements(cpu)
    # The scorer says so before touching the hub (the model id does not exist anywhere).
    with pytest.raises(InputError, match="CUDA is not available"):
        JinaRerankerM0("no-such/model", device="cuda")


def test_from_pretrained_receives_every_option():
    seen: dict = {}
    extra = {"key_mapping": None}  # a further from_pretrained kwarg passes through untouched

    def load(path, kw):
        seen.update(kw)
        kw = {k: v for k, v in kw.items() if k != "key_mapping"}
        return JinaVLForRanking.from_pretrained(path, **kw)

    o = LoadOptions(device="cpu", dtype="float32", attn_implementation="eager", local_files_only=True,
                    model_kwargs=extra)
    loaded = load_model(tiny_model_dir("jina"), o, load=load, build_random=JinaVLForRanking, head="jina", what="t")
    assert seen["dtype"] is torch.float32 and seen["attn_implementation"] == "eager"
    assert seen["local_files_only"] is True and "key_mapping" in seen
    assert loaded.device == torch.device("cpu") and not loaded.model.training
    assert loaded.model.config._attn_implementation == "eager"


def test_quantization_builds_a_bitsandbytes_config():
    kw = LoadOptions(device="cpu", quantization="4bit", device_map="auto").from_pretrained_kwargs(torch.bfloat16)
    q = kw["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_compute_dtype == torch.bfloat16
    assert kw["device_map"] == "auto"
    kw = LoadOptions(device="cpu", quantization="8bit").from_pretrained_kwargs(torch.float16)
    assert kw["quantization_config"].load_in_8bit and kw["device_map"] == {"": "cpu"}


def test_every_local_scorer_takes_the_same_object():
    o = LoadOptions(device="cpu", dtype="float32", attn_implementation="eager")
    p = JinaRerankerM0(tiny_model_dir("jina"), load=o)
    lm = tiny_model_dir("lm", "qwen2_vl")
    w = ListwiseReranker(lm, load=o, mode="single_pass", window_size=4, step=2)
    q = PairwiseReranker(lm, load=o, dtype="float32")
    for model in (p.model, w.vlm.model, q.vlm.model):
        assert next(model.parameters()).dtype == torch.float32
        assert model.config._attn_implementation == "eager"
    assert p.load_options == o and w.vlm.options == q.vlm.options == o
    # keywords override the object; speed settings of the pointwise scorer are keywords too
    r = JinaRerankerM0(tiny_model_dir("jina"), load=o, attn_implementation="sdpa", prefetch=False,
                       max_batch_tokens=512)
    assert r.model.config._attn_implementation == "sdpa" and r.prefetch is False and r.max_batch_tokens == 512
    with pytest.raises(TypeError, match="'prefetsh'.*prefetch"):
        JinaRerankerM0(tiny_model_dir("jina"), load=o, prefetsh=False)


def _parse(argv):
    p = argparse.ArgumentParser()
    add_load_arguments(p)
    return p.parse_args(argv)


def test_flags_give_the_options_and_refuse_what_a_mode_cannot_use():
    ns = _parse(["--device", "cpu", "--dtype", "bfloat16", "--attn-implementation", "eager", "--quantization", "8bit",
                 "--local-files-only", "--revision", "r1", "--max-batch-tokens", "4096", "--compile"])
    kw = scorer_kwargs_from_args(ns, "pointwise")
    assert kw["load"] == LoadOptions(device="cpu", dtype="bfloat16", attn_implementation="eager",
                                     quantization="8bit", local_files_only=True, revision="r1")
    assert kw["max_batch_tokens"] == 4096 and kw["compile_vision"] and kw["compile_lm"]
    with pytest.raises(InputError, match="pointwise mode"):
        scorer_kwargs_from_args(ns, "listwise")
    assert scorer_kwargs_from_args(_parse([]), "remote") == {}
    with pytest.raises(InputError, match="local modes"):
        scorer_kwargs_from_args(_parse(["--dtype", "float16"]), "remote")
    with pytest.raises(SystemExit):
        _parse(["--dtype", "float64"])


def test_rank_and_serve_expose_the_same_loading_flags():
    from mmrank.cli import build_parser as rank_parser
    from mmrank.server.cli import build_parser as serve_parser

    def flags(p):
        out = set()
        for a in p._actions:
            if a.option_strings:
                out.update(a.option_strings)
            if isinstance(a, argparse._SubParsersAction):
                for sub in a.choices.values():
                    out |= flags(sub)
        return out

    want = {"--device", "--dtype", "--attn-implementation", "--load-format", "--quantization", "--device-map",
            "--max-batch-tokens", "--compile", "--revision", "--cache-dir", "--local-files-only"}
    assert want <= flags(rank_parser()) and want <= flags(serve_parser())
