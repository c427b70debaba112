"""Randomly initialised checkpoints of the real architectures, built offline.

Two uses:

* ``size="tiny"``: a few-hundred-KiB Qwen2-VL / Qwen2.5-VL / Qwen3-VL with a byte-level BPE tokenizer trained
  here with ``tokenizers`` (Qwen's special tokens included) — the test suite runs the real loading and
  scoring code on these.
* ``size="full"``: the full-size Qwen2-VL-2B architecture (what jina-reranker-m0 is built on) with random
  weights, for benchmarks and smoke tests on machines without the real weights, like vLLM's
  ``load_format="dummy"``. **Scores from such a model mean nothing**; :func:`warn_dummy` says so loudly.

The checkpoint is written exactly as the real ones are laid out (``config.json`` with the real
architecture name, safetensors weights with the keys of the published checkpoint, tokenizer files,
``preprocessor_config.json``), so loading it exercises the same ``from_pretrained`` path users take.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Literal

from .options import MAX_PIXELS, MIN_PIXELS

Family = Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
Head = Literal["jina", "lm"]

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>", "<|vision_pad|>",
]

# A compact Qwen-VL chat template: system/user/assistant turns; image items become the vision block.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Relevance ranking orders passages by how well they answer a query.",
    "A vision language model reads page screenshots, photos, charts and text.",
    "Document Query Passage Answer Yes No True False relevant irrelevant",
    "Rank the passages based on their relevance to the search query.",
    "[1] > [2] > [3] > [4] > [5] > [6] > [7] > [8] > [9] > [10] > [11] > [12]",
    "**Document**:\n**Query**:\n I will provide you with passages, each indicated by a numerical identifier.",
    "0 1 2 3 4 5 6 7 8 9 A B C D E F G H I J K L M N O P Q R S T U V W X Y Z",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z . , ; : ! ? ( ) [ ] { } < > = + - * / _",
    "retrieval augmented generation reranker benchmark image photo text mixed page screenshot",
    # the pairwise prompt: makes "Yes" and "No" single tokens, as they are in real Qwen tokenizers
    "Is this document relevant to the query? Answer only 'Yes' or 'No'. Yes No Yes No",
]


def train_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 512):
    """Train a byte-level BPE on a small built-in corpus and save it as a Qwen2 tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:], padding_side="left", model_max_length=32768)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def _vision_and_text(family: Family, size: str, tok) -> dict:
    ids = {
        "image_token_id": tok.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tok.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tok.convert_tokens_to_ids("<|vision_end|>"),
    }
    special = {"bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
               "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
               "pad_token_id": tok.convert_tokens_to_ids("<|endoftext|>")}
    if size == "full":
        if family != "qwen2_vl":
            raise ValueError("size='full' is provided for Qwen2-VL-2B (the jina-reranker-m0 base) only")
        text = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                    num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                    rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                        "mrope_section": [16, 24, 24]})
        vision = dict(depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
        return {"text_config": {**text, **special}, "vision_config": vision, **ids}
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6)
    if family == "qwen2_vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}
        vision = dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=4, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    elif family == "qwen2_5_vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}
        vision = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=4,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                      window_size=112, fullatt_block_indexes=[1])
    elif family == "qwen3_vl":
        text.update(head_dim=16)
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                                   "mrope_interleaved": True}
        vision = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=4,
                      patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                      num_position_embeddings=64, deepstack_visual_indexes=[1])
    else:
        raise ValueError(f"unknown family {family!r}")
    return {"text_config": {**text, **special}, "vision_config": vision, **ids}


def build_checkpoint(out_dir: str | os.PathLike, *, family: Family = "qwen2_vl", head: Head = "jina",
                     size: Literal["tiny", "full"] = "tiny", seed: int = 0, dtype: str = "float32",
                     min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS, legacy_keys: bool = True,
                     weights: bool = True) -> Path:
    """Write a random checkpoint of the real architecture to ``out_dir`` and return the path.

    ``head="jina"`` builds a jina-reranker-m0 style ranker (Qwen2-VL + MLP score head, keys ``score.0.*``
    and ``score.2.*``, legacy key layout ``model.layers.*`` / ``visual.*`` as in the published checkpoint
    when ``legacy_keys``); ``head="lm"`` builds an instruction-tuned generative VLM
    (``AutoModelForImageTextToText``) for the listwise and pairwise scorers. ``weights=False`` writes
    everything but the weights (the caller initialises the model randomly in memory: full-size dummies).
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForImageTextToText

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(out)
    cfg_kwargs = _vision_and_text(family, size, tok)
    config = AutoConfig.for_model(family, **cfg_kwargs)
    config.tie_word_embeddings = True if size == "full" else False
    torch.manual_seed(seed)
    if not weights:
        config.architectures = ["JinaVLForRanking"] if head == "jina" else None
        config.save_pretrained(out)
    elif head == "lm":
        with torch.device("cpu"):
            model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dtype))
        # Random generative checkpoints must still produce sensible logits for yes/no and identifiers.
        model.save_pretrained(out)
    else:
        if family != "qwen2_vl":
            raise ValueError("the jina-reranker-m0 head exists for Qwen2-VL only")
        from .jina import JinaVLForRanking

        config.architectures = ["JinaVLForRanking"]
        model = JinaVLForRanking(config).to(getattr(torch, dtype))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if legacy_keys:
            state = {_to_legacy_key(k): v for k, v in state.items()}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        config.dtype = dtype
        config.save_pretrained(out)
    patch = 16 if family == "qwen3_vl" else 14
    image_proc = {
        "image_processor_type": "Qwen2VLImageProcessor" if family != "qwen3_vl" else "Qwen2VLImageProcessor",
        "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "rescale_factor": 1 / 255, "patch_size": patch, "temporal_patch_size": 2, "merge_size": 2,
        "min_pixels": min_pixels, "max_pixels": max_pixels,
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
    }
    (out / "preprocessor_config.json").write_text(json.dumps(image_proc, indent=2))
    (out / "MMRANK_DUMMY").write_text("Random weights built by mmrank.models.dummy; scores mean nothing.\n")
    return out


def _to_legacy_key(key: str) -> str:
    """transformers-5 key → the layout of the published jina-reranker-m0 / Qwen2-VL checkpoints."""
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    if key.startswith("model.visual."):
        return "visual." + key[len("model.visual."):]
    return key


def is_dummy(path: str | os.PathLike) -> bool:
    return (Path(path) / "MMRANK_DUMMY").exists()


def warn_dummy(what: str = "model") -> None:
    bar = "!" * 78
    print(f"{bar}\n!! mmrank: this {what} has RANDOM WEIGHTS (dummy). Its scores mean NOTHING.\n"
          f"!! Use it for smoke tests and speed measurements only.\n{bar}", file=sys.stderr, flush=True)
