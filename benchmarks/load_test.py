"""Load test for ``mmrank serve``: R requests from C concurrent clients, every response checked.

    # against a running server
    python benchmarks/load_test.py --url http://127.0.0.1:8080 --requests 200 --concurrency 16
    # or start one (tiny test model, or any --model) on a free loopback port, test it, stop it
    python benchmarks/load_test.py --start --model /path/to/model --device cpu

Each request carries ``--documents`` text documents drawn from a fixed pool; the check is strict: HTTP 200,
one result per document, every index exactly once, each echoed document equal to the one sent at that index
(nothing lost, duplicated or swapped between concurrent requests), every score a number. The report (JSON)
gives requests/s, documents/s and latency percentiles; ``--queries shared`` (default) sends the same query
in every request, which lets the server merge concurrent requests into shared model calls; ``distinct``
rotates through 7 queries.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

WORDS = ("panda bamboo forest river mountain city market stock bond engine reranker vision page chart table "
         "photo query passage answer model token image text document search ranking relevance").split()
QUERIES = ["what do pandas eat?", "stock market news", "how does a reranker work?", "mountain rivers",
           "charts and tables in a page", "city markets", "vision language models"]


def pool_text(k: int) -> str:
    return f"passage {k}: " + " ".join(WORDS[(k * 7 + j * 3) % len(WORDS)] for j in range(6 + k % 9))


def make_body(i: int, documents: int, queries: str = "shared") -> dict[str, Any]:
    query = QUERIES[0] if queries == "shared" else QUERIES[i % len(QUERIES)]
    docs = [pool_text((i * 5 + j) % 97) for j in range(documents)]
    return {"query": query, "documents": docs, "return_documents": True}


def check(body: dict[str, Any], resp: httpx.Response) -> tuple[str | None, int]:
    """(error or None, documents lost) for one response."""
    n = len(body["documents"])
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}: {resp.text[:200]}", n
    try:
        results = resp.json()["results"]
    except (ValueError, KeyError):
        return "response without results", n
    seen = [r.get("index") for r in results]
    lost = n - len(set(seen) & set(range(n)))
    if sorted(seen) != list(range(n)):
        return f"indices {sorted(seen)[:12]} for {n} documents", lost
    for r in results:
        if not isinstance(r.get("relevance_score"), float):
            return f"document {r['index']} has score {r.get('relevance_score')!r}", lost
        if (r.get("document") or {}).get("text") != body["documents"][r["index"]]:
            return f"document {r['index']} came back as another document", lost
    scores = [r["relevance_score"] for r in results]
    if scores != sorted(scores, reverse=True):
        return "results are not sorted by score", lost
    return None, lost


async def run_load(url: str, *, requests: int = 200, concurrency: int = 16, documents: int = 8,
                   queries: str = "shared", api_key: str | None = None, timeout: float = 120.0,
                   keep_responses: bool = False) -> dict[str, Any]:
    """Send ``requests`` rerank requests from ``concurrency`` clients to ``url`` (the server's base URL)."""
    endpoint = url.rstrip("/") + "/v1/rerank"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    latencies: list[float] = []
    errors: list[str] = []
    lost = 0
    kept: dict[int, tuple[dict, dict]] = {}
    next_id = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, headers=headers, limits=limits) as client:

        async def worker() -> None:
            nonlocal lost
            for i in next_id:
                body = make_body(i, documents, queries)
                t0 = time.perf_counter()
                try:
                    resp = await client.post(endpoint, json=body)
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    lost += documents
                    continue
                latencies.append(time.perf_counter() - t0)
                err, n_lost = check(body, resp)
                lost += n_lost
                if err:
                    errors.append(err)
                elif keep_responses:
                    kept[i] = (body, resp.json())

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        # the server's counters (model calls, merged requests): /v1/stats, or /health on servers before it
        stats = await client.get(url.rstrip("/") + "/v1/stats")
        health = (stats if stats.status_code == 200 else await client.get(url.rstrip("/") + "/health")).json()
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return round(1000 * lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))], 2) if lat else float("nan")

    out = {"requests": requests, "concurrency": concurrency, "documents_per_request": documents, "queries": queries,
           "ok": requests - len(errors), "errors": len(errors), "lost_documents": lost, "wall_s": round(wall, 3),
           "requests_per_s": round(requests / wall, 1), "documents_per_s": round(requests * documents / wall, 1),
           "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": pct(100),
           "error_samples": errors[:5], "server": health}
    if keep_responses:
        out["responses"] = kept
    return out


class ServerProcess:
    """``python -m mmrank.server`` on 127.0.0.1 and a free port, for tests and this benchmark.

    ``with ServerProcess(["--model", path, "--device", "cpu"]) as srv: srv.url`` — waits until ``/health``
    answers; stops the process (terminate, then kill) on exit. The server's output goes to ``srv.log_path``.
    """

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, startup_timeout: float = 120.0):
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self._log = tempfile.NamedTemporaryFile(prefix="mmrank-serve-", suffix=".log", delete=False)
        self.log_path = Path(self._log.name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "mmrank.server", "--host", "127.0.0.1", "--port", "0",
               "--log-level", "warning", "--no-access-log", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mmrank serve exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if not self.url:
                m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.log())
                if m:
                    self.url = m.group(1)
            if self.url:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                        return self
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise TimeoutError(f"mmrank serve did not become healthy in {self.startup_timeout}s:\n{self.log()[-3000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL (loopback)")
    p.add_argument("--start", action="store_true", help="start a server (python -m mmrank.server) for the test")
    p.add_argument("--model", default=None, help="with --start: model folder (default: the tiny test model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--server-arg", action="append", default=[], help="with --start: extra argument for the server")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--documents", type=int, default=8)
    p.add_argument("--queries", choices=["shared", "distinct"], default="shared")
    p.add_argument("--api-key", default=os.environ.get("MMRANK_SERVE_API_KEY"))
    args = p.parse_args(argv)

    async def go(url: str) -> dict[str, Any]:
        return await run_load(url, requests=args.requests, concurrency=args.concurrency, documents=args.documents,
                              queries=args.queries, api_key=args.api_key)

    if args.start:
        model = args.model
        if model is None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
            from mmrank_testkit import tiny_model_dir

            model = str(tiny_model_dir("jina"))
        with ServerProcess(["--model", model, "--device", args.device, *args.server_arg]) as srv:
            report = asyncio.run(go(srv.url))
    else:
        report = asyncio.run(go(args.url))
    print(json.dumps(report, indent=2))
    return 0 if report["errors"] == 0 and report["lost_documents"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
