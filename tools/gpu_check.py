"""``make gpu-check``: prove the ``gpu`` mode end to end on one CUDA machine with no network.

The plan, in order; every step adds rows to one table, printed at the end and written (with the
raw figures) to ``artifacts/gpu-check/gpu_check.json``, and on a CUDA machine kept in
``bench/results/gpu-check-<card>-<date>.json`` (and ``.txt``) to be committed:

1. **environment**: torch, CUDA, the card and the bf16 dense peak used for MFU (from the card's
   data sheet; a measured matmul ceiling is printed beside it);
2. **CUDA tests**: ``pytest -m cuda`` (bf16 autocast in the loop, fused AdamW, the service on
   CUDA); a skipped test fails the check;
3. **training**: a GPT-2 124M-shaped model, randomly initialised from its config (no download),
   trained for ``--steps`` optimizer steps by the course's own loop (``helpers.training.train``) at
   the gpu-mode sizes, eager and with ``torch.compile``: tokens/s, MFU, peak GPU memory, which must
   fit a 16 GB Colab T4 (at most 13 GB);
4. **generation**: the same model behind the course's service, 1 and 8 concurrent clients, tokens/s;
5. **notebooks**: every notebook, in order, in ``gpu`` mode with ``COURSE_MODEL`` set to the tiny
   base (the hub is unreachable there), stopping at the first error; the minutes land in
   ``artifacts/executed/gpu/timings.json`` for ``make map``.

``--dry-run`` runs the same plan on the CPU in about a minute, so it cannot rot (``make test``
runs it): a tiny model for two steps, the service with a tiny model, the CUDA tests collected but
not required, and every notebook's gpu-mode settings resolved and printed instead of executed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

from bench.bench_training import matmul_peak_flops, model_flops_per_token
from helpers.models import with_fused_gelu
from helpers.runtime import pick_device, precision_policy
from helpers.settings import REPO_ROOT, make_settings
from helpers.training import TrainConfig, train

T4_BUDGET_GB = 13.0  # a Colab T4 has 15 GB usable; keep room for the CUDA context and fragmentation
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, in TFLOP/s. A T4 has no
# bf16: its fp16 peak is listed, the precision the course uses there.
DENSE_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0,
                     "H100 PCIe": 756.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0,
                     "A10": 125.0, "T4": 65.0}


@dataclass
class Report:
    """The check's findings: rows for the table, raw figures for the JSON, and failures."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (step, what, value)
    figures: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, step: str, what: str, value: str, ok: bool = True) -> None:
        self.rows.append((step, what, value if ok else f"{value}  <-- FAILED"))
        if not ok:
            self.failures.append(f"{step}: {what} = {value}")
        print(f"[{step}] {what}: {value}{'' if ok else '  <-- FAILED'}", flush=True)

    def table(self) -> str:
        widths = [max(len(row[i]) for row in [("step", "what", "value"), *self.rows]) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [("step", "what", "value"), *self.rows]]
        return "\n".join(lines)


def card_peak_tflops(name: str) -> float | None:
    """The data-sheet bf16 dense peak of the card called ``name`` (longest matching key), or None."""
    matches = [key for key in DENSE_BF16_TFLOPS if key.lower() in name.lower()]
    return DENSE_BF16_TFLOPS[max(matches, key=len)] if matches else None


def check_environment(report: Report, device: torch.device) -> float:
    """Step 1; returns the peak FLOP/s that MFU is measured against."""
    report.add("environment", "python / torch / transformers",
               f"{platform.python_version()} / {torch.__version__} / {transformers.__version__}")
    report.add("environment", "precision policy", precision_policy(device).reason)
    if device.type != "cuda":
        measured = matmul_peak_flops(torch.float32, device, sizes=(256, 512))
        report.add("environment", "device", f"{device} (dry run), fp32 matmul ceiling {measured / 1e12:.2f} TFLOP/s")
        return measured
    name = torch.cuda.get_device_name(device)
    report.figures["card"] = name
    measured = matmul_peak_flops(torch.bfloat16, device, sizes=(4096, 8192))
    sheet = card_peak_tflops(name)
    peak = sheet * 1e12 if sheet else measured
    report.add("environment", "device", f"{name}, {torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB")
    report.add("environment", "bf16 peak used for MFU",
               f"{peak / 1e12:.0f} TFLOP/s ({'data sheet' if sheet else 'measured: card not in the table'}); "
               f"measured matmul ceiling {measured / 1e12:.0f} TFLOP/s")
    report.figures["peak_tflops"], report.figures["measured_matmul_tflops"] = peak / 1e12, measured / 1e12
    return peak


def run_cuda_tests(report: Report, dry_run: bool) -> None:
    """Step 2: the tests marked ``cuda`` must all run (on a CPU they are only collected)."""
    marked = sorted(str(path.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "tests").glob("test_*.py")
                    if "mark.cuda" in path.read_text(encoding="utf-8"))  # collecting only these saves seconds
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider", *marked]
    if dry_run:
        command.append("--collect-only")
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    summary = (done.stdout.strip().splitlines() or ["no output"])[-1]
    skipped = "skipped" in summary and not dry_run
    report.add("cuda tests", "pytest -m cuda", summary, ok=done.returncode == 0 and not skipped)
    if done.returncode != 0 or skipped:
        print(done.stdout[-4000:], done.stderr[-2000:], sep="\n")


def training_model(dry_run: bool, vocab_size: int = 1024) -> GPT2LMHeadModel:
    """GPT-2 124M's shapes with random weights (the dry run: a 2-layer, 64-wide stand-in)."""
    torch.manual_seed(0)
    small = dict(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=vocab_size,
                 bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    config = GPT2Config(**small) if dry_run else GPT2Config()
    return GPT2LMHeadModel(with_fused_gelu(config))


def bench_training(report: Report, device: torch.device, peak: float, steps: int, compiled: bool,
                   dry_run: bool) -> None:
    """Step 3: tokens/s, MFU and peak memory of the course's loop at the gpu-mode sizes."""
    gpu = make_settings("gpu")
    batch, block, accum = (2, 32, 1) if dry_run else (gpu.batch_size, gpu.block_size, gpu.grad_accum_steps)
    model = training_model(dry_run)
    if compiled:
        # In place: the loop and unwrap_model see the same module. The dry run traces with dynamo
        # but skips code generation (backend "eager"), which would take minutes on two cores.
        model.compile(backend="eager" if dry_run else "inductor")
    blocks = np.random.default_rng(0).integers(0, model.config.vocab_size, (batch * accum * steps, block))
    config = TrainConfig(num_steps=steps, lr=gpu.lr, warmup_steps=max(1, steps // 10), batch_size=batch,
                         grad_accum_steps=accum, eval_interval=10**9, eval_batches=1, checkpoint_interval=10**9)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = train(model, blocks.astype(np.uint16), blocks[:batch].astype(np.uint16), config, progress=False)
    steady = result.history[min(len(result.history) - 1, max(1, steps // 3)):-1] or result.history  # skip warm-up/compile, last step evaluates
    tokens_per_s = float(np.median([h["tokens_per_s"] for h in steady]))
    mfu = model_flops_per_token(model.config, block) * tokens_per_s / peak
    label = f"{'compiled' if compiled else 'eager'}, {batch}x{block}x{accum} tokens/step"
    report.add("training", f"GPT-2 {'124M' if not dry_run else 'stand-in'} {label}", f"{tokens_per_s:,.0f} tokens/s, MFU {mfu:.1%}",
               ok=all(np.isfinite(h["loss"]) for h in result.history))
    key = "compiled" if compiled else "eager"
    report.figures[f"training_{key}"] = {"tokens_per_s": tokens_per_s, "mfu": mfu, "steps": steps,
                                         "batch": batch, "block": block, "grad_accum": accum,
                                         "first_step_s": batch * block * accum / result.history[0]["tokens_per_s"]}
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated(device) / 1e9
        report.figures[f"training_{key}"]["peak_memory_gb"] = peak_gb
        report.add("training", f"peak GPU memory ({key})", f"{peak_gb:.1f} GB (a T4 allows {T4_BUDGET_GB:g})",
                   ok=peak_gb <= T4_BUDGET_GB)
    del model, result
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_generation(report: Report, device: torch.device, tiny_base: Path, work: Path, dry_run: bool) -> None:
    """Step 4: the same model behind ``python -m helpers.serving`` on this device, 1 and 8 streaming clients.

    The weights are random (no download), so the text is noise; what is measured is the
    service's throughput. The tokenizer is the tiny base's (GPT-2's), the same vocabulary.
    """
    from helpers.serving.cli import start_background
    from helpers.serving.load_generator import run_load

    model_dir = work / "random-gpt2"
    training_model(dry_run, vocab_size=GPT2Config().vocab_size).save_pretrained(model_dir)
    max_tokens = 16 if dry_run else 128
    body = {"model": model_dir.name, "prompt": "It is a truth universally acknowledged, that", "max_tokens": max_tokens,
            "temperature": 0}
    args = ["--tokenizer", str(tiny_base), "--device", device.type, "--max-batch-size", "8"]
    with start_background(model_dir, extra_args=args, startup_timeout=300) as server:
        run_load(server.url, {**body, "max_tokens": 4}, clients=1, requests_per_client=1)  # warm-up
        for clients in (1, 8):
            result = run_load(server.url, body, clients=clients, requests_per_client=2)
            first = float(np.median([t.first_token_s for t in result.timings])) * 1000 if result.timings else float("nan")
            report.figures[f"generation_{clients}_clients"] = {"tokens_per_s": result.tokens_per_s,
                                                               "ttft_p50_ms": first, "errors": result.errors}
            report.add("generation", f"service, {clients} streaming client(s), {max_tokens} tokens each",
                       f"{result.tokens_per_s:,.0f} tokens/s, first token p50 {first:,.0f} ms",
                       ok=not result.errors and len(result.timings) == 2 * clients)
            if result.errors:
                print(f"errors: {result.errors[:2]}\nthe server's log ends:\n{server.log()[-3000:]}")


def resolve_notebook_settings(report: Report, tiny_base: Path) -> None:
    """Dry run of step 5: what every notebook would use in gpu mode, resolved in a fresh process."""
    probe = ("import json; from transformers import AutoConfig; from helpers.settings import get_settings; "
             "from helpers.models import fit_block_size, resolve_model_source; src = resolve_model_source(); "
             "config = AutoConfig.from_pretrained(src.location); s = fit_block_size(get_settings(), config); "
             "print(json.dumps({'mode': s.mode, "
             "'model': src.kind, 'context': config.n_positions, 'block_size': s.block_size, 'batch_size': s.batch_size, "
             "'grad_accum_steps': s.grad_accum_steps, 'num_steps': s.num_steps, 'eval_tokens': s.eval_tokens}))")
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", probe], cwd=REPO_ROOT, env=notebook_env(tiny_base),
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        report.add("notebooks", "gpu-mode settings", done.stderr.strip().splitlines()[-1], ok=False)
        return
    resolved = json.loads(done.stdout.strip().splitlines()[-1])
    report.figures["notebook_settings"] = resolved
    notebooks = sorted(p.stem[:2] for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    report.add("notebooks", f"gpu-mode settings of {', '.join(notebooks)}", ", ".join(f"{k}={v}" for k, v in resolved.items()),
               ok=resolved["mode"] == "gpu" and resolved["block_size"] <= resolved["context"])


def notebook_env(tiny_base: Path) -> dict[str, str]:
    env = dict(os.environ, COURSE_MODE="gpu", COURSE_MODEL=str(tiny_base), HF_HUB_OFFLINE="1", TQDM_DISABLE="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def run_notebooks(report: Report, tiny_base: Path) -> None:
    """Step 5: ``tools.course`` in gpu mode; it stops at the first failing notebook and names the cell."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tools.course"], cwd=REPO_ROOT, env=notebook_env(tiny_base),
                          capture_output=True, text=True, timeout=3600)
    print(done.stdout[-6000:], done.stderr[-3000:], sep="\n")
    timings_file = REPO_ROOT / "artifacts" / "executed" / "gpu" / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    report.figures["notebook_seconds"] = timings
    for name, seconds in sorted(timings.items()):
        report.add("notebooks", name, f"{seconds:.0f} s")
    report.add("notebooks", "all notebooks in gpu mode", f"{time.perf_counter() - started:.0f} s",
               ok=done.returncode == 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the same plan on the CPU, small, no notebook executed")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per training run (default 30)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "artifacts" / "gpu-check", help="where the JSON and table go")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device here: running the dry run of the same plan on the CPU")
        args.dry_run = True
    device = torch.device("cpu") if args.dry_run else pick_device("cuda")
    steps = 2 if args.dry_run else args.steps
    tiny_base = REPO_ROOT / "data" / "models" / "tiny-gpt2-base"
    report = Report(figures={"dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d")})
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    peak = check_environment(report, device)
    run_cuda_tests(report, args.dry_run)
    for compiled in (False, True):
        bench_training(report, device, peak, steps, compiled, args.dry_run)
    bench_generation(report, device, tiny_base, args.out, args.dry_run)
    if args.dry_run:
        resolve_notebook_settings(report, tiny_base)
    else:
        run_notebooks(report, tiny_base)
    report.figures["seconds"] = time.perf_counter() - started
    (args.out / "gpu_check.json").write_text(json.dumps({**asdict(report)}, indent=1, default=str) + "\n")
    (args.out / "gpu_check.txt").write_text(report.table() + "\n")
    print("\n" + report.table())
    print(f"\n{len(report.failures)} failure(s) in {report.figures['seconds']:.0f} s; written to {args.out}")
    if not args.dry_run:
        keep_results(report, args.out)
    return 1 if report.failures else 0


def keep_results(report: Report, out: Path, results_dir: Path = REPO_ROOT / "bench" / "results") -> Path:
    """A real run's table and JSON also go to ``bench/results/gpu-check-<card>-<date>.*``, to be committed."""
    card = re.sub(r"[^a-z0-9]+", "-", report.figures.get("card", "cuda").lower()).strip("-")
    stem = results_dir / f"gpu-check-{card}-{report.figures['date']}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".json", ".txt"):
        shutil.copyfile(out / f"gpu_check{suffix}", stem.with_suffix(suffix))
    print(f"kept in {stem}.json and .txt; now `make map` (the measured gpu minutes) and commit both")
    return stem


if __name__ == "__main__":
    sys.exit(main())
