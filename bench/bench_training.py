"""Training speed, side by side in one run (issue: notebook 05).

1. The helper's loop against ``transformers.Trainer``: same model, same token blocks, same
   settings (batch 8 x 128, AdamW, warmup + cosine, clipping, one evaluation at the end, the
   runtime precision policy), whole-run tokens per second. Trainer runs first, so it meets
   the process's allocator as a learner's would. Target: ratio >= 1.0.
2. Model-FLOPs utilisation of a GPT-2-small-shaped training step (124M parameters, batch
   8 x 128 tokens, dropout 0.1 as GPT-2's config has it) through the helper's loop, against
   the matmul peak measured in the same run, in fp32 and (where the hardware has it) bf16.
   Model FLOPs per token follow the PaLM appendix: 6 x (parameters except position
   embeddings) + 12 x layers x width x context (attention scores and values); a step is
   forward + backward. Step and peak are both the least disturbed of several measurements
   (a shared machine only ever makes things slower); the peak is the best of three square
   sizes, measured before and after the steps.
3. What keeping freed memory (``helpers.runtime.reuse_freed_memory``) is worth on that step.

Why the helper's loop can outpace ``Trainer`` on a CPU (notebook 05 prints both speeds and
sends the reader here). Two things, both in ``helpers/training.py``: its loss
(``causal_lm_loss``) shifts the labels instead of slicing the logits, so the (batch, block,
vocab) logits, 200 MB for GPT-2 at 8 x 128, are never copied; and on a CPU the loop runs inside
``reuse_freed_memory``. glibc serves every allocation above its mmap threshold with a fresh
``mmap`` and hands it back to the operating system on ``free``, so each step's big logits and
their gradient are faulted in page by page again at the next step; inside the context manager
glibc keeps freed memory for the next step instead. Measurement 3 prices that on a
GPT-2-small step, and ``bench_page_faults`` counts the page faults it saves.

Heavy: GPT-2 small steps take seconds each on a CPU. ``BENCH_STEPS`` scales it.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from bench import Comparison, best_of
from helpers.finetune import run_trainer
from helpers.models import with_fused_gelu
from helpers.runtime import cpu_supports_bf16, pick_device, reuse_freed_memory
from helpers.training import TrainConfig, causal_lm_loss, make_optimizer, train

STEPS = int(os.environ.get("BENCH_STEPS", "12"))
BATCH, BLOCK = 8, 128


def matmul_peak_flops(dtype: torch.dtype, device: torch.device, sizes=(1024, 2048, 3072)) -> float:
    """Best FLOP/s of a square matmul over a few sizes: the practical ceiling for this machine and dtype."""
    repeats = 3 if device.type == "cpu" else 50

    def rate(size: int) -> float:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        torch.mm(a, b)

        def run():
            for _ in range(repeats):
                torch.mm(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize()

        return 2 * size**3 * repeats / best_of(run, 3)

    return max(rate(size) for size in sizes)


def model_flops_per_token(config: GPT2Config, context: int) -> float:
    params = (config.vocab_size + 12 * config.n_embd * config.n_layer) * config.n_embd  # embeddings + blocks
    params += config.n_layer * (13 * config.n_embd) + 2 * config.n_embd  # biases and norms
    return 6 * params + 12 * config.n_layer * config.n_embd * context


def random_blocks(num_blocks: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (num_blocks, BLOCK)).astype(np.uint16)


def bench_helper_vs_trainer(device: torch.device) -> Comparison:
    from helpers.models import load_model, resolve_model_source
    from helpers.settings import make_settings

    source = resolve_model_source(make_settings("cpu"))
    base = load_model(source)[0] if Path(source.location).is_dir() else GPT2LMHeadModel(
        with_fused_gelu(GPT2Config(n_layer=6, n_embd=128, n_head=4, n_positions=256)))
    blocks = random_blocks(BATCH * STEPS * 2, base.config.vocab_size)
    steps = STEPS * 2
    # Both loops evaluate once, at the last step (the helper always evaluates there).
    config = TrainConfig(num_steps=steps, lr=1e-3, warmup_steps=2, batch_size=BATCH, eval_interval=steps,
                         checkpoint_interval=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        theirs = run_trainer(copy.deepcopy(base), blocks, blocks[:BATCH], config, Path(tmp), num_steps=steps)
    ours = train(copy.deepcopy(base), blocks, blocks[:BATCH], config, progress=False)
    ours_rate = steps * BATCH * BLOCK / ours.seconds
    return Comparison("training loop: helper vs Trainer (tiny base, 8x128)", "tokens/s", "Trainer",
                      theirs["tokens_per_s"], "helper", ours_rate, ">= 1.0")


def gpt2_small(device: torch.device) -> GPT2LMHeadModel:
    """GPT-2 small's shapes (12 layers, 768 wide, 50,257 tokens), random weights, as load_model would build it."""
    torch.manual_seed(0)
    return GPT2LMHeadModel(with_fused_gelu(GPT2Config(n_positions=1024))).to(device)


def bench_mfu(device: torch.device, dtype: torch.dtype) -> Comparison:
    model = gpt2_small(device)
    blocks = random_blocks(BATCH * (STEPS + 2), model.config.vocab_size)
    precision = "bf16" if dtype is torch.bfloat16 else "no"
    train_config = TrainConfig(num_steps=STEPS + 2, lr=1e-4, warmup_steps=1, batch_size=BATCH, eval_interval=10**9,
                               checkpoint_interval=10**9, mixed_precision=precision)
    peak_before = matmul_peak_flops(dtype, device)
    result = train(model, blocks, blocks[:BATCH], train_config, progress=False)
    peak = max(peak_before, matmul_peak_flops(dtype, device))
    # The last step also evaluates (eval_interval is huge, but the final step always does).
    best_step = min(BATCH * BLOCK / h["tokens_per_s"] for h in result.history[:-1])
    achieved = model_flops_per_token(model.config, BLOCK) * BATCH * BLOCK / best_step
    name = "fp32" if dtype is torch.float32 else "bf16"
    return Comparison(f"MFU: GPT-2 small step 8x128, {name} ({device.type})", "GFLOP/s", f"{name} matmul peak",
                      peak / 1e9, "model FLOPs in training", achieved / 1e9, ">= 0.70" if name == "fp32" else ">= 0.55")


def bench_memory_reuse() -> Comparison:
    """A bare GPT-2-small step on the CPU, with glibc's default allocator and inside reuse_freed_memory."""
    model = gpt2_small(torch.device("cpu")).train()
    optimizer = make_optimizer(model, 1e-4)
    batch = torch.from_numpy(random_blocks(BATCH, model.config.vocab_size).astype(np.int64))

    def step():
        causal_lm_loss(model(batch).logits, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    default = best_of(step, 3)
    with reuse_freed_memory():
        step()
        reusing = best_of(step, 3)
    return Comparison("CPU memory reuse: GPT-2 small step 8x128", "steps/s", "glibc default", 1 / default,
                      "reuse_freed_memory", 1 / reusing)


def run() -> list[Comparison]:
    device = pick_device()
    rows = [bench_helper_vs_trainer(device), bench_mfu(device, torch.float32)]
    if device.type == "cuda" or cpu_supports_bf16():
        rows.append(bench_mfu(device, torch.bfloat16))
    else:
        print("  bf16 MFU skipped: this CPU has no native bf16 (autocast would emulate it, ~20x slower than fp32)")
    if device.type == "cpu":
        rows.append(bench_memory_reuse())
    return rows

