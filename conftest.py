"""Root conftest: the whole suite runs offline, whatever the environment says."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``install`` (fresh virtual environments, minutes each) run only with MMRANK_SLOW_TESTS=1;
    otherwise they are deselected — reported as deselected, never as skipped or passed."""
    if os.environ.get("MMRANK_SLOW_TESTS") == "1":
        return
    chosen = [i for i in items if i.get_closest_marker("install") is None]
    if len(chosen) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("install") is not None])
        items[:] = chosen
