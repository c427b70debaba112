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
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image

from ..errors import IdentifierTokenError, InputError
from ..inputs.documents import Document, Query
from ..inputs.images import DEFAULT_POLICY, ImagePolicy
from ..models.loading import hub_kwargs
from ..models.vlm import DEFAULT_INSTRUCT_MODEL, Conversation, InstructVLM
from ..ranking.permutation import (
    escape_identifiers,
    format_ranking,
    make_identifiers,
    parse_permutation,
    rank_scores,
    rerank_with_windows,
    sliding_windows,
)
from .base import OnError, Reranker

logger = logging.getLogger("mmrank")

DEFAULT_MODEL = DEFAULT_INSTRUCT_MODEL
Mode = Literal["generate", "single_pass"]


@dataclass(frozen=True)
class ListwisePrompt:
    """A RankGPT-style multi-turn template. Placeholders: ``{num}`` (window size), ``{query}`` (query text,
    or the query image in ``intro``), ``{kind}`` ("number identifier", "letter identifier" or
    "identifier"), ``{id}``, ``{text}``, ``{image}``, ``{example}`` (e.g. ``[1] > [2]``)."""

    name: str
    system: str
    intro: str
    intro_ack: str
    passage_prefix: str
    text_line: str
    image_line: str
    passage_ack: str
    final: str
    #: how the final instruction names an image-only query
    image_query_ref: str = "the query image given above"


#: Rank-Nexus, Table 8, "Text-based Listwise Reranking" (the RankGPT prompt).
TEXT_PROMPT = ListwisePrompt(
    name="text",
    system="You are RankGPT, an intelligent assistant that can rank passages based on their relevancy to the query.",
    intro="I will provide you with {num} passages, each indicated by {kind} []. Rank the passages based on "
          "their relevance to query: {query}.",
    intro_ack="Okay, please provide the passages.",
    passage_prefix="[{id}] ",
    text_line="{text}",
    image_line="{image}",
    passage_ack="Received passage [{id}].",
    final="Search Query: {query}. Rank the {num} passages above based on their relevance. The output format "
          "should be [] > [], e.g., {example}. Only response the ranking results, do not say any word or explain.",
)

#: Rank-Nexus, Table 8, "Image-based Listwise Reranking" (text + image documents; a missing part's line
#: is left out).
MULTIMODAL_PROMPT = ListwisePrompt(
    name="multimodal",
    system="You are a multimodal reranking assistant. Rank documents containing both text and images based on "
           "their relevance to the query.",
    intro="I will provide you with {num} multimodal documents, each containing text and images. Rank them by "
          "relevance to query: {query}.",
    intro_ack="Understood. Please provide the documents.",
    passage_prefix="[{id}] ",
    text_line="Text: {text}",
    image_line="Image: {image}",
    passage_ack="Received document [{id}].",
    final="Query: {query}. Rank the {num} documents considering both textual and visual content. Output format: "
          "[] > [], e.g., {example}. Only provide the ranking, no explanation.",
)

PROMPTS = {"text": TEXT_PROMPT, "multimodal": MULTIMODAL_PROMPT}

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def fill(template: str, **values: Any) -> list[str | Image.Image]:
    """Substitute ``{name}`` placeholders by text or images, without ``str.format`` (user text may hold
    braces). Returns the parts in order (strings and images)."""
    parts: list[str | Image.Image] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(template):
        parts.append(template[pos:m.start()])
        v = values.get(m.group(1), m.group(0))
        parts.extend(v if isinstance(v, list) else [v])
        pos = m.end()
    parts.append(template[pos:])
    return [p if isinstance(p, Image.Image) else str(p) for p in parts]


@dataclass(frozen=True)
class FirstTokenPlan:
    """How single-pass ranking reads a window's order from logits (see :meth:`ListwiseReranker.first_token_plan`).

    ``opener_ids`` are appended to the prompt (the forced start of the answer). For each identifier,
    ``kind[i]`` is ``"split"`` (the opener is its own token(s) and the identifier is the single token
    ``token_ids[i]`` after it) or ``"merged"`` (the tokenizer writes opener + identifier as the single token
    ``token_ids[i]``, read one position earlier). With only split identifiers the ranking is by the logits
    of ``token_ids`` at the last position."""

    identifiers: tuple[str, ...]
    opener_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    kinds: tuple[str, ...]

    @property
    def append_ids(self) -> tuple[int, ...]:
        return self.opener_ids if "split" in self.kinds else ()

    @property
    def keep(self) -> int:
        return 2 if ("split" in self.kinds and "merged" in self.kinds) else 1

    def scores(self, logits: torch.Tensor) -> list[float]:
        """Per-identifier scores from the last ``keep`` positions' logits ``(keep, vocab)``."""
        if self.keep == 1:
            row = logits[-1]
            return [float(row[t]) for t in self.token_ids]
        # Mixed tokenization: compare log P(answer starts with "[x") under the canonical tokens of "[x".
        before = torch.log_softmax(logits[-2].float(), dim=-1)
        after = torch.log_softmax(logits[-1].float(), dim=-1)
        opener = float(before[self.opener_ids[0]])
        return [float(before[t]) if k == "merged" else opener + float(after[t])
                for t, k in zip(self.token_ids, self.kinds, strict=True)]


class ListwiseReranker(Reranker):
    """Listwise reranking with an instruction-tuned VLM (Rank-Nexus / RankGPT prompts; FIRST single pass).

    Args:
        model: hub id or local folder of an instruct VLM that ``AutoModelForImageTextToText`` loads
            (Qwen2-VL, Qwen2.5-VL, Qwen3-VL). Default ``Qwen/Qwen2-VL-2B-Instruct`` — Rank-Nexus itself has
            no public checkpoint; any fine-tuned listwise VLM of these families drops in.
        window_size / step: sliding window (RankGPT defaults 20 / 10), walked from the end to the front.
        mode: ``"generate"`` (parse the generated ``[] > []`` answer) or ``"single_pass"`` (FIRST: order by
            the first identifier token's logits; one forward pass per window).
        identifiers: ``"auto"`` (numbers ``1..N`` for generate, letters ``A..`` for single pass),
            ``"numbers"``, ``"letters"`` or an explicit list of strings.
        prompt: ``"auto"`` (multimodal template when any image is present, else the text template),
            ``"text"``, ``"multimodal"`` or a :class:`ListwisePrompt`.
        max_new_tokens: generation budget per window (default: the length of a full ranking + 8 tokens).
        max_passage_words: passages are cut to this many words (RankGPT: 300); ``None`` keeps them whole.
        min_pixels / max_pixels: per-image budget; the default ``256·28·28`` keeps a window of 20 images
            at about 5K visual tokens.
        device / dtype / attn_implementation / load_format / revision / cache_dir / local_files_only /
            token: loading, as for every mmrank scorer (``load_format="dummy"``: random weights).
        on_error / image_policy / show_progress / image_workers: see :class:`mmrank.Reranker`.

    Scores: ``(n - rank) / n`` in the final order — ranks, not calibrated relevances (see the module doc).
    The raw answers of the last call are kept in ``last_responses`` (generate mode) for inspection.
    """

    supports_image_query = True
    supports_image_documents = True

    def __init__(self, model: str | os.PathLike = DEFAULT_MODEL, *, window_size: int = 20, step: int = 10,
                 mode: Mode = "generate", identifiers: str | Sequence[str] = "auto",
                 prompt: str | ListwisePrompt = "auto", max_new_tokens: int | None = None,
                 max_passage_words: int | None = 300, device: Any = None, dtype: Any = "auto",
                 min_pixels: int | None = 3136, max_pixels: int | None = 256 * 28 * 28,
                 attn_implementation: str | None = "sdpa", load_format: str = "auto",
                 revision: str | None = None, cache_dir: str | None = None, local_files_only: bool | None = None,
                 token: str | None = None, on_error: OnError = "last", image_policy: ImagePolicy = DEFAULT_POLICY,
                 show_progress: bool = False, image_workers: int = 4):
        super().__init__(on_error=on_error, image_policy=image_policy, show_progress=show_progress,
                         image_workers=image_workers)
        sliding_windows(0, window_size, step)  # validates window_size and step
        if mode not in ("generate", "single_pass"):
            raise InputError(f"mode must be 'generate' or 'single_pass', got {mode!r}")
        if isinstance(prompt, str) and prompt not in ("auto", *PROMPTS):
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
        self.max_passage_words = max_passage_words
        kw = hub_kwargs(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
        self.vlm = InstructVLM(model, device=device, dtype=dtype, min_pixels=min_pixels, max_pixels=max_pixels,
                               attn_implementation=attn_implementation, load_format=load_format, hub=kw,
                               what="listwise scorer")
        self.model_name = self.vlm.model_name
        self.last_responses: list[str] = []
        self._plans: dict[int, FirstTokenPlan] = {}
        if mode == "single_pass":
            self.first_token_plan(window_size)  # refuse at construction, not at the first query

    # ------------------------------------------------------------------ single-pass identifier check
    def first_token_plan(self, n: int, opener: str = "[") -> FirstTokenPlan:
        """Check that each of the first ``n`` identifiers is one token after ``opener`` and say which.

        The answer's canonical tokenization is taken in context (right after the assistant turn's start).
        Raises :class:`IdentifierTokenError` naming the identifier and its tokens otherwise."""
        if n in self._plans:
            return self._plans[n]
        ids = make_identifiers(self.identifiers, n)
        prefix = "assistant\n"
        base = self.vlm.token_ids(prefix)

        def tail(text: str) -> list[int]:
            full = self.vlm.token_ids(prefix + text)
            if full[:len(base)] != base:
                raise IdentifierTokenError(f"cannot isolate the tokens of {text!r} in {self.model_name}'s tokenizer")
            return full[len(base):]

        opener_ids = tail(opener)
        tokens: list[int] = []
        kinds: list[str] = []
        for x in ids:
            t = tail(opener + x)
            if len(t) == len(opener_ids) + 1 and t[:len(opener_ids)] == opener_ids:
                tokens.append(t[-1])
                kinds.append("split")
            elif len(t) == 1 and len(opener_ids) == 1:
                tokens.append(t[0])
                kinds.append("merged")
            else:
                shown = self.vlm.tokens(t[len(opener_ids):] if t[:len(opener_ids)] == opener_ids else t)
                raise IdentifierTokenError(
                    f"single-pass listwise ranking needs every identifier to be exactly one token, but in the "
                    f"tokenizer of {self.model_name} the identifier {x!r} (written {opener + x!r}) is "
                    f"{len(shown)} tokens {shown}. Use identifiers='letters' (A..Z, one token each in Qwen "
                    f"tokenizers; at most 26 per window), a window_size whose identifiers are single tokens, "
                    f"or mode='generate'.")
        if len(set(tokens)) != len(tokens):
            raise IdentifierTokenError(f"identifiers {ids} do not map to distinct tokens in {self.model_name}'s "
                                       "tokenizer; choose other identifiers")
        plan = FirstTokenPlan(tuple(ids), tuple(opener_ids), tuple(tokens), tuple(kinds))
        self._plans[n] = plan
        return plan

    # ------------------------------------------------------------------ documents
    def _check_image(self, image) -> None:
        self.vlm.processor.resized_size(*image.size)  # InputError for sizes the image processor refuses

    def _text(self, text: str) -> str:
        # Whitespace is collapsed always (as RankGPT does: " ".join(content.split()[:max_length])), not only
        # when the passage is cut: a passage reads the same whether or not it reached max_passage_words.
        words = text.split()
        if self.max_passage_words is not None:
            words = words[: self.max_passage_words]
        return self.vlm.clean(escape_identifiers(" ".join(words)))

    def _template(self, query: Query, documents: Sequence[Document]) -> ListwisePrompt:
        if isinstance(self.prompt, ListwisePrompt):
            return self.prompt
        if self.prompt == "auto":
            multimodal = query.has_image or any(d.has_image for d in documents)
            return MULTIMODAL_PROMPT if multimodal else TEXT_PROMPT
        return PROMPTS[self.prompt]

    def window_conversation(self, query: Query | str, documents: Sequence[Document | Any],
                            template: ListwisePrompt | None = None) -> tuple[Conversation, list[str]]:
        """The conversation for one window (documents in their current order) and its identifiers."""
        query = Query.coerce(query)
        documents = [Document.coerce(d) for d in documents]
        tp = template or self._template(query, documents)
        n = len(documents)
        ids = make_identifiers(self.identifiers, n)
        kind = ("number identifier" if self.identifiers == "numbers" else
                "letter identifier" if self.identifiers == "letters" else "identifier")
        qtext = self._text(query.text) if query.has_text else ""
        q_intro: list[Any] = []
        if query.has_image:
            q_intro.append(query.load_image(self.image_policy))
            if qtext:
                q_intro.append("\n")
        if qtext:
            q_intro.append(qtext)
        q_final = qtext or tp.image_query_ref
        example = format_ranking(ids[:2]) if n >= 2 else f"[{ids[0]}]"
        conv = Conversation()
        conv.add("system", *fill(tp.system))
        conv.add("user", *fill(tp.intro, num=n, query=q_intro, kind=kind))
        conv.add("assistant", *fill(tp.intro_ack))
        for x, d in zip(ids, documents, strict=True):
            parts: list[Any] = fill(tp.passage_prefix, id=x)
            lines: list[list[Any]] = []
            if d.has_text:
                lines.append(fill(tp.text_line, text=self._text(d.text or "")))
            if d.has_image:
                lines.append(fill(tp.image_line, image=d.load_image(self.image_policy)))
            for k, line in enumerate(lines):
                if k:
                    parts.append("\n")
                parts.extend(line)
            conv.add("user", *parts)
            conv.add("assistant", *fill(tp.passage_ack, id=x))
        conv.add("user", *fill(tp.final, query=q_final, num=n, example=example))
        return conv, ids

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
        text = self.vlm.generate(inputs, budget)[0]
        self.last_responses.append(text)
        logger.debug("mmrank listwise: window of %d -> %r", len(docs), text)
        return parse_permutation(text, ids)

    def close(self) -> None:
        self.vlm.close()
