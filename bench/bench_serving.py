"""The real service under load, with continuous batching on and off, side by side in one run.

Starts ``python -m helpers.serving`` on the tiny base (``data/models/tiny-gpt2-base``;
skipped with a message when it is missing) on 127.0.0.1, once with the default
``--max-batch-size`` and once with ``--max-batch-size 1`` (one request at a time, the old
service). Against each, 1/2/4/8/16/32 concurrent clients each stream greedy completions of
64 new tokens, in turn (at least 8 requests per level, at least 2 per client); the levels run
in three rounds and each level's least disturbed run (most tokens/s) counts, as ``bench.best_of``
does for times.
Prints per level: aggregate tokens/s, p50/p95 latency, time to first token and time per output
token (p50), errors. Then, on the batching server only:
abandoned requests (clients that leave mid-way, streaming and not: tokens generated after
they left, per request, from ``/metrics``) and the server's RSS after three rounds of 16
concurrent requests. Every percentile is ``numpy.percentile``. And the logits product the engine
speeds up by storing the output weight transposed (``lay_out_output_projection``), timed both ways.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
import psutil
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from bench import Comparison, best_of
from helpers.models import tiny_base_dir
from helpers.serving import ServingLimits, start_background
from helpers.serving.load_generator import LoadResult, run_load

LEVELS = (1, 2, 4, 8, 16, 32)
REPEATS = 3  # runs per level; the one with the most tokens/s counts (the machine's other work only slows)
MAX_TOKENS = 64
STARTUP_S = 180
ABANDONED = 8  # requests of each kind (streaming, not) whose client leaves
PROMPTS = (
    "It is a truth universally acknowledged, that",
    "Anne Elliot had been",
    "The family of Dashwood had long been settled in Sussex.",
    "Emma Woodhouse, handsome, clever, and rich,",
)
BODY = {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS, "temperature": 0}


def _per_client(clients: int) -> int:
    return max(2, 8 // clients)


def _levels(url: str) -> dict[int, LoadResult]:
    run_load(url, BODY, 2, requests_per_client=1)  # warm-up: the first requests pay for lazy initialisation
    runs: dict[int, list[LoadResult]] = {clients: [] for clients in LEVELS}
    for _ in range(REPEATS):  # round after round over the levels: a slow spell of the machine hits them alike
        for clients in LEVELS:
            runs[clients].append(run_load(url, BODY, clients, _per_client(clients)))
    return {clients: max(results, key=lambda r: r.tokens_per_s) for clients, results in runs.items()}


def _ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def _print_table(results: dict[str, dict[int, LoadResult]]) -> None:
    print(f"  {'batching':<9}{'clients':>8}{'tokens/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'TTFT p50':>10}"
          f"{'TPOT p50':>10}{'errors':>8}")
    for mode, levels in results.items():
        for clients, r in levels.items():
            totals = [t.total_s for t in r.timings]
            print(f"  {mode:<9}{clients:>8}{r.tokens_per_s:>10.0f}{_ms(totals, 50):>9.0f}{_ms(totals, 95):>9.0f}"
                  f"{_ms([t.first_token_s for t in r.timings], 50):>10.0f}"
                  f"{_ms([t.per_output_token_s for t in r.timings], 50):>10.1f}{len(r.errors):>8}")
    for mode, levels in results.items():
        for clients, r in levels.items():
            if r.errors:
                print(f"  {mode}, {clients} clients, first error: {r.errors[0]}")


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=60).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _abandon(url: str) -> tuple[float, float]:
    """Clients that leave after a few tokens: (tokens generated after they left, per request; generated per request)."""
    body = {**BODY, "max_tokens": 200}

    def leave_a_stream(_: int) -> None:
        with httpx.Client(timeout=60) as client, client.stream("POST", f"{url}/v1/completions",
                                                               json={**body, "stream": True}) as response:
            for i, _line in enumerate(response.iter_lines()):
                if i >= 6:  # three events and the blank lines between them
                    return

    def leave_a_request(_: int) -> None:
        with contextlib.suppress(httpx.TimeoutException):  # the client gives up and closes the connection
            httpx.post(f"{url}/v1/completions", json=body, timeout=0.3)

    before_tokens = _metric(url, "course_generated_tokens_total")
    threads = [threading.Thread(target=f, args=(i,)) for f in (leave_a_stream, leave_a_request) for i in
               range(ABANDONED)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/health", timeout=60).json()["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    cancelled = _metric(url, "course_cancelled_requests_total")
    abandoned = _metric(url, "course_abandoned_tokens_total")
    generated = _metric(url, "course_generated_tokens_total") - before_tokens
    print(f"  abandoned: {cancelled:.0f} of {2 * ABANDONED} requests cancelled; {abandoned:.0f} tokens generated "
          f"after their clients left; {generated / (2 * ABANDONED):.1f} tokens generated per request (max_tokens 200)")
    return abandoned / max(cancelled, 1), generated / (2 * ABANDONED)


def _rss_rounds(url: str, pid: int) -> list[float]:
    rss = []
    for _ in range(3):
        result = run_load(url, BODY, 16, requests_per_client=1)
        assert not result.errors, result.errors[:3]
        rss.append(psutil.Process(pid).memory_info().rss / 2**20)
    print("  server RSS after three rounds of 16 concurrent requests: " + ", ".join(f"{r:.1f}" for r in rss) + " MiB")
    return rss


def _head_layout() -> Comparison:
    """The logits product of a decode step of 8 rows, with the tiny base's output weight laid out as
    transformers keeps it (vocab, hidden) and as the engine stores it (hidden, vocab)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir(), dtype=torch.float32).eval()
    weight = model.get_output_embeddings().weight.detach()
    transposed = weight.t().contiguous().t()  # the same values and shape; (hidden, vocab) in memory
    hidden = torch.randn(8, 1, weight.shape[1])

    def products(w: torch.Tensor) -> Callable[[], None]:
        return lambda: [F.linear(hidden, w) for _ in range(200)]

    with torch.inference_mode():
        as_kept, as_stored = best_of(products(weight), 5), best_of(products(transposed), 5)
    return Comparison("serving: logits product, 8 rows, (vocab, hidden) vs (hidden, vocab) layout", "ms",
                      "vocab, hidden", as_kept * 1000 / 200, "hidden, vocab", as_stored * 1000 / 200)


def run() -> list[Comparison]:
    if not (tiny_base_dir() / "config.json").is_file():
        print(f"  skipping: {tiny_base_dir()} does not exist yet (python -m tools.pretrain_tiny_base writes it)")
        return []
    results, extra = {}, {}
    default = ServingLimits().max_batch_size
    for mode, batch in (("on", default), ("off", 1)):
        server = start_background(tiny_base_dir(), extra_args=["--model-id", "tiny", "--log-level", "warning",
                                                               "--max-batch-size", str(batch)],
                                  startup_timeout=STARTUP_S)
        try:
            results[mode] = _levels(server.url)
            if mode == "on":
                extra["abandoned_per_request"], extra["generated_per_abandoned"] = _abandon(server.url)
                extra["rss"] = _rss_rounds(server.url, server.process.pid)
        finally:
            server.stop()
    print(f"  batching on: --max-batch-size {default}; off: --max-batch-size 1; {MAX_TOKENS} new tokens, greedy; "
          f"requests per client: " + ", ".join(f"{c} clients {_per_client(c)}" for c in LEVELS))
    _print_table(results)
    on, off = results["on"], results["off"]
    p95 = {c: _ms([t.total_s for t in r.timings], 95) for c, r in on.items()}
    rss = extra["rss"]
    return [
        _head_layout(),
        Comparison("serving: tokens/s, 8 clients vs 1 (batching)", "tokens/s", "1 client", on[1].tokens_per_s,
                   "8 clients", on[8].tokens_per_s, ">= 4"),
        Comparison("serving: p95 latency, 8 clients vs 1 (batching)", "ms", "1 client", p95[1], "8 clients", p95[8],
                   "<= 2.5"),
        Comparison("serving: 32 clients answered (batching)", "requests", "sent", 32 * _per_client(32),
                   "answered", len(on[32].timings), "= 1"),
        Comparison("serving: tokens/s at 8 clients, batching off vs on", "tokens/s", "off", off[8].tokens_per_s,
                   "on", on[8].tokens_per_s),
        Comparison("serving: tokens/s at 32 clients, batching off vs on", "tokens/s", "off", off[32].tokens_per_s,
                   "on", on[32].tokens_per_s),
        Comparison("serving: tokens after disconnect per abandoned request", "tokens", "one step", 1.0,
                   "measured", extra["abandoned_per_request"], "<= 1"),
        Comparison("serving: RSS, round 3 vs round 1 of 16 clients", "MiB", "round 1", rss[0], "round 3", rss[2],
                   "0.95 - 1.05"),
    ]
