"""models: the real GPT-2 tokenizer offline, the shipped tiny base, and the resolution order."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

from helpers import models
from helpers.settings import make_settings


@pytest.fixture(scope="module")
def tokenizer():
    """Through the course's own loading path (not conftest's tokenizer): that path is under test here."""
    return models.load_tokenizer(models.resolve_model_source(make_settings("smoke")))


def test_tokenizer_gives_gpt2_published_ids(tokenizer):
    assert len(tokenizer) == 50257
    assert tokenizer("Hello world").input_ids == [15496, 995]
    assert tokenizer("<|endoftext|>").input_ids == [50256]
    assert tokenizer.eos_token_id == 50256


def test_tokenizer_round_trips_the_whole_corpus(tokenizer):
    raw = make_settings("smoke").data_dir / "raw"
    files = sorted(raw.glob("*/*.txt"))
    assert len(files) >= 40
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert tokenizer.decode(tokenizer(text).input_ids) == text, path.name


def test_tiny_base_is_the_default_outside_gpu_mode():
    for mode in ("smoke", "cpu"):
        source = models.resolve_model_source(make_settings(mode), course_model="")
        assert source.kind == "tiny base"
        assert source.location.endswith("tiny-gpt2-base")
        assert source.fallback_from is None


def test_course_model_folder_wins(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    source = models.resolve_model_source(make_settings("gpu"), course_model=str(tmp_path))
    assert source.kind == "COURSE_MODEL folder" and source.location == str(tmp_path.resolve())


def test_course_model_hub_id_is_taken_as_is():
    source = models.resolve_model_source(make_settings("cpu"), course_model="openai-community/gpt2")
    assert source.kind == "COURSE_MODEL hub id" and source.location == "openai-community/gpt2"


def test_missing_course_model_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(FileNotFoundError) as info:
        models.resolve_model_source(make_settings("cpu"), course_model=str(missing))
    message = str(info.value)
    assert str(missing) in message and "hub id" in message and "tiny base" in message


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.resolve_model_source(make_settings("cpu"), course_model=str(tmp_path))


def test_gpu_mode_without_hub_falls_back_visibly(monkeypatch):
    monkeypatch.setattr(models, "hub_has_cached", lambda model_id: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = models.resolve_model_source(make_settings("gpu"), course_model="")
    assert source.kind == "tiny base" and source.fallback_from == "gpt2"
    with pytest.warns(UserWarning, match="tiny GPT-2 base"):
        models._warn_fallback(source)


def test_gpu_mode_uses_the_cached_hub_model(monkeypatch):
    monkeypatch.setattr(models, "hub_has_cached", lambda model_id: True)
    source = models.resolve_model_source(make_settings("gpu"), course_model="")
    assert source.kind == "hub" and source.location == "gpt2"


def test_tiny_base_card_and_size():
    folder = models.tiny_base_dir(make_settings("smoke"))
    assert (folder / "README.md").is_file(), "the tiny base carries a model card"
    weights = folder / "model.safetensors"
    assert weights.stat().st_size < 16 * 2**20
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] == 50257 and config["model_type"] == "gpt2"


def test_every_data_file_is_small():
    data = make_settings("smoke").data_dir
    sizes = {p: p.stat().st_size for p in data.rglob("*") if p.is_file()}
    assert max(sizes.values()) < 16 * 2**20
    assert sum(sizes.values()) < 40 * 2**20


@pytest.fixture(scope="module")
def tiny_base():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning in smoke mode
        model, source = models.load_model(models.resolve_model_source(make_settings("smoke"), course_model=""))
    return model.eval()


def test_tiny_base_is_a_real_gpt2_that_generates(tiny_base, tokenizer):
    from transformers import GPT2LMHeadModel

    assert isinstance(tiny_base, GPT2LMHeadModel)
    assert next(tiny_base.parameters()).dtype == torch.float32
    inputs = tokenizer("It is a truth universally acknowledged", return_tensors="pt")
    out = tiny_base.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out.shape == (1, inputs.input_ids.shape[1] + 12)


def test_loaded_model_names_its_loss_so_labels_warn_nothing(tiny_base):
    """transformers finds no loss for the class name GPT2LMHeadModel and warns on stderr; load_model names it."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss

    assert GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16)).loss_type is None  # the cause
    assert tiny_base.loss_type in LOSS_MAPPING and tiny_base.loss_function is ForCausalLMLoss
    assert models.with_causal_lm_loss(tiny_base) is tiny_base


def test_tiny_base_learned_english(tiny_base, tokenizer):
    """Held-out Austen scores far better in order than the same tokens shuffled."""
    from helpers.evaluation import perplexity

    text = (make_settings("smoke").data_dir / "raw" / "austen" / "persuasion.txt").read_text(encoding="utf-8")
    ids = torch.tensor(tokenizer(text[:20_000]).input_ids)
    shuffled = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))]
    context = tiny_base.config.n_positions
    assert perplexity(tiny_base, ids, context) * 3 < perplexity(tiny_base, shuffled, context)


def test_fused_gelu_computes_gpt2s_function(tiny_base, tokenizer):
    """load_model swaps gelu_new for PyTorch's fused tanh GELU; the logits must not change."""
    from transformers import GPT2LMHeadModel

    assert tiny_base.config.activation_function == models.FUSED_GELU
    config = copy.deepcopy(tiny_base.config)
    config.activation_function = models.GPT2_GELU
    original = GPT2LMHeadModel(config).eval()
    original.load_state_dict(tiny_base.state_dict())
    ids = tokenizer("To be, or not to be, that is the question", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(original(ids).logits, tiny_base(ids).logits, atol=1e-4, rtol=1e-5)


def test_fused_gelu_leaves_other_activations_alone():
    from transformers import GPT2Config

    assert models.with_fused_gelu(GPT2Config(activation_function="relu")).activation_function == "relu"
    assert models.with_fused_gelu(GPT2Config()).activation_function == models.FUSED_GELU
