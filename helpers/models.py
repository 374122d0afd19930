"""Where the tokenizer and the model come from, in one resolution order, and the one way to load them.

Introduced in ``00_setup.ipynb`` and used by every notebook from 05 on. The base model:

1. ``COURSE_MODEL`` if set: a local folder (with ``config.json``) or a hub id such as ``gpt2``;
2. in ``gpu`` mode, ``gpt2`` from the Hugging Face hub or the local HF cache
   (:func:`prefetch_gpt2` / ``make download`` fills the cache for an offline workshop);
3. otherwise the course's own tiny GPT-2 base shipped in ``data/models/tiny-gpt2-base``.

When the hub cannot be reached in ``gpu`` mode the tiny base is used with a visible
warning, never silently.

Loading: :func:`load_model` and :func:`load_tokenizer` take the base from that order (a folder or a
hub id); :func:`load_pretrained` takes a folder ``save_pretrained`` wrote (05's model, a release, a
registry version), with its tokenizer and optionally a LoRA adapter merged in. Both build the model
in :func:`_from_pretrained`; :func:`tokenizer_folder` is the one check of where a tokenizer is.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from helpers.settings import Settings, display_path, get_settings

TINY_BASE_DIR = "models/tiny-gpt2-base"  # under data/
TOKENIZER_DIR = "tokenizer/gpt2"  # under data/
HUB_GPT2 = "gpt2"
# GPT-2's activation is the tanh approximation of GELU. transformers' "gelu_new" computes it
# with five elementwise operations (and saves their intermediates for backward); PyTorch's
# ``gelu(approximate="tanh")`` is the same formula in one fused kernel.
GPT2_GELU, FUSED_GELU = "gelu_new", "gelu_pytorch_tanh"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # either one: the tokenizer was saved beside the model
ADAPTER_FILE = "adapter_model.safetensors"  # what peft's save_pretrained writes
ADAPTER_CONFIG = "adapter_config.json"


SourceKind = Literal["COURSE_MODEL folder", "COURSE_MODEL hub id", "hub", "tiny base"]


@dataclass(frozen=True)
class ModelSource:
    """Where a model (and its tokenizer) will be loaded from, and why."""

    location: str  # a local folder or a hub id
    kind: SourceKind
    reason: str
    fallback_from: str | None = None  # the hub id we wanted, when we fell back

    @property
    def is_local(self) -> bool:
        return Path(self.location).is_dir()


def tiny_base_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).data_dir / TINY_BASE_DIR


def tokenizer_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).data_dir / TOKENIZER_DIR


def _looks_like_hub_id(value: str) -> bool:
    """``gpt2`` or ``owner/name``: no path separators beyond one slash, no leading dot or tilde."""
    parts = value.split("/")
    return len(parts) <= 2 and all(parts) and not value.startswith((".", "~", "/")) and "\\" not in value


def hub_has_cached(model_id: str) -> bool:
    """True when ``model_id``'s config is in the local Hugging Face cache (no network needed)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model_id, "config.json"), str)


def _hub_reachable(model_id: str) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    from huggingface_hub import model_info

    try:
        model_info(model_id, timeout=5)
    except Exception:  # any network or auth failure means: not reachable from here
        return False
    return True


def resolve_model_source(settings: Settings | None = None, course_model: str | None = None) -> ModelSource:
    """Apply the resolution order and say which source wins and why.

    ``course_model`` defaults to the ``COURSE_MODEL`` environment variable. A value that
    looks like a path but does not exist is a ``FileNotFoundError`` naming the options.
    """
    settings = settings or get_settings()
    if course_model is None:
        course_model = os.environ.get("COURSE_MODEL") or None
    if course_model:
        path = Path(course_model).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise FileNotFoundError(
                    f"COURSE_MODEL={course_model} is a folder without config.json; point it at a folder "
                    "written by save_pretrained, or at a hub id such as gpt2"
                )
            return ModelSource(str(path.resolve()), "COURSE_MODEL folder", "COURSE_MODEL is set")
        if _looks_like_hub_id(course_model) and not path.exists():
            return ModelSource(course_model, "COURSE_MODEL hub id", "COURSE_MODEL is set")
        raise FileNotFoundError(
            f"COURSE_MODEL={course_model} does not exist; set it to a folder with config.json, "
            f"to a hub id such as gpt2, or unset it to use the tiny base in {tiny_base_dir(settings)}"
        )
    if settings.model_id:
        if hub_has_cached(settings.model_id) or _hub_reachable(settings.model_id):
            return ModelSource(settings.model_id, "hub", f"{settings.mode} mode uses {settings.model_id}")
        return ModelSource(
            str(tiny_base_dir(settings)),
            "tiny base",
            f"{settings.model_id} is neither in the local cache nor reachable on the hub",
            fallback_from=settings.model_id,
        )
    return ModelSource(str(tiny_base_dir(settings)), "tiny base", f"{settings.mode} mode uses the tiny base")


def fit_block_size(settings: Settings, model_or_config) -> Settings:
    """``settings`` with ``block_size`` no longer than the context of the model just loaded (05, 06, 07, 10, 11).

    nanoGPT's ``crop_block_size`` the other way round: the blocks shrink to the model, not the
    model to the blocks. ``gpu`` mode asks for 512-token blocks, which real GPT-2 (1,024
    positions) takes; where it falls back to the tiny base (256 positions), or ``COURSE_MODEL``
    names a model with a shorter context, longer blocks would index past the position table, so
    the blocks shrink to the model's context, with a warning. ``model_or_config`` is a model or
    its ``config`` (``AutoConfig.from_pretrained`` reads one without loading the weights).
    """
    config = getattr(model_or_config, "config", model_or_config)
    context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if context is None or settings.block_size <= context:
        return settings
    warnings.warn(
        f"{settings.mode} mode asks for blocks of {settings.block_size} tokens, but the model has only {context} "
        f"positions; using blocks of {context} tokens",
        stacklevel=2,
    )
    return dataclasses.replace(settings, block_size=context)


def describe_model_source(settings: Settings | None = None) -> str:
    """One line for the environment report: where the model comes from and why."""
    try:
        source = resolve_model_source(settings)
    except FileNotFoundError as error:
        return f"ERROR: {error}"
    text = f"{display_path(source.location) if source.is_local else source.location} ({source.kind}: {source.reason})"
    if source.fallback_from:
        text += f" -- FALLBACK from {source.fallback_from}"
    return text


def _warn_fallback(source: ModelSource) -> None:
    if source.fallback_from:
        warnings.warn(
            f"Could not get {source.fallback_from} ({source.reason}); using the course's tiny GPT-2 base "
            f"from {source.location} instead. Run `make download` where the hub is reachable to cache it.",
            stacklevel=3,
        )


def tokenizer_folder(*folders: Path | str | None) -> Path:
    """The first of ``folders`` (``None`` skipped) that holds a tokenizer's files (05, 06, 10, 11).

    The one check of where a tokenizer is: a model's tokenizer is saved beside it, so a folder
    without one is a ``FileNotFoundError`` naming the folders and what to do.
    """
    candidates = [Path(folder) for folder in folders if folder is not None]
    for folder in candidates:
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            return folder
    raise FileNotFoundError(
        f"no tokenizer files ({' or '.join(TOKENIZER_FILES)}) in {' or '.join(map(str, candidates))}; save the "
        "tokenizer beside the model (tokenizer.save_pretrained(folder); export_release does) or pass its folder"
    )


def _tokenizer(location: Path | str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has no pad token; padding is masked anyway
    return tokenizer


def load_tokenizer(source: ModelSource | None = None):
    """Load the GPT-2 tokenizer that belongs to ``source`` (default: the resolved model).

    Introduced in ``00_setup.ipynb``. Always ``from_pretrained(folder)``: in transformers 5,
    building ``GPT2TokenizerFast(vocab_file=..., merges_file=...)`` by hand silently
    produces a one-token tokenizer. A local model without its own tokenizer files (the tiny
    base) uses the shipped GPT-2 BPE files.
    """
    source = source or resolve_model_source()
    return _tokenizer(tokenizer_folder(source.location, tokenizer_dir()) if source.is_local else source.location)


def _from_pretrained(location: Path | str, dtype=None):
    """The model at ``location`` in the class its config names: a causal LM, or a sequence classifier (08).

    In fp32 unless ``dtype`` says otherwise, with GPT-2's GELU fused (:func:`with_fused_gelu`)
    and a causal LM's loss named (:func:`with_causal_lm_loss`). Every model the course loads is built here.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = with_fused_gelu(AutoConfig.from_pretrained(location))
    classifier = any(name.endswith("ForSequenceClassification") for name in config.architectures or ())
    auto = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    model = auto.from_pretrained(location, config=config, dtype=dtype or torch.float32)
    return model if classifier else with_causal_lm_loss(model)


def load_model(source: ModelSource | None = None, dtype=None):
    """Load the base model (in fp32 unless ``dtype`` says otherwise) and return ``(model, source)``.

    Introduced in ``00_setup.ipynb``; 05 fine-tunes what it returns.
    """
    source = source or resolve_model_source()
    _warn_fallback(source)
    return _from_pretrained(source.location, dtype), source


def load_pretrained(folder: Path | str, adapter: Path | str | None = None, device=None, int8: bool = False):
    """``(model, tokenizer)`` from a folder ``save_pretrained`` wrote, in eval mode (05, 10, 11; the service).

    The model's class follows its config (a causal LM or a sequence classifier); the tokenizer
    is the adapter's when it has one, else the folder's. ``adapter``: a LoRA adapter folder merged
    into the weights (:func:`merge_adapter`), so it runs at the base's speed. ``device``: where the
    model goes (default the CPU); ``int8``: ``helpers.deployment.quantize_int8``'s CPU copy instead.
    Used by ``helpers.finetune.load_finetuned`` and ``helpers.registry.load``.
    """
    import torch

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a model folder (no config.json); pass a folder save_pretrained wrote "
                                "(05's fine-tuned model, a release from export_release, a registry version)")
    if int8 and device is not None and torch.device(device).type != "cpu":
        raise ValueError("int8 dynamic quantization runs on the CPU only; drop the device or int8")
    adapter = check_adapter_folder(adapter) if adapter is not None else None
    tokenizer = _tokenizer(tokenizer_folder(adapter, folder))
    model = _from_pretrained(folder)
    if adapter is not None:
        model = merge_adapter(model, adapter)
    if int8:
        from helpers.deployment import quantize_int8  # here, not above: importing helpers.models stays free of torch

        return quantize_int8(model).eval(), tokenizer
    return model.to(device or "cpu").eval(), tokenizer


def with_causal_lm_loss(model):
    """``model`` with its ``labels=`` loss named: transformers' shifted-label cross-entropy.

    transformers 5 picks that loss from the class name, finds no entry for ``GPT2LMHeadModel``,
    and on the first ``labels=`` call writes "`loss_type=None` was set in the config but it is
    unrecognized" to stderr before using ``ForCausalLMLoss`` anyway (the config holds no
    ``loss_type``: it is not a config setting). Naming it gives the same loss without the
    warning. Applied to every causal LM :func:`_from_pretrained` builds (00, 05).
    """
    if getattr(model, "loss_type", None) is None:
        model.loss_type = "ForCausalLM"
    return model


def with_fused_gelu(config):
    """``config`` with GPT-2's GELU computed by PyTorch's fused kernel (same function, faster).

    Used by :func:`_from_pretrained` and the training benchmark; a test checks the two give the
    same logits. Other activations are left alone.
    """
    if getattr(config, "activation_function", None) == GPT2_GELU:
        config.activation_function = FUSED_GELU
    return config


def prefetch_gpt2(model_id: str = HUB_GPT2) -> Path:
    """Download ``model_id`` into the local Hugging Face cache for an offline workshop.

    Used by ``make download``; needs the hub, so it is never called by tests.
    """
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_id, allow_patterns=["*.json", "*.txt", "*.safetensors"]))


# ---------------------------------------------------------------- a LoRA adapter folder, merged into its base


def check_adapter_folder(folder: Path | str) -> Path:
    """``folder`` as a path when it holds a LoRA adapter (config and weights); else an error naming what is wrong.

    Introduced in ``11_iteration.ipynb`` (the registry's adapter versions); the service's
    ``--adapter`` uses it too.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"adapter folder {folder} does not exist; pass the folder an adapter's "
                                "save_pretrained wrote (06_lora)")
    if not (folder / ADAPTER_CONFIG).is_file():
        looks_like = " (it holds config.json: a full model, not an adapter)" if (folder / "config.json").is_file() else ""
        raise ValueError(f"{folder} is not a LoRA adapter: it has no {ADAPTER_CONFIG}{looks_like}; pass the folder "
                         "an adapter's save_pretrained wrote (06_lora)")
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{folder / ADAPTER_CONFIG} is unreadable ({err}); save the adapter again") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise ValueError(f"{folder / ADAPTER_CONFIG} does not describe a LoRA adapter (peft_type "
                         f"{config.get('peft_type') if isinstance(config, dict) else None!r}); save a LoRA adapter")
    if not (folder / ADAPTER_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {ADAPTER_FILE}; save the adapter again with save_pretrained")
    return folder


def merge_adapter(base, adapter_dir: Path | str):
    """``base`` with the LoRA adapter in ``adapter_dir`` merged into its weights: a plain model again.

    ``PeftModel.from_pretrained`` then ``merge_and_unload`` (06 shows the merged logits equal the
    adapter's). An adapter made for another base shape is a ``ValueError`` naming the mismatch;
    peft itself would load one made for fewer layers without a word. ``base`` is changed in place.
    Introduced in ``11_iteration.ipynb``.
    """
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    folder = check_adapter_folder(adapter_dir)
    with safe_open(str(folder / ADAPTER_FILE), "pt") as f:
        saved = set(f.keys())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")  # peft 0.21 on transformers 5
        warnings.filterwarnings("ignore", message="Found missing adapter keys")  # said below, in one line
        try:
            model = PeftModel.from_pretrained(base, folder)
        except RuntimeError as err:
            mismatch = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
            raise ValueError(f"adapter {folder} was made for another base shape: {mismatch}") from None
        except ValueError as err:  # e.g. its target modules are not in this base
            raise ValueError(f"adapter {folder} does not fit this base: {err}") from None
    expected = set(get_peft_model_state_dict(model))
    if saved != expected:
        extra, missing = sorted(saved - expected), sorted(expected - saved)
        raise ValueError(f"adapter {folder} was made for another base shape: it has {len(saved)} matrices, this base "
                         f"needs {len(expected)} ({'extra: ' + extra[0] if extra else 'missing: ' + missing[0]})")
    return model.merge_and_unload().eval()
