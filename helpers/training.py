"""Fine-tuning GPT-2 with a loop you can read top to bottom, that scales out and never loses work.

Introduced in ``05_finetuning_gpt2.ipynb``. The shape follows transformers'
``run_clm_no_trainer.py``: an ``accelerate.Accelerator`` handles device placement, mixed
precision and DDP; the loop itself is plain PyTorch: forward, shifted-label cross-entropy,
backward (accumulated), clip, step, schedule, evaluate, checkpoint.

* Data: a 2-D array of token blocks (``(num_blocks, block_size)``, e.g. the uint16 memmap
  from ``helpers.data``). The order of blocks is a pure function of (seed, epoch), so the
  data position in a checkpoint is just the number of micro-batches consumed.
* Several processes (``accelerate launch --num_processes N`` or ``torchrun``): each optimizer
  step consumes ``grad_accum_steps x num_processes`` micro-batches of the same global
  sequence, process ``r`` taking every N-th one. N processes with accumulation ``a`` therefore
  see the same data per step as one process with accumulation ``N x a``.
* Checkpoints: ``step-000123/`` folders written atomically (``helpers.atomic.build_folder``:
  a temporary folder, fsynced, then renamed), with a checksum, ordered by their step number.
  Resuming reads them with ``torch.load(weights_only=True)``, which rebuilds tensors and plain
  values only and never runs code from the file; a damaged checkpoint (checksum, unreadable
  or malformed ``meta.json``, missing keys) is skipped with a warning naming the file, and the
  previous good one used. ``tools/pretrain_tiny_base.py`` shares the optimizer, the schedule
  and the checkpoints.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pickle
import random
import re
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from helpers.atomic import build_folder, clean_leftovers, remove_folder, sha256_file, write_text_atomic
from helpers.data import prepare
from helpers.models import fit_block_size, load_model, resolve_model_source
from helpers.runtime import eval_mode, pick_device, precision_policy, progress_bar, reuse_freed_memory, set_seed
from helpers.settings import Settings, get_settings

CHECKPOINT_PREFIX = "step-"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
IGNORE_INDEX = -100  # cross_entropy skips these labels (PyTorch's default)
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "step", "history", "rng")  # what train() saves and resumes
_CHECKPOINT_NAME = re.compile(rf"{CHECKPOINT_PREFIX}(\d+)")


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.1, eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW that decays matrices (including embeddings) but not biases and norm gains.

    Decaying a LayerNorm gain pulls it towards 0, which fights the normalisation; biases
    are too few to overfit. Same split as nanoGPT and the transformers examples.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    try:  # the fused kernel updates all parameters in one pass (CPU and CUDA, torch >= 2.4)
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=eps)


def make_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, num_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup for ``warmup_steps``, then cosine decay to 0 at ``num_steps``."""
    return get_cosine_schedule_with_warmup(optimizer, warmup_steps, num_steps)


def optimizer_and_scheduler(model: torch.nn.Module, recipe) -> tuple:
    """AdamW with decay on matrices only, and warmup then cosine, sized by ``recipe``.

    ``recipe`` is anything with ``lr``, ``weight_decay``, ``warmup_steps`` and ``num_steps``: 05's
    :class:`TrainConfig` or 04's ``helpers.pretraining.Recipe``.
    """
    optimizer = make_optimizer(model, recipe.lr, recipe.weight_decay)
    return optimizer, make_scheduler(optimizer, recipe.warmup_steps, recipe.num_steps)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one fine-tuning run needs; ``from_settings`` fills it for the current mode."""

    num_steps: int
    lr: float
    warmup_steps: int
    batch_size: int
    grad_accum_steps: int = 1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 50
    eval_batches: int = 8
    checkpoint_interval: int = 100
    keep_checkpoints: int = 2
    seed: int = 1234
    mixed_precision: str | None = None  # None: the runtime precision policy; or "no" / "bf16" / "fp16"
    log_interval: int = 1

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides) -> TrainConfig:
        """The mode's sizes from ``helpers.settings`` (05 uses this), with optional overrides."""
        s = settings or get_settings()
        values = dict(
            num_steps=s.num_steps, lr=s.lr, warmup_steps=s.warmup_steps, batch_size=s.batch_size,
            grad_accum_steps=s.grad_accum_steps, eval_interval=s.eval_interval,
            checkpoint_interval=max(1, s.num_steps // 3), seed=s.seed,
        )
        values.update(overrides)
        return cls(**values)


@functools.lru_cache(maxsize=4)
def block_order(num_blocks: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of blocks in one epoch: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_blocks)


def micro_batch(blocks, index: int, batch_size: int, seed: int) -> torch.Tensor:
    """The ``index``-th micro-batch of the endless, epoch-shuffled stream of blocks."""
    num_blocks = len(blocks)
    rows = []
    for position in range(index * batch_size, (index + 1) * batch_size):
        epoch, offset = divmod(position, num_blocks)
        rows.append(block_order(num_blocks, seed, epoch)[offset])
    return torch.from_numpy(np.stack([np.asarray(blocks[r], dtype=np.int64) for r in rows]))


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts token t+1 (labels shifted by one).

    This is what ``GPT2LMHeadModel(input_ids, labels=input_ids).loss`` computes; 05 writes it
    out and a test checks the two agree. 05 slices the logits (``logits[:, :-1]``), which is
    clearest; here the *labels* move instead: each position gets the next token as its label,
    the last position gets ``IGNORE_INDEX`` and drops out of the mean. Same number, but the
    (batch, block, vocab) logits, 200 MB for GPT-2 at 8 x 128, are neither copied forwards nor
    backwards.

    ``labels`` (same shape as ``input_ids``, ``IGNORE_INDEX`` where no loss is wanted) replace the
    tokens as targets: 09 passes the assistant-only labels, so only the replies are learned.
    """
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), next_token_targets(input_ids, labels).flatten(), ignore_index=IGNORE_INDEX
    )


def next_token_targets(input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The target of every position: the next token (or next label), ``IGNORE_INDEX`` at the last position."""
    targets = input_ids if labels is None else labels
    return torch.nn.functional.pad(targets[:, 1:], (0, 1), value=IGNORE_INDEX)


def labelled_lm_loss(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`causal_lm_loss` with the LM head computed only at the positions that have a target (09).

    The same number, for much less work when few positions are scored: with 09's assistant-only
    labels about 7 % of the positions hold a reply token, and in a small model the 50,257-way LM
    head is most of the cost of a step. transformers' ``logits_to_keep`` takes the boolean mask and
    returns the kept positions' logits, flattened.
    """
    targets = next_token_targets(input_ids, labels)
    keep = targets != IGNORE_INDEX
    if not keep.any():
        raise ValueError("no position of this batch has a label: every block needs at least one token to learn")
    logits = model(input_ids, logits_to_keep=keep).logits  # (kept positions, vocabulary)
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def batch_lm_loss(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The loss :func:`train` and :func:`evaluate_loss` take: every token its own target, or ``labels``' (09)."""
    if labels is None:
        return causal_lm_loss(model(input_ids).logits, input_ids)  # forward, then shifted-label cross-entropy
    return labelled_lm_loss(model, input_ids, labels)  # the LM head only where a label is


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, blocks, batch_size: int, max_batches: int, device, labels=None) -> float:
    """Mean next-token loss over the first ``max_batches`` batches of ``blocks`` (every scored token weighs the same).

    ``labels``: blocks of targets beside ``blocks`` (``IGNORE_INDEX`` where nothing is scored), as in :func:`train`.
    """
    total, count = 0.0, 0
    with eval_mode(model):
        for start in range(0, min(len(blocks), batch_size * max_batches), batch_size):
            rows = range(start, min(start + batch_size, len(blocks)))
            batch = torch.from_numpy(np.stack([np.asarray(blocks[i], dtype=np.int64) for i in rows])).to(device)
            targets = None if labels is None else torch.from_numpy(
                np.stack([np.asarray(labels[i], dtype=np.int64) for i in rows])).to(device)
            n = int(((batch if targets is None else targets)[:, 1:] != IGNORE_INDEX).sum())
            total += batch_lm_loss(model, batch, targets).item() * n
            count += n
    return total / max(count, 1)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(folder: Path, step: int, state: dict, keep: int) -> Path:
    """Write ``step-XXXXXX/`` atomically (``helpers.atomic.build_folder``) and keep the newest ``keep``.

    A crash at any moment leaves either the complete new checkpoint or none of it; what a
    killed save left behind is removed by the next one. ``state`` must hold tensors and plain
    values only (numbers, strings, lists, dicts), which is all ``weights_only`` loading accepts.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1 checkpoint, got {keep}")
    final = Path(folder) / f"{CHECKPOINT_PREFIX}{step:06d}"
    with build_folder(final) as building:
        torch.save(state, building / STATE_FILE)
        meta = {"step": step, "sha256": sha256_file(building / STATE_FILE), "saved_at": time.time()}
        (building / META_FILE).write_text(json.dumps(meta))
    for old in list_checkpoints(folder)[:-keep]:
        if old != final:  # never the one just written, even when a later step lies around
            remove_folder(old)
    return final


def checkpoint_step(path: Path) -> int | None:
    """The step number of a checkpoint folder's name (``step-000123`` -> 123), None for other names (05)."""
    match = _CHECKPOINT_NAME.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders, oldest first by step number (step-1000000 after step-999999); temporaries ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if checkpoint_step(p) is not None and p.is_dir()]
    return sorted(found, key=checkpoint_step)


def _read_meta(candidate: Path) -> dict:
    """``meta.json`` of a checkpoint, checked; a ``ValueError`` naming the file otherwise."""
    path = candidate / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not text ({error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds {type(meta).__name__}, not an object")
    if not isinstance(meta.get("sha256"), str) or not isinstance(meta.get("step"), int):
        raise ValueError(f"{path} lacks a 'sha256' string or a 'step' number")
    if meta["step"] != checkpoint_step(candidate):
        raise ValueError(f"{path} says step {meta['step']}, but the folder is {candidate.name}")
    return meta


def load_checkpoint(candidate: Path, required: tuple[str, ...] = CHECKPOINT_KEYS) -> dict:
    """The state saved in one checkpoint folder of ``05_finetuning_gpt2.ipynb``, checked against its checksum.

    Loaded with ``weights_only=True`` onto the CPU: a file that would need to run code to be
    read is refused. Raises ``ValueError`` (or ``OSError`` / ``pickle.UnpicklingError``)
    naming the file when anything is wrong.
    """
    meta = _read_meta(candidate)
    state_path = candidate / STATE_FILE
    if sha256_file(state_path) != meta["sha256"]:
        raise ValueError(f"{state_path} does not match the checksum in {META_FILE}")
    state = torch.load(state_path, weights_only=True, map_location="cpu")
    missing = [key for key in required if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"{state_path} lacks {', '.join(missing)}")
    return state


def load_latest_checkpoint(folder: Path, required: tuple[str, ...] = CHECKPOINT_KEYS) -> tuple[dict, Path] | None:
    """The newest checkpoint that is complete and uncorrupted, or None.

    A checkpoint whose save was killed between its two renames is put back first
    (``helpers.atomic.clean_leftovers``). A damaged one (missing files, checksum mismatch,
    unreadable or malformed ``meta.json``, a file that is not plain tensors and values) is
    skipped with a warning naming it, and the previous good one is used.
    """
    clean_leftovers(folder)
    for candidate in reversed(list_checkpoints(folder)):
        try:
            state = load_checkpoint(candidate, required)
        except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
            warnings.warn(f"skipping checkpoint {candidate.name} ({error}); trying the previous one", stacklevel=2)
            continue
        return state, candidate
    return None


def capture_rng_state() -> dict:
    """Python's, NumPy's and PyTorch's random states as tensors and plain lists (what ``weights_only`` loads).

    Saved in every checkpoint of ``05_finetuning_gpt2.ipynb``, so a resumed run draws the same numbers.
    """
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "numpy": [kind, keys.tolist(), position, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Put back the random states saved by :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- the loop


def make_accelerator(mixed_precision: str | None = None):
    """A fresh ``accelerate.Accelerator`` for one run of :func:`train` (05), in ``mixed_precision``.

    ``None`` means the runtime precision policy. accelerate keeps one ``AcceleratorState`` per
    process and refuses a second ``Accelerator`` with another precision ("AcceleratorState has
    already been initialized"), so a bf16 run followed by an fp32 one would crash. Each run
    therefore clears that state first, as transformers' ``TrainingArguments`` does; the process
    group (accelerate's ``PartialState``) is kept, so several processes still train together.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    device = pick_device()
    AcceleratorState._reset_state()  # accelerate's own reset, private but what transformers calls too
    return Accelerator(mixed_precision=mixed_precision or precision_policy(device).accelerate_name,
                       cpu=device.type == "cpu")


@dataclass
class TrainResult:
    """What ``train`` returns: the trained model (unwrapped) and its history, one dict per step."""

    model: torch.nn.Module
    history: list[dict]
    resumed_from: int
    seconds: float


def train(
    model: torch.nn.Module,
    train_blocks,
    valid_blocks,
    config: TrainConfig,
    checkpoint_dir: Path | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    on_log: Callable[[list[dict]], None] | None = None,
    progress: bool = True,
    train_labels=None,
    valid_labels=None,
) -> TrainResult:
    """Fine-tune ``model`` on token blocks; return the model and its training history (``05_finetuning_gpt2``).

    ``checkpoint_dir``: where ``step-XXXXXX/`` checkpoints go; with ``resume`` the newest good one is
    loaded and training continues exactly where it stopped. ``stop_after`` stops after that many steps
    (an interruption) without changing the schedule. ``on_log`` gets the history at every logged step.
    ``train_labels`` / ``valid_labels``: targets shaped like the blocks, ``IGNORE_INDEX`` where no loss
    is wanted (09's assistant-only loss); by default every token is its own target. Checkpoints do
    not record them: resume with the same labels.
    """
    _check_blocks(train_blocks, valid_blocks, train_labels, valid_labels)
    accelerator = make_accelerator(config.mixed_precision)
    world = accelerator.num_processes
    set_seed(config.seed + accelerator.process_index)  # each process its own dropout masks

    optimizer, scheduler = optimizer_and_scheduler(model, config)
    start_step, history = 0, []
    if checkpoint_dir is not None and resume:
        start_step, history = _resume(Path(checkpoint_dir), model, optimizer, scheduler, accelerator)
    model, optimizer = accelerator.prepare(model, optimizer)  # device placement, DDP, autocast

    tokens_per_step = config.batch_size * len(train_blocks[0]) * config.grad_accum_steps * world
    last_step = config.num_steps if stop_after is None else min(config.num_steps, start_step + stop_after)
    bar = progress_bar(range(start_step, last_step), progress and accelerator.is_main_process, initial=start_step,
                       total=config.num_steps, desc="training")
    model.train()
    started = time.perf_counter()
    with reuse_freed_memory() if accelerator.device.type == "cpu" else nullcontext():
        for step in bar:
            step_start = time.perf_counter()
            loss_sum = _accumulate_gradients(accelerator, model, train_blocks, config, step, train_labels)
            grad_norm = _optimizer_step(accelerator, model, optimizer, scheduler, config.grad_clip)
            record = {"step": step + 1, "loss": _mean_across(accelerator, loss_sum), "lr": scheduler.get_last_lr()[0],
                      "grad_norm": float(grad_norm), "tokens_per_s": tokens_per_step / (time.perf_counter() - step_start)}
            if (step + 1) % config.eval_interval == 0 or step + 1 == config.num_steps:
                record["valid_loss"] = evaluate_loss(accelerator.unwrap_model(model), valid_blocks, config.batch_size,
                                                     config.eval_batches, accelerator.device, valid_labels)
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.1e}", tok_s=f"{record['tokens_per_s']:.0f}")
            if on_log and accelerator.is_main_process and (step + 1) % config.log_interval == 0:
                on_log(history)
            if checkpoint_dir is not None and _checkpoint_due(step + 1, last_step, config):
                _checkpoint(accelerator, model, optimizer, scheduler, step + 1, history, Path(checkpoint_dir), config.keep_checkpoints)
    bar.close()
    accelerator.wait_for_everyone()
    # keep_fp32_wrapper=False: the model comes back computing as it was loaded, not under the loop's autocast
    return TrainResult(accelerator.unwrap_model(model, keep_fp32_wrapper=False), history, start_step,
                       time.perf_counter() - started)


def _check_blocks(train_blocks, valid_blocks, train_labels, valid_labels) -> None:
    """A clear error for empty training data or labels that do not match their blocks."""
    if len(train_blocks) == 0:
        raise ValueError("train_blocks is empty: prepare the data first (helpers.data.prepare)")
    for blocks, labels, name in ((train_blocks, train_labels, "train"), (valid_blocks, valid_labels, "valid")):
        if labels is not None and np.shape(labels) != np.shape(blocks):
            raise ValueError(f"{name}_labels has shape {np.shape(labels)}, but {name}_blocks {np.shape(blocks)}; "
                             "give one label per token")


def _checkpoint_due(done: int, last_step: int, config: TrainConfig) -> bool:
    """Checkpoint every ``checkpoint_interval`` steps, when a run stops early, and at the end."""
    return done % config.checkpoint_interval == 0 or done in (last_step, config.num_steps)


def _resume(folder: Path, model, optimizer, scheduler, accelerator) -> tuple[int, list[dict]]:
    """Load the newest good checkpoint into the model, optimizer, scheduler and random states."""
    found = load_latest_checkpoint(folder)
    if not found:
        return 0, []
    state, path = found
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    restore_rng_state(rng[accelerator.process_index] if isinstance(rng, list) else rng)
    accelerator.print(f"resumed from {path.name} (step {state['step']})")
    return state["step"], state["history"]


def _accumulate_gradients(accelerator, model, train_blocks, config: TrainConfig, step: int, train_labels=None) -> float:
    """Forward and backward over this process's micro-batches of one optimizer step; the summed loss."""
    world, rank = accelerator.num_processes, accelerator.process_index
    loss_sum = 0.0
    for micro in range(config.grad_accum_steps):
        # Global micro-batch index: this process takes every world-th one of this step's share.
        index = (step * config.grad_accum_steps + micro) * world + rank
        batch = micro_batch(train_blocks, index, config.batch_size, config.seed).to(accelerator.device)
        labels = None if train_labels is None else micro_batch(train_labels, index, config.batch_size, config.seed).to(
            accelerator.device)  # the same rows: the order depends only on (seed, epoch, number of blocks)
        sync = micro == config.grad_accum_steps - 1
        with nullcontext() if sync else accelerator.no_sync(model):
            loss = batch_lm_loss(model, batch, labels) / config.grad_accum_steps
            accelerator.backward(loss)  # gradients add up over micro-batches
        loss_sum += loss.item()
    return loss_sum


def _optimizer_step(accelerator, model, optimizer, scheduler, grad_clip: float) -> torch.Tensor:
    """Clip, step, schedule, zero the gradients; the gradient norm before clipping."""
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _mean_across(accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    tensor = torch.tensor([value], device=accelerator.device)
    return accelerator.reduce(tensor, reduction="mean").item()


def _checkpoint(accelerator, model, optimizer, scheduler, step, history, folder, keep) -> None:
    from accelerate.utils import gather_object

    rng = gather_object([capture_rng_state()]) if accelerator.num_processes > 1 else capture_rng_state()
    if accelerator.is_main_process:
        state = {"model": accelerator.unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "step": step, "history": history, "rng": rng}
        save_checkpoint(folder, step, state, keep)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    """``python -m helpers.training``: the same fine-tuning as 05, from a config, for scaling out.

    ``accelerate launch --num_processes 2 -m helpers.training --out DIR`` or
    ``torchrun --nproc_per_node 2 -m helpers.training --out DIR`` run it on several GPUs
    (or CPU processes with gloo); the settings of the current mode fill what is not given.
    """
    parser = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="JSON file with TrainConfig fields")
    parser.add_argument("--out", type=Path, required=True, help="folder for checkpoints, the final model and history.json")
    parser.add_argument("--model", help="a folder or hub id (default: the course's resolution order)")
    for field in ("num_steps", "batch_size", "grad_accum_steps", "eval_interval", "checkpoint_interval"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--no-resume", action="store_true")
    args = parser.parse_args(argv)

    model, _ = load_model(resolve_model_source(get_settings(), course_model=args.model))
    settings = fit_block_size(get_settings(), model)
    overrides = json.loads(args.config.read_text()) if args.config else {}
    overrides.update({k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None})
    config = TrainConfig.from_settings(settings, **overrides)
    data = prepare(settings=settings, progress=False, verbose=int(os.environ.get("RANK", "0")) == 0)
    result = train(model, data.dataset("train").blocks, data.dataset("validation").blocks, config,
                   checkpoint_dir=args.out / "checkpoints", resume=not args.no_resume)
    if int(os.environ.get("RANK", "0")) == 0:
        with build_folder(args.out / "model") as folder:
            result.model.save_pretrained(folder)
        write_text_atomic(args.out / "history.json", json.dumps({"config": asdict(config), "history": result.history}, indent=1))
        last = result.history[-1]
        print(f"done: {len(result.history)} steps, loss {last['loss']:.3f}, model in {args.out / 'model'}")


if __name__ == "__main__":
    main()
