"""runtime: device choice, the precision policy per device, seeding, the environment report."""

from __future__ import annotations

import pytest
import torch

from helpers import runtime


@pytest.mark.parametrize(
    "capability, dtype, scaler",
    [((8, 0), torch.bfloat16, False), ((9, 0), torch.bfloat16, False), ((7, 5), torch.float16, True), ((6, 1), torch.float16, True)],
)
def test_cuda_policy_by_compute_capability(capability, dtype, scaler):
    policy = runtime.precision_policy(torch.device("cuda"), cuda_capability=capability)
    assert policy.autocast_dtype is dtype
    assert policy.use_grad_scaler is scaler


@pytest.mark.parametrize("has_bf16, dtype", [(True, torch.bfloat16), (False, None)])
def test_cpu_policy_never_uses_fp16(has_bf16, dtype):
    policy = runtime.precision_policy(torch.device("cpu"), cpu_bf16=has_bf16)
    assert policy.autocast_dtype is dtype
    assert policy.autocast_dtype is not torch.float16
    assert not policy.use_grad_scaler


def test_accelerate_names():
    assert runtime.precision_policy(torch.device("cpu"), cpu_bf16=False).accelerate_name == "no"
    assert runtime.precision_policy(torch.device("cpu"), cpu_bf16=True).accelerate_name == "bf16"
    assert runtime.precision_policy(torch.device("cuda"), cuda_capability=(7, 5)).accelerate_name == "fp16"


def test_mps_uses_fp32():
    assert runtime.precision_policy(torch.device("mps")).autocast_dtype is None


def test_device_override(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert runtime.pick_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="tpu"):
        runtime.pick_device("tpu")


def test_unavailable_cuda_override_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        runtime.pick_device("cuda")


def test_auto_device_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.pick_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert runtime.pick_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert runtime.pick_device().type == "cpu"


def test_set_seed_repeats_every_generator():
    import random

    import numpy as np

    runtime.set_seed(7)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    runtime.set_seed(7)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_colab_detection(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert not runtime.in_colab()
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260101")
    assert runtime.in_colab()


def test_eval_mode_restores_the_previous_mode_even_after_an_error():
    model = torch.nn.Dropout(0.5)
    for before in (True, False):
        model.train(before)
        with pytest.raises(RuntimeError), runtime.eval_mode(model) as inside:
            assert inside is model and not model.training
            raise RuntimeError("a failing evaluation")
        assert model.training is before
