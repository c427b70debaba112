"""Tiny randomly initialised models of the real architectures, built offline once per process.

They are written to a temporary folder laid out like the published checkpoints and loaded by the tests
through the same ``from_pretrained`` path users take. Set ``MMRANK_TESTKIT_DIR`` to keep them between runs.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from filelock import FileLock
from mmrank.models.dummy import build_checkpoint

_lock = threading.Lock()
_root: Path | None = None


def _base() -> Path:
    global _root
    if _root is None:
        env = os.environ.get("MMRANK_TESTKIT_DIR")
        _root = Path(env) if env else Path(tempfile.gettempdir()) / f"mmrank-testkit-{os.getuid()}"
        _root.mkdir(parents=True, exist_ok=True)
    return _root


def tiny_model_dir(kind: str = "jina", family: str = "qwen2_vl", seed: int = 0) -> Path:
    """Path of a tiny checkpoint: ``kind="jina"`` (Qwen2-VL + score head, jina-reranker-m0 layout) or
    ``kind="lm"`` (a generative ``family`` VLM: qwen2_vl, qwen2_5_vl, qwen3_vl). Built on first use."""
    version = "v2"  # bump when the builder changes
    out = _base() / f"{kind}-{family}-s{seed}-{version}"
    with _lock, FileLock(str(out) + ".lock"):
        if not (out / "config.json").exists() or not any(out.glob("*.safetensors")):
            build_checkpoint(out, family=family, head=kind, size="tiny", seed=seed)  # type: ignore[arg-type]
    return out
