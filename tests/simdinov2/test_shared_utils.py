"""Shared schedules, optimizer pieces and AMP resolution (simdinov2/utils, simdinov2/train/optim)."""

import argparse
import math

import numpy as np
import pytest
import torch
from torch import nn

from simdinov2.precision import resolve_amp
from simdinov2.train.optim import (
    LARS,
    build_optimizer,
    cancel_gradients_last_layer,
    clip_gradients,
    ema_update,
    param_groups,
)
from simdinov2.utils.schedules import CosineScheduler, cosine_schedule, cosine_scheduler_epochs
from simdinov2.utils.utils import bool_flag


def test_cosine_schedule_warmup_and_ends():
    s = cosine_scheduler_epochs(1.0, 0.1, epochs=4, niter_per_ep=10, warmup_epochs=1, start_warmup_value=0.0)
    assert len(s) == 40
    assert s[0] == 0.0 and math.isclose(s[9], 1.0)  # linear warm-up reaches the base value
    assert math.isclose(s[10], 1.0)  # cosine starts at base
    assert np.all(np.diff(s[10:]) <= 1e-12)  # then decreases monotonically
    assert s[-1] > 0.1 and s[-1] < 0.11  # and approaches the final value
    # reference: the DINO formula written out for one point
    i = 25 - 10
    ref = 0.1 + 0.5 * (1.0 - 0.1) * (1 + math.cos(math.pi * i / 30))
    assert math.isclose(s[25], ref, rel_tol=1e-12)


def test_cosine_scheduler_freeze_and_past_end():
    sched = CosineScheduler(2.0, 0.5, total_iters=20, warmup_iters=5, freeze_iters=3)
    assert [sched[i] for i in range(3)] == [0.0, 0.0, 0.0]
    assert math.isclose(sched[7], 2.0)
    assert sched[100] == 0.5
    assert len(cosine_schedule(1, 0, 7, warmup_iters=10)) == 7  # warm-up longer than the run is clipped


def test_bool_flag():
    assert bool_flag("True") and bool_flag("1") and not bool_flag("false") and not bool_flag("0")
    with pytest.raises(argparse.ArgumentTypeError):
        bool_flag("maybe")


def test_param_groups_excludes_bias_and_norm_from_decay():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    groups = param_groups(model)
    assert len(groups[0]["params"]) == 1  # only the Linear weight decays
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 3


@pytest.mark.parametrize("name", ["adamw", "sgd", "lars"])
def test_optimizers_step(name):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = build_optimizer(name, param_groups(model))
    for g in opt.param_groups:
        g["lr"] = 0.1
        g.setdefault("weight_decay", 0.01)
    before = model.weight.detach().clone()
    model(torch.randn(8, 4)).pow(2).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("adam2", param_groups(model))


def test_lars_trust_ratio_scales_update():
    p = nn.Parameter(torch.full((2, 2), 2.0))
    p.grad = torch.full((2, 2), 1.0)
    opt = LARS([p], lr=1.0, weight_decay=0.0, momentum=0.0, eta=0.001)
    opt.step()
    # update = eta * ||p|| / ||g|| * g = 0.001 * 4 / 2 * 1
    assert torch.allclose(p, torch.full((2, 2), 2.0 - 0.002))


def test_clip_gradients_per_parameter():
    model = nn.Linear(3, 1, bias=False)
    model.weight.grad = torch.tensor([[3.0, 4.0, 0.0]])
    norms = clip_gradients(model, 1.0)
    assert math.isclose(norms[0], 5.0, rel_tol=1e-6)
    assert math.isclose(model.weight.grad.norm().item(), 1.0, rel_tol=1e-4)


def test_clip_gradients_matches_dinos_per_tensor_loop():
    from simdinov2.train.optim import _clip_gradients_per_tensor

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    grads = [
        torch.randn_like(p) * scale
        for p, scale in zip(model.parameters(), (10.0, 0.01, 3.0, 0.1), strict=True)
    ]
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()
    norms = clip_gradients(model, 1.0)
    expected = [g.clone() for g in grads]
    expected_norms = _clip_gradients_per_tensor(expected, 1.0)
    assert norms == pytest.approx(expected_norms, rel=1e-6)
    for p, e in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(p.grad, e, rtol=1e-6, atol=0)
    assert all(p.grad.norm().item() <= 1.0 + 1e-5 for p in model.parameters())
    assert torch.equal(list(model.parameters())[1].grad, grads[1])  # small gradients are left alone


def test_adamw_is_fused_on_plain_tensors_and_matches_foreach():
    torch.manual_seed(0)
    models = [nn.Linear(6, 5), nn.Linear(6, 5)]
    models[1].load_state_dict(models[0].state_dict())
    fused = build_optimizer("adamw", param_groups(models[0]))
    assert fused.defaults["fused"] is True
    reference = torch.optim.AdamW(param_groups(models[1]), foreach=True)
    for opt in (fused, reference):
        for group in opt.param_groups:
            group["lr"], group["weight_decay"] = 1e-2, group.get("weight_decay", 0.04)
    for _ in range(5):
        x = torch.randn(4, 6)
        for model, opt in zip(models, (fused, reference), strict=True):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cancel_gradients_last_layer():
    model = nn.Module()
    model.last_layer = nn.Linear(2, 2)
    model.other = nn.Linear(2, 2)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    cancel_gradients_last_layer(0, model, 1)
    assert model.last_layer.weight.grad is None and model.other.weight.grad is not None
    model.last_layer.weight.grad = torch.ones(2, 2)
    cancel_gradients_last_layer(1, model, 1)
    assert model.last_layer.weight.grad is not None


def test_ema_update_formula():
    t, s = [torch.zeros(3)], [torch.ones(3)]
    ema_update(t, s, 0.9)
    assert torch.allclose(t[0], torch.full((3,), 0.1))
    with pytest.raises(ValueError):
        ema_update([torch.zeros(1)], [], 0.9)


def test_resolve_amp_cpu_and_off():
    cpu = torch.device("cpu")
    off = resolve_amp(cpu, False)
    assert not off.enabled and off.grad_scaler() is None
    auto = resolve_amp(cpu, True, "auto")
    assert auto.enabled and auto.dtype == torch.bfloat16 and not auto.needs_scaler
    assert resolve_amp(cpu, True, "float16").dtype == torch.bfloat16  # fp16 on CPU runs as bf16
    with pytest.raises(ValueError):
        resolve_amp(cpu, True, "int8")
    with auto.autocast():
        y = nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16


@pytest.mark.gpu
def test_resolve_amp_cuda_fp16_scaler():
    amp = resolve_amp(torch.device("cuda"), True, "auto")
    assert amp.dtype == torch.float16 and amp.grad_scaler() is not None


def test_length_estimate_says_the_size_then_the_measured_time(monkeypatch, caplog):
    from simdinov2.logging import LengthEstimate, helpers

    now = iter([100.0, 110.0])  # the timed iterations 2..6 take 10 s: 2 s each
    monkeypatch.setattr(helpers.time, "monotonic", lambda: next(now))
    with caplog.at_level("INFO", logger="simdinov2"):
        estimate = LengthEstimate(
            "linear probe", "10 epochs x 1250 iterations", 12500, "shorten with --epochs"
        )
        for _ in range(7):
            estimate.tick()
    lines = [r.getMessage() for r in caplog.records]
    assert (
        lines[0]
        == "linear probe: 10 epochs x 1250 iterations; time estimate after 6 iterations; shorten with --epochs"
    )
    assert (
        lines[1]
        == "linear probe: 2.00 s per iteration, about 6:56:28 for the 12494 iterations left; shorten with --epochs"
    )
    assert len(lines) == 2


def test_length_estimate_of_a_short_loop_is_said_while_iterations_are_left(monkeypatch, caplog):
    from simdinov2.logging import LengthEstimate, helpers

    now = iter([100.0, 103.0])  # 4 iterations: the 2nd is timed (3 s), 2 are left
    monkeypatch.setattr(helpers.time, "monotonic", lambda: next(now))
    with caplog.at_level("INFO", logger="simdinov2"):
        estimate = LengthEstimate("linear probe", "1 epochs x 4 iterations", 4, "shorten with --epochs")
        for _ in range(4):
            estimate.tick()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "linear probe: 1 epochs x 4 iterations; time estimate after 2 iterations; shorten with --epochs",
        "linear probe: 3.00 s per iteration, about 0:00:06 for the 2 iterations left; shorten with --epochs",
    ]
