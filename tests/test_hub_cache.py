"""gpu mode's model source, through the real Hugging Face cache, offline (issue: GPU proof).

A Colab or workshop GPU user gets ``gpt2`` from the local Hugging Face cache (``make download``
fills it). Here no network is allowed, so the test builds a genuine cache layout
(``hub/models--gpt2/{blobs,snapshots/<revision>,refs/main}``, files stored once as blobs and
linked from the snapshot, as ``huggingface_hub`` writes it) from the tiny base and the shipped
tokenizer files, points ``HF_HOME`` at it, and runs the course's own code in a fresh process with
``COURSE_MODE=gpu`` and ``HF_HUB_OFFLINE=1``: nothing of the course is monkeypatched.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
TINY_BASE = ROOT / "data" / "models" / "tiny-gpt2-base"
TOKENIZER = ROOT / "data" / "tokenizer" / "gpt2"

# What a Colab user runs, in a fresh process: the process's settings, the resolution order, the loaders.
PROBE = """
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    from helpers.settings import get_settings
    from helpers.models import fit_block_size, load_model, load_tokenizer, resolve_model_source
    settings = get_settings()
    source = resolve_model_source()
    model, _ = load_model(source)
    tokenizer = load_tokenizer(source)
    settings = fit_block_size(settings, model)  # what the training helpers do before they cut blocks
print(json.dumps({
    "mode": settings.mode, "block_size": settings.block_size, "kind": source.kind, "location": source.location,
    "fallback_from": source.fallback_from, "warnings": [str(w.message) for w in caught],
    "wte_sum": float(model.transformer.wte.weight.double().sum()), "vocab": len(tokenizer),
    "hello": tokenizer("Hello world").input_ids,
}))
"""


def build_hub_cache(hf_home: Path, model_id: str, files: list[Path]) -> Path:
    """Lay ``files`` out as ``huggingface_hub`` caches a downloaded snapshot of ``model_id``; return the snapshot."""
    repo = hf_home / "hub" / f"models--{model_id.replace('/', '--')}"
    revision = hashlib.sha1(b"".join(f.read_bytes() for f in files)).hexdigest()
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in files:
        blob = hashlib.sha256(file.read_bytes()).hexdigest()
        (repo / "blobs" / blob).write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def run_probe(hf_home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COURSE_MODEL", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", COURSE_MODE="gpu", COURSE_DEVICE="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_base_sum() -> float:
    return float(load_file(TINY_BASE / "model.safetensors")["transformer.wte.weight"].double().sum())


def test_gpu_mode_loads_gpt2_from_a_real_offline_cache(tmp_path, tiny_base_sum):
    model_files = [TINY_BASE / n for n in ("config.json", "generation_config.json", "model.safetensors")]
    build_hub_cache(tmp_path, "gpt2", model_files + sorted(TOKENIZER.iterdir()))
    found = run_probe(tmp_path)
    assert found["mode"] == "gpu" and found["kind"] == "hub" and found["location"] == "gpt2"
    assert found["fallback_from"] is None
    assert found["wte_sum"] == pytest.approx(tiny_base_sum, rel=1e-6)  # the cached weights were loaded
    assert found["vocab"] == 50257 and found["hello"] == [15496, 995]  # GPT-2's ids for "Hello world"
    # The cached "gpt2" here is the tiny base (256 positions): gpu mode's 512-token blocks shrink to fit.
    assert found["block_size"] == 256
    assert any("only 256 positions" in w for w in found["warnings"])
    assert not any("Could not get" in w for w in found["warnings"])


def test_gpu_mode_without_the_cache_falls_back_to_the_tiny_base_with_a_warning(tmp_path, tiny_base_sum):
    (tmp_path / "hub").mkdir()  # an empty cache: nothing was ever downloaded, and the hub is unreachable
    found = run_probe(tmp_path)
    assert found["kind"] == "tiny base" and found["fallback_from"] == "gpt2"
    assert Path(found["location"]) == TINY_BASE
    assert found["wte_sum"] == pytest.approx(tiny_base_sum, rel=1e-6)
    assert any("Could not get gpt2" in w and "make download" in w for w in found["warnings"])
    assert found["block_size"] == 256  # the tiny base has 256 positions, not gpu mode's 512
