"""The real service under load: 8 concurrent clients vs one client at a time.

Starts ``python -m helpers.serving`` on the tiny base (``data/models/tiny-gpt2-base``;
skipped with a message when it is missing) on 127.0.0.1, sends the same 48 greedy
completion requests once one after another and once from 8 threads, and reports errors
(must be 0), p50/p95 latency and requests per second. The model is driven by one thread,
so concurrency cannot multiply throughput: it should keep it (ratio near 1) while each
request waits its turn (latency grows with the queue). Stops the server at the end.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from bench import Comparison
from helpers.models import tiny_base_dir
from helpers.serving import start_background

NUM_REQUESTS = 48
CLIENTS = 8
MAX_TOKENS = 24
STARTUP_S = 180
PROMPTS = (
    "It is a truth universally acknowledged, that",
    "Anne Elliot had been",
    "The family of Dashwood had long been settled in Sussex.",
    "Emma Woodhouse, handsome, clever, and rich,",
    "No one who had ever seen Catherine Morland in her infancy",
    "About thirty years ago, Miss Maria Ward",
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _phase(url: str, workers: int, count: int = NUM_REQUESTS) -> tuple[list[float], int, float]:
    """Send ``count`` requests with ``workers`` threads: (latencies of answered ones, errors, wall seconds)."""
    local = threading.local()

    def one(i: int) -> float | None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=120)
        body = {"model": "tiny", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": MAX_TOKENS, "temperature": 0}
        start = time.perf_counter()
        try:
            response = local.client.post("/v1/completions", json=body)
        except httpx.HTTPError:
            return None
        return time.perf_counter() - start if response.status_code == 200 else None

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, range(count)))
    wall = time.perf_counter() - start
    latencies = [r for r in results if r is not None]
    return latencies, len(results) - len(latencies), wall


def run() -> list[Comparison]:
    if not (tiny_base_dir() / "config.json").is_file():
        print(f"  skipping: {tiny_base_dir()} does not exist yet (scripts/pretrain_tiny_base.py writes it)")
        return []
    server = start_background(tiny_base_dir(), extra_args=["--model-id", "tiny", "--log-level", "warning"],
                              startup_timeout=STARTUP_S)
    url = server.url
    try:
        _phase(url, 1, count=4)  # warm-up: the first requests pay for lazy initialisation
        sequential, seq_errors, seq_wall = _phase(url, 1)
        concurrent, conc_errors, conc_wall = _phase(url, CLIENTS)
    finally:
        exit_code = server.stop()
    if not sequential or not concurrent:
        raise RuntimeError(f"no request was answered (errors: {seq_errors} sequential, {conc_errors} concurrent)")
    print(f"  errors: sequential {seq_errors}, concurrent {conc_errors} (of {NUM_REQUESTS} each); "
          f"server exit code {exit_code}")
    ms = 1000.0
    return [
        Comparison("serving: requests answered 200", "requests", "sent", 2 * NUM_REQUESTS, "answered",
                   len(sequential) + len(concurrent), "= 1"),
        Comparison(f"serving: throughput, {CLIENTS} clients vs 1", "requests/s", "sequential",
                   len(sequential) / seq_wall, f"{CLIENTS} concurrent", len(concurrent) / conc_wall, ">= 0.9"),
        Comparison("serving: p50 latency", "ms", "sequential", _percentile(sequential, 0.5) * ms,
                   f"{CLIENTS} concurrent", _percentile(concurrent, 0.5) * ms),
        Comparison("serving: p95 latency", "ms", "sequential", _percentile(sequential, 0.95) * ms,
                   f"{CLIENTS} concurrent", _percentile(concurrent, 0.95) * ms),
    ]
