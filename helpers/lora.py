"""LoRA: a frozen GPT-2 plus a small trainable low-rank update, by hand and with ``peft``.

Introduced in ``06_lora.ipynb``, which writes :class:`LoRALayer` and :func:`add_lora` out in its
cells (a test checks the notebook's code is this code). Reused here:

* :class:`LoRALayer` and :func:`add_lora`: the hand-written LoRA (06 also writes ``copy_lora``,
  which moves ``A`` and ``B`` between it and ``peft``'s model);
* :func:`lora_parameter_count` and :func:`adapter_bytes`: what an adapter costs, by formula;
  :func:`wrapped_shapes` reads the shapes it needs from a model;
* :func:`lora_config`: the ``peft.LoraConfig`` of the same adapter;
* :func:`train_lora` and :func:`save_lora`: 06's adapter, saved under
  ``artifacts/models/lora/`` and rebuilt when missing, as :func:`helpers.finetune.load_finetuned`
  does for 05's model;
* :data:`ADAPTER_FILE`, :func:`check_adapter_folder` and :func:`merge_adapter` live in
  ``helpers.models``, beside the one way to load a model, and keep their names here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from helpers.atomic import build_folder
from helpers.data import prepare
from helpers.models import ADAPTER_FILE as ADAPTER_FILE  # these three as before: 06, the tests and the service
from helpers.models import check_adapter_folder as check_adapter_folder
from helpers.models import fit_block_size, load_model, load_tokenizer, resolve_model_source
from helpers.models import merge_adapter as merge_adapter
from helpers.runtime import set_seed
from helpers.settings import Settings, display_path, get_settings
from helpers.training import TrainConfig, TrainResult, train

TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # every projection of a GPT-2 block
DEFAULT_R = 8
DEFAULT_ALPHA = 16  # alpha = 2 r: the update is scaled by alpha / r = 2
LORA_LR_FACTOR = 5  # LoRA's learning rate, in multiples of the mode's full fine-tuning rate (06 explains why)
LORA_DIR = "models/lora"  # under artifacts/
TRAINING_INFO = "training.json"


class LoRALayer(nn.Module):
    """A frozen GPT-2 projection plus a trainable update of rank r: ``base(x) + x Aᵀ Bᵀ · alpha / r``.

    Written out in ``06_lora.ipynb``; a test checks the notebook's class is this one.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float):
        super().__init__()
        d_in, d_out = base.weight.shape  # GPT-2's Conv1D stores W as (in, out) and computes x @ W + b
        self.base = base.requires_grad_(False)  # frozen: no gradient, no optimizer state
        self.A = nn.Parameter(torch.empty(r, d_in))  # down to r numbers per token ...
        self.B = nn.Parameter(torch.zeros(d_out, r))  # ... and back up; zero, so training starts at the base
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # how nn.Linear (and peft) initialise A
        self.scale = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scale


def add_lora(model: nn.Module, r: int, alpha: float, targets: Sequence[str] = TARGETS) -> nn.Module:
    """Freeze ``model`` and wrap each target projection of every block in a :class:`LoRALayer` (in place).

    Written out in ``06_lora.ipynb``; a test checks the notebook's function is this one.
    """
    model.requires_grad_(False)
    for block in model.transformer.h:
        for name in targets:
            parent_name, child_name = name.rsplit(".", 1)
            parent = block.get_submodule(parent_name)
            setattr(parent, child_name, LoRALayer(getattr(parent, child_name), r, alpha))
    return model


def wrapped_shapes(model: nn.Module, targets: Sequence[str] = TARGETS) -> list[tuple[int, int]]:
    """``(d_in, d_out)`` of every projection LoRA wraps in ``model`` (a plain GPT-2), block by block (06)."""
    shapes = []
    for block in model.transformer.h:
        for name in targets:
            try:
                d_in, d_out = block.get_submodule(name).weight.shape
            except (AttributeError, ValueError):
                raise ValueError(f"{name!r} is not a projection of a GPT-2 block; use names such as "
                                 f"{', '.join(TARGETS)}") from None
            shapes.append((d_in, d_out))
    return shapes


def lora_parameter_count(shapes: Sequence[tuple[int, int]], r: int) -> int:
    """Trainable numbers of an adapter of rank ``r``: ``r x (d_in + d_out)`` per wrapped projection.

    The formula ``06_lora.ipynb`` checks against the model; its exercises are checked with it.
    """
    if r < 1:
        raise ValueError(f"the rank r must be a positive whole number, got {r}")
    return sum(r * (d_in + d_out) for d_in, d_out in shapes)


def adapter_bytes(shapes: Sequence[tuple[int, int]], r: int, bytes_per_value: int = 4) -> int:
    """Bytes of an adapter's numbers (fp32 by default); the file adds a small header (06's exercise 3)."""
    return lora_parameter_count(shapes, r) * bytes_per_value


def lora_config(r: int = DEFAULT_R, alpha: float = DEFAULT_ALPHA, targets: Sequence[str] = TARGETS):
    """The ``peft.LoraConfig`` of the adapter :func:`add_lora` builds by hand (no dropout, no biases).

    ``06_lora.ipynb`` writes the same config out and checks the two are equal.
    """
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none",
                      fan_in_fan_out=True)  # fan_in_fan_out: GPT-2's Conv1D stores W transposed


# ---------------------------------------------------------------- 06's adapter, saved and rebuilt


def lora_dir(settings: Settings | None = None) -> Path:
    """``artifacts/models/lora``: where ``06_lora.ipynb`` saves its adapter."""
    return (settings or get_settings()).artifacts_dir / LORA_DIR


def _base_name(location: str, settings: Settings) -> str:
    """How the adapter names its base: a folder relative to the repository, or a hub id."""
    return display_path(location, settings) if Path(location).exists() else location


def save_lora(peft_model, tokenizer, result: TrainResult, config: TrainConfig, base: str,
              settings: Settings | None = None) -> Path:
    """Save the adapter (``save_pretrained``), the tokenizer and ``training.json`` atomically (06).

    The folder holds only the adapter, not the base: ``training.json`` names the base it needs.
    """
    settings = settings or get_settings()
    base_name = _base_name(base, settings)
    peft_model.peft_config["default"].base_model_name_or_path = base_name  # no machine path in the adapter's config
    target = lora_dir(settings)
    lora = peft_model.peft_config["default"]
    info = {"base_model": base_name, "mode": settings.mode, "r": lora.r, "alpha": lora.lora_alpha,
            "targets": sorted(lora.target_modules), "config": asdict(config), "seconds": result.seconds,
            "history": result.history}
    with build_folder(target) as building:
        peft_model.save_pretrained(building, save_embedding_layers=False)  # LoRA never touches the embeddings; no hub check
        tokenizer.save_pretrained(building)
        (building / TRAINING_INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return target


def lora_train_config(settings: Settings | None = None, **overrides) -> TrainConfig:
    """05's training configuration (same steps, batch, schedule) at LoRA's larger learning rate (06)."""
    settings = settings or get_settings()
    return TrainConfig.from_settings(settings, **{"lr": settings.lr * LORA_LR_FACTOR, **overrides})


def train_lora(settings: Settings | None = None, r: int = DEFAULT_R, alpha: float = DEFAULT_ALPHA,
               progress: bool = True) -> Path:
    """Train 06's adapter with ``peft`` on the prepared Shakespeare and save it (06's pipeline, in one call)."""
    from peft import get_peft_model


    settings = settings or get_settings()
    source = resolve_model_source(settings)
    base, _ = load_model(source)
    settings = fit_block_size(settings, base)
    data = prepare(settings=settings, progress=progress)
    set_seed(settings.seed)  # the adapter's initial A
    model = get_peft_model(base, lora_config(r, alpha))
    config = lora_train_config(settings)
    result = train(model, data.dataset("train").blocks, data.dataset("validation").blocks, config, progress=progress)
    return save_lora(result.model, load_tokenizer(source), result, config, source.location, settings)

