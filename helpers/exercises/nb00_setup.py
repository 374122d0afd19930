"""Exercise checks of ``00_setup.ipynb``."""

from __future__ import annotations

from collections.abc import Callable

from helpers.exercises.core import CORRECT, WRONG, _check, _not_done

TOKEN_EXERCISE_WORD = "Claudius"
_PRECISION_CASES = (  # (device type, CUDA compute capability, CPU has native bf16)
    ("cuda", (8, 0), False), ("cuda", (9, 0), False), ("cuda", (7, 5), True), ("cuda", (6, 1), False),
    ("cpu", None, True), ("cpu", None, False), ("mps", None, False),
)
_MODE_CASES = (  # (COURSE_MODE value, CUDA available)
    (None, True), (None, False), ("", True), ("   ", False), ("smoke", True), ("cpu", True), (" GPU ", False),
)
_BAD_MODES = ("turbo", "cpu-mode")


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
