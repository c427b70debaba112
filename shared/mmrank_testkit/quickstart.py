"""Run a package README's quick start as a user would, offline.

The quick starts name the real default model (``jinaai/jina-reranker-m0``) and local image files. Here the
model id resolves, through an offline Hugging Face cache laid out as the hub client writes it, to the tiny
test checkpoint, and the image files are drawn by the test kit, so the README's code runs unmodified.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .models import tiny_model_dir
from .samples import sample_image, sample_page

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mmrank", "llama-index-postprocessor-mmrank-rerank", "langchain-mmrank", "mmrank-haystack")
#: Files the quick starts name.
IMAGE_FILES = ("page-3.png", "fig2.png", "map-of-germany.png")
_SNAPSHOT = "0" * 40


def readme(package: str) -> str:
    return (ROOT / "packages" / package / "README.md").read_text(encoding="utf-8")


def python_blocks(markdown: str) -> list[str]:
    """The fenced ```python blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def quickstart_code(package: str) -> str:
    """The first Python block under the README's "Quick start" heading."""
    text = readme(package)
    match = re.search(r"^## Quick start\n", text, flags=re.M)
    assert match, f"{package}/README.md has no '## Quick start' section"
    blocks = python_blocks(text[match.end():])
    assert blocks, f"{package}/README.md: no python block in its quick start"
    return blocks[0]


def fake_hub_cache(cache: Path, repo_id: str = "jinaai/jina-reranker-m0", kind: str = "jina") -> Path:
    """An HF hub cache (``HF_HUB_CACHE``) in which ``repo_id`` is the tiny ``kind`` checkpoint."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / _SNAPSHOT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(_SNAPSHOT)
    for f in tiny_model_dir(kind).iterdir():
        if f.is_file() and f.name != "MMRANK_DUMMY" and not (snapshot / f.name).exists():
            (snapshot / f.name).symlink_to(f)
    return cache


def write_images(folder: Path) -> None:
    sample_page(["Revenue 2024: +12%", "Services drove growth."]).save(folder / "page-3.png")
    sample_image(1).save(folder / "fig2.png")
    sample_image(2).save(folder / "map-of-germany.png")


def offline_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HAYSTACK_TELEMETRY_ENABLED="False", TOKENIZERS_PARALLELISM="false")
    env.pop("HF_HOME", None)
    return env
