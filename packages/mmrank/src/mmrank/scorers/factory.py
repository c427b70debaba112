"""One entry point that builds any scorer by mode — what the adapters and ``mmrank serve`` call."""

from __future__ import annotations

from typing import Any, Literal, get_args

from ..errors import InputError
from .base import Reranker

#: The scorer kinds: the one list of modes (the CLI, the server, the adapters and their type hints read it).
Mode = Literal["pointwise", "listwise", "pairwise", "remote", "chat"]
MODES: tuple[Mode, ...] = get_args(Mode)
#: Modes whose scorers take ``device`` (the local models) and ``batch_size`` (pairs per forward pass; the
#: listwise scorer batches by window instead); the others talk to a server and take ``url`` and ``api_key``.
DEVICE_MODES: tuple[Mode, ...] = ("pointwise", "listwise", "pairwise")
BATCH_MODES: tuple[Mode, ...] = ("pointwise", "pairwise")
HTTP_MODES: tuple[Mode, ...] = tuple(m for m in MODES if m not in DEVICE_MODES)


def check_settings(mode: str, *, device: Any = None, batch_size: int | None = None, url: str | None = None,
                   api_key: str | None = None, token: str | None = None, http: Any = None) -> dict[str, Any]:
    """The settings that were given (not ``None``), after checking that ``mode`` is known and uses each of
    them; :class:`InputError` (a ``ValueError``) otherwise. Integrations call it to fail at construction."""
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; use one of {MODES}")
    given = {}
    for name, value, modes in (("device", device, DEVICE_MODES), ("batch_size", batch_size, BATCH_MODES),
                               ("url", url, HTTP_MODES), ("api_key", api_key, HTTP_MODES),
                               ("token", token, DEVICE_MODES), ("http", http, HTTP_MODES)):
        if value is None:
            continue
        if mode not in modes:
            raise InputError(f"{name} applies to modes {', '.join(modes)}, not {mode!r}; pass that scorer's "
                             "own options instead")
        given[name] = value
    return given


def load_reranker(mode: Mode = "pointwise", /, model: str | None = None, *, device: Any = None,
                  batch_size: int | None = None, url: str | None = None, api_key: str | None = None,
                  **kwargs: Any) -> Reranker:
    """Build a scorer.

    - ``pointwise``: :class:`mmrank.JinaRerankerM0` (default model ``jinaai/jina-reranker-m0``);
    - ``listwise``: :class:`mmrank.ListwiseReranker` over an instruction-tuned VLM;
    - ``pairwise``: :class:`mmrank.PairwiseReranker` (yes/no relevance) over an instruction-tuned VLM;
    - ``remote``: :class:`mmrank.RemoteReranker` (``model`` is the served model name; pass ``url``);
    - ``chat``: :class:`mmrank.ChatReranker`, listwise or pairwise over an OpenAI-compatible
      ``/v1/chat/completions`` server (``model`` is the served model name; pass ``url``; ``method=``
      ``"listwise"`` / ``"pairwise"``, and the listwise ``mode=`` passes through as for ``listwise``).

    The common knobs are checked against the mode here, so a setting that a mode would not use is an error
    rather than silently dropped: ``device`` and the hub ``token`` (local modes), ``batch_size`` (pointwise,
    pairwise), ``url``, ``api_key`` and ``http`` (an :class:`mmrank.HttpOptions`; remote, chat). Other
    ``kwargs`` go to the scorer's constructor. ``mode`` is positional-only, so the
    listwise scorer's own ``mode`` (``"generate"`` / ``"single_pass"``) passes through:
    ``load_reranker("listwise", m, mode="single_pass")``.

    Args:
        mode: the scorer kind, one of :data:`MODES` (positional only).
        model: model id or local folder (local modes), or the served model name (server modes); ``None``:
            the mode's default.
        device: torch device for the local modes (``None``: CUDA if available).
        batch_size: pairs per forward pass (pointwise, pairwise; ``None``: the scorer's default).
        url: the server's base URL (server modes).
        api_key: the server's API key (server modes; ``None``: read from the environment).
        **kwargs: any other option of the scorer's constructor.

    Raises:
        InputError: an unknown mode, or a setting the mode does not use.
    """
    kwargs.update(check_settings(mode, device=device, batch_size=batch_size, url=url, api_key=api_key,
                                 token=kwargs.pop("token", None), http=kwargs.pop("http", None)))
    if mode == "pointwise":
        from .pointwise import DEFAULT_MODEL, JinaRerankerM0

        return JinaRerankerM0(model or DEFAULT_MODEL, **kwargs)
    if mode == "listwise":
        from .listwise import ListwiseReranker

        return ListwiseReranker(model, **kwargs) if model else ListwiseReranker(**kwargs)
    if mode == "pairwise":
        from .pairwise import PairwiseReranker

        return PairwiseReranker(model, **kwargs) if model else PairwiseReranker(**kwargs)
    if mode == "chat":
        from .chat import ChatReranker

        return ChatReranker(model=model, **kwargs)
    if mode == "remote":
        from .remote import RemoteReranker

        return RemoteReranker(model=model, **kwargs) if model else RemoteReranker(**kwargs)
    raise NotImplementedError(f"mode {mode!r} is listed in Mode but load_reranker does not build it yet")
