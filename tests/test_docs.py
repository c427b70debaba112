"""Documentation that cannot rot: the API reference builds from the docstrings with ``mkdocs build --strict``,
the README quick starts run as written, the changelog and the Dockerfile say what the code does, and every
public parameter is documented."""

from __future__ import annotations

import ast
import functools
import inspect
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import mmrank
import pytest
from mmrank_testkit import quickstart

ROOT = Path(__file__).resolve().parent.parent


# --- API reference ----------------------------------------------------------------------------------------

def test_api_reference_builds_strict_from_the_docstrings(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    # The pages carry the docstrings' content, not just headings: a parameter's description from each part.
    page = (site / "api/scorers/index.html").read_text()
    for needle in ("JinaRerankerM0", "ListwiseReranker", "PairwiseReranker", "RemoteReranker", "load_reranker",
                   "attn_implementation", "feature_cache_bytes", "window_size", "max_retries"):
        assert needle in page, needle
    assert "MMRankRerank" in (site / "api/llamaindex/index.html").read_text()
    assert "document_image" in (site / "api/langchain/index.html").read_text()
    assert "MMRankRanker" in (site / "api/haystack/index.html").read_text()
    assert "CC-BY-NC-4.0" in (site / "licences/index.html").read_text()
    # Sphinx roles in the docstrings are rendered as code spans (scripts/mkdocs_roles.py), not as raw text.
    for html in site.glob("api/*/index.html"):
        assert not re.search(r":(func|class|meth|data|exc):<code>", html.read_text()), html


def test_every_docs_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    in_nav = set(re.findall(r":\s*(\S+\.md)\s*$", nav, flags=re.M))
    assert not pages - in_nav, f"docs pages missing from mkdocs.yml's nav (add them): {sorted(pages - in_nav)}"
    assert not in_nav - pages, f"nav entries without a page: {sorted(in_nav - pages)}"


# --- READMEs ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_readme_quick_starts_run_as_written(tmp_path):
    """Each package's README quick start, unmodified, in a fresh interpreter: the default model id resolves
    (through an offline hub cache) to the tiny test checkpoint; the image files it names exist."""
    cache = quickstart.fake_hub_cache(tmp_path / "hub")
    quickstart.write_images(tmp_path)
    files = []
    for name in quickstart.PACKAGES:
        f = tmp_path / f"quickstart_{name}.py"
        f.write_text(quickstart.quickstart_code(name))
        files.append(f.name)
    runner = ("import runpy, sys\n"
              "for f in sys.argv[1:]:\n"
              "    print('==', f, flush=True)\n"
              "    runpy.run_path(f, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", runner, *files], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=quickstart.offline_env(cache))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "ranked last" not in proc.stderr, proc.stderr  # every image was read
    out = {}
    for block in proc.stdout.split("== ")[1:]:
        head, *lines = block.strip().splitlines()
        out[head] = [ln.split() for ln in lines]
    assert len(out) == 4
    for name in quickstart.PACKAGES:
        rows = out[f"quickstart_{name}.py"]
        assert len(rows) == 2, (name, rows)  # top_n=2 of three documents
        # the core prints `index score id`, the adapters `id score`
        scores = [float(row[1]) for row in rows]
        ids = [row[2] if name == "mmrank" else row[0] for row in rows]
        assert all(0.0 < s < 1.0 for s in scores), (name, rows)  # jina-reranker-m0 scores
        assert scores == sorted(scores, reverse=True), (name, rows)  # best first
        assert len(set(ids)) == 2
        expected = {"None", "p3", "fig2"} if name == "mmrank" else {"berlin", "paris", "map"}
        assert set(ids) <= expected, (name, ids)


def test_model_licences_are_stated():
    for text in (quickstart.readme("mmrank"), (ROOT / "docs/licences.md").read_text(),
                 (ROOT / "README.md").read_text()):
        assert "CC-BY-NC-4.0" in text and "non-commercial" in text.lower()
    assert "Apache-2.0" in (ROOT / "docs/licences.md").read_text()


# --- changelog --------------------------------------------------------------------------------------------

def test_changelog_follows_keep_a_changelog():
    text = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[([^\]]+)\]", text, flags=re.M)
    assert versions[0] == "Unreleased" and "0.1.0" in versions
    # the unreleased section is the version in the sources
    unreleased = text.split("## [Unreleased]", 1)[1].split("\n## [", 1)[0]
    assert f"Version {mmrank.__version__}" in unreleased
    for v in versions:
        assert re.search(rf"^\[{re.escape(v)}\]: https://github\.com/mmrank/mmrank/", text, flags=re.M), v
    allowed = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    assert set(re.findall(r"^### (.+)$", text, flags=re.M)) <= allowed


# --- Dockerfile -------------------------------------------------------------------------------------------

def _instructions(path: Path) -> list[tuple[str, str]]:
    lines, buf = [], ""
    for raw in path.read_text().splitlines():
        if not buf and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        buf += raw.rstrip("\\").strip() + " " if raw.endswith("\\") else raw.strip()
        if not raw.endswith("\\"):
            word, _, rest = buf.partition(" ")
            lines.append((word.upper(), rest.strip()))
            buf = ""
    return lines


def test_dockerfile_serves_mmrank_on_all_interfaces():
    inst = _instructions(ROOT / "Dockerfile")
    assert inst[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(rest for word, rest in inst if word == "RUN")
    assert "https://download.pytorch.org/whl/cpu" in runs  # the CPU wheel, not PyPI's CUDA build
    assert "[serve,metrics]" in runs  # the server and its Prometheus /metrics
    for word, rest in inst:
        if word == "COPY":
            assert (ROOT / rest.split()[0]).exists(), rest
    (entry,) = [json.loads(rest) for word, rest in inst if word == "ENTRYPOINT"]
    (cmd,) = [json.loads(rest) for word, rest in inst if word == "CMD"]
    assert entry[:2] == ["mmrank", "serve"] and "0.0.0.0" == entry[entry.index("--host") + 1]
    port = entry[entry.index("--port") + 1]
    assert ("EXPOSE", port) in inst
    assert any(word == "USER" and rest not in ("root", "0") for word, rest in inst)
    # The arguments are ones mmrank serve accepts (its own parser, no server started).
    from mmrank.server.cli import build_parser

    args = build_parser().parse_args(entry[2:] + cmd + shlex.split("--model jinaai/jina-reranker-m0"))
    assert (args.host, args.port) == ("0.0.0.0", int(port))
    # Only what the image copies is in the build context.
    assert (ROOT / ".dockerignore").read_text().splitlines()[1:3] == ["**", "!packages/mmrank/"]


# --- type checkers see the lazy names ---------------------------------------------------------------------

def test_lazy_public_names_are_imported_for_type_checkers():
    """``mmrank`` imports its scorers lazily (``__getattr__``); the ``TYPE_CHECKING`` block must import each
    of them from the same module, or mypy/pyright (and the API reference) see ``Any``."""
    tree = ast.parse((ROOT / "packages/mmrank/src/mmrank/__init__.py").read_text())
    lazy = next(ast.literal_eval(n.value) for n in tree.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "_LAZY")
    (block,) = [n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING"]
    typed = {a.name: (imp.module, a.asname) for imp in block.body if isinstance(imp, ast.ImportFrom)
             for a in imp.names}
    assert set(typed) == set(lazy)
    for name, (module, attr) in lazy.items():
        assert typed[name] == (module, name), name  # same module; `as name` re-exports explicitly
        assert attr == name


# --- every public parameter is documented -----------------------------------------------------------------

# The public API: what `mmrank` exports, and the adapters' public names.
ADAPTER_API = {
    "llama_index.postprocessor.mmrank_rerank": ["MMRankRerank"],
    "langchain_mmrank": ["MMRankRerank", "document_image"],
    "haystack_integrations.components.rankers.mmrank": ["MMRankRanker"],
}
_SEARCH_PATHS = [ROOT / "packages/mmrank/src", ROOT / "packages/llama-index-postprocessor-mmrank-rerank",
                 ROOT / "packages/langchain-mmrank", ROOT / "packages/mmrank-haystack/src"]
_OURS = ("mmrank", "langchain_mmrank", "llama_index.postprocessor.mmrank_rerank",
         "haystack_integrations.components.rankers.mmrank")
# Methods a framework's base class requires (documented there), and pydantic's hook.
_FRAMEWORK_METHODS = {"class_name", "model_post_init"}


def _public_api():
    import importlib

    objs = [(f"mmrank.{n}", getattr(mmrank, n)) for n in mmrank.__all__]
    for module, names in ADAPTER_API.items():
        mod = importlib.import_module(module)
        objs += [(f"{module}.{n}", getattr(mod, n)) for n in names]
    return [(name, obj) for name, obj in objs if inspect.isclass(obj) or inspect.isfunction(obj)]


# Docstring style per package, as the API reference renders it (Haystack's convention is Sphinx-style).
_STYLES = {"haystack_integrations": "sphinx"}


def _style(module: str) -> str:
    return _STYLES.get(module.split(".")[0], "google")


def _documented(doc: str | None, style: str = "google") -> set[str]:
    """Parameter names a docstring documents (Args / Keyword Args / Attributes, or Sphinx ``:param``),
    parsed by griffe, the parser the API reference uses."""
    import logging

    import griffe

    if not doc:
        return set()
    logging.getLogger("griffe").setLevel(logging.ERROR)
    names = set()
    for section in griffe.Docstring(inspect.cleandoc(doc), lineno=1).parse(style):
        if section.kind.value in ("parameters", "other parameters", "attributes"):
            names |= {p.name.lstrip("*") for p in section.value}
    return names


def _griffe_attribute_docs(path: str) -> set[str]:
    """Fields documented by an attribute docstring (``x: int = 0`` followed by a string), read statically."""
    import griffe

    module, _, cls = path.rpartition(".")
    try:
        obj = _griffe_module(module)[cls]
    except (KeyError, ImportError, griffe.AliasResolutionError):
        return set()
    if isinstance(obj, griffe.Alias):
        obj = obj.final_target
    return {name for name, m in obj.members.items() if m.is_attribute and m.docstring}


@functools.cache
def _griffe_module(module: str):
    import griffe

    return griffe.load(module, search_paths=[str(p) for p in _SEARCH_PATHS], resolve_aliases=False)


def _params(func) -> list[str]:
    if inspect.isclass(func):
        # pydantic models: the signature it builds from the fields; else the class's own __init__ (a
        # metaclass such as Haystack's component wraps the class call in *args/**kwargs).
        if not hasattr(func, "model_fields") and "__init__" in vars(func):
            func = func.__init__
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values() if p.name not in ("self", "cls")]


def _undocumented() -> list[str]:
    problems = []
    for path, obj in _public_api():
        style = _style(obj.__module__)
        if inspect.isfunction(obj):
            missing = [p for p in _params(obj) if p not in _documented(obj.__doc__, style)]
            if not (obj.__doc__ or "").strip():
                problems.append(f"{path}: no docstring")
            elif missing:
                problems.append(f"{path}: {missing}")
            continue
        defining = f"{obj.__module__}.{obj.__qualname__}"
        # The constructor's parameters are documented by the class that defines __init__ (this one, or the
        # base of ours it inherits it from), in its class or __init__ docstring, or as attribute docstrings.
        owner = next((c for c in obj.__mro__ if "__init__" in vars(c) and c.__module__.startswith(_OURS)), obj)
        init_doc = owner.__init__.__doc__ if "__init__" in vars(owner) else None
        class_doc = _documented(obj.__doc__, style) | _documented(owner.__doc__, style) | _documented(init_doc, style)
        class_doc |= _griffe_attribute_docs(defining)
        if not (obj.__doc__ or "").strip():
            problems.append(f"{path}: no docstring")
        if issubclass(obj, BaseException):
            continue
        # A pydantic field may be set by its alias (langchain-mmrank's ``api_key`` fills ``mmrank_api_key``).
        aliases = {f.alias: n for n, f in (getattr(obj, "model_fields", None) or {}).items() if f.alias}
        missing = [p for p in _params(obj) if p not in class_doc and aliases.get(p) not in class_doc]
        if missing:
            problems.append(f"{path}(): {missing}")
        for name, member in vars(obj).items():
            if name.startswith("_") or name in _FRAMEWORK_METHODS:
                continue
            func = member.__func__ if isinstance(member, classmethod | staticmethod) else member
            if isinstance(member, property):
                if not (member.__doc__ or "").strip():
                    problems.append(f"{path}.{name}: property without docstring")
                continue
            if not inspect.isfunction(func):
                continue
            doc = inspect.getdoc(getattr(obj, name))  # inherited from the base when not overridden
            if not (doc or "").strip():
                problems.append(f"{path}.{name}: no docstring")
                continue
            missing = [p for p in _params(func) if p not in _documented(doc, style)]
            if missing:
                problems.append(f"{path}.{name}: {missing}")
    return problems


def test_every_public_parameter_is_documented():
    problems = _undocumented()
    assert not problems, "undocumented:\n" + "\n".join(problems)
