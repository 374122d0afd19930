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

Usage (about an hour on a 2-core CPU; resumable, checkpoints go to artifacts/pretrain/):

    python -m tools.pretrain_tiny_base --steps 6000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from helpers.atomic import build_folder, write_text_atomic  # noqa: E402
from helpers.evaluation import sliding_window_nll  # noqa: E402
from helpers.models import tokenizer_dir  # noqa: E402
from helpers.runtime import set_seed  # noqa: E402
from helpers.training import (  # noqa: E402
    CHECKPOINT_KEYS,
    capture_rng_state,
    load_latest_checkpoint,
    make_optimizer,
    make_scheduler,
    restore_rng_state,
    save_checkpoint,
)

AUSTEN = REPO / "data" / "raw" / "austen"
HELD_OUT = "persuasion.txt"
SHAKESPEARE_PROBE = REPO / "data" / "raw" / "shakespeare" / "hamlet.txt"
OUT = REPO / "data" / "models" / "tiny-gpt2-base"
CHECKPOINTS = REPO / "artifacts" / "pretrain"  # step-XXXXXX/ folders, as helpers.training writes them
CHECKPOINT_EXTRAS = ("generator", "elapsed")  # what this script saves beyond helpers.training's keys
VALID_FRACTION = 0.05  # the last 5% of each training novel, for monitoring only


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--card-only", action="store_true", help="rewrite README.md from training_metrics.json and exit")
    return p.parse_args()


def tokenize_novels(tokenizer) -> dict[str, list[int]]:
    return {p.name: tokenizer(p.read_text(encoding="utf-8").strip()).input_ids for p in sorted(AUSTEN.glob("*.txt"))}


def unseen_rate_leave_one_out(train: dict[str, list[int]]) -> float:
    """Token-weighted share of each training novel's tokens that the other novels never use."""
    unseen, total = 0, 0
    for name, ids in train.items():
        others = {t for other, o in train.items() if other != name for t in o}
        unseen += sum(t not in others for t in ids)
        total += len(ids)
    return unseen / total


def pooled_loss(model, inputs, targets, seen_ids, target_index, log_num_unseen, smoothing):
    """Cross-entropy of the full-vocabulary softmax whose unseen rows are zero (see module doc)."""
    hidden = model.transformer(inputs).last_hidden_state  # (B, T, C)
    seen_logits = hidden @ model.transformer.wte.weight[seen_ids].T  # (B, T, V_seen)
    pool_logit = torch.full_like(seen_logits[..., :1], log_num_unseen)  # n_unseen tokens with logit 0
    log_probs = torch.cat([seen_logits, pool_logit], dim=-1).log_softmax(-1).flatten(0, 1)
    nll = F.nll_loss(log_probs, target_index[targets].flatten())
    pool_nll = -log_probs[:, -1].mean()
    return (1 - smoothing) * nll + smoothing * pool_nll, nll


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


def load_texts(tokenizer) -> dict:
    """Train/valid streams of the five novels, the held-out one, and the seen-token bookkeeping."""
    eos = tokenizer.eos_token_id
    novels = tokenize_novels(tokenizer)
    held_out = novels.pop(HELD_OUT)
    smoothing = unseen_rate_leave_one_out(novels)
    train_ids, valid_ids = [], []
    for ids in novels.values():
        cut = int(len(ids) * (1 - VALID_FRACTION))
        train_ids += ids[:cut] + [eos]
        valid_ids += ids[cut:] + [eos]
    seen_ids = torch.tensor(sorted(set(train_ids)))
    target_index = torch.full((len(tokenizer),), -1, dtype=torch.long)
    target_index[seen_ids] = torch.arange(len(seen_ids))
    texts = {"train": torch.tensor(train_ids), "valid": torch.tensor(valid_ids), "held_out": held_out,
             "seen_ids": seen_ids, "target_index": target_index, "smoothing": smoothing,
             "num_unseen": len(tokenizer) - len(seen_ids)}
    print(f"train {len(texts['train']):,} tokens, valid {len(texts['valid']):,}, held out ({HELD_OUT}) {len(held_out):,}")
    print(f"seen token types {len(seen_ids):,}, unseen {texts['num_unseen']:,}, unseen-pool target {smoothing:.4f}")
    return texts


def train_model(args: argparse.Namespace, model, texts: dict) -> tuple[list[dict], float]:
    """The training loop, resumed from the newest good checkpoint; returns the history and the minutes."""
    train, valid, seen_ids, target_index = texts["train"], texts["valid"], texts["seen_ids"], texts["target_index"]
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    scheduler = make_scheduler(optimizer, args.warmup, args.steps)
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
    log_num_unseen = math.log(texts["num_unseen"])
    window = []
    t0 = time.perf_counter() - elapsed
    while step < args.steps:
        starts = torch.randint(0, len(train) - args.block_size - 1, (args.batch_size,), generator=generator)
        chunk = torch.stack([train[s : s + args.block_size + 1] for s in starts])
        loss, nll = pooled_loss(model, chunk[:, :-1], chunk[:, 1:], seen_ids, target_index, log_num_unseen,
                                texts["smoothing"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window.append(nll.item())
        if step % 50 == 0:
            mean = sum(window) / len(window)
            window = []
            tok_s = step * args.batch_size * args.block_size / (time.perf_counter() - t0)
            print(f"step {step:5d}  train nll {mean:.3f} (ppl {math.exp(mean):7.1f})  lr {scheduler.get_last_lr()[0]:.2e}"
                  f"  {tok_s:,.0f} tok/s  {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
            history.append({"step": step, "train_nll": mean})
        if step % args.eval_every == 0 or step == args.steps:
            v = sliding_window_nll(model, valid, args.block_size, args.block_size // 2, batch_size=16)  # restores train mode
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
        held_out, valid = texts["held_out"], texts["valid"]
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
            "train_tokens": len(texts["train"]), "valid_tokens": len(valid), "persuasion_tokens": len(held_out),
            "seen_token_types": len(texts["seen_ids"]), "unseen_pool_target": texts["smoothing"],
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
    eos = tokenizer.eos_token_id
    texts = load_texts(tokenizer)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=args.block_size, n_embd=args.width, n_layer=args.layers,
        n_head=args.heads, resid_pdrop=args.dropout, embd_pdrop=args.dropout, attn_pdrop=args.dropout,
        bos_token_id=eos, eos_token_id=eos,
    )
    model = GPT2LMHeadModel(config)
    unseen_mask = torch.ones(len(tokenizer), dtype=torch.bool)
    unseen_mask[texts["seen_ids"]] = False
    with torch.no_grad():
        model.transformer.wte.weight[unseen_mask] = 0.0
    history, wall_minutes = train_model(args, model, texts)
    assert torch.all(model.transformer.wte.weight[unseen_mask] == 0), "unseen rows must stay exactly zero"
    metrics = evaluate_and_save(args, model, tokenizer, texts, history, wall_minutes)
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("history", "args")}, indent=1))


if __name__ == "__main__":
    main()
