"""Run by tests/test_train.py under ``torchrun``: train the tiny codec a few steps."""

from __future__ import annotations

import sys

import torch

from codec.training.loop import train
from codec.training.runtime import finish_distributed
from tests.test_train import tiny_params

if __name__ == "__main__":
    data, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    if sys.argv[3:] == ["adversarial"]:
        from tests.test_discriminator import adversarial_params

        result = train(adversarial_params(steps=4, adv_start_step=1), data, out)
    else:
        result = train(tiny_params(steps=3), data, out)
    print(f"rank {result.rank} of {result.world_size} done at step {result.step}")
    finish_distributed()
