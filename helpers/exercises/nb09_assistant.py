"""Exercise checks of ``09_assistant.ipynb``: references from transformers and the course's tested helpers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from helpers.exercises.core import CORRECT, WRONG, _not_done, _unanswered

EXERCISE_CONVERSATION = (
    {"role": "user", "content": "Who wrote this passage, Jane Austen or William Shakespeare?\n\nO, woe is me."},
    {"role": "assistant", "content": "William Shakespeare"},
    {"role": "user", "content": "What is the first word of this line?\n\nIt is a truth universally acknowledged"},
    {"role": "assistant", "content": "It"},
)
MASK_CONVERSATIONS = (  # one turn, two turns, a system message, an empty reply
    EXERCISE_CONVERSATION[:2],
    EXERCISE_CONVERSATION,
    ({"role": "system", "content": "Answer briefly."}, *EXERCISE_CONVERSATION[:2]),
    ({"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}),
)


def _tiny_base():
    """The shipped tiny base and GPT-2 tokenizer (the same in every mode, so the checks are too)."""
    from helpers.models import ModelSource, load_model, load_tokenizer, tiny_base_dir

    source = ModelSource(str(tiny_base_dir()), "tiny base", "the exercise's reference")
    return load_model(source)[0], load_tokenizer(source)


def _chat_tokenizer():
    from transformers import AutoTokenizer

    from helpers.chat import chat_tokenizer
    from helpers.models import tokenizer_dir

    return chat_tokenizer(AutoTokenizer.from_pretrained(tokenizer_dir()))


def check_rendered_conversation(answer) -> None:
    """Exercise 1 of ``09_assistant.ipynb``: ``EXERCISE_CONVERSATION`` rendered by hand, against ``apply_chat_template``."""
    name = "a two-turn conversation rendered by hand"
    if _unanswered(name, answer):
        return
    expected = _chat_tokenizer().apply_chat_template(list(EXERCISE_CONVERSATION), tokenize=False)
    if not isinstance(answer, str):
        print(f"{WRONG}: {name}: the answer should be a string, not a {type(answer).__name__}")
        return
    if answer == expected:
        print(f"{CORRECT}: {name} equals apply_chat_template's text ({len(expected)} characters)")
        return
    at = next((i for i, (a, b) in enumerate(zip(answer, expected)) if a != b), min(len(answer), len(expected)))
    print(f"{WRONG}: {name}: differs from apply_chat_template at character {at}: you have {answer[at:at + 20]!r}, "
          f"the template writes {expected[at:at + 20]!r}. Hint: each turn is <|role|>, a newline, the content, <|end|>; "
          "nothing between turns.")


def check_assistant_mask(fn: Callable | None) -> None:
    """Exercise 2 of ``09_assistant.ipynb``: ``fn(ids, tokenizer)``, 1 on the assistant's tokens, against transformers'.

    The reference is ``apply_chat_template(..., return_assistant_tokens_mask=True)`` on multi-turn
    conversations, one with a system message and one with an empty reply.
    """
    name = "assistant-only mask"
    if _not_done(name, fn):
        return
    tokenizer = _chat_tokenizer()
    hint = ("a reply starts at the token after <|assistant|> and its newline, and ends with (and includes) <|end|>; "
            "every other token is 0.")
    for conversation in MASK_CONVERSATIONS:
        encoded = tokenizer.apply_chat_template(list(conversation), tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
        expected = list(encoded["assistant_masks"])
        try:
            got = [int(v) for v in fn(list(encoded["input_ids"]), tokenizer)]
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: {name}: your function raised or returned no list ({type(error).__name__}: {error}). "
                  f"Hint: {hint}")
            return
        if got != expected:
            wrong = sum(a != b for a, b in zip(got, expected)) + abs(len(got) - len(expected))
            print(f"{WRONG}: {name}: {wrong} of {len(expected)} positions differ from transformers' mask on a "
                  f"{len(conversation)}-message conversation. Hint: {hint}")
            return
    print(f"{CORRECT}: {name} equals transformers' return_assistant_tokens_mask on {len(MASK_CONVERSATIONS)} conversations")


def check_exact_match_interval(fn: Callable | None) -> None:
    """Exercise 3 of ``09_assistant.ipynb``: ``fn(correct, resamples, seed)`` -> ``(point, low, high)``.

    Compared with 08's :func:`helpers.classification.accuracy_interval`: the point exactly, the ends within
    1.5 points (two bootstraps with different random draws differ a little).
    """
    from helpers.classification import accuracy_interval

    name = "exact-match accuracy with a 95 % bootstrap interval"
    if _not_done(name, fn):
        return
    correct = np.random.default_rng(9).random(400) < 0.7
    expected = accuracy_interval(correct, 2_000, seed=0)
    hint = ("the point is the mean of the 0/1 values; resample the items with replacement `resamples` times, take "
            "each resample's mean, and the 2.5th and 97.5th percentiles of those means are the ends.")
    try:
        point, low, high = (float(v) for v in fn(correct, 2_000, 0))
    except Exception as error:  # a learner's bug must not stop the notebook
        print(f"{WRONG}: {name}: your function raised or did not return three numbers ({type(error).__name__}). "
              f"Hint: {hint}")
        return
    if abs(point - expected.point) > 1e-9 or abs(low - expected.low) > 0.015 or abs(high - expected.high) > 0.015:
        print(f"{WRONG}: {name}: you give {point:.3f} [{low:.3f}, {high:.3f}], the reference {expected.point:.3f} "
              f"[{expected.low:.3f}, {expected.high:.3f}]. Hint: {hint}")
        return
    print(f"{CORRECT}: {name}: {point:.3f} [{low:.3f}, {high:.3f}], reference [{expected.low:.3f}, {expected.high:.3f}]")


def check_answer_logprob(fn: Callable | None) -> None:
    """Exercise 4 (stretch) of ``09_assistant.ipynb``: ``fn(model, tokenizer, context, answer)``, the summed log-probability.

    Compared with :func:`helpers.assistant.answer_logprobs` (tested against transformers' own loss)
    on the tiny base and a few-shot context.
    """
    from helpers.assistant import answer_logprobs

    name = "answer log-likelihood"
    if _not_done(name, fn):
        return
    model, tokenizer = _tiny_base()
    context = "Is this review positive or negative?\n\nA dull, lifeless film.\nAnswer:"
    answers = (" negative", " positive", " William Shakespeare")
    expected = answer_logprobs(model, tokenizer, [context], [answers])[0]
    hint = ("tokenize context and answer apart and join them; the logits at position t predict token t+1, so the "
            "answer's tokens are scored by the positions just before them; sum their log_softmax values.")
    for answer, reference in zip(answers, expected, strict=True):
        try:
            got = float(fn(model, tokenizer, context, answer))
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: {name}: your function raised or returned no number ({type(error).__name__}: {error}). "
                  f"Hint: {hint}")
            return
        if abs(got - reference) > 1e-3:
            print(f"{WRONG}: {name}: for {answer!r} you give {got:.4f}, expected {reference:.4f}. Hint: {hint}")
            return
    print(f"{CORRECT}: {name} equals helpers.assistant.answer_logprobs on {len(answers)} answers")
