"""What the service serves: a release folder loaded as a causal LM or a sequence classifier.

Introduced in ``10_deployment.ipynb``. :func:`helpers.serving.app.build_app` calls
:func:`load_for_serving`, then builds the engine (or classifier) and the app around what it loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from helpers.deployment import quantize_int8
from helpers.lora import check_adapter_folder, merge_adapter
from helpers.runtime import pick_device


def is_classifier(model_dir: str | os.PathLike) -> bool:
    """True when the folder's ``config.json`` names a ``...ForSequenceClassification`` architecture.

    Introduced in ``10_deployment.ipynb``: ``python -m helpers.serving`` serves ``/v1/classify``
    for such a folder, completions and chat for any other.
    """
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return any(name.endswith("ForSequenceClassification") for name in config.get("architectures") or [])


@dataclass
class LoadedModel:
    """What the service serves: the model, its tokenizer, and the name clients pass as ``model``."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str
    parent: str | None = None  # with an adapter: the base's name (``/v1/models`` says it, as vLLM does)
    classifier: bool = False  # a sequence classifier (``/v1/classify``), not a causal LM (completions, chat)


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("tokenizer.json", "vocab.json", "tokenizer_config.json"))


def load_for_serving(model_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
                     device: str | torch.device | None = None, int8: bool = False,
                     chat_template: str | None = None, model_id: str | None = None,
                     adapter_dir: str | os.PathLike | None = None) -> LoadedModel:
    """Load a release folder for serving, with clear errors. Introduced in ``10_deployment.ipynb``.

    A causal LM, or a sequence classifier (08's sentiment release) when its config says so
    (:func:`is_classifier`). ``int8`` serves :func:`helpers.deployment.quantize_int8`'s
    CPU copy; ``chat_template`` (a Jinja file, or the template itself) replaces the release's own,
    as vLLM's ``--chat-template`` does; ``model_id`` defaults to the folder's name. ``adapter_dir``
    (11): a LoRA adapter merged into the model at load (:func:`helpers.lora.merge_adapter`), so it
    is served at the base's speed; the adapter's folder then names the model and gives the tokenizer.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder (no config.json); pass a release written by "
                                "helpers.deployment.export_release")
    adapter = check_adapter_folder(adapter_dir) if adapter_dir is not None else None
    if tokenizer_dir:
        tokenizer_dir = Path(tokenizer_dir)
    else:
        tokenizer_dir = adapter if adapter is not None and _has_tokenizer(adapter) else model_dir
    if not _has_tokenizer(tokenizer_dir):
        raise FileNotFoundError(f"no tokenizer files in {tokenizer_dir}; export the model with export_release (it "
                                "saves the tokenizer) or pass --tokenizer DIR")
    if int8 and device is not None and torch.device(device).type != "cpu":
        raise ValueError("int8 dynamic quantization runs on the CPU only; drop the device or int8")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if chat_template is not None:
        tokenizer.chat_template = _read_template(chat_template)
    classifier = is_classifier(model_dir)
    if classifier and adapter is not None:
        raise ValueError(f"{model_dir} is a sequence classifier; --adapter merges LoRA adapters into causal LMs only")
    auto = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter is not None:
        model = merge_adapter(model, adapter)
    model = quantize_int8(model) if int8 else model.to(pick_device(str(device) if device is not None else None))
    if adapter is None:
        return LoadedModel(model, tokenizer, model_id or model_dir.resolve().name, classifier=classifier)
    return LoadedModel(model, tokenizer, model_id or adapter.resolve().name, parent=model_dir.resolve().name)


def _read_template(value: str) -> str:
    path = Path(value)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if "{" not in value:
        raise FileNotFoundError(f"chat template {value!r} is neither a file nor a Jinja template; pass a .jinja file")
    return value
