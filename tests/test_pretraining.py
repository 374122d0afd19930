"""helpers.pretraining, the one recipe of notebook 04 and tools/pretrain_tiny_base.py.

References nobody here wrote: ``torch.nn.functional.cross_entropy`` over the full vocabulary,
``torch.optim.AdamW`` and a warmup + cosine schedule written out here, transformers' GPT-2 (the
recipe's model) beside notebook 03's GPT, and the shipped base's own ``training_metrics.json``.
Models are one or two layers wide 32: a step must run in a fraction of a second.
"""

from __future__ import annotations

import copy
import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers import gpt, pretraining
from helpers.models import tiny_base_dir
from tests.notebook_code import notebook_definitions
from tools import pretrain_tiny_base as tool

SMALL = pretraining.Recipe(num_steps=10, batch_size=2, block_size=16, n_layer=1, n_embd=32, n_head=2, warmup_steps=3)


@pytest.fixture(scope="module")
def corpus(tokenizer):
    return pretraining.load_corpus(tokenizer)


def _model(corpus, tokenizer, recipe=SMALL, seed=0):
    torch.manual_seed(seed)
    return pretraining.initial_model(recipe, corpus, len(tokenizer), tokenizer.eos_token_id)


# --- the tool runs the recipe, and the shipped base was made with it ---------------------------


def test_the_tools_default_run_is_the_shipped_recipe(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pretrain_tiny_base"])
    assert tool.recipe_from_args(tool.parse_args()) == pretraining.SHIPPED


def test_the_shipped_base_was_made_with_the_recipe(corpus):
    metrics = json.loads((tiny_base_dir() / "training_metrics.json").read_text())
    made_with = tool.recipe_from_args(tool.argparse.Namespace(**metrics["args"]))
    assert made_with == pretraining.SHIPPED
    assert metrics["train_tokens"] == len(corpus.train) and metrics["valid_tokens"] == len(corpus.valid)
    assert metrics["persuasion_tokens"] == len(corpus.held_out)
    assert metrics["seen_token_types"] == len(corpus.seen_ids)
    assert metrics["unseen_pool_target"] == pytest.approx(corpus.smoothing, abs=1e-12)


def test_the_tool_has_no_second_copy_of_the_recipe():
    for name in ("train_step", "random_batch", "initial_model", "optimizer_and_scheduler", "load_corpus"):
        assert getattr(tool, name) is getattr(pretraining, name), name
    for name in ("pooled_loss", "tokenize_novels", "unseen_rate_leave_one_out", "make_optimizer"):
        assert not hasattr(tool, name), f"tools/pretrain_tiny_base.py defines or imports {name} again"


# --- the pieces ---------------------------------------------------------------------------------


def test_the_corpus_holds_persuasion_out_and_counts_seen_tokens(corpus, tokenizer):
    held = set(corpus.held_out)
    assert len(corpus.seen_ids) + corpus.num_unseen == len(tokenizer)
    assert torch.equal(corpus.seen_ids, torch.tensor(sorted(set(corpus.train.tolist()))))
    assert (corpus.target_index[corpus.seen_ids] == torch.arange(len(corpus.seen_ids))).all()
    assert held - set(corpus.train.tolist()), "Persuasion has names the training novels never use"
    assert 0 < corpus.smoothing < 0.1


def test_leave_one_out_rate_by_hand():
    novels = {"a": [1, 2, 3, 3], "b": [1, 2], "c": [2, 4]}
    # a: 3, 3 unseen in b, c; b: none; c: 4 -> 3 of 8 tokens
    assert pretraining.unseen_rate_leave_one_out(novels) == 3 / 8


def test_pooled_loss_is_the_full_vocabulary_softmax_with_the_unseen_pool(corpus, tokenizer):
    model = _model(corpus, tokenizer).eval()
    batch = pretraining.random_batch(corpus.train, 2, 16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss, nll = pretraining.pooled_loss(pretraining.final_hidden(model, batch[:, :-1]),
                                            model.transformer.wte.weight, batch[:, 1:], corpus)
        log_probs = model(batch[:, :-1]).logits.log_softmax(-1).flatten(0, 1)  # all 50,257 tokens
    full_nll = F.cross_entropy(log_probs, batch[:, 1:].flatten())
    pool_nll = -log_probs[:, pretraining.unseen_mask(corpus)].logsumexp(-1).mean()
    assert nll.item() == pytest.approx(full_nll.item(), abs=1e-5)
    expected = (1 - corpus.smoothing) * full_nll + corpus.smoothing * pool_nll
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_random_batches_are_windows_of_the_stream(corpus):
    batch = pretraining.random_batch(corpus.train, 4, 16, torch.Generator().manual_seed(1))
    assert batch.shape == (4, 17)
    text = corpus.train.tolist()
    for row in batch.tolist():
        assert any(text[s : s + 17] == row for s in range(len(text) - 16) if text[s] == row[0])


def test_weight_decay_falls_on_matrices_only(corpus, tokenizer):
    optimizer, _ = pretraining.optimizer_and_scheduler(_model(corpus, tokenizer), SMALL)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == SMALL.weight_decay and plain["weight_decay"] == 0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])


# --- one step of the recipe equals a step written by hand ---------------------------------------


def _lr_by_hand(step: int, recipe: pretraining.Recipe) -> float:
    """Linear warmup, then cosine to 0 (the learning rate of the step after ``step`` steps)."""
    if step < recipe.warmup_steps:
        return recipe.lr * step / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / (recipe.num_steps - recipe.warmup_steps)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * progress))


def test_the_schedule_is_warmup_then_cosine(corpus, tokenizer):
    optimizer, scheduler = pretraining.optimizer_and_scheduler(_model(corpus, tokenizer), SMALL)
    for step in range(SMALL.num_steps + 1):
        assert scheduler.get_last_lr()[0] == pytest.approx(_lr_by_hand(step, SMALL), abs=1e-12), step
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("which", ["transformers", "notebook 03's GPT"])
def test_one_recipe_step_equals_a_step_written_by_hand(which, corpus, tokenizer):
    recipe = pretraining.Recipe(**{**SMALL.__dict__, "dropout": 0.0, "warmup_steps": 0})  # no dropout: deterministic
    hf = _model(corpus, tokenizer, recipe).train()
    model = hf if which == "transformers" else gpt.GPT.from_transformers(hf).train()
    by_hand = copy.deepcopy(model)
    batch = pretraining.random_batch(corpus.train, 2, 16, torch.Generator().manual_seed(2))
    optimizer, scheduler = pretraining.optimizer_and_scheduler(model, recipe)
    for _ in range(2):  # two steps: Adam's moments and bias correction from the second step on
        pretraining.train_step(model, batch, optimizer, scheduler, corpus, recipe.grad_clip)

    # by hand: the full 50,257-way softmax with a pooled target, the unseen rows' gradient dropped,
    # torch's clip and AdamW, the schedule above
    params = dict(by_hand.named_parameters())
    decay = [p for p in params.values() if p.dim() >= 2]
    plain = [p for p in params.values() if p.dim() < 2]
    adamw = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                               {"params": plain, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.95), eps=1e-8)
    for step in range(2):
        logits = by_hand(batch[:, :-1])
        logits = logits.logits if hasattr(logits, "logits") else logits
        log_probs = logits.log_softmax(-1).flatten(0, 1)
        pool = log_probs[:, pretraining.unseen_mask(corpus)].logsumexp(-1).mean()
        loss = (1 - corpus.smoothing) * F.nll_loss(log_probs, batch[:, 1:].flatten()) - corpus.smoothing * pool
        loss.backward()
        by_hand.transformer.wte.weight.grad[pretraining.unseen_mask(corpus)] = 0  # the unseen rows are held at zero
        torch.nn.utils.clip_grad_norm_(by_hand.parameters(), recipe.grad_clip)
        for group in adamw.param_groups:
            group["lr"] = _lr_by_hand(step, recipe)
        adamw.step()
        adamw.zero_grad()
    for name, p in model.named_parameters():
        # Adam divides by sqrt(v): where a gradient is ~1e-9, float rounding moves the step; 1 % of lr bounds it
        assert torch.allclose(p, params[name], atol=0.01 * recipe.lr, rtol=0), name
    assert torch.all(model.transformer.wte.weight[pretraining.unseen_mask(corpus)] == 0), "unseen rows stay zero"


def test_the_notebooks_loop_step_is_the_recipes(corpus, tokenizer):
    ns = notebook_definitions("04_pretraining.ipynb")
    recipe = pretraining.Recipe(**{**SMALL.__dict__, "dropout": 0.0})
    mine = gpt.GPT.from_transformers(_model(corpus, tokenizer, recipe)).train()
    theirs = copy.deepcopy(mine)
    batch = pretraining.random_batch(corpus.train, 2, 16, torch.Generator().manual_seed(3))
    for model, step in ((mine, ns["train_step"]), (theirs, pretraining.train_step)):
        optimizer, scheduler = pretraining.optimizer_and_scheduler(model, recipe)
        for _ in range(2):
            step(model, batch, optimizer, scheduler, corpus, recipe.grad_clip)
    for (name, a), b in zip(mine.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), name


def test_the_notebooks_adamw_and_schedule_equal_torchs_and_the_recipes():
    ns = notebook_definitions("04_pretraining.ipynb")
    torch.manual_seed(0)
    w = torch.randn(5, 3, requires_grad=True)
    reference = w.detach().clone().requires_grad_()
    optimizer = torch.optim.AdamW([reference], lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    state = None
    for step in range(1, 4):
        grad = torch.randn(5, 3)
        reference.grad = grad.clone()
        optimizer.step()
        with torch.no_grad():
            state = ns["adamw_step"](w, grad, state, step, lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    assert torch.allclose(w, reference, atol=1e-7)
    for step in range(SMALL.num_steps + 1):
        assert ns["lr_at"](step, SMALL.lr, SMALL.warmup_steps, SMALL.num_steps) == pytest.approx(_lr_by_hand(step, SMALL))
