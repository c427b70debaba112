"""The command line without traps: version, ``python -m mmrank``, checked options with one-line errors, help on
every option, DOC arguments that name missing files or directories, text files in other encodings."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmrank.cli import TEXT_ENCODINGS, UsageError, build_parser, document_from_arg, looks_like_path, main
from mmrank_testkit import sample_image

TIMEOUT = 180


def _run(*args: str, module: str = "mmrank", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, **(env or {})})


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, stderr
    return errors[0]


# ---------------------------------------------------------------------------------------------- entry points
def test_version_and_python_dash_m():
    import mmrank

    res = _run("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"mmrank {mmrank.__version__}"
    res = _run("rank", "--help")
    flat = "".join(res.stdout.split())  # argparse wraps lines (also at hyphens)
    assert res.returncode == 0 and "--documents-file" in flat and "CC-BY-NC-4.0,NON-COMMERCIAL" in flat
    assert "fallingbacktoLatin-1" in flat  # the stated encoding fallback


@pytest.mark.parametrize("argv, needle", [
    (["rank", "-q", "x", "--dtype", "flaot16", "doc"], "invalid choice: 'flaot16'"),
    (["rank", "-q", "x", "--device", "gpu0", "doc"], "is not a device"),
    (["rank", "-q", "x", "--top-n", "-3", "doc"], "must be >= 0"),
    (["rank", "-q", "x", "--batch-size", "0", "doc"], "must be >= 1"),
    (["rank", "-q", "x", "--batch-size", "many", "doc"], "not an integer"),
    (["rank", "-q", "x", "--score-threshold", "nan", "doc"], "not a finite number"),
    (["rank", "-q", "x", "--window-size", "3", "doc"], "--mode listwise only"),
    (["rank", "-q", "x", "--mode", "remote", "--device", "cpu", "doc"], "local modes"),
    (["rank", "-q", "x", "--mode", "listwise", "--batch-size", "4", "doc"], "listwise batches by window"),
    (["rank", "doc"], "--query"),
    (["rank", "-q", "x"], "no documents"),
    (["rank", "-q", "x", "--output", "o.jsonl", "doc"], "--output goes with --input"),
    (["rank", "-q", "x", "--query-image", "no/such/photo.png", "doc"], "no such file"),
])
def test_bad_options_are_one_line_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as info:  # argparse's own errors exit 2
        raise SystemExit(main(argv))
    assert info.value.code == 2
    line = _one_line_error(capsys.readouterr().err)
    assert needle in line


def test_device_cuda_without_cuda_is_one_line(capsys):
    import torch

    if torch.cuda.is_available():  # the message is for machines without CUDA; here the device exists
        assert main(["rank", "-q", "x", "--device", "cuda:99", "doc"]) == 2
        assert "CUDA device(s)" in _one_line_error(capsys.readouterr().err)
        return
    assert main(["rank", "-q", "x", "--device", "cuda", "doc"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "CUDA is not available" in line and "--device cpu" in line


def test_bad_dtype_in_a_real_process_has_no_traceback():
    res = _run("rank", "-q", "x", "--dtype", "float8", "doc")
    assert res.returncode == 2
    assert "invalid choice" in _one_line_error(res.stderr)


def _actions(parser: argparse.ArgumentParser, path: str = "mmrank"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def _all_parsers():
    from mmrank.evaluation import build_parser as eval_parser
    from mmrank.rerank_run import build_parser as rerank_run_parser

    return [build_parser(), eval_parser(), rerank_run_parser()]


def test_every_option_of_every_subcommand_has_help():
    seen = 0
    for parser in _all_parsers():
        for path, action in _actions(parser, parser.prog):
            if isinstance(action, argparse._SubParsersAction._ChoicesPseudoAction):
                continue
            seen += 1
            assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, \
                f"{path}: {action.option_strings or action.dest} has no help"
    assert seen >= 40


# ---------------------------------------------------------------------------------------------- DOC arguments
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12)
suffixes = st.sampled_from([".txt", ".md", ".png", ".jpg", ".json", ".pdf", ".csv"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(names, min_size=1, max_size=3), suffix=suffixes, absolute=st.booleans())
def test_missing_path_like_docs_are_errors(tmp_path, parts, suffix, absolute):
    rel = "/".join(parts) + suffix
    arg = str(tmp_path / "missing" / rel) if absolute else f"missing-{rel}"
    assert looks_like_path(arg)
    with pytest.raises(UsageError, match=r"no such file exists; pass --text"):
        document_from_arg(arg, 0)
    assert document_from_arg(arg, 0, literal=True).text == arg  # --text: a literal passage


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(names, min_size=1, max_size=3), trailing=st.booleans())
def test_directories_are_errors(tmp_path, parts, trailing):
    d = tmp_path.joinpath(*parts)
    d.mkdir(parents=True, exist_ok=True)
    with pytest.raises(UsageError, match="is a directory"):
        document_from_arg(str(d) + ("/" if trailing else ""), 3)


# Passages: words with spaces and punctuation, no path separators.
passage = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00"),
                  min_size=1, max_size=80).filter(lambda s: any(c.isspace() for c in s.strip()) or not s.strip())


@settings(max_examples=80, deadline=None)
@given(text=passage)
def test_passages_stay_passages(text):
    if os.path.lexists(text):  # pragma: no cover - a generated passage that names a file here
        return
    doc = document_from_arg(text, 5)
    assert doc.text == text and doc.image is None and doc.id == "doc5"


encodings = st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "cp1252"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x2FF, blacklist_categories=("Cs",)),
                    min_size=1, max_size=200), enc=encodings, name=names)
def test_text_files_in_any_encoding(tmp_path, text, enc, name):
    try:
        data = text.encode(enc)
    except UnicodeEncodeError:
        return  # cannot be written in that encoding: nothing to read back
    if b"\x00" in data:
        return
    path = tmp_path / f"{name}.txt"
    path.write_bytes(data)
    # The stated rule: UTF-8 (a BOM dropped), else Latin-1.
    try:
        expected = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        expected = data.decode("latin-1")
    doc = document_from_arg(str(path), 0)
    assert doc.image is None and doc.text == expected and doc.id == str(path)
    if enc in ("utf-8", "utf-8-sig") or text.isascii():
        assert doc.text == text
    elif enc == "latin-1" and expected != text:  # only when the Latin-1 bytes happen to be valid UTF-8
        assert data.decode("utf-8") == expected
    assert TEXT_ENCODINGS == ("utf-8-sig", "latin-1")


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("JPEG", ".jpg"), ("GIF", ".gif"), ("BMP", ".bmp"),
                                         ("WEBP", ".webp"), ("TIFF", ".tiff"), ("PNG", ".txt"), ("JPEG", "")])
def test_image_files_by_suffix_or_content(tmp_path, fmt, suffix):
    path = tmp_path / f"picture{suffix}"
    buf = io.BytesIO()
    sample_image(1).save(buf, format=fmt)
    path.write_bytes(buf.getvalue())
    doc = document_from_arg(str(path), 0)
    assert doc.text is None and Path(doc.image) == path
    doc.load_image()  # and it decodes


def test_binary_and_unreadable_files(tmp_path):
    b = tmp_path / "blob.bin"
    b.write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(UsageError, match="binary file"):
        document_from_arg(str(b), 0)
    if os.geteuid() != 0:
        locked = tmp_path / "locked.txt"
        locked.write_text("secret")
        locked.chmod(0)
        with pytest.raises(UsageError, match="cannot be read"):
            document_from_arg(str(locked), 0)


def test_cli_missing_file_and_directory_exit_2(tmp_path, capsys):
    assert main(["rank", "-q", "x", str(tmp_path / "nope.txt")]) == 2
    assert "no such file" in _one_line_error(capsys.readouterr().err)
    assert main(["rank", "-q", "x", str(tmp_path)]) == 2
    assert "is a directory" in _one_line_error(capsys.readouterr().err)


def test_latin1_file_ranks_as_text(jina_dir, tmp_path, capsys):
    import json

    path = tmp_path / "menu.txt"
    path.write_bytes("Crème brûlée à la carte".encode("latin-1"))
    assert main(["rank", "-q", "dessert", "--model", str(jina_dir), "--device", "cpu", "--json",
                 "--return-documents", str(path), "plain passage"]) == 0
    out = json.loads(capsys.readouterr().out)
    by_id = {r["id"]: r for r in out["results"]}
    assert by_id[str(path)]["document"]["text"] == "Crème brûlée à la carte"
    assert by_id[str(path)]["relevance_score"] is not None and "error" not in by_id[str(path)]


def test_full_size_dummy_says_what_it_costs_and_ticks(capsys):
    import time

    from mmrank.cli import _loading_notice

    args = argparse.Namespace(mode="pointwise", load_format="dummy", model=None)
    with _loading_notice(args, quiet=False):
        time.sleep(2.3)  # stands for the ~40 s build; the notice and the ticker are what is tested
    err = capsys.readouterr().err
    assert "about 40 s and ~9 GB of RAM on a CPU" in err and "scores mean nothing" in err
    assert "building dummy model: 00:02 elapsed" in err
    for quiet_args in (argparse.Namespace(mode="pointwise", load_format="dummy", model="tiny"),
                       argparse.Namespace(mode="pointwise", load_format="auto", model=None)):
        with _loading_notice(quiet_args, quiet=False):
            pass
        assert capsys.readouterr().err == ""


def test_undecodable_file_names_and_unwritable_outputs(jina_dir, tmp_path, capsys):
    import json

    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9 notes.txt")  # a Latin-1 name on a UTF-8 system
    with open(raw, "wb") as f:
        f.write(b"coffee notes")
    arg = os.fsdecode(raw)  # what argv holds: a lone surrogate for the byte
    assert main(["rank", "-q", "coffee", "--model", str(jina_dir), "--device", "cpu", "--json", arg]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["id"] == arg and result["relevance_score"] is not None
    assert main(["rank", "-q", "coffee", "--model", str(jina_dir), "--device", "cpu", "--quiet", arg]) == 0
    assert "\\udce9" in capsys.readouterr().out  # the table escapes what it cannot print
    src = tmp_path / "in.jsonl"
    src.write_text('{"query": "q", "candidates": ["a"]}\n')
    assert main(["rank", "-i", str(src), "-o", str(tmp_path / "no" / "such" / "out.jsonl"), "--quiet"]) == 2
    assert "does not exist" in _one_line_error(capsys.readouterr().err)
