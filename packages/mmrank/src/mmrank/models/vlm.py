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
import shutil
import tempfile
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from PIL import Image

from ..errors import InputError, ModelLoadError
from ..inputs.images import image_fingerprint
from .dummy import build_checkpoint, is_dummy, warn_dummy
from .loading import guarded_load, pick_device, pick_dtype
from .processing import IMAGE_PAD, ImageFeatures, VisionTextProcessor

logger = logging.getLogger("mmrank")

#: Default instruct model of the listwise and pairwise scorers. Rank-Nexus has no public checkpoint; this
#: is the 2B Qwen2-VL instruct model (the base of jina-reranker-m0 and the size Rank-Nexus uses). Any
#: Qwen2-VL / Qwen2.5-VL / Qwen3-VL instruct checkpoint works, e.g. ``Qwen/Qwen3-VL-2B-Instruct`` (the
#: backbone of one Rank-Nexus variant) or ``Qwen/Qwen2.5-VL-3B-Instruct``.
DEFAULT_INSTRUCT_MODEL = "Qwen/Qwen2-VL-2B-Instruct"

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
        device / dtype: as elsewhere in mmrank (``"auto"``: bfloat16 on CUDA, float32 on CPU).
        min_pixels / max_pixels: image budget per image (the image processor's ``smart_resize`` bounds).
        load_format: ``"auto"`` loads weights; ``"dummy"`` builds the architecture with random weights
            (``model="tiny"`` for a tiny one, anything else for the full Qwen2-VL-2B shape).
        hub: ``revision``, ``cache_dir``, ``local_files_only``, ``token`` (``HF_HUB_OFFLINE`` is honoured).
    """

    def __init__(self, model: str | os.PathLike = DEFAULT_INSTRUCT_MODEL, *, device: Any = None,
                 dtype: Any = "auto", min_pixels: int | None = None, max_pixels: int | None = None,
                 attn_implementation: str | None = "sdpa", load_format: str = "auto",
                 hub: dict[str, Any] | None = None, what: str = "instruct VLM"):
        from transformers import AutoModelForImageTextToText

        if load_format not in ("auto", "dummy"):
            raise InputError(f"load_format must be 'auto' or 'dummy', got {load_format!r}")
        self.model_name = str(model)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        kw = dict(hub or {})
        path = str(model)
        self.is_dummy = load_format == "dummy" or (os.path.isdir(path) and is_dummy(path))
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        if load_format == "dummy":
            path = _dummy_folder(path)
            kw = {}
            self.model = self._random_model(path, attn_implementation)
            self.model_name = f"dummy:{model}"
        else:
            self.model = guarded_load(path, lambda: AutoModelForImageTextToText.from_pretrained(
                path, dtype=self.dtype, **extra, **kw))
            self.model.to(self.device)
        if self.is_dummy:
            warn_dummy(what)
        self.model.eval()
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
    def _random_model(self, folder: str, attn_implementation: str | None):
        from transformers import AutoConfig, AutoModelForImageTextToText

        config = AutoConfig.from_pretrained(folder)
        if attn_implementation:
            config._attn_implementation = attn_implementation
        torch.manual_seed(0)
        with torch.device(self.device):
            return AutoModelForImageTextToText.from_config(config, dtype=self.dtype)

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
    def generate(self, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> list[str]:
        """Greedy generation; returns the decoded continuations (special tokens skipped). Vision tokens
        are suppressed so that a model cannot emit an image slot."""
        cfg = copy.deepcopy(self.model.generation_config)
        cfg.do_sample = False
        for k in ("temperature", "top_p", "top_k", "min_p", "typical_p"):
            if hasattr(cfg, k):
                setattr(cfg, k, None)
        cfg.max_new_tokens = int(max_new_tokens)
        cfg.num_beams = 1
        cfg.suppress_tokens = self._suppress or None
        if cfg.pad_token_id is None:
            cfg.pad_token_id = self.processor.pad_token_id
        if cfg.eos_token_id is None and self.tokenizer.eos_token_id is not None:
            cfg.eos_token_id = self.tokenizer.eos_token_id
        out = self.model.generate(**inputs, generation_config=cfg)
        new = out[:, inputs["input_ids"].shape[1]:].cpu()
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return [str(t) for t in self.tokenizer.convert_ids_to_tokens(list(ids))]

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _dummy_folder(model: str) -> str:
    """Config, tokenizer and image processor of a random instruct VLM (built once per machine)."""
    size = "tiny" if model == "tiny" else "full"
    folder = os.path.join(tempfile.gettempdir(), f"mmrank-dummy-lm-qwen2_vl-{size}")
    if not os.path.exists(os.path.join(folder, "config.json")):
        tmp = tempfile.mkdtemp(prefix="mmrank-dummy-lm-", dir=tempfile.gettempdir())
        build_checkpoint(tmp, family="qwen2_vl", head="lm", size=size, weights=False)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race; theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.exists(os.path.join(folder, "config.json")):
                raise ModelLoadError(f"could not create the dummy model folder {folder}") from None
    return folder
