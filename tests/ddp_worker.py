"""Worker for test_training's multi-process check: train a few steps, save the parameters.

Run as ``torchrun --nproc_per_node N tests/ddp_worker.py OUT ACCUM`` (gloo on CPU) or plainly
with one process. Tiny sizes so it takes seconds.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from helpers.training import TrainConfig, train

torch.set_num_threads(1)  # two processes on two cores
out, accum = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
config_kwargs = dict(n_layer=2, n_embd=32, n_head=2, n_positions=32, vocab_size=512, bos_token_id=0, eos_token_id=0)
# No dropout: one process draws different dropout masks than two, which is not what is compared.
model = GPT2LMHeadModel(GPT2Config(**config_kwargs, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
rng = np.random.default_rng(0)
blocks = rng.integers(0, 512, (64, 16)).astype(np.uint16)
config = TrainConfig(num_steps=4, lr=1e-3, warmup_steps=1, batch_size=4, grad_accum_steps=accum, eval_interval=100,
                     mixed_precision="no")
result = train(model, blocks, blocks[:8], config, progress=False)
if int(os.environ.get("RANK", "0")) == 0:
    torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, out)
