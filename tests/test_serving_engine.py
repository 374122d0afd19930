"""serving.engine: continuous batching gives every request what it would get alone.

The model is the course's tiny base (a trained GPT-2, so its next-token choices are rarely
near-ties); the reference for "alone" is the engine with ``max_batch_size=1`` and, for that,
transformers' own ``generate``. Requests join the batch at different moments, with prompts of
1 token, typical length and nearly the whole context. Floating-point sums may differ between a
batch of one and a batch of many; a different token is accepted only where the test shows the
two best logits were within 1e-4 of each other.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers.models import tiny_base_dir
from helpers.serving import ServingLimits
from helpers.serving.engine import (
    Engine,
    QueueFull,
    Request,
    Result,
    SamplingParams,
    TextStream,
    lay_out_output_projection,
)

WAIT_S = 120  # the longest any test here waits for an answer
NEAR_TIE = 1e-4


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(tiny_base_dir(), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def alone(model, tokenizer):
    engine = Engine(model, tokenizer, ServingLimits(max_batch_size=1))
    yield engine
    engine.close()


@pytest.fixture
def batched(model, tokenizer):
    engine = Engine(model, tokenizer, ServingLimits(max_batch_size=8))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompts(tokenizer, model) -> dict[str, list[int]]:
    context = model.config.n_positions
    long_text = " ".join(["It is a truth universally acknowledged, that a single man in possession of a good "
                          "fortune, must be in want of a wife."] * 20)
    return {
        "one token": tokenizer("The").input_ids,
        "typical": tokenizer("Emma Woodhouse, handsome, clever, and rich, with a comfortable home").input_ids,
        "near the context limit": tokenizer(long_text).input_ids[: context - 8],
        "short": tokenizer("Anne Elliot had been").input_ids,
    }


class Collector:
    """Submits requests from this thread and waits for their results (the engine's futures)."""

    def __init__(self, engine: Engine):
        self.engine, self.futures = engine, {}

    def submit(self, name: str, prompt_ids: list[int], params: SamplingParams, timeout_s: float = WAIT_S) -> Request:
        request = Request(prompt_ids, params, timeout_s)
        (self.futures[name],) = self.engine.submit([request])
        return request

    def result(self, name: str) -> Result:
        return self.futures[name].result(WAIT_S)


def watch_decode_steps(engine: Engine) -> list[int]:
    """From now on, the number of rows of each decode step (a forward pass on a cache that holds tokens)."""
    sizes, forward = [], engine._forward

    def recording_forward(input_ids, cache, *args, **kwargs):
        if cache.get_seq_length() > 0:
            sizes.append(input_ids.shape[0])
        return forward(input_ids, cache, *args, **kwargs)

    engine._forward = recording_forward
    return sizes


def wait_for(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def assert_same_or_near_tie(model, prompt_ids: list[int], expected: list[int], got: list[int], what: str) -> None:
    """Equal token lists; where they part, the two best logits (alone) must be within NEAR_TIE."""
    if got == expected:
        return
    k = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + expected[:k]], device=model.device)).logits[0, -1]
    top2 = logits.topk(2)
    gap = float(top2.values[0] - top2.values[1])
    assert k < min(len(expected), len(got)) and gap < NEAR_TIE and got[k] in top2.indices.tolist(), (
        f"{what}: token {k} differs ({expected[k:k + 3]} alone, {got[k:k + 3]} batched) and the two best logits "
        f"were {gap:.2e} apart, not a near-tie")


def run_staggered(engine: Engine, jobs: dict[str, tuple[list[int], SamplingParams]]):
    """Submit the jobs one by one, each once the previous one has produced two tokens; also the decode steps' sizes."""
    collector, sizes = Collector(engine), watch_decode_steps(engine)
    for name, (prompt_ids, params) in jobs.items():
        request = collector.submit(name, prompt_ids, params)
        wait_for(lambda r=request: r.completion_tokens >= 2 or r.finished, f"{name} to start")
    return {name: collector.result(name) for name in jobs}, sizes


def staggered_jobs(prompts, **sampling) -> dict[str, tuple[list[int], SamplingParams]]:
    lengths = {"one token": 40, "typical": 24, "near the context limit": 8, "short": 16}  # finish at other moments
    return {name: (prompts[name], SamplingParams(max_tokens=lengths[name], **sampling)) for name in lengths}


def test_alone_equals_transformers_generate(alone, model, prompts):
    for name, prompt_ids in prompts.items():
        result = alone.generate(prompt_ids, SamplingParams(max_tokens=8, temperature=0.0))
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                 pad_token_id=model.config.eos_token_id)
        reference = out[0, ids.shape[1]:].tolist()
        reference = reference[: reference.index(model.config.eos_token_id)] if model.config.eos_token_id in \
            reference else reference
        assert_same_or_near_tie(model, prompt_ids, reference, result.token_ids, f"{name} alone vs generate")


def test_greedy_in_a_batch_equals_alone(alone, batched, model, prompts):
    jobs = staggered_jobs(prompts, temperature=0.0)
    together, sizes = run_staggered(batched, jobs)
    assert max(sizes) >= 3, "the requests never shared a decode step"
    for name, (prompt_ids, params) in jobs.items():
        by_itself = alone.generate(prompt_ids, params)
        assert together[name].finish_reason == by_itself.finish_reason
        assert_same_or_near_tie(model, prompt_ids, by_itself.token_ids, together[name].token_ids, name)


def test_seeded_sampling_in_a_batch_equals_alone(alone, batched, model, prompts):
    jobs = staggered_jobs(prompts, temperature=0.8, top_p=0.9, seed=11)
    together, sizes = run_staggered(batched, jobs)
    assert max(sizes) >= 3
    for name, (prompt_ids, params) in jobs.items():
        by_itself = alone.generate(prompt_ids, params)
        assert_same_or_near_tie(model, prompt_ids, by_itself.token_ids, together[name].token_ids, name)


def test_prompts_arriving_together_share_one_prefill_and_get_what_they_get_alone(alone, batched, model, prompts):
    shapes, forward = [], batched._forward

    def recording_forward(input_ids, cache, **kwargs):
        shapes.append(tuple(input_ids.shape))
        return forward(input_ids, cache, **kwargs)

    batched._forward = recording_forward
    jobs = {**staggered_jobs(prompts, temperature=0.0),
            "sampled": (prompts["typical"], SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, seed=5))}
    collector = Collector(batched)
    with batched._cond:  # the engine waits until every request has arrived
        for name, (prompt_ids, params) in jobs.items():
            collector.submit(name, prompt_ids, params)
    results = {name: collector.result(name) for name in jobs}
    assert shapes[0] == (len(jobs), max(len(ids) for ids, _ in jobs.values()))  # one pass, padded to the longest
    for name, (prompt_ids, params) in jobs.items():
        by_itself = alone.generate(prompt_ids, params)
        assert results[name].finish_reason == by_itself.finish_reason
        assert_same_or_near_tie(model, prompt_ids, by_itself.token_ids, results[name].token_ids, name)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_greedy_in_a_batch_equals_alone_on_cuda(tokenizer, prompts):
    cuda_model = AutoModelForCausalLM.from_pretrained(tiny_base_dir(), dtype=torch.float32).eval().to("cuda")
    one = Engine(cuda_model, tokenizer, ServingLimits(max_batch_size=1))
    eight = Engine(cuda_model, tokenizer, ServingLimits(max_batch_size=8))
    try:
        jobs = staggered_jobs(prompts, temperature=0.0)
        together, sizes = run_staggered(eight, jobs)
        assert max(sizes) >= 3, "the requests never shared a decode step"
        for name, (prompt_ids, params) in jobs.items():
            by_itself = one.generate(prompt_ids, params)
            assert_same_or_near_tie(cuda_model, prompt_ids, by_itself.token_ids, together[name].token_ids, name)
    finally:
        one.close()
        eight.close()


def test_max_batch_size_one_serves_one_at_a_time(alone, prompts):
    jobs = {f"r{i}": (prompts["short"], SamplingParams(max_tokens=6, temperature=0.0)) for i in range(3)}
    collector, sizes = Collector(alone), watch_decode_steps(alone)
    try:
        for name, job in jobs.items():
            collector.submit(name, *job)
        assert all(collector.result(name).completion_tokens == 6 for name in jobs)
    finally:
        del alone._forward  # the module's engine goes back to its own forward
    assert len(sizes) == 3 * 5 and set(sizes) == {1}  # 5 decode steps each, one row at a time


def test_the_batch_never_exceeds_its_size(model, tokenizer, prompts):
    engine = Engine(model, tokenizer, ServingLimits(max_batch_size=2))
    try:
        collector, sizes = Collector(engine), watch_decode_steps(engine)
        with engine._cond:  # all five wait before the engine's first step
            for i in range(5):
                collector.submit(f"r{i}", prompts["short"], SamplingParams(max_tokens=5, temperature=0.0))
        assert all(collector.result(f"r{i}").completion_tokens == 5 for i in range(5))
        assert max(sizes) == 2
    finally:
        engine.close()


def test_a_finished_row_leaves_at_once(batched, prompts):
    collector, sizes = Collector(batched), watch_decode_steps(batched)
    long = collector.submit("long", prompts["typical"], SamplingParams(max_tokens=80, temperature=0.0))
    wait_for(lambda: long.completion_tokens >= 2, "the long request to start")
    collector.submit("short", prompts["short"], SamplingParams(max_tokens=2, temperature=0.0))
    assert collector.result("short").completion_tokens == 2 and 2 in sizes
    sizes.clear()
    collector.submit("late", prompts["one token"], SamplingParams(max_tokens=3, temperature=0.0))
    assert collector.result("late").completion_tokens == 3
    assert not long.finished, "the long request ended too early for this test to see anything"
    wait_for(lambda: len(sizes) >= 2, "two decode steps with the late request")
    assert max(sizes) == 2  # the long request and the late one: the short one had left
    long.cancel()


def test_a_cancelled_row_stops_within_one_step(batched, prompts):
    metrics = batched.metrics.registry
    collector = Collector(batched)
    leaving = collector.submit("leaving", prompts["typical"], SamplingParams(max_tokens=200, temperature=0.0))
    collector.submit("staying", prompts["short"], SamplingParams(max_tokens=30, temperature=0.0))
    wait_for(lambda: leaving.completion_tokens >= 3, "tokens before the cancel")
    leaving.cancel()
    result = collector.result("leaving")
    assert result.finish_reason == "cancelled"
    assert metrics.get_sample_value("course_abandoned_tokens_total") <= 1
    assert metrics.get_sample_value("course_cancelled_requests_total") == 1
    assert collector.result("staying").finish_reason in ("stop", "length")  # the other row carried on
    wait_for(lambda: batched.running == 0, "the batch to empty")


def test_the_deadline_counts_time_in_the_queue(alone, prompts):
    collector = Collector(alone)
    busy = collector.submit("busy", prompts["typical"], SamplingParams(max_tokens=200, temperature=0.0))
    wait_for(lambda: busy.completion_tokens >= 1, "the first request to start")
    collector.submit("waiting", prompts["short"], SamplingParams(max_tokens=4), timeout_s=0.05)
    result = collector.result("waiting")
    assert result.finish_reason == "timeout" and result.completion_tokens == 0
    busy.cancel()
    assert collector.result("busy").finish_reason == "cancelled"


def test_the_queue_has_a_limit(model, tokenizer, prompts):
    engine = Engine(model, tokenizer, ServingLimits(max_batch_size=1, max_queued=1))
    try:
        collector = Collector(engine)
        first = collector.submit("first", prompts["typical"], SamplingParams(max_tokens=200, temperature=0.0))
        collector.submit("second", prompts["short"], SamplingParams(max_tokens=2))
        with pytest.raises(QueueFull):
            collector.submit("third", prompts["short"], SamplingParams(max_tokens=2))
        first.cancel()
        assert collector.result("second").completion_tokens == 2
    finally:
        engine.close()


def test_tiny_temperatures_are_greedy(alone, prompts):
    greedy = alone.generate(prompts["typical"], SamplingParams(max_tokens=8, temperature=0.0))
    tiny = alone.generate(prompts["typical"], SamplingParams(max_tokens=8, temperature=1e-38, seed=1))
    assert tiny.token_ids == greedy.token_ids


def feed(tokenizer, ids: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    stream = TextStream(tokenizer, threading.Lock(), stop)
    pieces = [stream.add(token) for token in ids] + [stream.finish()]
    return [p for p in pieces if p], stream


def test_text_stream_equals_decoding_everything(tokenizer):
    text = "caf\u00e9 \U0001f600\U0001f600 \u65e5\u672c, and so on"  # characters split over several BPE tokens
    ids = tokenizer(text).input_ids
    assert len(ids) > len(text.split())
    pieces, stream = feed(tokenizer, ids)
    reference = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert "".join(pieces) == stream.text == reference == text
    assert not any("\ufffd" in piece for piece in pieces)
    cut = ids[: next(i for i in range(1, len(ids)) if "\ufffd" in tokenizer.decode(ids[:i]))]  # half a character
    pieces, stream = feed(tokenizer, cut)
    assert "".join(pieces) == stream.text == tokenizer.decode(cut, clean_up_tokenization_spaces=False)


def test_text_stream_cuts_at_a_stop_and_never_shows_its_start(tokenizer):
    pieces, stream = feed(tokenizer, tokenizer("Hello world, hello there").input_ids, ("lo wo", "never"))
    assert "".join(pieces) == stream.text == "Hel" and stream.stopped
    pieces, stream = feed(tokenizer, tokenizer("Hello world").input_ids, ("world!",))
    assert "".join(pieces) == "Hello world" and not stream.stopped  # held back, then released at the end


def test_the_output_projection_is_stored_transposed_and_computes_the_same(tokenizer):
    fresh = AutoModelForCausalLM.from_pretrained(tiny_base_dir(), dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer("Emma Woodhouse, handsome, clever, and rich").input_ids])
    weight = fresh.get_output_embeddings().weight
    values = weight.detach().clone()
    with torch.inference_mode():
        before = fresh(ids).logits
    assert lay_out_output_projection(fresh)
    assert weight.stride() == (1, weight.shape[0])  # (hidden, vocab) in memory
    assert fresh.get_output_embeddings().weight is weight is fresh.get_input_embeddings().weight  # still tied
    assert torch.equal(weight, values) and weight.shape == values.shape
    with torch.inference_mode():
        torch.testing.assert_close(fresh(ids).logits, before, rtol=1e-5, atol=1e-5)
    assert not lay_out_output_projection(fresh)  # laid out already: nothing to do


def test_a_stream_gets_each_forward_pass_in_one_hand_over(model, tokenizer, prompts):
    engine = Engine(model, tokenizer, ServingLimits(max_batch_size=4))
    names = ("typical", "short", "one token")

    async def consume():
        requests = [Request(prompts[name], SamplingParams(max_tokens=12, temperature=0.0), WAIT_S, stream=True)
                    for name in names]
        with engine._cond:  # the three arrive together and share every pass
            stream = engine.open(requests)
        return [events async for events in stream]

    try:
        handed_over = asyncio.run(asyncio.wait_for(consume(), WAIT_S))
    finally:
        engine.close()
    events = [event for batch in handed_over for event in batch]
    results = {index: event for index, event in events if isinstance(event, Result)}
    assert sorted(results) == [0, 1, 2] and all(r.finish_reason in ("stop", "length") for r in results.values())
    for index, result in results.items():  # the pieces, in order, are the whole text
        assert "".join(e for i, e in events if i == index and isinstance(e, str)) == result.text
    assert len(handed_over) < len(events) / 2  # three rows share a pass: their tokens arrive together


def test_the_limits_are_checked_once_where_they_are_made(model, tokenizer):
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        ServingLimits(max_batch_size=0)
    with pytest.raises(ValueError, match="max_queued must be >= 0"):
        ServingLimits(max_queued=-1)
    engine = Engine(model, tokenizer, ServingLimits(max_batch_size=3, max_queued=2))
    assert engine.limits.max_batch_size == 3
    engine.close()


def test_log_probabilities_are_the_models_log_softmax(alone, model, prompts):
    prompt = prompts["typical"]
    result = alone.generate(prompt, SamplingParams(max_tokens=5, temperature=0.0, logprobs=3, prompt_logprobs=True))
    with torch.no_grad():
        logits = model(torch.tensor([prompt + result.token_ids])).logits[0]
    reference = torch.log_softmax(logits, -1)
    for k, entry in enumerate(result.logprobs):
        row = reference[len(prompt) - 1 + k]
        assert entry.token_id == result.token_ids[k]
        assert entry.logprob == pytest.approx(float(row[entry.token_id]), abs=1e-4)
        assert [i for i, _ in entry.top] == row.topk(3).indices.tolist()
    assert result.prompt_logprobs[0] is None and len(result.prompt_logprobs) == len(prompt)
    for j in range(1, len(prompt)):
        assert result.prompt_logprobs[j].logprob == pytest.approx(float(reference[j - 1, prompt[j]]), abs=1e-4)
