"""Exercise checks of ``05_finetuning_gpt2.ipynb``."""

from __future__ import annotations

from collections.abc import Callable

from helpers.exercises.core import CORRECT, WRONG, _call, _check, _not_done, _schedule_gap

_SCHEDULE_CASES = ((3e-4, 10, 100), (1e-3, 0, 20), (5e-4, 3, 7), (6e-4, 1, 2))  # (peak_lr, warmup_steps, num_steps)


def check_tokens_per_step(answer) -> None:
    """Exercise 1 of ``05_finetuning_gpt2.ipynb``: tokens one optimizer step sees in ``gpu`` mode (one process)."""
    from helpers.settings import make_settings

    gpu = make_settings("gpu")
    _check(
        "tokens per optimizer step in gpu mode",
        answer,
        gpu.batch_size * gpu.block_size * gpu.grad_accum_steps,
        "multiply the examples per micro-batch, the tokens per example and the micro-batches per step "
        "(batch_size, block_size, grad_accum_steps).",
        atol=0.5,
    )


def check_causal_lm_loss(fn: Callable | None) -> None:
    """Exercise 2 of ``05_finetuning_gpt2.ipynb``: the shifted-label loss ``fn(logits, input_ids)``.

    Compared with transformers' own loss (``model(input_ids, labels=input_ids).loss``) of a small
    random GPT-2; the two usual mistakes (no shift, the seed article's shift along the batch axis)
    get their own hint.
    """
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    name = "shifted-label cross-entropy"
    if _not_done(name, fn):
        return
    hint = ("position t is scored on token t + 1: logits[:, :-1] against input_ids[:, 1:] (the time axis), both "
            "flattened for cross_entropy: logits to (N, vocab), labels to (N,).")
    with torch.random.fork_rng():  # the learner's random state is left as it was
        torch.manual_seed(0)
        # small: the check runs in a blink; a vocabulary of 64 is enough to tell the shifts apart
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=16, vocab_size=64,
                                           bos_token_id=63, eos_token_id=63)).eval()
        input_ids = torch.randint(0, 64, (3, 12))
    model.loss_type = "ForCausalLM"
    with torch.no_grad():
        out = model(input_ids, labels=input_ids)
    got = _call(fn, (out.logits.clone(), input_ids.clone()), hint)
    if got is None:
        return
    if got.numel() != 1:
        print(f"{WRONG}: {name}: return one number, the mean over every scored position, not a tensor of shape "
              f"{tuple(got.shape)}. Hint: {hint}")
        return
    logits, vocab = out.logits, out.logits.size(-1)
    mistakes = (
        ("no shift: each position is scored on its own token, which it already sees",
         F.cross_entropy(logits.reshape(-1, vocab), input_ids.reshape(-1))),
        ("the shift is along the batch axis (like the article's inputs[1:]): row i is scored on row i + 1",
         F.cross_entropy(logits[:-1].reshape(-1, vocab), input_ids[1:].reshape(-1))),
    )
    for mistake, wrong in mistakes:
        if abs(got.item() - wrong.item()) < 1e-5 and abs(wrong.item() - out.loss.item()) > 1e-3:
            print(f"{WRONG}: {name}: {mistake}. Hint: {hint}")
            return
    _check(f"{name} (vs transformers' loss with labels=)", got.reshape(()).numpy(), out.loss.item(), hint, atol=1e-5)


def check_lr_schedule(fn: Callable | None) -> None:
    """Exercise 3 of ``05_finetuning_gpt2.ipynb``: ``fn(step, peak_lr, warmup_steps, num_steps)``, the learning rate
    of warmup + cosine at each step, compared with transformers' ``get_cosine_schedule_with_warmup``."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    name = "warmup + cosine learning rate"
    if _not_done(name, fn):
        return
    hint = ("during warmup (step < warmup_steps) the rate grows linearly: peak_lr * step / warmup_steps; then "
            "progress = (step - warmup_steps) / (num_steps - warmup_steps) and the rate is "
            "peak_lr * 0.5 * (1 + cos(pi * progress)).")
    def make_scheduler(peak_lr, warmup_steps, num_steps):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak_lr)
        return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup_steps, num_steps)

    worst = _schedule_gap(name, fn, _SCHEDULE_CASES, make_scheduler, "the reference", hint)
    if worst is None:
        return
    print(f"{CORRECT}: {name}: every step of {len(_SCHEDULE_CASES)} schedules equals transformers' "
          f"get_cosine_schedule_with_warmup (max |difference| {worst:.1e})")
