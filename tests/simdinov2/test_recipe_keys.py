"""The trainer-level upstream keys as pure functions: `simdinov2/train/recipe_keys.py`, `train.actions`
(`simdinov2/configs/actions.py`) and `optim.peak_epochs` (`simdinov2/utils/schedules.py`)."""

from __future__ import annotations

import pytest
import timm.optim
import torch
from omegaconf import OmegaConf

from simdinov2.configs import apply_actions, get_cfg, scheduled_actions
from simdinov2.configs.actions import parse_actions
from simdinov2.errors import NonFiniteLossError
from simdinov2.train.recipe_keys import (
    NonFiniteGuard,
    backbone_frozen,
    build_optimizer_by_name,
    clip_grad_schedule,
    compile_enabled,
    epoch_length,
    optimizer_kwargs,
    snapshot_period,
)
from simdinov2.utils.schedules import cosine_schedule


def _groups():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))
    return [{"params": [a], "lr_multiplier": 1.0}, {"params": [b], "lr_multiplier": 0.5}]


# ---------------------------------------------------------------------------------------------- optim.opt
@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("adamw", {"foreach": True, "betas": [0.9, 0.999]}, torch.optim.AdamW),
        ("sgd", {"betas": None, "foreach": True}, torch.optim.SGD),
        ("lars", {}, timm.optim.Lars),
        ("lamb", {"betas": [0.9, 0.99]}, timm.optim.Lamb),
    ],
)
def test_optimizer_by_name_through_timm(name, kwargs, expected):
    optimizer = build_optimizer_by_name(name, _groups(), OmegaConf.create(kwargs))
    assert type(optimizer) is expected
    assert [g["lr_multiplier"] for g in optimizer.param_groups] == [1.0, 0.5]  # our group keys survive
    assert all(
        g["lr"] == 0.0 and g["weight_decay"] == 0.0 for g in optimizer.param_groups
    )  # schedules set them
    if "betas" in (kwargs or {}) and kwargs["betas"]:
        assert optimizer.param_groups[0]["betas"] == tuple(kwargs["betas"])


def test_optimizer_errors_are_one_line():
    with pytest.raises(ValueError, match="optim.opt='adamx' is not an optimizer timm knows") as info:
        build_optimizer_by_name("adamx", _groups())
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="optim.kwargs do not fit optim.opt='adamw'.*null"):
        build_optimizer_by_name("adamw", _groups(), {"no_such_keyword": 1})
    assert optimizer_kwargs(OmegaConf.create({"betas": [0.9, 0.95], "eps": None})) == {"betas": (0.9, 0.95)}


# ---------------------------------------------------------------------------------------------- schedules
def test_epoch_length_official_or_from_the_dataset():
    assert epoch_length(1000, 64) == 15
    assert epoch_length(1000, 64, -1) == 15 and epoch_length(1000, 64, 0) == 15
    assert epoch_length(1000, 64, 1250) == 1250  # DINOv2's fixed length, whatever the dataset


def test_peak_epochs_hold_the_peak_between_warmup_and_cosine():
    schedule = cosine_schedule(1.0, 0.0, 10, warmup_iters=2, peak_iters=3)
    assert schedule[:2].tolist() == [0.0, 1.0]
    assert schedule[2:5].tolist() == [1.0, 1.0, 1.0]
    assert schedule[5] == 1.0 and schedule[6] < 1.0 and schedule[-1] > 0.0  # then the half cosine
    assert (
        cosine_schedule(1.0, 0.0, 10, warmup_iters=2).tolist()
        == cosine_schedule(1.0, 0.0, 10, warmup_iters=2, peak_iters=0).tolist()
    )


def test_clip_grad_end_schedules_the_threshold():
    constant = clip_grad_schedule(3.0, -1, 10)
    assert [constant[i] for i in range(10)] == [3.0] * 10
    cosine = clip_grad_schedule(3.0, 1.0, 10)
    assert cosine[0] == 3.0 and 1.0 < cosine[5] < 3.0 and cosine[10] == 1.0
    assert all(cosine[i] >= cosine[i + 1] for i in range(9))


def test_snapshot_period_iterations_win_over_epochs():
    assert snapshot_period(10, -1, 100) == 1000
    assert snapshot_period(10, 250, 100) == 250
    assert snapshot_period(0, -1, 100) == 0


def test_backbone_frozen_for_its_epochs():
    assert [backbone_frozen(i, 5, 2) for i in (0, 9, 10, 11)] == [True, True, False, False]
    assert not backbone_frozen(0, 5, 0)


def test_compile_is_honoured_on_cuda_only(caplog):
    with caplog.at_level("INFO", logger="simdinov2"):
        assert compile_enabled(True, torch.device("cpu")) is False
    assert "honoured on CUDA only" in caplog.text
    assert compile_enabled(True, torch.device("cuda")) is True
    assert compile_enabled(False, torch.device("cuda")) is False


# ---------------------------------------------------------------------------------------------- ignore_nan
def test_ignore_nan_skips_counts_and_stops_after_the_limit():
    nan = NonFiniteLossError("non-finite loss (loss=nan)")
    assert NonFiniteGuard(False).skip(nan, 1) is False  # ignore_nan=false: the error stops training
    guard = NonFiniteGuard(True, max_consecutive=3)
    assert guard.skip(nan, 0) is True and guard.skip(nan, 1) is True
    guard.passed()  # a finite step resets the run of skipped ones
    assert guard.skipped == 2 and guard.consecutive == 0
    guard.skip(nan, 3)
    guard.skip(nan, 4)
    with pytest.raises(NonFiniteLossError, match="3 steps in a row"):
        guard.skip(nan, 5)


# ---------------------------------------------------------------------------------------------- train.actions
def test_actions_set_keys_at_their_epoch():
    cfg = get_cfg(
        "simdino_config",
        ['train.actions=[[2, "dino.loss_weight=0.5"], [1, ["optim.clip_grad=1.0", "ibot.loss_weight=0"]]]'],
    )
    actions = scheduled_actions(cfg)
    assert actions == [
        (1, "optim.clip_grad", "1.0"),
        (1, "ibot.loss_weight", "0"),
        (2, "dino.loss_weight", "0.5"),
    ]
    assert apply_actions(cfg, actions, 0) == {}
    assert apply_actions(cfg, actions, 1) == {"optim.clip_grad": 1.0, "ibot.loss_weight": 0}
    assert cfg.optim.clip_grad == 1.0 and cfg.dino.loss_weight == 1.0
    assert apply_actions(cfg, actions, 2) == {"dino.loss_weight": 0.5} and cfg.dino.loss_weight == 0.5


@pytest.mark.parametrize(
    "action",
    [
        "[[3, \"cfg.optim.lr = 0; import os; os.system('touch /tmp/pwned')\"]]",  # upstream's exec form
        "[[3, \"exec('print(1)')\"]]",
        "[[3, \"__import__('os').system('id')=1\"]]",
        '[[3, "optim.no_such_key=1"]]',
        '[["three", "optim.clip_grad=1"]]',
        "[[3]]",
    ],
)
def test_actions_that_are_not_overrides_are_refused(action):
    with pytest.raises(ValueError, match="train.actions entry") as info:
        get_cfg("simdino_config", [f"train.actions={action}"])
    assert "\n" not in str(info.value) and "never executed" in str(info.value)


def test_parse_actions_is_pure():
    assert parse_actions([], ["a.b"]) == []
    assert parse_actions([[0, "a.b=[1, 2]"]], ["a.b"]) == [(0, "a.b", "[1, 2]")]
