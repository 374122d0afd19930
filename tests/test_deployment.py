"""deployment: release folder, reload check, model card, Conv1D -> Linear, int8 quantization.

References nobody here wrote: transformers' own ``from_pretrained`` for the reload,
``safetensors`` for the stored dtype, ``torch.addmm`` (Conv1D's own formula) for the rewrite.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.pytorch_utils import Conv1D

from helpers import deployment
from helpers.deployment import (
    ReportMismatchError,
    compare_logits,
    conv1d_to_linear,
    export_release,
    measure_generation,
    model_card,
    model_size_bytes,
    probe_ids,
    quantize_int8,
    verify_release,
)
from helpers.evaluation import perplexity, weights_sha256

REPORT = {
    "perplexity": {"test": {"before": 812.3456, "after": 95.43211}},
    "bootstrap_ci_after": [90.125, 101.25],
    "test_tokens": 1234567,
    "samples": ["To be, or not to be:\nthat is the question."],
    "limitations": ["Trained on plays only: archaic English."],
}
TRAINING = {"base_model": "tiny-gpt2-base", "data": {"name": "Shakespeare", "train_tokens": 1_400_000},
            "num_steps": 300, "lr": 0.001, "batch_size": 8}


@pytest.fixture(scope="module")
def model(random_gpt2):
    return random_gpt2(n_positions=128)


def stored_dtypes(release) -> set[str]:
    with safe_open(release / "model.safetensors", framework="pt") as f:
        return {f.get_slice(name).get_dtype() for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


# --------------------------------------------------------------------------- release


def report_for(model, report=REPORT):
    """A report that names the weights it evaluated, as 07's does."""
    return {**report, "model_sha256": weights_sha256(model)}


def test_export_then_reload_gives_exactly_the_same_logits(model, tokenizer, tmp_path):
    release = export_release(model, tokenizer, tmp_path / "release", report_for(model), TRAINING)
    names = {p.name for p in release.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md", "release.json",
            "tokenizer_config.json"} <= names
    assert {"tokenizer.json", "vocab.json"} & names
    assert stored_dtypes(release) == {"F32"}
    reloaded = AutoModelForCausalLM.from_pretrained(release).eval()
    ids = probe_ids(model)
    assert torch.equal(logits(model, ids), logits(reloaded, ids))
    assert AutoTokenizer.from_pretrained(release)("Hello world").input_ids == [15496, 995]
    report = verify_release(model, release, tokenizer)
    assert report["ok"] and report["logits_equal"] and report["tokenizer_equal"]
    assert report["max_abs_diff"] == 0.0 and report["missing_files"] == []


def test_manifest_checksums_match_the_files(model, tokenizer, tmp_path):
    import hashlib

    release = export_release(model, tokenizer, tmp_path / "release")
    manifest = json.loads((release / "release.json").read_text())
    assert manifest["name"] == "release"
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((release / name).read_bytes()).hexdigest() == entry["sha256"], name
    assert "model.safetensors" in manifest["files"]


def test_verify_release_notices_a_changed_model(model, tokenizer, tmp_path):
    release = export_release(model, tokenizer, tmp_path / "release")
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.transformer.h[0].mlp.c_fc.weight[0, 0] += 1e-3
    report = verify_release(changed, release, tokenizer)
    assert not report["ok"] and not report["logits_equal"] and report["max_abs_diff"] > 0


def test_a_bf16_model_is_released_in_fp32(model, tokenizer, tmp_path):
    release = export_release(copy.deepcopy(model).to(torch.bfloat16), tokenizer, tmp_path / "release")
    assert stored_dtypes(release) == {"F32"}


def test_generation_settings_are_written(model, tokenizer, tmp_path):
    release = export_release(model, tokenizer, tmp_path / "release", generation={"do_sample": True, "top_p": 0.9})
    config = json.loads((release / "generation_config.json").read_text())
    assert config["do_sample"] is True and config["top_p"] == 0.9 and config["pad_token_id"] == 50256
    with pytest.raises(ValueError, match="not a GenerationConfig field"):
        export_release(model, tokenizer, tmp_path / "other", generation={"top_q": 1})


def test_model_card_renders_the_report(model, tokenizer, tmp_path):
    release = export_release(model, tokenizer, tmp_path / "release", report_for(model), TRAINING)
    card = (release / "README.md").read_text()
    assert card.startswith("---\nlicense: mit")
    for section in ("## Intended use", "## Training data", "## Training procedure", "## Evaluation",
                    "## Limitations and risks", "## How to use"):
        assert section in card
    for fragment in ("| perplexity.test.after | 95.43 |", "| perplexity.test.before | 812.3 |",
                     "| bootstrap_ci_after | [90.12, 101.2] |", "| test_tokens | 1,234,567 |",
                     "- train_tokens: 1,400,000", "| lr | 0.001 |", "| num_steps | 300 |", "`tiny-gpt2-base`",
                     "- Trained on plays only: archaic English.", "> To be, or not to be: that is the question.",
                     "at most 128 tokens", f"| parameters | {sum(p.numel() for p in model.parameters()):,} |"):
        assert fragment in card, fragment


def test_the_manifest_records_the_evaluated_weights_and_another_models_report_is_refused(model, tokenizer, tmp_path):
    release = export_release(model, tokenizer, tmp_path / "release", report_for(model), TRAINING)
    manifest = json.loads((release / "release.json").read_text())
    assert manifest["evaluated_weights_sha256"] == weights_sha256(model)
    reloaded = AutoModelForCausalLM.from_pretrained(release)  # the same weights, reloaded: the same checksum
    assert weights_sha256(reloaded) == weights_sha256(model)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.transformer.h[0].mlp.c_fc.weight[0, 0] += 1e-3
    smoke_report = {**report_for(model), "settings": {"mode": "smoke"}}
    with pytest.raises(ReportMismatchError, match=r"computed on other weights .*smoke mode"):
        export_release(other, tokenizer, tmp_path / "other", smoke_report, TRAINING)
    with pytest.raises(ReportMismatchError, match="does not say which weights"):
        export_release(model, tokenizer, tmp_path / "other", REPORT, TRAINING)
    assert not (tmp_path / "other").exists()  # refused before anything is written


def test_model_card_without_reports_says_not_reported(model):
    card = model_card(model, None, {"lr": float("nan"), "notes": None}, name="bare")
    assert card.count("Not reported.") == 2  # training data, evaluation
    assert "| lr | nan |" in card


def test_export_is_atomic(model, tokenizer, tmp_path, monkeypatch):
    out = tmp_path / "release"
    export_release(model, tokenizer, out, report_for(model, {"perplexity": 100.0}))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_card(*args, **kwargs):
        raise RuntimeError("disk full while writing the card")

    monkeypatch.setattr(deployment, "model_card", broken_card)
    with pytest.raises(RuntimeError, match="disk full"):
        export_release(model, tokenizer, out, report_for(model, {"perplexity": 50.0}))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old release, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["release"]  # no half-written folder left behind
    monkeypatch.undo()
    export_release(model, tokenizer, out, report_for(model, {"perplexity": 50.0}))
    assert "| perplexity | 50 |" in (out / "README.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["release"]


def test_export_refuses_what_it_cannot_release(model, tokenizer, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        export_release(model, tokenizer, tmp_path / "file")
    with pytest.raises(TypeError, match="not the int8 copy"):
        export_release(quantize_int8(model), tokenizer, tmp_path / "int8")
    with pytest.raises(FileNotFoundError, match="not a release folder"):
        verify_release(model, tmp_path / "nowhere", tokenizer)


# --------------------------------------------------------------------------- Conv1D -> Linear


def test_conv1d_to_linear_is_the_same_function(model):
    converted = conv1d_to_linear(model)
    assert not any(isinstance(m, Conv1D) for m in converted.modules())
    assert sum(isinstance(m, Conv1D) for m in model.modules()) == 4 * 2  # the original is untouched
    assert sum(isinstance(m, nn.Linear) for m in converted.modules()) == 4 * 2 + 1  # + lm_head
    result = compare_logits(model, converted, probe_ids(model))
    assert result["allclose"] and result["max_abs_diff"] <= 1e-5 and result["top1_agreement"] == 1.0
    # One layer against Conv1D's own formula, y = x @ W + b with W of shape (in, out):
    conv, linear = model.transformer.h[0].mlp.c_fc, converted.transformer.h[0].mlp.c_fc
    x = torch.randn(3, 5, conv.nx)
    expected = torch.addmm(conv.bias, x.view(-1, conv.nx), conv.weight).view(3, 5, conv.nf)
    torch.testing.assert_close(linear(x), expected, rtol=1e-6, atol=1e-6)
    assert linear.weight.shape == (conv.nf, conv.nx)


def test_compare_logits_notices_a_difference(model):
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.transformer.ln_f.bias += 0.01
    result = compare_logits(model, other, probe_ids(model))
    assert not result["allclose"] and result["max_abs_diff"] > 1e-4


# --------------------------------------------------------------------------- int8


def test_int8_is_smaller_and_stays_close(model):
    int8 = quantize_int8(model)
    assert model_size_bytes(int8) < 0.6 * model_size_bytes(model)
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert sum(isinstance(m, dynamic) for m in int8.modules()) == 4 * 2 + 1
    assert isinstance(int8.transformer.wte, deployment.TiedInt8Embedding)
    result = compare_logits(model, int8, probe_ids(model, length=64))
    assert result["top1_agreement"] >= 0.85
    assert result["max_abs_diff"] < 0.1 * logits(model, probe_ids(model)).abs().max().item()
    assert any(isinstance(m, Conv1D) for m in model.modules())  # the fp32 model is untouched


def test_int8_embedding_reads_the_quantized_head(model):
    int8 = quantize_int8(model)
    ids = torch.tensor([[0, 1, 50256, 12345]])
    head_rows = int8.lm_head.weight().dequantize()[ids]  # what the head multiplies with
    torch.testing.assert_close(int8.transformer.wte(ids), head_rows, rtol=0, atol=1e-7)
    assert int8.transformer.wte.state_dict() == {}  # stored once, with the head
    # int8 rows differ from fp32 rows by at most half a quantization step
    step = int8.lm_head.weight().q_per_channel_scales().float()[ids]
    assert ((head_rows - model.transformer.wte(ids)).abs() <= step[..., None] / 2 + 1e-7).all()


def test_keeping_the_tied_matrix_in_fp32_is_an_option(model):
    kept = quantize_int8(model, quantize_embeddings=False)
    assert isinstance(kept.lm_head, nn.Linear) and kept.lm_head.weight is kept.transformer.wte.weight
    assert model_size_bytes(quantize_int8(model)) < model_size_bytes(kept) < model_size_bytes(model)


def test_quantize_refuses_a_lossy_conversion(model, monkeypatch):
    real = deployment.conv1d_to_linear

    def sloppy(m):
        converted = real(m)
        with torch.no_grad():
            converted.transformer.h[0].attn.c_attn.weight.mul_(1.01)
        return converted

    monkeypatch.setattr(deployment, "conv1d_to_linear", sloppy)
    with pytest.raises(RuntimeError, match="changed the logits"):
        quantize_int8(model)


def test_model_size_counts_a_tied_matrix_once(model):
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())  # parameters() lists a tied weight once
    size = model_size_bytes(model)
    assert fp32_bytes <= size < fp32_bytes * 1.02 + 100_000


def test_int8_is_smaller_and_scores_like_fp32(model, tokenizer):
    eval_ids = torch.randint(50257, (300,), generator=torch.Generator().manual_seed(1))
    int8 = quantize_int8(model)
    assert model_size_bytes(int8) < model_size_bytes(model)
    assert measure_generation(int8, tokenizer, ["To be"], max_new_tokens=4) > 0
    fp32_ppl, int8_ppl = (perplexity(m, eval_ids, context_len=64) for m in (model, int8))
    assert math.isfinite(int8_ppl) and abs(int8_ppl / fp32_ppl - 1) < 0.05
