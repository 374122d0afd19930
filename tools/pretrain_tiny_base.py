"""Pretrain the course's tiny GPT-2 base on five Jane Austen novels (Persuasion held out).

The result, ``data/models/tiny-gpt2-base/``, is a real ``GPT2LMHeadModel`` with the full
GPT-2 vocabulary and the real GPT-2 tokenizer, small enough to commit. It never sees
Shakespeare, so fine-tuning it in 05 shows a genuine domain shift.

One idea beyond a plain loop, explained in the model card: **tokens that never occur in
the training text.** Of GPT-2's 50,257 tokens only ~14.7k occur in the five novels. Plain
cross-entropy only ever pushes the other ~35.5k down, and Adam turns those tiny gradients
into full-size steps, so their probability collapses to ~e^-17 and every unseen name in a
new novel costs ~17 nats. Here their embedding rows are held at exactly zero, so each
gets logit 0 in every context, and a small share of the target mass (the rate at which a
new Austen novel uses tokens the others never do, estimated leave-one-novel-out on the
training novels only) is put on that pool: Good-Turing-style smoothing for unseen tokens.
Because the rows are truly zero, the loss below is exactly the full 50,257-way softmax of
the saved model, computed over the seen rows plus one pooled term (3.4x cheaper).

The recipe itself (data, shape, optimizer, schedule, clipping, the pooled loss) is
``helpers/pretraining.py``, the same module notebook 04 trains the learner's GPT with; the
defaults below are its :data:`helpers.pretraining.SHIPPED` sizes, so a run without flags remakes
the shipped base. This script adds what a long run needs: resuming, logging, evaluation, the card.

Usage (about an hour on a 2-core CPU; resumable, checkpoints go to artifacts/pretrain/):

    python -m tools.pretrain_tiny_base
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2LMHeadModel

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from helpers.atomic import build_folder, write_text_atomic  # noqa: E402
from helpers.evaluation import sliding_window_nll  # noqa: E402
from helpers.models import tokenizer_dir  # noqa: E402
from helpers.pretraining import (  # noqa: E402
    HELD_OUT,
    SHIPPED,
    Corpus,
    Recipe,
    initial_model,
    load_corpus,
    optimizer_and_scheduler,
    random_batch,
    train_step,
    unseen_mask,
)
from helpers.runtime import set_seed  # noqa: E402
from helpers.training import (  # noqa: E402
    CHECKPOINT_KEYS,
    capture_rng_state,
    load_latest_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

SHAKESPEARE_PROBE = REPO / "data" / "raw" / "shakespeare" / "hamlet.txt"
OUT = REPO / "data" / "models" / "tiny-gpt2-base"
CHECKPOINTS = REPO / "artifacts" / "pretrain"  # step-XXXXXX/ folders, as helpers.training writes them
CHECKPOINT_EXTRAS = ("generator", "elapsed")  # what this script saves beyond helpers.training's keys


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=SHIPPED.num_steps)
    p.add_argument("--layers", type=int, default=SHIPPED.n_layer)
    p.add_argument("--width", type=int, default=SHIPPED.n_embd)
    p.add_argument("--heads", type=int, default=SHIPPED.n_head)
    p.add_argument("--block-size", type=int, default=SHIPPED.block_size)
    p.add_argument("--batch-size", type=int, default=SHIPPED.batch_size)
    p.add_argument("--lr", type=float, default=SHIPPED.lr)
    p.add_argument("--warmup", type=int, default=SHIPPED.warmup_steps)
    p.add_argument("--weight-decay", type=float, default=SHIPPED.weight_decay)
    p.add_argument("--dropout", type=float, default=SHIPPED.dropout)
    p.add_argument("--seed", type=int, default=SHIPPED.seed)
    p.add_argument("--threads", type=int, default=1, help="the shipped base was made on 1 thread")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--card-only", action="store_true", help="rewrite README.md from training_metrics.json and exit")
    return p.parse_args()


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe this command line runs (its defaults: :data:`helpers.pretraining.SHIPPED`)."""
    return Recipe(num_steps=args.steps, batch_size=args.batch_size, block_size=args.block_size, n_layer=args.layers,
                  n_embd=args.width, n_head=args.heads, lr=args.lr, warmup_steps=args.warmup,
                  weight_decay=args.weight_decay, dropout=args.dropout, seed=args.seed)


def write_card(metrics: dict, folder: Path = OUT) -> None:
    """The model card, README.md beside the weights, filled from training_metrics.json."""
    a = metrics["args"]
    command = (f"python -m tools.pretrain_tiny_base --steps {a['steps']} --batch-size {a['batch_size']} "
               f"--block-size {a['block_size']} --layers {a['layers']} --width {a['width']} --heads {a['heads']} "
               f"--lr {a['lr']} --warmup {a['warmup']} --weight-decay {a['weight_decay']} --dropout {a['dropout']} "
               f"--seed {a['seed']} --threads {a['threads']}")
    weights = folder / "model.safetensors"
    card = f"""# tiny-gpt2-base

The course's own small GPT-2, pretrained from scratch on five of Jane Austen's novels so
that the course runs offline. It is a real `GPT2LMHeadModel` with the full GPT-2
vocabulary ({metrics['seen_token_types']:,} of whose tokens occur in its training text) and the real GPT-2
tokenizer (saved beside it). It has never seen Shakespeare, so fine-tuning it on
Shakespeare in notebook 05 shows a genuine domain shift.

| | |
|---|---|
| architecture | GPT-2: {a['layers']} layers, {a['width']} wide, {a['heads']} heads, context {a['block_size']} tokens, tied embeddings |
| parameters | {metrics['parameters']:,} (of which the token embedding {50257 * a['width']:,}) |
| storage | fp16 safetensors, {weights.stat().st_size / 1e6:.1f} MB; load in fp32 (`dtype=torch.float32`, the course default) |
| training data | Emma, Mansfield Park, Northanger Abbey, Pride and Prejudice, Sense and Sensibility (Project Gutenberg, public domain; see `data/README.md`): {metrics['train_tokens']:,} tokens, the last 5 % of each novel ({metrics['valid_tokens']:,} tokens) kept for validation |
| held out | *Persuasion*, never seen in training ({metrics['persuasion_tokens']:,} tokens) |
| training | {metrics['steps']:,} steps of {a['batch_size']} x {a['block_size']} tokens ({metrics['tokens_seen']:,} tokens, {metrics['tokens_seen'] / metrics['train_tokens']:.1f} epochs); AdamW (lr {a['lr']}, betas 0.9/0.95, weight decay {a['weight_decay']} on matrices), {a['warmup']} warmup steps then cosine to 0, gradient clipping 1.0, dropout {a['dropout']}, fp32 |
| wall time | {metrics['wall_minutes']} minutes on {metrics['threads']} CPU thread(s) (2-core AMD EPYC, no native bf16) |
| seed | {metrics['seed']} |
| final train loss | {metrics['final_train_nll']:.3f} nats/token (perplexity {metrics['final_train_ppl']:.1f}), mean of the last 50 steps |

## Held-out perplexity

Measured after reloading the saved fp16 weights in fp32, with the course's own
`helpers.evaluation.sliding_window_nll` (context {metrics['eval_context']}, stride {metrics['eval_stride']}; every token scored once):

| text | perplexity |
|---|---|
| validation (last 5 % of the five training novels) | {metrics['valid_ppl']:.1f} |
| **Persuasion (held-out novel)** | **{metrics['persuasion_ppl']:.1f}** |
| Persuasion, same tokens shuffled | {metrics['persuasion_shuffled_ppl']:.0f} |
| Hamlet (Shakespeare, another domain) | {metrics['hamlet_ppl']:.1f} |

The shuffled text scores far worse than the real one: the model learned English word
order, not just word frequencies. Hamlet scores worse than Persuasion: that gap is what
fine-tuning in notebook 05 closes.

## Tokens that never occur in the training text

Plain cross-entropy only ever pushes the logits of never-seen tokens down, and Adam turns
those tiny gradients into full-size steps, so a new novel's unseen names end up costing
~17 nats each. Here the embedding rows of the {50257 - metrics['seen_token_types']:,} unseen tokens are held at exactly zero (logit 0
in every context), and {metrics['unseen_pool_target']:.2%} of the target mass is put on that pool: the rate at which one
training novel uses tokens the other four never do (estimated on the training novels only).
Because the rows are exactly zero, the training loss is exactly the full softmax of the
saved model. It is Good-Turing-style smoothing for unseen tokens, and it makes the output
layer {50257 / metrics['seen_token_types']:.1f}x cheaper to train (the loss only needs the seen rows).

## Reproduce

```bash
{command}
```

Resumable (checkpoint in `artifacts/pretrain/`); `training_metrics.json` beside this card
holds every figure above and the loss curve.

## Intended use and limits

A teaching model: it writes plausible-looking early-19th-century English and nothing
reliable. It is far too small for any real use, and it reflects the views of its source
novels. License: MIT (the weights); the training texts are public domain.
"""
    write_text_atomic(folder / "README.md", card)


def load_texts(tokenizer) -> Corpus:
    """The recipe's corpus (``helpers.pretraining.load_corpus``), with its sizes printed."""
    corpus = load_corpus(tokenizer)
    print(f"train {len(corpus.train):,} tokens, valid {len(corpus.valid):,}, held out ({HELD_OUT}) {len(corpus.held_out):,}")
    print(f"seen token types {len(corpus.seen_ids):,}, unseen {corpus.num_unseen:,}, "
          f"unseen-pool target {corpus.smoothing:.4f}")
    return corpus


def train_model(args: argparse.Namespace, model, texts: Corpus) -> tuple[list[dict], float]:
    """The training loop, resumed from the newest good checkpoint; returns the history and the minutes."""
    recipe = recipe_from_args(args)
    optimizer, scheduler = optimizer_and_scheduler(model, recipe)
    generator = torch.Generator().manual_seed(args.seed)
    step, elapsed, history = 0, 0.0, []
    found = load_latest_checkpoint(CHECKPOINTS, required=CHECKPOINT_KEYS + CHECKPOINT_EXTRAS)
    if found:
        state = found[0]
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        restore_rng_state(state["rng"])
        step, elapsed, history = state["step"], state["elapsed"], state["history"]
        print(f"resumed from step {step}")
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}")

    model.train()
    window = []
    t0 = time.perf_counter() - elapsed
    while step < args.steps:
        batch = random_batch(texts.train, args.batch_size, args.block_size, generator)
        window.append(train_step(model, batch, optimizer, scheduler, texts, recipe.grad_clip))
        step += 1
        if step % 50 == 0:
            mean = sum(window) / len(window)
            window = []
            tok_s = step * args.batch_size * args.block_size / (time.perf_counter() - t0)
            print(f"step {step:5d}  train nll {mean:.3f} (ppl {math.exp(mean):7.1f})  lr {scheduler.get_last_lr()[0]:.2e}"
                  f"  {tok_s:,.0f} tok/s  {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
            history.append({"step": step, "train_nll": mean})
        if step % args.eval_every == 0 or step == args.steps:
            v = sliding_window_nll(model, texts.valid, args.block_size, args.block_size // 2, batch_size=16)  # restores train mode
            print(f"step {step:5d}  valid ppl {v.perplexity:.1f}", flush=True)
            history[-1]["valid_ppl"] = v.perplexity
        if step % args.checkpoint_every == 0 or step == args.steps:
            save_checkpoint(CHECKPOINTS, step, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "history": history, "rng": capture_rng_state(), "generator": generator.get_state(),
                "elapsed": time.perf_counter() - t0,
            }, keep=2)
    return history, (time.perf_counter() - t0) / 60


def evaluate_and_save(args: argparse.Namespace, model, tokenizer, texts: dict, history: list[dict],
                      wall_minutes: float) -> dict:
    """Save the fp16 model with its tokenizer, figures and card; the folder is swapped in whole at the end."""
    model.eval()
    with build_folder(OUT) as folder:
        model.half().save_pretrained(folder)  # fp16 storage keeps the folder under 16 MB
        tokenizer.save_pretrained(folder)
        reloaded = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32)
        ctx, stride = args.block_size, args.block_size // 2
        held_out, valid = texts.held_out, texts.valid
        held = sliding_window_nll(reloaded, torch.tensor(held_out), ctx, stride, batch_size=16)
        shuffled = torch.tensor(held_out)[torch.randperm(len(held_out), generator=torch.Generator().manual_seed(0))]
        held_shuffled = sliding_window_nll(reloaded, shuffled, ctx, stride, batch_size=16)
        hamlet = tokenizer(SHAKESPEARE_PROBE.read_text(encoding="utf-8").strip()).input_ids
        shakespeare = sliding_window_nll(reloaded, torch.tensor(hamlet), ctx, stride, batch_size=16)
        valid_final = sliding_window_nll(reloaded, valid, ctx, stride, batch_size=16)
        metrics = {
            "parameters": sum(p.numel() for p in reloaded.parameters()),
            "steps": args.steps, "tokens_seen": args.steps * args.batch_size * args.block_size,
            "wall_minutes": round(wall_minutes, 1), "threads": args.threads, "seed": args.seed,
            "final_train_nll": history[-1]["train_nll"], "final_train_ppl": math.exp(history[-1]["train_nll"]),
            "valid_ppl": valid_final.perplexity,
            "persuasion_ppl": held.perplexity, "persuasion_shuffled_ppl": held_shuffled.perplexity,
            "hamlet_ppl": shakespeare.perplexity,
            "eval_context": ctx, "eval_stride": stride,
            "train_tokens": len(texts.train), "valid_tokens": len(valid), "persuasion_tokens": len(held_out),
            "seen_token_types": len(texts.seen_ids), "unseen_pool_target": texts.smoothing,
            "args": vars(args), "history": history,
        }
        (folder / "training_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        write_card(metrics, folder)
    return metrics


def main() -> None:
    args = parse_args()
    if args.card_only:
        write_card(json.loads((OUT / "training_metrics.json").read_text()))
        return
    torch.set_num_threads(args.threads)
    set_seed(args.seed)

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
    texts = load_texts(tokenizer)
    model = initial_model(recipe_from_args(args), texts, len(tokenizer), tokenizer.eos_token_id)
    history, wall_minutes = train_model(args, model, texts)
    assert torch.all(model.transformer.wte.weight[unseen_mask(texts)] == 0), "unseen rows must stay exactly zero"
    metrics = evaluate_and_save(args, model, tokenizer, texts, history, wall_minutes)
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("history", "args")}, indent=1))


if __name__ == "__main__":
    main()
