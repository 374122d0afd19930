"""models: the real GPT-2 tokenizer offline, the shipped tiny base, and the resolution order."""

from __future__ import annotations

import copy
import dataclasses
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


def test_fit_block_size_crops_blocks_to_a_shorter_context(random_gpt2):
    """gpu mode asks for 512-token blocks; a model with 256 positions (the tiny base) gets 256, with a warning."""
    from transformers import GPT2Config

    gpu = make_settings("gpu")
    with pytest.warns(UserWarning, match="only 256 positions"):
        fitted = models.fit_block_size(gpu, GPT2Config(n_positions=256))
    assert fitted.block_size == 256 and fitted == dataclasses.replace(gpu, block_size=256)
    model = random_gpt2(n_positions=128)
    with pytest.warns(UserWarning):
        assert models.fit_block_size(gpu, model).block_size == 128  # a model is read through its config


def test_fit_block_size_keeps_blocks_that_fit():
    from transformers import GPT2Config

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for mode in ("smoke", "cpu", "gpu"):
            settings = make_settings(mode)
            assert models.fit_block_size(settings, GPT2Config(n_positions=1024)) is settings


# --- load_pretrained: the one way a saved folder is loaded --------------------------------------


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory, tokenizer, random_gpt2):
    """What save_pretrained writes for a tiny random GPT-2, with its tokenizer beside it."""
    folder = tmp_path_factory.mktemp("saved")
    random_gpt2().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_load_pretrained_gives_transformers_model_and_the_saved_tokenizer(saved_folder, tokenizer):
    from transformers import AutoModelForCausalLM

    model, loaded_tokenizer = models.load_pretrained(saved_folder)
    reference = AutoModelForCausalLM.from_pretrained(saved_folder).eval()  # transformers' own loading, gelu_new
    ids = torch.tensor([tokenizer("To be, or not to be").input_ids])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5)
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert loaded_tokenizer("To be, or not to be").input_ids == tokenizer("To be, or not to be").input_ids


def test_load_pretrained_builds_the_class_the_config_names(tmp_path, tokenizer):
    """08's classifier and every causal LM come through the same call."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, num_labels=3, pad_token_id=50256)
                                  ).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, _ = models.load_pretrained(tmp_path)
    assert isinstance(model, GPT2ForSequenceClassification) and model.config.num_labels == 3


def test_load_pretrained_names_what_is_missing(tmp_path, random_gpt2):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.load_pretrained(tmp_path)
    random_gpt2().save_pretrained(tmp_path)  # weights, but no tokenizer beside them
    with pytest.raises(FileNotFoundError, match=f"no tokenizer files .* in {tmp_path}"):
        models.load_pretrained(tmp_path)
    with pytest.raises(ValueError, match="int8 .* CPU only"):
        models.load_pretrained(tmp_path, device="cuda", int8=True)


def test_load_pretrained_int8_serves_the_quantized_copy(saved_folder):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    model, _ = models.load_pretrained(saved_folder, int8=True)
    assert any(isinstance(m, DynamicInt8Linear) for m in model.modules())
