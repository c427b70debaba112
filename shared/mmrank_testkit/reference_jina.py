"""jina-reranker-m0's reference ``compute_score``, restated with plain transformers.

This is the algorithm of the model card (the model's Hugging Face ``modeling.py``), written against
transformers' own classes so it runs on transformers 5 (the released custom code does not):

* the generation class ``Qwen2VLForConditionalGeneration`` with ``lm_head`` replaced by the identity and a
  score head ``Linear(H, H) → ReLU → Linear(H, 1)``; the forward asks for ``output_hidden_states`` and
  scores ``hidden_states[-1][:, -1]``;
* transformers' ``Qwen2VLProcessor`` (an image-only subclass where torchvision is missing; its video half
  needs torchvision) with ``min_pixels=3136``, ``max_pixels=602112``, left padding, padding to the longest;
* the prompt ``"**Document**:\\n" + doc + "\\n" + "**Query**:\\n" + query`` (no chat template), an image
  being ``<|vision_start|><|image_pad|><|vision_end|>``; with image query and image document, the document's
  image first;
* text documents cut to ``max_doc_length`` tokens (encode with truncation; only if the limit was reached,
  decode); the processor truncates to ``max_length - 1``; token 100 appended to every sequence;
* fixed batches of ``batch_size`` pairs, in input order; score ``sigmoid(logit - 2.65)``;
* images given as paths/URLs are loaded inside the loop (``transformers.image_utils.load_image``), as the
  reference does.

It is used by ``tests/test_pointwise_parity.py`` (the contract mmrank's scorer must meet) and by
``benchmarks/bench_rerank.py`` (the speed baseline); it lives in the test kit so both import it the same way. :meth:`ReferenceJinaM0.sharing` wraps the very
modules of a :class:`mmrank.JinaRerankerM0`, so both sides run identical weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

LOGIT_BIAS = 2.65
SCORE_TOKEN_ID = 100
IMAGE_TAG = "<|vision_start|><|image_pad|><|vision_end|>"


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """transformers' Qwen2-VL processor without its video half (which needs torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)


def make_processor(path: str | Path, *, min_pixels: int = 3136, max_pixels: int = 602112):
    """The reference processor: the real ``Qwen2VLProcessor`` when torchvision is importable, else the
    image-only subclass (identical for images). Left padding, as the reference relies on."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    image_processor = AutoImageProcessor.from_pretrained(path, min_pixels=min_pixels, max_pixels=max_pixels)
    try:
        import torchvision  # noqa: F401
        from transformers import Qwen2VLVideoProcessor

        return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                video_processor=Qwen2VLVideoProcessor())
    except Exception:
        return ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _load_image(x: Any):
    if isinstance(x, (str, Path)):
        from transformers.image_utils import load_image

        return load_image(str(x))
    return x


class ReferenceJinaM0:
    """The reference scorer: ``compute_score(pairs, query_type=..., doc_type=...)`` → scores in (0, 1)."""

    def __init__(self, model: nn.Module, score: nn.Module, processor: Any):
        self.model = model.eval()
        self.score = score.eval()
        self.processor = processor

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> ReferenceJinaM0:
        """Load a jina-reranker-m0 checkpoint folder (``score.0.*``/``score.2.*`` keys beside Qwen2-VL's)."""
        from safetensors.torch import load_file

        path = Path(path)
        model = Qwen2VLForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device)
        model.lm_head = nn.Identity()
        h = model.config.text_config.hidden_size
        score = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))
        state = {}
        for f in sorted(path.glob("*.safetensors")):
            state.update({k[len("score."):]: v for k, v in load_file(str(f)).items() if k.startswith("score.")})
        score.load_state_dict(state)
        return cls(model, score.to(device=device, dtype=dtype), make_processor(path))

    @classmethod
    def sharing(cls, ranker: Any) -> ReferenceJinaM0:
        """Wrap the modules of a :class:`mmrank.JinaRerankerM0` (no copy: the same weights, same device).

        The generation class is built on the meta device (no memory) and given the ranker's
        ``Qwen2VLModel``; its ``lm_head`` is the identity, as in the reference."""
        config = ranker.model.config
        with torch.device("meta"):
            shell = Qwen2VLForConditionalGeneration(config)
        shell.model = ranker.model.model
        shell.lm_head = nn.Identity()
        return cls(shell, ranker.model.score, make_processor(ranker.model_path))

    @property
    def device(self) -> torch.device:
        return next(self.score.parameters()).device

    # ---------------------------------------------------------------- the algorithm
    @torch.no_grad()
    def compute_score(self, pairs: Sequence[tuple[Any, Any]], *, query_type: str = "text", doc_type: str = "text",
                      batch_size: int = 8, max_length: int = 10240, max_query_length: int = 512) -> list[float]:
        tokenizer = self.processor.tokenizer
        max_doc_length = max(max_length - max_query_length, max_query_length)
        device = self.device
        out: list[float] = []
        for start in range(0, len(pairs), batch_size):
            mini = pairs[start:start + batch_size]
            texts = []
            for q, d in mini:
                if doc_type == "text":
                    ids = tokenizer(d, truncation=True, max_length=max_doc_length)["input_ids"]
                    if len(ids) >= max_doc_length:
                        d = tokenizer.decode(ids)
                doc_part = IMAGE_TAG if doc_type == "image" else d
                query_part = IMAGE_TAG if query_type == "image" else q
                texts.append("**Document**:\n" + doc_part + "\n" + "**Query**:\n" + query_part)
            doc_images = [_load_image(d) for _, d in mini] if doc_type == "image" else []
            query_images = [_load_image(q) for q, _ in mini] if query_type == "image" else []
            if doc_images and query_images:
                images = [[d, q] for q, d in zip(query_images, doc_images, strict=True)]
            else:
                images = doc_images or query_images or None
            batch = self.processor(text=texts, images=images, return_tensors="pt", padding=True, truncation=True,
                                   max_length=max_length - 1)
            n = batch["input_ids"].shape[0]
            batch["input_ids"] = torch.cat([batch["input_ids"], torch.full((n, 1), SCORE_TOKEN_ID)], dim=1)
            batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones((n, 1), dtype=torch.long)],
                                                dim=1)
            if "mm_token_type_ids" in batch:
                batch["mm_token_type_ids"] = torch.cat(
                    [batch["mm_token_type_ids"], torch.zeros((n, 1), dtype=torch.long)], dim=1)
            batch = {k: v.to(device) for k, v in batch.items()}
            hidden = self.model(**batch, output_hidden_states=True, use_cache=False).hidden_states[-1]
            logits = self.score(hidden[:, -1]).view(-1).float().cpu().numpy()
            out.extend((1.0 / (1.0 + np.exp(-(logits - LOGIT_BIAS)))).tolist())
        return out
