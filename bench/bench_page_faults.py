"""Page faults of a training-like step with glibc's default allocator and inside ``reuse_freed_memory``.

A step of a tiny GPT-2 (1 layer, 16 wide) on 8 x 64 tokens frees its logits and their
gradient, about 100 MB, because the vocabulary is GPT-2's 50,257 tokens. By default glibc
returns blocks that large to the OS, so the next step faults every page in again; inside
``helpers.runtime.reuse_freed_memory`` the freed memory is reused. The kernel counts the
faults (``getrusage``'s minor faults). The first steps inside the block grow the heap, so the
last of six is compared with the fewer of two outside it. Target: the reusing step faults at
most 1 % as often. ``bench_training`` measures what that is worth in time on GPT-2 small.
Linux (glibc) only.
"""

from __future__ import annotations

import resource

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from bench import Comparison
from helpers import runtime
from helpers.training import causal_lm_loss


def run() -> list[Comparison]:
    if runtime._glibc() is None:
        print("  skipped: needs glibc (Linux)")
        return []
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64))
    batch = torch.randint(0, model.config.vocab_size, (8, 64))

    def page_faults_of_one_step() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        causal_lm_loss(model(batch).logits, batch).backward()
        model.zero_grad(set_to_none=True)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    with runtime.reuse_freed_memory():
        reusing = [page_faults_of_one_step() for _ in range(6)]
    default = [page_faults_of_one_step() for _ in range(2)]  # on exit glibc returns memory again
    print(f"  page faults per step: inside {reusing}, default {default}")
    return [Comparison("CPU memory reuse: page faults of a tiny-GPT-2 step, 8x64", "faults", "glibc default",
                       min(default), "reuse_freed_memory", reusing[-1], "<= 0.01")]
