"""Exercise checks of ``06_lora.ipynb``."""

from __future__ import annotations

import numpy as np

from helpers.exercises.core import CORRECT, WRONG, _check, _unanswered

LORA_FORWARD_EXERCISE = dict(
    x=((1.0, 2.0, 0.0), (0.5, -1.0, 3.0)),  # 2 tokens of d_in = 3 numbers
    W=((0.2, -0.1), (0.0, 0.3), (0.1, 0.1)),  # (d_in, d_out), stored like GPT-2's Conv1D: x @ W + b
    b=(0.05, -0.05),
    A=((1.0, 0.0, -1.0),),  # (r, d_in)
    B=((0.5,), (-2.0,)),  # (d_out, r)
    r=1,
    alpha=2.0,
)
LORA_COUNT_EXERCISE = dict(n_layer=12, n_embd=768, r=8)  # GPT-2 small, every projection of every block wrapped
ADAPTER_BYTES_EXERCISE = dict(n_layer=6, n_embd=128, r=4, bytes_per_value=4)  # the tiny base, fp32


def _gpt2_projection_shapes(n_layer: int, n_embd: int) -> list[tuple[int, int]]:
    """``(d_in, d_out)`` of c_attn, attn.c_proj, c_fc and mlp.c_proj in each of ``n_layer`` GPT-2 blocks."""
    return [(n_embd, 3 * n_embd), (n_embd, n_embd), (n_embd, 4 * n_embd), (4 * n_embd, n_embd)] * n_layer


def check_lora_forward(answer) -> None:
    """The output of a LoRA layer on ``LORA_FORWARD_EXERCISE`` (shape (2, 2))."""
    case = {key: np.array(value) for key, value in LORA_FORWARD_EXERCISE.items()}
    x, A, B = case["x"], case["A"], case["B"]
    _check(
        "output of the LoRA layer",
        answer,
        x @ case["W"] + case["b"] + (x @ A.T @ B.T) * (case["alpha"] / case["r"]),
        "the frozen part is x @ W + b; the update is x @ A.T @ B.T (down to r numbers, back up to d_out), "
        "scaled by alpha / r; add the two.",
    )


def check_lora_trainable_count(answer) -> None:
    """Trainable numbers of a rank-r LoRA on every projection of GPT-2 small (``LORA_COUNT_EXERCISE``)."""
    from helpers.lora import lora_parameter_count

    case = LORA_COUNT_EXERCISE
    _check(
        "trainable numbers of the adapter",
        answer,
        lora_parameter_count(_gpt2_projection_shapes(case["n_layer"], case["n_embd"]), case["r"]),
        "each wrapped (d_in, d_out) projection adds A (r x d_in) and B (d_out x r); the four projections of a "
        "block are (d, 3d), (d, d), (d, 4d) and (4d, d), and every block has them.",
        atol=0.5,
    )


def check_adapter_bytes(answer) -> None:
    """Bytes of the numbers of a rank-r adapter on the tiny base (``ADAPTER_BYTES_EXERCISE``)."""
    from helpers.lora import adapter_bytes

    case = ADAPTER_BYTES_EXERCISE
    _check(
        "bytes of the adapter's numbers",
        answer,
        adapter_bytes(_gpt2_projection_shapes(case["n_layer"], case["n_embd"]), case["r"], case["bytes_per_value"]),
        "count the adapter's numbers first (r x (d_in + d_out) per wrapped projection), then multiply by the "
        "bytes of one fp32 number.",
        atol=0.5,
    )


def check_lr_experiment(answer, lr: float, num_steps: int, lora_history) -> None:
    """Exercise 4 of ``06_lora.ipynb``: the history of a short LoRA run at 05's learning rate ``lr``.

    Checks properties of the outcome: ``num_steps`` steps, a learning rate that peaks at ``lr``,
    validation losses recorded; then compares its last validation loss with ``lora_history``
    (the same short run at LoRA's rate) and says which was lower.
    """
    name = "LoRA at 05's learning rate"
    if _unanswered(name, answer):
        return
    hint = ("train a fresh add_lora(copy.deepcopy(base_model), r, alpha) with short_config's steps and warmup but "
            "lr=settings.lr, and pass the run's .history.")
    try:
        peak = max(row["lr"] for row in answer)
        valid = [row["valid_loss"] for row in answer if "valid_loss" in row]
        steps = len(answer)
    except (TypeError, KeyError):
        print(f"{WRONG}: {name}: expected a training history (a list of dicts from train(...).history). Hint: {hint}")
        return
    if steps != num_steps or not valid or not abs(peak - lr) <= 1e-3 * lr:
        print(f"{WRONG}: {name}: expected {num_steps} steps peaking at lr {lr:g} with validation losses; got {steps} "
              f"steps peaking at {peak:g}. Hint: {hint}")
        return
    theirs = [row["valid_loss"] for row in lora_history if "valid_loss" in row][-1]
    lower = "lower" if valid[-1] < theirs else "higher"
    print(f"{CORRECT}: {name}: last validation loss {valid[-1]:.3f}, {lower} than {theirs:.3f} at LoRA's rate "
          "after the same steps")


def check_attention_only(model, r: int) -> None:
    """Exercise 5 of ``06_lora.ipynb``: ``model`` wrapped by ``add_lora`` on the attention projections only.

    Checks the outcome's properties: the trainable numbers are the formula's for c_attn and
    attn.c_proj of every block, and every trainable tensor is an ``A`` or ``B`` inside ``attn``.
    """
    name = "LoRA on the attention projections only"
    if _unanswered(name, model):
        return
    hint = 'wrap a fresh copy of the base with add_lora(..., r, alpha, targets=("attn.c_attn", "attn.c_proj")).'
    try:
        trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
        config = model.config
    except AttributeError:
        print(f"{WRONG}: {name}: expected the wrapped model. Hint: {hint}")
        return
    d, layers = config.n_embd, config.n_layer
    expected = layers * r * ((d + 3 * d) + (d + d))
    outside = [n for n in trainable if ".attn." not in n or not n.endswith((".A", ".B"))]
    if outside or sum(trainable.values()) != expected:
        print(f"{WRONG}: {name}: {sum(trainable.values()):,} trainable numbers (expected {expected:,})"
              + (f"; trainable outside attention: {outside[:2]}" if outside else "") + f". Hint: {hint}")
        return
    print(f"{CORRECT}: {name}: {expected:,} trainable numbers, all in the attention's A and B")
