"""Upstream SimDINOv2's configuration runs here unchanged, and means the same.

- Every key of the upstream release's `ssl_default_config.yaml` ⊕ `simdino_config.yaml`, with its value, is
  written out below (`UPSTREAM_SIMDINOV2`). Our `ssl_default_config.yaml` ⊕ `simdino_config.yaml` equals it
  key by key (the deliberate exceptions are listed with their reason), and a YAML file holding exactly those
  keys trains 2 iterations through `simdinov2/train/train.py --config-file` (plus size overrides only).
- The model-level keys work: `qknorm`, `attn_drop` / `ffn_drop`, `gradient_checkpointing`, `drop_masks`,
  `pretrained_weights` (+ sizes), `MODEL.WEIGHTS`, `freeze_backbone_epochs`; and a config setting the keys to
  non-default values trains, each key's effect visible in its outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from train_utils import SIMDINO_CONFIG, STEP_VALUES, collate, run_train, synthetic_images, tiny_cfg

from simdinov2.configs import get_cfg
from simdinov2.data import collate_data_and_cast
from simdinov2.models import build_vit
from simdinov2.train import train as train_module
from simdinov2.train.recipe_keys import build_optimizer_by_name
from simdinov2.train.ssl_meta_arch import SSLMetaArch

_PRECISION: dict[str, Any] = {}
for _side in ("teacher", "student"):
    for _module in ("backbone", "dino_head", "ibot_head"):
        head = _module != "backbone"
        if _side == "teacher":
            dtypes = ("fp16", "fp16", "fp32")
        elif head:
            dtypes = ("fp16", "fp32", "fp32")
        else:
            dtypes = ("bf16", "bf16", "fp32")  # simdino_config.yaml's student backbone
        _PRECISION[f"compute_precision.{_side}.{_module}.sharding_strategy"] = "SHARD_GRAD_OP"
        for _name, _dtype in zip(("param_dtype", "reduce_dtype", "buffer_dtype"), dtypes, strict=True):
            _PRECISION[f"compute_precision.{_side}.{_module}.mixed_precision.{_name}"] = _dtype

# The upstream release's effective SimDINOv2 recipe: its ssl_default_config.yaml ⊕ simdino_config.yaml,
# every key with its value (flattened).
UPSTREAM_SIMDINOV2: dict[str, Any] = {
    "compute_precision.grad_scaler": True,
    **_PRECISION,
    "MODEL.WEIGHTS": "",
    "compile": True,
    "ignore_nan": False,
    "dino.use_mcr": True,
    "dino.mcr.expa_loss": "mcr",
    "dino.mcr.comp_loss": "cosine",
    "dino.mcr.expa_type": 1,
    "dino.mcr.reduce_cov": 0,
    "dino.mcr.eps": 0.05,
    "dino.mcr.eps_end": -1,
    "dino.mcr.coeff": 1,
    "dino.mcr.coeff_end": -1,
    "dino.loss_weight": 1.0,
    "dino.head_n_prototypes": 256,
    "dino.head_bottleneck_dim": 256,
    "dino.head_nlayers": 3,
    "dino.head_hidden_dim": 2048,
    "dino.koleo_loss_weight": 0,
    "dino.remove_last_layer": True,
    "dino.head_normalize": True,
    "ibot.use_mcr": True,
    "ibot.mcr.eps": 0.05,
    "ibot.mcr.coeff": 1,
    "ibot.mcr.coeff_end": 1,
    "ibot.loss_weight": 1.0,
    "ibot.loss_weight_end": -1,
    "ibot.loss_weight_freeze_epochs": 0,
    "ibot.loss_weight_warmup_epochs": 0,
    "ibot.activate_epochs": 0,
    "ibot.mask_sample_probability": 0.5,
    "ibot.mask_ratio_min_max": [0.1, 0.5],
    "ibot.separate_head": False,
    "ibot.head_n_prototypes": 256,
    "ibot.head_bottleneck_dim": 256,
    "ibot.head_nlayers": 3,
    "ibot.head_hidden_dim": 2048,
    "ibot.remove_last_layer": True,
    "ibot.head_normalize": True,
    "train.recipe": "sim",
    "train.batch_size_per_gpu": 128,
    "train.dataset_path": "ImageNet:split=TRAIN:root=/data/datasets/imagenet1k:extra=/public/datasets/imagenet1k_dino_extra",
    "train.output_dir": "/dinov2/outputs/vitl16_reg4_simdinov2",
    "train.saveckp_freq": 100,
    "train.seed": 0,
    "train.num_workers": 10,
    "train.OFFICIAL_EPOCH_LENGTH": -1,
    "train.cache_dataset": True,
    "train.centering": "none",
    "train.actions": [],
    "student.arch": "vit_large",
    "student.block": "nested",
    "student.patch_size": 16,
    "student.drop_path_rate": 0.2,
    "student.rescale_weight": 1.0,
    "student.layerscale": 0.1,
    "student.drop_path_uniform": True,
    "student.pretrained_weights": "",
    "student.pretrained_img_size": None,
    "student.pretrained_patch_size": None,
    "student.freeze_backbone_epochs": 0,
    "student.ffn_layer": "mlp",
    "student.block_chunks": 4,
    "student.qkv_bias": True,
    "student.proj_bias": True,
    "student.ffn_bias": True,
    "student.num_register_tokens": 4,
    "student.interpolate_antialias": True,
    "student.interpolate_offset": 0.0,
    "student.drop_masks": False,
    "student.gradient_checkpointing": False,
    "student.attn_drop": 0.0,
    "student.ffn_drop": 0.0,
    "student.qknorm": False,
    "teacher.momentum_teacher": 0.9,
    "teacher.final_momentum_teacher": 1,
    "teacher.warmup_teacher_temp": 0.04,
    "teacher.teacher_temp": 0.07,
    "teacher.warmup_teacher_temp_epochs": 30,
    "optim.opt": "adamw",
    "optim.epochs": 100,
    "optim.weight_decay": 0.04,
    "optim.weight_decay_end": 0.4,
    "optim.base_lr": 0.004,
    "optim.lr": 0.0,
    "optim.warmup_epochs": 10,
    "optim.peak_epochs": 0,
    "optim.min_lr": 1.0e-06,
    "optim.clip_grad": 3.0,
    "optim.clip_grad_end": -1,
    "optim.freeze_last_layer_epochs": 1,
    "optim.scaling_rule": "sqrt_wrt_1024",
    "optim.patch_embed_lr_mult": 0.2,
    "optim.layerwise_decay": 0.9,
    "optim.kwargs.foreach": True,
    "optim.kwargs.betas": [0.9, 0.999],
    "optim.schedulefree_kwargs.weight_decay_at_y": 0.0,
    "optim.schedulefree_kwargs.momentum": 0.9,
    "crops.global_crops_scale": [0.4, 1],
    "crops.local_crops_number": 10,
    "crops.local_crops_scale": [0.05, 0.4],
    "crops.global_crops_size": 224,
    "crops.local_crops_size": 96,
    "evaluation.eval_period_epochs": 10,
    "evaluation.img_size": None,
    "evaluation.patch_size": None,
}

# Where our shipped recipe deliberately differs, and why (README, "Differences from the upstream recipe").
DELIBERATE_EXCEPTIONS = {
    "train.dataset_path": "upstream's value is a path on the authors' cluster; ours names the dataset and the "
    "run gives its root",
    "train.output_dir": "upstream's value is a path on the authors' cluster; ours is the working directory "
    "(--output-dir sets it)",
}

_ABSENT = object()


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def test_effective_recipe_equals_upstream_key_by_key():
    ours = get_cfg(SIMDINO_CONFIG)
    differing = {}
    for key, upstream in UPSTREAM_SIMDINOV2.items():
        value = OmegaConf.select(ours, key, default=_ABSENT)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if value is _ABSENT or value != upstream or type(value) is bool is not type(upstream) is bool:
            differing[key] = (upstream, "absent" if value is _ABSENT else value)
    assert set(differing) == set(DELIBERATE_EXCEPTIONS), {
        k: v for k, v in differing.items() if k not in DELIBERATE_EXCEPTIONS
    }


@pytest.fixture(scope="module")
def images24(tiny_imagefolder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 training images (8 per class) of the session's tiny ImageFolder."""
    root = tmp_path_factory.mktemp("images24") / "train"
    for class_dir in sorted(p for p in (tiny_imagefolder / "train").iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:8]:
            shutil.copy(image, root / class_dir.name / image.name)
    return root


@pytest.mark.slow
def test_upstream_config_file_trains_two_iterations(images24: Path, tmp_path: Path):
    """Every upstream key with its upstream value, as an upstream user's YAML file; only sizes overridden."""
    config = tmp_path / "upstream_simdino_config.yaml"
    config.write_text(yaml.safe_dump(_nested(UPSTREAM_SIMDINOV2), sort_keys=False))
    out = tmp_path / "run"
    sizes = [
        "student.arch=vit_tiny",
        "student.patch_size=4",
        "crops.global_crops_size=16",
        "crops.local_crops_size=8",
        "crops.local_crops_number=2",
        "train.batch_size_per_gpu=12",
        "optim.epochs=1",  # 24 images: 2 iterations
        f"train.dataset_path=ImageFolder:root={images24}",
        "train.num_workers=0",
    ]
    result = run_train(["--config-file", str(config), "--output-dir", str(out), *sizes])
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "training done: 2 iterations" in log
    assert "compile=true is honoured on CUDA only" in log  # upstream's compile: true, skipped on the CPU
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["dino"]["mcr"]["expa_loss"] == "mcr" and written["optim"]["opt"] == "adamw"


# ---------------------------------------------------------------------------------------------- model keys
def test_qknorm_adds_the_norm_parameters_and_normalises():
    plain = build_vit("vit_tiny", 4, img_size=16)
    normed = build_vit("vit_tiny", 4, img_size=16, qknorm=True)
    extra = set(normed.state_dict()) - set(plain.state_dict())
    assert extra == {f"blocks.{i}.attn.{n}.weight" for i in range(12) for n in ("q_norm", "k_norm")}
    attn = normed.blocks[0].attn
    q, k, _ = attn._qkv(torch.randn(2, 5, 192)).unbind(2)
    torch.testing.assert_close(q.pow(2).mean(-1), torch.ones(2, 5, 3), atol=1e-4, rtol=0)  # unit RMS per head
    cfg = tiny_cfg(extra=["student.qknorm=true"])
    model = SSLMetaArch(cfg)
    assert "blocks.0.0.attn.q_norm.weight" in dict(model.student.backbone.named_parameters())  # 4 chunks
    assert "blocks.0.0.attn.q_norm.weight" in dict(model.teacher.backbone.named_parameters())


def test_attn_and_ffn_dropout_on_the_student_only():
    model = SSLMetaArch(tiny_cfg(extra=["student.attn_drop=0.25", "student.ffn_drop=0.5"]))
    s_block, t_block = model.student.backbone.block_list()[0], model.teacher.backbone.block_list()[0]
    assert (s_block.attn.attn_drop, s_block.attn.proj_drop.p, s_block.mlp.drop.p) == (0.25, 0.5, 0.5)
    assert (t_block.attn.attn_drop, t_block.attn.proj_drop.p, t_block.mlp.drop.p) == (0.0, 0.0, 0.0)
    backbone = model.student.backbone.train()
    x = torch.randn(2, 3, 16, 16)
    assert not torch.equal(backbone(x), backbone(x))  # dropout draws differ in training
    backbone.eval()
    assert torch.equal(backbone(x), backbone(x))


def test_gradient_checkpointing_gives_the_same_gradients_with_less_saved_activations():
    torch.manual_seed(0)
    model = build_vit("vit_tiny", 4, img_size=16, drop_path_rate=0.2, block_chunks=4).train()
    crops = [torch.randn(4, 3, 16, 16), torch.randn(6, 3, 8, 8)]
    grads, saved = {}, {}
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        model.zero_grad(set_to_none=True)
        sizes: list[int] = []

        def pack(t: torch.Tensor, sizes: list[int] = sizes) -> torch.Tensor:
            if not isinstance(t, torch.nn.Parameter):
                sizes.append(t.untyped_storage().nbytes())
            return t

        torch.manual_seed(1)  # same stochastic-depth draws in both runs
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outputs = model(crops, is_training=True)
        sum(o["x_norm_clstoken"].square().sum() + o["x_norm_patchtokens"].sum() for o in outputs).backward()
        grads[checkpointing] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        saved[checkpointing] = sum(sizes)
    assert grads[True].keys() == grads[False].keys()
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=0, atol=0, msg=name)
    assert saved[True] < saved[False] / 4
    # no recomputation outside training
    model.eval()
    with torch.no_grad():
        model(crops[0])


def test_drop_masks_removes_the_masked_patches():
    torch.manual_seed(0)
    model = build_vit("vit_tiny", 4, img_size=16, drop_masks=True, num_register_tokens=2).eval()
    samples = [({"global_crops": [torch.randn(3, 16, 16)] * 2, "local_crops": []}, None) for _ in range(3)]
    batch = collate_data_and_cast(samples, (0.1, 0.5), 0.5, torch.float32, n_tokens=16, drop_masks=True)
    masks = batch["collated_masks"]
    assert masks.shape == (6, 16) and masks.sum(1).tolist() == [8] * 6  # the same count in every crop
    out = model.forward_features(batch["collated_global_crops"], masks)
    assert out["x_norm_patchtokens"].shape == (6, 8, 192) and out["x_norm_regtokens"].shape == (6, 2, 192)
    # the kept patches are those of the unmasked model, at their own positions (before the blocks)
    tokens = model.prepare_tokens_with_masks(batch["collated_global_crops"], masks)
    full = model.prepare_tokens_with_masks(batch["collated_global_crops"])
    torch.testing.assert_close(tokens[:, 3:], full[:, 3:][~masks].reshape(6, 8, 192))
    with pytest.raises(ValueError, match="drop_masks"):
        get_cfg(SIMDINO_CONFIG, ["student.drop_masks=true"])  # the patch loss needs the masked tokens
    cfg = tiny_cfg(extra=["student.drop_masks=true", "ibot.loss_weight=0"])
    model = train_module.build_model(cfg)
    assert model.drop_masks
    images = synthetic_images(4, 0, cfg)
    samples = [
        ({"global_crops": list(im["global"]), "local_crops": list(im["local"])}, None) for im in images
    ]
    batch = collate_data_and_cast(samples, (0.1, 0.5), 0.5, torch.float32, n_tokens=16, drop_masks=True)
    optimizer = build_optimizer_by_name(str(cfg.optim.opt), model.get_params_groups(), cfg.optim.kwargs)
    losses = train_module.train_step(model, optimizer, batch, dict(STEP_VALUES), 3.0)
    assert "ibot_loss" not in losses and torch.isfinite(torch.tensor(losses["total_loss"]))


def _save_backbone(path: Path, model: torch.nn.Module, entries=("teacher",)) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({entry: {f"backbone.{k}": v for k, v in state.items()} for entry in entries}, path)
    return state


def test_pretrained_weights_resized_to_our_grid_and_patch(tmp_path: Path):
    torch.manual_seed(0)
    source = build_vit("vit_tiny", 8, img_size=32, num_register_tokens=0, init_values=0.1, block_chunks=0)
    with torch.no_grad():
        source.pos_embed.normal_()
    state = _save_backbone(tmp_path / "pretrained.pth", source)
    cfg = tiny_cfg(
        extra=[
            f"student.pretrained_weights={tmp_path / 'pretrained.pth'}",
            "student.pretrained_img_size=32",
            "student.pretrained_patch_size=8",
        ]
    )
    model = SSLMetaArch(cfg)  # ours: patch 4 on 16-px crops (4 x 4 grid), 4 block chunks
    student = model.student.backbone
    expected_pos = resample_abs_pos_embed(
        state["pos_embed"], new_size=[4, 4], old_size=[4, 4], num_prefix_tokens=1
    )
    torch.testing.assert_close(student.pos_embed, expected_pos)
    expected_kernel = resample_patch_embed(state["patch_embed.proj.weight"], new_size=[4, 4])
    torch.testing.assert_close(student.patch_embed.proj.weight, expected_kernel)
    torch.testing.assert_close(student.block_list()[3].mlp.fc1.weight, state["blocks.3.mlp.fc1.weight"])
    torch.testing.assert_close(
        model.teacher.backbone.pos_embed, student.pos_embed
    )  # teacher starts as student
    with pytest.raises(ValueError, match="pretrained_patch_size=14.*patch_size 8"):
        SSLMetaArch(
            tiny_cfg(
                extra=[
                    f"student.pretrained_weights={tmp_path / 'pretrained.pth'}",
                    "student.pretrained_patch_size=14",
                ]
            )
        )


def test_model_weights_start_student_and_teacher(tmp_path: Path):
    cfg = tiny_cfg()
    source = SSLMetaArch(cfg)
    with torch.no_grad():
        for p in source.student.backbone.parameters():
            p.add_(0.5)
    state = {
        "student": {f"backbone.{k}": v for k, v in source.student.backbone.state_dict().items()},
        "teacher": {f"backbone.{k}": v for k, v in source.teacher.backbone.state_dict().items()},
    }
    torch.save(state, tmp_path / "model.pth")
    model = SSLMetaArch(tiny_cfg(extra=[f"MODEL.WEIGHTS={tmp_path / 'model.pth'}"]))
    for name, value in model.student.backbone.state_dict().items():
        torch.testing.assert_close(value, state["student"][f"backbone.{name}"])
    for name, value in model.teacher.backbone.state_dict().items():
        torch.testing.assert_close(value, state["teacher"][f"backbone.{name}"])
    assert not torch.equal(model.student.backbone.cls_token, model.teacher.backbone.cls_token)


def test_frozen_backbone_gets_no_update_while_the_head_trains():
    cfg = tiny_cfg()
    model = train_module.build_model(cfg)
    optimizer = build_optimizer_by_name(str(cfg.optim.opt), model.get_params_groups(), cfg.optim.kwargs)
    before = {k: v.clone() for k, v in model.student.state_dict().items()}
    batch = collate(synthetic_images(4, 0, cfg))
    train_module.train_step(model, optimizer, batch, {**STEP_VALUES, "freeze_backbone": 1.0}, 3.0)
    assert all(p.grad is None for p in model.student.backbone.parameters())
    after = model.student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("dino_head."))
    train_module.train_step(model, optimizer, batch, {**STEP_VALUES, "freeze_backbone": 0.0}, 3.0)
    assert any(
        not torch.equal(before[k], v)
        for k, v in model.student.state_dict().items()
        if k.startswith("backbone.")
    )


def test_koleo_logged_weighted_and_dinov2_head_trains_weight_g():
    cfg = tiny_cfg(
        "dinov2_config",
        ["dino.head_n_prototypes=64", "ibot.head_n_prototypes=64", "dino.koleo_loss_weight=0.25"],
    )
    model = train_module.build_model(cfg)
    assert model.student.dino_head.last_layer.weight_g.requires_grad  # DINOv2 trains the gain
    batch = collate(synthetic_images(4, 0, cfg))
    torch.manual_seed(0)
    total, parts = model.forward_losses(batch, 0.07)
    unweighted = sum(
        model.koleo_loss(v)
        for v in model.student.backbone(
            batch["collated_global_crops"], masks=batch["collated_masks"], is_training=True
        )["x_norm_clstoken"].chunk(2)
    )
    assert float(parts["koleo_loss"]) == pytest.approx(0.25 * float(unweighted.detach()), rel=1e-4)
    assert float(total.detach()) == pytest.approx(
        float(parts["dino_loss"] + parts["koleo_loss"] + parts["ibot_loss"]), rel=1e-5
    )


# ---------------------------------------------------------------------------------------------- non-default run
@pytest.mark.slow
def test_simdino_config_with_every_key_changed_trains(images24: Path, tmp_path: Path):
    """simdino_config.yaml with the upstream keys set to non-default values trains; effects in the outputs."""
    pretrained = tmp_path / "pretrained.pth"
    _save_backbone(pretrained, build_vit("vit_tiny", 8, img_size=32, num_register_tokens=0, init_values=0.1))
    config = tmp_path / "simdino_nondefault.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "_base_": SIMDINO_CONFIG,
                "compile": True,
                "ignore_nan": True,
                "student": {
                    "gradient_checkpointing": True,
                    "qknorm": True,
                    "ffn_drop": 0.1,
                    "attn_drop": 0.1,
                    "freeze_backbone_epochs": 1,
                    "pretrained_weights": str(pretrained),
                    "pretrained_img_size": 32,
                    "pretrained_patch_size": 8,
                    "num_register_tokens": 0,
                    "block": "flat",
                    "rescale_weight": 2.0,
                },
                "optim": {
                    "opt": "sgd",
                    "kwargs": {"betas": None, "foreach": True},
                    "peak_epochs": 1,
                    "clip_grad_end": 1.0,
                    "warmup_epochs": 1,
                    "epochs": 3,
                },
                "train": {
                    "OFFICIAL_EPOCH_LENGTH": 2,
                    "actions": [[1, "dino.loss_weight=0.5"]],
                    "print_freq": 1,
                    "recipe": "other",
                    "cache_dataset": False,
                },
                "evaluation": {"eval_period_iterations": 1, "img_size": 32, "patch_size": 4},
            }
        )
    )
    out = tmp_path / "run"
    sizes = [
        "student.arch=vit_tiny",
        "student.patch_size=4",
        "crops.global_crops_size=16",
        "crops.local_crops_size=8",
        "crops.local_crops_number=2",
        "train.batch_size_per_gpu=4",
        f"train.dataset_path=ImageFolder:root={images24}",
        "train.num_workers=0",
        "dino.head_hidden_dim=64",
        "dino.head_bottleneck_dim=32",
    ]
    result = run_train(["--config-file", str(config), "--output-dir", str(out), *sizes])
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    records = [json.loads(line) for line in (out / "training_metrics.json").read_text().splitlines()]
    assert len(records) == 6  # OFFICIAL_EPOCH_LENGTH=2 x 3 epochs, not len(dataset) // batch
    lr = [r["lr"] for r in records]
    # warm-up over epoch 0 (0 -> peak), the peak held through epoch 1, the cosine from epoch 2 (without
    # peak_epochs the cosine would start at iteration 2)
    assert lr[0] == 0.0 and lr[1:5] == [max(lr)] * 4 and lr[5] < lr[4]
    assert "train.actions: dino.loss_weight=0.5 from epoch 1" in log
    assert sorted(p.name for p in (out / "eval").iterdir()) == [f"training_{i}" for i in range(6)]
    assert "student backbone initialised from" in log and "compile=true is honoured on CUDA only" in log
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["optim"]["opt"] == "sgd" and written["student"]["qknorm"] is True
