"""Our service against a peer: ``transformers serve --continuous-batching`` on the same model.

Starts, one at a time on 127.0.0.1, ``python -m helpers.serving`` and transformers' own
OpenAI-compatible server (installed with transformers) on the tiny base
(``data/models/tiny-gpt2-base``; skipped with a message when it or ``transformers`` is missing),
with the same prompt, the same client (:func:`helpers.serving.load_generator.run_load`, streaming)
and the same token budget as ``bench_serving.py`` (64 greedy tokens). At 1, 8 and 16 concurrent
clients each level runs in three rounds and its best round counts. Prints tokens/s for both and
ours ÷ theirs, and whether greedy completions of four prompts are identical (non-streamed,
``temperature: 0``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import Comparison
from bench.bench_serving import BODY, MAX_TOKENS, PROMPTS, REPEATS, STARTUP_S, _per_client
from helpers.models import tiny_base_dir
from helpers.serving import free_port, start_background
from helpers.serving.load_generator import LoadResult, run_load

LEVELS = (1, 8, 16)


@contextlib.contextmanager
def _transformers_serve(model_dir: Path):
    """``transformers serve --continuous-batching`` on ``model_dir`` (CPU, float32), until the block ends."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="transformers-serve-")) / "server.log"
    command = [shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers", "serve",
               str(model_dir), "--continuous-batching", "--device", "cpu", "--dtype", "float32", "--host",
               "127.0.0.1", "--port", str(port), "--log-level", "error"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + STARTUP_S
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {process.returncode}:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve did not answer within {STARTUP_S} s:\n{log.read_text()[-2000:]}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _measure(url: str, model: str) -> tuple[dict[int, LoadResult], list[str]]:
    body = {**BODY, "model": model}
    run_load(url, body, 2, requests_per_client=1)  # warm-up: lazy initialisation (and their model's first load)
    runs: dict[int, list[LoadResult]] = {clients: [] for clients in LEVELS}
    for _ in range(REPEATS):
        for clients in LEVELS:
            runs[clients].append(run_load(url, body, clients, _per_client(clients)))
    greedy = [httpx.post(f"{url}/v1/completions", json={**body, "prompt": prompt}, timeout=120).json()
              ["choices"][0]["text"] for prompt in PROMPTS]
    return {clients: max(results, key=lambda r: r.tokens_per_s) for clients, results in runs.items()}, greedy


def run() -> list[Comparison]:
    model_dir = tiny_base_dir()
    if not (model_dir / "config.json").is_file():
        print(f"  skipping: {model_dir} does not exist yet (python -m tools.pretrain_tiny_base writes it)")
        return []
    with start_background(model_dir, extra_args=["--model-id", "tiny", "--log-level", "warning"],
                          startup_timeout=STARTUP_S) as ours:
        our_levels, our_text = _measure(ours.url, "tiny")
    with _transformers_serve(model_dir) as theirs:
        their_levels, their_text = _measure(theirs, str(model_dir))
    same = sum(a == b for a, b in zip(our_text, their_text))
    print(f"  {MAX_TOKENS} new tokens, greedy; the same client and prompt against each server in turn")
    print(f"  {'clients':>8}{'ours tok/s':>12}{'theirs tok/s':>14}{'ours/theirs':>13}{'errors (ours, theirs)':>24}")
    for clients in LEVELS:
        o, t = our_levels[clients], their_levels[clients]
        print(f"  {clients:>8}{o.tokens_per_s:>12.0f}{t.tokens_per_s:>14.0f}{o.tokens_per_s / t.tokens_per_s:>13.2f}"
              f"{f'{len(o.errors)}, {len(t.errors)}':>24}")
        for name, r in (("ours", o), ("theirs", t)):
            if r.errors:
                print(f"  {name}, {clients} clients, first error: {r.errors[0]}")
    print(f"  greedy completions identical: {same} of {len(PROMPTS)} prompts")
    for ours_text, theirs_text in zip(our_text, their_text):
        if ours_text != theirs_text:
            print(f"  first difference: ours {ours_text[:60]!r} / theirs {theirs_text[:60]!r}")
            break
    return [
        *(Comparison(f"serving vs transformers serve: tokens/s at {c} clients", "tokens/s", "theirs",
                     their_levels[c].tokens_per_s, "ours", our_levels[c].tokens_per_s, ">= 1" if c > 1 else "")
          for c in LEVELS),
        Comparison("serving vs transformers serve: identical greedy completions", "prompts", "prompts",
                   len(PROMPTS), "identical", same, "= 1"),
    ]
