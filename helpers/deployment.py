"""Shipping a model: a release folder, a reload check, and int8 quantization for the CPU.

Introduced in ``10_deployment.ipynb``.

* :func:`export_release` writes ``safetensors`` weights (fp32), the tokenizer, a
  ``generation_config.json``, a model card (``README.md``) filled from the evaluation
  report, and a ``release.json`` manifest with a checksum per file. The folder appears
  all at once: everything is written to a temporary sibling first, then renamed.
* :func:`verify_release` reloads the folder and checks the logits are bit-for-bit the same.
* :func:`quantize_int8` makes a CPU int8 copy with PyTorch's dynamic quantization.
  GPT-2's projections are transformers' ``Conv1D`` (``y = x @ W + b`` with ``W`` of shape
  ``(in, out)``), which ``quantize_dynamic`` does not know, so :func:`conv1d_to_linear`
  first turns them into equivalent ``nn.Linear`` layers and :func:`compare_logits` proves
  the conversion changed nothing.

About the API: torch 2.13 still ships ``torch.ao.quantization.quantize_dynamic`` (it warns
that eager-mode quantization is moving to the separate ``torchao`` package). We use it
because it needs no extra install and is what a laptop or Colab already has; the warnings
are silenced inside :func:`quantize_int8` only.

About the tied head: GPT-2's output layer ``lm_head`` shares its weight with the token
embedding ``wte`` (50,257 x n_embd, 31 % of GPT-2 small and over 80 % of the tiny base).
Quantizing only the blocks leaves that matrix in fp32; quantizing ``lm_head`` alone
*unties* it and stores the matrix twice (fp32 for the lookup + int8 for the head), which
is larger than not quantizing it at all. So by default the head is quantized and the
embedding lookup reads its rows from the same int8 matrix (:class:`TiedInt8Embedding`):
the shared matrix is stored once, in int8, and the tie survives. The measured effect on
size is printed by ``bench/bench_quantization.py``.
"""

from __future__ import annotations

import copy
import io
import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from helpers.atomic import build_folder, sha256_file
from helpers.cards import MANIFEST_FILE, WEIGHTS_FILE, model_card
from helpers.evaluation import weights_sha256
from helpers.runtime import eval_mode

DEFAULT_PROMPTS = (
    "To be, or not to be,",
    "Now is the winter of our discontent",
    "My lord, the queen",
    "Friends, Romans, countrymen, lend me your ears;",
)
CARD_FILE = "README.md"
REQUIRED_FILES = ("config.json", WEIGHTS_FILE, "generation_config.json", "tokenizer_config.json", CARD_FILE)


# --------------------------------------------------------------------------- release


def export_release(
    model: nn.Module,
    tokenizer,
    out_dir: str | os.PathLike,
    eval_report: Mapping | None = None,
    training_info: Mapping | None = None,
    generation: Mapping | None = None,
) -> Path:
    """Write a release folder (weights, tokenizer, generation config, model card, manifest).

    Introduced in ``10_deployment.ipynb``. Weights are saved as fp32 ``safetensors``
    whatever the model's dtype. ``eval_report`` (07's ``report.json``) and
    ``training_info`` (05's run summary) fill the model card; any key may be missing, except
    that a report must name the weights it evaluated (``model_sha256``, 07 writes it) and they
    must be ``model``'s: a report computed on other weights raises :class:`ReportMismatchError`,
    so a card never carries another run's numbers. The manifest records that checksum.
    ``generation`` holds recommended decoding settings (e.g. ``{"do_sample": True,
    "top_p": 0.95}``) written into ``generation_config.json``.

    Atomic: the folder is built under a temporary name beside ``out_dir`` and renamed into
    place, so a crash mid-way leaves the previous release untouched. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    _check_exportable(model, out_dir)
    check_report_matches(eval_report, model)
    with build_folder(out_dir) as staging:
        fp32 = model if all(p.dtype == torch.float32 for p in model.parameters()) else copy.deepcopy(model).float()
        fp32.save_pretrained(staging)
        if not (staging / WEIGHTS_FILE).is_file():
            raise RuntimeError(f"save_pretrained did not write {WEIGHTS_FILE}; is this a transformers model?")
        with_chat_template(tokenizer).save_pretrained(staging)
        _release_generation_config(model, tokenizer, generation).save_pretrained(staging)
        (staging / CARD_FILE).write_text(
            model_card(model, eval_report, training_info, name=out_dir.name), encoding="utf-8"
        )
        _write_manifest(staging, out_dir.name, eval_report, training_info)
    return out_dir


class ReportMismatchError(ValueError):
    """An evaluation report that was not computed on the weights being released."""


def check_report_matches(eval_report: Mapping | None, model: nn.Module) -> None:
    """Raise :class:`ReportMismatchError` unless ``eval_report`` was computed on ``model``'s weights.

    Introduced in ``10_deployment.ipynb`` (through :func:`export_release`). No report passes:
    the card then says "Not reported".
    """
    if eval_report is None:
        return
    recorded = eval_report.get("model_sha256")
    if not isinstance(recorded, str):
        raise ReportMismatchError(
            "the evaluation report does not say which weights it evaluated (no 'model_sha256'); rerun "
            "07_evaluation.ipynb on this model, or export without eval_report"
        )
    actual = weights_sha256(model)
    if recorded != actual:
        mode = (eval_report.get("settings") or {}).get("mode", "unknown")
        raise ReportMismatchError(
            f"the evaluation report was computed on other weights (sha256 {recorded[:12]}…, {mode} mode) than "
            f"the model being released ({actual[:12]}…); rerun 07_evaluation.ipynb on this model, or export "
            "without eval_report"
        )


def _check_exportable(model: nn.Module, out_dir: Path) -> None:
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"export_release needs a transformers model (with save_pretrained), got {type(model).__name__}")
    if any(not p.is_floating_point() for p in model.parameters()) or _has_quantized_modules(model):
        raise TypeError(
            "export_release writes the fp32 release; pass the original model, not the int8 copy "
            "(rebuild the int8 model from the release with quantize_int8)"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another out_dir")


def _has_quantized_modules(model: nn.Module) -> bool:
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


def _release_generation_config(model: nn.Module, tokenizer, generation: Mapping | None):
    from transformers import GenerationConfig

    config = copy.deepcopy(getattr(model, "generation_config", None) or GenerationConfig())
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for key, value in (generation or {}).items():
        if not hasattr(config, key):
            raise ValueError(f"generation setting {key!r} is not a GenerationConfig field")
        setattr(config, key, value)
    config.validate()
    return config


def _write_manifest(folder: Path, name: str, eval_report: Mapping | None, training_info: Mapping | None) -> None:
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(folder.iterdir()) if p.is_file()
    }
    manifest = {
        "name": name,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": files,
        "evaluated_weights_sha256": (eval_report or {}).get("model_sha256"),
        "eval_report": eval_report,
        "training_info": training_info,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The ``release.json`` of the release in ``folder``, or ``None`` when it is missing or unreadable."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def manifest_mode(manifest: Mapping | None) -> str | None:
    """The course mode a release was made in (its manifest's ``training_info``), or ``None``. 09 and
    10 rebuild a release made in another mode, so a smoke-mode model never stands in for a cpu-mode one."""
    info = manifest.get("training_info") if manifest else None
    return info.get("mode") if isinstance(info, dict) else None


def verify_release(
    model: nn.Module, release_dir: str | os.PathLike, tokenizer, prompts: Sequence[str] = DEFAULT_PROMPTS
) -> dict:
    """Reload a release and compare it with the model that was exported.

    Introduced in ``10_deployment.ipynb``. Checks that the required files are there, that
    the reloaded tokenizer gives the same ids, and that the reloaded model's logits equal
    the original's exactly (``torch.equal``) on each prompt. Returns ``{"ok", "prompts",
    "missing_files", "tokenizer_equal", "logits_equal", "max_abs_diff"}``. Exact equality
    holds for an fp32 model; for a bf16/fp16 one the release is its fp32 upcast, so
    compare with ``max_abs_diff`` instead.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    release_dir = Path(release_dir)
    if not (release_dir / "config.json").is_file():
        raise FileNotFoundError(f"{release_dir} is not a release folder (no config.json); write it with export_release")
    missing = [name for name in REQUIRED_FILES if not (release_dir / name).is_file()]
    device = next(model.parameters()).device
    reloaded = AutoModelForCausalLM.from_pretrained(release_dir, dtype=torch.float32).to(device).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(release_dir)
    tokenizer_equal, logits_equal, max_diff = True, True, 0.0
    with eval_mode(model), torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
            tokenizer_equal &= reloaded_tokenizer(prompt).input_ids == ids[0].tolist()
            original = model(ids).logits
            again = reloaded(ids).logits
            logits_equal &= original.dtype == again.dtype and torch.equal(original, again)
            max_diff = max(max_diff, (original.float() - again.float()).abs().max().item())
    return {
        "ok": bool(not missing and tokenizer_equal and logits_equal),
        "prompts": len(prompts),
        "missing_files": missing,
        "tokenizer_equal": bool(tokenizer_equal),
        "logits_equal": bool(logits_equal),
        "max_abs_diff": max_diff,
    }


# --------------------------------------------------------------------------- int8


def conv1d_to_linear(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every transformers ``Conv1D`` is an equivalent ``nn.Linear``.

    Introduced in ``10_deployment.ipynb``. ``Conv1D`` computes ``x @ W + b`` with ``W`` of
    shape ``(in, out)``; ``nn.Linear`` computes ``x @ W.T + b`` with ``W`` of shape
    ``(out, in)``. So the weight is transposed, the bias copied. The original is untouched.
    """
    from transformers.pytorch_utils import Conv1D

    converted = copy.deepcopy(model)
    for parent in list(converted.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                weight = child.weight
                linear = torch.nn.utils.skip_init(
                    nn.Linear, child.nx, child.nf, bias=True, device=weight.device, dtype=weight.dtype
                )
                with torch.no_grad():
                    linear.weight.copy_(weight.t())
                    linear.bias.copy_(child.bias)
                linear.weight.requires_grad_(weight.requires_grad)
                linear.bias.requires_grad_(child.bias.requires_grad)
                setattr(parent, child_name, linear)
    return converted


@torch.no_grad()
def compare_logits(
    reference: nn.Module, candidate: nn.Module, input_ids: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5
) -> dict:
    """How close ``candidate``'s logits are to ``reference``'s on ``input_ids``.

    Introduced in ``10_deployment.ipynb``. Returns ``{"max_abs_diff", "allclose",
    "top1_agreement"}``: ``allclose`` uses ``torch.allclose(rtol, atol)`` (the tight default
    proves a lossless rewrite such as :func:`conv1d_to_linear`); ``top1_agreement`` is the
    share of positions whose most likely next token is the same (what quantization keeps).
    """
    input_ids = torch.as_tensor(input_ids, dtype=torch.long)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    outputs = []
    for model in (reference, candidate):
        with eval_mode(model):
            device = next(model.parameters()).device
            outputs.append(model(input_ids.to(device)).logits.float().cpu())
    ref, cand = outputs
    if ref.shape != cand.shape:
        raise ValueError(f"the models give logits of different shapes: {tuple(ref.shape)} vs {tuple(cand.shape)}")
    return {
        "max_abs_diff": (ref - cand).abs().max().item(),
        "allclose": bool(torch.allclose(ref, cand, rtol=rtol, atol=atol)),
        "top1_agreement": (ref.argmax(-1) == cand.argmax(-1)).float().mean().item(),
    }


def probe_ids(model: nn.Module, length: int = 32, seed: int = 0) -> torch.Tensor:
    """A fixed batch of random token ids that fits ``model``'s vocabulary and context."""
    config = model.config
    length = min(length, config.n_positions)
    return torch.randint(config.vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))


class TiedInt8Embedding(nn.Module):
    """Token embedding that looks its rows up in the int8 weight of the (tied) quantized ``lm_head``.

    Introduced in ``10_deployment.ipynb`` (see the module docstring for why). Holds no
    state of its own in ``state_dict``: the int8 matrix is saved once, with the head. At
    run time it keeps an unpacked copy of the int8 rows and their scales (1 byte per
    weight instead of fp32's 4), because unpacking on every forward pass would cost more
    than the lookup.
    """

    def __init__(self, quantized_head: nn.Module):
        super().__init__()
        weight = quantized_head.weight()  # int8 (qint8), one scale per output row = per token
        if weight.qscheme() not in (torch.per_channel_affine, torch.per_channel_symmetric):
            raise ValueError(f"expected a per-channel quantized head, got {weight.qscheme()}")
        self.num_embeddings, self.embedding_dim = weight.shape
        self.register_buffer("rows", weight.int_repr(), persistent=False)
        self.register_buffer("scales", weight.q_per_channel_scales().float(), persistent=False)
        self.register_buffer("zero_points", weight.q_per_channel_zero_points().float(), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = self.rows[input_ids].float()
        return (rows - self.zero_points[input_ids, None]) * self.scales[input_ids, None]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, dtype=int8 (shared with lm_head)"


def quantize_int8(model: nn.Module, quantize_embeddings: bool = True, check: bool = True) -> nn.Module:
    """An int8 copy of ``model`` for the CPU (dynamic quantization of every linear layer).

    Introduced in ``10_deployment.ipynb``. Steps: :func:`conv1d_to_linear` on a CPU fp32
    copy; with ``check``, :func:`compare_logits` must find the rewrite lossless (else a
    ``RuntimeError``); then ``torch.ao.quantization.quantize_dynamic`` with per-channel
    int8 weights (activations are quantized on the fly, per batch). With
    ``quantize_embeddings`` the tied ``lm_head`` is quantized too and the embedding reads
    from it (:class:`TiedInt8Embedding`); without it, ``lm_head`` and ``wte`` stay one fp32
    matrix. The original model is untouched. The result runs on the CPU only.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if _has_quantized_modules(model):
        raise TypeError("the model is already quantized; pass the fp32 model")
    on_cpu_fp32 = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    source = model if on_cpu_fp32 else copy.deepcopy(model).cpu().float()
    linear = conv1d_to_linear(source).eval()
    if check:
        result = compare_logits(source, linear, probe_ids(linear))
        if not result["allclose"]:
            raise RuntimeError(
                f"Conv1D -> Linear changed the logits (max abs diff {result['max_abs_diff']:.3g}); not quantizing"
            )
    head, embedding = linear.get_output_embeddings(), linear.get_input_embeddings()
    tied = head is not None and embedding is not None and head.weight is embedding.weight
    head_name = next((n for n, m in linear.named_modules() if m is head), None)
    names = {
        name for name, module in linear.named_modules()
        if isinstance(module, nn.Linear) and (quantize_embeddings or name != head_name)
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.ao")
        quantize_dynamic(linear, {name: per_channel_dynamic_qconfig for name in names}, inplace=True)
    if quantize_embeddings and tied:
        linear.set_input_embeddings(TiedInt8Embedding(linear.get_output_embeddings()))
    return linear


# --------------------------------------------------------------------------- measuring


def model_size_bytes(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())`` in bytes: what shipping the weights costs.

    Introduced in ``10_deployment.ipynb``. A tied matrix is counted once (``torch.save``
    stores a shared tensor once); int8 layers count their packed weights and scales.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        torch.save(model.state_dict(), buffer)
    return buffer.tell()


@torch.no_grad()
def measure_generation(model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int) -> float:
    """Greedy generation speed in new tokens per second, over ``prompts`` one at a time.

    Introduced in ``10_deployment.ipynb``. Each prompt generates exactly ``max_new_tokens``
    (end-of-text is suppressed until then) after one short warm-up call. Timings depend on
    the machine and on what else runs: compare variants in the same run.
    """
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = next(model.parameters()).device

    def generate(prompt: str, num_tokens: int) -> int:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=num_tokens, min_new_tokens=num_tokens,
            do_sample=False, pad_token_id=tokenizer.eos_token_id,
        )
        return out.shape[1] - ids.shape[1]

    with eval_mode(model):
        generate(prompts[0], 2)
        tokens, start = 0, time.perf_counter()
        for prompt in prompts:
            tokens += generate(prompt, max_new_tokens)
        elapsed = time.perf_counter() - start
    return tokens / elapsed


# --------------------------------------------------------------------------- chat template

# How chat messages become one prompt for a base model (notebook 10), the way vLLM serves base
# models with ``--chat-template``: a play script, each turn under its speaker's name in capitals,
# ending with the heading the model should continue. ``export_release`` stores it with the tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}.\n{{ message['content'] | trim }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT.\n{% endif %}"
)


def with_chat_template(tokenizer):
    """``tokenizer`` itself when it has a chat template, else a shallow copy carrying :data:`CHAT_TEMPLATE`.

    Introduced in ``10_deployment.ipynb``; the caller's tokenizer is never changed.
    """
    if tokenizer.chat_template:
        return tokenizer
    templated = copy.copy(tokenizer)
    templated.chat_template = CHAT_TEMPLATE
    return templated
