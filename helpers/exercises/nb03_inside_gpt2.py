"""Exercise checks of ``03_inside_gpt2.ipynb``."""

from __future__ import annotations

from collections.abc import Callable

from helpers.exercises.core import CORRECT, WRONG, _call, _check, _not_done

PARAMETER_EXERCISE_CONFIG = dict(vocab_size=50_257, n_positions=1_024, n_layer=24, n_head=16, n_embd=1_024)  # GPT-2 medium


def check_causal_attention(fn: Callable | None) -> None:
    """Exercise 1 of ``03_inside_gpt2.ipynb``: causal single-head attention by hand.

    ``fn(q, k, v)`` takes three (batch, T, head_size) tensors and returns the output, compared with
    ``torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)`` on random tensors.
    """
    if _not_done("write my_attention, then pass it to check_causal_attention", fn):
        return
    import torch
    import torch.nn.functional as F

    hint = ("scores = q @ k.transpose(-2, -1) / sqrt(head_size); set the scores above the diagonal to -inf "
            "(torch.ones(T, T, dtype=torch.bool).tril() marks the allowed ones); softmax over the last dimension; @ v.")
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 16, generator=generator) for _ in range(3))
    got = _call(fn, (q.clone(), k.clone(), v.clone()), hint)
    if got is None:
        return
    if got.shape == q.shape:
        for mistake, wrong in (("the causal mask is missing: position i must not see j > i", F.scaled_dot_product_attention(q, k, v)),
                               ("the scores are not divided by sqrt(head_size)",
                                F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0))):
            if torch.allclose(got, wrong, atol=1e-5):
                print(f"{WRONG}: causal attention: {mistake}. Hint: {hint}")
                return
    _check("causal attention (vs scaled_dot_product_attention)", got.numpy(),
           F.scaled_dot_product_attention(q, k, v, is_causal=True).numpy(), hint, atol=1e-5)


def check_parameter_count(answer) -> None:
    """Exercise 2 of ``03_inside_gpt2.ipynb``: the parameters of GPT-2 medium (``PARAMETER_EXERCISE_CONFIG``).

    The reference counts the parameters of transformers' ``GPT2LMHeadModel`` built on the meta
    device (shapes only, no memory); its LM head is tied to the token embedding and counted once.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(**PARAMETER_EXERCISE_CONFIG))
    expected = sum(p.numel() for p in model.parameters())
    vocab, width = PARAMETER_EXERCISE_CONFIG["vocab_size"], PARAMETER_EXERCISE_CONFIG["n_embd"]
    tied_twice = isinstance(answer, (int, float)) and answer == expected + vocab * width
    hint = ("the LM head is tied to the token embedding: count that table once. "
            if tied_twice else "") + ("V*d + P*d for the embeddings, L*(12*d*d + 13*d) for the blocks, 2*d for the final "
                                     "LayerNorm.")
    _check("parameters of GPT-2 medium", answer, expected, hint, atol=0.5)


def check_top_p(fn: Callable | None) -> None:
    """Exercise 3 of ``03_inside_gpt2.ipynb``: top-p filtering, ``fn(logits, p)`` on (rows, vocab) logits.

    Compared with transformers' ``TopPLogitsWarper`` on random logits, from flat to peaked rows:
    the same tokens must be kept (the others -inf) and the kept logits left unchanged.
    """
    if _not_done("write my_top_p, then pass it to check_top_p", fn):
        return
    import torch
    from transformers import TopPLogitsWarper

    hint = ("sort the probabilities in descending order; a token stays when the probability of the tokens ranked "
            "above it is still below p; set the others' logits to -inf (scatter the mask back to vocabulary order).")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 200, generator=generator) * torch.linspace(0.2, 6, 16)[:, None]
    for p in (0.3, 0.8, 0.95):
        expected = TopPLogitsWarper(p)(None, logits.clone())
        got = _call(fn, (logits.clone(), p), hint)
        if got is None:
            return
        if got.shape != expected.shape:
            print(f"{WRONG}: expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}. Hint: {hint}")
            return
        kept, expected_kept = torch.isfinite(got), torch.isfinite(expected)
        if bool((got >= 0).all()) and torch.allclose(got.sum(dim=-1), torch.ones(len(got)), atol=1e-4):
            print(f"{WRONG}: your function returned probabilities; return the logits, with -inf for the tokens "
                  f"left out (sampling applies the softmax afterwards). Hint: {hint}")
            return
        if not torch.equal(kept, expected_kept):
            print(f"{WRONG}: with p = {p} you keep {int(kept.sum())} tokens in all, TopPLogitsWarper keeps "
                  f"{int(expected_kept.sum())}. Hint: {hint}")
            return
        if not torch.allclose(got[kept], expected[kept], atol=1e-6):
            print(f"{WRONG}: the kept tokens are right but their logits changed; leave them as they are. Hint: {hint}")
            return
    print(f"{CORRECT}: the same tokens kept as transformers' TopPLogitsWarper for p = 0.3, 0.8 and 0.95 on "
          f"{logits.shape[0]} rows of random logits, kept logits unchanged")


def check_kv_update(fn: Callable | None) -> None:
    """Exercise 4 of ``03_inside_gpt2.ipynb``: the KV-cache update ``fn(past_k, past_v, k, v) -> (k_all, v_all)``.

    Run step by step (a 5-token prompt, then 3 single tokens, ``None`` as the first past) against
    transformers' ``DynamicCache.update``.
    """
    if _not_done("write my_kv_update, then pass it to check_kv_update", fn):
        return
    import torch
    from transformers import DynamicCache

    hint = "at the first step (past_k is None) return k and v; later torch.cat([past, new], dim=2), the time axis."
    generator = torch.Generator().manual_seed(0)
    reference, past_k, past_v = DynamicCache(), None, None
    for step, new in enumerate((5, 1, 1, 1)):
        k, v = (torch.randn(1, 2, new, 4, generator=generator) for _ in range(2))
        expected_k, expected_v = reference.update(k.clone(), v.clone(), 0)
        try:
            past_k, past_v = fn(past_k, past_v, k.clone(), v.clone())
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: at step {step + 1} your function raised {type(error).__name__}: {error}. Hint: {hint}")
            return
        for name, got, expected in (("keys", past_k, expected_k), ("values", past_v, expected_v)):
            if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
                shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                print(f"{WRONG}: after step {step + 1} the {name} should be {tuple(expected.shape)}, got {shape}. "
                      f"Hint: {hint}")
                return
            if not torch.equal(got, expected):
                print(f"{WRONG}: after step {step + 1} the {name} have the right shape but not the right order. "
                      f"Hint: {hint}")
                return
    print(f"{CORRECT}: the same keys and values as transformers' DynamicCache after {step + 1} steps "
          f"({expected_k.shape[2]} positions)")
