"""The four distributions as a user gets them from an index: each is built (sdist, then the wheel from the
sdist, as ``python -m build`` does) from a clean copy of its folder, checked with ``twine check --strict``,
and its metadata, licence, ``py.typed`` and long description asserted.

``test_each_package_installs_alone`` (opt-in: ``MMRANK_SLOW_TESTS=1``; 5-15 minutes per package on 2 busy
cores, mostly pip resolving) installs each package alone (an adapter with the core's wheel, the core with
its serve extra) into a fresh virtual environment and runs its README quick start there.
"""

from __future__ import annotations

import email.parser
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from pathlib import Path

import mmrank
import pytest
import trove_classifiers
from mmrank_testkit import quickstart
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
URL = "https://github.com/mmrank/mmrank"
# distribution -> (importable package folder inside the wheel, namespace folders that must not get an
# __init__.py, the framework distribution it requires)
PACKAGES = {
    "mmrank": ("mmrank", (), None),
    "llama-index-postprocessor-mmrank-rerank": ("llama_index/postprocessor/mmrank_rerank",
                                                ("llama_index", "llama_index/postprocessor"), "llama-index-core"),
    "langchain-mmrank": ("langchain_mmrank", (), "langchain-core"),
    "mmrank-haystack": ("haystack_integrations/components/rankers/mmrank",
                        ("haystack_integrations", "haystack_integrations/components",
                         "haystack_integrations/components/rankers"), "haystack-ai"),
}
ADAPTERS = [p for p in PACKAGES if p != "mmrank"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdists and wheels of all four packages, built without network from copies of their folders (so the
    working tree gets no build/ or egg-info litter)."""
    base = tmp_path_factory.mktemp("packaging")
    out = base / "dist"
    for name in PACKAGES:
        src = base / "src" / name
        shutil.copytree(ROOT / "packages" / name, src,
                        ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build", "dist", "tests"))
        proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"building {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


def _wheel(dist: Path, name: str) -> Path:
    (whl,) = dist.glob(f"{_norm(name)}-*.whl")
    return whl


def _sdist(dist: Path, name: str) -> Path:
    (sd,) = dist.glob(f"{_norm(name)}-*.tar.gz")
    return sd


def _metadata(whl: Path):
    with zipfile.ZipFile(whl) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(z.read(meta).decode("utf-8"))


def test_every_distribution_passes_twine_check_strict(dist):
    files = sorted(dist.iterdir())
    assert len(files) == 2 * len(PACKAGES), [f.name for f in files]
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == len(files), proc.stdout


@pytest.mark.parametrize("name", PACKAGES)
def test_wheel_metadata(dist, name):
    whl = _wheel(dist, name)
    meta = _metadata(whl)
    assert meta["Name"] == name
    # One version for all four, the one mmrank reports at run time.
    assert meta["Version"] == mmrank.__version__
    assert whl.name.startswith(f"{_norm(name)}-{mmrank.__version__}-py3-none-any")
    assert meta["Author"] == "mmrank developers"
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["Requires-Python"] == ">=3.11"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Documentation", "Repository", "Issues", "Changelog"}
    assert all(u.startswith(URL) for u in urls.values()), urls
    assert urls["Repository"] == URL
    assert len(meta["Keywords"].split(",")) >= 5
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers
    unknown = [c for c in classifiers if c not in trove_classifiers.classifiers]
    assert not unknown, f"PyPI rejects unknown classifiers: {unknown}"
    # The long description is the package's own README, as Markdown.
    assert meta["Description-Content-Type"] == "text/markdown"
    readme = (ROOT / "packages" / name / "README.md").read_text(encoding="utf-8")
    assert meta.get_payload().strip() == readme.strip()


@pytest.mark.parametrize("name", PACKAGES)
def test_wheel_ships_py_typed_and_the_licence_and_no_namespace_init(dist, name):
    leaf, namespaces, _ = PACKAGES[name]
    with zipfile.ZipFile(_wheel(dist, name)) as z:
        names = set(z.namelist())
        assert f"{leaf}/py.typed" in names
        assert f"{leaf}/__init__.py" in names
        (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert z.read(licence) == (ROOT / "LICENSE").read_bytes()
        # An __init__.py in a shared namespace would shadow every other integration installed under it.
        for ns in namespaces:
            assert f"{ns}/__init__.py" not in names
        # Only our own code: no tests, no build litter.
        assert not [n for n in names if "/tests/" in n or n.startswith("tests/") or ".egg-info" in n]


@pytest.mark.parametrize("name", PACKAGES)
def test_sdist_ships_licence_readme_and_py_typed(dist, name):
    leaf, _, _ = PACKAGES[name]
    with tarfile.open(_sdist(dist, name)) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "pyproject.toml", "PKG-INFO"} <= names
    assert any(n.endswith(f"{leaf}/py.typed") for n in names)


@pytest.mark.parametrize("name", ADAPTERS)
def test_adapter_requires_the_same_minor_release_of_mmrank_and_bounds_its_framework(dist, name):
    reqs = [Requirement(r) for r in _metadata(_wheel(dist, name)).get_all("Requires-Dist")]
    (core,) = [r for r in reqs if r.name == "mmrank"]
    v = Version(mmrank.__version__)
    assert core.specifier.contains(v)
    # Compatible release: any patch of this minor version, nothing of the next or the previous one.
    assert core.specifier.contains(f"{v.major}.{v.minor}.99")
    assert not core.specifier.contains(f"{v.major}.{v.minor + 1}.0")
    if v.minor:
        assert not core.specifier.contains(f"{v.major}.{v.minor - 1}.99")
    framework = PACKAGES[name][2]
    (fw,) = [r for r in reqs if r.name == framework and not r.marker]
    assert any(s.operator == "<" for s in fw.specifier), f"{framework} has no upper bound: {fw}"


def test_versions_agree_across_the_sources():
    """mmrank/_version.py is the one place the version is written: the core's pyproject reads it, and each
    adapter's own version and its mmrank range follow it."""
    core = tomllib.loads((ROOT / "packages/mmrank/pyproject.toml").read_text())
    assert "version" in core["project"]["dynamic"]
    assert core["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mmrank._version.__version__"}
    v = Version(mmrank.__version__)
    for name in ADAPTERS:
        project = tomllib.loads((ROOT / "packages" / name / "pyproject.toml").read_text())["project"]
        assert project["version"] == mmrank.__version__, name
        (core_req,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "mmrank"]
        assert str(core_req.specifier) == f"<{v.major}.{v.minor + 1},>={v.major}.{v.minor}", (name, core_req)


def test_licence_files_are_the_apache_2_text():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    for name in PACKAGES:
        assert (ROOT / "packages" / name / "LICENSE").read_text() == text, name


@pytest.mark.parametrize("name", PACKAGES)
def test_readme_is_a_standalone_pypi_page(name):
    text = quickstart.readme(name)
    # Installed by name from an index, never from the monorepo.
    assert "pip install -e" not in text
    assert re.search(rf"pip install \"?{re.escape(name)}\b", text), f"{name}: no `pip install {name}`"
    # Relative links break on PyPI.
    targets = re.findall(r"\]\(([^)]+)\)", text)
    relative = [t for t in targets if not t.startswith(("https://", "http://", "#"))]
    assert not relative, f"{name}: relative links {relative}"
    repo_links = [t for t in re.findall(r"https://github\.com/[^\s)>`]+", text)]
    assert repo_links and all(t.startswith(URL) for t in repo_links), repo_links
    # The default model's licence is stated.
    assert "CC-BY-NC-4.0" in text and "non-commercial" in text
    assert "## Quick start" in text
    compile(quickstart.quickstart_code(name), f"{name}/README.md", "exec")


# --- opt-in: each adapter installed alone into a fresh virtual environment --------------------------------

_TORCH = "2.13.0"  # the CPU build pinned in requirements-dev.txt (pip finds it locally)


@pytest.mark.slow
@pytest.mark.install  # deselected unless MMRANK_SLOW_TESTS=1 (root conftest.py)
@pytest.mark.parametrize("name", PACKAGES)
def test_each_package_installs_alone(dist, name, tmp_path):
    """``pip install <adapter wheel> <core wheel>`` (for the core: ``<core wheel>[serve]``) into a fresh venv
    resolves every dependency from the index (nothing from the development environment), passes
    ``pip check``, ships ``py.typed`` where type checkers look, leaves the other frameworks out, and runs the
    README quick start unmodified."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    (tmp_path / "constraints.txt").write_text(f"torch=={_TORCH}\n")
    started = time.monotonic()
    wheels = [f"{_wheel(dist, 'mmrank')}[serve]"] if name == "mmrank" else [str(_wheel(dist, name)),
                                                                            str(_wheel(dist, "mmrank"))]
    proc = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "-c", str(tmp_path / "constraints.txt"),
                           *wheels], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    install_s = time.monotonic() - started
    check = subprocess.run([str(py), "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr

    leaf = PACKAGES[name][0].replace("/", ".")
    others = [PACKAGES[o][2] for o in ADAPTERS if o != name]
    if name == "mmrank":
        # the console script and the serve extra
        cli = subprocess.run([str(venv / "bin" / "mmrank"), "serve", "--help"], capture_output=True, text=True,
                             timeout=300)
        assert cli.returncode == 0 and "--host" in cli.stdout, cli.stdout + cli.stderr
        extra = subprocess.run([str(py), "-c", "import fastapi, uvicorn, pydantic"], capture_output=True, timeout=300)
        assert extra.returncode == 0, extra.stderr
    probe = (
        "import importlib.metadata as md, importlib.resources as r, json, sys\n"
        f"import {leaf}\n"
        f"typed = r.files('{leaf}').joinpath('py.typed').is_file() and r.files('mmrank').joinpath('py.typed').is_file()\n"
        "def has(d):\n"
        "    try:\n        md.version(d); return True\n"
        "    except md.PackageNotFoundError:\n        return False\n"
        f"print(json.dumps({{'typed': typed, 'torch': md.version('torch'), 'mmrank': md.version('mmrank'),"
        f" 'file': {leaf}.__file__, 'others': [d for d in {others!r} if has(d)]}}))\n"
    )
    info = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert info.returncode == 0, info.stderr[-3000:]
    got = json.loads(info.stdout.strip().splitlines()[-1])
    assert got["typed"]
    assert got["torch"].startswith(_TORCH)
    assert got["mmrank"] == mmrank.__version__
    assert got["file"].startswith(str(venv)), got["file"]  # the installed copy, not the working tree
    assert got["others"] == [], f"{name} pulled other frameworks: {got['others']}"

    cache = quickstart.fake_hub_cache(tmp_path / "hub")
    quickstart.write_images(tmp_path)
    (tmp_path / "quickstart.py").write_text(quickstart.quickstart_code(name))
    env = quickstart.offline_env(cache)
    env.pop("PYTHONPATH", None)
    run = subprocess.run([str(py), "quickstart.py"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = [ln.split() for ln in run.stdout.strip().splitlines()]
    ids = {ln[-1] for ln in lines} if name == "mmrank" else {ln[0] for ln in lines}
    assert len(lines) == 2 and ids <= ({"None", "p3", "fig2"} if name == "mmrank" else {"berlin", "paris", "map"})
    assert "ranked last" not in run.stderr, run.stderr  # the image was read
    print(f"{name}: install {install_s:.0f} s, total {time.monotonic() - started:.0f} s")
