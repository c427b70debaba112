"""Listwise reranking with an instruction-tuned VLM: Rank-Nexus prompts, RankGPT windows, FIRST single pass.

The model sees a whole window of candidates in one context — text passages, images, or both, interleaved
through the model's own chat template — and orders them. Two ways to read the order:

* ``mode="generate"`` (RankGPT, Rank-Nexus): the model writes ``[2] > [1] > [3]`` greedily; the answer is
  parsed and repaired (:mod:`mmrank.ranking.permutation`: unknown ids ignored, duplicates dropped, missing ids
  appended in their prior order, garbage → the window's current order).
* ``mode="single_pass"`` (FIRST): the answer is forced to begin with the identifier opener ``[`` and the
  window is ordered by the logits of the **first identifier token** over all identifiers — one forward
  pass per window, no decoding. Every identifier must then be exactly one token in the model's tokenizer;
  this is checked when the scorer is built and a :class:`~mmrank.errors.IdentifierTokenError` explains
  what to change otherwise. Single-pass uses letters ``A, B, C, …`` by default (as rank_llm's FIRST does,
  since Qwen tokenizers split multi-digit numbers into one token per digit).

Prompts are the multi-turn templates of the Rank-Nexus paper (Table 8), which follow RankGPT's structure:
system message; "I will provide you with {N} passages…"; one user turn per candidate ("[i] text") each
acknowledged by the assistant ("Received passage [i]."); a final instruction asking for ``[] > []``.
``prompt="text"`` is the text listwise template, ``prompt="multimodal"`` the image/mixed one;
``prompt="auto"`` takes the multimodal template whenever the query or any document has an image.
``[n]``-like patterns inside passage and query text are rewritten to ``(n)`` first.

Long lists are ranked with RankGPT's sliding window: windows of ``window_size`` candidates moving ``step``
towards the front, starting at the end of the list (100 candidates, window 20, step 10 → 9 windows,
``[80, 100)`` first, ``[0, 20)`` last), so strong candidates bubble up to the top.

**Scores.** A listwise model produces an order, not relevance values. The score of the document at 0-based
position ``r`` of the final ranking of ``n`` documents is ``(n - r) / n``: 1.0 for the first, ``1/n`` for
the last, strictly decreasing down the ranking. They are ranks, **not calibrated relevances**; do not
compare them across queries or threshold them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

from ..errors import InputError
from ..inputs.documents import Document, Query
from ..inputs.images import DEFAULT_POLICY, ImagePolicy
from ..models.options import LISTWISE_MAX_PIXELS, MIN_PIXELS, LoadOptions
from ..models.vlm import DEFAULT_INSTRUCT_MODEL, InstructVLM
from ..ranking.completion import answer_complete
from ..ranking.permutation import (
    default_step,
    format_ranking,
    make_identifiers,
    parse_permutation,
    rank_scores,
    rerank_with_windows,
    sliding_windows,
)
from .base import OnError, Reranker
from .prompts import (
    LISTWISE_PROMPTS,
    MULTIMODAL_PROMPT,
    TEXT_PROMPT,
    Conversation,
    FirstTokenPlan,
    ListwisePrompt,
    VLMImageCheck,
    first_token_plan,
    listwise_conversation,
    listwise_template,
)

__all__ = ["ListwiseReranker", "ListwisePrompt", "TEXT_PROMPT", "MULTIMODAL_PROMPT", "PROMPTS", "FirstTokenPlan",
           "DEFAULT_MODEL", "Mode"]

logger = logging.getLogger("mmrank")

#: the named templates (``prompt="text"`` / ``"multimodal"``); defined in :mod:`mmrank.scorers.prompts`
PROMPTS = LISTWISE_PROMPTS

DEFAULT_MODEL = DEFAULT_INSTRUCT_MODEL
Mode = Literal["generate", "single_pass"]


def ranking_complete(text: str, identifiers: Sequence[str]) -> bool:
    """Whether an answer already names every identifier and its last one is closed (``"[3] > [1] > [2]"``
    for three): generation can stop there — anything after it would be ignored by the parser. The rule is
    :func:`mmrank.ranking.completion.answer_complete` (bracketed mentions only, think blocks respected)."""
    return answer_complete(text, identifiers)


class ListwiseReranker(VLMImageCheck, Reranker):
    """Listwise reranking with an instruction-tuned VLM (Rank-Nexus / RankGPT prompts; FIRST single pass).

    Args:
        model: hub id or local folder of an instruct VLM that ``AutoModelForImageTextToText`` loads
            (Qwen2-VL, Qwen2.5-VL, Qwen3-VL). Default ``Qwen/Qwen2-VL-2B-Instruct`` — Rank-Nexus itself has
            no public checkpoint; any fine-tuned listwise VLM of these families drops in.
        window_size: candidates per sliding window (RankGPT default 20), walked from the end to the front.
        step: how far the window moves each time (default: half the window, RankGPT's 10 for 20).
        mode: ``"generate"`` (parse the generated ``[] > []`` answer) or ``"single_pass"`` (FIRST: order by
            the first identifier token's logits; one forward pass per window).
        identifiers: ``"auto"`` (numbers ``1..N`` for generate, letters ``A..`` for single pass),
            ``"numbers"``, ``"letters"`` or an explicit list of strings.
        prompt: ``"auto"`` (multimodal template when any image is present, else the text template),
            ``"text"``, ``"multimodal"`` or a :class:`ListwisePrompt`.
        max_new_tokens: generation budget per window (default: the length of a full ranking + 8 tokens).
        stop_early: end a window's decoding as soon as its answer names every identifier in brackets
            (:func:`~mmrank.ranking.completion.answer_complete`; the parsed ranking is the one a full decode
            gives, since later mentions are dropped by the repair).
        kv_cache: ``"static"`` (default: a KV cache preallocated for prompt + budget, no per-token growth)
            or ``"dynamic"`` (transformers' default cache).
        max_passage_words: passages are cut to this many words (RankGPT: 300); ``None`` keeps them whole.
        min_pixels: smallest per-image budget in pixels (default 56²).
        max_pixels: largest per-image budget in pixels; the default ``256·28·28`` keeps a window of 20 images
            at about 5K visual tokens.
        load: :class:`~mmrank.models.options.LoadOptions` — device, dtype, attention implementation, load
            format (``"dummy"``: random weights), hub options, quantization, device map, extra
            ``from_pretrained`` kwargs; as for every local mmrank scorer.
        **load_options: any field of :class:`~mmrank.models.options.LoadOptions` as a keyword (``device=``,
            ``dtype=``, ``attn_implementation=``, ``load_format=``, ``revision=``, ``cache_dir=``,
            ``local_files_only=``, ``token=``, ``quantization=``, ``device_map=``, …); it overrides ``load``.
        on_error: what to do with a document that cannot be read (see :class:`mmrank.Reranker`).
        image_policy: limits and sources allowed for images (see :class:`mmrank.Reranker`).
        show_progress: show a progress bar (see :class:`mmrank.Reranker`).
        image_workers: threads reading images (see :class:`mmrank.Reranker`).

    Scores: ``(n - rank) / n`` in the final order — ranks, not calibrated relevances (see the module doc).
    The raw answers of the last call are kept in ``last_responses`` (generate mode) for inspection.
    """

    supports_image_query = True
    supports_image_documents = True

    def __init__(self, model: str | os.PathLike = DEFAULT_MODEL, *, window_size: int = 20, step: int | None = None,
                 mode: Mode = "generate", identifiers: str | Sequence[str] = "auto",
                 prompt: str | ListwisePrompt = "auto", max_new_tokens: int | None = None,
                 stop_early: bool = True, kv_cache: str = "static",
                 max_passage_words: int | None = 300, min_pixels: int | None = MIN_PIXELS,
                 max_pixels: int | None = LISTWISE_MAX_PIXELS, load: LoadOptions | None = None,
                 on_error: OnError = "last", image_policy: ImagePolicy = DEFAULT_POLICY,
                 show_progress: bool = False, image_workers: int = 4, **load_options: Any):
        super().__init__(on_error=on_error, image_policy=image_policy, show_progress=show_progress,
                         image_workers=image_workers)
        step = default_step(window_size, step)
        sliding_windows(0, window_size, step)  # validates window_size and step
        if mode not in ("generate", "single_pass"):
            raise InputError(f"mode must be 'generate' or 'single_pass', got {mode!r}")
        if isinstance(prompt, str) and prompt not in ("auto", *LISTWISE_PROMPTS):
            raise InputError(f"prompt must be 'auto', 'text', 'multimodal' or a ListwisePrompt, got {prompt!r}")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise InputError("max_new_tokens must be >= 1")
        if max_passage_words is not None and max_passage_words < 1:
            raise InputError("max_passage_words must be >= 1 or None")
        self.window_size = window_size
        self.step = step
        self.mode: Mode = mode
        if identifiers == "auto":
            identifiers = "letters" if mode == "single_pass" else "numbers"
        self.identifiers = list(identifiers) if not isinstance(identifiers, str) else identifiers
        self.identifier_list = make_identifiers(self.identifiers, window_size)  # validates the count
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        if kv_cache not in ("static", "dynamic"):
            raise InputError(f"kv_cache must be 'static' or 'dynamic', got {kv_cache!r}")
        self.stop_early = bool(stop_early)
        self.kv_cache = kv_cache
        self.max_passage_words = max_passage_words
        self.vlm = InstructVLM(model, LoadOptions.merge(load, **load_options), min_pixels=min_pixels,
                               max_pixels=max_pixels, what="listwise scorer")
        self.model_name = self.vlm.model_name
        self.last_responses: list[str] = []
        self._plans: dict[tuple[int, str], FirstTokenPlan] = {}
        if mode == "single_pass":
            self.first_token_plan(window_size)  # refuse at construction, not at the first query

    # ------------------------------------------------------------------ single-pass identifier check
    def first_token_plan(self, n: int, opener: str = "[") -> FirstTokenPlan:
        """Check that each of the first ``n`` identifiers is one token after ``opener`` and say which.

        The answer's canonical tokenization is taken in context (right after the assistant turn's start).
        Raises :class:`IdentifierTokenError` naming the identifier and its tokens otherwise.

        Args:
            n: window size (the first ``n`` identifiers are checked).
            opener: the forced start of the answer.
        """
        if (n, opener) not in self._plans:  # keyed by the opener too: a plan for "(" is not the one for "["
            self._plans[n, opener] = first_token_plan(self.vlm.token_ids, self.vlm.tokens,
                                                      make_identifiers(self.identifiers, n), self.model_name, opener)
        return self._plans[n, opener]

    # ------------------------------------------------------------------ prompts
    def _template(self, query: Query, documents: Sequence[Document]) -> ListwisePrompt:
        return listwise_template(self.prompt, query, documents)

    def window_conversation(self, query: Query | str, documents: Sequence[Document | Any],
                            template: ListwisePrompt | None = None) -> tuple[Conversation, list[str]]:
        """The conversation for one window (documents in their current order) and its identifiers.

        Args:
            query: the query (text, image or both).
            documents: the window's documents, in their current order.
            template: the prompt template (default: the scorer's choice for this window).
        """
        query = Query.coerce(query)
        documents = [Document.coerce(d) for d in documents]
        return listwise_conversation(query, documents, template or self._template(query, documents),
                                     self.identifiers, max_words=self.max_passage_words, clean=self.vlm.clean,
                                     image_policy=self.image_policy)

    # ------------------------------------------------------------------ ranking
    def _rank_documents(self, query: Query, documents: list[Document]) -> list[tuple[int, float]]:
        template = self._template(query, documents)
        self.last_responses = []
        windows = sliding_windows(len(documents), self.window_size, self.step)
        bar = None
        if self.show_progress and len(windows) > 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(windows), desc="mmrank listwise", unit="window")
        try:
            order = rerank_with_windows(
                len(documents), self.window_size, self.step,
                lambda items: self._rank_window(query, [documents[i] for i in items], template),
                on_window=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        return list(zip(order, rank_scores(len(order)), strict=True))

    def _rank_window(self, query: Query, docs: list[Document], template: ListwisePrompt) -> list[int]:
        conv, ids = self.window_conversation(query, docs, template)
        if self.mode == "single_pass":
            plan = self.first_token_plan(len(docs))
            prompt = self.vlm.render(conv)
            inputs, _ = self.vlm.encode([prompt], [conv.images], extra_ids=[list(plan.append_ids)])
            logits = self.vlm.last_logits(inputs, keep=plan.keep)[0]
            scores = plan.scores(logits)
            return sorted(range(len(docs)), key=lambda i: (-scores[i] if scores[i] == scores[i] else float("inf"), i))
        prompt = self.vlm.render(conv)
        inputs, _ = self.vlm.encode([prompt], [conv.images])
        budget = self.max_new_tokens or len(self.vlm.token_ids(format_ranking(ids))) + 8
        stop = self._stop(prompt, ids) if self.stop_early else None
        text = self.vlm.generate(inputs, budget, stop, kv_cache=self.kv_cache)[0]
        self.last_responses.append(text)
        logger.debug("mmrank listwise: window of %d -> %r", len(docs), text)
        return parse_permutation(text, ids)

    @staticmethod
    def _stop(prompt: str, ids: list[str]):
        """The early-stop predicate of one window (a prompt that opened a think block waits for its end)."""
        think_open = prompt.rstrip().lower().endswith("<think>")
        return lambda text: answer_complete(text, ids, think_open=think_open)

    def close(self) -> None:
        self.vlm.close()
