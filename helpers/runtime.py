"""Where the code runs: device, precision policy, CPU memory reuse, Colab detection, seeding.

Introduced in ``00_setup.ipynb``. The precision policy is the one place that decides
mixed precision for every later notebook (05 training, 10 serving).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import inspect
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch

VALID_DEVICES = ("cuda", "mps", "cpu")


def pick_device(override: str | None = None) -> torch.device:
    """Choose cuda > mps > cpu, unless ``override`` (or ``COURSE_DEVICE``) names one.

    An override naming an unavailable device is a clear error rather than a slow surprise.
    """
    choice = override if override is not None else os.environ.get("COURSE_DEVICE")
    if choice:
        kind = choice.split(":")[0].strip().lower()
        if kind not in VALID_DEVICES:
            raise ValueError(f"COURSE_DEVICE={choice!r} is not a device; use one of {', '.join(VALID_DEVICES)}")
        if kind == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"COURSE_DEVICE={choice!r} but CUDA is not available here; unset it or use cpu")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"COURSE_DEVICE={choice!r} but Apple MPS is not available here; unset it or use cpu")
        return torch.device(choice.strip().lower())
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), so autocast pays off."""
    try:
        return bool(torch.backends.cpu.get_cpu_capability() in {"AVX512_BF16", "AMX"}) or _cpuinfo_has_bf16()
    except AttributeError:  # very old torch
        return _cpuinfo_has_bf16()


def _cpuinfo_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class PrecisionPolicy:
    """What mixed precision to use on a device, and why (printed by 00_setup)."""

    autocast_dtype: torch.dtype | None  # None: plain fp32
    use_grad_scaler: bool  # only fp16 needs loss scaling
    reason: str

    @property
    def accelerate_name(self) -> str:
        """The ``mixed_precision`` value ``accelerate.Accelerator`` expects."""
        return {None: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]


def precision_policy(
    device: torch.device,
    cuda_capability: tuple[int, int] | None = None,
    cpu_bf16: bool | None = None,
) -> PrecisionPolicy:
    """The course's precision policy.

    CUDA: bf16 when compute capability >= 8.0 (Ampere and newer), else fp16 with a grad
    scaler (a T4 is 7.5). CPU: bf16 autocast only when the CPU has native bf16, never fp16
    (fp16 matmuls on a CPU are hundreds of times slower). MPS: fp32.
    The optional arguments let tests pin the hardware facts.
    """
    if device.type == "cuda":
        major, minor = cuda_capability or torch.cuda.get_device_capability(device)
        if major >= 8:
            return PrecisionPolicy(torch.bfloat16, False, f"CUDA compute capability {major}.{minor} >= 8.0: bf16")
        return PrecisionPolicy(
            torch.float16, True, f"CUDA compute capability {major}.{minor} < 8.0: fp16 with a grad scaler"
        )
    if device.type == "cpu":
        has_bf16 = cpu_supports_bf16() if cpu_bf16 is None else cpu_bf16
        if has_bf16:
            return PrecisionPolicy(torch.bfloat16, False, "CPU with native bf16: bf16 autocast (never fp16 on CPU)")
        return PrecisionPolicy(None, False, "CPU without native bf16: fp32 (never fp16 on CPU)")
    return PrecisionPolicy(None, False, f"{device.type}: fp32")


# glibc's mallopt(3) parameters, and the values a PyTorch program runs with by default: the
# mmap limit's default, and the thresholds where glibc's dynamic rule settles once the program
# has freed a large block (32 MiB for mmap, twice that for trimming), as every training step does.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_SETTLED_GLIBC = {_M_MMAP_MAX: 65536, _M_MMAP_THRESHOLD: 32 * 2**20, _M_TRIM_THRESHOLD: 64 * 2**20}


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


@contextlib.contextmanager
def reuse_freed_memory():
    """Inside this block, memory PyTorch frees on the CPU is kept and reused, not returned to the OS.

    glibc serves every allocation above 32 MB (GPT-2's logits, 200 MB at 8 x 128; the
    embedding gradient) with a fresh ``mmap`` and unmaps it on free, so each training step
    pays to fault in and zero-fill those pages again (``make bench`` measures the cost on a
    GPT-2-small step). PyTorch's CPU tuning guide fixes it by preloading jemalloc or
    tcmalloc; here two glibc knobs (``mallopt(3)``) do the same without installing anything:
    no ``mmap`` for large blocks and no trimming of the heap. The price: the process holds
    on to its peak memory while inside. On exit glibc's usual values come back and the heap
    may shrink again. A no-op outside Linux/glibc. Used by ``helpers.training.train`` on the CPU (05).
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        for parameter, value in _SETTLED_GLIBC.items():
            libc.mallopt(parameter, value)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Inside the block ``model`` is in eval mode (dropout off); its previous mode comes back after.

    The one place that saves and restores ``model.training``, even when the block raises:
    evaluating in the middle of training (05), scoring (07) and checking a release (10).
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def cache_keyword(model: torch.nn.Module) -> str:
    """The name of ``model.forward``'s key/value-cache argument: transformers 5 renamed
    ``past_key_values`` to ``cache``; both spellings are met (09's likelihood scoring, 10's engine)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def in_colab() -> bool:
    """True inside Google Colab (the notebooks' install cells run only there)."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def progress_bar(iterable=None, progress: bool = True, **kwargs):
    """A tqdm progress bar (notebook widget or text), hidden when ``progress`` is False or ``TQDM_DISABLE`` is set.

    Used by every long loop (02 tokenizing, 05 training, 07 scoring). tqdm's notebook bar
    ignores ``TQDM_DISABLE``, so it is read here (CI and committed notebooks set it).
    """
    from tqdm.auto import tqdm

    disabled = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")
    return tqdm(iterable, disable=not progress or disabled, **kwargs)
