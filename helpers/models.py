"""Where the tokenizer and the model come from, in one resolution order.

Introduced in ``00_setup.ipynb`` and used by every notebook from 05 on:

1. ``COURSE_MODEL`` if set: a local folder (with ``config.json``) or a hub id such as ``gpt2``;
2. in ``gpu`` mode, ``gpt2`` from the Hugging Face hub or the local HF cache
   (:func:`prefetch_gpt2` / ``make download`` fills the cache for an offline workshop);
3. otherwise the course's own tiny GPT-2 base shipped in ``data/models/tiny-gpt2-base``.

When the hub cannot be reached in ``gpu`` mode the tiny base is used with a visible
warning, never silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from helpers.settings import Settings, get_settings

TINY_BASE_DIR = "models/tiny-gpt2-base"  # under data/
TOKENIZER_DIR = "tokenizer/gpt2"  # under data/
HUB_GPT2 = "gpt2"
# GPT-2's activation is the tanh approximation of GELU. transformers' "gelu_new" computes it
# with five elementwise operations (and saves their intermediates for backward); PyTorch's
# ``gelu(approximate="tanh")`` is the same formula in one fused kernel.
GPT2_GELU, FUSED_GELU = "gelu_new", "gelu_pytorch_tanh"


@dataclass(frozen=True)
class ModelSource:
    """Where a model (and its tokenizer) will be loaded from, and why."""

    location: str  # a local folder or a hub id
    kind: str  # "COURSE_MODEL folder", "COURSE_MODEL hub id", "hub", "tiny base"
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


def context_length(source: ModelSource) -> int | None:
    """How many positions the model at ``source`` attends to, read from its ``config.json`` without loading it.

    None when the config is not on this machine yet (a hub id that is not in the local cache).
    """
    if source.is_local:
        config_file = Path(source.location) / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source.location, "config.json")
        if not isinstance(cached, str):
            return None
        config_file = Path(cached)
    config = json.loads(config_file.read_text(encoding="utf-8"))
    return config.get("n_positions") or config.get("max_position_embeddings")


def fit_to_model(settings: Settings) -> Settings:
    """``settings`` with ``block_size`` no longer than the context of the model the course will load.

    ``gpu`` mode asks for 512-token blocks, which real GPT-2 (1,024 positions) takes. Where it
    falls back to the tiny base (256 positions), or ``COURSE_MODEL`` names a model with a shorter
    context, longer blocks would index past the position table, so the blocks shrink to the
    model's context, with a warning. Used by :func:`helpers.settings.get_settings`.
    """
    try:
        context = context_length(resolve_model_source(settings))
    except FileNotFoundError:
        return settings  # a bad COURSE_MODEL is reported, with what to do, where the model is loaded
    if context is None or settings.block_size <= context:
        return settings
    warnings.warn(
        f"{settings.mode} mode asks for blocks of {settings.block_size} tokens, but the model has only {context} "
        f"positions; using blocks of {context} tokens",
        stacklevel=3,
    )
    return dataclasses.replace(settings, block_size=context)


def describe_model_source(settings: Settings | None = None) -> str:
    """One line for the environment report: where the model comes from and why."""
    try:
        source = resolve_model_source(settings)
    except FileNotFoundError as error:
        return f"ERROR: {error}"
    from helpers.settings import display_path

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


def load_tokenizer(source: ModelSource | None = None):
    """Load the GPT-2 tokenizer that belongs to ``source`` (default: the resolved model).

    Introduced in ``00_setup.ipynb``. Always ``from_pretrained(folder)``: in transformers 5,
    building ``GPT2TokenizerFast(vocab_file=..., merges_file=...)`` by hand silently
    produces a one-token tokenizer.
    """
    from transformers import AutoTokenizer

    source = source or resolve_model_source()
    location = source.location
    has_own_files = any((Path(location) / name).is_file() for name in ("vocab.json", "tokenizer.json"))
    if source.kind == "tiny base" or (source.is_local and not has_own_files):
        location = str(tokenizer_dir())  # the shipped GPT-2 BPE files (the tiny base uses them too)
    tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has no pad token; padding is masked anyway
    return tokenizer


def load_model(source: ModelSource | None = None, dtype=None):
    """Load a ``GPT2LMHeadModel`` (in fp32 unless ``dtype`` says otherwise) and return ``(model, source)``.

    Introduced in ``00_setup.ipynb``; 05 fine-tunes what it returns.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source = source or resolve_model_source()
    _warn_fallback(source)
    config = with_fused_gelu(AutoConfig.from_pretrained(source.location))
    model = AutoModelForCausalLM.from_pretrained(source.location, config=config, dtype=dtype or torch.float32)
    return with_causal_lm_loss(model), source


def with_causal_lm_loss(model):
    """``model`` with its ``labels=`` loss named: transformers' shifted-label cross-entropy.

    transformers 5 picks that loss from the class name, finds no entry for ``GPT2LMHeadModel``,
    and on the first ``labels=`` call writes "`loss_type=None` was set in the config but it is
    unrecognized" to stderr before using ``ForCausalLMLoss`` anyway (the config holds no
    ``loss_type``: it is not a config setting). Naming it gives the same loss without the
    warning. Used by :func:`load_model` (00) and ``helpers.finetune.load_finetuned`` (05).
    """
    if getattr(model, "loss_type", None) is None:
        model.loss_type = "ForCausalLM"
    return model


def with_fused_gelu(config):
    """``config`` with GPT-2's GELU computed by PyTorch's fused kernel (same function, faster).

    Used by :func:`load_model` and the training benchmark; a test checks the two give the
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
