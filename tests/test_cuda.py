"""What only a CUDA machine can check: bf16 autocast in the training loop and the fused AdamW kernel.

Skipped without CUDA; ``make gpu-check`` runs them with ``-m cuda`` and fails when any is skipped.
The serving engine on CUDA is checked in ``tests/test_serving_engine.py`` (also marked ``cuda``).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from helpers.runtime import precision_policy
from helpers.training import TrainConfig, make_optimizer, train

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


CUDA_SHAPE = dict(n_head=4, n_embd=64, vocab_size=512)


def test_training_loop_runs_under_the_policys_autocast_on_cuda(random_gpt2):
    policy = precision_policy(torch.device("cuda"))
    model = random_gpt2(**CUDA_SHAPE)
    seen = []
    model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    blocks = np.random.default_rng(0).integers(0, 512, (16, 32)).astype(np.uint16)
    config = TrainConfig(num_steps=3, lr=1e-3, warmup_steps=1, batch_size=4, eval_interval=3, checkpoint_interval=10**9)
    result = train(model, blocks, blocks[:4], config, progress=False)
    assert seen and set(seen) == {policy.autocast_dtype}  # every matmul of the loop ran in the policy's dtype
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in result.model.parameters())  # fp32 master weights
    assert all(np.isfinite(h["loss"]) for h in result.history) and np.isfinite(result.history[-1]["valid_loss"])


def test_make_optimizer_uses_the_fused_adamw_kernel_and_matches_the_reference_on_cuda(random_gpt2):
    model = random_gpt2(**CUDA_SHAPE).cuda().eval()  # no dropout: both runs see the same gradients
    reference_model = copy.deepcopy(model)
    ours = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert all(group["fused"] for group in ours.param_groups)
    decay = [p for p in reference_model.parameters() if p.dim() >= 2]
    no_decay = [p for p in reference_model.parameters() if p.dim() < 2]
    reference = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.95), eps=1e-8, fused=False, foreach=False)
    batch = torch.randint(0, 512, (4, 32), device="cuda")
    for m, optimizer in ((model, ours), (reference_model, reference)):
        for _ in range(3):
            m(batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for a, b in zip(model.parameters(), reference_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # a step moves weights by ~lr = 1e-3
