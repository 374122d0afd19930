"""Exercise checks of ``04_pretraining.ipynb``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from helpers.exercises.core import CORRECT, WRONG, _check, _not_done, _schedule_gap

_SCHEDULE_CASES = ((2e-3, 200, 1800), (1e-3, 0, 20), (5e-4, 3, 7))  # (peak_lr, warmup_steps, num_steps)


def check_pretrain_schedule(fn: Callable | None) -> None:
    """Exercise 1 of ``04_pretraining.ipynb``: ``fn(step, peak_lr, warmup_steps, num_steps)`` against the loop's
    scheduler (``helpers.pretraining.optimizer_and_scheduler``) at every step of a few schedules."""
    import torch

    from helpers.pretraining import SHIPPED, optimizer_and_scheduler

    name = "warmup + cosine learning rate"
    if _not_done(name, fn):
        return
    hint = ("during warmup the rate grows linearly, peak_lr * step / warmup_steps; then with "
            "progress = (step - warmup_steps) / (num_steps - warmup_steps) it is peak_lr * 0.5 * (1 + cos(pi * progress)).")

    def make_scheduler(peak_lr, warmup_steps, num_steps):
        recipe = replace(SHIPPED, lr=peak_lr, warmup_steps=warmup_steps, num_steps=num_steps)
        return optimizer_and_scheduler(torch.nn.Linear(1, 1), recipe)

    worst = _schedule_gap(name, fn, _SCHEDULE_CASES, make_scheduler, "the loop's scheduler", hint)
    if worst is None:
        return
    print(f"{CORRECT}: {name}: every step of {len(_SCHEDULE_CASES)} schedules equals the loop's (max |difference| {worst:.1e})")


def check_adamw_step(fn: Callable | None) -> None:
    """Exercise 2 of ``04_pretraining.ipynb``: ``fn(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay)``
    returning ``(param, m, v)``, three steps against ``torch.optim.AdamW``."""
    import torch

    name = "one AdamW step by hand"
    if _not_done(name, fn):
        return
    hint = ("shrink the weight by (1 - lr * weight_decay); m = beta1*m + (1-beta1)*grad; v = beta2*v + (1-beta2)*grad**2; "
            "step by lr * (m / (1 - beta1**step)) / (sqrt(v / (1 - beta2**step)) + eps).")
    torch.manual_seed(0)
    param = torch.randn(4, 3)
    reference = param.clone().requires_grad_()
    optimizer = torch.optim.AdamW([reference], lr=0.05, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    m, v = torch.zeros_like(param), torch.zeros_like(param)
    for step in range(1, 4):
        grad = torch.randn(4, 3)
        reference.grad = grad.clone()
        optimizer.step()
        try:
            param, m, v = fn(param, grad, m, v, step, 0.05, 0.9, 0.95, 1e-8, 0.1)
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: {name}: at step {step} your function raised {type(error).__name__}: {error}. Hint: {hint}")
            return
    _check(f"{name} (3 steps, vs torch.optim.AdamW)", param, reference.detach().numpy(), hint, atol=1e-6)


def check_tokens_per_parameter(answer, compute_optimal) -> None:
    """Exercise 3 of ``04_pretraining.ipynb``: the shipped base's tokens per parameter, from its training_metrics.json,
    and whether it is near Chinchilla's ~20 (within a factor of 2)."""
    import json

    from helpers.models import tiny_base_dir

    metrics = json.loads((tiny_base_dir() / "training_metrics.json").read_text())
    expected = metrics["tokens_seen"] / metrics["parameters"]
    verdict = _check("tokens per parameter of the shipped base", answer, expected,
                     "divide the training tokens (steps x batch x block) by the parameters.", atol=1e-3)
    if verdict == "correct" and compute_optimal is not None:
        truth = 10 <= expected <= 40
        if bool(compute_optimal) == truth:
            print(f"{CORRECT}: compute-optimal = {truth}: {expected:.2f} tokens per parameter vs Chinchilla's ~20")
        else:
            print(f"{WRONG}: compute-optimal: {expected:.2f} is {'near' if truth else 'far from'} ~20. "
                  "Hint: compare your answer with 20.")


def check_decay_split(fn: Callable | None) -> None:
    """Exercise 4 of ``04_pretraining.ipynb``: ``fn(model)`` -> (decayed, not decayed) parameters, against the
    groups of the loop's optimizer (``helpers.training.make_optimizer``), on a small GPT."""
    from helpers.gpt import GPT, GPTConfig
    from helpers.training import make_optimizer

    name = "which parameters get weight decay"
    if _not_done(name, fn):
        return
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8))
    decayed, plain = (set(map(id, g["params"])) for g in make_optimizer(model, 1e-3).param_groups)
    try:
        got_decay, got_plain = fn(model)
        got_decay, got_plain = set(map(id, got_decay)), set(map(id, got_plain))
    except Exception as error:  # a learner's bug must not stop the notebook
        print(f"{WRONG}: {name}: your function raised {type(error).__name__}: {error}")
        return
    if got_decay == decayed and got_plain == plain:
        print(f"{CORRECT}: {name}: {len(decayed)} matrices decayed, {len(plain)} biases and gains not, as the loop's optimizer")
    else:
        print(f"{WRONG}: {name}: the loop decays the {len(decayed)} parameters with 2 or more dimensions and leaves the "
              f"{len(plain)} others; yours decay {len(got_decay)} and leave {len(got_plain)}. Hint: p.dim() >= 2.")
