"""The monorepo's layering, read from the sources: the core imports no framework and declares every
third-party package it imports; each adapter imports only the standard library, its framework and mmrank,
and depends on nothing else."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ("llama_index", "langchain", "langchain_core", "langchain_classic", "haystack", "haystack_integrations")
# Import name -> distribution name where they differ.
DISTRIBUTION = {"PIL": "pillow", "yaml": "pyyaml", "llama_index": "llama-index-core", "langchain_core": "langchain-core",
                "langchain_classic": "langchain-classic", "haystack": "haystack-ai"}

ADAPTERS = {
    # package folder: (source folder, own import prefix, allowed third-party imports, framework distributions)
    "llama-index-postprocessor-mmrank-rerank": ("llama_index", "llama_index.postprocessor.mmrank_rerank",
                                                {"llama_index"}, {"llama-index-core"}),
    # pydantic is LangChain's model layer (langchain-core depends on it); its own integrations import it.
    "langchain-mmrank": ("langchain_mmrank", "langchain_mmrank", {"langchain_core", "pydantic"},
                         {"langchain-core", "langchain-classic"}),
    "mmrank-haystack": ("src/haystack_integrations", "haystack_integrations.components.rankers.mmrank",
                        {"haystack"}, {"haystack-ai"}),
}


def _imports(folder: Path) -> dict[str, set[str]]:
    """Absolute imports (full dotted names) under ``folder`` → the files that make them."""
    found: dict[str, set[str]] = {}
    for f in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name, set()).add(str(f.relative_to(ROOT)))
    return found


def _third_party(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    return {n: fs for n, fs in imports.items() if n.split(".")[0] not in sys.stdlib_module_names
            and n.split(".")[0] != "__future__"}


def _declared(pyproject: Path) -> set[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_the_core_imports_no_framework_and_declares_what_it_imports():
    used = _third_party(_imports(ROOT / "packages/mmrank/src/mmrank"))
    tops = {n.split(".")[0] for n in used} - {"mmrank"}
    frameworks = {n: fs for n, fs in used.items() if n.split(".")[0] in FRAMEWORKS}
    assert not frameworks, f"the core imports frameworks: {frameworks}"
    declared = _declared(ROOT / "packages/mmrank/pyproject.toml")
    undeclared = {t for t in tops if DISTRIBUTION.get(t, t).lower().replace("_", "-") not in declared}
    assert not undeclared, f"imported by the core but not in its pyproject: {undeclared}"
    assert not declared & {"llama-index-core", "langchain-core", "haystack-ai"}


@pytest.mark.parametrize("package", ADAPTERS)
def test_each_adapter_imports_only_its_framework_and_the_core(package):
    source, own, allowed, framework_dists = ADAPTERS[package]
    used = _third_party(_imports(ROOT / "packages" / package / source))
    wrong = {n: fs for n, fs in used.items()
             if not (n == "mmrank" or n.startswith("mmrank.") or n == own or n.startswith(own + ".")
                     or n.split(".")[0] in allowed)}
    assert not wrong, f"{package} imports outside its framework and mmrank: {wrong}"
    # Not another adapter's framework either (haystack_integrations is the namespace of our own ranker).
    other = {n for n in used if n.split(".")[0] in FRAMEWORKS and n.split(".")[0] not in allowed
             and not n.startswith(own)}
    assert not other
    # Every package it imports is declared (a user installing the adapter alone gets it), and it declares
    # nothing beyond its framework, mmrank and what it imports.
    declared = _declared(ROOT / "packages" / package / "pyproject.toml")
    imported = {_distribution(n) for n in used if not (n == own or n.startswith(own + "."))}
    assert "mmrank" in imported
    assert not imported - declared, f"{package} imports but does not declare {imported - declared}"
    assert declared <= framework_dists | imported, f"{package} declares unused {declared - framework_dists - imported}"


def _distribution(import_name: str) -> str:
    top = import_name.split(".")[0]
    return DISTRIBUTION.get(top, top).lower().replace("_", "-")


# ---------------------------------------------------------------------------------------- scorers' seam
SCORERS = ROOT / "packages/mmrank/src/mmrank/scorers"
# Shipped code and the shared test kit use the scorers only through their public seam (prepare, rank_documents
# / score_documents, finish). Tests and benchmarks are white-box tools and may look inside a scorer.
LIBRARY = [ROOT / "packages/mmrank/src/mmrank", ROOT / "shared/mmrank_testkit",
           *(ROOT / "packages" / package / source for package, (source, *_) in ADAPTERS.items())]


def _scorer_private_members() -> dict[str, str]:
    """Private names (``_x``, not dunders) that the scorer classes define or assign on ``self`` → a class."""
    trees = [ast.parse(f.read_text(), filename=str(f)) for f in sorted(SCORERS.glob("*.py"))]
    classes = [n for t in trees for n in ast.walk(t) if isinstance(n, ast.ClassDef)]
    scorers = {"Reranker"}
    changed = True
    while changed:  # every class that derives from Reranker, directly or not
        changed = False
        for c in classes:
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", None) for b in c.bases}
            if c.name not in scorers and bases & scorers:
                scorers.add(c.name)
                changed = True
    members: dict[str, str] = {}
    for c in classes:
        if c.name not in scorers:
            continue
        for node in ast.walk(c):
            name = None
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node in c.body:
                name = node.name
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id == "self"):
                name = node.attr
            if name and name.startswith("_") and not name.startswith("__"):
                members.setdefault(name, c.name)
    return members


def _is_own(value: ast.expr) -> bool:
    """``self.x``, ``cls.x`` or ``super().x``: a class using its own members."""
    if isinstance(value, ast.Name):
        return value.id in ("self", "cls")
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super"


def _private_uses(folder: Path, members: dict[str, str]) -> list[str]:
    found = []
    for f in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, ast.Attribute) and node.attr in members and not _is_own(node.value):
                found.append(f"{f.relative_to(ROOT)}:{node.lineno}: .{node.attr} (private to "
                             f"{members[node.attr]})")
    return found


def test_no_module_uses_a_scorers_private_members():
    members = _scorer_private_members()
    # The hooks the seam wraps must be seen, or this test checks nothing.
    assert {"_rank_documents", "_score_documents", "_check_query", "_prepare_documents", "_model_lock"} <= set(members)
    found = [use for folder in LIBRARY for use in _private_uses(folder, members)]
    assert not found, ("use the scorer's public seam (prepare / rank_documents / score_documents / finish) "
                       "instead of its private members:\n" + "\n".join(found))


def test_the_list_of_modes_is_written_once():
    """``mmrank.scorers.factory.Mode`` is the one list of scorer kinds; the CLI, the server and the adapters
    read it (adding a mode is a one-line change there, plus its branch in ``load_reranker``)."""
    places = []
    for folder in LIBRARY:
        for f in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
                items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else []
                words = {e.value for e in items if isinstance(e, ast.Constant)}
                if {"pointwise", "remote"} <= words:
                    places.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert len(places) == 1 and places[0].startswith("packages/mmrank/src/mmrank/scorers/factory.py:"), places
