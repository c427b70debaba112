"""Pairwise yes/no relevance with an instruction-tuned VLM, used as a pointwise score.

Each (query, document) pair is one chat — the "Image-based Pairwise Reranking" template of the Rank-Nexus
paper (Table 8)::

    System: You are an expert relevance assessor for multimodal documents. Determine whether the given
            document is relevant to the user query.
    User:   Query: {query}
            Document Text: {text}
            Document Image: <image>
            Is this document relevant to the query? Answer only 'Yes' or 'No'.

rendered with the model's chat template and its generation prompt. The score is read at the generation
position: ``P(yes) = softmax(logit("Yes"), logit("No"))[0]``, a number in (0, 1). A text-only document
leaves out the image line, an image-only one the text line; an image query takes the place of the query
text (with its text, if any, after it). Works for text, image and mixed documents and any mix of them.

"Yes" and "No" are single tokens in Qwen-VL tokenizers. Where a tokenizer splits either word, the score
uses the **first token** of each (logged once); the first tokens must differ, or
:class:`~mmrank.errors.IdentifierTokenError` is raised. ``answer_words`` changes the pair.

``prompt="monoqwen"`` (:data:`~mmrank.scorers.prompts.MONOQWEN_PROMPT`) is the prompt of
``lightonai/MonoQwen2-VL-v0.1``: one user turn (no system turn of ours; the chat template adds its default),
the page image first, then "Assert the relevance of the previous image document to the following query,
answer True or False. The query is: {query}", answers True/False — the score is then
``softmax(logit("True"), logit("False"))[0]``, as that model's card computes it. It shows image documents
only; a text-only document gets an error naming it (ranked last, as any unreadable document).
(MonoQwen2-VL ships as a LoRA adapter on Qwen2-VL-2B-Instruct: merge it into the base model first and pass
the merged folder.)

Pairs are scored in batches (``batch_size``), left padded, sorted by length to waste less padding; only
the last position's logits are computed. A pair that occurs twice in one call (the same text, the same image
object) is scored once, so equal documents get equal scores and keep their input order.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..errors import InputError
from ..inputs.documents import Document, Query
from ..inputs.images import DEFAULT_POLICY, ImagePolicy
from ..models.options import MAX_PIXELS, MIN_PIXELS, LoadOptions
from ..models.vlm import DEFAULT_INSTRUCT_MODEL, InstructVLM
from .base import OnError, PointwiseReranker
from .prompts import (
    MONOQWEN_PROMPT,
    PAIRWISE_PROMPT,
    PAIRWISE_PROMPTS,
    Conversation,
    PairwisePrompt,
    VLMImageCheck,
    answer_first_tokens,
    pairwise_conversation,
    yes_probability,
)

__all__ = ["PairwiseReranker", "PairwisePrompt", "PAIRWISE_PROMPT", "MONOQWEN_PROMPT", "yes_probability",
           "DEFAULT_MODEL"]

logger = logging.getLogger("mmrank")

DEFAULT_MODEL = DEFAULT_INSTRUCT_MODEL


class PairwiseReranker(VLMImageCheck, PointwiseReranker):
    """Yes/no relevance from an instruction-tuned VLM: ``score = P(yes)`` in (0, 1) per document.

    Args:
        model: hub id or local folder of an instruct VLM that ``AutoModelForImageTextToText`` loads
            (Qwen2-VL, Qwen2.5-VL, Qwen3-VL); default ``Qwen/Qwen2-VL-2B-Instruct``.
        batch_size: pairs per forward pass.
        answer_words: the positive and negative answer (default: the prompt's, ``("Yes", "No")`` for
            Rank-Nexus, ``("True", "False")`` for MonoQwen2-VL).
        prompt: ``"rank-nexus"`` (default), ``"monoqwen"`` or a :class:`PairwisePrompt`.
        max_doc_words: document text is cut to this many words (``None``: whole).
        max_query_words: query text is cut to this many words (``None``: whole).
        min_pixels: smallest per-image budget in pixels (default 56², jina-reranker-m0's).
        max_pixels: largest per-image budget in pixels (default 768·28², jina-reranker-m0's).
        sort_by_length: batch pairs by prompt length (less padding; scores do not depend on it).
        load: :class:`~mmrank.models.options.LoadOptions` — device, dtype, attention implementation, load
            format, hub options, quantization, device map, extra ``from_pretrained`` kwargs.
        **load_options: any field of :class:`~mmrank.models.options.LoadOptions` as a keyword (``device=``,
            ``dtype=``, ``load_format=``, ``quantization=``, …); it overrides ``load``.
        on_error: what to do with a document that cannot be read (see :class:`mmrank.Reranker`).
        image_policy: limits and sources allowed for images (see :class:`mmrank.Reranker`).
        show_progress: show a progress bar (see :class:`mmrank.Reranker`).
        image_workers: threads reading images (see :class:`mmrank.Reranker`).
    """

    supports_image_query = True
    supports_image_documents = True

    def __init__(self, model: str | os.PathLike = DEFAULT_MODEL, *, batch_size: int = 8,
                 answer_words: tuple[str, str] | None = None, prompt: str | PairwisePrompt = PAIRWISE_PROMPT,
                 max_doc_words: int | None = 1024, max_query_words: int | None = 256,
                 min_pixels: int | None = MIN_PIXELS, max_pixels: int | None = MAX_PIXELS,
                 sort_by_length: bool = True, load: LoadOptions | None = None, on_error: OnError = "last",
                 image_policy: ImagePolicy = DEFAULT_POLICY, show_progress: bool = False, image_workers: int = 4,
                 **load_options: Any):
        super().__init__(on_error=on_error, image_policy=image_policy, show_progress=show_progress,
                         image_workers=image_workers)
        if batch_size < 1:
            raise InputError("batch_size must be >= 1")
        for name, v in (("max_doc_words", max_doc_words), ("max_query_words", max_query_words)):
            if v is not None and v < 1:
                raise InputError(f"{name} must be >= 1 or None")
        if isinstance(prompt, str):
            if prompt not in PAIRWISE_PROMPTS:
                raise InputError(f"prompt must be one of {sorted(PAIRWISE_PROMPTS)} or a PairwisePrompt, got {prompt!r}")
            prompt = PAIRWISE_PROMPTS[prompt]
        if answer_words is None:
            answer_words = prompt.answer_words
        if len(answer_words) != 2 or not all(isinstance(w, str) and w for w in answer_words):
            raise InputError("answer_words must be two non-empty strings (positive, negative)")
        self.batch_size = int(batch_size)
        self.answer_words = tuple(answer_words)
        self.template = prompt
        self.max_doc_words = max_doc_words
        self.max_query_words = max_query_words
        self.sort_by_length = sort_by_length
        self.vlm = InstructVLM(model, LoadOptions.merge(load, **load_options), min_pixels=min_pixels,
                               max_pixels=max_pixels, what="pairwise scorer")
        self.model_name = self.vlm.model_name
        self.yes_id, self.no_id, self.single_token_answers = self._answer_tokens()

    def _answer_tokens(self) -> tuple[int, int, bool]:
        """First token of each answer as the model would begin its reply; whether both are single tokens."""
        yes, no, single = answer_first_tokens(self.vlm.token_ids, self.vlm.tokens, self.answer_words,
                                              self.model_name)
        if not single:
            logger.warning("mmrank: in %s's tokenizer %r or %r is several tokens; scoring with the first token "
                           "of each (%s vs %s)", self.model_name, self.answer_words[0], self.answer_words[1],
                           self.vlm.tokens([yes]), self.vlm.tokens([no]))
        return yes, no, single

    # ------------------------------------------------------------------ documents
    def _shape_error(self, i: int, doc: Document) -> InputError | None:
        gap = self.template.cannot_show(doc)
        if gap:  # e.g. a text-only document under MonoQwen2-VL's image-only prompt: this document goes last
            return InputError(f"document {i}{f' (id={doc.id!r})' if doc.id is not None else ''}: {gap}")
        return super()._shape_error(i, doc)

    def conversation(self, query: Query | Any, document: Document | Any) -> Conversation:
        """The chat for one (query, document) pair.

        Args:
            query: the query (text, image or both).
            document: the document (text, image or both).
        """
        return pairwise_conversation(Query.coerce(query), Document.coerce(document), self.template,
                                     max_doc_words=self.max_doc_words, max_query_words=self.max_query_words,
                                     clean=self.vlm.clean, image_policy=self.image_policy)

    # ------------------------------------------------------------------ scoring
    def _score_documents(self, query: Query, documents: list[Document]) -> list[float]:
        convs = [self.conversation(query, d) for d in documents]
        prompts = [self.vlm.render(c) for c in convs]
        # A pair seen before in this call (same prompt, same image objects: a document passed twice) is scored
        # once and shares its score: left padding in differently composed batches would otherwise give
        # equal documents scores a few ulps apart, and their order would not be input order.
        first: dict[tuple[str, tuple[int, ...]], int] = {}
        same = [first.setdefault((p, tuple(id(im) for im in c.images)), i)
                for i, (p, c) in enumerate(zip(prompts, convs, strict=True))]
        order = [i for i in range(len(documents)) if same[i] == i]
        if self.sort_by_length:
            lengths = [len(p) + sum(im.width * im.height for im in c.images) // 784 for p, c in zip(prompts, convs, strict=True)]
            order.sort(key=lambda i: -lengths[i])
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.show_progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="mmrank pairwise", unit="batch")
        scores = [0.0] * len(documents)
        for batch in batches:
            inputs, _ = self.vlm.encode([prompts[j] for j in batch], [convs[j].images for j in batch])
            logits = self.vlm.last_logits(inputs)[:, -1, :]
            for j, p in zip(batch, yes_probability(logits, self.yes_id, self.no_id).tolist(), strict=True):
                scores[j] = float(p)
        return [scores[same[i]] for i in range(len(documents))]

    def close(self) -> None:
        self.vlm.close()

