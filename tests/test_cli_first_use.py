"""First use without the hub: the model error appears within seconds (not after ~30 s of retries), says
`hf download`, a cached model still loads when the hub is unreachable, and the default model's licence is in
the help. The hub is stood in for by a closed local port and by a port that accepts but never answers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

from mmrank_testkit import tiny_model_dir

SCRIPT = textwrap.dedent("""
    import json, sys, time
    from mmrank import JinaRerankerM0, ModelLoadError
    out = {}
    for name in sys.argv[1:]:
        t0 = time.monotonic()
        try:
            r = JinaRerankerM0(name, device="cpu")
            out[name] = {"ok": True, "scores": r.score("fox", ["the quick brown fox"])}
        except ModelLoadError as exc:
            out[name] = {"ok": False, "error": str(exc)}
        out[name]["seconds"] = time.monotonic() - t0
    print(json.dumps(out))
""")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hub_cache_with(home, repo: str, src) -> None:
    """Lay out ``src`` in a Hugging Face cache under ``home`` as the hub client would have downloaded it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = home / "hub" / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    shutil.copytree(src, snap)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)


def _load(models, endpoint, home, extra_env=None):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update({"HF_ENDPOINT": endpoint, "HF_HOME": str(home), **(extra_env or {})})
    res = subprocess.run([sys.executable, "-c", SCRIPT, *models], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_unreachable_hub_fails_fast_and_cached_models_still_load(tmp_path):
    _hub_cache_with(tmp_path, "cached-org/tiny-jina", tiny_model_dir("jina"))
    out = _load(["jinaai/jina-reranker-m0", "cached-org/tiny-jina"], f"http://127.0.0.1:{_closed_port()}",
                tmp_path)
    missing = out["jinaai/jina-reranker-m0"]
    assert not missing["ok"] and missing["seconds"] < 8, missing  # was ~38 s of retries
    err = missing["error"]
    assert "hf download jinaai/jina-reranker-m0 --local-dir ./jina-reranker-m0" in err
    assert "could not be reached" in err and "Connection refused" in err and "huggingface-cli" not in err
    cached = out["cached-org/tiny-jina"]
    assert cached["ok"] and 0.0 <= cached["scores"][0] <= 1.0 and cached["seconds"] < 8, cached


def test_a_hub_that_never_answers_is_given_up_on_after_the_probe_timeout(tmp_path):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        out = _load(["jinaai/jina-reranker-m0"], f"http://127.0.0.1:{port}", tmp_path,
                    {"MMRANK_HUB_PROBE_TIMEOUT": "1.5"})
    res = out["jinaai/jina-reranker-m0"]
    assert not res["ok"] and res["seconds"] < 6, res
    assert "could not be reached" in res["error"] and "Timeout" in res["error"], res["error"]
    assert "hf download" in res["error"]
