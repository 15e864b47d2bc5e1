"""One line, before any work, for every training value outside its range, in both trees (the shared rows
of `simdinov2/configs/validate.py`): values that trained something wrong and exited 0, and values that
ended in a traceback."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from simdino import main_dino
from simdinov2.configs import get_cfg
from simdinov2.configs.validate import SHARED_VALUES
from simdinov2.errors import UserError

# v1 flags -> the words the one line must hold.
V1_CASES = [
    (["--lr", "-1"], "--lr -1.0 is invalid: it must be >= 0"),  # trained (loss -1.35 -> +0.18), exit 0
    (["--momentum_teacher", "2.0"], "--momentum_teacher 2.0 is invalid: it must lie in [0.0, 1.0]"),  # exit 0
    (["--patch_size", "0"], "--patch_size 0 is invalid: it must be >= 1"),
    (["--patch_size", "-7"], "--patch_size -7 is invalid"),
    (["--z_dim", "0"], "--z_dim 0 is invalid: it must be >= 1"),
    (["--warmup_epochs", "-1"], "--warmup_epochs -1 is invalid: it must be >= 0"),
    (["--num_workers", "-1"], "--num_workers -1 is invalid: it must be >= 0"),
    (
        ["--global_crops_scale", "1.0", "0.4"],
        "--global_crops_scale 1.0 0.4 is invalid: it must be a pair min max",
    ),
    (["--saveckp_freq", "-1"], "--saveckp_freq -1 is invalid: it must be >= 0"),  # saved every epoch
    (["--min_lr=-1e-6"], "--min_lr -1e-06 is invalid"),
]
# v2 config overrides -> the words the one line must hold.
V2_CASES = [
    ("optim.base_lr=-1", "optim.base_lr=-1 is invalid: it must be >= 0"),  # trained, exit 0
    ("teacher.momentum_teacher=2.0", "teacher.momentum_teacher=2.0 is invalid: it must lie in [0.0, 1.0]"),
    ("student.patch_size=0", "student.patch_size=0 is invalid: it must be >= 1"),
    ("student.arch=vit_huge", "student.arch=vit_huge is not one of vit_"),
    ("crops.local_crops_number=-1", "crops.local_crops_number=-1 is invalid: it must be >= 0"),
    ("dino.mcr.eps=0", "dino.mcr.eps=0 is invalid: it must be > 0"),
    ("train.num_workers=-1", "train.num_workers=-1 is invalid: it must be >= 0"),  # was accepted
    ("ibot.mask_ratio_min_max=[0.9,0.1]", "ibot.mask_ratio_min_max=[0.9, 0.1] is invalid"),  # was accepted
    ("crops.global_crops_scale=[1.0,0.4]", "crops.global_crops_scale=[1.0, 0.4] is invalid"),
]


@pytest.mark.parametrize("flags, words", V1_CASES, ids=[" ".join(f) for f, _ in V1_CASES])
def test_v1_value_out_of_range_is_one_line(flags, words, tmp_path):
    args = main_dino.get_args_parser().parse_args(
        ["--output_dir", str(tmp_path / "o"), "--data_path", str(tmp_path / "never_read"), *flags]
    )
    with pytest.raises(SystemExit) as exc:
        main_dino.main(args)
    message = str(exc.value.code)
    assert words in message and "\n" not in message, message
    assert not (tmp_path / "o").exists()  # refused before any work


@pytest.mark.parametrize("override, words", V2_CASES, ids=[o for o, _ in V2_CASES])
def test_v2_value_out_of_range_is_one_line(override, words):
    with pytest.raises(UserError) as exc:
        get_cfg("simdino_config", [override])
    assert words in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_every_shared_row_names_a_real_flag_and_key():
    """A renamed flag or key would silently drop its check: every row's names must exist."""
    parser, cfg = main_dino.get_args_parser(), get_cfg("simdino_config")
    for row in SHARED_VALUES:
        assert row.v1_flag is None or parser.get_default(row.v1_flag[2:]) is not None, row.v1_flag
        assert row.v2_key is None or OmegaConf.select(cfg, row.v2_key) is not None, row.v2_key
