"""Exercise checks with automatic feedback: ``check_...(answer)`` prints a verdict, never a traceback.

Introduced in ``01_mse_and_gradient_descent.ipynb``; later notebooks add their own checks
with the same core, :func:`_check`. Each check prints one of:

* ``✅ correct`` (and how close the answer was to the reference),
* ``❌ not yet`` with how far off the answer is and a hint,
* ``⏳ not done yet`` while the answer is still ``None`` or ``...`` (the workshop build
  replaces the solutions with ``answer = None  # TODO``).

The references are computed here (with PyTorch, transformers, tokenizers or the course's own tested
helpers), never typed in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from helpers.data import EOS_ID, luhn_valid, pack_documents, to_blocks

CORRECT = "✅ correct"
NOT_DONE = "⏳ not done yet"
WRONG = "❌ not yet"


def _to_array(answer) -> np.ndarray | str:
    """The answer as a float array, or a sentence saying why it cannot be one."""
    if isinstance(answer, (str, bytes, bool, np.bool_, dict, set)):
        return f"the answer should be a number or an array of numbers, not a {type(answer).__name__}"
    try:
        if hasattr(answer, "detach"):  # a torch tensor
            answer = answer.detach().cpu().numpy()
        array = np.asarray(answer, dtype=np.float64)
    except (TypeError, ValueError):
        return f"the answer should be a number or an array of numbers; could not read a {type(answer).__name__}"
    if not np.all(np.isfinite(array)):
        return "the answer contains NaN or infinity; did something divide by zero or blow up?"
    return array


def _check(name: str, answer, expected, hint: str, atol: float = 1e-6) -> str:
    """Compare ``answer`` with ``expected`` within ``atol``, print the verdict, return ``"correct"``,
    ``"wrong"`` or ``"not done"``. Never raises: any problem with the answer becomes a hint.

    Introduced in ``01_mse_and_gradient_descent.ipynb``.
    """
    if answer is None or answer is Ellipsis:
        print(f"{NOT_DONE}: {name}")
        return "not done"
    try:
        expected = np.asarray(expected, dtype=np.float64)
        array = _to_array(answer)
        if isinstance(array, str):
            print(f"{WRONG}: {name}: {array}. Hint: {hint}")
            return "wrong"
        if array.shape != expected.shape and array.size == expected.size == 1:
            array = array.reshape(expected.shape)  # 1.2, [1.2] and np.array(1.2) are the same answer
        if array.shape != expected.shape:
            print(f"{WRONG}: {name}: expected shape {expected.shape}, got shape {array.shape}. Hint: {hint}")
            return "wrong"
        off_by = float(np.max(np.abs(array - expected))) if expected.size else 0.0
        if off_by <= atol:
            print(f"{CORRECT}: {name} (max |difference| from the reference: {off_by:.1e})")
            return "correct"
        print(f"{WRONG}: {name}: off by up to {off_by:.4g} (tolerance {atol:g}). Hint: {hint}")
        return "wrong"
    except Exception as error:  # a check must never crash a learner's notebook
        print(f"{WRONG}: {name}: could not check this answer ({type(error).__name__}). Hint: {hint}")
        return "wrong"


# --- 00_setup.ipynb ------------------------------------------------------------------------

TOKEN_EXERCISE_WORD = "Claudius"
_PRECISION_CASES = (  # (device type, CUDA compute capability, CPU has native bf16)
    ("cuda", (8, 0), False), ("cuda", (9, 0), False), ("cuda", (7, 5), True), ("cuda", (6, 1), False),
    ("cpu", None, True), ("cpu", None, False), ("mps", None, False),
)
_MODE_CASES = (  # (COURSE_MODE value, CUDA available)
    (None, True), (None, False), ("", True), ("   ", False), ("smoke", True), ("cpu", True), (" GPU ", False),
)
_BAD_MODES = ("turbo", "cpu-mode")


def _not_done(name: str, fn) -> bool:
    """Print the "not done yet" line and return True while ``fn`` is still ``None`` or ``...``."""
    if fn is None or fn is Ellipsis:
        print(f"{NOT_DONE}: {name}")
        return True
    if not callable(fn):
        print(f"{WRONG}: {name}: the answer should be a function (def ...), not a {type(fn).__name__}")
        return True
    return False


def check_pick_precision(fn: Callable | None) -> None:
    """Exercise 1 of ``00_setup.ipynb``: ``fn(device_type, capability, cpu_has_bf16)`` returns
    ``"bf16"``, ``"fp16"`` or ``"fp32"``, compared with :func:`helpers.runtime.precision_policy`."""
    import torch

    from helpers.runtime import precision_policy

    name = "the precision policy"
    if _not_done(name, fn):
        return
    for device_type, capability, cpu_bf16 in _PRECISION_CASES:
        policy = precision_policy(torch.device(device_type), capability, cpu_bf16)
        expected = {"no": "fp32"}.get(policy.accelerate_name, policy.accelerate_name)
        case = f"device {device_type!r}, capability {capability}, CPU bf16 {cpu_bf16}"
        try:
            got = fn(device_type, capability, cpu_bf16)
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: {name}: your function raised {type(error).__name__}: {error} for {case}. "
                  "Hint: capability is None for a CPU or Apple's mps; look at it only for cuda.")
            return
        if got != expected:
            print(f"{WRONG}: {name}: for {case} you said {got!r}, the course uses {expected!r}. Hint: CUDA from "
                  "compute capability 8.0 up: bf16; older CUDA: fp16 (with a grad scaler); CPU: bf16 only with "
                  "native bf16, never fp16; anything else: fp32.")
            return
    print(f"{CORRECT}: {name}: your function agrees with precision_policy on all {len(_PRECISION_CASES)} machines")


def check_pick_mode(fn: Callable | None) -> None:
    """Exercise 2 of ``00_setup.ipynb``: ``fn(value, cuda_available)`` is the course's mode rule,
    compared with :func:`helpers.settings.resolve_mode` (CUDA's availability pinned for each case)."""
    from unittest import mock

    from helpers import settings

    name = "the mode rule"
    if _not_done(name, fn):
        return
    for value, cuda in _MODE_CASES:
        with mock.patch.object(settings, "_cuda_available", return_value=cuda):
            expected = settings.resolve_mode(value)
        try:
            got = fn(value, cuda)
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: {name}: COURSE_MODE={value!r} with CUDA {cuda} raised {type(error).__name__}: {error}. "
                  "Hint: None or a blank value means 'pick for me'; strip spaces and lower the case first.")
            return
        if got != expected:
            print(f"{WRONG}: {name}: COURSE_MODE={value!r} with CUDA {cuda}: you said {got!r}, the course picks "
                  f"{expected!r}. Hint: unset or blank picks gpu when CUDA is available, else cpu.")
            return
    for value in _BAD_MODES:
        try:
            got = fn(value, False)
        except ValueError as error:
            if not all(mode in str(error) for mode in settings.VALID_MODES):
                print(f"{WRONG}: {name}: the error for {value!r} says {str(error)!r}. Hint: an error should say what "
                      f"to do: name the valid modes ({', '.join(settings.VALID_MODES)}).")
                return
            continue
        except Exception as error:
            print(f"{WRONG}: {name}: COURSE_MODE={value!r} raised {type(error).__name__}, not ValueError. "
                  "Hint: raise ValueError(...) with a message that names the valid modes.")
            return
        print(f"{WRONG}: {name}: COURSE_MODE={value!r} returned {got!r}. Hint: a mode that does not exist is an "
              "error (raise ValueError), never a silent guess.")
        return
    print(f"{CORRECT}: {name}: your function agrees with resolve_mode on {len(_MODE_CASES)} values and rejects "
          f"{len(_BAD_MODES)} bad ones with an error that names the modes")


def check_token_count(answer) -> None:
    """Exercise 3 of ``00_setup.ipynb``: tokens of ``" Claudius"`` (with its leading space) and of
    ``"Claudius"``, as ``[with, without]``, counted by transformers' GPT-2 tokenizer from ``data/``."""
    from transformers import AutoTokenizer

    from helpers.settings import REPO_ROOT

    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "data" / "tokenizer" / "gpt2")
    expected = [len(tokenizer(text)["input_ids"]) for text in (" " + TOKEN_EXERCISE_WORD, TOKEN_EXERCISE_WORD)]
    _check(
        f"tokens of ' {TOKEN_EXERCISE_WORD}' and '{TOKEN_EXERCISE_WORD}'",
        answer,
        expected,
        f"count tokenizer(' {TOKEN_EXERCISE_WORD}').input_ids and tokenizer('{TOKEN_EXERCISE_WORD}').input_ids; "
        "the leading space belongs to the word.",
        atol=0.5,
    )


# --- 01_mse_and_gradient_descent.ipynb -----------------------------------------------------

MSE_EXERCISE_Y = (2.0, 7.0, 1.0, 8.0, 2.0, 8.0)
MSE_EXERCISE_Y_HAT = (3.0, 5.0, 1.0, 9.0, 2.0, 6.0)
CE_EXERCISE_LOGITS = (2.0, 1.0, 0.1, -1.0, 0.5)
CE_EXERCISE_TARGET = 2


def check_mse(answer) -> None:
    """MSE of ``MSE_EXERCISE_Y`` against ``MSE_EXERCISE_Y_HAT`` (a number)."""
    y, y_hat = np.array(MSE_EXERCISE_Y), np.array(MSE_EXERCISE_Y_HAT)
    _check(
        "MSE of the second pair",
        answer,
        np.mean((y - y_hat) ** 2),
        "square each error y_i − ŷ_i, add them up, divide by the number of samples N (not N − 1).",
    )


def check_theta3(answer) -> None:
    """θ3 of gradient descent on J(w) = (w1−1)² + (w2−2)² from θ0 = [0, 0] with α = 0.1 (shape (2,))."""
    theta = np.zeros(2)
    for _ in range(3):
        theta = theta - 0.1 * 2.0 * (theta - np.array([1.0, 2.0]))
    _check(
        "θ3 with α = 0.1",
        answer,
        theta,
        "apply θ ← θ − α·∇J(θ) three times from [0, 0], with ∇J(θ) = [2(w1 − 1), 2(w2 − 2)]; "
        "or use θt = [1, 2]·(1 − 0.8^t).",
    )


def check_largest_stable_lr(answer) -> None:
    """The learning rate on the boundary: gradient descent on J converges below it and diverges above it."""
    # |1 - 2α| < 1  <=>  0 < α < 1: the boundary is the α with 1 - 2α = -1.
    _check(
        "largest stable learning rate",
        answer,
        (1.0 - (-1.0)) / 2.0,
        "each step multiplies the distance to the minimum by (1 − 2α); find where |1 − 2α| reaches 1 "
        "on the negative side.",
        atol=1e-3,
    )


def _cross_entropy_reference() -> tuple[float, np.ndarray]:
    """``F.cross_entropy`` of the exercise's logits and target, and its gradient from ``torch.autograd``."""
    import torch
    import torch.nn.functional as F

    z = torch.tensor(CE_EXERCISE_LOGITS, dtype=torch.float64, requires_grad=True)
    loss = F.cross_entropy(z[None], torch.tensor([CE_EXERCISE_TARGET]))
    loss.backward()
    return loss.item(), z.grad.numpy()


def check_cross_entropy(answer) -> None:
    """Cross-entropy (natural log) of ``CE_EXERCISE_LOGITS`` with target id ``CE_EXERCISE_TARGET`` (a number)."""
    loss, _ = _cross_entropy_reference()
    _check(
        "cross-entropy of one next-token prediction",
        answer,
        loss,
        "softmax the logits (exp, then divide by the sum), take the probability of the target id, "
        "then −log of it (natural log).",
        atol=1e-4,
    )


def check_cross_entropy_grad(answer) -> None:
    """Gradient of that cross-entropy with respect to the 5 logits (shape (5,))."""
    _, grad = _cross_entropy_reference()
    _check(
        "gradient of the cross-entropy wrt the logits",
        answer,
        grad,
        "the gradient is softmax(z) − onehot(target): every probability, minus 1 at the target id.",
        atol=1e-4,
    )


_LINEAR_BACKWARD_SHAPES = ((1, 1, 1), (4, 3, 2), (7, 5, 1), (16, 8, 8))  # (N, D_in, D_out)


def check_linear_backward(fn: Callable | None) -> None:
    """Exercise 6 of ``01_mse_and_gradient_descent.ipynb``: the backward pass of a linear layer.

    ``fn(x, W, grad_out)`` returns ``(grad_x, grad_W, grad_b)`` for ``out = x @ W + b``; compared
    with ``torch.autograd`` on random inputs of several shapes.
    """
    import torch

    name = "backward pass of a linear layer"
    if _not_done(name, fn):
        return
    hint = ("each input's gradient has that input's shape: grad_x = grad_out @ W.T, grad_W = x.T @ grad_out, "
            "grad_b = grad_out summed over the examples (axis 0).")
    rng = np.random.default_rng(0)
    worst = 0.0
    for n, d_in, d_out in _LINEAR_BACKWARD_SHAPES:
        x, W, b, grad_out = (rng.normal(size=shape) for shape in ((n, d_in), (d_in, d_out), (d_out,), (n, d_out)))
        tensors = [torch.tensor(a, requires_grad=True) for a in (x, W, b)]
        (tensors[0] @ tensors[1] + tensors[2]).backward(torch.tensor(grad_out))
        try:
            got = fn(x.copy(), W.copy(), grad_out.copy())
            arrays = [np.asarray(g, dtype=np.float64) for g in got]
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: {name}: with x {x.shape}, W {W.shape} your function raised {type(error).__name__}: "
                  f"{error}. Hint: {hint}")
            return
        if len(arrays) != 3:
            print(f"{WRONG}: {name}: return three arrays (grad_x, grad_W, grad_b), not {len(arrays)}. Hint: {hint}")
            return
        for label, ours, tensor in zip(("grad_x", "grad_W", "grad_b"), arrays, tensors, strict=True):
            reference = tensor.grad.numpy()
            if ours.shape != reference.shape:
                print(f"{WRONG}: {name}: {label} should have shape {reference.shape}, got {ours.shape}. Hint: {hint}")
                return
            off_by = float(np.max(np.abs(ours - reference)))
            if off_by > 1e-8:
                print(f"{WRONG}: {name}: {label} is off by up to {off_by:.3g} with x {x.shape}, W {W.shape}. Hint: {hint}")
                return
            worst = max(worst, off_by)
    print(f"{CORRECT}: {name} (max |difference| from torch.autograd over {len(_LINEAR_BACKWARD_SHAPES)} shapes: {worst:.1e})")


# --- 02_data_preparation.ipynb -----------------------------------------------------------

# Published test card numbers (they pass the checksum) and near misses (they do not).
_LUHN_CASES = (
    "4111 1111 1111 1111", "4242424242424242", "5555-5555-5555-4444", "378282246310005", "6011111111111117",
    "4111 1111 1111 1112", "4242424242424241", "1234567812345678", "79927398710", "79927398713",
)
_PACK_DOCUMENTS = ([11, 12, 13], [21, 22], [31, 32, 33, 34])
_PACK_BLOCK_SIZE = 5


def check_luhn(fn: Callable[[str], bool] | None) -> None:
    """Exercise 1 of ``02_data_preparation.ipynb``: a Luhn checksum written by hand.

    ``fn(number)`` takes a string of digits (maybe with spaces or dashes) and returns a bool;
    it is compared with :func:`helpers.data.luhn_valid` on published test numbers.
    """
    if _not_done("write the function, then pass it to check_luhn", fn):
        return
    for number in _LUHN_CASES:
        expected = luhn_valid(number)
        try:
            got = fn(number)
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"❌ your function raised {type(error).__name__}: {error} on {number!r}. "
                  "Hint: keep only the digits first, e.g. [int(c) for c in number if c.isdigit()]")
            return
        if bool(got) != expected:
            print(f"❌ {number!r}: you said {got}, the checksum says {expected}. Hint: double every second "
                  "digit counting from the right (the last digit is not doubled), subtract 9 from results "
                  "above 9, and the total must end in 0")
            return
    print(f"✅ correct: your checksum agrees with luhn_valid on all {len(_LUHN_CASES)} numbers")


def expected_blocks() -> list[list[int]]:
    """The answer to exercise 2: ``_PACK_DOCUMENTS`` packed with EOS, cut into blocks."""
    stream, _ = pack_documents([np.array(d, dtype=np.uint16) for d in _PACK_DOCUMENTS])
    return to_blocks(stream, _PACK_BLOCK_SIZE).tolist()


def check_packing(answer: list[list[int]] | None) -> None:
    """Exercise 2 of ``02_data_preparation.ipynb``: pack three tiny documents into blocks of 5 by hand.

    The documents are ``[11, 12, 13]``, ``[21, 22]`` and ``[31, 32, 33, 34]``; the answer is
    the list of full blocks, as lists of ints, with the end-of-text id written as ``50256``.
    """
    if answer is None:
        print("⏳ not done yet: write the blocks as a list of lists, then pass them to check_packing")
        return
    expected = expected_blocks()
    try:
        got = [[int(t) for t in block] for block in answer]
    except (TypeError, ValueError):
        print("❌ the answer should be a list of blocks, each a list of token ids, e.g. [[11, 12, 13, 50256, 21], ...]")
        return
    if got == expected:
        left = sum(len(d) + 1 for d in _PACK_DOCUMENTS) % _PACK_BLOCK_SIZE
        print(f"✅ correct: {len(expected)} full blocks, both running across a document boundary; the last {left} "
              "tokens do not fill a block and are left out")
    elif any(len(block) != _PACK_BLOCK_SIZE for block in got):
        print(f"❌ every block holds exactly {_PACK_BLOCK_SIZE} tokens; a last, partial block is left out")
    elif EOS_ID not in {t for block in got for t in block}:
        print(f"❌ where does one document end? Put the end-of-text id {EOS_ID} after each document")
    else:
        print("❌ not quite. Hint: write the stream first (document, EOS, document, EOS, ...), "
              f"then cut it every {_PACK_BLOCK_SIZE} tokens")


# --- 03_inside_gpt2.ipynb ------------------------------------------------------------------

PARAMETER_EXERCISE_CONFIG = dict(vocab_size=50_257, n_positions=1_024, n_layer=24, n_head=16, n_embd=1_024)  # GPT-2 medium


def _call(fn: Callable, args: tuple, hint: str):
    """``fn(*args)`` as a float tensor, or None after printing why it could not be used."""
    import torch

    try:
        result = fn(*args)
    except Exception as error:  # a learner's bug must not stop the notebook
        print(f"{WRONG}: your function raised {type(error).__name__}: {error}. Hint: {hint}")
        return None
    if isinstance(result, tuple):
        print(f"{WRONG}: your function returned a tuple of {len(result)}; return one tensor. Hint: {hint}")
        return None
    try:
        return torch.as_tensor(result).detach().float().cpu()
    except (TypeError, ValueError, RuntimeError):
        print(f"{WRONG}: your function returned a {type(result).__name__}, not a tensor. Hint: {hint}")
        return None


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

_SPEECH = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
           "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles")
_DEDUP_CASES = (  # (texts, min_chars): clean paragraphs, one blank line between them
    ([f"HAMLET.\n\n{_SPEECH}\n\nHam.\n\n[Exit.]", f"Famous lines.\n\n{_SPEECH}\n\nHam."], 100),
    ([f"{_SPEECH}\n\nExeunt.\n\n{_SPEECH}"], 100),  # a repeat inside one text
    ([f"{_SPEECH}\n\nExeunt.", f"{_SPEECH}\n\nExeunt."[::-1]], 100),  # reversed: not a repeat
    (["Exeunt.\n\nExeunt.", "Exeunt."], 5),  # long enough at min_chars = 5: removed
    (["Exeunt.\n\nExeunt.", "Exeunt.\n\nFlourish."], 200),  # too short to be checked: kept
)
MERGES_EXERCISE_TEXT = " Rosencrantz and Guildenstern are dead"
MERGES_EXERCISE_LIMIT = 1_000


def check_dedupe(fn: Callable | None) -> None:
    """Exercise 3 of ``02_data_preparation.ipynb``: paragraph de-duplication written by hand.

    ``fn(texts, min_chars)`` returns the texts with every paragraph of at least ``min_chars``
    characters that already occurred (earlier in the same text or in an earlier one) removed;
    compared with :func:`helpers.data.deduplicate` on small corpora.
    """
    from helpers.data import Document, deduplicate

    name = "paragraph de-duplication"
    if _not_done(name, fn):
        return
    hint = ("split each text at blank lines (text.split('\\n\\n')), keep a set of the long paragraphs seen so "
            "far, drop a long paragraph already in it, join the rest with '\\n\\n'.")
    for texts, min_chars in _DEDUP_CASES:
        documents = [Document(f"doc{i}", text, source_sha256="") for i, text in enumerate(texts)]
        expected = [d.text for d in deduplicate(documents, min_chars)[0]]
        try:
            got = list(fn(list(texts), min_chars))
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: {name}: your function raised {type(error).__name__}: {error}. Hint: {hint}")
            return
        if got != expected:
            print(f"{WRONG}: {name}: for {texts!r} with min_chars={min_chars}\n  expected {expected!r}\n  got      "
                  f"{got!r}\nHint: {hint}")
            return
    print(f"{CORRECT}: {name}: your function agrees with data.deduplicate on all {len(_DEDUP_CASES)} corpora")


def check_truncated_merges(answer) -> None:
    """Exercise 4 of ``02_data_preparation.ipynb``: how many tokens ``MERGES_EXERCISE_TEXT`` takes when
    only GPT-2's first ``MERGES_EXERCISE_LIMIT`` merges are allowed, counted by the ``tokenizers`` library."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers

    from helpers.settings import REPO_ROOT

    folder = REPO_ROOT / "data" / "tokenizer" / "gpt2"
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]  # line 0 is a version comment
    merges = [tuple(line.split()) for line in lines[:MERGES_EXERCISE_LIMIT]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    _check(
        f"tokens with the first {MERGES_EXERCISE_LIMIT:,} merges",
        answer,
        len(tokenizer.encode(MERGES_EXERCISE_TEXT).ids),
        f"keep the ranks below {MERGES_EXERCISE_LIMIT} ({{pair: r for pair, r in ranks.items() if r < "
        f"{MERGES_EXERCISE_LIMIT}}}) and encode the text with them; every pre-token is encoded on its own.",
        atol=0.5,
    )


# --- 04_finetuning_gpt2.ipynb --------------------------------------------------------------

_SCHEDULE_CASES = ((3e-4, 10, 100), (1e-3, 0, 20), (5e-4, 3, 7), (6e-4, 1, 2))  # (peak_lr, warmup_steps, num_steps)


def check_tokens_per_step(answer) -> None:
    """Exercise 1 of ``04_finetuning_gpt2.ipynb``: tokens one optimizer step sees in ``gpu`` mode (one process)."""
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
    """Exercise 2 of ``04_finetuning_gpt2.ipynb``: the shifted-label loss ``fn(logits, input_ids)``.

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
    """Exercise 3 of ``04_finetuning_gpt2.ipynb``: ``fn(step, peak_lr, warmup_steps, num_steps)``, the learning rate
    of warmup + cosine at each step, compared with transformers' ``get_cosine_schedule_with_warmup``."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    name = "warmup + cosine learning rate"
    if _not_done(name, fn):
        return
    hint = ("during warmup (step < warmup_steps) the rate grows linearly: peak_lr * step / warmup_steps; then "
            "progress = (step - warmup_steps) / (num_steps - warmup_steps) and the rate is "
            "peak_lr * 0.5 * (1 + cos(pi * progress)).")
    worst = 0.0
    for peak_lr, warmup_steps, num_steps in _SCHEDULE_CASES:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak_lr)
        schedule = get_cosine_schedule_with_warmup(optimizer, warmup_steps, num_steps)
        for step in range(num_steps + 1):
            expected = schedule.get_last_lr()[0]
            case = f"step {step} of {num_steps} (warmup {warmup_steps}, peak {peak_lr:g})"
            try:
                got = float(fn(step, peak_lr, warmup_steps, num_steps))
            except Exception as error:  # a learner's bug must not stop the notebook
                print(f"{WRONG}: {name}: at {case} your function raised {type(error).__name__}: {error}. Hint: {hint}")
                return
            if not abs(got - expected) <= 1e-9 * peak_lr:
                print(f"{WRONG}: {name}: at {case} you give {got:.6g}, the reference {expected:.6g}. Hint: {hint}")
                return
            worst = max(worst, abs(got - expected))
            optimizer.step()
            schedule.step()
    print(f"{CORRECT}: {name}: every step of {len(_SCHEDULE_CASES)} schedules equals transformers' "
          f"get_cosine_schedule_with_warmup (max |difference| {worst:.1e})")


# --- 05_lora.ipynb ----------------------------------------------------------------------------

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


# --- 06_evaluation.ipynb -------------------------------------------------------------------

PPL_EXERCISE_NLL_SUM = 2_310.0  # nats, summed over the scored tokens
PPL_EXERCISE_TOKENS = 840  # tokens scored
WINDOW_EXERCISE = dict(num_tokens=1_000, context_len=128, stride=32)


def check_perplexity_from_nll(answer) -> None:
    """Perplexity of ``PPL_EXERCISE_TOKENS`` tokens whose NLL sums to ``PPL_EXERCISE_NLL_SUM`` nats."""
    _check(
        "perplexity from a summed NLL",
        answer,
        np.exp(PPL_EXERCISE_NLL_SUM / PPL_EXERCISE_TOKENS),
        "divide the summed NLL by the number of scored tokens (the mean loss in nats), then take exp of it.",
        atol=1e-3,
    )


def check_window_count(answer) -> None:
    """Windows a sliding-window evaluation of ``WINDOW_EXERCISE`` needs (the last one ends at the text's end)."""
    n, context, stride = (WINDOW_EXERCISE[key] for key in ("num_tokens", "context_len", "stride"))
    # Windows start at 0, stride, 2·stride, ...; the first to reach the end starts at or after n - context.
    _check(
        "number of windows",
        answer,
        1 + int(np.ceil((n - context) / stride)),
        "the windows start every `stride` tokens from 0, and the last one is the first whose start + context_len "
        "reaches the end of the text; count the starts.",
        atol=0.5,
    )


BPB_EXERCISE_CASES = (  # (total NLL in nats, original text): plain ASCII, accents (bytes != characters), runs of spaces
    (1_000.0, "To be, or not to be, that is the question:"),
    (250.0, "Oph\u00e9lie: \u00ab \u00d4 ciel ! \u00bb"),
    (12.5, "a  b\n\nc"),
)


def check_bits_per_byte(fn: Callable | None) -> None:
    """Exercise 3 of ``06_evaluation.ipynb``: ``fn(nll_sum, text)`` returns the bits per byte of ``text``.

    Compared with :func:`helpers.evaluation.tokenizer_free_metrics` (lm-evaluation-harness's
    convention, tested against a hand computation) on texts where bytes and characters differ.
    """
    from helpers.evaluation import NLLResult, tokenizer_free_metrics

    name = "bits per byte"
    if _not_done(name, fn):
        return
    hint = ("convert nats to bits (divide by ln 2) and divide by the UTF-8 bytes of the text, "
            "len(text.encode('utf-8')), which is more than len(text) when it has accents.")
    for nll_sum, text in BPB_EXERCISE_CASES:
        expected = tokenizer_free_metrics({"text": NLLResult(nll_sum, len(text))}, {"text": text})["bits_per_byte"]
        try:
            got = float(fn(nll_sum, text))
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: {name}: your function raised or returned no number ({type(error).__name__}: {error}). "
                  f"Hint: {hint}")
            return
        if not abs(got - expected) <= 1e-9 * max(1.0, expected):
            print(f"{WRONG}: {name}: for {nll_sum} nats on {text!r} you gave {got:.6g}, expected {expected:.6g}. "
                  f"Hint: {hint}")
            return
    print(f"{CORRECT}: {name} equals lm-evaluation-harness's convention on {len(BPB_EXERCISE_CASES)} texts, "
          "accented ones included")


# --- 08_iteration.ipynb --------------------------------------------------------------------


def check_relative_change(answer, candidate: float, current: float) -> None:
    """The relative change of a metric from ``current`` to ``candidate`` (what the gate's checks compute)."""
    _check(
        "relative change of the held-out perplexity",
        answer,
        candidate / current - 1,
        "divide the candidate's value by the current one and subtract 1 (positive means higher, i.e. worse "
        "for a perplexity).",
        atol=1e-9,
    )


GATE_EXERCISE = {"margin": 0.05, "tolerance": 0.02}  # the rule exercise 2 of 08 asks for


def _gate_cases() -> list[tuple[dict, dict]]:
    """(candidate, current) metric pairs around the rule's two thresholds, and a diverged run."""
    current = {"new_data_ppl": 200.0, "heldout_ppl": 100.0}
    cases = []
    for new in (150.0, 189.0, 190.0, 191.0, 200.0, 230.0, float("inf"), float("nan")):
        for held in (90.0, 100.0, 101.9, 102.0, 102.1, 140.0):
            cases.append(({"new_data_ppl": new, "heldout_ppl": held}, current))
    return cases


def check_gate_rule(fn: Callable | None) -> None:
    """Exercise 2 of ``08_iteration.ipynb``: a gate rule ``fn(candidate, current) -> bool`` on metric dicts.

    Promote when the new-data perplexity is at least 5 % lower and the held-out one at most 2 %
    higher; compared with ``helpers.registry.gate`` (smoke test passing) on cases at and around
    both thresholds, including a diverged (inf, nan) candidate.
    """
    if _not_done("write my_gate, then pass it to check_gate_rule", fn):
        return
    from helpers.registry import gate

    hint = ("promote only if candidate['new_data_ppl'] <= 0.95 * current['new_data_ppl'] and "
            "candidate['heldout_ppl'] <= 1.02 * current['heldout_ppl']; a comparison with nan is False, "
            "so write the rule as 'candidate <= threshold', not 'not candidate > threshold'.")
    cases = _gate_cases()
    for candidate, current in cases:
        expected = gate(candidate, current, smoke_test=lambda: True, **GATE_EXERCISE).promote
        try:
            got = fn(dict(candidate), dict(current))
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: my_gate raised {type(error).__name__}: {error}. Hint: {hint}")
            return
        if not isinstance(got, (bool, np.bool_)):
            print(f"{WRONG}: my_gate returned {got!r}; return True (promote) or False (keep). Hint: {hint}")
            return
        if bool(got) != expected:
            verdict = "promote" if expected else "keep the current version"
            print(f"{WRONG}: for new_data_ppl {candidate['new_data_ppl']} vs {current['new_data_ppl']} and "
                  f"heldout_ppl {candidate['heldout_ppl']} vs {current['heldout_ppl']} the gate says {verdict}. "
                  f"Hint: {hint}")
            return
    print(f"{CORRECT}: the same decision as helpers.registry.gate on all {len(cases)} cases around both thresholds")


def check_weights_sha256(answer, path) -> None:
    """Exercise 3 of ``08_iteration.ipynb``: the sha256 (hex) of the file at ``path``, as ``hashlib`` computes it."""
    import hashlib

    if answer is None or answer is Ellipsis:
        print(f"{NOT_DONE}: sha256 of {Path(path).name}")
        return
    hint = ("open the file in binary mode ('rb'), feed its bytes to hashlib.sha256() (read it in blocks for a "
            "large file) and take .hexdigest().")
    expected = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if not isinstance(answer, str):
        print(f"{WRONG}: the answer should be the hex string .hexdigest() returns, not a {type(answer).__name__}. "
              f"Hint: {hint}")
    elif answer.strip().lower() == expected:
        print(f"{CORRECT}: sha256 of {Path(path).name} is {expected[:12]}…, as hashlib computes it")
    else:
        print(f"{WRONG}: {answer[:12]}… is not the sha256 of {Path(path).name} (hashlib says {expected[:12]}…). "
              f"Hint: {hint}")


# --- 07_deployment.ipynb -------------------------------------------------------------------

LATENCY_EXERCISE_MS = (112.0, 98.0, 105.0, 131.0, 99.0, 240.0, 101.0, 97.0, 118.0, 104.0, 103.0, 350.0)
_PERCENTILE_CASES = ((LATENCY_EXERCISE_MS, (50, 95, 99, 0, 100)), ((7.0,), (50, 95)), ((2.0, 1.0), (25, 50, 95)),
                     ((5.0, 1.0, 4.0, 4.0, 9.0, 2.0), (10, 33.3, 90)))
KV_CACHE_EXERCISE = dict(n_layer=12, n_embd=768, requests=16, tokens=1_024, bytes_per_value=2)  # GPT-2 small, fp16


def check_percentile(fn: Callable | None) -> None:
    """Exercise 1 of ``07_deployment.ipynb``: ``fn(values, q)``, the q-th percentile (0-100) with linear
    interpolation, compared with ``numpy.percentile`` (its default method) on a few lists."""
    name = "percentile of request times"
    if _not_done(name, fn):
        return
    hint = ("sort the values; the q-th percentile sits at position q / 100 x (n - 1) of the sorted list; when that "
            "position falls between two values, interpolate linearly between them.")
    worst = 0.0
    for values, qs in _PERCENTILE_CASES:
        for q in qs:
            expected = float(np.percentile(values, q))
            try:
                got = float(fn(list(values), q))
            except Exception as error:  # a learner's bug must not stop the notebook
                print(f"{WRONG}: {name}: p{q:g} of {list(values)} raised {type(error).__name__}: {error}. Hint: {hint}")
                return
            if not abs(got - expected) <= 1e-9 * max(1.0, abs(expected)):
                print(f"{WRONG}: {name}: p{q:g} of {list(values)} is {expected:g} (numpy.percentile), you give {got:g}. "
                      f"Hint: {hint}")
                return
            worst = max(worst, abs(got - expected))
    count = sum(len(qs) for _, qs in _PERCENTILE_CASES)
    print(f"{CORRECT}: {name}: equals numpy.percentile in {count} cases (max |difference| {worst:.1e})")


def _openai_error(client, prompt: str, max_tokens: int):
    """The official client's error for one completion request, or None when it succeeded."""
    import openai

    try:
        client.completions.create(model="any", prompt=prompt, max_tokens=max_tokens, temperature=0)
    except openai.APIStatusError as error:
        return error
    return None


def check_context_limit(app, context_len: int) -> None:
    """Exercise 2 of ``07_deployment.ipynb``: a completion endpoint that refuses what does not fit the context.

    ``app`` is a FastAPI app with ``POST /v1/completions``; the official ``openai`` client calls it in
    this process (FastAPI's ``TestClient`` as its HTTP client): a short prompt must be answered, and a
    prompt whose tokens plus ``max_tokens`` exceed ``context_len`` must get HTTP 400 in OpenAI's error
    shape, with a message that names the limit.
    """
    from fastapi.testclient import TestClient
    from openai import OpenAI

    name = "an endpoint that checks the context"
    if app is None or app is Ellipsis:
        print(f"{NOT_DONE}: {name}")
        return
    if not callable(app):
        print(f"{WRONG}: {name}: pass the FastAPI app itself (limited_app = FastAPI() ...), not a {type(app).__name__}")
        return
    hint = (f"count the prompt's tokens first; when they plus max_tokens exceed {context_len}, return "
            "JSONResponse(status_code=400, content={'error': {'message': ..., 'type': 'invalid_request_error', "
            "'param': 'prompt', 'code': 'context_length_exceeded'}}) with the limit in the message.")
    cases = (("a short prompt", "ROMEO.\nWhat light", 2, None),
             ("a prompt longer than the context", " the" * (context_len + 10), 2, 400),
             ("a prompt that fits, but not with its max_tokens", " the" * (context_len - 2), 8, 400))
    try:
        with TestClient(app, raise_server_exceptions=False) as http:
            client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
            for what, prompt, max_tokens, status in cases:
                error = _openai_error(client, prompt, max_tokens)
                got = None if error is None else error.status_code
                if got != status:
                    said = "answered it" if got is None else f"answered HTTP {got}"
                    print(f"{WRONG}: {name}: for {what} ({max_tokens} new tokens) your endpoint {said}; expected "
                          f"{'an answer' if status is None else f'HTTP {status}'}. Hint: {hint}")
                    return
                body = error.body if error is not None else None
                if status and not (isinstance(body, dict) and str(context_len) in str(body.get("message", ""))):
                    print(f"{WRONG}: {name}: HTTP 400 is right, but the official client found no message naming the "
                          f"limit ({context_len}) under 'error'. Hint: {hint}")
                    return
    except Exception as error:  # a learner's app must not stop the notebook
        print(f"{WRONG}: {name}: calling your app failed with {type(error).__name__}: {error}. Hint: {hint}")
        return
    print(f"{CORRECT}: {name}: the official openai client gets an answer to a short prompt and a readable HTTP 400 "
          f"for both prompts that do not fit {context_len} tokens")


def check_kv_cache_bytes(answer) -> None:
    """Exercise 3 of ``07_deployment.ipynb``: bytes of the KV cache of ``KV_CACHE_EXERCISE`` (GPT-2 small, fp16).

    The reference runs transformers' GPT-2 on the meta device (shapes only, no memory) with a batch of
    that many requests and sums the sizes of the cache it returns.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    case = KV_CACHE_EXERCISE
    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(n_layer=case["n_layer"], n_embd=case["n_embd"])).to(torch.float16)
        cache = model(torch.zeros(case["requests"], case["tokens"], dtype=torch.long), use_cache=True)["cache"]
    expected = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    _check(
        "bytes of the KV cache",
        answer,
        expected,
        "every layer keeps a key and a value vector of n_embd numbers for every token of every request: "
        "2 x layers x requests x tokens x n_embd numbers, 2 bytes each in fp16.",
        atol=0.5,
    )
