"""LoRA by hand against ``peft`` (the reference nobody here wrote): same logits, same counts, same sizes.

Also: a zero-initialised adapter changes nothing, merging changes nothing, an adapter survives
``save_pretrained`` / ``PeftModel.from_pretrained``, training moves only ``A`` and ``B``, the
notebook's hand-written code is the helper's, and 06's exercise checks.
"""

from __future__ import annotations

import ast
import copy
import inspect

import nbformat
import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from helpers import exercises, lora
from helpers.settings import REPO_ROOT
from helpers.training import TrainConfig, train
from tests.notebook_code import notebook_definitions

NOTEBOOK_06 = REPO_ROOT / "notebooks" / "06_lora.ipynb"
NB06 = notebook_definitions("06_lora.ipynb", constants={"TARGETS"})  # the lesson code 06 writes in its cells
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")  # peft 0.21 calls a method transformers 5 renamed
R, ALPHA = 4, 8


LORA_SHAPE = dict(n_positions=32, vocab_size=97, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # widths 32 in, 96 out, 128 hidden: a transposed weight cannot pass by accident


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(seed))


def logits(model, input_ids=None) -> torch.Tensor:
    with torch.no_grad():
        return model(ids() if input_ids is None else input_ids).logits


def peft_with_nonzero_b(base: GPT2LMHeadModel, seed: int = 2):
    """A peft adapter whose B is random (as after training), so the update is not zero."""
    model = get_peft_model(base, lora.lora_config(R, ALPHA)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def test_zero_initialised_adapter_gives_the_base_logits_exactly(random_gpt2):
    base = random_gpt2(**LORA_SHAPE)
    hand = lora.add_lora(copy.deepcopy(base), R, ALPHA).eval()
    layers = [m for m in hand.modules() if isinstance(m, lora.LoRALayer)]
    assert len(layers) == 2 * len(lora.TARGETS)
    assert all(not m.B.detach().any() and m.A.detach().abs().min() > 0 for m in layers)
    assert torch.equal(logits(hand), logits(base))


def test_trainable_count_by_formula_equals_the_counted_and_peft(random_gpt2):
    base = random_gpt2(**LORA_SHAPE)
    shapes = lora.wrapped_shapes(base)
    assert shapes[:4] == [(32, 96), (32, 32), (32, 128), (128, 32)]  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    hand = lora.add_lora(copy.deepcopy(base), R, ALPHA)
    counted = sum(p.numel() for p in hand.parameters() if p.requires_grad)
    peft_trainable, _ = get_peft_model(copy.deepcopy(base), lora.lora_config(R, ALPHA)).get_nb_trainable_parameters()
    assert counted == peft_trainable == lora.lora_parameter_count(shapes, R)
    assert all(not p.requires_grad for n, p in hand.named_parameters() if not n.endswith((".A", ".B")))


def test_hand_lora_with_peft_a_and_b_gives_peft_logits(random_gpt2):
    base = random_gpt2(**LORA_SHAPE)
    peft_model = peft_with_nonzero_b(copy.deepcopy(base))
    hand = lora.add_lora(copy.deepcopy(base), R, ALPHA).eval()
    assert NB06["copy_lora"](peft_model, hand) == 2 * len(lora.TARGETS)
    expected = logits(peft_model)
    assert (expected - logits(base)).abs().max() > 1e-2, "the adapter must change the logits, or this test proves nothing"
    torch.testing.assert_close(logits(hand), expected, atol=1e-5, rtol=0)


def test_hand_lora_adds_the_scaled_low_rank_product_to_the_conv1d(random_gpt2):
    layer = random_gpt2(**LORA_SHAPE).transformer.h[0].attn.c_attn  # Conv1D: x @ W + b, W stored (in, out)
    wrapped = lora.LoRALayer(copy.deepcopy(layer), r=R, alpha=ALPHA)
    torch.nn.init.normal_(wrapped.B)
    x = torch.randn(5, 32)
    merged = layer.weight + (ALPHA / R) * (wrapped.B @ wrapped.A).T
    torch.testing.assert_close(wrapped(x), torch.addmm(layer.bias, x, merged), atol=1e-5, rtol=1e-5)


def test_copying_into_a_differently_wrapped_model_is_refused(random_gpt2):
    peft_model = peft_with_nonzero_b(random_gpt2(**LORA_SHAPE))
    hand = lora.add_lora(random_gpt2(**LORA_SHAPE), R, ALPHA, targets=("attn.c_attn",))
    with pytest.raises(AssertionError, match="wrap the same targets"):
        NB06["copy_lora"](peft_model, hand)
    with pytest.raises(AssertionError, match="rank 4 into rank 2"):
        NB06["copy_lora"](peft_model, lora.add_lora(random_gpt2(**LORA_SHAPE), 2, ALPHA))


def test_unknown_target_and_bad_rank_are_clear_errors(random_gpt2):
    with pytest.raises(ValueError, match="'attn.q_proj' is not a projection"):
        lora.wrapped_shapes(random_gpt2(**LORA_SHAPE), ("attn.q_proj",))
    with pytest.raises(ValueError, match="rank r must be a positive"):
        lora.lora_parameter_count([(4, 4)], 0)


def test_hand_trained_a_and_b_saved_through_peft_give_the_hand_logits(tmp_path, random_gpt2):
    base = random_gpt2(**LORA_SHAPE)
    hand = lora.add_lora(copy.deepcopy(base), R, ALPHA).eval()
    with torch.no_grad():
        for module in hand.modules():
            if isinstance(module, lora.LoRALayer):
                module.B.normal_()
    peft_model = get_peft_model(copy.deepcopy(base), lora.lora_config(R, ALPHA)).eval()
    NB06["copy_lora"](hand, peft_model)
    peft_model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(random_gpt2(**LORA_SHAPE), tmp_path).eval()
    torch.testing.assert_close(logits(reloaded), logits(hand), atol=1e-5, rtol=0)


def test_merge_and_unload_gives_the_same_logits_and_a_plain_gpt2(tmp_path, random_gpt2):
    peft_model = peft_with_nonzero_b(random_gpt2(**LORA_SHAPE))
    before = logits(peft_model)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    assert type(merged) is GPT2LMHeadModel
    torch.testing.assert_close(logits(merged), before, atol=1e-5, rtol=0)
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is GPT2LMHeadModel
    torch.testing.assert_close(logits(reloaded), before, atol=1e-5, rtol=0)


def test_adapter_round_trip_and_its_size(tmp_path, random_gpt2):
    base = random_gpt2(**LORA_SHAPE)
    peft_model = peft_with_nonzero_b(copy.deepcopy(base))
    peft_model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(random_gpt2(**LORA_SHAPE), tmp_path).eval()  # a fresh base with the same weights
    torch.testing.assert_close(logits(reloaded), logits(peft_model), atol=1e-6, rtol=0)
    stored = load_file(tmp_path / lora.ADAPTER_FILE)
    assert sum(t.numel() * t.element_size() for t in stored.values()) == lora.adapter_bytes(lora.wrapped_shapes(base), R)


def test_training_moves_only_a_and_b(random_gpt2):
    base = random_gpt2(**LORA_SHAPE)
    model = lora.add_lora(copy.deepcopy(base), R, ALPHA)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    blocks = np.random.default_rng(0).integers(0, 97, (16, 16)).astype(np.uint16)
    config = TrainConfig(num_steps=2, lr=1e-2, warmup_steps=1, batch_size=4, eval_interval=2)
    trained = train(model, blocks, blocks[:4], config, progress=False).model
    parameters = dict(trained.named_parameters())
    assert all(torch.equal(parameters[n], p) for n, p in frozen.items())
    assert all(m.B.detach().any() for m in trained.modules() if isinstance(m, lora.LoRALayer))


def test_a_trained_model_computes_in_fp32_again(random_gpt2):
    """06 compares a trained adapter's logits to 1e-5: the loop's bf16 autocast must not stay on the model."""
    model = lora.add_lora(random_gpt2(**LORA_SHAPE), R, ALPHA)
    blocks = np.random.default_rng(0).integers(0, 97, (16, 16)).astype(np.uint16)
    config = TrainConfig(num_steps=2, lr=1e-2, warmup_steps=1, batch_size=4, eval_interval=2, mixed_precision="bf16")
    trained = train(model, blocks, blocks[:4], config, progress=False).model.eval()
    plain = lora.add_lora(random_gpt2(**LORA_SHAPE), R, ALPHA).eval()
    plain.load_state_dict(trained.state_dict())
    assert torch.equal(logits(trained), logits(plain))


def test_training_memory_counts_what_each_kind_of_step_keeps(random_gpt2):
    base = random_gpt2(**LORA_SHAPE)
    batch = ids()
    full = NB06["training_memory"](base, batch)
    adapter = NB06["training_memory"](lora.add_lora(copy.deepcopy(base), R, ALPHA), batch)
    weights = sum(p.numel() * 4 for p in base.parameters())
    trainable = lora.lora_parameter_count(lora.wrapped_shapes(base), R)
    assert full["weights"] == full["gradients"] == weights and full["optimizer"] == 2 * weights
    assert adapter["weights"] == weights + 4 * trainable
    assert adapter["gradients"] == 4 * trainable and adapter["optimizer"] == 8 * trainable
    assert full["activations"] > 0 and adapter["activations"] > 0


def test_training_memory_leaves_the_model_as_it_was(random_gpt2):
    model = lora.add_lora(random_gpt2(**LORA_SHAPE), R, ALPHA)
    before = {n: p.clone() for n, p in model.named_parameters()}
    NB06["training_memory"](model, ids())
    assert all(torch.equal(p, before[n]) and p.grad is None for n, p in model.named_parameters())


# --- the notebook's hand-written code is the helper's ------------------------------------------


def _definitions(source: str) -> dict[str, str]:
    return {node.name: ast.dump(node) for node in ast.parse(source).body
            if isinstance(node, (ast.ClassDef, ast.FunctionDef))}


def test_notebook_writes_out_the_helpers_lora():
    nb = nbformat.read(NOTEBOOK_06, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and not c.source.lstrip().startswith(("%", "!"))]
    in_notebook = {}
    for source in cells:
        in_notebook.update(_definitions(source))
    for helper in (lora.LoRALayer, lora.add_lora):
        assert helper.__name__ in in_notebook, f"06_lora.ipynb no longer defines {helper.__name__}"
        assert in_notebook[helper.__name__] == _definitions(inspect.getsource(helper))[helper.__name__], (
            f"06_lora.ipynb's {helper.__name__} differs from helpers.lora's; keep them the same"
        )


# --- 06's exercises -----------------------------------------------------------------------------


def _forward_reference(unscaled: bool = False) -> torch.Tensor:
    """The exercise's LoRA forward through the hand-written layer, on a real Conv1D (``unscaled``: a
    classic mistake, the update without its alpha / r)."""
    from transformers.pytorch_utils import Conv1D

    case = {k: torch.tensor(v, dtype=torch.float64) for k, v in exercises.LORA_FORWARD_EXERCISE.items()
            if k not in ("r", "alpha")}
    conv = Conv1D(case["W"].shape[1], case["W"].shape[0]).double()
    with torch.no_grad():
        conv.weight.copy_(case["W"])
        conv.bias.copy_(case["b"])
    layer = lora.LoRALayer(conv, exercises.LORA_FORWARD_EXERCISE["r"], exercises.LORA_FORWARD_EXERCISE["alpha"]).double()
    if unscaled:
        layer.scale = 1.0
    with torch.no_grad():
        layer.A.copy_(case["A"])
        layer.B.copy_(case["B"])
        return layer(case["x"])


def _gpt2_small_trainable(r: int) -> int:
    """peft's own count for GPT-2 small (built on the meta device: no memory, no download)."""
    case = exercises.LORA_COUNT_EXERCISE
    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(n_layer=case["n_layer"], n_embd=case["n_embd"]))
    return get_peft_model(model, lora.lora_config(r, 2 * r)).get_nb_trainable_parameters()[0]


def _adapter_file_numbers_bytes(tmp_path) -> int:
    case = exercises.ADAPTER_BYTES_EXERCISE
    config = GPT2Config(n_layer=case["n_layer"], n_embd=case["n_embd"], n_head=4, vocab_size=97, n_positions=32,
                        bos_token_id=0, eos_token_id=0)
    get_peft_model(GPT2LMHeadModel(config), lora.lora_config(case["r"], 2 * case["r"])).save_pretrained(tmp_path)
    return sum(t.numel() * t.element_size() for t in load_file(tmp_path / lora.ADAPTER_FILE).values())


def test_exercise_checks_accept_independent_answers_and_refuse_wrong_ones(tmp_path, capsys):
    forward = _forward_reference()
    count = _gpt2_small_trainable(exercises.LORA_COUNT_EXERCISE["r"])
    size = _adapter_file_numbers_bytes(tmp_path)
    cases = [
        (exercises.check_lora_forward, forward, _forward_reference(unscaled=True)),
        (exercises.check_lora_trainable_count, count, count * 2),  # counting A or B twice
        (exercises.check_adapter_bytes, size, size // 4),  # numbers instead of bytes
    ]
    for check, right, wrong in cases:
        check(right)
        assert capsys.readouterr().out.startswith(exercises.CORRECT), check.__name__
        check(wrong)
        out = capsys.readouterr().out
        assert out.startswith(exercises.WRONG) and "Hint:" in out, check.__name__
        check(None)
        assert capsys.readouterr().out.startswith(exercises.NOT_DONE), check.__name__


def test_notebook_solutions_pass_their_checks(capsys):
    nb = nbformat.read(NOTEBOOK_06, as_version=4)
    solutions = [c.source for c in nb.cells if "solution" in c.metadata.get("tags", [])]
    assert len(solutions) == 5
    # Exercises 1-3 stand alone; 4 and 5 train on the notebook's own models, so they run where it runs (nbval).
    for source in solutions[:3]:
        exec(source, {})
        assert capsys.readouterr().out.startswith(exercises.CORRECT), source
