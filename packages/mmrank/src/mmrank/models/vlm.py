"""A generative (instruction-tuned) vision-language model, as the listwise and pairwise scorers use it.

:class:`InstructVLM` loads any checkpoint that ``AutoModelForImageTextToText`` resolves in the Qwen-VL family
(Qwen2-VL, Qwen2.5-VL, Qwen3-VL) together with its tokenizer and image processor
(:class:`mmrank.models.processing.VisionTextProcessor`, which needs no torchvision), renders conversations with the
**model's own chat template** (images interleaved with the text, in one context), and offers the three
operations the scorers need: next-token logits at the end of a batch of prompts, greedy generation, and
tokenization checks.

Prompts are built model-agnostically by :mod:`mmrank.scorers.prompts` (a ``Conversation`` of turns with text
and image parts); :meth:`InstructVLM.render` renders one through the chat template.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from PIL import Image
from transformers import StoppingCriteriaList

from ..errors import InputError, ModelLoadError
from ..inputs.images import image_fingerprint
from .decoding import TextStop
from .loading import guarded_load
from .options import DEFAULT_INSTRUCT_MODEL, LoadOptions, load_model
from .processing import IMAGE_PAD, ImageFeatures, VisionTextProcessor

logger = logging.getLogger("mmrank")


# Used only when a checkpoint ships no chat template at all: the ChatML layout every Qwen-VL model uses.
_FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


class ChatLike(Protocol):
    """What :meth:`InstructVLM.render` takes (e.g. :class:`mmrank.scorers.prompts.Conversation`): messages
    in the Hugging Face chat-template format and the images in order of appearance."""

    @property
    def messages(self) -> list[dict[str, Any]]: ...

    @property
    def images(self) -> list[Image.Image]: ...


class InstructVLM:
    """An instruction-tuned VLM with its tokenizer, image processor and chat template.

    Args:
        model: hub id or local folder of a Qwen2-VL / Qwen2.5-VL / Qwen3-VL instruct checkpoint.
        load: :class:`~mmrank.models.options.LoadOptions` (device, dtype, attention, load format, hub
            options, quantization, device map, …); its fields may also be passed as keywords.
        min_pixels / max_pixels: image budget per image (the image processor's ``smart_resize`` bounds).
        what: how the random-weights warning names the user of this model.
    """

    def __init__(self, model: str | os.PathLike = DEFAULT_INSTRUCT_MODEL, load: LoadOptions | None = None, *,
                 min_pixels: int | None = None, max_pixels: int | None = None, what: str = "instruct VLM",
                 **load_options: Any):
        from transformers import AutoModelForImageTextToText

        options = LoadOptions.merge(load, **load_options)
        loaded = load_model(
            model, options, head="lm", what=what,
            load=lambda path, kw: (load_adapter_model(path, kw) if is_adapter_folder(path)
                                   else AutoModelForImageTextToText.from_pretrained(path, **kw)),
            build_random=lambda config: AutoModelForImageTextToText.from_config(config, dtype=torch.get_default_dtype()))
        self.options = options
        self.model = loaded.model
        self.model_name = loaded.name
        self.is_dummy = loaded.is_dummy
        self.device = loaded.device
        self.dtype = loaded.dtype
        path, kw = loaded.path, loaded.hub
        #: whether ``model`` is a LoRA adapter folder (mmrank train) and the base model it names
        self.is_adapter = options.load_format != "dummy" and is_adapter_folder(path)
        self.base_model = adapter_base(path) if self.is_adapter else path
        self.processor = guarded_load(path, lambda: VisionTextProcessor.from_pretrained(
            path, min_pixels=min_pixels, max_pixels=max_pixels, **kw))
        self.tokenizer = self.processor.tokenizer
        self.chat_template = self._find_chat_template(path, kw)
        self._special = sorted({t for t in getattr(self.tokenizer, "all_special_tokens", []) if t} |
                               set(_VISION_TOKENS), key=len, reverse=True)
        self._suppress = [i for i in (self.tokenizer.convert_tokens_to_ids(t) for t in _VISION_TOKENS)
                          if isinstance(i, int) and i >= 0 and i != getattr(self.tokenizer, "unk_token_id", None)]
        self._prep_lock = threading.Lock()

    # ------------------------------------------------------------------ loading helpers
    def _find_chat_template(self, path: str, kw: dict[str, Any]) -> str:
        """The tokenizer's chat template; else the processor's ``chat_template.jinja`` / ``.json`` (where
        Qwen-VL checkpoints keep it); else a ChatML template with Qwen-VL image blocks (logged)."""
        tmpl = getattr(self.tokenizer, "chat_template", None)
        if isinstance(tmpl, dict):  # named templates
            tmpl = tmpl.get("default") or next(iter(tmpl.values()), None)
        if tmpl:
            return tmpl
        from transformers.utils import cached_file

        for name in ("chat_template.jinja", "chat_template.json"):
            try:
                f = cached_file(path, name, _raise_exceptions_for_missing_entries=False,
                                _raise_exceptions_for_connection_errors=False, **kw)
            except Exception:  # noqa: BLE001 - optional file
                f = None
            if f:
                text = open(f, encoding="utf-8").read()
                if name.endswith(".json"):
                    text = json.loads(text).get("chat_template", "")
                if text:
                    return text
        logger.warning("mmrank: %s has no chat template; using a ChatML template with Qwen-VL image blocks",
                       self.model_name)
        return _FALLBACK_CHAT_TEMPLATE

    # ------------------------------------------------------------------ prompts
    def clean(self, text: str) -> str:
        """User text with special-token strings defused (``<|im_end|>`` → ``< |im_end|>``): text from
        documents must never close a turn or claim an image slot."""
        for t in self._special:
            if t in text:
                text = text.replace(t, t[0] + " " + t[1:])
        return text

    def render(self, conv: ChatLike, *, continue_with: str = "") -> str:
        """The conversation through the chat template, ending with the assistant's generation prompt
        (plus ``continue_with``, text the answer is forced to begin with)."""
        text = self.tokenizer.apply_chat_template(conv.messages, chat_template=self.chat_template,
                                                  tokenize=False, add_generation_prompt=True)
        if text.count(IMAGE_PAD) != len(conv.images):
            raise InputError(f"the chat template of {self.model_name} rendered {text.count(IMAGE_PAD)} image "
                             f"slots for {len(conv.images)} images; is this a vision-language model?")
        return text + continue_with

    def image_features(self, image: Image.Image) -> ImageFeatures:
        return self.processor.image_features(image, key=image_fingerprint(image))

    def encode(self, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]],
               extra_ids: Sequence[Sequence[int]] | None = None) -> tuple[dict[str, torch.Tensor], list[int]]:
        """A left-padded batch on the model's device; ``extra_ids`` are token ids appended to each prompt
        (a forced answer prefix). Returns the inputs and the unpadded lengths."""
        feats = [[self.image_features(im) for im in imgs] for imgs in images]
        seqs, types = [], []
        for i, (p, fs) in enumerate(zip(prompts, feats, strict=True)):
            ids, tt = self.processor.token_ids(p, fs)
            if extra_ids is not None:
                ids = ids + list(extra_ids[i])
                tt = tt + [0] * len(extra_ids[i])
            seqs.append(ids)
            types.append(tt)
        enc = self.processor.pad(seqs, types, [f for fs in feats for f in fs])
        return enc.to(self.device, dtype=self.dtype), enc.lengths

    # ------------------------------------------------------------------ model calls
    @torch.inference_mode()
    def last_logits(self, inputs: dict[str, torch.Tensor], keep: int = 1) -> torch.Tensor:
        """Logits of the last ``keep`` positions, float32 on the CPU: ``(batch, keep, vocab)``."""
        out = self.model(**inputs, logits_to_keep=keep, use_cache=False)
        return out.logits[:, -keep:, :].float().cpu()

    @torch.inference_mode()
    def generate(self, inputs: dict[str, torch.Tensor], max_new_tokens: int,
                 stop: Callable[[str], bool] | Sequence[Callable[[str], bool]] | None = None, *,
                 kv_cache: str = "dynamic", **generate_kwargs: Any) -> list[str]:
        """Greedy generation; returns the decoded continuations (special tokens skipped). Vision tokens
        are suppressed so that a model cannot emit an image slot.

        ``stop``: a row stops as soon as ``stop(its text so far)`` is true (one predicate, or one per row;
        checked after every token, see :class:`~mmrank.models.decoding.TextStop`). ``kv_cache``:
        ``"dynamic"`` (transformers' default) or ``"static"`` (preallocated for prompt + budget: no cache
        growth per token; the layout ``torch.compile`` and CUDA graphs need). ``generate_kwargs`` go to
        ``model.generate`` (e.g. ``logits_processor``)."""
        if kv_cache not in ("dynamic", "static"):
            raise InputError(f"kv_cache must be 'dynamic' or 'static', got {kv_cache!r}")
        cfg = copy.deepcopy(self.model.generation_config)
        cfg.do_sample = False
        for k in ("temperature", "top_p", "top_k", "min_p", "typical_p"):
            if hasattr(cfg, k):
                setattr(cfg, k, None)
        cfg.max_new_tokens = int(max_new_tokens)
        cfg.num_beams = 1
        cfg.suppress_tokens = self._suppress or None
        if kv_cache == "static":
            cfg.cache_implementation = "static"
        if cfg.pad_token_id is None:
            cfg.pad_token_id = self.processor.pad_token_id
        if cfg.eos_token_id is None and self.tokenizer.eos_token_id is not None:
            cfg.eos_token_id = self.tokenizer.eos_token_id
        width = inputs["input_ids"].shape[1]
        if stop is not None:
            generate_kwargs["stopping_criteria"] = StoppingCriteriaList(
                [*generate_kwargs.get("stopping_criteria", []), TextStop(self.tokenizer, width, stop)])
        out = self.model.generate(**inputs, generation_config=cfg, **generate_kwargs)
        new = out[:, width:].cpu()
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return [str(t) for t in self.tokenizer.convert_ids_to_tokens(list(ids))]

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def adapter_base(folder: str) -> str:
    """The base model an adapter folder names (``base_model_name_or_path`` of ``adapter_config.json``)."""
    try:
        with open(os.path.join(folder, "adapter_config.json"), encoding="utf-8") as f:
            base = json.load(f).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the adapter config of {folder}: {exc}") from exc
    if not base:
        raise ModelLoadError(f"{folder}/adapter_config.json names no base_model_name_or_path")
    return str(base)


def is_adapter_folder(path: str) -> bool:
    """A local folder holding a PEFT adapter (``adapter_config.json``), as ``mmrank train`` writes."""
    return os.path.isfile(os.path.join(str(path), "adapter_config.json"))


def load_adapter_model(folder: str, kw: dict[str, Any]) -> Any:
    """The base model named by the adapter in ``folder`` (loaded with the same ``from_pretrained`` keywords)
    plus the LoRA adapter, merged: inference runs at the base model's speed. Needs ``peft``
    (``pip install 'mmrank[train]'``)."""
    from transformers import AutoModelForImageTextToText

    try:
        from peft import PeftModel
    except ImportError:
        raise ModelLoadError(f"{folder} is a LoRA adapter; loading it needs peft: pip install 'mmrank[train]'") from None
    base = adapter_base(folder)
    model = guarded_load(base, lambda: AutoModelForImageTextToText.from_pretrained(base, **kw))
    model = guarded_load(folder, lambda: PeftModel.from_pretrained(model, folder))
    return model.merge_and_unload()
