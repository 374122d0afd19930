"""Exercise checks of ``07_evaluation.ipynb``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from helpers.exercises.core import CORRECT, WRONG, _check, _not_done, _unanswered

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


def _early_stop_reference(valid, patience: int):
    best_step, best_loss, waited = None, float("inf"), 0
    for step, loss in valid:
        if loss < best_loss:
            best_step, best_loss, waited = step, loss, 0
        else:
            waited += 1
            if waited >= patience:
                break
    return best_step


def _early_stop_cases() -> list[tuple[list[tuple[int, float]], int]]:
    """Validation curves: falling, turning up, a noisy dip and recovery, a plateau with ties."""
    rng = np.random.default_rng(7)
    cases = [([(10, 5.0), (20, 4.0), (30, 3.5)], 2), ([(10, 5.0), (20, 4.0), (30, 4.2), (40, 4.5)], 2),
             ([(5, 3.0), (10, 3.2), (15, 2.9), (20, 2.5)], 1), ([(5, 3.0), (10, 3.2), (15, 2.9), (20, 2.5)], 2),
             ([(1, 2.0), (2, 2.0), (3, 2.0)], 2), ([(1, 4.0)], 3)]
    for _ in range(20):
        losses = np.cumsum(rng.normal(-0.05, 0.2, 12)) + 5
        cases.append(([(10 * (i + 1), float(v)) for i, v in enumerate(losses)], int(rng.integers(1, 4))))
    return cases


def check_early_stop(fn: Callable | None) -> None:
    """Exercise 3 of ``07_evaluation.ipynb``: ``fn(valid, patience)`` returns the step of the checkpoint to keep.

    ``valid`` is a run's ``(step, validation loss)`` pairs in order. The rule: keep the lowest loss
    seen so far; stop once ``patience`` evaluations in a row did not improve on it (a tie is no
    improvement); return the step of the lowest loss seen by then.
    """
    name = "early stopping"
    if _not_done(name, fn):
        return
    hint = ("walk the pairs in order keeping the best (step, loss) so far and a count of evaluations since it; a loss "
            "lower than the best resets the count, anything else adds one; when the count reaches patience, stop and "
            "return the best step.")
    cases = _early_stop_cases()
    for valid, patience in cases:
        expected = _early_stop_reference(valid, patience)
        try:
            got = fn(list(valid), patience)
        except Exception as error:  # a learner's bug must not stop the notebook
            print(f"{WRONG}: {name}: your function raised {type(error).__name__}: {error}. Hint: {hint}")
            return
        if got != expected:
            shown = ", ".join(f"({s}, {v:.2f})" for s, v in valid)
            print(f"{WRONG}: {name}: with patience {patience} on [{shown}] you kept step {got!r}, expected {expected}. "
                  f"Hint: {hint}")
            return
    print(f"{CORRECT}: {name} keeps the right checkpoint on all {len(cases)} validation curves")


def check_chunk_experiment(answer, chunk_len: int, num_tokens: int) -> None:
    """Exercise 4 of ``07_evaluation.ipynb``: ``{chunk_len: (number of chunks, Interval)}`` at 2x and 1/2 the chunks.

    Checks properties of the outcome: both lengths are there, each has the number of chunks
    ``chunk_tokens`` makes of ``num_tokens`` tokens, and each interval contains its point; then
    says which way the width moved.
    """
    from helpers.evaluation import chunk_tokens

    name = "interval width against chunk length"
    if _unanswered(name, answer):
        return
    hint = ("for length in (2 * chunk_len, chunk_len // 2): cut eval_ids with chunk_tokens(eval_ids, length), score both "
            "models with document_nlls, take bootstrap_difference(...).relative, and store (len(chunks), interval).")
    wanted = (2 * chunk_len, chunk_len // 2)
    if not isinstance(answer, dict) or any(length not in answer for length in wanted):
        print(f"{WRONG}: {name}: expected a dict with the keys {wanted}. Hint: {hint}")
        return
    for length in wanted:
        try:
            count, (point, low, high) = answer[length]
        except (TypeError, ValueError):
            print(f"{WRONG}: {name}: answer[{length}] should be (number of chunks, interval). Hint: {hint}")
            return
        expected = len(chunk_tokens(np.zeros(num_tokens, dtype=np.int64), length))
        if count != expected or not low <= point <= high:
            print(f"{WRONG}: {name}: chunks of {length} make {expected} chunks of {num_tokens:,} tokens (you have "
                  f"{count}), and the interval must contain its point. Hint: {hint}")
            return
    widths = {length: answer[length][1][2] - answer[length][1][1] for length in wanted}
    longer = "wider" if widths[wanted[0]] > widths[wanted[1]] else "narrower"
    print(f"{CORRECT}: {name}: {answer[wanted[0]][0]} long chunks give a {longer} interval ({widths[wanted[0]]:.2%}) than "
          f"{answer[wanted[1]][0]} short ones ({widths[wanted[1]]:.2%}); fewer, longer chunks are more independent "
          "but estimate the spread from fewer draws")


def check_temperature_experiment(answer, strategies) -> None:
    """Exercise 5 of ``07_evaluation.ipynb``: ``summarize_samples`` rows of the two temperatures.

    Checks properties of the outcome: one summary per requested strategy, figures in [0, 1],
    and says which temperature gave the higher distinct-2 (without judging the text).
    """
    name = "two temperatures, summarised"
    if _unanswered(name, answer):
        return
    hint = ("call generate_samples(finetuned, tokenizer, PROMPTS[:1], strategies, max_new_tokens=settings.sample_tokens, "
            "seed=settings.seed) and pass its rows to summarize_samples.")
    try:
        by_name = {row["strategy"]: row for row in answer}
        figures = [by_name[s][key] for s in strategies for key in ("distinct_1", "distinct_2", "repetition_rate")]
    except (TypeError, KeyError):
        print(f"{WRONG}: {name}: expected one summary per strategy in {list(strategies)}. Hint: {hint}")
        return
    if not all(0 <= value <= 1 for value in figures):
        print(f"{WRONG}: {name}: distinct-n and repetition rates lie between 0 and 1. Hint: {hint}")
        return
    ranked = sorted(strategies, key=lambda s: by_name[s]["distinct_2"])
    print(f"{CORRECT}: {name}: distinct-2 {by_name[ranked[0]]['distinct_2']:.2f} at {ranked[0]}, "
          f"{by_name[ranked[-1]]['distinct_2']:.2f} at {ranked[-1]}; read the texts too: distinct-n cannot tell "
          "variety from word salad")


def check_bias_experiment(answer, groups) -> None:
    """Exercise 6 of ``07_evaluation.ipynb``: the ``bias_rows`` for your own ``groups``.

    Checks properties of the outcome: every template scored once per group, the first group's
    differences zero, and reports whether the other group's differences look like an offset
    (a small spread around the mean) or vary by template.
    """
    name = "bias probe with your own groups"
    if _unanswered(name, answer):
        return
    hint = "call bias_rows(finetuned, tokenizer, BIAS_TEMPLATES, groups) with at least two group words."
    try:
        rows = list(answer)
        seen = [row["group"] for row in rows]
    except (TypeError, KeyError):
        print(f"{WRONG}: {name}: expected what bias_rows returns (a list of rows with 'group'). Hint: {hint}")
        return
    if sorted(set(seen)) != sorted(groups) or len(seen) % len(groups):
        print(f"{WRONG}: {name}: the rows are for {sorted(set(seen))}, not {list(groups)}. Hint: {hint}")
        return
    if any(row["difference"] != 0 for row in rows if row["group"] == groups[0]):
        print(f"{WRONG}: {name}: differences are measured against the first group, so its own should be 0. Hint: {hint}")
        return
    other = [row["difference"] for row in rows if row["group"] == groups[1]]
    spread, mean = max(other) - min(other), float(np.mean(other))
    kind = "mostly an offset (the group word's own likelihood)" if spread < abs(mean) else "varies by template"
    print(f"{CORRECT}: {name}: '{groups[1]}' vs '{groups[0]}' mean {mean:+.2f} nats, spread {spread:.2f} across "
          f"{len(other)} templates: {kind}")
