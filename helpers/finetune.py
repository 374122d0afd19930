"""Notebook 05's whole job in one call, so later notebooks can rebuild it, and the Trainer twin.

Introduced in ``05_finetuning_gpt2.ipynb``:

* :func:`finetune` runs prepare -> load the base -> :func:`helpers.training.train` -> save, and
  :func:`load_finetuned` returns the fine-tuned model, calling :func:`finetune` first when
  ``artifacts/models/finetuned`` is missing or was made in another mode (07, 10 and 11 use it
  so each notebook also runs alone).
* :func:`trainer_arguments` and :func:`run_trainer` run the same fine-tuning through
  ``transformers.Trainer`` for comparison (05 and ``bench/bench_training.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from helpers.atomic import build_folder, clean_leftovers
from helpers.data import prepare
from helpers.models import fit_block_size, load_model, load_pretrained, load_tokenizer, resolve_model_source
from helpers.runtime import pick_device, precision_policy
from helpers.settings import Settings, display_path, get_settings
from helpers.training import TrainConfig, TrainResult, train

FINETUNED_DIR = "models/finetuned"  # under artifacts/
CHECKPOINT_DIR = "checkpoints/finetune-{mode}"  # under artifacts/; one per mode, so sizes never mix
TRAINING_INFO = "training.json"


def finetuned_dir(settings: Settings | None = None) -> Path:
    """Where notebook 05's fine-tuned model is saved: ``artifacts/models/finetuned`` (06 prints it)."""
    return (settings or get_settings()).artifacts_dir / FINETUNED_DIR


def checkpoint_dir(settings: Settings | None = None) -> Path:
    """Notebook 05's checkpoint folder for the current mode (each mode its own, so sizes never mix)."""
    settings = settings or get_settings()
    return settings.artifacts_dir / CHECKPOINT_DIR.format(mode=settings.mode)


def save_finetuned(model, tokenizer, result: TrainResult, config: TrainConfig, base: str,
                   settings: Settings | None = None) -> Path:
    """Save model, tokenizer (always beside the model) and ``training.json``, atomically.

    Introduced in ``05_finetuning_gpt2.ipynb``; the folder appears whole or not at all
    (``helpers.atomic.build_folder``).
    """
    settings = settings or get_settings()
    target = finetuned_dir(settings)
    with build_folder(target) as building:
        model.save_pretrained(building)
        tokenizer.save_pretrained(building)
        info = {"base_model": display_path(base, settings) if Path(base).exists() else base, "mode": settings.mode,
                "config": asdict(config), "seconds": result.seconds, "history": result.history}
        (building / TRAINING_INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return target


def finetune(settings: Settings, progress: bool = True, on_log=None) -> Path:
    """Fine-tune the course's base model on the prepared Shakespeare and save it (05's pipeline)."""
    source = resolve_model_source(settings)
    model, _ = load_model(source)
    tokenizer = load_tokenizer(source)
    settings = fit_block_size(settings, model)
    data = prepare(settings=settings, progress=progress)
    config = TrainConfig.from_settings(settings)
    result = train(model, data.dataset("train").blocks, data.dataset("validation").blocks, config,
                   checkpoint_dir=checkpoint_dir(settings), progress=progress, on_log=on_log)
    return save_finetuned(result.model, tokenizer, result, config, source.location, settings)


def load_finetuned(settings: Settings | None = None, progress: bool = True):
    """``(model, tokenizer, training_info)`` of notebook 05's model, rebuilding it when missing.

    Used by 07, 10 and 11. A model made in another mode is rebuilt, so the sizes match.
    """
    settings = settings or get_settings()
    folder = finetuned_dir(settings)
    clean_leftovers(folder.parent)  # puts the model back if a save was killed between its two renames
    info_file = folder / TRAINING_INFO
    info = json.loads(info_file.read_text()) if info_file.is_file() else None
    if info is None or info.get("mode") != settings.mode:
        why = "it does not exist yet" if info is None else f"it was made in {info.get('mode')} mode"
        print(f"fine-tuning first, because {display_path(folder, settings)} is needed and {why} (the same call as notebook 05)")
        finetune(settings, progress=progress)
        info = json.loads(info_file.read_text())
    model, tokenizer = load_pretrained(folder)
    return model, tokenizer, info


# ---------------------------------------------------------------- the same job through Trainer


class _BlocksAsExamples(torch.utils.data.Dataset):
    """Token blocks as ``{"input_ids", "labels"}`` examples; the model shifts the labels itself."""

    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(np.asarray(self.blocks[index], dtype=np.int64))
        return {"input_ids": ids, "labels": ids}


def trainer_arguments(config: TrainConfig, output_dir: Path, num_steps: int | None = None):
    """``TrainingArguments`` equivalent to ``config`` (same optimizer, schedule, clipping, precision)."""
    from transformers import TrainingArguments

    device = pick_device()
    policy = precision_policy(device)
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=num_steps or config.num_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum_steps,
        learning_rate=config.lr,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.95,
        max_grad_norm=config.grad_clip,
        eval_strategy="steps",
        eval_steps=config.eval_interval,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        use_cpu=device.type == "cpu",
        bf16=policy.autocast_dtype is torch.bfloat16,
        fp16=policy.autocast_dtype is torch.float16,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def run_trainer(model, train_blocks, valid_blocks, config: TrainConfig, output_dir: Path,
                num_steps: int | None = None) -> dict:
    """Fine-tune with ``transformers.Trainer``; return its history, seconds and tokens/s."""
    from transformers import PrinterCallback, Trainer

    args = trainer_arguments(config, output_dir, num_steps)
    eval_rows = min(len(valid_blocks), config.batch_size * config.eval_batches)
    trainer = Trainer(model=model, args=args, train_dataset=_BlocksAsExamples(train_blocks),
                      eval_dataset=_BlocksAsExamples(valid_blocks[:eval_rows]))
    trainer.remove_callback(PrinterCallback)  # it prints every log line; the history below keeps them
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logs = trainer.state.log_history
    history = [{"step": r["step"], "loss": r["loss"]} for r in logs if "loss" in r]
    evals = {r["step"]: r["eval_loss"] for r in logs if "eval_loss" in r}
    for row in history:
        if row["step"] in evals:
            row["valid_loss"] = evals[row["step"]]
    tokens = args.max_steps * config.batch_size * config.grad_accum_steps * len(train_blocks[0])
    return {"history": history, "seconds": seconds, "tokens_per_s": tokens / seconds, "model": trainer.model}
