"""``make gpu-check``'s plan runs on the CPU (its ``--dry-run``), so it cannot rot between GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.gpu_check import Report, card_peak_tflops, keep_results

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, tflops", [("NVIDIA H200", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 80GB HBM3", 989.0),
                                          ("Tesla T4", 65.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L4", 121.0),
                                          ("NVIDIA L40S", 362.0), ("Quadro RTX 8000", None)])
def test_card_peak_is_the_longest_matching_data_sheet_entry(name, tflops):
    assert card_peak_tflops(name) == tflops


def test_dry_run_runs_the_whole_plan_on_the_cpu(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--dry-run", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {row[0] for row in found["rows"]}
    assert steps == {"environment", "cuda tests", "training", "generation", "notebooks"} and not found["failures"]
    assert {"training_eager", "training_compiled", "generation_1_clients", "generation_8_clients"} <= found["figures"].keys()
    resolved = found["figures"]["notebook_settings"]
    assert resolved["mode"] == "gpu" and resolved["block_size"] <= resolved["context"]
    assert (tmp_path / "gpu_check.txt").read_text().startswith("step")


def test_a_real_runs_results_are_kept_under_the_cards_name_and_date(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "gpu_check.json").write_text("{}")
    (out / "gpu_check.txt").write_text("step  what  value")
    stem = keep_results(Report(figures={"card": "NVIDIA H200", "date": "2026-11-30"}), out, tmp_path / "results")
    assert stem.name == "gpu-check-nvidia-h200-2026-11-30"
    assert (stem.with_suffix(".txt")).read_text() == "step  what  value" and (stem.with_suffix(".json")).exists()
