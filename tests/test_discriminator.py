"""Adversarial training: discriminator shapes, one trainer step, that it learns, and the
training loop with ``train.adversarial`` on (logging, checkpoint, resume)."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codec.model.discriminator import AdversarialTrainer, Discriminators, PeriodDiscriminator, STFTDiscriminator
from codec.training.loop import train
from tests.test_train import REPO, _weights, data, tiny_params  # noqa: F401 - data is a fixture

SMALL = {"period_channels": (4, 8), "stft_channels": 4, "stft_sizes": (128, 64)}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # As in test_train.py (its autouse fixture doesn't reach this module): two threads on
    # a shared 2-core box oversubscribe, and these tiny convolutions run 4-20x slower.
    torch.set_num_threads(1)


def test_sub_discriminator_shapes() -> None:
    x = torch.randn(2, 1, 4001)  # not a multiple of the period
    logits, feats = PeriodDiscriminator(3, (4, 8))(x)
    assert logits.shape[0] == 2 and logits.shape[1] == 1 and logits.shape[-1] == 3
    assert [f.shape[1] for f in feats] == [4, 8, 8]
    logits, feats = STFTDiscriminator(128, 4)(x)
    frames, bins = 4001 // 32 + 1, 65
    assert logits.shape == (2, 1, frames, math.ceil(bins / 8))
    assert len(feats) == 5 and all(f.shape[2] == frames for f in feats)
    outs = Discriminators(16000, periods=(2, 3), **SMALL)(x)
    assert len(outs) == 4


def test_trainer_step_updates_the_discriminators_and_passes_gradients_to_the_decoder_output() -> None:
    trainer = AdversarialTrainer(16000, 1e-3, (0.8, 0.99), 1.0, torch.device("cpu"), seed=0, **SMALL)
    before = {k: v.clone() for k, v in trainer.disc.state_dict().items()}
    x = torch.randn(2, 1, 4000) * 0.1
    y = (x + 0.05 * torch.randn_like(x)).requires_grad_(True)
    losses = trainer.step(x, y, None)
    assert set(losses) == {"adv/gen_loss", "adv/feat_loss", "adv/disc_loss", "adv/disc_grad_norm"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert not losses["adv/disc_loss"].requires_grad
    changed = [k for k, v in trainer.disc.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # one optimizer step on the discriminators
    grads = [None if p.grad is None else p.grad.clone() for p in trainer.disc.parameters()]
    (losses["adv/gen_loss"] + losses["adv/feat_loss"]).backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0
    # The generator's terms add nothing to the discriminators' gradients ...
    for p, g in zip(trainer.disc.parameters(), grads, strict=True):
        assert (p.grad is None and g is None) or (p.grad is not None and g is not None and torch.equal(p.grad, g))
    assert all(p.requires_grad for p in trainer.disc.parameters())  # ... and leave them trainable


def test_discriminators_learn_to_tell_speechlike_tones_from_noise() -> None:
    torch.manual_seed(0)
    trainer = AdversarialTrainer(16000, 2e-3, (0.5, 0.9), 1.0, torch.device("cpu"), seed=1, **SMALL)
    t = torch.arange(4000) / 16000

    def real_batch() -> torch.Tensor:
        f0 = 100 + 150 * torch.rand(4, 1, 1)
        return 0.3 * torch.sin(2 * torch.pi * f0 * t) * torch.sin(torch.pi * t / t[-1])

    first, last = [], []
    for i in range(40):
        fake = 0.3 * torch.randn(4, 1, 4000)
        loss = float(trainer.step(real_batch(), fake.requires_grad_(True), None)["adv/disc_loss"])
        (first if i < 5 else last if i >= 35 else []).append(loss)
    # LSGAN: (r - 1)² + f² is 0.5 for outputs of 0.5 on everything (no telling apart).
    assert sum(last) / len(last) < 0.5 * sum(first) / len(first)
    assert sum(last) / len(last) < 0.4


def adversarial_params(**overrides: object):  # type: ignore[no-untyped-def]
    base = tiny_params(
        steps=6,
        checkpoint_every=3,
        adversarial=True,
        disc_lr=1e-3,
        adv_start_step=2,
        disc_channels=(4, 8),
        disc_stft_channels=4,
        loss_weights={"loss/l1": 10.0, "loss/mel": 1.0, "adv/gen_loss": 1.0, "adv/feat_loss": 2.0},
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_adversarial_training_logs_checkpoints_and_resumes(data: Path, tmp_path: Path) -> None:  # noqa: F811
    seen: list[dict[str, float]] = []
    full = train(
        adversarial_params(),
        data,
        tmp_path / "full",
        callback=lambda kind, step, m: seen.append(m) if kind == "train" else None,
    )
    assert full.step == 6
    assert "adv/gen_loss" not in seen[0]  # before adv_start_step
    late = seen[-1]
    assert {"adv/gen_loss", "adv/feat_loss", "adv/disc_loss", "adv/disc_grad_norm", "adv/lr"} <= set(late)
    assert all(math.isfinite(late[k]) for k in ("adv/gen_loss", "adv/feat_loss", "adv/disc_loss"))
    ckpt = torch.load(full.checkpoint_path, weights_only=True)
    assert {"model", "optimizer", "scheduler"} <= set(ckpt["adversarial"])
    assert any(k.startswith("subs.") for k in ckpt["adversarial"]["model"])

    # Stopped after step 3 (a checkpoint), then resumed: the same weights as without the stop.
    stopped = train(adversarial_params(), data, tmp_path / "resumed", stop_after=3)
    assert stopped.step == 3
    resumed = train(adversarial_params(resume=True), data, tmp_path / "resumed")
    assert resumed.step == 6
    a, b = _weights(full.checkpoint_path), _weights(resumed.checkpoint_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    da = torch.load(full.checkpoint_path, weights_only=True)["adversarial"]["model"]
    db = torch.load(resumed.checkpoint_path, weights_only=True)["adversarial"]["model"]
    assert all(torch.equal(da[k], db[k]) for k in da)


def test_time_limit_stops_with_a_checkpoint(data: Path, tmp_path: Path) -> None:  # noqa: F811
    result = train(tiny_params(steps=100_000, time_limit_s=0.5), data, tmp_path / "out")
    assert 0 < result.step < 100_000
    assert torch.load(result.checkpoint_path, weights_only=True)["step"] == result.step


@pytest.mark.parametrize("bad", [{"adv_start_step": -1}, {"time_limit_s": -1.0}])
def test_negative_adversarial_settings_are_user_errors(bad: dict[str, float]) -> None:
    from codec.errors import UserError

    with pytest.raises(UserError, match="must not be negative"):
        tiny_params(**bad).check()


def test_two_process_ddp_adversarial_matches_one_process(data: Path, tmp_path: Path) -> None:  # noqa: F811
    # The discriminators' gradients are averaged across ranks like the codec's: two
    # processes with half the batch each end where one process with the whole batch does.
    single = train(adversarial_params(steps=4, adv_start_step=1), data, tmp_path / "single")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "tests" / "ddp_worker.py"), str(data), str(tmp_path / "ddp"), "adversarial"],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1 of 2 done at step 4" in proc.stdout
    one = torch.load(single.model_path, weights_only=True)
    two = torch.load(tmp_path / "ddp" / "codec.pt", weights_only=True)
    for k in one["model"]:
        torch.testing.assert_close(one["model"][k], two["model"][k], atol=1e-4, rtol=1e-3, msg=k)
    d1 = torch.load(single.checkpoint_path, weights_only=True)["adversarial"]["model"]
    d2 = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)["adversarial"]["model"]
    for k in d1:
        torch.testing.assert_close(d1[k], d2[k], atol=1e-4, rtol=1e-3, msg=k)
