"""Listwise and pairwise reranking over an OpenAI-compatible ``POST /v1/chat/completions`` endpoint.

:class:`ChatReranker` runs the **same prompts, windows, parsing and repair** as the local
:class:`~mmrank.ListwiseReranker` and :class:`~mmrank.PairwiseReranker`, with the model served elsewhere:
vLLM or SGLang (data/tensor parallel, continuous batching, a LoRA adapter served under its own name), a
hosted OpenAI-compatible API, or ``transformers serve``. It is also the teacher the training pipeline can
distil from (:meth:`ChatReranker.rank_many` ranks many lists concurrently).

Messages are built by :mod:`mmrank.scorers.prompts` — the code the local scorers use — and sent as OpenAI
messages: text turns as strings, turns with images as ``text`` / ``image_url`` parts. A local image (path,
bytes, PIL image, ``data:``/base64) is read under the :class:`~mmrank.ImagePolicy`, resized to the size the
model's image processor would give it (``smart_resize`` between ``min_pixels`` and ``max_pixels``, factor
``image_factor`` — 28 for Qwen2/2.5-VL, 32 for Qwen3-VL) and sent as a lossless PNG ``data:`` URI, so the
server sees the pixels a local scorer would. An ``http(s)`` image URL is fetched here under the policy and
sent the same way, unless ``allow_remote_urls=True``, which passes the URL to the server to fetch (the
policy's scheme and address rules still apply to it, checked from here).

Methods and modes
=================

=========  ==============  ==========================================================================
method     mode            what is asked and read
=========  ==============  ==========================================================================
listwise   ``generate``    RankGPT / Rank-Nexus: the model writes ``[2] > [1] > [3]`` (greedy,
                           ``temperature=0``); the answer is parsed and repaired exactly as the local
                           scorer does (:func:`mmrank.ranking.permutation.parse_permutation`). Works with
                           every OpenAI-compatible server (verified against ``transformers serve``).
listwise   ``single_pass`` FIRST: the window is ordered by the log-probabilities of the first identifier
                           after the opener ``[``. Needs ``logprobs``/``top_logprobs``. With
                           ``prefill="continue"`` the assistant turn is pre-filled with ``[`` and continued
                           (vLLM, SGLang: ``continue_final_message: true``, ``add_generation_prompt:
                           false``) and one token is read; with ``prefill="none"`` (OpenAI's API) the
                           model writes its answer and ``log P([) + log P(x | [)`` is read from its first
                           two tokens — the answer must begin with ``[``. ``"auto"`` tries ``continue``
                           and falls back to ``none`` when the server refuses the fields.
pairwise   —               Rank-Nexus yes/no: ``score = P(Yes) / (P(Yes) + P(No))`` from the first
                           answer token's ``top_logprobs``. Needs ``logprobs``.
=========  ==============  ==========================================================================

What is never done silently: a server that returns no ``logprobs`` (``transformers serve`` does not)
makes single-pass and pairwise fail at the first call with a :class:`~mmrank.errors.RemoteError` that
says so and names ``method="listwise", mode="generate"``, which works everywhere; an empty answer, a
response without ``choices`` or a body that is not JSON is a :class:`~mmrank.errors.RemoteError`. Two
documented departures from the local scorers, both counted in :attr:`ChatReranker.stats` and logged:

* a generated answer that is not a full permutation is repaired as the local scorer repairs it (missing
  identifiers appended in their current order); ``strict=True`` makes it an error instead;
* a server reports only the ``top_logprobs`` most likely tokens (at most 20 on vLLM and OpenAI), so an
  identifier outside them is ranked after those inside, in its current order; a yes/no answer word
  outside them is given an upper bound of its log-probability: the smaller of the smallest reported one
  and the log of the probability mass the reported tokens leave. When no identifier or neither answer
  word is reported (with a probability above 0), the call fails;
* an identifier or answer word whose own token is not reported is read from the reported tokens that
  differ from it only by surrounding whitespace or case (``" Yes"``, ``"yes"``; their probabilities
  added up; counted in ``stats["token_variants"]``).

What a server sends is checked, never guessed at: a log-probability that is not a number ``<= 0`` (NaN,
``Infinity``, a string), ``choices`` that is not a non-empty list of objects, a message that is not an
object or whose content is neither text nor a list of content parts (whose ``text`` parts are read), and an
error object sent with status 200 are each a :class:`~mmrank.errors.RemoteError` naming the server and the
field; an answer without text says what came instead (a refusal, a tool call, only reasoning,
``finish_reason``). A ranking cut at ``max_tokens`` (``finish_reason: "length"``) is repaired like any
partial ranking, and the log line says it was cut.

Scores are those of the local scorers: ``(n - rank) / n`` for listwise (ranks, not relevances) and
``P(yes)`` for pairwise. Windows of one query are sequential (each depends on the previous); requests of
different queries (:meth:`~ChatReranker.rank_many`, :meth:`~ChatReranker.arank_many`) and the documents
of a pairwise call run concurrently, at most ``max_concurrency`` requests in flight per scorer. Token
usage is added up in :attr:`~ChatReranker.usage` (all calls) and :attr:`~ChatReranker.last_usage`.

The HTTP layer is :class:`mmrank.scorers.http.HttpClient` (retries on 429/5xx honouring ``Retry-After``,
whole-attempt timeouts, an optional overall deadline, secrets redacted everywhere). The API key comes from
``api_key=``, else ``MMRANK_CHAT_API_KEY``; ``OPENAI_API_KEY`` is used only for ``api.openai.com`` (a key
meant for OpenAI is never sent to another host).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import io
import logging
import math
import os
import re
import threading
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import httpx
from PIL import Image

from ..errors import InputError, RemoteError
from ..inputs.documents import Document, Query
from ..inputs.images import DEFAULT_POLICY, ImagePolicy, check_url_host, resolve_source
from ..models.options import LISTWISE_MAX_PIXELS, MAX_PIXELS, MIN_PIXELS
from ..ranking.permutation import (
    default_step,
    format_ranking,
    make_identifiers,
    parse_permutation,
    parse_ranking,
    rank_scores,
    repair_permutation,
    rerank_with_windows,
    sliding_windows,
)
from .base import OnError, RankedDocument, Reranker, order_by_score
from .http import HttpClient, HttpOptions, redact_url, server_message
from .http_options import keyword_names
from .prompts import (
    LISTWISE_PROMPTS,
    PAIRWISE_PROMPT,
    PAIRWISE_PROMPTS,
    Conversation,
    ListwisePrompt,
    PairwisePrompt,
    listwise_conversation,
    listwise_template,
    pairwise_conversation,
)

logger = logging.getLogger("mmrank")

Method = Literal["listwise", "pairwise"]
Mode = Literal["generate", "single_pass"]


def _check_first_characters(ids: Sequence[str], window_size: int) -> None:
    """Single pass reads each identifier's probability from the first answer token, by its text; the engine's
    tokenizer is not known here, and tokenizers that split digits (every Qwen-VL) begin ``1`` and ``10`` with
    the same token — so identifiers must begin with distinct characters."""
    seen: dict[str, str] = {}
    for ident in ids:
        first = ident[:1].casefold()
        if first in seen:
            raise InputError(
                f"single pass reads the first token of each identifier, and {seen[first]!r} and {ident!r} begin "
                f"with the same character, so the engine's answer cannot tell them apart; with window_size="
                f"{window_size} use identifiers='letters' (the single-pass default, up to 26), or numbers with "
                "window_size <= 9")
        seen[first] = ident
Prefill = Literal["auto", "continue", "none"]
METHODS = ("listwise", "pairwise")
API_KEY_ENV = "MMRANK_CHAT_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000/v1"
#: vLLM's and OpenAI's cap on ``top_logprobs``.
MAX_TOP_LOGPROBS = 20

_SPECIAL = re.compile(r"<\|(?=[^<>|\s]{1,64}\|>)")


def defuse_special_tokens(text: str) -> str:
    """``<|im_end|>`` → ``< |im_end|>`` for every ``<|name|>`` string (the chat templates of Qwen and most
    ChatML models): user text must never close a turn or claim an image slot on the server. The local
    scorers do the same with the tokenizer's own list of special tokens."""
    return _SPECIAL.sub("< |", text)


def chat_endpoint(url: str) -> str:
    """``http://host:8000`` / ``.../v1`` → ``.../v1/chat/completions``; a full path is kept."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"the chat URL must be an http(s) URL with a host, got {redact_url(url)!r}")
    path = parts.path.rstrip("/")
    if path == "":
        path = "/v1/chat/completions"
    elif not path.endswith("/chat/completions"):
        path += "/chat/completions"
    return urllib.parse.urlunsplit(parts._replace(path=path))


@dataclass
class ChatUsage:
    """Token usage as the server reports it (``usage`` of each response), added up."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def add(self, other: ChatUsage | dict[str, Any] | None) -> None:
        if isinstance(other, ChatUsage):
            self.requests += other.requests
            self.prompt_tokens += other.prompt_tokens
            self.completion_tokens += other.completion_tokens
            self.total_tokens += other.total_tokens
            return
        self.requests += 1
        if isinstance(other, dict):
            for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
                v = other.get(k)
                if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                    setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens}


#: Where rank_many collects the usage of each of its queries (one sink per copied context).
_USAGE_SINK: contextvars.ContextVar[list[ChatUsage] | None] = contextvars.ContextVar("mmrank_chat_usage",
                                                                                      default=None)


def fit_size(width: int, height: int, factor: int = 28, min_pixels: int = MIN_PIXELS,
             max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` the Qwen-VL image processors resize an image to (their ``smart_resize`` rule: both
    sides multiples of ``factor``, the area within ``[min_pixels, max_pixels]``, the aspect ratio kept as
    well as possible). :class:`InputError` for an aspect ratio above 200, which they refuse."""
    if min(width, height) < 1 or max(width, height) / min(width, height) > 200:
        raise InputError(f"image of {width}x{height} cannot be processed: its aspect ratio must be below 200")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return w, h


@dataclass(frozen=True)
class ChatImageOptions:
    """How :class:`ChatReranker` sends an image: resized to the size the model's image processor would give
    it (the Qwen-VL ``smart_resize`` rule, :func:`fit_size`), or, for an ``http(s)`` URL, passed through when
    ``allow_remote_urls``. :class:`ChatReranker` takes it as ``images=`` and accepts each field as a keyword
    too (``max_pixels=...``), which replaces that field.

    Args:
        min_pixels: smallest image area the model's processor allows (default 56², the Qwen-VL processors').
        max_pixels: largest image area; ``None``: the local scorer's default for the method (``256·28·28``
            listwise, ``768·28·28`` pairwise).
        image_factor: the processor's size multiple (28 for Qwen2/2.5-VL, 32 for Qwen3-VL).
        allow_remote_urls: pass ``http(s)`` image URLs to the server to fetch instead of fetching them here
            (the image policy's scheme and address rules still apply, checked from here).
    """

    min_pixels: int = MIN_PIXELS
    max_pixels: int | None = None
    image_factor: int = 28
    allow_remote_urls: bool = False

    def __post_init__(self) -> None:
        for name in ("min_pixels", "max_pixels", "image_factor"):
            v = getattr(self, name)
            if not (v is None and name == "max_pixels") and (not _is_int(v) or v < 1):
                raise InputError(f"{name} must be an integer >= 1, got {v!r}")
        if self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise InputError(f"min_pixels ({self.min_pixels}) must not exceed max_pixels ({self.max_pixels})")
        if not isinstance(self.allow_remote_urls, bool):
            raise InputError(f"allow_remote_urls must be True or False, got {self.allow_remote_urls!r}")

    def pixel_budget(self, method: str) -> tuple[int, int]:
        """``(min_pixels, max_pixels)`` for ``method`` (``max_pixels=None`` resolved); an
        :class:`~mmrank.errors.InputError` when ``min_pixels`` exceeds the method's default ``max_pixels``.

        Args:
            method: ``"listwise"`` or ``"pairwise"``.
        """
        high = self.max_pixels
        if high is None:
            high = LISTWISE_MAX_PIXELS if method == "listwise" else MAX_PIXELS
            if self.min_pixels > high:
                raise InputError(f"min_pixels ({self.min_pixels}) exceeds the {method} default max_pixels ({high}); "
                                 "pass max_pixels too")
        return self.min_pixels, high


_IMAGE_FIELDS = frozenset(f.name for f in fields(ChatImageOptions))


def _check_modes(method: str, mode: str, prefill: str, prompt: str | ListwisePrompt) -> None:
    """Reject an unknown method, mode, prefill or listwise prompt name, and a mode with pairwise."""
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if mode not in ("generate", "single_pass"):
        raise InputError(f"mode must be 'generate' or 'single_pass', got {mode!r}")
    if method == "pairwise" and mode != "generate":
        raise InputError("mode applies to method='listwise' only; pairwise always reads P(yes) from logprobs")
    if prefill not in ("auto", "continue", "none"):
        raise InputError(f"prefill must be 'auto', 'continue' or 'none', got {prefill!r}")
    if isinstance(prompt, str) and prompt not in ("auto", *LISTWISE_PROMPTS):
        raise InputError(f"prompt must be 'auto', 'text', 'multimodal' or a ListwisePrompt, got {prompt!r}")


def _merge_images(images: ChatImageOptions | None, overrides: dict[str, Any]) -> ChatImageOptions:
    """``images`` (or the defaults) with the image keywords a caller passed directly replacing its fields."""
    if images is not None and not isinstance(images, ChatImageOptions):
        raise InputError(f"images must be a ChatImageOptions, got {type(images).__name__}")
    return replace(images or ChatImageOptions(), **overrides)


def _pairwise_prompt(prompt: str | PairwisePrompt) -> PairwisePrompt:
    """The :class:`PairwisePrompt` a name stands for (a prompt object is kept as given)."""
    if not isinstance(prompt, str):
        return prompt
    if prompt not in PAIRWISE_PROMPTS:
        raise InputError(f"pairwise_prompt must be one of {sorted(PAIRWISE_PROMPTS)} or a PairwisePrompt, "
                         f"got {prompt!r}")
    return PAIRWISE_PROMPTS[prompt]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_counts(*, max_new_tokens: int | None, max_passage_words: int | None, max_doc_words: int | None,
                  max_query_words: int | None, top_logprobs: int) -> None:
    """Reject a length limit that is not a positive integer or ``None`` and ``top_logprobs`` outside 1..20
    (booleans are not integers here)."""
    for name, v in (("max_new_tokens", max_new_tokens), ("max_passage_words", max_passage_words),
                    ("max_doc_words", max_doc_words), ("max_query_words", max_query_words)):
        if v is not None and (not _is_int(v) or v < 1):
            raise InputError(f"{name} must be an integer >= 1 or None, got {v!r}")
    if not _is_int(top_logprobs) or not 1 <= top_logprobs <= 20:
        raise InputError(f"top_logprobs must be an integer in 1..20, got {top_logprobs!r}")


def _api_key(api_key: str | None, url: str) -> str | None:
    """The key to send: ``api_key``, else ``MMRANK_CHAT_API_KEY``, else ``OPENAI_API_KEY`` for api.openai.com
    only (never sent to another host)."""
    if api_key is not None:
        return api_key
    key = os.environ.get(API_KEY_ENV) or None
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if key is None and host == "api.openai.com":
        key = os.environ.get("OPENAI_API_KEY") or None
    return key


class ChatReranker(Reranker):
    """Listwise or pairwise reranking with a VLM served behind ``POST /v1/chat/completions``.

    Args:
        url: the server's base URL (``http://host:8000`` or ``http://host:8000/v1``) or the full endpoint.
        model: the served model name — a LoRA adapter served by name works (vLLM ``--lora-modules
            NAME=PATH``). ``None``: the first model ``GET /v1/models`` lists.
        method: ``"listwise"`` or ``"pairwise"`` (see the module docstring).
        mode: listwise only — ``"generate"`` or ``"single_pass"``.
        window_size: candidates per listwise window (RankGPT default 20), as for the local scorer.
        step: how far the window moves towards the front (default: half the window, 10 for 20).
        identifiers: ``"auto"`` (numbers for generate, letters for single pass), ``"numbers"``,
            ``"letters"`` or a list of strings. Single pass needs identifiers that begin with distinct
            characters (the engine's tokenizer is unknown here): numbers allow windows of at most 9.
        prompt: ``"auto"``, ``"text"``, ``"multimodal"`` or a :class:`ListwisePrompt`.
        max_passage_words: listwise passages are cut to this many words (``None``: whole).
        max_new_tokens: generation budget per window (default: the length of a full ranking in characters
            + 8, an upper bound of its tokens).
        pairwise_prompt: ``"rank-nexus"``, ``"monoqwen"`` or a :class:`PairwisePrompt`.
        max_doc_words: pairwise document text is cut to this many words (``None``: whole).
        max_query_words: pairwise query text is cut to this many words (``None``: whole).
        images: :class:`ChatImageOptions` — the pixel budget and size multiple images are resized to (the
            model's image processor's), and whether ``http(s)`` image URLs are passed to the server.
        prefill: single-pass only — ``"auto"``, ``"continue"`` or ``"none"`` (module docstring).
        top_logprobs: how many alternatives to ask for (1..20).
        strict: a generated ranking that is not a full permutation is an error instead of being repaired.
        extra_body: fields added to every request (e.g. ``{"chat_template_kwargs": {"enable_thinking":
            False}}`` for Qwen3, ``{"mm_processor_kwargs": {...}}``, ``{"seed": 0}``).
        http: :class:`~mmrank.HttpOptions` — timeout, deadline, retries and backoff, ``max_concurrency``
            (requests in flight at once per scorer, sync and async), API key (default ``MMRANK_CHAT_API_KEY``;
            ``OPENAI_API_KEY`` for api.openai.com only; never logged, never in an error or ``repr``), headers,
            TLS, transports.
        clean: how user text is made safe for the chat template (default :func:`defuse_special_tokens`).
        on_error: ``"last"`` (unreadable documents ranked last with an error) or ``"raise"``.
        image_policy: how local images and URLs are read (:class:`~mmrank.ImagePolicy`).
        show_progress: accepted for symmetry with the local scorers (requests are not shown).
        image_workers: threads that read images before the requests.
        **options: any field of :class:`ChatImageOptions` or :class:`~mmrank.HttpOptions` as a keyword
            (``max_pixels=...``, ``image_factor=32``, ``api_key="..."``, ``timeout=30``, ``max_concurrency=32``,
            ``headers={...}``, …); it replaces that field of ``images`` / ``http``.
    """

    supports_image_query = True
    supports_image_documents = True

    def __init__(self, url: str = DEFAULT_URL, model: str | None = None, *, method: Method = "listwise",
                 mode: Mode = "generate", window_size: int = 20, step: int | None = None,
                 identifiers: str | Sequence[str] = "auto", prompt: str | ListwisePrompt = "auto",
                 max_passage_words: int | None = 300, max_new_tokens: int | None = None,
                 pairwise_prompt: str | PairwisePrompt = PAIRWISE_PROMPT, max_doc_words: int | None = 1024,
                 max_query_words: int | None = 256, images: ChatImageOptions | None = None,
                 prefill: Prefill = "auto", top_logprobs: int = MAX_TOP_LOGPROBS, strict: bool = False,
                 extra_body: dict[str, Any] | None = None, http: HttpOptions | None = None,
                 clean: Callable[[str], str] | None = None, on_error: OnError = "last",
                 image_policy: ImagePolicy = DEFAULT_POLICY, show_progress: bool = False, image_workers: int = 4,
                 **options: Any):
        super().__init__(on_error=on_error, image_policy=image_policy, show_progress=show_progress,
                         image_workers=image_workers)
        images = _merge_images(images, {k: options.pop(k) for k in list(options) if k in _IMAGE_FIELDS})
        http = HttpOptions.merge(http, also=(*keyword_names(ChatReranker.__init__), *_IMAGE_FIELDS), **options)
        _check_modes(method, mode, prefill, prompt)
        pairwise_prompt = _pairwise_prompt(pairwise_prompt)
        _check_counts(max_new_tokens=max_new_tokens, max_passage_words=max_passage_words,
                      max_doc_words=max_doc_words, max_query_words=max_query_words, top_logprobs=top_logprobs)
        min_pixels, max_pixels = images.pixel_budget(method)
        step = default_step(window_size, step)
        sliding_windows(0, window_size, step)  # validates window_size and step
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise InputError(f"model must be a non-empty string (the served model name), got {model!r}")
        if extra_body is not None and not isinstance(extra_body, dict):
            raise InputError("extra_body must be a dict of request fields")

        self.method: Method = method
        self.mode: Mode = mode
        self.url = chat_endpoint(url)
        self.model = model
        if identifiers == "auto":
            identifiers = "letters" if mode == "single_pass" else "numbers"
        self.identifiers = list(identifiers) if not isinstance(identifiers, str) else identifiers
        self.identifier_list = make_identifiers(self.identifiers, window_size)  # validates the count
        if method == "listwise" and mode == "single_pass":
            _check_first_characters(self.identifier_list, window_size)
        self.window_size = window_size
        self.step = step
        self.prompt = prompt
        self.max_passage_words = max_passage_words
        self.max_new_tokens = max_new_tokens
        self.pairwise_prompt: PairwisePrompt = pairwise_prompt
        self.answer_words = tuple(pairwise_prompt.answer_words)
        self.max_doc_words = max_doc_words
        self.max_query_words = max_query_words
        self.images = images
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.image_factor = images.image_factor
        self.allow_remote_urls = images.allow_remote_urls
        self.prefill: Prefill = prefill
        self.top_logprobs = top_logprobs
        self.strict = bool(strict)
        self.extra_body = dict(extra_body or {})
        self.clean = clean or defuse_special_tokens
        #: the HTTP options as given (``api_key`` as passed: a key read from the environment is not kept here)
        self.http = http
        self.max_concurrency = http.max_concurrency

        # api_key, else the environment's key; an Authorization header of the caller's wins over the environment
        key = http.api_key if http.has_authorization else _api_key(http.api_key, self.url)
        self.__api_key = key
        hint_key = f" — check the API key (api_key= or {API_KEY_ENV})"
        self._http = HttpClient(
            replace(http, api_key=key), what="the chat server", user_agent="mmrank-chat/0.1",
            hints={401: hint_key, 403: hint_key,
                   404: " — check the URL and the model name (a LoRA adapter is served under its own name)"})
        self.model_name = model or f"chat:{redact_url(self.url)}"
        self._wire: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._gate = threading.BoundedSemaphore(self.max_concurrency)
        self._agates: dict[int, tuple[Any, asyncio.Semaphore]] = {}
        #: token usage of every call so far, and of the last ``rank`` / ``rank_many`` call
        self.usage = ChatUsage()
        self.last_usage: ChatUsage | None = None
        #: what needed a documented fallback so far (module docstring): windows repaired, identifiers or
        #: answer words outside the reported top_logprobs
        self.stats = {"windows": 0, "repaired_windows": 0, "identifiers_not_reported": 0, "answer_word_bounded": 0,
                      "token_variants": 0}
        #: raw answers of the last call (generate mode), for inspection (secrets the server echoes masked)
        self.last_responses: list[str] = []
        # HTTP calls need no model lock: concurrent callers each run their own requests.
        self._model_lock = contextlib.nullcontext()  # type: ignore[assignment]

    # ------------------------------------------------------------------ niceties
    @property
    def has_api_key(self) -> bool:
        """Whether an API key is sent (the key itself is never shown)."""
        return bool(self.__api_key)

    def __repr__(self) -> str:
        return (f"ChatReranker(url={redact_url(self.url)!r}, model={self.model!r}, method={self.method!r}, "
                f"mode={self.mode!r}, api_key={'<set>' if self.__api_key else None})")

    __str__ = __repr__

    def close(self) -> None:
        """Close the HTTP connections (async clients are closed by :meth:`aclose` on their loop)."""
        self._http.close()

    async def aclose(self) -> None:
        """Close this event loop's HTTP client, then the rest (:meth:`close`)."""
        await self._http.aclose()

    # ------------------------------------------------------------------ images
    def _read_image(self, item: Document | Query) -> None:
        self._image_url(item)

    def _image_url(self, item: Document | Query) -> str:
        """The ``image_url`` of an item's image: its URL (``allow_remote_urls``) or a PNG ``data:`` URI of the
        decoded image resized to the model's budget. Computed once per item."""
        got = self._wire.get(item)
        if got is not None:
            return got
        url = None
        if (self.allow_remote_urls and isinstance(item.image, str)
                and item.image.strip().lower().startswith(("http://", "https://"))):
            url = resolve_source(item.image, self.image_policy).url  # the policy's scheme rules apply
            if url is not None:
                # ... and its address rules: a policy that refuses private addresses does not let the engine
                # fetch them either (checked from here; the engine may sit on another network).
                check_url_host(url, self.image_policy)
        if url is None:
            img = item.load_image(self.image_policy)
            w, h = fit_size(img.width, img.height, self.image_factor, self.min_pixels, self.max_pixels)
            if (w, h) != img.size:
                img = img.resize((w, h), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        self._wire[item] = url
        return url

    def _stand_ins(self, query: Query, docs: Sequence[Document]) -> tuple[Query, list[Document], dict[int, str]]:
        """Copies whose images are 1×1 placeholders mapped to the real ``image_url`` — the prompt code places
        images without looking at them, and nothing is decoded or fetched twice."""
        urls: dict[int, str] = {}

        def swap(item: Any, make: Callable[..., Any]) -> Any:
            if not item.has_image:
                return item
            clone = make(Image.new("RGB", (1, 1)))
            # the clone caches its decoded placeholder, so the prompt code gets this very object back
            urls[id(clone.load_image(self.image_policy))] = self._image_url(item)
            return clone

        q = swap(query, lambda im: Query(text=query.text, image=im))
        ds = [swap(d, lambda im, d=d: Document(text=d.text, image=im, id=d.id)) for d in docs]
        return q, ds, urls

    # ------------------------------------------------------------------ prompts (the local scorers' code)
    def window_conversation(self, query: Query | Any, documents: Sequence[Document | Any],
                            template: ListwisePrompt | None = None) -> tuple[Conversation, list[str]]:
        """The listwise conversation for one window — built exactly as the local scorer builds it.

        Args:
            query: the query (anything :meth:`mmrank.Query.coerce` takes).
            documents: the window's documents in their current order.
            template: the prompt template (default: the one ``prompt`` picks for these inputs).
        """
        query = Query.coerce(query)
        documents = [Document.coerce(d) for d in documents]
        return listwise_conversation(query, documents, template or listwise_template(self.prompt, query, documents),
                                     self.identifiers, max_words=self.max_passage_words, clean=self.clean,
                                     image_policy=self.image_policy)

    def pair_conversation(self, query: Query | Any, document: Document | Any) -> Conversation:
        """The pairwise conversation for one (query, document) pair — the local scorer's.

        Args:
            query: the query.
            document: the document.
        """
        return pairwise_conversation(Query.coerce(query), Document.coerce(document), self.pairwise_prompt,
                                     max_doc_words=self.max_doc_words, max_query_words=self.max_query_words,
                                     clean=self.clean, image_policy=self.image_policy)

    def window_messages(self, query: Query | Any, documents: Sequence[Document | Any],
                        template: ListwisePrompt | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """The OpenAI messages for one listwise window, as sent, and the window's identifiers.

        Args:
            query: the query.
            documents: the window's documents in their current order.
            template: the prompt template (default: the one ``prompt`` picks for these inputs).
        """
        query = Query.coerce(query)
        documents = [Document.coerce(d) for d in documents]
        tp = template or listwise_template(self.prompt, query, documents)
        q, ds, urls = self._stand_ins(query, documents)
        conv, ids = self.window_conversation(q, ds, tp)
        return conv.openai_messages(image_url=lambda im: urls[id(im)]), ids

    def pair_messages(self, query: Query | Any, document: Document | Any) -> list[dict[str, Any]]:
        """The OpenAI messages for one pairwise pair, as sent.

        Args:
            query: the query.
            document: the document.
        """
        query, document = Query.coerce(query), Document.coerce(document)
        q, (d,), urls = self._stand_ins(query, [document])
        return self.pair_conversation(q, d).openai_messages(image_url=lambda im: urls[id(im)])

    # ------------------------------------------------------------------ requests
    def _body(self, messages: list[dict[str, Any]], max_tokens: int, *, logprobs: bool = False,
              prefill: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.model is not None:
            body["model"] = self.model
        if prefill is not None:
            messages = [*messages, {"role": "assistant", "content": prefill}]
        body["messages"] = messages
        body["max_tokens"] = max_tokens
        body["temperature"] = 0.0
        if logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        if prefill is not None:
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        for k, v in self.extra_body.items():
            body.setdefault(k, v)
        return body

    def _choice(self, resp: httpx.Response, usage: ChatUsage) -> tuple[str | None, list[Any] | None, str]:
        """The first choice's message text and logprobs content of a chat-completions answer, and a note for
        messages: what came instead of a missing or empty text (``None``), or that the answer was cut."""
        url = redact_url(self.url)
        body = self._http.decode(self.url, resp)

        def bad(what: str) -> RemoteError:
            return self._http.fail(f"{url} answered {what}", status_code=resp.status_code, body=resp.text)

        if not isinstance(body, dict):
            raise bad(f"with a JSON {type(body).__name__}, not a chat completion")
        reported = body.get("usage") if isinstance(body.get("usage"), dict) else None
        with self._lock:
            usage.add(reported)
            self.usage.add(reported)
        choices = body.get("choices")
        if choices is None and isinstance(body.get("error"), (dict, str)):  # an error sent with status 200
            raise self._http.fail(f"{url} answered HTTP {resp.status_code} with an error: "
                                  f"{server_message(resp, self._http.redact)}", status_code=resp.status_code,
                                  body=resp.text)
        if not isinstance(choices, list):
            raise bad(f"without 'choices', a list of answers (keys: {self._http.clip(sorted(body)[:10], 300)}); is this a "
                      "chat-completions endpoint?")
        if not choices:
            raise bad("with an empty 'choices' list: no answer")
        choice = choices[0]
        if not isinstance(choice, dict):
            raise bad(f"with choices[0] a {type(choice).__name__}, not an object")
        message = choice.get("message")
        if message is None:
            message = {}
        if not isinstance(message, dict):
            raise bad(f"with choices[0].message a {type(message).__name__}, not an object")
        content = _message_text(message.get("content"))
        if content is _NOT_TEXT:
            raise bad(f"with a message content that is not text ({type(message.get('content')).__name__} "
                      f"{self._http.clip(repr(message.get('content')), 100)})")
        lp = choice.get("logprobs")
        lp_content = lp.get("content") if isinstance(lp, dict) else None
        if not isinstance(lp_content, list) or not lp_content:
            lp_content = None
        elif any(not isinstance(e, dict) for e in lp_content):
            raise self._http.fail(f"{url} answered with malformed logprobs: an entry of choices[0].logprobs.content "
                                  f"is not an object ({self._http.clip(repr(lp_content[:3]), 200)})",
                                  status_code=resp.status_code, body=resp.text)
        if content is None or not content.strip():
            return None, lp_content, _why_empty(message, choice, self._http.clip)
        cut = " (the answer was cut at max_tokens: finish_reason='length')" if choice.get("finish_reason") == \
            "length" else ""
        return content, lp_content, cut

    def _no_logprobs(self) -> RemoteError:
        what = "single-pass listwise ranking" if self.method == "listwise" else "pairwise yes/no scoring"
        return self._http.fail(
            f"{redact_url(self.url)} (model {self.model!r}) returned no logprobs, which {what} needs — this "
            f"server cannot score that way (vLLM, SGLang and OpenAI return logprobs; transformers serve does "
            f"not). Use method='listwise', mode='generate', which needs only the generated text.")

    def _send(self, body: dict[str, Any]) -> httpx.Response:
        with self._gate:
            return self._http.send("POST", self.url, body)

    async def _asend(self, body: dict[str, Any]) -> httpx.Response:
        async with self._agate():
            return await self._http.asend("POST", self.url, body)

    def _agate(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._agates.get(id(loop))
            if entry is None or entry[0]() is not loop:
                entry = (weakref.ref(loop), asyncio.Semaphore(self.max_concurrency))
                self._agates[id(loop)] = entry
            return entry[1]

    # The request/answer logic of each step is written once as a generator: it yields a request body and
    # receives the HTTP response, so the sync and the async paths share every rule.
    def _window_steps(self, query: Query, docs: list[Document], template: ListwisePrompt, usage: ChatUsage):
        messages, ids = self.window_messages(query, docs, template)
        if self.mode == "generate":
            budget = self.max_new_tokens or len(format_ranking(ids)) + 8
            resp = yield self._body(messages, budget)
            text, _, note = self._choice(resp, usage)
            return self._read_ranking(text, ids, note)
        prefill = self._prefill_now()
        if prefill == "continue":
            try:
                resp = yield self._body(messages, 1, logprobs=True, prefill="[")
            except RemoteError as exc:
                if self.prefill == "auto" and _refuses_prefill(exc):
                    logger.info("mmrank chat: %s does not continue a pre-filled assistant turn (%s); reading the "
                                "identifier after the model's own '[' instead", redact_url(self.url), exc)
                    with self._lock:
                        self._prefill_found = "none"
                    return (yield from self._window_steps(query, docs, template, usage))
                raise
            _, lp, _ = self._choice(resp, usage)
            if lp is None:
                raise self._no_logprobs()
            scores = self._identifier_scores(ids, self._tops(lp[0]), None)
        else:
            resp = yield self._body(messages, 2, logprobs=True)
            _, lp, _ = self._choice(resp, usage)
            if lp is None:
                raise self._no_logprobs()
            scores = self._identifier_scores(ids, self._tops(lp[1]) if len(lp) > 1 else {}, lp[0])
        return sorted(range(len(docs)), key=lambda i: (-scores[i], i))

    _prefill_found: str | None = None

    def _prefill_now(self) -> str:
        if self.prefill != "auto":
            return self.prefill
        return self._prefill_found or "continue"

    def _tops(self, entry: Any) -> dict[str, float]:
        """:func:`_tops`, a malformed entry being a :class:`RemoteError` that names the server."""
        try:
            return _tops(entry)
        except _BadLogprob as exc:
            raise self._http.fail(f"{redact_url(self.url)} answered with malformed logprobs: {exc}") from None

    def _lookup(self, tops: dict[str, float], word: str) -> float | None:
        """The log-probability of ``word`` among the reported tokens: its own token, else the tokens that differ
        from it only by surrounding whitespace or case (added up; counted in ``stats["token_variants"]``), else
        ``None``."""
        if word in tops:
            return tops[word]
        key = word.strip().casefold()
        variants = [lp for t, lp in tops.items() if t.strip().casefold() == key]
        if not variants:
            return None
        with self._lock:
            self.stats["token_variants"] += 1
        return _logsumexp(variants)

    def _identifier_scores(self, ids: list[str], after_opener: dict[str, float], first: Any) -> list[float]:
        """Per identifier: ``log P(x | [)`` (pre-filled) or ``log P([) + log P(x | [)`` / ``log P([x)``
        read from the model's own first tokens; ``-inf`` for an identifier the server did not report."""
        scores = [-math.inf] * len(ids)
        opener_lp = None
        merged: dict[str, float] = {}
        if first is not None:
            token = first.get("token") if isinstance(first, dict) else None
            merged = self._tops(first)
            if isinstance(token, str) and token.strip() == "[":
                opener_lp = merged.get(token)
            if opener_lp is None and not any(self._lookup(merged, "[" + x) is not None for x in ids):
                raise self._http.fail(
                    f"{redact_url(self.url)}: the model's answer began with {self._http.clip(repr(token), 60)}, not "
                    f"with the identifier opener '['; without a pre-filled assistant turn (prefill='none') "
                    f"single-pass ranking needs the answer to start with '['. Use a server that continues a final "
                    f"message (vLLM, SGLang: prefill='continue') or mode='generate'.")
        # The next position's alternatives follow "[" only when the model's first token was "[" itself (or
        # when "[" was pre-filled); after a merged first token such as "[B" they are about something else.
        use_after = first is None or opener_lp is not None
        for i, x in enumerate(ids):
            best = -math.inf
            after = self._lookup(after_opener, x) if use_after else None
            if after is not None:
                best = after + (opener_lp or 0.0)
            both = self._lookup(merged, "[" + x) if first is not None else None
            if both is not None:
                best = max(best, both)
            scores[i] = best
        missing = sum(1 for s in scores if s == -math.inf)
        if missing == len(ids):
            raise self._http.fail(f"{redact_url(self.url)}: none of the window's identifiers {ids} is among the "
                                  f"top {self.top_logprobs} tokens the server reported with a probability above 0; "
                                  "the model does not answer the ranking prompt (try mode='generate')")
        if missing:
            with self._lock:
                self.stats["identifiers_not_reported"] += missing
            logger.info("mmrank chat: %d of %d identifiers outside the reported top_logprobs; ranked after the "
                        "others in their current order", missing, len(ids))
        return scores

    def _read_ranking(self, text: str | None, ids: list[str], note: str = "") -> list[int]:
        if text is None or not text.strip():
            raise self._http.fail(f"{redact_url(self.url)} returned an empty answer for a window of {len(ids)}"
                                  f"{note}; nothing to rank by (check max_new_tokens and the model)")
        shown = self._http.safe(text)
        with self._lock:
            self.last_responses.append(shown)
            self.stats["windows"] += 1
        mentioned = [i for i in parse_ranking(text, ids) if 0 <= i < len(ids)]
        complete = len(set(mentioned)) == len(ids)
        if not complete:
            missing = len(ids) - len(set(mentioned))
            if self.strict:
                raise self._http.fail(f"{redact_url(self.url)}: the answer {shown[:200]!r} is not a ranking of all "
                                      f"{len(ids)} identifiers ({missing} missing){note} and strict=True")
            with self._lock:
                self.stats["repaired_windows"] += 1
            logger.warning("mmrank chat: answer %r names %d of %d identifiers%s; the rest keep their current order "
                           "(the local scorer's repair)", shown[:200], len(ids) - missing, len(ids), note)
        return parse_permutation(text, ids)

    def _pair_steps(self, query: Query, doc: Document, usage: ChatUsage):
        resp = yield self._body(self.pair_messages(query, doc), 1, logprobs=True)
        _, lp, _ = self._choice(resp, usage)
        if lp is None:
            raise self._no_logprobs()
        return self._yes_probability(lp[0])

    def _yes_probability(self, first: Any) -> float:
        tops = self._tops(first)
        yes_w, no_w = self.answer_words
        yes, no = self._lookup(tops, yes_w), self._lookup(tops, no_w)
        if (yes is None or yes == -math.inf) and (no is None or no == -math.inf):
            raise self._http.fail(f"{redact_url(self.url)}: neither {yes_w!r} nor {no_w!r} is among the top "
                                  f"{self.top_logprobs} first tokens the server reported with a probability above 0 "
                                  f"({self._http.clip(sorted(tops)[:10], 300)}); the model does not answer the "
                                  "yes/no prompt")
        if yes is None or no is None:
            # An upper bound of the missing word's log-probability: it is not above the smallest reported one,
            # and its probability is not above the mass the reported tokens leave.
            left = 1.0 - math.fsum(math.exp(v) for v in tops.values())
            bound = min(min(tops.values()), math.log(left) if left > 0 else -math.inf)
            yes, no = (bound if yes is None else yes), (bound if no is None else no)
            with self._lock:
                self.stats["answer_word_bounded"] += 1
            logger.info("mmrank chat: one answer word outside the reported top_logprobs; its log-probability is "
                        "bounded by the smallest reported one and the probability mass left")
        m = max(yes, no)
        return math.exp(yes - m) / (math.exp(yes - m) + math.exp(no - m))

    # ------------------------------------------------------------------ drivers
    def _run(self, steps) -> Any:
        """Drive a step generator with the sync HTTP client."""
        try:
            body = next(steps)
            while True:
                try:
                    resp = self._send(body)
                except RemoteError as exc:
                    body = steps.throw(exc)
                else:
                    body = steps.send(resp)
        except StopIteration as stop:
            return stop.value

    async def _arun(self, steps) -> Any:
        try:
            body = next(steps)
            while True:
                try:
                    resp = await self._asend(body)
                except RemoteError as exc:
                    body = steps.throw(exc)
                else:
                    body = steps.send(resp)
        except StopIteration as stop:
            return stop.value

    def _ensure_model(self) -> None:
        if self.model is not None:
            return
        parts = urllib.parse.urlsplit(self.url)
        root = urllib.parse.urlunsplit(parts._replace(path=parts.path[: -len("/chat/completions")], query=""))
        body = self._http.probe(root + "/models")
        self._take_model(body)

    async def _aensure_model(self) -> None:
        if self.model is not None:
            return
        parts = urllib.parse.urlsplit(self.url)
        root = urllib.parse.urlunsplit(parts._replace(path=parts.path[: -len("/chat/completions")], query=""))
        self._take_model(await self._http.aprobe(root + "/models"))

    def _take_model(self, body: Any) -> None:
        data = body.get("data") if isinstance(body, dict) else None
        data = data if isinstance(data, list) else []
        ids = [m.get("id") for m in data if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"].strip()]
        if not ids:
            raise InputError(f"no model name given and {redact_url(self.url)} lists none under /models (or could not "
                             "be reached); pass model='<served model name>'")
        with self._lock:
            if self.model is None:
                self.model = ids[0]
                self.model_name = ids[0]
                logger.info("mmrank chat: using model %r, the first one the server lists", ids[0])

    def _finish(self, usage: ChatUsage) -> None:
        self.last_usage = usage
        sink = _USAGE_SINK.get()
        if sink is not None:
            sink.append(usage)

    def _rank_documents(self, query: Query, documents: list[Document]) -> list[tuple[int, float]]:
        self._ensure_model()
        usage = ChatUsage()
        self.last_responses = []
        if self.method == "pairwise":
            if len(documents) == 1 or self.max_concurrency == 1:
                scores = [self._run(self._pair_steps(query, d, usage)) for d in documents]
            else:
                with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(documents))) as pool:
                    scores = list(pool.map(lambda d: self._run(self._pair_steps(query, d, usage)), documents))
            self._finish(usage)
            return order_by_score(scores)
        template = listwise_template(self.prompt, query, documents)
        order = rerank_with_windows(
            len(documents), self.window_size, self.step,
            lambda items: self._run(self._window_steps(query, [documents[i] for i in items], template, usage)))
        self._finish(usage)
        return list(zip(order, rank_scores(len(order)), strict=True))

    async def _arank_documents(self, query: Query, documents: list[Document]) -> list[tuple[int, float]]:
        await self._aensure_model()
        usage = ChatUsage()
        self.last_responses = []
        if self.method == "pairwise":
            scores = await asyncio.gather(*(self._arun(self._pair_steps(query, d, usage)) for d in documents))
            self._finish(usage)
            return order_by_score(list(scores))
        template = listwise_template(self.prompt, query, documents)
        # The walk of rerank_with_windows, awaiting each window (windows of one query are sequential).
        order = list(range(len(documents)))
        for start, end in sliding_windows(len(documents), self.window_size, self.step):
            items = order[start:end]
            if len(items) > 1:
                local = await self._arun(self._window_steps(query, [documents[i] for i in items], template, usage))
                local = repair_permutation(local, len(items))
                order[start:end] = [items[j] for j in local]
        self._finish(usage)
        return list(zip(order, rank_scores(len(order)), strict=True))

    # ------------------------------------------------------------------ public API
    def rank_many(self, requests: Iterable[tuple[Any, Sequence[Any]]], top_n: int | None = None, *,
                  score_threshold: float | None = None, on_error: OnError | None = None) -> list[list[RankedDocument]]:
        """Rank many ``(query, documents)`` lists concurrently (at most ``max_concurrency`` requests in flight);
        one ranking per list, in order. ``last_usage`` is the sum over all lists. The first error raises.

        Args:
            requests: ``(query, documents)`` pairs.
            top_n: keep the best ``top_n`` of each ranking (``None``: all).
            score_threshold: drop scored documents below this score.
            on_error: per-call override of the scorer's ``on_error``.
        """
        items = _pairs(requests)
        sink: list[ChatUsage] = []

        def one(item: tuple[Any, Sequence[Any]]) -> list[RankedDocument]:
            _USAGE_SINK.set(sink)
            return self.rank(item[0], item[1], top_n, score_threshold=score_threshold, on_error=on_error)

        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items))) as pool:
            futures = [pool.submit(contextvars.copy_context().run, one, it) for it in items]
            out = [f.result() for f in futures]
        self.last_usage = _total(sink)
        return out

    async def arank_many(self, requests: Iterable[tuple[Any, Sequence[Any]]], top_n: int | None = None, *,
                         score_threshold: float | None = None,
                         on_error: OnError | None = None) -> list[list[RankedDocument]]:
        """Async :meth:`rank_many` on the running event loop.

        Args:
            requests: ``(query, documents)`` pairs.
            top_n: keep the best ``top_n`` of each ranking (``None``: all).
            score_threshold: drop scored documents below this score.
            on_error: per-call override of the scorer's ``on_error``.
        """
        items = _pairs(requests)
        sink: list[ChatUsage] = []

        async def one(item: tuple[Any, Sequence[Any]]) -> list[RankedDocument]:
            _USAGE_SINK.set(sink)  # each task runs in its own copy of the context
            return await self.arank(item[0], item[1], top_n, score_threshold=score_threshold, on_error=on_error)

        out = await asyncio.gather(*(one(it) for it in items))
        self.last_usage = _total(sink)
        return list(out)


# ---------------------------------------------------------------------------------------------- helpers
def _refuses_prefill(exc: RemoteError) -> bool:
    """A 400/422 that names the continuation fields (vLLM-style extras unknown to this server)."""
    text = str(exc).lower()
    return exc.status_code in (400, 422) and any(
        k in text for k in ("continue_final_message", "add_generation_prompt", "unexpected field", "extra"))


class _BadLogprob(ValueError):
    """A ``logprobs`` entry that is not what the chat-completions schema says."""


#: A positive log-probability beyond rounding is not a log-probability.
_LOGPROB_SLACK = 1e-3


def _number(v: Any) -> float | None:
    """A JSON number as a float (``None`` for anything else, NaN, or an integer too large for a float)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return None if math.isnan(f) else f


def _logprob(token: str, v: Any) -> float:
    """A reported log-probability: a number in ``[-inf, 0]`` (a hair above 0 is rounding)."""
    f = _number(v)
    if f is None or f > _LOGPROB_SLACK:
        raise _BadLogprob(f"token {token[:40]!r} has log-probability {str(v)[:40]!r}, which is not a number <= 0")
    return min(f, 0.0)


def _tops(entry: Any) -> dict[str, float]:
    """``{token: logprob}`` of one position's ``top_logprobs`` (the sampled token included). A reported
    log-probability that is not a number ``<= 0`` raises :class:`_BadLogprob`; entries without a text token
    are skipped; ``top_logprobs`` given as a ``{token: logprob}`` mapping (the completions API's shape) is
    read too."""
    out: dict[str, float] = {}
    if not isinstance(entry, dict):
        return out
    items = entry.get("top_logprobs")
    if isinstance(items, dict):
        items = [{"token": t, "logprob": lp} for t, lp in items.items()]
    for t in [entry, *(items if isinstance(items, list) else [])]:
        if isinstance(t, dict) and isinstance(t.get("token"), str):
            lp = _logprob(t["token"], t.get("logprob"))
            out[t["token"]] = max(lp, out.get(t["token"], -math.inf))
    return out


def _logsumexp(values: list[float]) -> float:
    m = max(values)
    if m == -math.inf:
        return m
    return m + math.log(math.fsum(math.exp(v - m) for v in values))


_NOT_TEXT = object()


def _message_text(content: Any) -> Any:
    """A message's text: a string, ``None``, or the text parts of a list of content parts joined (servers that
    answer in parts; reasoning parts are not the answer) — ``_NOT_TEXT`` for anything else."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict):
                return _NOT_TEXT
            if part.get("type") in ("text", "output_text"):
                if not isinstance(part.get("text"), str):
                    return _NOT_TEXT
                texts.append(part["text"])
        return "".join(texts)
    return _NOT_TEXT


def _why_empty(message: dict[str, Any], choice: dict[str, Any], clip: Callable[[Any, int], str]) -> str:
    """What an answer without text had instead (for the error message)."""
    notes = []
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal.strip():
        notes.append(f"the model refused: {clip(refusal, 200)!r}")
    if message.get("tool_calls") or message.get("function_call"):
        notes.append("the model called a tool instead of answering")
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning.strip():
        notes.append("it wrote only reasoning (a thinking model: raise max_new_tokens or turn thinking off, e.g. "
                     "extra_body={'chat_template_kwargs': {'enable_thinking': False}})")
    reason = choice.get("finish_reason")
    if isinstance(reason, str) and reason and reason != "stop":
        notes.append(f"finish_reason={clip(reason, 40)!r}")
    return f" ({'; '.join(notes)})" if notes else ""


def _pairs(requests: Iterable[tuple[Any, Sequence[Any]]]) -> list[tuple[Any, Sequence[Any]]]:
    items = list(requests)
    for k, it in enumerate(items):
        if not isinstance(it, (tuple, list)) or len(it) != 2:
            raise InputError(f"request {k} must be a (query, documents) pair, got {type(it).__name__}")
    return [(it[0], it[1]) for it in items]


def _total(parts: list[ChatUsage]) -> ChatUsage:
    total = ChatUsage()
    for p in parts:
        total.add(p)
    return total
