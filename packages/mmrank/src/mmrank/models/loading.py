"""Model loading helpers: device/dtype choice and errors that say what to do when a model is unreachable."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


#: Seconds the hub reachability probe waits (env ``MMRANK_HUB_PROBE_TIMEOUT``; ``0`` turns the probe off).
HUB_PROBE_TIMEOUT = 3.0
_probe_lock = threading.Lock()
_probe_cache: dict[str, tuple[float, str | None]] = {}
_offline_lock = threading.RLock()


def hub_endpoint() -> str:
    """The Hugging Face hub endpoint transformers talks to (``HF_ENDPOINT``, else https://huggingface.co)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def probe_hub(timeout: float | None = None) -> str | None:
    """``None`` when the hub endpoint answers an HTTP request within ``timeout`` seconds (any status counts:
    the point is that a server is there), else why not. Honours ``HF_ENDPOINT`` and the usual proxy
    variables; DNS lookups are bounded too (the request runs in a worker thread). Cached for 60 s."""
    if timeout is None:
        try:
            timeout = float(os.environ.get("MMRANK_HUB_PROBE_TIMEOUT", HUB_PROBE_TIMEOUT))
        except ValueError:
            timeout = HUB_PROBE_TIMEOUT
    if timeout <= 0:
        return None  # probe turned off: transformers' own retries decide
    endpoint = hub_endpoint()
    with _probe_lock:
        hit = _probe_cache.get(endpoint)
        if hit is not None and time.monotonic() - hit[0] < 60:
            return hit[1]
    import httpx  # imported here, so its import time does not count against the probe

    result: list[str | None] = []

    def run() -> None:
        try:
            httpx.head(endpoint, timeout=timeout, follow_redirects=False)
            result.append(None)
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
            result.append(f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__)

    worker = threading.Thread(target=run, name="mmrank-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    reason = result[0] if result else f"Timeout: no answer within {timeout:g} s"
    with _probe_lock:
        _probe_cache[endpoint] = (time.monotonic(), reason)
    return reason


def _is_local_reference(model: str) -> bool:
    return os.path.isdir(os.path.expanduser(model)) or os.path.isabs(model) or model.startswith((".", "~")) \
        or model.count("/") > 1


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Treat the hub as offline (cache only) for the calls inside, as ``HF_HUB_OFFLINE=1`` would."""
    from huggingface_hub import constants

    with _offline_lock:
        before = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = before


def explain_unreachable(model: str, exc: BaseException, *, hub_problem: str | None = None) -> ModelLoadError:
    """The error users see when ``model`` cannot be loaded: what failed and how to get a local copy."""
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    # "org/name" is a hub id; an absolute, relative-dotted, home or deeper path is a folder.
    is_path = os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1
    if is_path and not os.path.isdir(os.path.expanduser(model)):
        return ModelLoadError(f"model path {model!r} does not exist or is not a directory. Pass the folder that "
                              "holds config.json, the *.safetensors weights and the tokenizer files.")
    if os.path.isdir(os.path.expanduser(model)):
        return _not_a_model_folder(model, exc)
    lines = [f"could not load model {model!r}: {exc.__class__.__name__}: {exc}"]
    if offline:
        lines.append("HF_HUB_OFFLINE is set, so only the local Hugging Face cache was searched.")
    elif hub_problem:
        lines.append(f"The Hugging Face hub ({hub_endpoint()}) could not be reached ({hub_problem}), so only the "
                     "local Hugging Face cache was searched, and the model is not in it.")
    name = model.rstrip("/").split("/")[-1]
    lines.append(
        "To use a local copy: on a machine with internet run\n"
        f"    hf download {model} --local-dir ./{name}\n"
        "(the `hf` command comes with huggingface_hub: pip install -U huggingface_hub), "
        f"copy that folder here and pass its path (model='./{name}', or --model on the "
        "command line); or point HF_HOME at a Hugging Face cache that already holds the model.\n"
        "For a smoke test without weights, use load_format='dummy' (random weights of the real architecture; "
        "its scores mean nothing).")
    return ModelLoadError("\n".join(lines))


_MODEL_FILES = ("config.json", "adapter_config.json")


def _not_a_model_folder(model: str, exc: BaseException) -> ModelLoadError:
    """A local folder that could not be loaded: what it lacks, and the model folders found inside it (a
    training run's ``--output`` holds one adapter folder per stage)."""
    root = os.path.expanduser(model)
    if any(os.path.isfile(os.path.join(root, f)) for f in _MODEL_FILES):
        return ModelLoadError(f"could not load the model in folder {model!r}: {exc.__class__.__name__}: {exc}")
    inside = []
    for here, dirs, files in os.walk(root):
        dirs.sort()
        if os.path.relpath(here, root).count(os.sep) >= 3:
            dirs[:] = []
        if any(f in files for f in _MODEL_FILES) and here != root:
            inside.append(os.path.relpath(here, root))
        if len(inside) >= 8:
            break
    msg = f"folder {model!r} holds no model (no config.json nor adapter_config.json)."
    if inside:
        sub = "\n".join(f"    {os.path.join(model, d)}" for d in inside)
        msg += f" These folders inside it do — pass one of them (a training run's last stage is usually what you want):\n{sub}"
    else:
        msg += " Pass the folder that holds config.json, the *.safetensors weights and the tokenizer files."
    return ModelLoadError(msg)


def guarded_load(model: str, fn: Callable[[], T]) -> T:
    """Run a ``from_pretrained`` call, turning hub/cache failures into a :class:`ModelLoadError`.

    For a hub id (not a local folder, ``HF_HUB_OFFLINE`` unset) the hub endpoint is probed first
    (:func:`probe_hub`, a few seconds at most): when it does not answer, the call runs in offline mode, so a
    cached model still loads and a missing one fails at once instead of after ~30 s of retries."""
    hub_problem = None
    if not _is_local_reference(str(model)) and not _truthy(
            os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")):
        hub_problem = probe_hub()
    try:
        if hub_problem is not None:
            with _hub_offline():
                return fn()
        return fn()
    except ModelLoadError:
        raise
    except (OSError, ValueError) as exc:
        # transformers raises OSError for unreachable/missing repos (also huggingface_hub's
        # LocalEntryNotFoundError and RepositoryNotFoundError, which subclass it or HTTP errors).
        raise explain_unreachable(model, exc, hub_problem=hub_problem) from exc
    except Exception as exc:  # huggingface_hub errors that are not OSErrors
        if exc.__class__.__module__.startswith("huggingface_hub"):
            raise explain_unreachable(model, exc, hub_problem=hub_problem) from exc
        raise

