"""jina-reranker-m0's architecture, written against transformers 5 (the released custom code is not).

Reference (the model's Hugging Face ``modeling.py`` and vLLM's ``jina_vl.py``): a Qwen2-VL-2B whose
``lm_head`` is replaced by the identity, and a score head ``Linear(H, H) → ReLU → Linear(H, 1)`` (checkpoint
keys ``score.0.*`` and ``score.2.*``) applied to the final (normed) hidden state of the **last** position.

We hold a bare ``Qwen2VLModel`` instead of the generation class: the reference computes the identity
"logits" for every position and keeps only the last one; we never materialise per-position logits, and
the hidden state we read is the same tensor (the last entry of the reference's ``hidden_states`` is the
normed output of the final layer, i.e. ``last_hidden_state``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2VLConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel, Qwen2VLPreTrainedModel

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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, image_grid_thw: torch.Tensor | None = None,
                mm_token_type_ids: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Raw relevance logits, one per sequence (apply :func:`logits_to_scores` for the 0..1 score)."""
        extra = {"mm_token_type_ids": mm_token_type_ids} if mm_token_type_ids is not None else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                         image_grid_thw=image_grid_thw, use_cache=False, **extra, **kwargs)
        last = out.last_hidden_state[:, -1]
        return self.score(last).squeeze(-1)


def logits_to_scores(logits: torch.Tensor) -> torch.Tensor:
    """The reference's normalisation, always applied: ``sigmoid(logit - 2.65)`` in float32."""
    return torch.sigmoid(logits.float() - LOGIT_BIAS)
