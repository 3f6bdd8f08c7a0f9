"""The learning-rate multipliers of ldm.lr_scheduler: warm-up, cosine and linear decay, cycles,
logging instead of printing, and use through torch's LambdaLR."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from ldm.lr_scheduler import LambdaLinearScheduler, LambdaWarmUpCosineScheduler, LambdaWarmUpCosineScheduler2


def test_warm_up_cosine_values():
    s = LambdaWarmUpCosineScheduler(warm_up_steps=10, lr_min=0.1, lr_max=1.0, lr_start=0.0, max_decay_steps=110)
    assert s(0) == pytest.approx(0.0)
    assert s(5) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.1 + 0.45 * (1 + math.cos(0.5 * math.pi)))  # halfway through the decay
    assert s(110) == pytest.approx(0.1)
    assert s(10_000) == pytest.approx(0.1)  # stays at lr_min after the decay
    assert s.last_lr == pytest.approx(0.1)


def test_warm_up_cosine_rejects_decay_shorter_than_warm_up():
    with pytest.raises(ValueError, match="max_decay_steps"):
        LambdaWarmUpCosineScheduler(warm_up_steps=10, lr_min=0.1, lr_max=1.0, lr_start=0.0, max_decay_steps=10)


def test_cosine_cycles():
    s = LambdaWarmUpCosineScheduler2(warm_up_steps=[2, 4], f_min=[0.0, 0.5], f_max=[1.0, 2.0], f_start=[0.5, 0.0],
                                     cycle_lengths=[10, 20])
    assert s(0) == pytest.approx(0.5)
    assert s(1) == pytest.approx(0.75)
    assert s(10) == pytest.approx(0.0)  # the end of the first cycle belongs to it
    assert s.find_in_interval(11) == 1
    assert s(12) == pytest.approx(1.0)  # second cycle, step 2 of its 4-step warm-up from 0 to 2
    assert s(30) == pytest.approx(0.5)
    assert s.find_in_interval(1_000) == 1  # past the last cycle: stays in it
    assert s(1_000) == pytest.approx(0.5)


def test_linear_scheduler_as_in_the_configs():
    # configs/latent-diffusion/lsun_churches-ldm-kl-8.yaml
    s = LambdaLinearScheduler(warm_up_steps=[10000], cycle_lengths=[10000000000000], f_start=[1.e-6], f_max=[1.],
                              f_min=[1.])
    assert s(0) == pytest.approx(1e-6)
    assert s(5000) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert s(10000) == pytest.approx(1.0)
    assert s(123456) == pytest.approx(1.0)
    decaying = LambdaLinearScheduler(warm_up_steps=[0], cycle_lengths=[100], f_start=[1.0], f_max=[1.0], f_min=[0.0])
    assert decaying(25) == pytest.approx(0.75)


def test_mismatched_cycle_lists_raise():
    with pytest.raises(ValueError, match="lengths"):
        LambdaWarmUpCosineScheduler2(warm_up_steps=[1, 2], f_min=[0.0], f_max=[1.0], f_start=[0.0],
                                     cycle_lengths=[10])


def test_verbosity_uses_logging_not_print(caplog, capsys):
    s = LambdaWarmUpCosineScheduler2(warm_up_steps=[1], f_min=[0.0], f_max=[1.0], f_start=[0.0], cycle_lengths=[10],
                                     verbosity_interval=2)
    with caplog.at_level(logging.INFO, logger="ldm.lr_scheduler"):
        for n in range(4):
            s(n)
    assert sum("current step" in r.message for r in caplog.records) == 2  # steps 0 and 2
    assert capsys.readouterr().out == ""


def test_drives_lambda_lr_per_step():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.5)
    s = LambdaWarmUpCosineScheduler(warm_up_steps=4, lr_min=0.0, lr_max=1.0, lr_start=0.0, max_decay_steps=8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=s.schedule)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])
