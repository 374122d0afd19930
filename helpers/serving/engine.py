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

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from helpers.runtime import cache_keyword
from helpers.serving.chat import end_of_turn_id
from helpers.serving.limits import DEFAULT_LIMITS, ServingLimits
from helpers.serving.metrics import ServingMetrics, new_metrics

logger = logging.getLogger("helpers.serving")

# Temperatures below this are greedy decoding (vLLM draws the same line): dividing logits by
# 1e-38 overflows to inf and the softmax to NaN, and anything this cold is argmax anyway.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How one request wants its tokens chosen, and when to stop. Introduced in ``10_deployment.ipynb``.

    ``logprobs``: how many alternatives to report beside each chosen token's log-probability
    (``None``: no log-probabilities); ``prompt_logprobs``: report the prompt's own tokens too
    (``echo`` with ``logprobs``). Log-probabilities are the model's own (log-softmax of its logits,
    before temperature or top-p), as vLLM reports them.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    prompt_logprobs: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability, and the ``top`` most likely tokens at its position (id, log-probability)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Result:
    """How a request ended. ``finish_reason``: ``stop`` or ``length`` (OpenAI's), or ``timeout``,
    ``cancelled`` (the client left), ``shutdown`` or ``error``."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    token_ids: list[int]  # the generated tokens (an end-of-text or end-of-turn token not included)
    logprobs: list[TokenLogprob] | None = None  # one per generated token, when asked for
    prompt_logprobs: list[TokenLogprob | None] | None = None  # one per prompt token (the first: None)


class Request:
    """One request as the engine sees it: a prompt, how to sample, a deadline, and whether to stream.

    :meth:`Engine.open` or :meth:`Engine.submit` sends it; ``cancel()`` (from any thread) says nobody
    waits for it any more.
    """

    def __init__(self, prompt_ids: list[int], params: SamplingParams, timeout_s: float, stream: bool = False):
        self.prompt_ids, self.params, self.stream = list(prompt_ids), params, stream
        self.arrival = time.monotonic()
        self.deadline = self.arrival + timeout_s  # the deadline counts time spent waiting in the queue
        self.completion_tokens = 0
        self.finished = False  # set by the engine once its Result is on the way
        self.index = 0  # its place among the requests it was sent with
        self._sink: _Sink | None = None
        self._cancelled = threading.Event()
        self._tokens_at_cancel = 0  # for the abandoned-tokens metric

    def cancel(self) -> None:
        """Nobody waits for the answer any more: the engine drops the row before its next step."""
        if not self._cancelled.is_set():
            self._tokens_at_cancel = self.completion_tokens
            self._cancelled.set()

    def expired(self, now: float) -> str | None:
        """``cancelled`` or ``timeout`` when the engine should drop this request, else None."""
        if self._cancelled.is_set():
            return "cancelled"
        return "timeout" if now > self.deadline else None


class QueueFull(Exception):
    """The engine already holds ``max_batch_size + max_queued`` unanswered requests."""


class _Sink:
    """Where a request's events go: an asyncio loop's :class:`Stream`, or a thread's futures (``loop`` None)."""

    loop: asyncio.AbstractEventLoop | None = None

    def put(self, events: list[tuple[int, str | Result]]) -> None:
        raise NotImplementedError


class Stream(_Sink):
    """The requests :meth:`Engine.open` sent, as an async iterator of event lists.

    Each item is a list of ``(index, event)`` that arrived together, where ``event`` is a text
    piece (``str``, streaming requests only) or the request's :class:`Result` (its last event).
    Leaving the loop early (or ``cancel()``) cancels the requests that are still running.
    """

    def __init__(self, requests: list[Request]):
        self.requests, self.loop = requests, asyncio.get_running_loop()
        self._queue: asyncio.Queue[list[tuple[int, str | Result]]] = asyncio.Queue()

    def put(self, events: list[tuple[int, str | Result]]) -> None:  # on the loop's thread
        self._queue.put_nowait(events)

    def cancel(self) -> None:
        for request in self.requests:
            request.cancel()

    async def __aiter__(self) -> AsyncIterator[list[tuple[int, str | Result]]]:
        unfinished = len(self.requests)
        try:
            while unfinished:
                events = await self._queue.get()
                while not self._queue.empty():  # what piled up while the loop was busy goes out together
                    events += self._queue.get_nowait()
                unfinished -= sum(isinstance(event, Result) for _, event in events)
                yield events
        finally:
            self.cancel()  # no-op for finished requests


class _Futures(_Sink):
    """Results for a caller outside an event loop (scripts, tests): one future per request."""

    def __init__(self, count: int):
        self.futures = [Future() for _ in range(count)]

    def put(self, events: list[tuple[int, str | Result]]) -> None:  # on the engine's thread
        for index, event in events:
            if isinstance(event, Result):
                self.futures[index].set_result(event)


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
        self.logprobs: list[TokenLogprob] = []
        self.prompt_logprobs: list[TokenLogprob | None] | None = None
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

    Introduced in ``10_deployment.ipynb``. From an event loop, :meth:`open` sends requests and
    returns a :class:`Stream` to ``async for`` over; from a plain thread, :meth:`submit` returns
    futures and :meth:`generate` waits for one result. ``limits.max_batch_size=1`` serves one
    request at a time (no batching), for comparison. Generation stops at the tokenizer's
    end-of-text token and, when its chat template ends a turn with a special token, at that one too.
    On a CPU the engine stores the model's output projection transposed
    (:func:`lay_out_output_projection`), which batched steps need most.
    """

    def __init__(self, model, tokenizer, limits: ServingLimits = DEFAULT_LIMITS, metrics: ServingMetrics | None = None):
        self.model, self.tokenizer, self.limits = model, tokenizer, limits
        self.metrics = metrics or new_metrics("model")
        self.context = int(model.config.n_positions)
        self.stop_ids = {tokenizer.eos_token_id, end_of_turn_id(tokenizer)} - {None}
        self.device = next(model.parameters()).device
        lay_out_output_projection(model)
        self.tokenizer_lock = threading.Lock()  # the event loop encodes while this thread decodes
        self._cache_arg = cache_keyword(model)
        if not all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers):
            raise ValueError("this engine batches full-attention KV caches (GPT-2's); the model's cache has other "
                             "layer types (sliding windows?)")
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._unfinished = 0  # submitted and not answered yet: waiting, being prefilled, or in the batch
        self._batch = _Batch()
        self._outbox: list[tuple[Request, str | Result]] = []  # this pass's events, handed over after it
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ the public side

    def encode(self, text: str) -> list[int]:
        with self.tokenizer_lock:
            return self.tokenizer(text).input_ids

    def open(self, requests: list[Request]) -> Stream:
        """Queue ``requests`` (from a running event loop) and return the :class:`Stream` of their events.

        All or none: :class:`QueueFull` when they do not all fit beside the ``max_batch_size +
        max_queued`` requests that are unanswered already."""
        stream = Stream(requests)
        self._enqueue(requests, stream)
        return stream

    def submit(self, requests: list[Request]) -> list[Future]:
        """Queue ``requests`` from a thread without an event loop; one future per request, holding its Result."""
        sink = _Futures(len(requests))
        self._enqueue(requests, sink)
        return sink.futures

    def generate(self, prompt_ids: list[int], params: SamplingParams, timeout_s: float = 60.0) -> Result:
        """Submit one request and wait for its result (for scripts and tests; the app streams instead)."""
        (future,) = self.submit([Request(prompt_ids, params, timeout_s)])
        return future.result(timeout=timeout_s + 30)

    def _enqueue(self, requests: list[Request], sink: _Sink) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if self._unfinished + len(requests) > self.limits.max_batch_size + self.limits.max_queued:
                raise QueueFull(f"{self._unfinished} requests are already running or waiting")
            for index, request in enumerate(requests):
                request.index, request._sink = index, sink
            self._unfinished += len(requests)
            self._waiting.extend(requests)
            self.metrics.queue_depth.set(len(self._waiting))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
                self._thread.start()
            self._cond.notify()

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
        self._hand_over()
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
            self._hand_over()  # what dropping rows and failing requests delivered
            self.metrics.batch_size.set(len(self._batch.rows))

    def _hand_over(self) -> None:
        """Send this pass's events, **one hand-over per event loop per forward pass**.

        Every token of every row is an event, but the engine's thread never wakes an event loop per
        event: waking the loop once per token (8 rows, 8 wake-ups a step) made this thread wait for the
        loop's thread after each one, for the GIL, and 8 clients got about 3x one client's tokens/s
        instead of more than 4x. So events wait in ``_outbox`` until the pass is done, then each loop
        gets all of its events in one ``call_soon_threadsafe``."""
        events, self._outbox = self._outbox, []
        by_sink: dict[_Sink, list[tuple[int, str | Result]]] = {}
        for request, event in events:
            by_sink.setdefault(request._sink, []).append((request.index, event))
        by_loop: dict[asyncio.AbstractEventLoop | None, list] = {}
        for sink, sink_events in by_sink.items():
            by_loop.setdefault(sink.loop, []).append((sink, sink_events))
        for loop, batch in by_loop.items():
            if loop is None:
                _put_all(batch)
                continue
            try:
                loop.call_soon_threadsafe(_put_all, batch)
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                for sink, _ in batch:
                    sink.cancel()

    def _admit(self) -> list[Request]:
        """Under the lock: forget waiting requests nobody wants, take as many as the batch has room for."""
        self._waiting = deque(request for request in self._waiting if not self._expire(request))
        room = self.limits.max_batch_size - len(self._batch.rows)
        newcomers = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
        self.metrics.queue_depth.set(len(self._waiting))
        return newcomers

    def _expire(self, request: Request, text: TextStream | None = None) -> bool:
        """The one expiry check: True (and the request answered) when it was cancelled or its time is up."""
        reason = request.expired(time.monotonic())
        if reason is not None:
            self._finish(request, text, reason)
        return reason is not None

    @torch.inference_mode()
    def _step(self, newcomers: list[Request]) -> None:
        self._drop_rows()
        live = [request for request in newcomers if not self._expire(request)]
        if live:
            self._prefill(live)
        self._drop_rows()  # a client may have left during the prefill
        if self._batch.rows:
            self._decode()

    def _drop_rows(self) -> None:
        """Rows whose client left or whose time is up leave the batch before the next forward pass."""
        self._batch.keep([i for i, row in enumerate(self._batch.rows) if not self._expire(row.request, row.text)])

    def _forward(self, input_ids: torch.Tensor, cache: DynamicCache, logits_to_keep: int = 1,
                 **kwargs) -> torch.Tensor:
        """The model on ``input_ids``: logits (rows, ``logits_to_keep`` last positions (0: all), vocab), as float32."""
        out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=logits_to_keep,
                         **{self._cache_arg: cache}, **kwargs)
        return out.logits.float()

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
        echo = any(r.params.prompt_logprobs for r in requests)
        all_logits = self._forward(input_ids, cache, logits_to_keep=0 if echo else 1, attention_mask=mask,
                                   position_ids=positions)
        logits = all_logits[:, -1]
        rows = [_Row(r, TextStream(self.tokenizer, self.tokenizer_lock, r.params.stop), self.device) for r in requests]
        self.metrics.prompt_tokens.inc(sum(len(r.prompt_ids) for r in requests))
        self.metrics.generated_tokens.inc(len(rows))
        greedy, before = _greedy(logits), len(self._batch.rows)
        keep = list(range(before))
        for i, row in enumerate(rows):
            if row.request.params.prompt_logprobs:
                row.prompt_logprobs = _prompt_logprobs(all_logits[i], row.request.prompt_ids, row.request.params)
            self.metrics.time_to_first_token.observe(time.monotonic() - row.request.arrival)
            if self._accept(row, greedy[i] if row.request.params.greedy else row.sample(logits[i:i + 1]), logits[i]):
                keep.append(before + i)
        self._batch.add(rows, cache, mask)
        self._batch.keep(keep)  # rows done with their first token leave at once
        self._hand_over()  # the first tokens go out now, not after the rest of the step

    def _decode(self) -> None:
        """One step for every row: feed each row's last token at its own position, read one more token."""
        batch = self._batch
        input_ids = torch.tensor([[row.last] for row in batch.rows], device=self.device)
        positions = torch.tensor([[row.length] for row in batch.rows], device=self.device)
        mask = F.pad(batch.mask, (0, 1), value=1)
        logits = self._forward(input_ids, batch.cache, attention_mask=mask, position_ids=positions)[:, -1]
        batch.mask = mask
        self.metrics.generated_tokens.inc(len(batch.rows))
        greedy = _greedy(logits)
        keep = []
        for i, row in enumerate(batch.rows):
            row.length += 1
            token = greedy[i] if row.request.params.greedy else row.sample(logits[i:i + 1])
            if self._accept(row, token, logits[i]):
                keep.append(i)
        batch.keep(keep)
        self._hand_over()

    def _accept(self, row: _Row, token: int, logits: torch.Tensor) -> bool:
        """Record a new token (``logits``: the row's, that chose it); False when the row is finished (and answered)."""
        request = row.request
        request.completion_tokens += 1
        if request.params.logprobs is not None:
            row.logprobs.append(_logprob(logits.log_softmax(-1), token, request.params.logprobs))
        if token in self.stop_ids:
            self._finish(request, row.text, "stop", row)
            return False
        piece = row.text.add(token)
        if piece and request.stream:
            self._outbox.append((request, piece))
        if row.text.stopped:
            self._finish(request, row.text, "stop", row)
            return False
        if request.completion_tokens >= request.params.max_tokens:
            self._finish(request, row.text, "length", row)
            return False
        row.last = token
        return True

    def _finish(self, request: Request, text: TextStream | None, reason: str, row: _Row | None = None) -> None:
        if request.finished:
            return
        request.finished = True
        with self._cond:  # re-entrant: _admit calls this with the lock held
            self._unfinished -= 1
        if reason == "cancelled":
            self.metrics.cancelled.inc()
            self.metrics.abandoned_tokens.inc(request.completion_tokens - request._tokens_at_cancel)
        rest = text.finish() if text is not None and reason in ("stop", "length") else ""
        if rest and request.stream:
            self._outbox.append((request, rest))
        full, ids = (text.text, text.ids) if text is not None else ("", [])
        logprobs = row.logprobs if row is not None and request.params.logprobs is not None else None
        prompt_logprobs = row.prompt_logprobs if row is not None else None
        self._outbox.append((request, Result(full, len(request.prompt_ids), request.completion_tokens, reason, ids,
                                             logprobs, prompt_logprobs)))


def _put_all(batch: list[tuple[_Sink, list[tuple[int, str | Result]]]]) -> None:
    for sink, events in batch:
        sink.put(events)


def _logprob(logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """``token``'s entry in the (vocab,) log-probabilities, and the ``top`` most likely tokens."""
    best = logprobs.topk(top) if top else None
    alternatives = tuple(zip(best.indices.tolist(), best.values.tolist())) if best is not None else ()
    return TokenLogprob(token, float(logprobs[token]), alternatives)


def _prompt_logprobs(logits: torch.Tensor, prompt_ids: list[int], params: SamplingParams) -> list[TokenLogprob | None]:
    """Each prompt token's log-probability given the tokens before it (the first has none): ``logits`` is
    one row's (width, vocab) from the left-padded prefill, whose last ``len(prompt_ids)`` positions are the prompt's."""
    own = logits[logits.shape[0] - len(prompt_ids):].log_softmax(-1)
    return [None] + [_logprob(own[i - 1], token, params.logprobs or 0) for i, token in enumerate(prompt_ids) if i]
