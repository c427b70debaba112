"""Prompt plumbing shared by the instruction-following scorers (listwise, pairwise, and chat backends).

A prompt is built once as a **model-agnostic conversation** — a list of :class:`Turn` (role + parts, a
part being text or a decoded image) — and then rendered by whoever runs the model:

* local scorers render it through the model's own chat template (:meth:`Conversation.messages` is the
  content format Hugging Face chat templates take; the images follow in order of appearance);
* a chat-completions backend sends the same turns as OpenAI messages (:meth:`Conversation.openai_messages`,
  images as ``image_url`` parts).

What lives here, once:

* :func:`fill` — ``{name}`` placeholders replaced by text or images without ``str.format`` (user text may
  hold braces);
* :func:`cut_words` — the word cut applied to passages and queries (RankGPT: 300 words);
* :func:`listwise_conversation` — the Rank-Nexus Table 8 / RankGPT multi-turn window prompt, with
  ``[n]``-like patterns in user text rewritten first (:func:`mmrank.ranking.permutation.escape_identifiers`);
* :func:`pairwise_conversation` — a one-pair yes/no relevance prompt (:class:`PairwisePrompt`; presets for
  Rank-Nexus and MonoQwen2-VL);
* :func:`answer_tokens` / :func:`first_token_plan` — the first-answer-token probe: how an answer begins
  in the tokenizer when written right after the assistant turn starts;
* :class:`VLMImageCheck` — the image check both VLM scorers share.

Text cleaning (defusing special-token strings such as ``<|im_end|>``) depends on the tokenizer, so the
builders take a ``clean`` function (identity by default; local scorers pass :meth:`InstructVLM.clean`).
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from PIL import Image

from ..errors import IdentifierTokenError, InputError
from ..inputs.documents import Document, Query
from ..inputs.images import DEFAULT_POLICY, ImagePolicy
from ..ranking.permutation import escape_identifiers, format_ranking, make_identifiers

__all__ = [
    "Part", "Turn", "Conversation", "fill", "cut_words", "image_data_url",
    "ListwisePrompt", "TEXT_PROMPT", "MULTIMODAL_PROMPT", "LISTWISE_PROMPTS", "listwise_conversation",
    "identifier_kind",
    "PairwisePrompt", "PAIRWISE_PROMPT", "MONOQWEN_PROMPT", "PAIRWISE_PROMPTS", "pairwise_conversation",
    "answer_tokens", "FirstTokenPlan", "first_token_plan", "VLMImageCheck",
]

Role = Literal["system", "user", "assistant"]
Part = str | Image.Image


# ====================================================================== conversation
@dataclass(frozen=True)
class Turn:
    """One message: a role and its parts (strings and decoded images, in order)."""

    role: Role
    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        """The text parts joined (images left out)."""
        return "".join(p for p in self.parts if isinstance(p, str))

    @property
    def images(self) -> list[Image.Image]:
        return [p for p in self.parts if isinstance(p, Image.Image)]


@dataclass
class Conversation:
    """A chat being built, independent of any model: a list of :class:`Turn`."""

    turns: list[Turn] = field(default_factory=list)

    def add(self, role: Role, *parts: Part) -> Conversation:
        """Append a turn made of text and image parts (adjacent texts merged, empty ones dropped)."""
        out: list[Part] = []
        for p in parts:
            if isinstance(p, Image.Image):
                out.append(p)
            elif p:
                if out and isinstance(out[-1], str):
                    out[-1] += p
                else:
                    out.append(str(p))
        self.turns.append(Turn(role, tuple(out)))
        return self

    @property
    def images(self) -> list[Image.Image]:
        """Every image, in order of appearance."""
        return [im for t in self.turns for im in t.images]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Messages in the format Hugging Face chat templates take: ``content`` is a plain string for a
        text-only turn (renders identically in text-only templates), else a list of ``{"type": "text",
        "text": ...}`` / ``{"type": "image"}`` items; the images themselves are :attr:`images`."""
        out: list[dict[str, Any]] = []
        for t in self.turns:
            if not t.images:
                out.append({"role": t.role, "content": t.text})
            else:
                out.append({"role": t.role, "content": [
                    {"type": "image"} if isinstance(p, Image.Image) else {"type": "text", "text": p}
                    for p in t.parts]})
        return out

    def openai_messages(self, image_url: Callable[[Image.Image], str] | None = None) -> list[dict[str, Any]]:
        """The same turns as OpenAI chat-completions messages. Text-only turns have string content; turns
        with images a list of ``text`` / ``image_url`` parts (``image_url(img)`` gives the URL; default a
        PNG ``data:`` URL). Assistant turns are always plain strings."""
        to_url = image_url or image_data_url
        out: list[dict[str, Any]] = []
        for t in self.turns:
            if not t.images or t.role == "assistant":
                out.append({"role": t.role, "content": t.text})
            else:
                out.append({"role": t.role, "content": [
                    {"type": "image_url", "image_url": {"url": to_url(p)}} if isinstance(p, Image.Image)
                    else {"type": "text", "text": p} for p in t.parts]})
        return out


def image_data_url(image: Image.Image, format: str = "PNG") -> str:
    """A ``data:`` URL of the image (PNG by default; RGB or L kept, other modes converted to RGB)."""
    if image.mode not in ("RGB", "L", "RGBA"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format=format)
    return f"data:image/{format.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def fill(template: str, **values: Any) -> list[Part]:
    """Substitute ``{name}`` placeholders by text or images, without ``str.format`` (user text may hold
    braces). A value may be a list of parts. Unknown placeholders stay as written. Returns the parts."""
    parts: list[Part] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(template):
        parts.append(template[pos:m.start()])
        v = values.get(m.group(1), m.group(0))
        parts.extend(v if isinstance(v, list) else [v])
        pos = m.end()
    parts.append(template[pos:])
    return [p if isinstance(p, Image.Image) else str(p) for p in parts]


def placeholders(template: str) -> set[str]:
    """The ``{name}`` placeholders a template uses."""
    return set(_PLACEHOLDER.findall(template))


def cut_words(text: str, limit: int | None) -> str:
    """``text`` cut to its first ``limit`` whitespace-separated words (``None``: whole)."""
    if limit is not None:
        words = text.split()
        if len(words) > limit:
            return " ".join(words[:limit])
    return text


def _identity(text: str) -> str:
    return text


def _query_parts(query: Query, text: str, policy: ImagePolicy) -> list[Part]:
    """The query as parts: its image (if any), a newline, then its text (if any)."""
    parts: list[Part] = []
    if query.has_image:
        parts.append(query.load_image(policy))
        if text:
            parts.append("\n")
    if text:
        parts.append(text)
    return parts


def _join_lines(lines: Sequence[list[Part]], sep: str = "\n") -> list[Part]:
    parts: list[Part] = []
    for k, line in enumerate(lines):
        if k and sep:
            parts.append(sep)
        parts.extend(line)
    return parts


# ====================================================================== listwise
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

LISTWISE_PROMPTS = {"text": TEXT_PROMPT, "multimodal": MULTIMODAL_PROMPT}


def identifier_kind(identifiers: str | Sequence[str]) -> str:
    """How the intro names the identifiers: "number identifier", "letter identifier" or "identifier"."""
    if identifiers == "numbers":
        return "number identifier"
    if identifiers == "letters":
        return "letter identifier"
    return "identifier"


def listwise_template(prompt: str | ListwisePrompt, query: Query, documents: Sequence[Document]) -> ListwisePrompt:
    """The template a prompt choice means for this window (``"auto"``: multimodal when any image)."""
    if isinstance(prompt, ListwisePrompt):
        return prompt
    if prompt == "auto":
        multimodal = query.has_image or any(d.has_image for d in documents)
        return MULTIMODAL_PROMPT if multimodal else TEXT_PROMPT
    try:
        return LISTWISE_PROMPTS[prompt]
    except KeyError:
        raise InputError(f"prompt must be 'auto', 'text', 'multimodal' or a ListwisePrompt, got {prompt!r}") from None


def listwise_conversation(query: Query, documents: Sequence[Document], template: ListwisePrompt,
                          identifiers: str | Sequence[str] = "numbers", *, max_words: int | None = 300,
                          clean: Callable[[str], str] = _identity,
                          image_policy: ImagePolicy = DEFAULT_POLICY) -> tuple[Conversation, list[str]]:
    """The RankGPT / Rank-Nexus conversation for one window (documents in their current order) and the
    identifiers it uses. User text is cut to ``max_words`` words, ``[n]`` patterns are rewritten, then
    ``clean`` is applied."""
    n = len(documents)
    if n == 0:
        raise InputError("a listwise window needs at least one document")
    ids = make_identifiers(identifiers, n)

    def text_of(t: str) -> str:
        # Whitespace is collapsed always (as RankGPT does: " ".join(content.split()[:max_length])), not only
        # when the passage is cut: a passage reads the same whether or not it reached max_words.
        return clean(escape_identifiers(cut_words(" ".join(t.split()), max_words)))

    qtext = text_of(query.text) if query.has_text else ""
    q_intro = _query_parts(query, qtext, image_policy)
    example = format_ranking(ids[:2]) if n >= 2 else f"[{ids[0]}]"
    conv = Conversation()
    conv.add("system", *fill(template.system))
    conv.add("user", *fill(template.intro, num=n, query=q_intro, kind=identifier_kind(identifiers)))
    conv.add("assistant", *fill(template.intro_ack))
    for x, d in zip(ids, documents, strict=True):
        lines: list[list[Part]] = []
        if d.has_text:
            lines.append(fill(template.text_line, text=text_of(d.text or "")))
        if d.has_image:
            lines.append(fill(template.image_line, image=d.load_image(image_policy)))
        conv.add("user", *fill(template.passage_prefix, id=x), *_join_lines(lines))
        conv.add("assistant", *fill(template.passage_ack, id=x))
    conv.add("user", *fill(template.final, query=qtext or template.image_query_ref, num=n, example=example))
    return conv, ids


# ====================================================================== pairwise
@dataclass(frozen=True)
class PairwisePrompt:
    """A one-pair relevance template: an optional system turn and one user turn.

    The user turn is ``segments`` joined by ``joiner``; each segment may use ``{query}``, ``{text}`` (the
    document text) and ``{image}`` (the document image); a segment whose document part is missing is left
    out. ``answer_words`` is the (positive, negative) answer the prompt asks for."""

    system: str | None
    segments: tuple[str, ...]
    answer_words: tuple[str, str] = ("Yes", "No")
    joiner: str = "\n"
    name: str = "custom"

    def shows(self, part: str) -> bool:
        """Whether some segment shows this document part (``"text"`` or ``"image"``)."""
        return any(part in placeholders(s) for s in self.segments)

    def cannot_show(self, document: Document) -> str | None:
        """Why this template cannot show anything of ``document`` (e.g. a text-only document under an
        image-only template), or ``None``."""
        parts = _parts_of(document)
        if any(self.shows(part) for part in parts):
            return None
        what = "text" if "text" in parts else "image"
        return f"the pairwise prompt {self.name!r} has no place for a document's {what}, and this document has only {what}"


def _parts_of(document: Document) -> set[str]:
    """The parts a document shows: its text (also an empty text, ``Document(text="")``, which is a text document
    scored like the reference scores it) and its image."""
    parts = {"text"} if document.has_text or document.modality == "text" else set()
    if document.has_image:
        parts.add("image")
    return parts


#: Rank-Nexus, Table 8, "Image-based Pairwise Reranking".
PAIRWISE_PROMPT = PairwisePrompt(
    name="rank-nexus",
    system="You are an expert relevance assessor for multimodal documents. Determine whether the given document "
           "is relevant to the user query.",
    segments=("Query: {query}", "Document Text: {text}", "Document Image: {image}",
              "Is this document relevant to the query? Answer only 'Yes' or 'No'."),
    answer_words=("Yes", "No"),
)

#: lightonai/MonoQwen2-VL-v0.1: one user turn (no system turn of its own), the page image first, then the
#: instruction with the query inside it; answers True/False. Image documents only (text is not shown).
MONOQWEN_PROMPT = PairwisePrompt(
    name="monoqwen",
    system=None,
    segments=("{image}", "Assert the relevance of the previous image document to the following query, answer "
              "True or False. The query is: {query}"),
    answer_words=("True", "False"),
    joiner="",
)

PAIRWISE_PROMPTS = {"rank-nexus": PAIRWISE_PROMPT, "monoqwen": MONOQWEN_PROMPT}


def pairwise_conversation(query: Query, document: Document, template: PairwisePrompt = PAIRWISE_PROMPT, *,
                          max_doc_words: int | None = 1024, max_query_words: int | None = 256,
                          clean: Callable[[str], str] = _identity,
                          image_policy: ImagePolicy = DEFAULT_POLICY) -> Conversation:
    """The chat for one (query, document) pair. Raises :class:`InputError` when the document has no part
    the template shows (e.g. a text-only document under an image-only template)."""
    gap = template.cannot_show(document)
    if gap:
        raise InputError(gap)
    qtext = clean(cut_words(query.text or "", max_query_words)) if query.has_text else ""
    values: dict[str, Any] = {"query": _query_parts(query, qtext, image_policy)}
    parts = _parts_of(document)
    if "text" in parts:
        values["text"] = clean(cut_words(document.text or "", max_doc_words))
    if "image" in parts:
        values["image"] = document.load_image(image_policy)
    lines = [fill(s, **values) for s in template.segments if placeholders(s) <= set(values) | {"query"}]
    conv = Conversation()
    if template.system:
        conv.add("system", *fill(template.system))
    return conv.add("user", *_join_lines(lines, template.joiner))


def yes_probability(logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """``softmax([logit_yes, logit_no])[0]`` per row of ``(batch, vocab)`` logits."""
    pair = torch.stack([logits[:, yes_id], logits[:, no_id]], dim=-1).float()
    return torch.softmax(pair, dim=-1)[:, 0]


# ====================================================================== first-answer-token probe
#: What precedes the answer in Qwen-VL chat templates; tokenizing the answer after it gives the tokens
#: the model would actually emit (a word at the start of a turn may tokenize differently than alone).
ANSWER_PREFIX = "assistant\n"


def answer_tokens(token_ids: Callable[[str], list[int]], text: str, prefix: str = ANSWER_PREFIX) -> list[int] | None:
    """The tokens of ``text`` written at the start of the assistant's answer (``token_ids`` tokenizes
    without special tokens); ``None`` when the prefix's tokens do not stay intact."""
    base = token_ids(prefix)
    full = token_ids(prefix + text)
    return full[len(base):] if full[:len(base)] == base else None


@dataclass(frozen=True)
class FirstTokenPlan:
    """How single-pass ranking reads a window's order from logits (see :func:`first_token_plan`).

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
        return [float(x) for x in self.score_tensor(logits)]

    def score_tensor(self, logits: torch.Tensor) -> torch.Tensor:
        """:meth:`scores` as a differentiable tensor: ``(..., keep, vocab)`` logits → ``(..., n)`` scores.
        Training (:mod:`mmrank.train`) reads the identifier scores of its loss through this, so they are the
        numbers single-pass inference ranks by."""
        ids = torch.tensor(self.token_ids, device=logits.device)
        if self.keep == 1:
            return logits[..., -1, :].index_select(-1, ids)
        # Mixed tokenization: compare log P(answer starts with "[x") under the canonical tokens of "[x".
        before = torch.log_softmax(logits[..., -2, :].float(), dim=-1)
        after = torch.log_softmax(logits[..., -1, :].float(), dim=-1)
        merged = torch.tensor([k == "merged" for k in self.kinds], device=logits.device)
        split = before[..., self.opener_ids[0]:self.opener_ids[0] + 1] + after.index_select(-1, ids)
        return torch.where(merged, before.index_select(-1, ids), split)


def first_token_plan(token_ids: Callable[[str], list[int]], tokens: Callable[[Sequence[int]], list[str]],
                     identifiers: Sequence[str], model_name: str, opener: str = "[") -> FirstTokenPlan:
    """Check that each identifier is one token after ``opener`` (in answer context) and say which.

    Raises :class:`IdentifierTokenError` naming the identifier and its tokens otherwise."""
    def tail(text: str) -> list[int]:
        t = answer_tokens(token_ids, text)
        if t is None:
            raise IdentifierTokenError(f"cannot isolate the tokens of {text!r} in {model_name}'s tokenizer")
        return t

    opener_ids = tail(opener)
    found: list[int] = []
    kinds: list[str] = []
    for x in identifiers:
        t = tail(opener + x)
        if len(t) == len(opener_ids) + 1 and t[:len(opener_ids)] == opener_ids:
            found.append(t[-1])
            kinds.append("split")
        elif len(t) == 1 and len(opener_ids) == 1:
            found.append(t[0])
            kinds.append("merged")
        else:
            shown = tokens(t[len(opener_ids):] if t[:len(opener_ids)] == opener_ids else t)
            fits = (f"window_size={len(found)} or less (identifiers {identifiers[0]!r}..{identifiers[len(found) - 1]!r} "
                    f"are single tokens)" if len(found) >= 2 else "a window_size whose identifiers are single tokens")
            raise IdentifierTokenError(
                f"single-pass listwise ranking needs every identifier to be exactly one token, but in the "
                f"tokenizer of {model_name} the identifier {x!r} (written {opener + x!r}) is "
                f"{len(shown)} tokens {shown}. Use identifiers='letters' (A..Z, one token each in Qwen "
                f"tokenizers; at most 26 per window), {fits}, or mode='generate'.")
    if len(set(found)) != len(found):
        raise IdentifierTokenError(f"identifiers {list(identifiers)} do not map to distinct tokens in "
                                   f"{model_name}'s tokenizer; choose other identifiers")
    return FirstTokenPlan(tuple(identifiers), tuple(opener_ids), tuple(found), tuple(kinds))


def answer_first_tokens(token_ids: Callable[[str], list[int]], tokens: Callable[[Sequence[int]], list[str]],
                        words: tuple[str, str], model_name: str) -> tuple[int, int, bool]:
    """First token of each answer word as the model would begin its reply, and whether both are single
    tokens. Raises :class:`IdentifierTokenError` when both begin with the same token."""
    yes, no = (answer_tokens(token_ids, w) or token_ids(w) for w in words)
    if yes[0] == no[0]:
        raise IdentifierTokenError(
            f"{words[0]!r} and {words[1]!r} begin with the same token {tokens(yes[:1])} in {model_name}'s "
            "tokenizer, so their logits cannot be compared; pass other answer_words")
    return yes[0], no[0], len(yes) == 1 and len(no) == 1


# ====================================================================== shared scorer piece
class VLMImageCheck:
    """Mixin for scorers holding an :class:`~mmrank.models.vlm.InstructVLM` as ``self.vlm``: refuse, at
    prepare time, an image whose size the image processor cannot take (:class:`InputError`)."""

    vlm: Any

    def _check_image(self, image: Image.Image) -> None:
        self.vlm.processor.resized_size(*image.size)
