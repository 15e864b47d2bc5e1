"""The v2 configuration: shipped files, layering, struct-mode validation, scaling rule, config.yaml."""

from __future__ import annotations

import logging
import math

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError

from simdinov2.configs import (
    CONFIG_DIR,
    apply_scaling_rules_to_cfg,
    default_config,
    get_cfg,
    load_config_file,
    write_config,
)
from simdinov2.errors import UserError

SHIPPED = sorted(
    str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.yaml") if p.name != "ssl_default_config.yaml"
)


def test_shipped_configs_exist_and_load():
    for name in ("simdino_config.yaml", "dinov2_config.yaml", "train/vitb16.yaml", "train/vitl16.yaml"):
        assert name in SHIPPED
    assert any(name.startswith("eval/") for name in SHIPPED)
    for name in SHIPPED:
        cfg = get_cfg(CONFIG_DIR / name)
        assert cfg.student.arch.startswith("vit_"), name


def test_simdino_config_is_the_simdinov2_recipe():
    cfg = get_cfg("simdinov2/configs/simdino_config.yaml")
    assert cfg.dino.use_mcr is True and cfg.ibot.use_mcr is True
    assert dict(cfg.dino.mcr) == {
        "expa_loss": "mcr",
        "comp_loss": "cosine",
        "expa_type": 1,
        "reduce_cov": 0,
        "eps": 0.05,
        "eps_end": -1,
        "coeff": 1.0,
        "coeff_end": -1,
    }
    assert (
        cfg.dino.head_n_prototypes,
        cfg.dino.head_bottleneck_dim,
        cfg.dino.head_nlayers,
        cfg.dino.head_hidden_dim,
    ) == (
        256,
        256,
        3,
        2048,
    )
    assert cfg.dino.koleo_loss_weight == 0 and cfg.dino.remove_last_layer and cfg.dino.head_normalize
    assert cfg.ibot.separate_head is False and cfg.ibot.remove_last_layer and cfg.ibot.loss_weight == 1
    assert cfg.ibot.mask_sample_probability == 0.5 and list(cfg.ibot.mask_ratio_min_max) == [0.1, 0.5]
    assert cfg.train.centering == "none"
    s = cfg.student
    assert (s.arch, s.patch_size, s.drop_path_rate, s.layerscale, s.num_register_tokens, s.block_chunks) == (
        "vit_large",
        16,
        0.2,
        0.1,
        4,
        4,
    )
    assert (cfg.teacher.momentum_teacher, cfg.teacher.final_momentum_teacher) == (0.9, 1)
    o = cfg.optim
    assert (o.opt, o.epochs, o.weight_decay, o.weight_decay_end, o.base_lr, o.warmup_epochs) == (
        "adamw",
        100,
        0.04,
        0.4,
        0.004,
        10,
    )
    assert (o.min_lr, o.clip_grad, o.freeze_last_layer_epochs, o.layerwise_decay, o.patch_embed_lr_mult) == (
        1e-6,
        3.0,
        1,
        0.9,
        0.2,
    )
    assert (tuple(o.kwargs.betas), o.kwargs.foreach, o.scaling_rule) == ((0.9, 0.999), True, "sqrt_wrt_1024")
    assert cfg.train.batch_size_per_gpu == 128
    assert (s.interpolate_antialias, s.interpolate_offset) == (True, 0.0)
    c = cfg.crops
    assert list(c.global_crops_scale) == [0.4, 1.0] and c.global_crops_size == 224
    assert (
        c.local_crops_number == 10 and list(c.local_crops_scale) == [0.05, 0.4] and c.local_crops_size == 96
    )
    assert cfg.evaluation.eval_period_epochs == 10
    assert cfg.compute_precision.student.backbone.mixed_precision.param_dtype == "bf16"
    assert cfg.compile is True  # as upstream; skipped with one log line off CUDA


def test_dinov2_baseline_config():
    cfg = get_cfg("dinov2_config")
    assert cfg.dino.use_mcr is False and cfg.ibot.use_mcr is False
    assert cfg.train.centering in ("centering", "sinkhorn_knopp")
    assert cfg.dino.remove_last_layer is False and cfg.dino.head_n_prototypes == 65536
    assert cfg.dino.koleo_loss_weight > 0


def test_layering_default_then_file_then_overrides(tmp_path):
    default = default_config()
    assert default.optim.epochs == 100
    # A file may start from another one (_base_) and change the arch.
    recipe = tmp_path / "vitb16_simdino.yaml"
    recipe.write_text(f"_base_: {CONFIG_DIR / 'simdino_config.yaml'}\nstudent:\n  arch: vit_base\n")
    cfg = get_cfg(recipe, ["optim.epochs=3", "crops.global_crops_scale=[0.5,1.0]"])
    assert cfg.student.arch == "vit_base" and cfg.dino.use_mcr is True  # file over its base over defaults
    assert cfg.optim.epochs == 3 and list(cfg.crops.global_crops_scale) == [0.5, 1.0]  # overrides last
    assert cfg.train.num_workers == default.train.num_workers  # untouched keys keep their defaults
    assert "_base_" not in load_config_file(recipe)


def test_train_vitb16_means_what_upstream_file_means():
    """Layered on the default (DINOv2) recipe, changing only batch, arch and chunks."""
    cfg, default = get_cfg("train/vitb16"), default_config()
    assert (cfg.train.batch_size_per_gpu, cfg.student.arch, cfg.student.block_chunks) == (64, "vit_base", 4)
    assert cfg.dino.use_mcr is False and cfg.student.drop_path_rate == default.student.drop_path_rate
    assert (
        get_cfg("train/vitl16").student.arch == "vit_large" and get_cfg("train/vitl16").dino.use_mcr is False
    )


def test_struct_mode_rejects_reads_of_unknown_keys():
    cfg = get_cfg()
    with pytest.raises(ConfigAttributeError):
        _ = cfg.optim.learning_rate


@pytest.mark.parametrize(
    ("overrides", "unknown", "suggested"),
    [
        (["optim.lrr=0.1"], "optim.lrr", "optim.lr"),
        (["batch_size_per_gpu=8"], "batch_size_per_gpu", "train.batch_size_per_gpu"),
        (["train.centring=none"], "train.centring", "train.centering"),
    ],
)
def test_unknown_override_names_the_key_and_closest_valid_keys(overrides, unknown, suggested):
    with pytest.raises(ValueError) as info:
        get_cfg("simdino_config", overrides)
    message = str(info.value)
    assert "\n" not in message
    assert f"'{unknown}'" in message and suggested in message.split("closest valid keys:")[1]


def test_unknown_key_in_a_config_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  epochs: 2\n  warmup_epoch: 1\n")
    with pytest.raises(
        ValueError,
        match=r"unknown config key 'optim.warmup_epoch' \(in .*bad.yaml\); closest valid keys: optim.warmup_epochs",
    ):
        get_cfg(path)


def test_malformed_inputs_give_one_line(tmp_path):
    for overrides, pattern in (
        (["optim.epochs"], "not of the form key=value"),
        (["student=vit_small"], "is a section"),
        (["student.arch.name=x"], "is a value, not a section"),
        (["train.centering=centred"], "train.centering"),
        (["train.sharding=zero3"], "train.sharding"),
        (["optim.scaling_rule=cubic"], "optim.scaling_rule"),
    ):
        with pytest.raises(ValueError, match=pattern):
            get_cfg(None, overrides)
    with pytest.raises(FileNotFoundError, match="not found"):
        get_cfg(tmp_path / "missing.yaml")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("_base_: b.yaml\n")
    b.write_text("_base_: a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        get_cfg(a)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.epochs=abc", "optim.epochs='abc' must be a number"),
        ("optim.epochs=true", "optim.epochs=True must be a number"),
        ("optim.base_lr=fast", "optim.base_lr='fast' must be a number"),
        ("train.wandb=maybe", "train.wandb='maybe' must be true or false"),
    ],
)
def test_value_of_the_wrong_type_names_the_key(override, message):
    with pytest.raises(UserError) as info:
        get_cfg(None, [override])
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_numbers_are_accepted_where_a_number_is_expected():
    cfg = get_cfg(None, ["optim.base_lr=1", "optim.epochs=3", "ibot.loss_weight_end=0.2"])  # default -1
    assert cfg.optim.base_lr == 1 and cfg.optim.epochs == 3 and cfg.ibot.loss_weight_end == 0.2


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["student.patch_size=32", "crops.global_crops_size=28"], "crops.global_crops_size=28"),
        (
            ["student.patch_size=16", "crops.global_crops_size=32", "crops.local_crops_size=12"],
            "crops.local_crops_size=12",
        ),
    ],
)
def test_crop_smaller_than_a_patch_is_one_line(overrides, key):
    with pytest.raises(UserError, match=f"^{key} is smaller than one patch \\(student.patch_size="):
        get_cfg(None, overrides)


def test_local_crops_smaller_than_a_patch_are_fine_when_there_are_none():
    get_cfg(
        None,
        [
            "student.patch_size=16",
            "crops.global_crops_size=32",
            "crops.local_crops_size=12",
            "crops.local_crops_number=0",
        ],
    )


def test_crop_not_a_multiple_of_the_patch_warns(caplog):
    logger = logging.getLogger("simdinov2")
    logger.addHandler(caplog.handler)
    try:
        get_cfg(None, ["student.patch_size=4", "crops.global_crops_size=30", "crops.local_crops_size=12"])
        assert "crops.global_crops_size=30 is not a multiple of student.patch_size=4" in caplog.text
        caplog.clear()
        get_cfg(None, ["student.patch_size=4", "crops.global_crops_size=32", "crops.local_crops_size=12"])
        assert "not a multiple" not in caplog.text
    finally:
        logger.removeHandler(caplog.handler)


@pytest.mark.parametrize(
    ("rule", "world", "expected"), [("sqrt_wrt_1024", 8, math.sqrt(0.5)), ("linear_wrt_1024", 4, 0.25)]
)
def test_lr_scaling_rules(rule, world, expected):
    cfg = get_cfg(None, [f"optim.scaling_rule={rule}", "train.batch_size_per_gpu=64", "optim.base_lr=0.004"])
    apply_scaling_rules_to_cfg(cfg, world)
    assert cfg.optim.lr == pytest.approx(0.004 * expected)


def test_written_config_reloads_to_the_same_configuration(tmp_path):
    cfg = get_cfg("simdino_config", ["student.arch=vit_small", "optim.epochs=7"])
    apply_scaling_rules_to_cfg(cfg, 2)
    path = write_config(cfg, tmp_path)
    assert path == tmp_path / "config.yaml"
    again = get_cfg(path)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
