"""int8 dynamic quantization vs fp32 on the CPU: size, greedy generation speed, perplexity.

Two models: the course's tiny base (``data/models/tiny-gpt2-base``, skipped with a message
when it is missing) and a GPT-2-small-shaped model (``GPT2Config()`` defaults, 124M
parameters) with random weights, since the hub is out of reach here: size and speed depend
on the shapes, not on the values. Perplexity is measured on the tiny base only (on the
first 2,000 tokens of *Persuasion*, its held-out novel); a random model's perplexity says
nothing. Speeds depend on the machine and on what else runs: read the ratios.
"""

from __future__ import annotations

import gc

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from bench import Comparison
from helpers.deployment import compare_logits, measure_generation, model_size_bytes, quantize_int8
from helpers.evaluation import perplexity
from helpers.models import tiny_base_dir, tokenizer_dir
from helpers.settings import get_settings

PROMPTS = ("It is a truth universally acknowledged, that", "Anne Elliot had been")
NEW_TOKENS = 16  # per prompt: enough steps to average over, short enough for a 124M model on one core
EVAL_TOKENS = 2_000


def compare_variants(name: str, model: torch.nn.Module, tokenizer, eval_ids: torch.Tensor | None) -> list[Comparison]:
    int8 = quantize_int8(model)
    head_fp32 = quantize_int8(model, quantize_embeddings=False, check=False)
    mb = 1e6
    fp32_size, int8_size, head_fp32_size = (model_size_bytes(m) / mb for m in (model, int8, head_fp32))
    fp32_speed = measure_generation(model, tokenizer, PROMPTS, NEW_TOKENS)
    int8_speed = measure_generation(int8, tokenizer, PROMPTS, NEW_TOKENS)
    rows = [
        Comparison(f"{name}: weights size", "MB", "fp32", fp32_size, "int8", int8_size, "<= 0.35"),
        Comparison(f"{name}: int8 size, tied embedding+head", "MB", "kept fp32", head_fp32_size, "shared int8",
                   int8_size),
        Comparison(f"{name}: greedy generation", "tokens/s", "fp32", fp32_speed, "int8", int8_speed, ">= 1.0"),
    ]
    if eval_ids is not None:
        context = model.config.n_positions
        rows.append(Comparison(f"{name}: perplexity, Persuasion[:{len(eval_ids)}]", "ppl", "fp32",
                               perplexity(model, eval_ids, context_len=context), "int8",
                               perplexity(int8, eval_ids, context_len=context), "<= 1.02"))
        agreement = compare_logits(model, int8, eval_ids[: min(context, len(eval_ids))])["top1_agreement"]
        rows.append(Comparison(f"{name}: next-token top-1 same as fp32", "share", "fp32", 1.0, "int8", agreement,
                               ">= 0.95"))
    return rows


def run() -> list[Comparison]:
    rows: list[Comparison] = []
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
    base = tiny_base_dir()
    if (base / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        text = (get_settings().data_dir / "raw" / "austen" / "persuasion.txt").read_text(encoding="utf-8")
        eval_ids = torch.tensor(tokenizer(text[:20_000], verbose=False).input_ids[:EVAL_TOKENS])
        rows += compare_variants("tiny base", model, tokenizer, eval_ids)
        del model
        gc.collect()
    else:
        print(f"  skipping the tiny base: {base} does not exist yet (python -m tools.pretrain_tiny_base writes it)")
    torch.manual_seed(0)
    gpt2_small = GPT2LMHeadModel(GPT2Config()).eval()  # GPT-2 small's shapes, random weights
    rows += compare_variants("GPT-2 small shape (random)", gpt2_small, tokenizer, None)
    return rows
