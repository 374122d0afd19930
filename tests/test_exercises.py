"""helpers.exercises: right answers pass, wrong ones get a hint, unfinished ones say so; nothing raises.

References here come from torch, transformers and tokenizers, not from the module under test. The last
tests run the solution cells of notebooks 00, 01 and 02, and the workshop stubs a build makes of them
(``answer = None  # TODO``).
"""

from __future__ import annotations

import ast
import functools
import math

import nbformat
import numpy as np
import pydantic
import pytest
import torch
import torch.nn.functional as F

from helpers import exercises
from helpers.settings import REPO_ROOT, get_settings
from tests.notebook_code import notebook_definitions
from tools.student import stub_source

LOGITS = torch.tensor(exercises.CE_EXERCISE_LOGITS, dtype=torch.float64)
TARGET = exercises.CE_EXERCISE_TARGET


def _ce_reference() -> tuple[float, np.ndarray]:
    z = LOGITS.clone().requires_grad_(True)
    loss = F.cross_entropy(z[None], torch.tensor([TARGET]))
    loss.backward()
    return loss.item(), z.grad.numpy()


CE_VALUE, CE_GRAD = _ce_reference()


@functools.cache
def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(REPO_ROOT / "data" / "tokenizer" / "gpt2")


@functools.cache
def _notebook_02() -> dict:
    constants = {"tokenizer_dir", "vocab", "merge_lines", "ranks", "byte_to_char", "PRETOKENIZE"}
    return notebook_definitions("02_data_preparation.ipynb", constants, namespace={"settings": get_settings()})


WORD = exercises.TOKEN_EXERCISE_WORD
TOKENS_RIGHT = [len(_tokenizer()(" " + WORD)["input_ids"]), len(_tokenizer()(WORD)["input_ids"])]
LIMIT = exercises.MERGES_EXERCISE_LIMIT
MERGES_RIGHT = len(_notebook_02()["encode"](  # the notebook's hand-written BPE; the check uses the tokenizers library
    exercises.MERGES_EXERCISE_TEXT, {pair: rank for pair, rank in _notebook_02()["ranks"].items() if rank < LIMIT}
))
# (check, a right answer computed independently, a wrong answer of the right shape)
CASES = [
    (
        exercises.check_mse,
        F.mse_loss(torch.tensor(exercises.MSE_EXERCISE_Y_HAT), torch.tensor(exercises.MSE_EXERCISE_Y)).item(),
        10 / 5,  # dividing by N - 1 instead of N
    ),
    (exercises.check_theta3, [1.0 * (1 - 0.8**3), 2.0 * (1 - 0.8**3)], [0.36, 0.72]),
    (exercises.check_largest_stable_lr, 1.0, 0.5),
    (exercises.check_cross_entropy, CE_VALUE, -math.log10(torch.softmax(LOGITS, 0)[TARGET].item())),
    (exercises.check_cross_entropy_grad, CE_GRAD, -CE_GRAD),
    (exercises.check_token_count, [float(n) for n in TOKENS_RIGHT], TOKENS_RIGHT[::-1]),  # swapped: the space is not free
    (exercises.check_truncated_merges, float(MERGES_RIGHT), len(_tokenizer()(exercises.MERGES_EXERCISE_TEXT)["input_ids"])),
    (exercises.check_kv_cache_bytes, 2.0 * 12 * 16 * 1024 * 768 * 2, 12 * 16 * 1024 * 768 * 2),  # keys only: values forgotten
]
IDS = [case[0].__name__ for case in CASES]


@pytest.mark.parametrize(("check", "right", "wrong"), CASES, ids=IDS)
def test_right_answer_passes(check, right, wrong, capsys):
    check(right)
    assert capsys.readouterr().out.startswith(exercises.CORRECT)


@pytest.mark.parametrize(("check", "right", "wrong"), CASES, ids=IDS)
def test_right_answer_as_tensor_or_list_passes(check, right, wrong, capsys):
    check(torch.tensor(np.asarray(right), requires_grad=True))  # a tensor that still tracks gradients
    check(np.asarray(right).tolist())
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(line.startswith(exercises.CORRECT) for line in out)


@pytest.mark.parametrize(("check", "right", "wrong"), CASES, ids=IDS)
def test_wrong_answer_gets_a_hint_and_how_far(check, right, wrong, capsys):
    check(wrong)
    out = capsys.readouterr().out
    assert out.startswith(exercises.WRONG)
    assert "Hint:" in out and "off by up to" in out


@pytest.mark.parametrize(("check", "right", "wrong"), CASES, ids=IDS)
@pytest.mark.parametrize("unfinished", [None, Ellipsis])
def test_unfinished_answer_is_not_done_yet(check, right, wrong, unfinished, capsys):
    check(unfinished)
    assert capsys.readouterr().out.startswith(exercises.NOT_DONE)


@pytest.mark.parametrize(("check", "right", "wrong"), CASES, ids=IDS)
@pytest.mark.parametrize("bad", ["1.2", {"a": 1}, True, object(), [1.0, "x"], float("nan")], ids=repr)
def test_wrong_type_gets_a_hint_without_raising(check, right, wrong, bad, capsys):
    check(bad)
    out = capsys.readouterr().out
    assert out.startswith(exercises.WRONG) and "Hint:" in out


@pytest.mark.parametrize(("check", "right", "wrong"), CASES, ids=IDS)
def test_wrong_shape_names_both_shapes(check, right, wrong, capsys):
    expected_shape = np.shape(right)
    check(np.zeros((3, 3)))
    out = capsys.readouterr().out
    assert out.startswith(exercises.WRONG)
    assert f"expected shape {expected_shape}" in out and "got shape (3, 3)" in out


def test_core_check_uses_its_tolerance_and_says_how_close(capsys):
    assert exercises._check("x", 1.0 + 5e-4, 1.0, "hint", atol=1e-3) == "correct"
    assert "5.0e-04" in capsys.readouterr().out
    assert exercises._check("x", 1.0 + 5e-3, 1.0, "hint", atol=1e-3) == "wrong"
    assert "off by up to 0.005" in capsys.readouterr().out


def test_core_check_survives_an_answer_that_breaks_on_use(capsys):
    class Hostile:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("boom")

    assert exercises._check("x", Hostile(), 1.0, "a hint") == "wrong"
    assert "a hint" in capsys.readouterr().out


def test_no_two_notebooks_export_the_same_name():
    """``helpers.exercises`` star-imports every notebook's module: a name defined twice would silently
    replace the earlier notebook's check with the later one's."""
    owners: dict[str, list[str]] = {}
    for path in sorted((REPO_ROOT / "helpers" / "exercises").glob("nb*.py")):
        for node in ast.parse(path.read_text()).body:
            names = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else [
                target.id for target in getattr(node, "targets", []) if isinstance(target, ast.Name)]
            for name in names:
                if not name.startswith("_"):
                    owners.setdefault(name, []).append(path.stem)
    assert {name: files for name, files in owners.items() if len(files) > 1} == {}


# --- exercises that ask for a function -------------------------------------------------------------


def _precision(device_type, capability, cpu_has_bf16):
    if device_type == "cuda":
        return "bf16" if capability[0] >= 8 else "fp16"
    return "bf16" if device_type == "cpu" and cpu_has_bf16 else "fp32"


def _mode(value, cuda_available):
    if value is None or value.strip() == "":
        return "gpu" if cuda_available else "cpu"
    if value.strip().lower() not in ("smoke", "cpu", "gpu"):
        raise ValueError("not a mode: use smoke, cpu or gpu")
    return value.strip().lower()


def _linear_backward_by_autograd(x, W, grad_out):
    x_t, W_t = torch.tensor(x, requires_grad=True), torch.tensor(W, requires_grad=True)
    b_t = torch.zeros(W.shape[1], dtype=torch.float64, requires_grad=True)
    (x_t @ W_t + b_t).backward(torch.tensor(grad_out))
    return x_t.grad.numpy(), W_t.grad.numpy(), b_t.grad.numpy()


def _dedupe(texts, min_chars):
    seen, out = set(), []
    for text in texts:
        paragraphs = text.split("\n\n")
        keep = [p for i, p in enumerate(paragraphs) if len(p) < min_chars or (p not in seen and p not in paragraphs[:i])]
        seen.update(p for p in paragraphs if len(p) >= min_chars)
        out.append("\n\n".join(keep))
    return out


def _interval_gate(candidate, current):
    # 11's rule, written from its statement: the whole 95 % paired interval at least 5 % lower on the new
    # data and at most 2 % higher on the old domain; the paired bootstrap written out here with numpy
    def upper_end(key):
        names = sorted(current[key])
        nll = np.array([[d[key][n].nll_sum for n in names] for d in (current, candidate)])
        tokens = np.array([[d[key][n].num_tokens for n in names] for d in (current, candidate)], dtype=float)
        index = np.random.default_rng(0).integers(0, len(names), size=(2000, len(names)))
        ppl = np.exp(nll[:, index].sum(axis=2) / tokens[:, index].sum(axis=2))
        return np.percentile(ppl[1] / ppl[0] - 1, 97.5)

    return bool(upper_end("new_data") <= -0.05 and upper_end("old_data") <= 0.02)


def _point_gate(candidate, current):  # the point estimates only: promotes a win the chunks cannot confirm
    def change(key):
        ppl = [math.exp(sum(r.nll_sum for r in d[key].values()) / sum(r.num_tokens for r in d[key].values()))
               for d in (current, candidate)]
        return ppl[1] / ppl[0] - 1
    return change("new_data") <= -0.05 and change("old_data") <= 0.02


def _sustained(values, threshold, run=3):
    return any(all(v > threshold for v in values[i : i + run]) for i in range(len(values) - run + 1))


def _shifted_loss(logits, ids):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def _warmup_cosine(step, peak_lr, warmup_steps, num_steps):
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    return peak_lr * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, num_steps - warmup_steps)))


def _percentile(values, q):
    ordered, position = sorted(values), q / 100 * (len(values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def _assistant_mask(ids, tokenizer, keep_end=True):
    # 09's mask, written from its statement: from after "<|assistant|>" and its newline up to <|end|>
    start, end = tokenizer.convert_tokens_to_ids(["<|assistant|>", "<|end|>"])
    mask, inside, previous = [], False, None
    for token in ids:
        if token == end and inside:
            mask.append(int(keep_end))
            inside = False
        else:
            mask.append(int(inside))
        if previous == start:
            inside = True  # the token after <|assistant|> is the newline; the reply starts after it
        previous = token
    return mask


def _bootstrap(correct, resamples, seed):
    values = np.asarray(correct, dtype=float)
    draws = np.random.default_rng(seed + 1).integers(0, len(values), (resamples, len(values)))
    means = values[draws].mean(axis=1)
    return values.mean(), np.quantile(means, 0.025), np.quantile(means, 0.975)


def _answer_logprob(model, tokenizer, context, answer):
    context_ids, answer_ids = tokenizer(context).input_ids, tokenizer(answer).input_ids
    ids = torch.tensor([context_ids + answer_ids])
    labels = torch.tensor([[-100] * len(context_ids) + answer_ids])
    with torch.no_grad():
        return -model(ids, labels=labels).loss.item() * len(answer_ids)  # transformers' own shifted loss


# (check, a right function written here independently, a wrong one)
def _adamw_by_hand(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    param = param * (1 - lr * weight_decay)
    m, v = beta1 * m + (1 - beta1) * grad, beta2 * v + (1 - beta2) * grad**2
    return param - lr * (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt() + eps), m, v


def _decay_split(model):
    return [p for p in model.parameters() if p.dim() >= 2], [p for p in model.parameters() if p.dim() < 2]


FUNCTION_CASES = [
    (exercises.check_interval_gate, _interval_gate, _point_gate),
    (exercises.check_interval_gate, _interval_gate, lambda c, cur: _interval_gate(c, {**cur, "old_data": c["old_data"]})),
    (exercises.check_sustained_drift, _sustained, lambda values, threshold, run=3: sum(v > threshold for v in values) >= run),
    (exercises.check_sustained_drift, _sustained, lambda values, threshold, run=3: _sustained(values, threshold, 3)),
    (exercises.check_pick_precision, _precision, lambda d, c, b: "fp16" if d == "cpu" else _precision(d, c, b)),
    (exercises.check_pick_mode, _mode, lambda value, cuda: (value or "cpu").strip().lower()),  # accepts anything
    (exercises.check_pick_mode, _mode, lambda value, cuda: "cpu" if not value else _mode(value, cuda)),  # ignores CUDA
    (exercises.check_linear_backward, _linear_backward_by_autograd, lambda x, W, g: (g @ W.T, x.T @ g, g.sum(axis=1))),
    (exercises.check_linear_backward, _linear_backward_by_autograd, lambda x, W, g: (g @ W.T, x.T @ g)),
    (exercises.check_dedupe, _dedupe, lambda texts, min_chars: texts),
    (exercises.check_causal_lm_loss, _shifted_loss, lambda logits, ids: F.cross_entropy(logits[:-1].flatten(0, 1), ids[1:].flatten())),
    (exercises.check_causal_lm_loss, _shifted_loss, lambda logits, ids: F.cross_entropy(logits.flatten(0, 1), ids.flatten())),
    (exercises.check_lr_schedule, _warmup_cosine, lambda step, peak, warmup, steps: peak * min(1.0, (step + 1) / max(1, warmup))),
    (exercises.check_lr_schedule, _warmup_cosine, lambda step, peak, warmup, steps: _warmup_cosine(step, peak, 0, steps)),
    (exercises.check_pretrain_schedule, _warmup_cosine, lambda step, peak, warmup, steps: _warmup_cosine(step, peak, 0, steps)),
    (exercises.check_adamw_step, _adamw_by_hand, lambda p, g, m, v, t, lr, b1, b2, eps, wd: _adamw_by_hand(p, g, m, v, t, lr, b1, b2, eps, 0.0)),
    (exercises.check_adamw_step, _adamw_by_hand, lambda p, g, m, v, t, lr, b1, b2, eps, wd: _adamw_by_hand(p, g, m, v, 1, lr, b1, b2, eps, wd)),
    (exercises.check_decay_split, _decay_split, lambda model: (list(model.parameters()), [])),
    (exercises.check_percentile, _percentile, lambda values, q: sorted(values)[round(q / 100 * (len(values) - 1))]),
    (exercises.check_percentile, _percentile, lambda values, q: sorted(values)[int(q / 100 * (len(values) - 1))]),
    (exercises.check_assistant_mask, _assistant_mask, lambda ids, tok: _assistant_mask(ids, tok, keep_end=False)),
    (exercises.check_exact_match_interval, _bootstrap, lambda correct, resamples, seed: (np.mean(correct), 0.0, 1.0)),
    (exercises.check_answer_logprob, _answer_logprob, lambda model, tok, context, answer: _answer_logprob(
        model, tok, context, answer) / len(tok(answer).input_ids)),  # the mean, not the sum
]
FUNCTION_IDS = [f"{case[0].__name__}-{i}" for i, case in enumerate(FUNCTION_CASES)]


@pytest.mark.parametrize(("check", "right", "wrong"), FUNCTION_CASES, ids=FUNCTION_IDS)
def test_function_exercises_pass_the_right_function_and_hint_at_a_wrong_one(check, right, wrong, capsys):
    check(right)
    assert capsys.readouterr().out.startswith(exercises.CORRECT)
    check(wrong)
    out = capsys.readouterr().out
    assert out.startswith(exercises.WRONG) and "Hint:" in out


@pytest.mark.parametrize("check", sorted({case[0] for case in FUNCTION_CASES}, key=lambda f: f.__name__))
def test_function_exercises_survive_unfinished_broken_and_non_functions(check, capsys):
    check(None)
    assert capsys.readouterr().out.startswith(exercises.NOT_DONE)
    check(42)
    assert capsys.readouterr().out.startswith(exercises.WRONG)
    check(lambda *args: 1 / 0)
    out = capsys.readouterr().out
    assert out.startswith(exercises.WRONG) and "ZeroDivisionError" in out


def test_the_checksum_check_compares_with_hashlib(tmp_path, capsys):
    import hashlib

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not really weights")
    exercises.check_weights_sha256(hashlib.sha256(b"not really weights").hexdigest(), weights)
    assert capsys.readouterr().out.startswith(exercises.CORRECT)
    exercises.check_weights_sha256(hashlib.md5(b"not really weights").hexdigest(), weights)
    out = capsys.readouterr().out
    assert out.startswith(exercises.WRONG) and "Hint:" in out
    exercises.check_weights_sha256(None, weights)
    assert capsys.readouterr().out.startswith(exercises.NOT_DONE)
    exercises.check_weights_sha256(b"bytes", weights)
    assert capsys.readouterr().out.startswith(exercises.WRONG)

class _CompletionRequest(pydantic.BaseModel):  # module level: FastAPI resolves the annotation by name
    model: str
    prompt: str
    max_tokens: int = 16


def _completion_app(context_len: int, check: str):
    """A stand-in endpoint (no model: it echoes a token) that checks the context fully, not at all, or FastAPI's way."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.post("/v1/completions")
    def complete(request: _CompletionRequest):
        used = len(_tokenizer()(request.prompt).input_ids) + request.max_tokens
        if used > context_len and check == "openai":
            return JSONResponse(status_code=400, content={"error": {
                "message": f"the context holds {context_len} tokens; you asked for {used}", "type": "invalid_request_error",
                "param": "prompt", "code": "context_length_exceeded"}})
        if used > context_len and check == "fastapi":
            raise HTTPException(400, "too long")
        return {"id": "x", "object": "text_completion", "created": 0, "model": request.model,
                "choices": [{"index": 0, "text": " the", "finish_reason": "length", "logprobs": None}]}

    return app


@pytest.mark.parametrize(("check", "verdict"), [("openai", exercises.CORRECT), ("none", exercises.WRONG),
                                                ("fastapi", exercises.WRONG)])
def test_the_context_limit_check_calls_the_app_with_the_official_client(check, verdict, capsys):
    exercises.check_context_limit(_completion_app(32, check), 32)
    out = capsys.readouterr().out
    assert out.startswith(verdict), out
    if verdict == exercises.WRONG:
        assert "Hint:" in out
    exercises.check_context_limit(None, 32)
    assert capsys.readouterr().out.startswith(exercises.NOT_DONE)


def test_the_mode_check_wants_an_error_that_names_the_modes(capsys):
    def silent_error(value, cuda):
        if value and value.strip() and value.strip().lower() not in ("smoke", "cpu", "gpu"):
            raise ValueError("bad value")
        return _mode(value, cuda)

    exercises.check_pick_mode(silent_error)
    out = capsys.readouterr().out
    assert out.startswith(exercises.WRONG) and "name the valid modes" in out


# --- the notebooks' exercises -------------------------------------------------------------------

# What each notebook's earlier cells give its solution cells, besides the checks it imports.
def _notebook_10() -> dict:
    """10's minimal endpoint (its cell, run as written) on a small random GPT-2: what its solutions build on."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # small: a context of 64 tokens is enough to test the limit, and generating two tokens takes milliseconds
    cpu_model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64)).eval()
    namespace = {"tokenizer": _tokenizer(), "cpu_model": cpu_model, "torch": torch}
    cells = nbformat.read(REPO_ROOT / "notebooks" / "10_deployment.ipynb", as_version=4).cells
    exec(next(cell.source for cell in cells if "minimal_app = FastAPI()" in cell.source), namespace)
    return namespace


NOTEBOOK_NAMES = {
    "00_setup.ipynb": lambda: {"tokenizer": _tokenizer()},
    "01_mse_and_gradient_descent.ipynb": lambda: {"np": np},
    "02_data_preparation.ipynb": lambda: dict(_notebook_02()),
    "05_finetuning_gpt2.ipynb": lambda: {"torch": torch, "math": math},
    "09_assistant.ipynb": lambda: {"np": np, "torch": torch},
    "10_deployment.ipynb": _notebook_10,
}


def _solution_cells(notebook: str) -> list[str]:
    nb = nbformat.read(REPO_ROOT / "notebooks" / notebook, as_version=4)
    return [cell.source for cell in nb.cells if "solution" in cell.metadata.get("tags", [])]


def _namespace(notebook: str) -> dict:
    names = {name: getattr(exercises, name) for name in dir(exercises) if name.startswith("check_")}
    return {**NOTEBOOK_NAMES[notebook](), **names}


@pytest.mark.parametrize("notebook", NOTEBOOK_NAMES)
def test_notebook_has_three_checked_exercises_each_ending_with_its_check(notebook):
    cells = _solution_cells(notebook)
    assert len(cells) >= 3, f"{notebook} has {len(cells)} checked exercises; the course asks for at least 3"
    for source in cells:
        last = ast.parse(source).body[-1]
        assert isinstance(last, ast.Expr) and isinstance(last.value, ast.Call), source
        assert last.value.func.id.startswith("check_") and isinstance(last.value.args[0], ast.Name), source


@pytest.mark.parametrize("notebook", NOTEBOOK_NAMES)
def test_notebook_solutions_are_correct_and_stubs_are_not_done(notebook, capsys):
    for source in _solution_cells(notebook):
        exec(source, _namespace(notebook))
        assert capsys.readouterr().out.startswith(exercises.CORRECT), source
        stub = stub_source(source, "your answer")  # what the workshop build puts in its place
        exec(stub, _namespace(notebook))
        assert capsys.readouterr().out.startswith(exercises.NOT_DONE), stub


def test_notebook_11_has_three_checked_exercises_each_ending_with_its_check():
    # 11's solutions need its trained candidates, so they run where the notebook runs (nbval), not here
    test_notebook_has_three_checked_exercises_each_ending_with_its_check("11_iteration.ipynb")


def test_tokens_per_parameter_check_reads_the_shipped_base(capsys):
    import json

    from helpers.models import tiny_base_dir

    metrics = json.loads((tiny_base_dir() / "training_metrics.json").read_text())
    exercises.check_tokens_per_parameter(metrics["tokens_seen"] / metrics["parameters"], False)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(exercises.CORRECT) and out[1].startswith(exercises.CORRECT)
    exercises.check_tokens_per_parameter(20.0, True)
    assert capsys.readouterr().out.startswith(exercises.WRONG)
    exercises.check_tokens_per_parameter(metrics["tokens_seen"] / metrics["parameters"], True)
    assert exercises.WRONG in capsys.readouterr().out
