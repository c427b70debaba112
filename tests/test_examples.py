"""Every script in examples/ runs to completion on the tiny offline model.

The scripts run as ``__main__`` (``runpy``, with the examples folder first on ``sys.path`` as for
``python examples/x.py``) inside one fresh interpreter, so torch and transformers are imported once instead
of once per script; each script's output and traceback are reported separately.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {
    "quickstart.py": 4,  # how many ranked lines each prints
    "llamaindex_rerank.py": 3,
    "langchain_rerank.py": 3,
    "haystack_rerank.py": 3,
}
# Also the no-download path scripts/demo.sh offers: random weights of the (tiny) architecture.
DUMMY_RUN = ("quickstart.py", ["--model", "tiny", "--load-format", "dummy"])

RUNNER = r"""
import contextlib, io, json, runpy, sys, traceback
folder, model, runs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path.insert(0, folder)
results = {}
for key, name, extra in runs:
    buf = io.StringIO()
    sys.argv = [f"{folder}/{name}", "--model", model, "--device", "cpu", *extra]
    ok = True
    with contextlib.redirect_stdout(buf):
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except BaseException:
            ok = False
            buf.write(traceback.format_exc())
    results[key] = {"ok": ok, "out": buf.getvalue()}
print("@@RESULTS@@" + json.dumps(results))
"""


@pytest.mark.slow
def test_examples_run(jina_dir, tmp_path):
    env = {**os.environ, "HAYSTACK_TELEMETRY_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    runs = [[name, name, []] for name in EXAMPLES] + [["dummy", DUMMY_RUN[0], DUMMY_RUN[1]]]
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(ROOT / "examples"), str(jina_dir), json.dumps(runs)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "@@RESULTS@@" in proc.stdout, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("@@RESULTS@@", 1)[1])
    failures = []
    for name, want in [*EXAMPLES.items(), ("dummy", EXAMPLES[DUMMY_RUN[0]])]:
        out = results[name]["out"]
        ranked = re.findall(r"^\d+\. score=0\.\d{4} ", out, flags=re.M)
        if not results[name]["ok"] or len(ranked) != want:
            failures.append(f"{name}: ok={results[name]['ok']}, {len(ranked)} ranked lines\n{out[-3000:]}")
    assert not failures, "\n\n".join(failures)


def test_example_scripts_default_to_the_real_model():
    assert 'os.environ.get("MMRANK_MODEL", "jinaai/jina-reranker-m0")' in (ROOT / "examples" / "_sample_data.py").read_text()
    for name in EXAMPLES:
        text = (ROOT / "examples" / name).read_text()
        assert "parse_args(" in text and 'if __name__ == "__main__":' in text, name


@pytest.mark.parametrize("name", ["quickstart.py", "haystack_rerank.py"])  # haystack: through its Pipeline
def test_an_unloadable_model_ends_the_example_with_the_fix_not_a_traceback(name, tmp_path):
    env = {**os.environ, "HAYSTACK_TELEMETRY_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    missing = tmp_path / "no-such-copy"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), "--model", str(missing), "--device", "cpu"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "\nerror: model path" in "\n" + proc.stderr and "config.json" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
