"""The valid range of every training value both trees share, checked once for each tree.

Owns `SHARED_VALUES`: one row per value (what it is, its v1 flag, its v2 config key, its rule), and the
rules themselves. A value outside its range would train something wrong and exit 0 (`--lr -1` turns the
loss around, a teacher momentum of 2 makes the teacher diverge) or fail deep inside with a traceback
(`--patch_size 0` divides by zero): each is refused up front with one line naming the flag (v1) or key
(v2), the value and the valid range. `check_v1_args` (the v1 trainer's parsed flags) and `check_v2_config`
(the v2 run configuration) read the same rows; values only one tree has are rows with the other name None.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from simdinov2.errors import UserError
from simdinov2.models.vision_transformer import ARCHS

Rule = Callable[[str, Any], None]


def _say(name: str, value: Any) -> str:
    """How the user wrote it: `--lr -1` (a v1 flag) or `optim.base_lr=-1` (a v2 key)."""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value) if name.startswith("--") else list(value)
    return f"{name} {value}" if name.startswith("--") else f"{name}={value}"


def at_least(low: float, why: str = "") -> Rule:
    def rule(name: str, value: Any) -> None:
        if not value >= low:
            raise UserError(f"{_say(name, value)} is invalid: it must be >= {low}{why}")

    return rule


def above(low: float, why: str = "") -> Rule:
    def rule(name: str, value: Any) -> None:
        if not value > low:
            raise UserError(f"{_say(name, value)} is invalid: it must be > {low}{why}")

    return rule


def within(low: float, high: float, why: str = "") -> Rule:
    def rule(name: str, value: Any) -> None:
        if not low <= value <= high:
            raise UserError(f"{_say(name, value)} is invalid: it must lie in [{low}, {high}]{why}")

    return rule


def ordered_pair(low: float, high: float, low_open: bool = False) -> Rule:
    """A [min, max] pair with low (<) <= min <= max <= high."""

    def rule(name: str, value: Any) -> None:
        pair = list(value) if isinstance(value, Sequence) or OmegaConf.is_list(value) else None
        ok = pair is not None and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair)
        if ok:
            first, second = pair
            ok = (first > low if low_open else first >= low) and first <= second <= high
        if not ok:
            bound = f"{low} <" if low_open else f"{low} <="
            raise UserError(
                f"{_say(name, value)} is invalid: it must be a pair min max with {bound} min <= max <= {high}"
            )

    return rule


class SharedValue(NamedTuple):
    what: str
    v1_flag: str | None
    v2_key: str | None
    rule: Rule


_MOMENTUM = within(0.0, 1.0, " (the teacher's EMA weight on its own past; 1 freezes it)")
_CROP_SCALE = ordered_pair(0.0, 1.0, low_open=True)

SHARED_VALUES: tuple[SharedValue, ...] = (
    SharedValue(
        "learning rate", "--lr", "optim.base_lr", at_least(0.0, " (a negative rate climbs the loss)")
    ),
    SharedValue("final learning rate", "--min_lr", "optim.min_lr", at_least(0.0)),
    SharedValue("teacher momentum", "--momentum_teacher", "teacher.momentum_teacher", _MOMENTUM),
    SharedValue("final teacher momentum", None, "teacher.final_momentum_teacher", _MOMENTUM),
    SharedValue("patch size", "--patch_size", "student.patch_size", at_least(1)),
    SharedValue("projection dimension", "--z_dim", "dino.head_bottleneck_dim", at_least(1)),
    SharedValue("warm-up epochs", "--warmup_epochs", "optim.warmup_epochs", at_least(0)),
    SharedValue(
        "data-loading workers",
        "--num_workers",
        "train.num_workers",
        at_least(0, " (0: load in the main process)"),
    ),
    SharedValue("global crop scale", "--global_crops_scale", "crops.global_crops_scale", _CROP_SCALE),
    SharedValue("local crop scale", "--local_crops_scale", "crops.local_crops_scale", _CROP_SCALE),
    SharedValue("local crops", "--local_crops_number", "crops.local_crops_number", at_least(0)),
    SharedValue(
        "coding-rate eps", "--eps", "dino.mcr.eps", above(0.0, " (it divides the coding-rate scale)")
    ),
    SharedValue("checkpoint period", "--saveckp_freq", None, at_least(0, " (0: only checkpoint.pth)")),
    SharedValue("masking ratio", None, "ibot.mask_ratio_min_max", ordered_pair(0.0, 1.0)),
)


def check_v1_args(args: argparse.Namespace) -> None:
    """The v1 trainer's flags (those it has) against `SHARED_VALUES`: one line for the first bad one."""
    for row in SHARED_VALUES:
        if row.v1_flag and hasattr(args, row.v1_flag[2:]):
            row.rule(row.v1_flag, getattr(args, row.v1_flag[2:]))


def check_v2_config(cfg: DictConfig) -> None:
    """The v2 run configuration against `SHARED_VALUES` and the architectures it can build."""
    for row in SHARED_VALUES:
        if row.v2_key:
            value = OmegaConf.select(cfg, row.v2_key)
            if value is not None:
                row.rule(row.v2_key, value)
    arch = str(cfg.student.arch)
    if arch.removesuffix("_memeff") not in ARCHS:  # DINOv2's `vit_large_memeff` names the same model
        check_choice("student.arch", arch, list(ARCHS))


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """A name that must be one of `choices` (e.g. `student.arch`)."""
    if value not in choices:
        raise UserError(f"{_say(name, value)} is not one of {', '.join(choices)}")


__all__ = ["SHARED_VALUES", "SharedValue", "check_choice", "check_v1_args", "check_v2_config"]
