"""training: the written-out loss, learning, exact resume, damaged checkpoints, several processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from helpers.runtime import cpu_supports_bf16
from helpers.serving.cli import free_port
from helpers.training import (
    TrainConfig,
    capture_rng_state,
    causal_lm_loss,
    list_checkpoints,
    load_latest_checkpoint,
    make_optimizer,
    micro_batch,
    restore_rng_state,
    save_checkpoint,
    train,
)

REPO = Path(__file__).resolve().parent.parent


TRAINING_SHAPE = dict(n_positions=32)  # small: every test trains in about a second on one core


@pytest.fixture(scope="module")
def blocks():
    rng = np.random.default_rng(0)
    # a learnable stream: a repeating pattern of 16 tokens, so the loss can really fall
    pattern = rng.integers(0, 1000, 16)
    train = np.stack([np.roll(pattern, -i) for i in range(48)]).astype(np.uint16)
    return train, train[:8]


def config(**overrides) -> TrainConfig:
    values = dict(num_steps=8, lr=3e-3, warmup_steps=1, batch_size=4, eval_interval=4, checkpoint_interval=2,
                  mixed_precision="no")
    values.update(overrides)
    return TrainConfig(**values)


def test_written_out_loss_equals_the_models_own(blocks, random_gpt2):
    model = random_gpt2(**TRAINING_SHAPE)
    batch = torch.from_numpy(blocks[0][:3].astype(np.int64))
    out = model(batch, labels=batch)  # transformers shifts the labels itself
    assert torch.allclose(causal_lm_loss(out.logits, batch), out.loss, atol=1e-6)


def test_written_out_loss_has_the_models_gradient(blocks, random_gpt2):
    """The helper shifts the labels instead of slicing the logits: same gradient as transformers' loss."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    batch = torch.from_numpy(blocks[0][:3].astype(np.int64))
    logits = random_gpt2(**TRAINING_SHAPE)(batch).logits.detach()
    ours = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    causal_lm_loss(ours, batch).backward()
    ForCausalLMLoss(theirs, batch, vocab_size=logits.size(-1)).backward()
    assert theirs.grad[:, -1].abs().sum() == 0  # the last position predicts nothing
    assert torch.allclose(ours.grad, theirs.grad, atol=1e-9)


def test_optimizer_skips_decay_on_biases_and_norms(random_gpt2):
    model = random_gpt2(**TRAINING_SHAPE)
    decay, no_decay = make_optimizer(model, lr=1e-3).param_groups
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    ln_gain = model.transformer.ln_f.weight
    assert any(p is ln_gain for p in no_decay["params"])


def test_micro_batches_cover_each_block_once_per_epoch():
    train_blocks = np.arange(48 * 16, dtype=np.uint16).reshape(48, 16)  # every row different
    seen = torch.cat([micro_batch(train_blocks, i, 4, seed=1) for i in range(len(train_blocks) // 4)])
    rows = {tuple(r.tolist()) for r in seen}
    assert len(rows) == len(train_blocks)
    assert torch.equal(micro_batch(train_blocks, 3, 4, seed=1), micro_batch(train_blocks, 3, 4, seed=1))


def test_loss_decreases(blocks, random_gpt2):
    result = train(random_gpt2(**TRAINING_SHAPE), *blocks, config(num_steps=12), progress=False)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert "valid_loss" in result.history[3] and {"lr", "tokens_per_s", "grad_norm"} <= result.history[0].keys()


def test_resume_gives_identical_parameters(blocks, tmp_path, random_gpt2):
    straight = train(random_gpt2(**TRAINING_SHAPE), *blocks, config(), progress=False).model
    first = train(random_gpt2(**TRAINING_SHAPE), *blocks, config(), checkpoint_dir=tmp_path, stop_after=4, progress=False)
    assert first.history[-1]["step"] == 4
    resumed = train(random_gpt2(seed=99, **TRAINING_SHAPE), *blocks, config(), checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from == 4
    assert len(resumed.history) == 8
    for (name, a), b in zip(straight.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoints_are_complete_and_pruned(blocks, tmp_path, random_gpt2):
    train(random_gpt2(**TRAINING_SHAPE), *blocks, config(keep_checkpoints=2), checkpoint_dir=tmp_path, progress=False)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step-000006", "step-000008"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_corrupt_latest_checkpoint_falls_back_to_previous(blocks, tmp_path, random_gpt2):
    train(random_gpt2(**TRAINING_SHAPE), *blocks, config(), checkpoint_dir=tmp_path, progress=False)
    latest = list_checkpoints(tmp_path)[-1]
    state_file = latest / "state.pt"
    state_file.write_bytes(state_file.read_bytes()[:1000])  # a torn write
    with pytest.warns(UserWarning, match=latest.name):
        state, path = load_latest_checkpoint(tmp_path)
    assert path.name == "step-000006" and state["step"] == 6


def test_partial_checkpoint_folder_is_ignored(blocks, tmp_path, random_gpt2):
    train(random_gpt2(**TRAINING_SHAPE), *blocks, config(), checkpoint_dir=tmp_path, stop_after=2, progress=False)
    partial = tmp_path / ".tmp-step-000004-123"
    shutil.copytree(list_checkpoints(tmp_path)[-1], partial)
    (tmp_path / "step-000009").mkdir()  # a folder with nothing in it
    with pytest.warns(UserWarning, match="step-000009"):
        _, path = load_latest_checkpoint(tmp_path)
    assert path.name == "step-000002"


@pytest.mark.parametrize("meta", ["null", "[]", '"step"', "{}", '{"step": 8}', '{"sha256": "ab", "step": "8"}',
                                  "{half"], ids=["null", "list", "string", "empty", "no-sha", "step-text", "torn"])
def test_any_damage_of_meta_json_falls_back_with_a_warning_naming_the_file(blocks, tmp_path, meta, random_gpt2):
    """The finding: meta.json holding null or [] raised TypeError instead of falling back."""
    train(random_gpt2(**TRAINING_SHAPE), *blocks, config(), checkpoint_dir=tmp_path, progress=False)
    latest = list_checkpoints(tmp_path)[-1]
    (latest / "meta.json").write_text(meta)
    with pytest.warns(UserWarning, match=f"{latest.name}.*meta.json"):
        state, path = load_latest_checkpoint(tmp_path)
    assert path.name == "step-000006" and state["step"] == 6


def test_a_checkpoint_missing_part_of_its_state_is_skipped(tmp_path):
    save_checkpoint(tmp_path, 1, {"model": {}, "optimizer": {}, "scheduler": {}, "step": 1, "history": [],
                                  "rng": capture_rng_state()}, keep=2)
    save_checkpoint(tmp_path, 2, {"model": {}, "step": 2}, keep=2)  # checksum fine, but not a training state
    with pytest.warns(UserWarning, match="step-000002.*lacks optimizer, scheduler, history, rng"):
        state, path = load_latest_checkpoint(tmp_path)
    assert path.name == "step-000001"


def test_checkpoints_are_ordered_by_step_number_not_by_name(tmp_path):
    """The finding: step 1,000,000 sorted before 999,999 by name, so the checkpoint just saved was pruned."""
    state = {"model": {}, "optimizer": {}, "scheduler": {}, "history": [], "rng": capture_rng_state()}
    for step in (999_998, 999_999, 1_000_000):
        save_checkpoint(tmp_path, step, {**state, "step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-999999", "step-1000000"]
    assert load_latest_checkpoint(tmp_path)[0]["step"] == 1_000_000
    save_checkpoint(tmp_path, 3, {**state, "step": 3}, keep=1)  # an older step, saved later: it is kept
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003", "step-1000000"]


def test_random_states_survive_a_weights_only_round_trip(tmp_path):
    import random

    saved = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.save(saved, tmp_path / "rng.pt")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_empty_data_is_a_clear_error(random_gpt2):
    with pytest.raises(ValueError, match="empty"):
        train(random_gpt2(**TRAINING_SHAPE), np.zeros((0, 16), dtype=np.uint16), None, config(), progress=False)


def test_train_runs_twice_in_one_process_in_different_precisions(blocks, random_gpt2):
    """bf16 then fp32 (fp32 twice on a CPU without native bf16): each run gets the precision it asks for."""
    from accelerate.state import AcceleratorState

    batch = torch.from_numpy(blocks[1][:2].astype(np.int64))
    for precision in ("bf16" if cpu_supports_bf16() else "no", "no"):
        result = train(random_gpt2(**TRAINING_SHAPE), *blocks, config(num_steps=2, mixed_precision=precision),
                       progress=False)
        assert AcceleratorState().mixed_precision == precision
        assert len(result.history) == 2
        assert result.model(batch).logits.dtype == torch.float32  # no autocast left on the returned model


def test_train_sets_its_precision_whatever_ran_before(blocks, random_gpt2):
    """What transformers.Trainer leaves behind after a bf16 run (05, bench) must not decide the next run."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # whatever earlier tests left
    Accelerator(mixed_precision="bf16", cpu=True)
    train(random_gpt2(**TRAINING_SHAPE), *blocks, config(num_steps=1), progress=False)
    assert AcceleratorState().mixed_precision == "no"


@pytest.mark.slow
def test_two_processes_match_one_with_doubled_accumulation(tmp_path):
    """torchrun with gloo on CPU: 2 processes x accumulation 1 == 1 process x accumulation 2."""
    worker = REPO / "tests" / "ddp_worker.py"
    # Loopback only, a free port, no restarts: a sandbox whose hostname resolves to an unreachable address
    # (or a port another run holds) must fail within the timeout, never hang.
    env_cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "0",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    subprocess.run([sys.executable, str(worker), str(tmp_path / "one.pt"), "2"], check=True, cwd=REPO, timeout=300)
    subprocess.run([*env_cmd, str(worker), str(tmp_path / "two.pt"), "1"], check=True, cwd=REPO, env=env, timeout=300)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5), name
    initial = tiny_reference_differs(one)
    assert initial, "training must have changed the parameters"


def tiny_reference_differs(trained: dict) -> bool:
    torch.manual_seed(0)
    fresh = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=32, vocab_size=512,
                                       bos_token_id=0, eos_token_id=0))
    return any(not torch.equal(trained[k], v) for k, v in fresh.state_dict().items())
