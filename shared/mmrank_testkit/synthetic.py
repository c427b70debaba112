"""A synthetic multimodal ranking task made by code, with an exact oracle teacher (issue 12).

Documents are coloured shapes: an image (a filled circle / square / triangle of one colour on white, small
jitter in size and place) and, depending on ``modality``, its caption ("a red circle"). A query names a
colour ("red", "something red", ...); a document is **relevant (1) when it shows the query's colour**,
otherwise 0. Every list holds ``list_size`` candidates in random order with ``n_relevant`` relevant ones,
so position carries no information and a random ordering has a known nDCG.

``query_colours`` sets how hard the task is. The default ``("red",)`` — queries always ask for the same
colour, the distractors show other colours — is learnable by a tiny random Qwen2-VL with LoRA in a few
hundred CPU steps: the model must still bind content to identifiers (read the identifier of the document
whose caption/image is red), which is the listwise skill. With several query colours the model must also
match the query against the documents, which tiny models learn far more slowly (see
``benchmarks/train_synthetic.py``).

:func:`make_task` writes ``images/*.png`` and ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` (input lists in
the format of :mod:`mmrank.train.records`, with ``labels``) plus ``attributes.json`` under a folder;
:class:`OracleTeacher` is an mmrank :class:`~mmrank.Reranker` that ranks by the true labels (relevant first,
then by document id for a stable order), scoring 1.0 / 0.0.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from mmrank.inputs.documents import Document, Query
from mmrank.scorers.base import PointwiseReranker
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (230, 200, 20)}
SHAPES = ("circle", "square", "triangle")
QUERY_FORMS = ("{c}", "something {c}", "a {c} shape", "{c} object")


def shape_image(colour: str, shape: str, jitter: int = 0, size: int = 56) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    rng = random.Random(f"{colour}-{shape}-{jitter}")
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r + 2, size - r - 2), rng.randint(r + 2, size - r - 2)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


@dataclass
class SyntheticTask:
    root: Path
    train: Path
    val: Path
    test: Path
    attributes: dict[str, dict[str, str]]

    def oracle(self) -> OracleTeacher:
        return OracleTeacher(self.attributes)

    def qrels(self, split: str) -> dict[str, dict[str, int]]:
        out = {}
        for line in getattr(self, split).read_text().splitlines():
            obj = json.loads(line)
            out[obj["id"]] = dict(obj["labels"])
        return out


def make_task(root: str | Path, *, n_train: int = 200, n_val: int = 24, n_test: int = 40, list_size: int = 4,
              n_relevant: int = 1, modality: str = "mixed", query_colours: tuple[str, ...] = ("red",),
              jitters: int = 3, seed: int = 0) -> SyntheticTask:
    """Write the task under ``root``. ``modality``: ``"text"`` (captions only), ``"image"`` (images only),
    ``"mixed"`` (caption + image per document) or ``"any"`` (each document one of the three)."""
    if modality not in ("text", "image", "mixed", "any"):
        raise ValueError(f"unknown modality {modality!r}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    attributes: dict[str, dict[str, str]] = {}
    counter = 0

    def document(colour: str) -> dict:
        nonlocal counter
        shape = rng.choice(SHAPES)
        j = rng.randrange(jitters)
        name = f"images/{colour}-{shape}-{j}.png"
        if not (root / name).exists():
            shape_image(colour, shape, j).save(root / name)
        kind = modality if modality != "any" else rng.choice(("text", "image", "mixed"))
        doc_id = f"d{counter}"
        counter += 1
        attributes[doc_id] = {"colour": colour, "shape": shape}
        out: dict = {"id": doc_id}
        if kind in ("text", "mixed"):
            out["text"] = f"{colour} {shape}"
        if kind in ("image", "mixed"):
            out["image"] = name
        return out

    paths = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        lines = []
        for i in range(n):
            q = rng.choice(query_colours)
            others = [c for c in COLOURS if c != q]
            colours = [q] * n_relevant + [rng.choice(others) for _ in range(list_size - n_relevant)]
            rng.shuffle(colours)
            cands = [document(c) for c in colours]
            labels = {c["id"]: int(attributes[c["id"]]["colour"] == q) for c in cands}
            lines.append({"id": f"{split}-{i}", "query": rng.choice(QUERY_FORMS).format(c=q), "candidates": cands,
                          "labels": labels})
        paths[split] = root / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(x) + "\n" for x in lines))
    (root / "attributes.json").write_text(json.dumps(attributes))
    return SyntheticTask(root, paths["train"], paths["val"], paths["test"], attributes)


class OracleTeacher(PointwiseReranker):
    """The exact teacher of the synthetic task: score 1.0 for documents showing the query's colour, else 0.0
    (documents are identified by ``Document.id``; an unknown id is an error)."""

    model_name = "synthetic-oracle"
    supports_image_query = False

    def __init__(self, attributes: dict[str, dict[str, str]]):
        super().__init__(on_error="raise")
        self.attributes = attributes

    def _score_documents(self, query: Query, documents: list[Document]) -> list[float]:
        words = set(re.findall(r"[a-z]+", (query.text or "").lower()))
        wanted = words & set(COLOURS)
        out = []
        for d in documents:
            if d.id not in self.attributes:
                raise KeyError(f"oracle: unknown document id {d.id!r}")
            out.append(1.0 if self.attributes[d.id]["colour"] in wanted else 0.0)
        return out


def tiny_clip_dir(out: str | Path) -> Path:
    """A tiny random ``CLIPModel`` (with the test kit's BPE tokenizer and a 56-px image processor) saved
    under ``out``: the real transformers classes ``mmrank select`` uses, offline."""
    import torch
    from mmrank.models.dummy import train_tokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    out = Path(out)
    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(out)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=64,
                                      pad_token_id=tok.pad_token_id, bos_token_id=0, eos_token_id=tok.eos_token_id),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                        image_size=56, patch_size=14),
                     projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(out)
    return out
