"""The pretraining recipe, defined once: data, shape, optimizer, schedule, clipping and the unseen-token pool.

Introduced in ``04_pretraining.ipynb``, which trains the learner's GPT with it (small and short),
and used by ``tools/pretrain_tiny_base.py``, which made the shipped tiny base with it (the same
recipe at :data:`SHIPPED`'s sizes, run for an hour). Nothing here prints, times or saves.

* Data: five Jane Austen novels, the last 5 % of each kept for validation; *Persuasion* held out.
* Batches: random windows of ``block_size + 1`` tokens from the training stream.
* Optimizer and schedule: ``helpers.training.make_optimizer`` (AdamW, betas 0.9/0.95, weight decay
  on matrices only) and ``make_scheduler`` (linear warmup, then cosine to 0); clipping at 1.0.
* Unseen tokens: the embedding rows of tokens the training text never shows are held at exactly
  zero (logit 0 in every context) and a share of the target mass (the rate at which one training
  novel uses tokens the other four never do) goes to that pool: :func:`pooled_loss`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from helpers.data import tokenize_texts
from helpers.settings import REPO_ROOT
from helpers.training import optimizer_and_scheduler  # noqa: F401  (04 imports it from here, beside the loop it drives)

AUSTEN = REPO_ROOT / "data" / "raw" / "austen"
HELD_OUT = "persuasion.txt"
VALID_FRACTION = 0.05  # the last 5% of each training novel, for monitoring only


@dataclass(frozen=True)
class Recipe:
    """The sizes and hyperparameters of one pretraining run (defaults: the shipped tiny base's). Notebook 04."""

    num_steps: int = 1800
    batch_size: int = 8
    block_size: int = 256
    n_layer: int = 6
    n_embd: int = 128
    n_head: int = 4
    lr: float = 2e-3
    warmup_steps: int = 200
    weight_decay: float = 0.1
    dropout: float = 0.1
    grad_clip: float = 1.0
    seed: int = 1234


SHIPPED = Recipe()  # how data/models/tiny-gpt2-base was made (its training_metrics.json holds the same args)


@dataclass(frozen=True)
class Corpus:
    """The token streams of a run and the seen-token bookkeeping the pooled loss needs. Notebook 04."""

    train: torch.Tensor  # (N,) the five novels' first 95 %, each followed by end-of-text
    valid: torch.Tensor  # (M,) their last 5 %
    held_out: list[int]  # Persuasion, never trained on
    seen_ids: torch.Tensor  # sorted ids of the token types the training stream contains
    target_index: torch.Tensor  # (vocab,) id -> its index among seen_ids (-1: unseen)
    smoothing: float  # share of the target mass put on the unseen pool
    num_unseen: int


def tokenize_novels(tokenizer, folder: Path = AUSTEN) -> dict[str, list[int]]:
    """Every ``*.txt`` novel in ``folder``, tokenized whole by 02's ``tokenize_texts``, by file name. Notebook 04."""
    paths = sorted(folder.glob("*.txt"))
    encoded = tokenize_texts([p.read_text(encoding="utf-8").strip() for p in paths], tokenizer, progress=False)
    novels = {p.name: ids.tolist() for p, ids in zip(paths, encoded, strict=True)}
    if HELD_OUT not in novels:
        raise FileNotFoundError(f"{folder} has no {HELD_OUT}; the recipe holds that novel out (see data/README.md)")
    return novels


def unseen_rate_leave_one_out(train: dict[str, list[int]]) -> float:
    """Token-weighted share of each training novel's tokens that the other novels never use. Notebook 04."""
    unseen, total = 0, 0
    for name, ids in train.items():
        others = {t for other, o in train.items() if other != name for t in o}
        unseen += sum(t not in others for t in ids)
        total += len(ids)
    return unseen / total


def load_corpus(tokenizer) -> Corpus:
    """The recipe's data: train/valid streams of the five novels, the held-out one, the seen tokens. Notebook 04."""
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
    return Corpus(train=torch.tensor(train_ids), valid=torch.tensor(valid_ids), held_out=held_out, seen_ids=seen_ids,
                  target_index=target_index, smoothing=smoothing, num_unseen=len(tokenizer) - len(seen_ids))


def initial_model(recipe: Recipe, corpus: Corpus, vocab_size: int, eos_token_id: int) -> GPT2LMHeadModel:
    """A GPT-2 of the recipe's shape, initialised as transformers initialises GPT-2 (from torch's global
    random state), with the unseen tokens' embedding rows set to exactly zero. Notebook 04."""
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=recipe.block_size, n_embd=recipe.n_embd, n_layer=recipe.n_layer,
        n_head=recipe.n_head, resid_pdrop=recipe.dropout, embd_pdrop=recipe.dropout, attn_pdrop=recipe.dropout,
        bos_token_id=eos_token_id, eos_token_id=eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.wte.weight[unseen_mask(corpus)] = 0.0
    return model


def unseen_mask(corpus: Corpus) -> torch.Tensor:
    """(vocab,) True for every token the training stream never shows. Notebook 04."""
    mask = torch.ones(len(corpus.target_index), dtype=torch.bool)
    mask[corpus.seen_ids] = False
    return mask


def random_batch(train: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator) -> torch.Tensor:
    """(batch_size, block_size + 1) windows of ``train`` starting at random places: inputs and their targets. Notebook 04."""
    starts = torch.randint(0, len(train) - block_size - 1, (batch_size,), generator=generator)
    return torch.stack([train[s : s + block_size + 1] for s in starts])


def pooled_loss(hidden: torch.Tensor, embedding: torch.Tensor, targets: torch.Tensor,
                corpus: Corpus) -> tuple[torch.Tensor, torch.Tensor]:
    """(training loss, plain next-token NLL) of the full-vocabulary softmax whose unseen rows are zero.

    ``hidden`` is (B, T, C), what the tied LM head reads; only the seen rows of ``embedding``
    are multiplied, and the unseen ones enter as one pooled logit, log(num_unseen) (each has
    logit 0). The loss puts ``corpus.smoothing`` of the target mass on the pool. Notebook 04.
    """
    seen_logits = hidden @ embedding[corpus.seen_ids].T  # (B, T, V_seen)
    pool_logit = torch.full_like(seen_logits[..., :1], math.log(corpus.num_unseen))  # n_unseen tokens with logit 0
    log_probs = torch.cat([seen_logits, pool_logit], dim=-1).log_softmax(-1).flatten(0, 1)
    nll = F.nll_loss(log_probs, corpus.target_index[targets].flatten())
    pool_nll = -log_probs[:, -1].mean()
    return (1 - corpus.smoothing) * nll + corpus.smoothing * pool_nll, nll


def final_hidden(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """What the LM head reads, (B, T, C), from the learner's GPT (03) or a transformers GPT-2. Notebook 04."""
    if hasattr(model, "hidden_states"):
        return model.hidden_states(inputs)
    return model.transformer(inputs).last_hidden_state


def train_step(model: torch.nn.Module, batch: torch.Tensor, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, corpus: Corpus, grad_clip: float) -> float:
    """One step of the recipe: pooled loss, backward, clip, AdamW, schedule; returns the plain NLL. Notebook 04."""
    loss, nll = pooled_loss(final_hidden(model, batch[:, :-1]), model.transformer.wte.weight, batch[:, 1:], corpus)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return nll.item()
