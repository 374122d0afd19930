"""Generation by hand (notebook 03, ``helpers.gpt``) against transformers' ``generate``, in one run.

1. Greedy decoding of 128 new tokens with the tiny base, batch 1, on the CPU: our loop with its
   KV cache against ``GPT2LMHeadModel.generate`` (its own cache, and the fused GELU that
   ``helpers.models.load_model`` gives it). Target: ratio >= 0.8. Both must produce the same
   tokens, or the row would compare different work.
2. Our loop with the cache against the same loop without it, over a 256-token sequence (a
   one-token prompt and 255 new tokens: the tiny base's whole context). Reported, no target.

Each number is the best of three runs (a shared machine only ever makes things slower).
"""

from __future__ import annotations

import time

import torch
from transformers import AutoConfig, AutoTokenizer, GPT2LMHeadModel

from bench import Comparison, best_of
from helpers.gpt import GPT, generate
from helpers.models import tiny_base_dir, tokenizer_dir, with_fused_gelu

PROMPT = "It is a truth universally acknowledged, that"
NEW_TOKENS = 128
SEQUENCE = 256  # prompt + new tokens in the cache vs no-cache row: the tiny base's context


def run() -> list[Comparison]:
    base = tiny_base_dir()
    if not (base / "config.json").is_file():
        print(f"  skipping: {base} does not exist yet (python -m tools.pretrain_tiny_base writes it)")
        return []
    hf = GPT2LMHeadModel.from_pretrained(base, config=with_fused_gelu(AutoConfig.from_pretrained(base)),
                                         dtype=torch.float32).eval()
    ours = GPT.from_transformers(hf)
    prompt = AutoTokenizer.from_pretrained(tokenizer_dir())(PROMPT, return_tensors="pt").input_ids

    def theirs_greedy() -> torch.Tensor:
        return hf.generate(prompt, do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None,
                           pad_token_id=hf.config.eos_token_id)

    if not torch.equal(generate(ours, prompt, NEW_TOKENS), theirs_greedy()):
        raise RuntimeError("helpers.gpt.generate and model.generate chose different tokens; the speeds would not compare")
    rows = [Comparison(f"greedy generation, {NEW_TOKENS} new tokens (tiny base, batch 1)", "tokens/s",
                       "transformers generate", NEW_TOKENS / best_of(theirs_greedy),
                       "helpers.gpt.generate", NEW_TOKENS / best_of(lambda: generate(ours, prompt, NEW_TOKENS)),
                       ">= 0.8")]
    start = torch.tensor([[hf.config.eos_token_id]])
    new = SEQUENCE - start.shape[1]
    rows.append(Comparison(f"KV cache: {SEQUENCE}-token sequence, greedy (tiny base)", "tokens/s", "no cache",
                           new / best_of(lambda: generate(ours, start, new, use_cache=False)),
                           "KV cache", new / best_of(lambda: generate(ours, start, new))))
    return rows


if __name__ == "__main__":
    began = time.perf_counter()
    for row in run():
        print(row, f"ratio {row.ratio:.3f}")
    print(f"{time.perf_counter() - began:.0f} s")
