"""Run by tests/test_train.py under ``torchrun``: train the tiny codec a few steps."""

from __future__ import annotations

import sys

import torch

from codec.train import finish_distributed, train
from tests.test_train import tiny_params

if __name__ == "__main__":
    data, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    result = train(tiny_params(steps=3), data, out)
    print(f"rank {result.rank} of {result.world_size} done at step {result.step}")
    finish_distributed()
