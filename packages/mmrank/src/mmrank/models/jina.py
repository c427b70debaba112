"""jina-reranker-m0's architecture, written against transformers 5 (the released custom code is not).

Reference (the model's Hugging Face ``modeling.py`` and vLLM's ``jina_vl.py``): a Qwen2-VL-2B whose
``lm_head`` is replaced by the identity, and a score head ``Linear(H, H) → ReLU → Linear(H, 1)`` (checkpoint
keys ``score.0.*`` and ``score.2.*``) applied to the final (normed) hidden state of the **last** position.

We hold a bare ``Qwen2VLModel`` instead of the generation class: the reference computes the identity
"logits" for every position and keeps only the last one; we never materialise per-position logits, and
the hidden state we read is the same tensor (the last entry of the reference's ``hidden_states`` is the
normed output of the final layer, i.e. ``last_hidden_state``).

:meth:`JinaVLForRanking.forward` is the one forward of this model: the scorer
(:class:`mmrank.scorers.pointwise.JinaRerankerM0`), the parity test and training all call it; its fast paths
(precomputed image features, host-built M-RoPE positions, compiled decoder loop) are options of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import Qwen2VLConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel, Qwen2VLPreTrainedModel

from .features import VisionEncoder

#: The token appended to every sequence; its final hidden state is scored (reference: ``score_token_id``).
SCORE_TOKEN_ID = 100
#: Scores are ``sigmoid(logit - LOGIT_BIAS)`` (reference constant; vLLM's ``logit_bias`` is the same).
LOGIT_BIAS = 2.65


LEGACY_KEY_MAPPING = {
    r"^model\.(?!language_model\.|visual\.)": "model.language_model.",
    r"^visual\.": "model.visual.",
}


class JinaVLForRanking(Qwen2VLPreTrainedModel):
    config_class = Qwen2VLConfig
    base_model_prefix = "model"
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: Qwen2VLConfig):
        super().__init__(config)
        self.model = Qwen2VLModel(config)
        hidden = config.text_config.hidden_size
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        # The published checkpoint uses the transformers-4 layout (``model.layers.*``, ``visual.*``);
        # transformers 5 expects ``model.language_model.*`` / ``model.visual.*``. Keys already in the new
        # layout do not match these patterns and load unchanged.
        kwargs.setdefault("key_mapping", LEGACY_KEY_MAPPING)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # ------------------------------------------------------------------ fast paths
    @property
    def vision_encoder(self) -> VisionEncoder:
        """The vision tower as :class:`~mmrank.models.features.VisionEncoder` runs it (images of equal grid
        attended in one call; same computation as the tower's own forward). Built on first use."""
        enc = self.__dict__.get("_vision_encoder")
        if enc is None:
            enc = self.__dict__["_vision_encoder"] = VisionEncoder(self.model.visual)
        return enc

    def configure_fast_paths(self, *, compile_vision: bool = False, compile_lm: bool = False,
                             decoder_layer_fn: Callable | None = None,
                             vision_encoder: VisionEncoder | None = None) -> None:
        """Opt into ``torch.compile`` of the vision blocks (``compile_vision``) and/or of the decoder layers
        (``compile_lm``: the text model's forward is written out so that one compiled graph serves every
        layer and batch shape). ``decoder_layer_fn`` runs that written-out loop with another layer function
        (e.g. :func:`decoder_layer` itself, eagerly, for testing); ``vision_encoder`` installs a prepared
        encoder of this model's tower (e.g. one compiled earlier, to switch back and forth)."""
        if vision_encoder is not None and vision_encoder.visual is not self.model.visual:
            raise ValueError("vision_encoder must wrap this model's vision tower")
        self.__dict__["_vision_encoder"] = vision_encoder or VisionEncoder(self.model.visual,
                                                                           compile_blocks=compile_vision)
        if decoder_layer_fn is None and compile_lm:
            decoder_layer_fn = torch.compile(decoder_layer, dynamic=True)
        self.__dict__["_decoder_layer_fn"] = decoder_layer_fn

    def encode_images(self, pixel_values: torch.Tensor, grids: Sequence[tuple[int, int, int]]) -> list[torch.Tensor]:
        """Vision-tower outputs, one ``(tokens, hidden)`` tensor per image (``pixel_values``: the image
        processor's flattened patches of the images, concatenated in order; ``grids``: their ``(t, h, w)``)."""
        return self.vision_encoder.encode(pixel_values, [tuple(int(x) for x in g) for g in grids])

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, image_grid_thw: torch.Tensor | None = None,
                mm_token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                image_embeds: Sequence[torch.Tensor] | torch.Tensor | None = None,
                image_index: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Raw relevance logits, one per sequence (apply :func:`logits_to_scores` for the 0..1 score).

        Plain use takes the processor's outputs (``input_ids``, ``attention_mask``, ``pixel_values``,
        ``image_grid_thw``, ``mm_token_type_ids``), left padded, scored at the last position. The fast paths
        the scorer uses are options of this same forward:

        * ``image_embeds``: vision-tower outputs already computed (e.g. from a feature cache), one tensor per
          image slot in order of appearance, or one concatenated tensor; ``pixel_values`` is then not needed;
        * ``image_index``: the flat positions (``row * width + column``) of the image tokens, if known;
          else they are read from ``mm_token_type_ids`` (or from the image token id);
        * ``position_ids``: the ``(3, batch, width)`` M-RoPE positions, if built on the host; else they are
          computed here as transformers does (``image_grid_thw`` needed when there are images);
        * :meth:`configure_fast_paths`: compiled vision blocks / decoder loop.
        """
        lm = self.model.language_model
        embeds = lm.embed_tokens(input_ids)
        if image_embeds is None and pixel_values is not None:
            if image_grid_thw is None:
                raise ValueError("pixel_values need image_grid_thw")
            image_embeds = self.encode_images(pixel_values, image_grid_thw.tolist())
        if image_embeds is not None and len(image_embeds):
            feats = image_embeds if isinstance(image_embeds, torch.Tensor) else torch.cat(list(image_embeds), dim=0)
            if image_index is None:
                mask = mm_token_type_ids == 1 if mm_token_type_ids is not None else \
                    input_ids == self.config.image_token_id
                image_index = torch.nonzero(mask.reshape(-1)).view(-1)
            if image_index.numel() != feats.shape[0]:
                raise ValueError(f"{image_index.numel()} image tokens in the input but {feats.shape[0]} image "
                                 "features")
            flat = embeds.view(-1, embeds.shape[-1])
            flat.index_copy_(0, image_index.to(flat.device), feats.to(flat.device, flat.dtype))
        if position_ids is None:
            position_ids = self.model.compute_3d_position_ids(
                input_ids=input_ids, image_grid_thw=image_grid_thw, video_grid_thw=None, inputs_embeds=embeds,
                attention_mask=attention_mask, past_key_values=None, mm_token_type_ids=mm_token_type_ids)
        layer_fn = self.__dict__.get("_decoder_layer_fn")
        if layer_fn is None:
            out = lm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                     **kwargs)
            last = out.last_hidden_state[:, -1]
        else:
            last = self._decoder_loop(layer_fn, embeds, attention_mask, position_ids)
        return self.score(last).squeeze(-1)

    def _decoder_loop(self, layer_fn: Callable, embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                      position_ids: torch.Tensor) -> torch.Tensor:
        """The text model's forward written out (mask, rotary tables, decoder layers, final norm of the last
        position), so each decoder layer can go through ``torch.compile``. Same operations as transformers'."""
        from transformers.masking_utils import create_causal_mask

        lm = self.model.language_model
        mask = create_causal_mask(config=lm.config, inputs_embeds=embeds, attention_mask=attention_mask,
                                  past_key_values=None, position_ids=None)
        if isinstance(mask, dict):  # pragma: no cover - layer types
            mask = mask.get("full_attention")
        pe = lm.rotary_emb(embeds, position_ids)
        h = embeds
        for layer in lm.layers:
            h = layer_fn(layer, h, mask, pe)
        return lm.norm(h[:, -1])


def decoder_layer(layer, hidden: torch.Tensor, mask, position_embeddings) -> torch.Tensor:
    """One decoder layer (what ``compile_lm`` compiles)."""
    out = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings, use_cache=False)
    return out[0] if isinstance(out, tuple) else out


def logits_to_scores(logits: torch.Tensor) -> torch.Tensor:
    """The reference's normalisation, always applied: ``sigmoid(logit - 2.65)`` in float32."""
    return torch.sigmoid(logits.float() - LOGIT_BIAS)
