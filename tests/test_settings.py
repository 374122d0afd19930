"""settings: one mode switch decides every size; bad modes are clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from helpers import settings


def test_invalid_mode_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        settings.resolve_mode("turbo")
    message = str(info.value)
    assert "turbo" in message
    for mode in settings.VALID_MODES:
        assert mode in message


@pytest.mark.parametrize("value", ["smoke", "CPU", " gpu "])
def test_explicit_mode_is_normalised(value):
    assert settings.resolve_mode(value) == value.strip().lower()


@pytest.mark.parametrize("cuda, expected", [(True, "gpu"), (False, "cpu")])
@pytest.mark.parametrize("value", [None, ""])
def test_auto_mode_follows_cuda(monkeypatch, value, cuda, expected):
    monkeypatch.setattr(settings, "_cuda_available", lambda: cuda)
    assert settings.resolve_mode(value) == expected


def test_settings_are_frozen():
    s = settings.make_settings("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.num_steps = 10**6


def test_sizes_grow_from_smoke_to_cpu():
    smoke, cpu = settings.make_settings("smoke"), settings.make_settings("cpu")
    assert smoke.num_steps < cpu.num_steps
    assert smoke.block_size <= cpu.block_size
    assert smoke.eval_tokens < cpu.eval_tokens
    assert smoke.max_chars_per_doc is not None and cpu.max_chars_per_doc is None


def test_only_gpu_mode_asks_for_the_hub_model():
    assert settings.make_settings("gpu").model_id == "gpt2"
    assert settings.make_settings("cpu").model_id is None
    assert settings.make_settings("smoke").model_id is None


def test_get_settings_reads_environment_once(monkeypatch, tmp_path):
    settings.get_settings.cache_clear()
    monkeypatch.setenv("COURSE_MODE", "cpu")
    monkeypatch.setenv("COURSE_ARTIFACTS", str(tmp_path))
    try:
        first = settings.get_settings()
        assert first.mode == "cpu" and first.artifacts_dir == tmp_path
        monkeypatch.setenv("COURSE_MODE", "gpu")
        assert settings.get_settings() is first  # read once per process
    finally:
        settings.get_settings.cache_clear()


def test_paths_point_into_the_repository():
    s = settings.make_settings("smoke")
    assert (s.repo_root / "pyproject.toml").is_file()
    assert s.data_dir == s.repo_root / "data"
    assert s.artifacts_dir == s.repo_root / "artifacts"


def test_reading_the_settings_touches_neither_the_network_nor_a_model(tmp_path):
    """gpu mode, hub not offline: get_settings must not resolve, download or open a model (issue 30)."""
    import os
    import subprocess
    import sys

    probe = ("import sys; from helpers.settings import get_settings; s = get_settings(); "
             "print(s.mode, s.block_size, sorted(m for m in ('helpers.models', 'huggingface_hub', 'transformers', 'torch') "
             "if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "COURSE_MODEL")}
    env.update(COURSE_MODE="gpu", PYTHONPATH=str(settings.REPO_ROOT), HF_HOME=str(tmp_path))  # an empty hub cache
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split(maxsplit=2) == ["gpu", "512", "[]\n"]
