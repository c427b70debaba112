"""Request bodies of ``POST /v1/rerank``, ``/rerank`` and ``/v2/rerank``: the Jina rerank dialect, read
leniently enough that Cohere (v1 and v2) and vLLM clients work unmodified.

What is accepted:

* ``query``: ``"text"``, ``{"text": ...}``, ``{"image": url-or-base64}`` or vLLM content parts
  ``{"content": [{"type": "text", "text": ...}, {"type": "image_url", "image_url": {"url": ...}}]}``.
* ``documents``: a list of the same forms (each content-part object is **one** document: its text parts
  joined by a newline, at most one image part), or — vLLM's multimodal form — a single
  ``{"content": [part, ...]}`` object, where **each part is one document**. Document objects may carry
  extra fields (Cohere v1 documents are free-form objects): they are ignored and logged once per name,
  unless the name looks like a misspelling of ``text``, ``image`` or ``content`` (``imgae``, ``txt``), which is
  refused so a typo never silently drops an image.
* Fields that the Jina, Cohere (v1, v2) or vLLM rerank APIs define but mmrank does not act on
  (:data:`IGNORED_FIELDS`, e.g. ``max_chunks_per_doc``, ``rank_fields``, ``max_tokens_per_doc``,
  ``truncation``, ``priority``) are type-checked, then ignored (and logged once per name).
* Any other top-level field is refused with 422 naming it; wrong types are refused with 422 naming the
  field and the document. Types are strict: ``"top_n": "3"``, ``"top_n": true`` or ``"return_documents": 1``
  are refused, not guessed at.
* Sizes that cost CPU before any limit of the app is reached are bounded here, checked before the items are
  validated: at most :data:`MAX_CONTENT_PARTS` content parts per query or document, at most
  :data:`MAX_LIST_ITEMS` items in ``rank_fields``.
"""

from __future__ import annotations

import difflib
import functools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

MAX_CONTENT_PARTS = 64
"""Content parts of one query or document (a document is one text and at most one image)."""
MAX_LIST_ITEMS = 1000
"""Items of a list-valued compatibility field (``rank_fields``)."""
INFINITY_UNSET_MODEL = "default/not-specified"
"""What Infinity's client sends as ``model`` when the caller named none: read as no model."""

_STRICT = ConfigDict(extra="forbid", strict=True)


def _at_most(limit: int, what: str):
    """A check of a list's length that runs before its items are validated (so a list of millions of items
    is refused at once, not after validating each)."""

    def check(value: Any) -> Any:
        if isinstance(value, list) and len(value) > limit:
            raise ValueError(f"{len(value)} {what}, at most {limit}")
        return value

    return BeforeValidator(check)


# ------------------------------------------------------------------------------------------ content parts


class ImageURL(BaseModel):
    model_config = _STRICT

    url: str
    """http(s) URL, ``data:`` URI or bare base64 image data."""
    detail: str | None = None
    """OpenAI's resolution hint; ignored."""


class TextPart(BaseModel):
    model_config = _STRICT

    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    model_config = _STRICT

    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
"""An OpenAI/vLLM content part: ``{"type": "text", "text": ...}`` or ``{"type": "image_url", "image_url": {"url": ...}}``."""


def _from_parts(parts: list[TextPart | ImagePart]) -> tuple[str | None, str | None]:
    texts = [p.text for p in parts if isinstance(p, TextPart)]
    images = [p.image_url.url for p in parts if isinstance(p, ImagePart)]
    if not parts:
        raise ValueError("'content' is an empty list; send at least one text or image_url part")
    if len(images) > 1:
        raise ValueError(f"'content' has {len(images)} image_url parts; one item holds at most one image "
                         "(send each image as its own document)")
    return ("\n".join(texts) if texts else None), (images[0] if images else None)


# ------------------------------------------------------------------------------------------ items

_KNOWN_ITEM_FIELDS = ("text", "image", "content")


def _text_to_object(value: Any) -> Any:
    # "some text" is shorthand for {"text": "some text"} (queries and documents).
    return {"text": value} if isinstance(value, str) else value


class _Item(BaseModel):
    text: str | None = None
    image: str | None = None
    """http(s) URL, ``data:`` URI or bare base64 image data."""
    content: Annotated[list[ContentPart], _at_most(MAX_CONTENT_PARTS, "content parts")] | None = Field(
        default=None, description=("vLLM/OpenAI content parts (instead of text/image): text parts are joined by "
                                   f"a newline, at most one image_url part, at most {MAX_CONTENT_PARTS} parts."))

    @model_validator(mode="after")
    def _normalise(self):
        if self.content is not None:
            if self.text is not None or self.image is not None:
                raise ValueError("send either 'content' parts or 'text'/'image', not both")
            self.text, self.image = _from_parts(self.content)
            self.content = None
        if self.text is None and self.image is None:
            raise ValueError("needs 'text' and/or 'image' (or vLLM 'content' parts)")
        return self


class QueryIn(_Item):
    """A query: ``"text"``, ``{"text": ...}``, ``{"image": url-or-base64}`` or ``{"content": [parts]}``."""

    model_config = _STRICT


class DocumentIn(_Item):
    """A document: ``"text"``, ``{"text": ...}``, ``{"image": url-or-base64}``, both, or ``{"content": [parts]}``.
    Other fields (Cohere's free-form document objects) are accepted and ignored."""

    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _no_misspelt_fields(cls, data: Any) -> Any:
        # before the fields: {"Text": "..."} is a typo of 'text', not a document without text
        if isinstance(data, dict):
            for name in data:
                near = _misspelling_of(name) if isinstance(name, str) else None
                if near:
                    raise ValueError(f"field {name!r} is not used by this server; did you mean {near!r}?")
        return data

    @property
    def ignored_fields(self) -> list[str]:
        return list(self.model_extra or {})


_LONGEST_NEAR_NAME = 11
"""A name longer than this cannot reach the 0.75 similarity cutoff with 'content' (7 letters), the longest
known field name: 2 * 7 / (7 + 12) < 0.75."""


@functools.lru_cache(maxsize=4096)
def _misspelling_of(name: str) -> str | None:
    """The known field ``name`` looks like a misspelling of (``imgae`` → ``image``), else ``None``. Cheap for
    any name a client may send: long names are never compared, and each name is compared once."""
    if len(name) > _LONGEST_NEAR_NAME or name in _KNOWN_ITEM_FIELDS:
        return None
    near = difflib.get_close_matches(name.lower(), _KNOWN_ITEM_FIELDS, n=1, cutoff=0.75)
    return near[0] if near else None


# ------------------------------------------------------------------------------------------ request

IGNORED_FIELDS: dict[str, str] = {
    "max_chunks_per_doc": "Cohere v1",
    "rank_fields": "Cohere v1",
    "max_tokens_per_doc": "Cohere v2, vLLM",
    "relevant_spans": "Cohere v2",
    "priority": "Cohere v2, vLLM",
    "truncation": "Jina, Voyage",
    "raw_scores": "Infinity",
    "truncate_prompt_tokens": "vLLM",
    "max_tokens_per_query": "vLLM",
    "truncation_side": "vLLM",
    "padding": "vLLM",
    "mm_processor_kwargs": "vLLM",
    "softmax": "vLLM",
    "activation": "vLLM",
    "use_activation": "vLLM",
    "instruction": "vLLM",
    "chat_template_kwargs": "vLLM",
    "request_id": "vLLM",
    "cache_salt": "vLLM",
    "user": "vLLM",
}
"""Fields other rerank APIs define that are type-checked and then ignored (name → which API defines it)."""


class ContentPartDocuments(BaseModel):
    """vLLM's multimodal documents: one document per content part."""

    model_config = _STRICT

    content: list[ContentPart]


def _documents_from_parts(value: Any) -> Any:
    # vLLM: "documents": {"content": [part, part, ...]} is one document per part.
    if isinstance(value, dict) and set(value) == {"content"} and isinstance(value["content"], list):
        return [{"content": [part]} for part in value["content"]]
    return value


class RerankRequest(BaseModel):
    """The body of ``POST /v1/rerank`` (also ``/rerank`` and ``/v2/rerank``)."""

    model_config = _STRICT

    model: str | None = None
    """Ignored unless the server was started with ``--served-model-name`` (then it must be one of them;
    Infinity's ``"default/not-specified"`` counts as no name)."""
    query: Annotated[QueryIn, BeforeValidator(_text_to_object, json_schema_input_type=str | QueryIn)]
    documents: Annotated[
        list[Annotated[DocumentIn, BeforeValidator(_text_to_object, json_schema_input_type=str | DocumentIn)]],
        BeforeValidator(_documents_from_parts, json_schema_input_type=list[str | DocumentIn] | ContentPartDocuments)]
    top_n: Annotated[int, Field(ge=0)] | None = None
    """Return the best ``top_n`` (``None`` or 0: all — 0 as in vLLM)."""
    return_documents: bool = True
    on_error: Literal["raise", "last"] = "raise"
    """mmrank extension. ``raise`` (default): a document that cannot be read fails the request with 422
    naming its index. ``last``: it is ranked after every scored document with ``relevance_score: null``
    and an ``error`` field."""

    # Accepted for compatibility, type-checked, ignored (see IGNORED_FIELDS).
    max_chunks_per_doc: int | None = None
    rank_fields: Annotated[list[str], _at_most(MAX_LIST_ITEMS, "items")] | None = None
    max_tokens_per_doc: int | None = None
    relevant_spans: dict[str, Any] | None = None
    priority: int | None = None
    truncation: bool | None = None
    raw_scores: bool | None = None
    truncate_prompt_tokens: Annotated[int, Field(ge=-1)] | None = None
    max_tokens_per_query: int | None = None
    truncation_side: Literal["left", "right"] | None = None
    padding: Literal["max_length", "do_not_pad"] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    softmax: bool | None = None
    activation: bool | None = None
    use_activation: bool | None = None
    instruction: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    request_id: str | None = None
    cache_salt: str | None = None
    user: str | None = None

    @property
    def model_name(self) -> str | None:
        """The requested model name, ``None`` when none was named."""
        return None if self.model in (None, INFINITY_UNSET_MODEL) else self.model

    def ignored(self) -> list[str]:
        """Names of the compatibility fields this request set (to a non-null value)."""
        return [name for name in IGNORED_FIELDS if getattr(self, name) is not None]


RerankRequest.model_rebuild()


# ------------------------------------------------------------------------------------------ responses


class ResultDocument(BaseModel):
    """The document as sent: ``text`` and ``image`` (content parts as the text and image they name), and any
    other fields of a document object (Cohere v1 titles, your ids), as Jina's API preserves them."""

    model_config = ConfigDict(extra="allow")

    text: str | None = None
    image: str | None = None


class RerankResult(BaseModel):
    index: int
    """Position of the document in the request."""
    relevance_score: float | None
    """Higher is more relevant; ``null`` for an unreadable document ranked last (``on_error: last``)."""
    document: ResultDocument | None = None
    """The document as sent (with ``return_documents``, the default)."""
    error: str | None = None
    """Why the document could not be scored (``on_error: last``)."""


class Usage(BaseModel):
    prompt_tokens: int
    """The same count as ``total_tokens`` (vLLM's and Infinity's clients read this name)."""
    total_tokens: int


class RerankResponse(BaseModel):
    """Results best first (then unreadable documents), cut to ``top_n``."""

    id: str
    model: str
    """The served model name (``--served-model-name``)."""
    usage: Usage
    results: list[RerankResult]
    meta: dict[str, Any] | None = None
    """Cohere's ``meta`` (API version, billed units), for Cohere SDKs."""


class ErrorResponse(BaseModel):
    detail: str
    """What was wrong, naming the field, document or limit."""
    document_index: int | None = None
    errors: list[str] | None = None


def describe_validation_error(exc: ValidationError) -> list[str]:
    """Readable lines such as ``documents[3].image: Input should be a valid string``."""
    out = []
    for err in exc.errors():
        parts = list(err.get("loc", ()))
        loc = ""
        for i, part in enumerate(parts):
            if isinstance(part, int):
                loc += f"[{part}]"
            elif part.startswith("function-"):
                continue
            elif i >= 2 and parts[i - 2] == "content" and isinstance(parts[i - 1], int):
                continue  # the discriminator tag pydantic adds inside a content part
            else:
                loc += ("." if loc else "") + str(part)
        kind = err.get("type")
        if kind == "extra_forbidden":
            if loc.startswith("query."):
                msg = "unknown field (a query has only 'text', 'image' or 'content')"
            elif "content[" in loc:
                msg = "unknown field in a content part"
            else:
                msg = "unknown field (allowed: " + ", ".join(RerankRequest.model_fields) + ")"
        elif kind == "missing":
            msg = "required field is missing"
        elif kind in ("model_type", "dict_type") and (loc.startswith("documents[") and loc.endswith("]")
                                                      or loc == "query"):
            msg = "must be a string or an object with 'text' and/or 'image' (or 'content' parts)"
        elif kind == "union_tag_invalid":
            msg = (f"content part type {err.get('ctx', {}).get('tag')!r} is not supported here "
                   "(only 'text' and 'image_url')")
        else:
            msg = err.get("msg", "invalid")
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
        out.append(f"{loc or 'body'}: {msg}")
    return out
