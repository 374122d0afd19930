"""helpers.gpt, notebook 03's GPT-2 from scratch: the same logits, tokens and filters as transformers.

References nobody here wrote: ``GPT2LMHeadModel`` (its logits, its own loss, ``generate``),
transformers' ``TopKLogitsWarper`` / ``TopPLogitsWarper`` and ``DynamicCache``, and PyTorch's
``scaled_dot_product_attention``. Models are the shipped tiny base (6 layers x 128) and random
transformers GPT-2s of other shapes, small so that the whole file runs in seconds.
"""

from __future__ import annotations

import ast

import nbformat
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    BertConfig,
    GPT2Config,
    GPT2LMHeadModel,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from helpers import exercises, gpt
from helpers.models import tiny_base_dir
from helpers.settings import REPO_ROOT
from tools.export import EXPORT_TAG, EXPORTS, ExportError, export_all, exported_cells, module_source

NOTEBOOK = REPO_ROOT / "notebooks" / "03_inside_gpt2.ipynb"
PROMPTS = ("KING.\nWhat news, my lord?", "It is a truth universally acknowledged, that", "To be, or not to be:")


@pytest.fixture(scope="module")
def tiny():
    """The shipped tiny base, as transformers loads it and as our GPT loads it."""
    hf = GPT2LMHeadModel.from_pretrained(tiny_base_dir(), dtype=torch.float32).eval()
    return hf, gpt.GPT.from_transformers(hf)


GPT_SHAPE = dict(n_layer=3, n_embd=96, n_head=6)  # six heads: per-head reshapes are exercised


# --- one source: helpers/gpt.py is notebook 03's exported cells ---------------------------------


def test_helpers_gpt_is_generated_from_the_notebook():
    module, header = EXPORTS[NOTEBOOK.name]
    on_disk = (REPO_ROOT / "helpers" / module).read_text(encoding="utf-8")
    assert on_disk == module_source(NOTEBOOK, header), (
        "helpers/gpt.py differs from the cells of notebooks/03_inside_gpt2.ipynb tagged 'export': "
        "run `python -m tools.export` and commit both"
    )
    assert export_all(check=True) == [], "some generated module is out of date: run `python -m tools.export`"


def test_every_definition_the_notebook_exports_is_in_the_module_and_nothing_else():
    defined = {node.name for source in exported_cells(NOTEBOOK) for node in ast.parse(source).body
               if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    module = ast.parse((REPO_ROOT / "helpers" / "gpt.py").read_text(encoding="utf-8"))
    assert defined == {node.name for node in module.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert {"GPT", "generate", "KVCache", "top_k_filter", "top_p_filter"} <= defined


def test_an_exported_cell_that_runs_code_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("def f():\n    return 1\n\n\nprint(f())")]
    nb.cells[0].metadata["tags"] = [EXPORT_TAG]
    path = tmp_path / "99_x.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(ExportError, match=r"99_x\.ipynb, cell 0, line 5: .*only imports, definitions"):
        exported_cells(path)
    nb.cells[0].metadata["tags"] = []
    nbformat.write(nb, path)
    with pytest.raises(ExportError, match="no code cell tagged 'export'"):
        exported_cells(path)


# --- the model computes what transformers computes ---------------------------------------------


def _compare(ours: gpt.GPT, theirs: GPT2LMHeadModel, ids: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        reference = theirs(ids, labels=ids)
        logits = ours(ids)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert logits.shape == (*ids.shape, theirs.config.vocab_size)
    return (logits - reference.logits).abs().max().item(), abs(loss.item() - reference.loss.item())


def test_tiny_base_logits_and_loss_equal_transformers(tiny, tokenizer):
    hf, ours = tiny
    text = (REPO_ROOT / "data" / "raw" / "austen" / "persuasion.txt").read_text(encoding="utf-8")[5_000:8_000]
    ids = torch.tensor([tokenizer(text).input_ids[: hf.config.n_positions]])
    logit_gap, loss_gap = _compare(ours, hf, ids)
    assert logit_gap <= 1e-4 and loss_gap <= 1e-5, (logit_gap, loss_gap)


@pytest.mark.parametrize("shape", [dict(), dict(n_layer=2, n_embd=64, n_head=2, n_positions=32, vocab_size=1000)],
                         ids=["3x96x6heads", "2x64x2heads-vocab1000"])
def test_random_gpt2_of_other_shapes_logits_equal_transformers(shape, random_gpt2):
    hf = random_gpt2(**{**GPT_SHAPE, **shape})
    ours = gpt.GPT.from_transformers(hf)
    ids = torch.randint(0, hf.config.vocab_size, (2, hf.config.n_positions), generator=torch.Generator().manual_seed(1))
    logit_gap, loss_gap = _compare(ours, hf, ids)
    assert logit_gap <= 1e-4 and loss_gap <= 1e-5, (logit_gap, loss_gap)


def test_the_lm_head_is_tied_and_weights_follow_devices_and_dtypes(random_gpt2):
    hf = random_gpt2(**GPT_SHAPE).to(torch.float64)
    ours = gpt.GPT.from_transformers(hf)
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert next(ours.parameters()).dtype == torch.float64 and not ours.training


def test_parameter_formula_equals_transformers_count():
    for shape in (dict(), dict(n_layer=24, n_embd=1024, n_head=16), dict(n_layer=3, n_embd=96, n_head=6, n_positions=64)):
        with torch.device("meta"):
            hf = GPT2LMHeadModel(GPT2Config(**shape))
        counted = sum(p.numel() for p in hf.parameters())
        assert sum(gpt.parameter_counts(gpt.config_from_transformers(hf.config)).values()) == counted, shape


def test_last_only_gives_the_last_positions_logits(tiny):
    _, ours = tiny
    ids = torch.randint(0, 50257, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(ids, last_only=True), ours(ids)[:, -1:], atol=1e-5)


def test_other_models_and_variants_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="not a GPT-2 config"):
        gpt.config_from_transformers(BertConfig())
    with pytest.raises(ValueError, match="n_inner = 4 \\* n_embd"):
        gpt.config_from_transformers(GPT2Config(n_inner=100))
    with pytest.raises(ValueError, match="multiple of n_head"):
        gpt.GPT(gpt.GPTConfig(n_embd=10, n_head=3))


# --- the way back: GPT.to_transformers (notebook 04) ----------------------------------------------


def _passage(tokenizer, length: int) -> torch.Tensor:
    """A real passage: ``length`` tokens of Persuasion, the novel the tiny base never trained on."""
    text = (REPO_ROOT / "data" / "raw" / "austen" / "persuasion.txt").read_text(encoding="utf-8")[20_000:40_000]
    return torch.tensor([tokenizer(text).input_ids[:length]])


def _relative_gap(ours: gpt.GPT, theirs: GPT2LMHeadModel, ids: torch.Tensor) -> float:
    """max |our logits - transformers' logits| / max |transformers' logits|."""
    with torch.no_grad():
        reference = theirs(ids).logits
        return ((ours(ids) - reference).abs().max() / reference.abs().max()).item()


def test_to_transformers_of_the_trained_tiny_base_gives_its_logits(tiny, tokenizer):
    _, ours = tiny
    exported = ours.to_transformers()
    assert isinstance(exported, GPT2LMHeadModel) and not exported.training
    assert _relative_gap(ours, exported, _passage(tokenizer, ours.config.block_size)) <= 1e-5


def test_to_transformers_of_a_larger_random_init_gives_its_logits(tokenizer):
    # 8 layers x 256 wide (8 heads): larger than the tiny base, initialised by PyTorch's defaults, not GPT-2's:
    # N(0, 1) embeddings, 50x GPT-2's 0.02, so the logits reach the hundreds and rounding has room to grow
    torch.manual_seed(3)
    ours = gpt.GPT(gpt.GPTConfig(n_layer=8, n_head=8, n_embd=256, block_size=128)).eval()
    exported = ours.to_transformers()
    assert exported.config.n_layer == 8 and exported.config.n_embd == 256 and exported.config.n_head == 8
    assert _relative_gap(ours, exported, _passage(tokenizer, 128)) <= 1e-5


def test_from_transformers_of_to_transformers_is_the_same_model(random_gpt2):
    torch.manual_seed(4)
    ours = gpt.GPT(gpt.GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=1000, dropout=0.1))
    back = gpt.GPT.from_transformers(ours.to_transformers())
    assert back.config == ours.config
    mine, theirs = ours.state_dict(), back.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert back.lm_head.weight is back.transformer.wte.weight  # still tied
    hf = random_gpt2(**GPT_SHAPE)  # and the other way round: transformers -> ours -> transformers
    again = gpt.GPT.from_transformers(hf).to_transformers().state_dict()
    assert all(torch.equal(w, again[k]) for k, w in hf.state_dict().items())


def test_an_exported_model_saves_and_loads_with_auto_model(tmp_path, tiny, tokenizer):
    from transformers import AutoModelForCausalLM

    _, ours = tiny
    ours.to_transformers().save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert _relative_gap(ours, loaded, _passage(tokenizer, 64)) <= 1e-5


def test_hidden_states_are_what_the_lm_head_reads(tiny):
    hf, ours = tiny
    ids = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = ours.hidden_states(ids)
        assert torch.allclose(hidden, hf.transformer(ids).last_hidden_state, atol=1e-5)
        assert torch.equal(ours.lm_head(hidden), ours(ids))


# --- generation ----------------------------------------------------------------------------------


def test_greedy_equals_transformers_generate(tiny, tokenizer):
    hf, ours = tiny
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        expected = hf.generate(ids, do_sample=False, max_new_tokens=20, eos_token_id=None, pad_token_id=50256)
        assert torch.equal(gpt.generate(ours, ids, 20), expected), prompt
        assert torch.equal(gpt.generate(ours, ids, 20, use_cache=False), expected), prompt


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.9, top_k=40), dict(temperature=1.2, top_p=0.9),
                                      dict(temperature=0.7, top_k=100, top_p=0.8)], ids=repr)
def test_cache_and_no_cache_give_identical_tokens(sampling, random_gpt2):
    ours = gpt.GPT.from_transformers(random_gpt2(**GPT_SHAPE))
    prompt = torch.randint(0, 50257, (2, 5), generator=torch.Generator().manual_seed(3))  # a batch of two
    outputs = [gpt.generate(ours, prompt, 40, use_cache=use_cache, generator=torch.Generator().manual_seed(7), **sampling)
               for use_cache in (True, False)]
    assert outputs[0].shape == (2, 45) and torch.equal(outputs[0][:, :5], prompt)
    assert torch.equal(*outputs)


def test_the_kv_cache_agrees_with_transformers_dynamic_cache():
    from transformers import DynamicCache

    ours, theirs = gpt.KVCache(n_layer=2), DynamicCache()
    generator = torch.Generator().manual_seed(0)
    for new in (4, 1, 1):
        for layer in (0, 1):
            k, v = (torch.randn(1, 2, new, 8, generator=generator) for _ in range(2))
            for a, b in zip(ours.update(layer, k, v), theirs.update(k, v, layer)):
                assert torch.equal(a, b)
    assert len(ours) == 6


def test_generation_refuses_bad_input_with_the_reason(tiny):
    _, ours = tiny
    ids = torch.zeros(1, 250, dtype=torch.long)
    with pytest.raises(ValueError, match="exceed the model's context of 256"):
        gpt.generate(ours, ids, 10)
    with pytest.raises(ValueError, match="temperature >= 0"):
        gpt.generate(ours, ids[:, :3], 1, temperature=-1)
    with pytest.raises(ValueError, match="0 < top_p <= 1"):
        gpt.generate(ours, ids[:, :3], 1, temperature=1, top_p=1.5)
    with pytest.raises(ValueError, match=r"at least one token, got shape \(1, 0\)"):
        gpt.generate(ours, ids[:, :0], 1)
    with pytest.raises(ValueError, match="do not fit the context of 256"):
        ours(torch.zeros(1, 300, dtype=torch.long))


def _random_logits(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.1, 8, 32)[:, None]  # flat rows to very peaked ones
    return torch.randn(32, 500, generator=generator) * scales


@pytest.mark.parametrize("k", [1, 2, 10, 100, 499, 500, 1000])
def test_top_k_filter_equals_transformers(k):
    for seed in range(3):
        logits = _random_logits(seed)
        assert torch.equal(gpt.top_k_filter(logits, k), TopKLogitsWarper(k)(None, logits.clone()))
    ties = torch.tensor([[3.0, 1.0, 3.0, 2.0, 2.0, 0.0]])  # ties with the k-th largest are kept by both
    assert torch.equal(gpt.top_k_filter(ties, min(k, 6)), TopKLogitsWarper(min(k, 6))(None, ties.clone()))


@pytest.mark.parametrize("p", [0.01, 0.1, 0.5, 0.9, 0.95, 0.999, 1.0])
def test_top_p_filter_equals_transformers(p):
    for seed in range(3):
        logits = _random_logits(seed)
        assert torch.equal(gpt.top_p_filter(logits, p), TopPLogitsWarper(p)(None, logits.clone())), seed


def test_greedy_is_the_argmax_and_sampling_follows_the_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9]])
    assert gpt.next_token(logits).item() == 1
    draws = {gpt.next_token(logits, 1.0, top_k=2, generator=torch.Generator().manual_seed(s)).item() for s in range(50)}
    assert draws == {1, 3}


# --- the exercises' checks -----------------------------------------------------------------------


def _attention(q, k, v, causal=True, scale=None):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


def _top_p_descending(logits, p):
    return gpt.top_p_filter(logits, p)


def _out(capsys) -> str:
    return capsys.readouterr().out


def test_attention_check(capsys):
    exercises.check_causal_attention(_attention)
    assert _out(capsys).startswith(exercises.CORRECT)
    exercises.check_causal_attention(lambda q, k, v: _attention(q, k, v, causal=False))
    assert "causal mask is missing" in _out(capsys)
    exercises.check_causal_attention(lambda q, k, v: _attention(q, k, v, scale=1.0))
    assert "sqrt(head_size)" in _out(capsys)
    exercises.check_causal_attention(lambda q, k, v: (_attention(q, k, v), None))
    assert "returned a tuple" in _out(capsys)
    exercises.check_causal_attention(lambda q, k, v: 1 / 0)
    out = _out(capsys)
    assert out.startswith(exercises.WRONG) and "ZeroDivisionError" in out
    exercises.check_causal_attention(None)
    assert _out(capsys).startswith(exercises.NOT_DONE)


def test_parameter_count_check(capsys):
    with torch.device("meta"):
        medium = GPT2LMHeadModel(GPT2Config(**exercises.PARAMETER_EXERCISE_CONFIG))
    right = sum(p.numel() for p in medium.parameters())
    exercises.check_parameter_count(right)
    assert _out(capsys).startswith(exercises.CORRECT)
    exercises.check_parameter_count(right + medium.lm_head.weight.numel())  # the tied head counted twice
    out = _out(capsys)
    assert out.startswith(exercises.WRONG) and "count that table once" in out
    exercises.check_parameter_count(None)
    assert _out(capsys).startswith(exercises.NOT_DONE)


def test_top_p_check(capsys):
    exercises.check_top_p(_top_p_descending)
    assert _out(capsys).startswith(exercises.CORRECT)
    exercises.check_top_p(lambda logits, p: gpt.top_p_filter(logits, p).softmax(dim=-1))  # probabilities, not logits
    assert "returned probabilities" in _out(capsys)
    exercises.check_top_p(lambda logits, p: gpt.top_p_filter(logits, p) / 2)
    assert "logits changed" in _out(capsys)
    exercises.check_top_p(lambda logits, p: gpt.top_k_filter(logits, 5))
    out = _out(capsys)
    assert out.startswith(exercises.WRONG) and "TopPLogitsWarper keeps" in out
    exercises.check_top_p(lambda logits, p: logits[:, :10])
    assert "expected shape" in _out(capsys)
    exercises.check_top_p(None)
    assert _out(capsys).startswith(exercises.NOT_DONE)


def test_kv_update_check(capsys):
    def update(past_k, past_v, k, v):
        return (k, v) if past_k is None else (torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2))

    exercises.check_kv_update(update)
    assert _out(capsys).startswith(exercises.CORRECT)
    exercises.check_kv_update(lambda pk, pv, k, v: update(pk, pv, k, v)[::-1])  # keys and values swapped
    assert _out(capsys).startswith(exercises.WRONG)
    exercises.check_kv_update(lambda pk, pv, k, v: (k, v) if pk is None else (torch.cat([k, pk], 2), torch.cat([v, pv], 2)))
    assert "not the right order" in _out(capsys)
    exercises.check_kv_update(lambda pk, pv, k, v: (k, v))  # never appends
    assert "should be (1, 2, 6, 4)" in _out(capsys)
    exercises.check_kv_update(None)
    assert _out(capsys).startswith(exercises.NOT_DONE)


def test_the_notebooks_solutions_pass_their_checks(capsys):
    import math

    nb = nbformat.read(NOTEBOOK, as_version=4)
    solutions = [c.source for c in nb.cells if "solution" in c.metadata.get("tags", [])]
    assert len(solutions) == 4
    for source in solutions:
        exec(source, {"math": math, "torch": torch, **{n: getattr(exercises, n) for n in dir(exercises) if n.startswith("check_")}})
        assert _out(capsys).startswith(exercises.CORRECT), source
