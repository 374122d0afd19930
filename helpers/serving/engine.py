"""Continuous batching: concurrent requests share every forward pass of one model.

Introduced in ``10_deployment.ipynb``; the KV cache it builds on is notebook 03's. One worker
thread owns the model and loops:

1. drop the rows whose client left, whose deadline passed, or that finished;
2. admit waiting requests while the batch has room: the prompts admitted together go through
   the model together, left-padded (the *prefill*), which gives each its first token and KV cache;
3. one *decode step* for the whole batch: every row feeds its last token and gets one more.

Rows started at different moments have caches of different lengths. They share one cache
tensor per layer, **left-padded** so that every row ends at the same column; each row's
attention mask hides its padding, and its position ids count only its own tokens, so a row
computes what it would compute alone. A finished row leaves at once and the padding no row
needs any more is cut off. Each row has its own ``max_tokens``, ``temperature``, ``top_p``,
``stop`` and random generator (seeded by ``seed``), so batching never changes what a request
gets (up to float rounding: a batched matrix product may sum in another order).
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from helpers.serving.metrics import ServingMetrics, new_metrics

logger = logging.getLogger("helpers.serving")

# Temperatures below this are greedy decoding (vLLM draws the same line): dividing logits by
# 1e-38 overflows to inf and the softmax to NaN, and anything this cold is argmax anyway.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How one request wants its tokens chosen, and when to stop. Introduced in ``10_deployment.ipynb``."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


@dataclass
class Result:
    """How a request ended. ``finish_reason``: ``stop`` or ``length`` (OpenAI's), or ``timeout``,
    ``cancelled`` (the client left), ``shutdown`` or ``error``."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    token_ids: list[int]  # the generated tokens (an end-of-text token not included)


class Request:
    """One request as the engine sees it. ``deliver(kind, payload)`` is called from the engine's
    thread with ``("text", piece)`` as text appears (when ``stream``), then once ``("done", Result)``.
    """

    def __init__(self, prompt_ids: list[int], params: SamplingParams, timeout_s: float,
                 deliver: Callable[[str, Any], None], stream: bool = False):
        self.prompt_ids, self.params, self.deliver, self.stream = list(prompt_ids), params, deliver, stream
        self.arrival = time.monotonic()
        self.deadline = self.arrival + timeout_s  # the deadline counts time spent waiting in the queue
        self.completion_tokens = 0
        self.peak_batch = 0  # the most rows this request shared a decode step with (itself included)
        self.tokens_at_cancel: int | None = None
        self.finished = False  # set by the engine once ("done", Result) has been delivered
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Nobody waits for the answer any more: the engine drops the row before its next step."""
        if not self._cancelled.is_set():
            self.tokens_at_cancel = self.completion_tokens
            self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class QueueFull(Exception):
    """The engine already holds ``max_queued`` waiting requests."""


class TextStream:
    """Token ids in, text out: pieces never end in half a UTF-8 character, nor show the start of a stop sequence.

    Decodes only the last few ids each time (vLLM's incremental detokenizer): ``ids[_prefix:_read]``
    gave ``_before`` last time, ``ids[_prefix:]`` gives more now; the difference is new text once
    it no longer ends in U+FFFD (a character whose bytes are still coming). ``text`` ends equal to
    decoding all ids.
    """

    def __init__(self, tokenizer, lock: threading.Lock, stop: tuple[str, ...] = ()):
        self.tokenizer, self.lock, self.stop = tokenizer, lock, stop
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.text, self.sent, self.stopped = "", 0, False
        self._prefix = self._read = 0
        self._before = ""

    def _decode(self, ids: list[int]) -> str:
        with self.lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _catch_up(self, final: bool) -> None:
        after = self._decode(self.ids[self._prefix:])
        if len(after) <= len(self._before) or (after.endswith("\ufffd") and not final):
            return
        search_from, new = max(0, len(self.text) - self.holdback), after[len(self._before):]
        self.text += new
        self._prefix, self._read, self._before = self._read, len(self.ids), new  # _before == decode(ids[_prefix:_read])
        cuts = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
        if cuts:
            self.text, self.stopped = self.text[: min(cuts)], True

    def add(self, token: int) -> str:
        """Take one more token; return the text that is now safe to show (maybe empty)."""
        if not self.stopped:
            self.ids.append(token)
            self._catch_up(final=False)
        return self._release(final=self.stopped)

    def finish(self) -> str:
        """No more tokens: return the rest of the text (a stop sequence's start may be text after all)."""
        if not self.stopped:
            self._catch_up(final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        safe = len(self.text) if final else len(self.text) - self.holdback
        if safe <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent:safe], safe
        return piece


class _Row:
    """A running request: its text so far, its random generator, and its length in the KV cache."""

    def __init__(self, request: Request, text: TextStream, device: torch.device):
        self.request, self.text = request, text
        self.length = len(request.prompt_ids)  # tokens of this row in the cache
        self.last: int | None = None  # the newest token, fed to the next decode step
        self.generator = None
        if not request.params.greedy:
            self.generator = torch.Generator(device=device)
            if request.params.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(request.params.seed)

    def sample(self, logits: torch.Tensor) -> int:
        """One token from ``logits`` (1, vocab) with transformers' own temperature and top-p warpers."""
        params = self.request.params
        if params.temperature != 1.0:
            logits = TemperatureLogitsWarper(params.temperature)(None, logits)
        if params.top_p < 1.0:
            logits = TopPLogitsWarper(params.top_p)(None, logits)
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def _pad_left(cache_tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """(batch, heads, length, head_dim) with ``columns`` zero positions put in front."""
    return F.pad(cache_tensor, (0, 0, columns, 0)) if columns else cache_tensor


class _Batch:
    """The running rows and their shared KV cache, left-padded so that all rows end at the same column."""

    def __init__(self):
        self.rows: list[_Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (rows, cache length): 1 where a row has a token, 0 on padding

    def add(self, rows: list[_Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append prefilled rows with their cache and mask; whichever side is shorter gets padded on the left."""
        if not self.rows:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            return
        width, length = self.mask.shape[1], mask.shape[1]
        pad_mine, pad_theirs = max(0, length - width), max(0, width - length)
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, pad_mine), _pad_left(theirs.keys, pad_theirs)])
            mine.values = torch.cat([_pad_left(mine.values, pad_mine), _pad_left(theirs.values, pad_theirs)])
        self.mask = torch.cat([F.pad(self.mask, (pad_mine, 0)), F.pad(mask, (pad_theirs, 0))])
        self.rows.extend(rows)

    def keep(self, keep: list[int]) -> None:
        """Keep only the rows at ``keep``; cut the columns that are padding for every row left."""
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self.mask = [], None, None
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask = self.mask[index]
        start = int(self.mask.any(dim=0).nonzero()[0])
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]


def lay_out_output_projection(model: torch.nn.Module) -> bool:
    """Store the output projection's (vocab, hidden) weight transposed in memory, on a CPU; True if it did.

    Introduced in ``10_deployment.ipynb``. A decode step's logits are ``hidden @ weight.T`` for a
    few rows at a time. For GPT-2's vocabulary, the CPU's matrix product is faster with the weight
    laid out (hidden, vocab) than with the (vocab, hidden) layout transformers keeps (``python -m
    bench serving`` times both, side by side: about 1.4x on the course's 2-core machine). Only the strides change: the values,
    the shape and the tie to the input embedding (the same tensor) stay, so the model computes what it
    computed before (up to float rounding) and can still be used as it was. The :class:`Engine` calls this.
    """
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.nn.Parameter) or weight.device.type != "cpu" or weight.dim() != 2 \
            or not weight.is_contiguous():
        return False  # a GPU's matrix products do not care; a quantized head has no such weight
    with torch.no_grad():
        weight.data = weight.data.t().contiguous().t()
    return True


def _greedy(logits: torch.Tensor) -> list[int]:
    """Each row's most likely token. ``max`` picks the same (first) index as ``argmax``, and is faster on a CPU."""
    return logits.max(dim=-1).indices.tolist()


class Engine:
    """The model, its tokenizer, the waiting queue and the running batch, driven by one thread.

    Introduced in ``10_deployment.ipynb``. ``submit`` a :class:`Request` from any thread; its
    ``deliver`` callback hears back from the engine's thread. ``max_batch_size=1`` serves one
    request at a time (no batching), for comparison. ``after_pass``, when given, is called from the
    engine's thread after each forward pass (and each round of its loop) has made its deliveries, so
    that a caller can hand a whole step's events to another thread at once (the app wakes its event
    loop once per step, not once per token). On a CPU the engine stores the model's output
    projection transposed (:func:`lay_out_output_projection`), which batched steps need most.
    """

    def __init__(self, model, tokenizer, max_batch_size: int = 16, max_queued: int = 64,
                 metrics: ServingMetrics | None = None, after_pass: Callable[[], None] | None = None):
        if max_batch_size < 1 or max_queued < 0:
            raise ValueError(f"max_batch_size must be >= 1 and max_queued >= 0, got {max_batch_size}, {max_queued}")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_queued = max_batch_size, max_queued
        self.metrics = metrics or new_metrics("model")
        self.after_pass = after_pass or (lambda: None)
        self.context = int(model.config.n_positions)
        self.eos_id = tokenizer.eos_token_id
        self.device = next(model.parameters()).device
        lay_out_output_projection(model)
        self.tokenizer_lock = threading.Lock()  # the event loop encodes while this thread decodes
        # transformers 5 renamed forward's ``past_key_values`` to ``cache``; accept both spellings.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        if not all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers):
            raise ValueError("this engine batches full-attention KV caches (GPT-2's); the model's cache has other "
                             "layer types (sliding windows?)")
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._unfinished = 0  # submitted and not answered yet: waiting, being prefilled, or in the batch
        self._batch = _Batch()
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ the public side

    def encode(self, text: str) -> list[int]:
        with self.tokenizer_lock:
            return self.tokenizer(text).input_ids

    def submit(self, request: Request) -> None:
        """Queue ``request`` for the next step. :class:`QueueFull` when ``max_batch_size + max_queued``
        requests are unanswered already: the batch is full and ``max_queued`` wait for a place."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if self._unfinished >= self.max_batch_size + self.max_queued:
                raise QueueFull(f"{self._unfinished} requests are already running or waiting")
            self._unfinished += 1
            self._waiting.append(request)
            self.metrics.queue_depth.set(len(self._waiting))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
                self._thread.start()
            self._cond.notify()

    def generate(self, prompt_ids: list[int], params: SamplingParams, timeout_s: float = 60.0) -> Result:
        """Submit one request and wait for its result (for scripts and tests; the app streams instead)."""
        done: queue.Queue = queue.Queue()

        def deliver(kind: str, item: Any) -> None:
            if kind == "done":
                done.put(item)

        self.submit(Request(prompt_ids, params, timeout_s, deliver))
        return done.get(timeout=timeout_s + 30)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._batch.rows)

    def close(self) -> None:
        """Stop the thread; requests still waiting or running end with ``shutdown``."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        for row in self._batch.rows:
            self._finish(row.request, row.text, "shutdown")
        for request in self._waiting:
            self._finish(request, None, "shutdown")
        self.after_pass()
        self._batch, self._waiting = _Batch(), deque()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ the engine's thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._batch.rows:
                    self._cond.wait()
                if self._closed:
                    return
                newcomers = self._admit()
            try:
                self._step(newcomers)
            except Exception:  # a bug or out of memory: fail the requests in hand, keep serving the next ones
                logger.exception("generation step failed; answering its %d requests with an error",
                                 len(self._batch.rows) + len(newcomers))
                for request in [row.request for row in self._batch.rows] + newcomers:
                    self._finish(request, None, "error")
                self._batch = _Batch()
            self.after_pass()  # what dropping rows and failing requests delivered
            self.metrics.batch_size.set(len(self._batch.rows))

    def _admit(self) -> list[Request]:
        """Under the lock: forget waiting requests nobody wants, take as many as the batch has room for."""
        now, kept = time.monotonic(), deque()
        for request in self._waiting:
            if request.cancelled or now > request.deadline:
                self._finish(request, None, "cancelled" if request.cancelled else "timeout")
            else:
                kept.append(request)
        room = self.max_batch_size - len(self._batch.rows)
        newcomers = [kept.popleft() for _ in range(min(room, len(kept)))]
        self._waiting = kept
        self.metrics.queue_depth.set(len(kept))
        return newcomers

    @torch.inference_mode()
    def _step(self, newcomers: list[Request]) -> None:
        self._drop_rows()
        live = []
        for request in newcomers:
            if request.cancelled or time.monotonic() > request.deadline:
                self._finish(request, None, "cancelled" if request.cancelled else "timeout")
            else:
                live.append(request)
        if live:
            self._prefill(live)
        self._drop_rows()  # a client may have left during the prefill
        if self._batch.rows:
            self._decode()

    def _forward(self, input_ids: torch.Tensor, cache: DynamicCache, **kwargs) -> torch.Tensor:
        out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self._cache_arg: cache}, **kwargs)
        return out.logits[:, -1, :].float()

    def _prefill(self, requests: list[Request]) -> None:
        """The newcomers' prompts through the model in one pass, left-padded to the longest: their KV
        caches and first tokens; then the rows that want more tokens join the batch."""
        width = max(len(request.prompt_ids) for request in requests)
        input_ids = torch.tensor([[0] * (width - len(r.prompt_ids)) + r.prompt_ids for r in requests],
                                 device=self.device)  # the padding token does not matter: the mask hides it
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests],
                            device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts its own tokens from 0
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(input_ids, cache, attention_mask=mask, position_ids=positions)
        rows = [_Row(r, TextStream(self.tokenizer, self.tokenizer_lock, r.params.stop), self.device) for r in requests]
        self.metrics.prompt_tokens.inc(sum(len(r.prompt_ids) for r in requests))
        self.metrics.generated_tokens.inc(len(rows))
        greedy, before = _greedy(logits), len(self._batch.rows)
        keep = list(range(before))
        for i, row in enumerate(rows):
            self.metrics.time_to_first_token.observe(time.monotonic() - row.request.arrival)
            if self._accept(row, greedy[i] if row.request.params.greedy else row.sample(logits[i:i + 1])):
                keep.append(before + i)
        self._batch.add(rows, cache, mask)
        self._batch.keep(keep)  # rows done with their first token leave at once
        self.after_pass()  # the first tokens go out now, not after the rest of the step

    def _decode(self) -> None:
        """One step for every row: feed each row's last token at its own position, read one more token."""
        batch = self._batch
        input_ids = torch.tensor([[row.last] for row in batch.rows], device=self.device)
        positions = torch.tensor([[row.length] for row in batch.rows], device=self.device)
        mask = F.pad(batch.mask, (0, 1), value=1)
        logits = self._forward(input_ids, batch.cache, attention_mask=mask, position_ids=positions)
        batch.mask = mask
        self.metrics.generated_tokens.inc(len(batch.rows))
        greedy = _greedy(logits)
        keep = []
        for i, row in enumerate(batch.rows):
            row.length += 1
            row.request.peak_batch = max(row.request.peak_batch, len(batch.rows))
            token = greedy[i] if row.request.params.greedy else row.sample(logits[i:i + 1])
            if self._accept(row, token):
                keep.append(i)
        batch.keep(keep)
        self.after_pass()

    def _accept(self, row: _Row, token: int) -> bool:
        """Record a new token; False when the row is finished (and answered)."""
        request = row.request
        request.completion_tokens += 1
        if token == self.eos_id:
            self._finish(request, row.text, "stop")
            return False
        piece = row.text.add(token)
        if piece and request.stream:
            request.deliver("text", piece)
        if row.text.stopped:
            self._finish(request, row.text, "stop")
            return False
        if request.completion_tokens >= request.params.max_tokens:
            self._finish(request, row.text, "length")
            return False
        row.last = token
        return True

    def _drop_rows(self) -> None:
        """Rows whose client left or whose time is up leave the batch before the next forward pass."""
        now, keep = time.monotonic(), []
        for i, row in enumerate(self._batch.rows):
            if row.request.cancelled or now > row.request.deadline:
                self._finish(row.request, row.text, "cancelled" if row.request.cancelled else "timeout")
            else:
                keep.append(i)
        self._batch.keep(keep)

    def _finish(self, request: Request, text: TextStream | None, reason: str) -> None:
        if request.finished:
            return
        request.finished = True
        with self._cond:  # re-entrant: _admit calls this with the lock held
            self._unfinished -= 1
        if reason == "cancelled":
            self.metrics.cancelled.inc()
            self.metrics.abandoned_tokens.inc(request.completion_tokens - (request.tokens_at_cancel or 0))
        rest = text.finish() if text is not None and reason in ("stop", "length") else ""
        if rest and request.stream:
            request.deliver("text", rest)
        full, ids = (text.text, text.ids) if text is not None else ("", [])
        request.deliver("done", Result(full, len(request.prompt_ids), request.completion_tokens, reason, ids))
