"""v2 training pieces in one process: schedules, the step, the meta-architecture, checkpoints."""

from __future__ import annotations

import pytest
import torch
from train_utils import STEP_VALUES, collate, synthetic_images, tiny_cfg

from simdinov2.checkpoint import Checkpointer, full_state_dict
from simdinov2.train import train as train_module
from simdinov2.train.recipe_keys import build_optimizer_by_name
from simdinov2.train.ssl_meta_arch import SSLMetaArch

DINOV2_TINY = ["dino.head_n_prototypes=64", "ibot.head_n_prototypes=64", "dino.koleo_loss_weight=0.1"]


def _model_and_optimizer(cfg):
    model = train_module.build_model(cfg)
    optimizer = build_optimizer_by_name(str(cfg.optim.opt), model.get_params_groups(), cfg.optim.kwargs)
    return model, optimizer


def _batch(cfg, n=4, first=0):
    return collate(synthetic_images(n, first, cfg))


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------- schedules
def test_schedules_follow_the_config():
    cfg = tiny_cfg(
        "dinov2_config",
        DINOV2_TINY
        + [
            "optim.epochs=4",
            "optim.warmup_epochs=1",
            "optim.freeze_last_layer_epochs=2",
            "optim.lr=0.01",
            "optim.min_lr=0.001",
            "teacher.warmup_teacher_temp_epochs=2",
            "teacher.warmup_teacher_temp=0.04",
            "teacher.teacher_temp=0.07",
            "ibot.loss_weight=1.0",
            "ibot.loss_weight_end=0.2",
            "ibot.loss_weight_freeze_epochs=1",
            "ibot.loss_weight_warmup_epochs=1",
        ],
    )
    epoch_len = 10
    s = train_module.build_schedulers(cfg, epoch_len)
    assert (
        s["lr"][0] == 0.0
        and s["lr"][9] == pytest.approx(0.01)
        and s["lr"][39] == pytest.approx(0.001, rel=0.05)
    )
    assert all(s["last_layer_lr"][i] == 0.0 for i in range(20)) and s["last_layer_lr"][20] == s["lr"][20] > 0
    assert s["teacher_temp"][0] == pytest.approx(0.04) and s["teacher_temp"][25] == pytest.approx(0.07)
    assert s["wd"][0] == pytest.approx(0.04) and s["wd"][39] == pytest.approx(0.4, rel=0.01)
    assert s["mom"][0] == pytest.approx(0.992) and s["mom"][39] == pytest.approx(1.0, abs=1e-4)
    ibot = s["ibot_loss_weight"]
    assert [ibot[i] for i in range(10)] == [0.0] * 10  # frozen first epoch
    assert ibot[10] == 0.0 and ibot[19] == pytest.approx(1.0)  # then linear warm-up
    assert ibot[39] == pytest.approx(0.2, abs=0.01)  # then cosine to loss_weight_end
    assert "mcr_eps" not in s and "mcr_coeff" not in s  # eps_end / coeff_end = -1: constant


def test_eps_and_coeff_schedules_are_built_when_their_end_is_set():
    cfg = tiny_cfg(
        extra=["dino.mcr.eps=0.5", "dino.mcr.eps_end=0.05", "dino.mcr.coeff=1.0", "dino.mcr.coeff_end=0.5"]
    )
    s = train_module.build_schedulers(cfg, epoch_len=5)
    assert s["mcr_eps"][0] == pytest.approx(0.5) and s["mcr_eps"][4] < 0.5
    assert s["mcr_coeff"][0] == pytest.approx(1.0) and s["mcr_coeff"][4] < 1.0


# ---------------------------------------------------------------------------------------------- the step
def test_step_applies_schedule_values_steps_without_clipping_and_updates_the_teacher():
    cfg = tiny_cfg(extra=["optim.clip_grad=0"])
    model, optimizer = _model_and_optimizer(cfg)
    batch = _batch(cfg)
    student0, teacher0 = _params(model.student), _params(model.teacher)
    assert all(torch.equal(student0[k], teacher0[k]) for k in student0)  # teacher starts as the student

    values = dict(STEP_VALUES, mcr_eps=0.05, mcr_coeff=0.0, ibot_loss_weight=0.0)
    losses = train_module.train_step(model, optimizer, batch, values, float(cfg.optim.clip_grad))
    # Scheduled eps / coeff reached the loss (coeff=0 removes the compression term) ...
    assert model.dino_loss.eps == 0.05 and model.dino_loss.coeff == 0.0
    assert losses["dino_loss"] == pytest.approx(-losses["dino_expa_loss"], rel=1e-6)
    # ... and so did the iBOT weight (0: the patch loss is computed but not added).
    assert losses["ibot_loss"] != 0.0 and losses["total_loss"] == pytest.approx(losses["dino_loss"], rel=1e-6)
    # clip_grad=0: no clipping, but the optimizer stepped (upstream skipped the step).
    assert "backbone_grad_norm" not in losses
    student1, teacher1 = _params(model.student), _params(model.teacher)
    changed = [k for k in student0 if not torch.equal(student0[k], student1[k])]
    assert len(changed) > 0.9 * len(student0)
    # EMA: teacher = m·teacher + (1-m)·student, m = the scheduled momentum.
    m = values["mom"]
    for k in ("backbone.pos_embed", "backbone.blocks.0.0.attn.qkv.weight", "dino_head.mlp.0.weight"):
        torch.testing.assert_close(teacher1[k], m * teacher0[k] + (1 - m) * student1[k])
    assert all(not p.requires_grad for p in model.teacher.parameters())

    # Other values on the same inputs: a larger eps shrinks the coding rate (scale p/(m·N·eps)), the
    # compression term is back with coeff=1 and the iBOT loss counts twice with weight 2.
    model.set_mcr_schedule(eps=5.0, coeff=1.0)
    with torch.no_grad():
        _, other = model.forward_losses(batch, teacher_temp=0.07, ibot_loss_weight=2.0)
    other = {k: float(v) for k, v in other.items()}
    assert other["dino_expa_loss"] < 0.5 * losses["dino_expa_loss"]
    assert other["dino_loss"] == pytest.approx(-(other["dino_comp_loss"] + other["dino_expa_loss"]), rel=1e-6)
    assert other["total_loss"] == pytest.approx(other["dino_loss"] + 2.0 * other["ibot_loss"], rel=1e-6)


def test_layerwise_decay_and_patch_embed_multiplier():
    cfg = tiny_cfg(extra=["optim.layerwise_decay=0.5", "optim.patch_embed_lr_mult=0.1"])
    model = SSLMetaArch(cfg)
    groups = model.get_params_groups()
    by_param = {id(p): g for g in groups for p in g["params"]}
    backbone = model.student.backbone
    n = 12
    assert by_param[id(backbone.norm.weight)]["lr_multiplier"] == 1.0
    assert by_param[id(backbone.cls_token)]["lr_multiplier"] == pytest.approx(0.5 ** (n + 1))
    assert by_param[id(backbone.patch_embed.proj.weight)]["lr_multiplier"] == pytest.approx(
        0.1 * 0.5 ** (n + 1)
    )
    last_block = backbone.block_list()[-1]
    assert by_param[id(last_block.mlp.fc1.weight)]["lr_multiplier"] == pytest.approx(0.5)
    assert by_param[id(last_block.mlp.fc1.weight)]["wd_multiplier"] == 1.0
    assert by_param[id(last_block.norm1.weight)]["wd_multiplier"] == 0.0
    assert by_param[id(model.student.dino_head.mlp[0].weight)]["lr_multiplier"] == 1.0


@pytest.mark.parametrize("centering", ["centering", "sinkhorn_knopp"])
def test_dinov2_baseline_trains(centering):
    cfg = tiny_cfg("dinov2_config", DINOV2_TINY + [f"train.centering={centering}"])
    model, optimizer = _model_and_optimizer(cfg)
    assert not model.dino_use_mcr and model.student.dino_head.last_layer is not None
    last0 = model.student.dino_head.last_layer.weight_v.detach().clone()
    center0 = model.dino_loss.center.clone()
    # First epoch: the prototype layer is frozen (last_layer_lr = 0).
    values = dict(STEP_VALUES, last_layer_lr=0.0)
    losses = train_module.train_step(model, optimizer, _batch(cfg), values, float(cfg.optim.clip_grad))
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert {"dino_loss", "ibot_loss", "koleo_loss", "total_loss"} <= set(losses)
    assert torch.equal(model.student.dino_head.last_layer.weight_v, last0)
    if centering == "centering":
        assert not torch.equal(model.dino_loss.center, center0)
        train_module.train_step(model, optimizer, _batch(cfg, first=4), STEP_VALUES, 3.0)
        assert not torch.equal(model.student.dino_head.last_layer.weight_v, last0)
    else:
        assert torch.equal(model.dino_loss.center, center0)


def test_cross_entropy_without_centering_is_refused():
    cfg = tiny_cfg("dinov2_config", DINOV2_TINY + ["train.centering=none"])
    with pytest.raises(ValueError, match="train.centering=none"):
        SSLMetaArch(cfg)


def test_non_finite_loss_stops_before_the_update():
    cfg = tiny_cfg("dinov2_config", DINOV2_TINY + ["train.centering=centering"])
    model, optimizer = _model_and_optimizer(cfg)
    batch = _batch(cfg)
    batch["collated_global_crops"][0] = float("nan")
    before = _params(model.student)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train_module.train_step(model, optimizer, batch, STEP_VALUES, 3.0)
    after = _params(model.student)
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.slow
def test_checkpoint_roundtrip_keep_last_and_snapshot(tmp_path):
    cfg = tiny_cfg()
    model, optimizer = _model_and_optimizer(cfg)
    ckpt = Checkpointer(tmp_path / "ckpt", model, optimizer, max_to_keep=1)
    train_module.train_step(model, optimizer, _batch(cfg), STEP_VALUES, 3.0)
    for it in range(2):
        ckpt.save(it, {"epoch_len": 1})
    assert [i for i, _ in ckpt.checkpoints()] == [1]
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "ckpt").iterdir())
    saved_teacher = full_state_dict(model.teacher)
    saved_adam = {k: v["exp_avg"].clone() for k, v in enumerate(optimizer.state.values())}

    fresh, fresh_optimizer = _model_and_optimizer(cfg)
    state = Checkpointer(tmp_path / "ckpt", fresh, fresh_optimizer).load(ckpt.latest())
    assert state["iteration"] == 1
    for k, v in saved_teacher.items():
        assert torch.equal(fresh.teacher.state_dict()[k], v), k
    fresh_adam = {k: v["exp_avg"] for k, v in enumerate(fresh_optimizer.state.values())}
    assert all(torch.equal(fresh_adam[k], saved_adam[k]) for k in saved_adam)

    from simdinov2.checkpoint import load_backbone_weights, save_teacher_snapshot

    path = save_teacher_snapshot(model.teacher, tmp_path / "eval" / "training_2" / "teacher_checkpoint.pth")
    snapshot = torch.load(path, weights_only=True)
    assert set(snapshot) == {"teacher"}
    keys = set(snapshot["teacher"])
    assert {k.split(".")[0] for k in keys} == {"backbone", "dino_head"}
    assert all(type(v) is torch.Tensor for v in snapshot["teacher"].values())
    # The evaluation loader reads it back into a plain backbone.
    backbone = fresh.student.backbone
    load_backbone_weights(backbone, str(path))
    torch.testing.assert_close(backbone.pos_embed, snapshot["teacher"]["backbone.pos_embed"])
    # ... and a new run can start from it (student.pretrained_weights): student and teacher alike.
    warm = SSLMetaArch(tiny_cfg(extra=[f"student.pretrained_weights={path}"]))
    for name in ("pos_embed", "blocks.0.0.attn.qkv.weight"):
        want = snapshot["teacher"][f"backbone.{name}"]
        assert torch.equal(warm.student.backbone.state_dict()[name], want)
        assert torch.equal(warm.teacher.backbone.state_dict()[name], want)


def test_checkpoint_of_another_architecture_is_one_clear_line(tmp_path):
    cfg = tiny_cfg()
    Checkpointer(tmp_path, train_module.build_model(cfg)).save(0)
    other = train_module.build_model(tiny_cfg(extra=["student.arch=vit_small"]))
    with pytest.raises(ValueError) as info:
        Checkpointer(tmp_path, other).load(Checkpointer(tmp_path, other).latest(), with_optimizer=False)
    assert "does not match this model" in str(info.value) and "\n" not in str(info.value)
