"""Exercise checks of ``06_lora.ipynb``."""

from __future__ import annotations

import numpy as np

from helpers.exercises.core import _check

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
