"""How a local model is loaded: one :class:`LoadOptions` object and one loader (:func:`load_model`) shared by
every local scorer (pointwise, listwise, pairwise) and by the training code, plus the command-line flags
that expose the same options in ``mmrank rank`` and ``mmrank serve`` (:func:`add_load_arguments`).

Facts kept here once: the default model ids and the jina-reranker-m0 image budget.

Errors are raised when the options are resolved, before any download: an option that needs a package that
is not installed (``bitsandbytes`` for 4/8-bit quantization, ``accelerate`` for ``device_map``,
``flash_attn`` for ``attn_implementation="flash_attention_2"``) or a device that is not there (``cuda``
without CUDA) gives an :class:`~mmrank.errors.InputError` that says what to install or change.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from ..errors import InputError, ModelLoadError
from .loading import guarded_load, hub_kwargs

if TYPE_CHECKING:  # torch is imported where it is needed: the command lines build their parsers without it
    import torch

__all__ = [
    "LoadOptions", "LoadedModel", "load_model", "add_load_arguments", "scorer_kwargs_from_args", "dummy_folder",
    "DEFAULT_POINTWISE_MODEL", "DEFAULT_INSTRUCT_MODEL", "MIN_PIXELS", "MAX_PIXELS", "LISTWISE_MAX_PIXELS",
    "DTYPES", "LOAD_FORMATS", "ATTN_IMPLEMENTATIONS", "QUANTIZATIONS",
]

#: Default model of the pointwise scorer (licence CC-BY-NC-4.0: non-commercial use).
DEFAULT_POINTWISE_MODEL = "jinaai/jina-reranker-m0"
#: Default instruct model of the listwise and pairwise scorers. Rank-Nexus has no public checkpoint; this
#: is the 2B Qwen2-VL instruct model (the base of jina-reranker-m0 and the size Rank-Nexus uses). Any
#: Qwen2-VL / Qwen2.5-VL / Qwen3-VL instruct checkpoint works.
DEFAULT_INSTRUCT_MODEL = "Qwen/Qwen2-VL-2B-Instruct"
#: jina-reranker-m0's image budget (its ``_setup_processor``): 56² .. 768·28² pixels per image.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 768 * 28 * 28
#: The listwise scorer's default per-image budget: a window of 20 images stays at about 5K visual tokens.
LISTWISE_MAX_PIXELS = 256 * 28 * 28

DTYPES = ("auto", "float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
LOAD_FORMATS = ("auto", "dummy")
#: Attention implementations offered on the command line (any value transformers accepts works in Python).
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
QUANTIZATIONS = ("4bit", "8bit")

# Keys of from_pretrained that LoadOptions owns; model_kwargs must not smuggle them past the checks.
_OWNED_KWARGS = {"dtype", "torch_dtype", "attn_implementation", "revision", "cache_dir", "local_files_only",
                 "token", "quantization_config", "device_map", "load_in_4bit", "load_in_8bit"}


@dataclass(frozen=True)
class LoadOptions:
    """Everything about loading a local model, in one object (every local scorer takes ``load=``).

    Args:
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``, ``"mps"`` or a ``torch.device``; ``None``/``"auto"``: the
            best available (CUDA, then MPS, then CPU).
        dtype: ``"auto"`` (bfloat16 on CUDA where supported, else float16; float32 elsewhere), ``"float32"``,
            ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``.
        attn_implementation: transformers' attention implementation (``"sdpa"`` default, ``"eager"``,
            ``"flash_attention_2"`` — needs the ``flash_attn`` package and CUDA —, …); ``None``: transformers'
            own choice.
        load_format: ``"auto"`` loads the weights; ``"dummy"`` builds the real architecture with random
            weights (``model="tiny"`` for a tiny one; smoke tests and speed measurements, scores mean nothing).
        revision: model revision on the hub (branch, tag or commit).
        cache_dir: Hugging Face cache folder (default: ``HF_HOME``).
        local_files_only: never contact the hub (``HF_HUB_OFFLINE`` is honoured: it implies this).
        token: Hugging Face token for gated or private models.
        quantization: ``"4bit"`` (NF4, bfloat16 compute) or ``"8bit"`` via bitsandbytes (CUDA only; needs
            ``pip install bitsandbytes``).
        quantization_config: any transformers quantization config object instead (not with ``quantization``).
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"`` to spread a model over GPUs; needs
            ``accelerate``); the model is then not moved to ``device``.
        model_kwargs: further ``from_pretrained`` keyword arguments (those owned by the fields above are
            refused so that they cannot bypass the checks).
    """

    device: Any = None
    dtype: Any = "auto"
    attn_implementation: str | None = "sdpa"
    load_format: str = "auto"
    revision: str | None = None
    cache_dir: str | os.PathLike | None = None
    local_files_only: bool | None = None
    token: str | bool | None = None
    quantization: str | None = None
    quantization_config: Any = None
    device_map: Any = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.load_format not in LOAD_FORMATS:
            raise InputError(f"load_format must be one of {', '.join(LOAD_FORMATS)}; got {self.load_format!r}")
        if isinstance(self.dtype, str) and _DTYPE_ALIASES.get(self.dtype, self.dtype) not in DTYPES:
            raise InputError(f"unknown dtype {self.dtype!r}; use one of {', '.join(DTYPES)}")
        if self.dtype is not None and not isinstance(self.dtype, str) and not _is_torch_dtype(self.dtype):
            raise InputError(f"dtype must be a string or a torch.dtype, got {type(self.dtype).__name__}")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise InputError(f"quantization must be one of {', '.join(QUANTIZATIONS)} or None; got "
                             f"{self.quantization!r}")
        if self.quantization is not None and self.quantization_config is not None:
            raise InputError("pass either quantization ('4bit'/'8bit') or a quantization_config, not both")
        if not isinstance(self.model_kwargs, Mapping):
            raise InputError("model_kwargs must be a mapping of from_pretrained keyword arguments")
        owned = sorted(_OWNED_KWARGS & set(self.model_kwargs))
        if owned:
            raise InputError(f"model_kwargs must not set {', '.join(owned)}: these are LoadOptions fields "
                             "(dtype, attn_implementation, quantization / quantization_config, device_map, hub options)")
        if self.load_format == "dummy" and (self.quantization or self.quantization_config is not None
                                            or self.device_map is not None):
            raise InputError("load_format='dummy' builds random weights in memory; quantization and device_map "
                             "apply to loaded checkpoints only")

    # ------------------------------------------------------------------ building
    @classmethod
    def merge(cls, load: LoadOptions | None = None, *, also: Sequence[str] = (), **overrides: Any) -> LoadOptions:
        """``load`` (or the defaults) with the given fields replaced — how a scorer combines ``load=`` with
        the loading keywords users pass directly (``device="cpu"``, ``dtype="float32"``, …). An unknown
        keyword is a ``TypeError`` naming it, as for any misspelt argument.

        Args:
            load: the options to start from (``None``: the defaults).
            also: the caller's other keyword options, listed in the ``TypeError``'s message.
            **overrides: fields to replace.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unexpected keyword argument{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(repr, unknown))} (keyword options are: "
                            f"{', '.join(sorted(names | set(also)))})")
        if load is not None and not isinstance(load, LoadOptions):
            raise InputError(f"load must be a LoadOptions, got {type(load).__name__}")
        return replace(load or cls(), **overrides)

    # ------------------------------------------------------------------ resolution
    def resolve_device(self) -> torch.device:
        """The device to run on; an :class:`InputError` when the requested one is not available."""
        import torch

        d = self.device
        if d is None or d == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                return torch.device("mps")
            return torch.device("cpu")
        try:
            dev = torch.device(d)
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"unknown device {d!r}; use cuda, cuda:N, cpu, mps or auto") from exc
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise InputError(f"device {d!r} was requested but CUDA is not available here (torch "
                                 f"{torch.__version__}); use device='cpu', or install a CUDA build of torch")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise InputError(f"device {d!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                      and torch.backends.mps.is_available()):
            raise InputError(f"device {d!r} was requested but MPS is not available here; use device='cpu'")
        return dev

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype to load in.

        Args:
            device: the resolved device (``"auto"`` depends on it).
        """
        import torch

        d = self.dtype
        if isinstance(d, torch.dtype):
            return d
        d = _DTYPE_ALIASES.get(d, d) if d is not None else "auto"
        if d == "auto":
            if device.type == "cuda":
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.float32
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[d]

    def hub_kwargs(self) -> dict[str, Any]:
        """revision / cache_dir / local_files_only / token for every ``from_pretrained`` call."""
        kw = hub_kwargs(revision=self.revision, cache_dir=None if self.cache_dir is None else str(self.cache_dir),
                        local_files_only=self.local_files_only)
        if self.token is not None:
            kw["token"] = self.token
        return kw

    @property
    def places_model(self) -> bool:
        """Whether ``from_pretrained`` itself places the weights (quantized or ``device_map``)."""
        return self.quantization is not None or self.quantization_config is not None or self.device_map is not None

    def check_requirements(self, device: torch.device) -> None:
        """Raise :class:`InputError` when an option needs a package that is missing or a CUDA device.

        Args:
            device: the resolved device the model will run on.
        """
        if self.quantization is not None:
            if not _installed("bitsandbytes"):
                raise InputError(f"quantization={self.quantization!r} needs the bitsandbytes package: "
                                 "pip install bitsandbytes accelerate")
            if device.type != "cuda":
                raise InputError(f"quantization={self.quantization!r} (bitsandbytes) needs a CUDA device; this run "
                                 f"uses {device.type!r}. Drop the quantization option on this machine.")
        if self.places_model and not _installed("accelerate"):
            what = "device_map" if self.device_map is not None else "quantized loading"
            raise InputError(f"{what} needs the accelerate package: pip install accelerate")
        if self.attn_implementation == "flash_attention_2":
            if not _installed("flash_attn"):
                raise InputError("attn_implementation='flash_attention_2' needs the flash_attn package "
                                 "(pip install flash-attn --no-build-isolation); or use 'sdpa'")
            if device.type != "cuda":
                raise InputError("attn_implementation='flash_attention_2' runs on CUDA only; use 'sdpa' on "
                                 f"{device.type!r}")

    def from_pretrained_kwargs(self, dtype: torch.dtype) -> dict[str, Any]:
        """The keyword arguments of the model's ``from_pretrained`` call.

        Args:
            dtype: the resolved dtype.
        """
        kw: dict[str, Any] = {"dtype": dtype, **self.hub_kwargs()}
        if self.attn_implementation:
            kw["attn_implementation"] = self.attn_implementation
        if self.quantization is not None:
            from transformers import BitsAndBytesConfig

            if self.quantization == "4bit":
                kw["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
            else:
                kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        elif self.quantization_config is not None:
            kw["quantization_config"] = self.quantization_config
        if self.device_map is not None:
            kw["device_map"] = self.device_map
        elif self.places_model:
            kw["device_map"] = {"": str(self.resolve_device())}
        kw.update(self.model_kwargs)
        return kw

    # ------------------------------------------------------------------ command line
    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> LoadOptions:
        """The options given by the flags of :func:`add_load_arguments`.

        Args:
            ns: the parsed command line.
        """
        return cls(device=ns.device, dtype=ns.dtype, attn_implementation=ns.attn_implementation,
                   load_format=ns.load_format, revision=ns.revision, cache_dir=ns.cache_dir,
                   local_files_only=True if ns.local_files_only else None, quantization=ns.quantization,
                   device_map=ns.device_map)

    def is_default(self) -> bool:
        """Whether every field has its default value."""
        return self == LoadOptions()


def _is_torch_dtype(value: Any) -> bool:
    import torch

    return isinstance(value, torch.dtype)


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


# ====================================================================== the loader
@dataclass
class LoadedModel:
    """What :func:`load_model` gives back."""

    model: Any
    path: str  #: folder or hub id the tokenizer and processor are read from (the dummy folder for dummies)
    name: str  #: what the scorer reports as its model name
    is_dummy: bool
    device: torch.device
    dtype: torch.dtype
    hub: dict[str, Any]  #: hub kwargs for the tokenizer / processor loads ({} for a dummy)


def load_model(model: str | os.PathLike, options: LoadOptions, *, load: Callable[[str, dict[str, Any]], Any],
               build_random: Callable[[Any], Any], head: str, what: str) -> LoadedModel:
    """Load a local model the one way every scorer does.

    ``load(path, kwargs)`` calls the model class's ``from_pretrained``; ``build_random(config)`` builds the
    architecture from a config (``load_format="dummy"``: random weights, seeded, on the device, in the
    dtype). ``head`` is the dummy checkpoint kind (``"jina"`` or ``"lm"``); ``what`` names the scorer in the
    random-weights warning."""
    import torch

    from .dummy import is_dummy, warn_dummy

    device = options.resolve_device()
    dtype = options.resolve_dtype(device)
    path = str(model)
    name = path
    if options.load_format == "dummy":
        path = dummy_folder(path, head)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
        if options.attn_implementation:
            config._attn_implementation = options.attn_implementation
        torch.manual_seed(0)
        prev = torch.get_default_dtype()
        try:
            torch.set_default_dtype(dtype)
            with torch.device(device):
                net = build_random(config)
        finally:
            torch.set_default_dtype(prev)
        name = f"dummy:{model}"
        hub: dict[str, Any] = {}
        dummy = True
    else:
        options.check_requirements(device)
        kw = options.from_pretrained_kwargs(dtype)
        net = guarded_load(path, lambda: load(path, kw))
        if not options.places_model:
            net.to(device)
        hub = options.hub_kwargs()
        dummy = os.path.isdir(path) and is_dummy(path)
    if dummy:
        warn_dummy(what)
    net.eval()
    return LoadedModel(net, path, name, dummy, device, dtype, hub)


def dummy_folder(model: str, head: str) -> str:
    """Config, tokenizer and image processor of a random model (``head`` "jina" or "lm"; ``model="tiny"``
    for the tiny shape, anything else the full Qwen2-VL-2B shape), built once per machine."""
    from .dummy import build_checkpoint

    size = "tiny" if model == "tiny" else "full"
    name = "jina" if head == "jina" else "lm-qwen2_vl"
    folder = os.path.join(tempfile.gettempdir(), f"mmrank-dummy-{name}-{size}")
    if not os.path.exists(os.path.join(folder, "config.json")):
        tmp = tempfile.mkdtemp(prefix=f"mmrank-dummy-{name}-", dir=tempfile.gettempdir())
        build_checkpoint(tmp, family="qwen2_vl", head=head, size=size, weights=False)  # type: ignore[arg-type]
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race; theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.exists(os.path.join(folder, "config.json")):
                raise ModelLoadError(f"could not create the dummy model folder {folder}") from None
    return folder


# ====================================================================== command line
def add_load_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, speed: bool = True) -> None:
    """Add the model-loading flags (and, with ``speed``, ``--max-batch-tokens`` / ``--compile``) that
    ``mmrank rank`` and ``mmrank serve`` share. Read them back with :meth:`LoadOptions.from_args` or
    :func:`scorer_kwargs_from_args`."""
    a = parser.add_argument
    a("--device", default=None, help="cuda, cuda:N, cpu, mps (default: the best available)")
    a("--dtype", default="auto", choices=DTYPES,
      help="weights and activations: auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16, float16")
    a("--attn-implementation", default="sdpa", choices=ATTN_IMPLEMENTATIONS,
      help="attention kernel (default sdpa; flash_attention_2 needs the flash_attn package and CUDA)")
    a("--load-format", default="auto", choices=LOAD_FORMATS,
      help="auto: load weights; dummy: random weights of the real architecture (full size: ~40 s and ~9 GB "
           "of RAM on CPU; --model tiny for a tiny one), for smoke tests and speed measurements only")
    a("--revision", default=None, help="model revision on the hub (branch, tag or commit)")
    a("--cache-dir", default=None, help="Hugging Face cache folder (default: HF_HOME)")
    a("--local-files-only", action="store_true", help="never contact the hub (also implied by HF_HUB_OFFLINE=1)")
    a("--quantization", default=None, choices=QUANTIZATIONS,
      help="load the weights in 4 or 8 bits with bitsandbytes (CUDA; pip install bitsandbytes)")
    a("--device-map", default=None, help="from_pretrained device_map, e.g. auto (needs accelerate)")
    if speed:
        a("--max-batch-tokens", type=int, default=None,
          help="pointwise: fill batches by this many padded tokens instead of a fixed count")
        a("--compile", action="store_true",
          help="pointwise: torch.compile the vision blocks and decoder layers (GPU; compiles ~20-40 s on first use)")


def scorer_kwargs_from_args(ns: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Scorer keyword arguments from the flags of :func:`add_load_arguments`: ``load=`` for the local
    modes, plus ``max_batch_tokens`` / ``compile_vision`` / ``compile_lm`` for pointwise. A flag the mode
    cannot use is an :class:`InputError` rather than silently dropped."""
    options = LoadOptions.from_args(ns)
    out: dict[str, Any] = {}
    if mode in ("remote", "chat"):  # the scorers that talk to a server
        if not options.is_default():
            raise InputError("model-loading options (--device, --dtype, --quantization, ...) apply to local modes, "
                             f"not to {mode}")
    else:
        out["load"] = options
    mbt, comp = getattr(ns, "max_batch_tokens", None), getattr(ns, "compile", False)
    if (mbt is not None or comp) and mode != "pointwise":
        raise InputError(f"--max-batch-tokens and --compile apply to the pointwise mode, not {mode!r}")
    if mbt is not None:
        out["max_batch_tokens"] = mbt
    if comp:
        out["compile_vision"] = out["compile_lm"] = True
    return out
