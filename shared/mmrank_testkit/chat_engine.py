"""A real OpenAI-compatible engine on 127.0.0.1 for the chat backend's end-to-end tests.

``scripted_qwen2(folder, answer)`` writes a tiny Qwen2 **text** model (the test kit's tokenizer, ChatML
template) whose weights are set so that greedy decoding after the assistant turn's opening
(``<|im_start|>assistant\\n``) writes ``answer`` and stops: every decoder layer's output projections are
zero, so the last hidden state is the current token's embedding and the model is a bigram table, and the
chain's tokens get orthogonal embeddings whose successor is the only large logit. Nothing is downloaded.

``transformers_serve(folder)`` starts ``transformers serve`` on that folder (CPU) on a free port, waits a
bounded time for ``/health`` and kills the process at the end.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def scripted_qwen2(folder: str | os.PathLike, answer: str) -> Path:
    """Write the scripted tiny Qwen2 model to ``folder`` (see the module docstring); returns the path."""
    import torch
    from mmrank.models.dummy import train_tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(out)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    start = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"][-1]
    chain = [start, *tok(answer, add_special_tokens=False)["input_ids"], eos]
    if len(set(chain[:-1])) != len(chain) - 1:
        raise ValueError(f"the tokens of {answer!r} repeat in the test tokenizer; a bigram model cannot write it")
    if tok.decode(chain[1:-1]) != answer:
        raise ValueError(f"{answer!r} does not survive the tokenizer round trip")
    hidden = 64
    if len(chain) > hidden:
        raise ValueError("answer too long for the scripted model")
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      rms_norm_eps=1e-6, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        head = model.lm_head.weight
        head.zero_()
        basis = torch.eye(hidden) * hidden ** 0.5  # RMS 1: the final norm leaves them as they are
        for k, (cur, nxt) in enumerate(zip(chain, chain[1:], strict=False)):
            emb[cur] = basis[k]
            head[nxt] += 10.0 * basis[k] / hidden ** 0.5
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def transformers_cli() -> list[str] | None:
    """How to run the ``transformers`` CLI with this interpreter (``None`` if transformers has no CLI here).
    ``python -m`` rather than the console script, whose shebang may name another environment's Python."""
    import importlib.util

    if importlib.util.find_spec("transformers.cli.transformers") is None:
        return None
    return [sys.executable, "-m", "transformers.cli.transformers"]


@contextlib.contextmanager
def transformers_serve(folder: str | os.PathLike, *, start_timeout: float = 60.0) -> Iterator[str]:
    """``transformers serve FOLDER --device cpu`` on a free port; yields the base URL (``http://127.0.0.1:P``)."""
    cli = transformers_cli()
    if cli is None:
        raise RuntimeError("the transformers CLI is not installed in this environment")
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen([*cli, "serve", str(folder), "--port", str(port), "--host", "127.0.0.1",
                             "--device", "cpu", "--dtype", "float32"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"

    def output() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")[-3000:]

    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {proc.returncode}:\n{output()}")
            try:
                if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve did not answer /health within {start_timeout:g}s:\n"
                                   f"{output()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
