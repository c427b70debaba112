"""Model loading helpers: device/dtype choice and errors that say what to do when a model is unreachable."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import ModelLoadError

T = TypeVar("T")


def hub_kwargs(*, revision: str | None = None, cache_dir: str | None = None,
               local_files_only: bool | None = None, token: str | None = None) -> dict[str, Any]:
    """Keyword arguments passed to every ``from_pretrained`` call (the Hugging Face cache and
    ``HF_HUB_OFFLINE`` / ``HF_HOME`` are honoured by transformers itself)."""
    out: dict[str, Any] = {}
    if local_files_only is None and _truthy(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")):
        # huggingface_hub reads HF_HUB_OFFLINE once, at import; honour it even when set later.
        local_files_only = True
    if revision is not None:
        out["revision"] = revision
    if cache_dir is not None:
        out["cache_dir"] = cache_dir
    if local_files_only is not None:
        out["local_files_only"] = local_files_only
    if token is not None:
        out["token"] = token
    return out


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def explain_unreachable(model: str, exc: BaseException) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    # "org/name" is a hub id; an absolute, relative-dotted, home or deeper path is a folder.
    is_path = os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1
    if is_path and not os.path.isdir(os.path.expanduser(model)):
        return ModelLoadError(f"model path {model!r} does not exist or is not a directory. Pass the folder that "
                              "holds config.json, the *.safetensors weights and the tokenizer files.")
    lines = [f"could not load model {model!r}: {exc.__class__.__name__}: {exc}"]
    if offline:
        lines.append("HF_HUB_OFFLINE is set, so only the local Hugging Face cache was searched.")
    lines.append(
        "To use a local copy: on a machine with internet run\n"
        f"    huggingface-cli download {model} --local-dir ./{model.split('/')[-1]}\n"
        f"copy that folder here and pass its path (model='./{model.split('/')[-1]}', or --model on the "
        "command line); or point HF_HOME at a Hugging Face cache that already holds the model.\n"
        "For a smoke test without weights, use load_format='dummy' (random weights of the real architecture; "
        "its scores mean nothing).")
    return ModelLoadError("\n".join(lines))


def guarded_load(model: str, fn: Callable[[], T]) -> T:
    """Run a ``from_pretrained`` call, turning hub/cache failures into a :class:`ModelLoadError`."""
    try:
        return fn()
    except ModelLoadError:
        raise
    except (OSError, ValueError) as exc:
        # transformers raises OSError for unreachable/missing repos (also huggingface_hub's
        # LocalEntryNotFoundError and RepositoryNotFoundError, which subclass it or HTTP errors).
        raise explain_unreachable(model, exc) from exc
    except Exception as exc:  # huggingface_hub errors that are not OSErrors
        if exc.__class__.__module__.startswith("huggingface_hub"):
            raise explain_unreachable(model, exc) from exc
        raise

