"""Sample documents for the examples: a few texts and two images drawn on the fly (no downloads)."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

QUERY = "What is the capital of Germany?"

TEXTS = [
    "Berlin is the capital and largest city of Germany.",
    "Paris is the capital of France, on the Seine.",
    "Bananas are an excellent source of potassium.",
    "The Bundestag, Germany's parliament, meets in the Reichstag building in Berlin.",
]


def make_images(folder: str | None = None) -> dict[str, Path]:
    """Write a document-page screenshot and a 'photo' to ``folder`` (a temp dir by default)."""
    out = Path(folder or tempfile.mkdtemp(prefix="mmrank-example-"))
    page = Image.new("RGB", (320, 200), "white")
    d = ImageDraw.Draw(page)
    for i, line in enumerate(["GERMANY - FACT SHEET", "Capital: Berlin", "Population: 84 million",
                              "Currency: Euro"]):
        d.text((12, 16 + 28 * i), line, fill="black")
    photo = Image.new("RGB", (160, 120), (120, 170, 230))
    ImageDraw.Draw(photo).rectangle([40, 50, 120, 110], fill=(200, 60, 40))
    paths = {"page": out / "germany_fact_sheet.png", "photo": out / "red_house.png"}
    page.save(paths["page"])
    photo.save(paths["photo"])
    return paths


def parse_args(description: str):
    """``--model`` (default ``$MMRANK_MODEL`` or the real jina-reranker-m0), ``--device``, ``--load-format``."""
    import argparse
    import os

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=os.environ.get("MMRANK_MODEL", "jinaai/jina-reranker-m0"),
                        help="model id or local folder (default: $MMRANK_MODEL or jinaai/jina-reranker-m0)")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: CUDA if available)")
    parser.add_argument("--load-format", default="auto", choices=["auto", "dummy"],
                        help="'dummy': the real architecture with random weights, no download (scores mean nothing)")
    return parser.parse_args()


def scorer_options(args) -> dict:
    """Options for mmrank.load_reranker / the adapters' reranker_kwargs from the command line."""
    return {"load_format": args.load_format} if args.load_format != "auto" else {}


def run(main: Callable[[], None]) -> None:
    """Run an example's ``main``; a model that cannot be loaded (offline, wrong path) ends the script with
    mmrank's message on how to fix it instead of a traceback, even when a framework wrapped the error."""
    import mmrank

    try:
        main()
    except Exception as exc:
        err: BaseException | None = exc
        while err is not None and not isinstance(err, mmrank.ModelLoadError):
            err = err.__cause__ or err.__context__
        if err is None:
            raise
        sys.exit(f"error: {err}")
