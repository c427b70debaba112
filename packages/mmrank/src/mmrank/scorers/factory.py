"""One entry point that builds any scorer by mode — what the adapters and ``mmrank serve`` call."""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from .base import Reranker

MODES = ("pointwise", "listwise", "pairwise", "remote")
#: Modes whose scorers take ``device`` (the local models) and ``batch_size`` (pairs per forward pass; the
#: listwise scorer batches by window instead).
DEVICE_MODES = ("pointwise", "listwise", "pairwise")
BATCH_MODES = ("pointwise", "pairwise")


def check_settings(mode: str, *, device: Any = None, batch_size: int | None = None, url: str | None = None,
                   api_key: str | None = None) -> dict[str, Any]:
    """The settings that were given (not ``None``), after checking that ``mode`` is known and uses each of
    them; :class:`InputError` (a ``ValueError``) otherwise. Integrations call it to fail at construction."""
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; use one of {MODES}")
    given = {}
    for name, value, modes in (("device", device, DEVICE_MODES), ("batch_size", batch_size, BATCH_MODES),
                               ("url", url, ("remote",)), ("api_key", api_key, ("remote",))):
        if value is None:
            continue
        if mode not in modes:
            raise InputError(f"{name} applies to modes {', '.join(modes)}, not {mode!r}; pass that scorer's "
                             "own options instead")
        given[name] = value
    return given


def load_reranker(mode: str = "pointwise", /, model: str | None = None, *, device: Any = None,
                  batch_size: int | None = None, url: str | None = None, api_key: str | None = None,
                  **kwargs: Any) -> Reranker:
    """Build a scorer.

    - ``pointwise``: :class:`mmrank.JinaRerankerM0` (default model ``jinaai/jina-reranker-m0``);
    - ``listwise``: :class:`mmrank.ListwiseReranker` over an instruction-tuned VLM;
    - ``pairwise``: :class:`mmrank.PairwiseReranker` (yes/no relevance) over an instruction-tuned VLM;
    - ``remote``: :class:`mmrank.RemoteReranker` (``model`` is the served model name; pass ``url``).

    The common knobs are checked against the mode here, so a setting that a mode would not use is an error
    rather than silently dropped: ``device`` (local modes), ``batch_size`` (pointwise, pairwise), ``url`` and
    ``api_key`` (remote). Other ``kwargs`` go to the scorer's constructor. ``mode`` is positional-only, so the
    listwise scorer's own ``mode`` (``"generate"`` / ``"single_pass"``) passes through:
    ``load_reranker("listwise", m, mode="single_pass")``.
    """
    kwargs.update(check_settings(mode, device=device, batch_size=batch_size, url=url, api_key=api_key))
    if mode == "pointwise":
        from .pointwise import DEFAULT_MODEL, JinaRerankerM0

        return JinaRerankerM0(model or DEFAULT_MODEL, **kwargs)
    if mode == "listwise":
        from .listwise import ListwiseReranker

        return ListwiseReranker(model, **kwargs) if model else ListwiseReranker(**kwargs)
    if mode == "pairwise":
        from .pairwise import PairwiseReranker

        return PairwiseReranker(model, **kwargs) if model else PairwiseReranker(**kwargs)
    from .remote import RemoteReranker

    return RemoteReranker(model=model, **kwargs) if model else RemoteReranker(**kwargs)
