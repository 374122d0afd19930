"""A small load generator: N clients stream completions at once; what each one saw, timed.

Introduced in ``10_deployment.ipynb``; ``bench/bench_serving.py`` uses it too. Each client
sends its requests one after another (a closed loop, like a user waiting for each answer),
with ``stream: true`` so that the time to the first token is seen as well as the whole answer.
All clients share one asyncio event loop in one thread (as vLLM's benchmark client does): on a
2-core machine the server and its load share the cores, and a thread per client would take
several times more CPU away from the server than the loop does.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx


@dataclass
class Timing:
    """One answered request: seconds to its first text and to its end, and how many tokens it got."""

    first_token_s: float
    total_s: float
    completion_tokens: int

    @property
    def per_output_token_s(self) -> float:
        """Time per output token after the first (what a reader of the stream waits between words)."""
        return (self.total_s - self.first_token_s) / max(1, self.completion_tokens - 1)


@dataclass
class LoadResult:
    """What ``clients`` concurrent clients saw: one :class:`Timing` per answered request, and the errors."""

    clients: int
    wall_s: float
    timings: list[Timing] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Aggregate throughput: every completion token of the run over its wall time."""
        return sum(t.completion_tokens for t in self.timings) / self.wall_s


async def _one(client: httpx.AsyncClient, url: str, body: dict) -> Timing:
    start, first, usage = time.perf_counter(), None, None
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if first is not None and '"usage"' not in line and '"error"' not in line:
                continue  # a text chunk after the first: nothing to read (the client's CPU is the server's too)
            chunk = json.loads(line.removeprefix("data: "))
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk["choices"] and chunk["choices"][0]["text"] and first is None:
                first = time.perf_counter() - start
            usage = chunk.get("usage") or usage
    total = time.perf_counter() - start
    return Timing(first if first is not None else total, total, usage["completion_tokens"] if usage else 0)


async def _load(url: str, body: dict, clients: int, requests_per_client: int, headers: dict | None,
                timeout_s: float) -> LoadResult:
    result = LoadResult(clients, 0.0)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)  # a connection per client

    async def client_loop(client: httpx.AsyncClient) -> None:
        for _ in range(requests_per_client):
            try:
                result.timings.append(await _one(client, url, body))
            except (httpx.HTTPError, RuntimeError) as error:
                result.errors.append(str(error) or type(error).__name__)

    async with httpx.AsyncClient(headers=headers, timeout=timeout_s, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        result.wall_s = time.perf_counter() - start
    return result


def run_load(url: str, body: dict, clients: int, requests_per_client: int = 2, headers: dict | None = None,
             timeout_s: float = 300) -> LoadResult:
    """``clients`` concurrent clients, each streaming ``requests_per_client`` completions of ``body`` in turn.

    Introduced in ``10_deployment.ipynb``. A request that fails (any status but 200, an error
    event, a broken connection) is counted in ``errors`` with what went wrong.
    """
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with ThreadPoolExecutor(max_workers=1) as pool:  # a loop of its own: Jupyter's is already running in this thread
        return pool.submit(asyncio.run, _load(url, body, clients, requests_per_client, headers, timeout_s)).result()
