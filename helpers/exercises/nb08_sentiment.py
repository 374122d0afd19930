"""Exercise checks of ``08_sentiment.ipynb``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from helpers.exercises.core import CORRECT, WRONG, _call, _check, _not_done

LAST_TOKEN_EXERCISE = (  # the attention mask of a right-padded batch of three sentences
    (1, 1, 1, 1, 0, 0),
    (1, 1, 1, 1, 1, 1),
    (1, 0, 0, 0, 0, 0),
)
ACCURACY_EXERCISE = dict(  # 40 test sentences: the labels and a classifier's predictions
    labels=(1, 0, 1, 1, 0, 0, 1, 0, 1, 1) * 4,
    predictions=(1, 0, 0, 1, 0, 1, 1, 0, 1, 1) * 3 + (0, 0, 1, 1, 0, 0, 1, 1, 1, 0),
    num_samples=2000,
    confidence=0.95,
)
CONFUSION_EXERCISE = dict(
    labels=(0, 0, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1),
    predictions=(0, 1, 1, 1, 0, 0, 1, 0, 0, 1, 0, 1),  # not symmetric: the transpose is a wrong answer
)


def check_last_token_index(answer) -> None:
    """Exercise 1: the position of each row's last real token in ``LAST_TOKEN_EXERCISE``."""
    import torch

    from helpers.classification import last_token_index

    _check("index of the last real token per row", answer, last_token_index(torch.tensor(LAST_TOKEN_EXERCISE)),
           "with right padding the real tokens come first: count them (sum the mask along each row) and "
           "subtract 1, because positions start at 0.")


def check_accuracy_interval(answer) -> None:
    """Exercise 2: ``(accuracy, low, high)`` for ``ACCURACY_EXERCISE``, a bootstrap over the 40 sentences.

    The point must be exact; the interval's ends within 0.03 of the course's bootstrap (another
    seed moves them by about 0.01).
    """
    from helpers.classification import accuracy_interval

    case = ACCURACY_EXERCISE
    correct = np.array(case["labels"]) == np.array(case["predictions"])
    point, low, high = accuracy_interval(correct, case["num_samples"], case["confidence"])
    hint = ("correct = labels == predictions; the point is correct.mean(); draw index = rng.integers(0, n, "
            "size=(num_samples, n)), take correct[index].mean(axis=1), and np.percentile at 2.5 and 97.5.")
    if answer is None or answer is Ellipsis or np.size(answer) != 3:
        _check("(accuracy, low, high)", None if answer is None or answer is Ellipsis else np.ravel(answer),
               np.array([point, low, high]), hint)
        return
    verdict = _check("accuracy", np.ravel(answer)[0], point, hint, atol=1e-9)
    if verdict == "correct":
        _check("its 95 % interval", np.ravel(answer)[1:], np.array([low, high]), hint, atol=0.03)


def check_confusion_matrix(answer) -> None:
    """Exercise 3: the 2 x 2 confusion matrix of ``CONFUSION_EXERCISE`` (rows: true label, columns: predicted)."""
    from sklearn.metrics import confusion_matrix

    case = CONFUSION_EXERCISE
    _check("confusion matrix", answer, confusion_matrix(case["labels"], case["predictions"], labels=[0, 1]),
           "row = the true label, column = the prediction: count the sentences for each (true, predicted) pair; "
           "the diagonal holds the correct ones.")


def check_regression_head(fn: Callable | None) -> None:
    """Exercise 4 (stretch): ``fn(hidden, attention_mask, weight, ratings)`` returns the regression head's MSE.

    ``hidden`` is ``(B, T, C)`` from a right-padded batch, ``weight`` the head's ``(1, C)``; compared with
    the loss of transformers' own ``GPT2ForSequenceClassification(num_labels=1)`` on the same batch.
    """
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    name = "regression head loss"
    if _not_done(name, fn):
        return
    hint = ("pool the hidden state of each row's last real token (mask.sum(1) - 1), multiply by weight.T to get "
            "one number per sentence, and take F.mse_loss against the ratings.")
    torch.manual_seed(8)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=16, vocab_size=50, num_labels=1, bos_token_id=0, eos_token_id=0,
                        pad_token_id=0, problem_type="regression")
    model = GPT2ForSequenceClassification(config).eval()
    input_ids = torch.tensor([[5, 9, 3, 0, 0], [7, 2, 8, 4, 6], [1, 0, 0, 0, 0]])
    mask = (input_ids != 0).long()
    ratings = torch.tensor([2.5, -1.75, 3.0])
    with torch.no_grad():
        hidden = model.transformer(input_ids, attention_mask=mask).last_hidden_state
        expected = model(input_ids, attention_mask=mask, labels=ratings).loss
    got = _call(fn, (hidden, mask, model.score.weight.detach(), ratings), hint)
    if got is None:
        return
    if got.numel() != 1 or not torch.isclose(got.reshape(()), expected, rtol=1e-5, atol=1e-7):
        print(f"{WRONG}: {name}: you gave {got.flatten()[:3].tolist()}, transformers gives {expected.item():.6f}. "
              f"Hint: {hint}")
        return
    print(f"{CORRECT}: {name} equals GPT2ForSequenceClassification's own MSE ({expected.item():.6f})")
