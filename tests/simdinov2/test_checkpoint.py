"""simdinov2.checkpoint loading: every released/our layout, safe unpickling, inference, strict loads."""

import argparse
import logging
import os
import pathlib
import pickle
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from simdinov2.checkpoint import (
    CheckpointError,
    build_backbone_from_checkpoint,
    extract_backbone_state_dict,
    infer_vit_config,
    load_backbone_weights,
    safe_torch_load,
)
from simdinov2.models import build_vit, vit_small, vit_tiny

IMG = 32
PATCH = 4


@pytest.fixture(autouse=True)
def _one_thread():
    """The test machine's cores are shared: one intra-op thread keeps these small models fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_vit(seed: int, v1: bool = False, **kwargs) -> nn.Module:
    """A small ViT whose every parameter is random (so features depend on every tensor)."""
    torch.manual_seed(seed)
    kwargs.setdefault("img_size", IMG)
    model = build_vit("vit_tiny", PATCH, v1=True, **kwargs) if v1 else vit_tiny(patch_size=PATCH, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def head_tensors(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"mlp.0.weight": torch.randn(16, 192, generator=g), "mlp.0.bias": torch.randn(16, generator=g)}


def features(model: nn.Module, size: int = IMG) -> torch.Tensor:
    torch.manual_seed(123)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return model(x)


def v1_training_checkpoint(teacher: nn.Module, student: nn.Module) -> dict:
    """simdino/main_dino.py with --compile and DDP: student `_orig_mod.module.*`, teacher `_orig_mod.*`."""
    return {
        "student": {f"_orig_mod.module.backbone.{k}": v for k, v in student.state_dict().items()}
        | {f"_orig_mod.module.head.{k}": v for k, v in head_tensors(1).items()},
        "teacher": {f"_orig_mod.backbone.{k}": v for k, v in teacher.state_dict().items()}
        | {f"_orig_mod.head.{k}": v for k, v in head_tensors(2).items()},
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0)}},
            "param_groups": [{"lr": 1e-4, "params": [0]}],
        },
        "epoch": 7,
        "args": argparse.Namespace(
            arch="vit_tiny", patch_size=PATCH, output_dir=pathlib.Path("/tmp/out"), eps=0.05
        ),
        "dino_loss": {},
        "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 11},
    }


def v2_teacher_snapshot(teacher: nn.Module) -> dict:
    """simdinov2 eval/training_N/teacher_checkpoint.pth: backbone + both heads under 'teacher'."""
    state = {f"backbone.{k}": v for k, v in teacher.state_dict().items()}
    state |= {f"dino_head.{k}": v for k, v in head_tensors(3).items()}
    state |= {f"ibot_head.{k}": v for k, v in head_tensors(4).items()}
    return {"teacher": state}


V2_KW = dict(num_register_tokens=4, init_values=1e-5, block_chunks=4)


def test_v1_compiled_ddp_checkpoint_picks_teacher_or_student(tmp_path, caplog):
    teacher, student = random_vit(0, v1=True), random_vit(1, v1=True)
    path = tmp_path / "checkpoint.pth"
    torch.save(v1_training_checkpoint(teacher, student), path)

    model = build_vit("vit_tiny", PATCH, v1=True, img_size=IMG)
    project_logger = logging.getLogger("simdinov2")  # may not propagate (setup_logging): listen on it
    project_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="simdinov2"):
            report = load_backbone_weights(model, path)
    finally:
        project_logger.removeHandler(caplog.handler)
    assert torch.equal(features(model.eval()), features(teacher))
    assert sorted(report.skipped_keys) == ["head.mlp.0.bias", "head.mlp.0.weight"]
    assert "v1 training checkpoint" in report.summary() and "head.* (2)" in report.summary()
    assert set(caplog.messages) == {report.summary()}  # the one-line summary, logged

    load_backbone_weights(model, path, checkpoint_key="student", verbose=False)
    assert torch.equal(features(model), features(student))
    assert not torch.equal(features(student), features(teacher))


def test_v2_snapshot_with_chunks_loads_into_flat_and_chunked_models(tmp_path):
    teacher = random_vit(2, **V2_KW)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save(v2_teacher_snapshot(teacher), path)
    state, skipped = extract_backbone_state_dict(path)
    assert "blocks.0.0.norm1.weight" in state and "blocks.3.11.mlp.fc2.bias" in state  # source layout kept
    assert not any(k.startswith(("dino_head", "ibot_head", "backbone")) for k in state)
    assert sorted(skipped) == sorted(
        [f"{h}.mlp.0.{p}" for h in ("dino_head", "ibot_head") for p in ("weight", "bias")]
    )
    for chunks in (0, 2, 4):
        model = vit_tiny(
            patch_size=PATCH, img_size=IMG, num_register_tokens=4, init_values=1e-5, block_chunks=chunks
        )
        load_backbone_weights(model, path, verbose=False)
        assert torch.equal(features(model.eval()), features(teacher))


def test_dcp_directory_reads_only_the_requested_backbone(tmp_path):
    import torch.distributed.checkpoint as dcp

    teacher, student = random_vit(3, **V2_KW), random_vit(4, **V2_KW)
    state = {
        "model": {f"teacher.backbone.{k}": v for k, v in teacher.state_dict().items()}
        | {f"student.backbone.{k}": v for k, v in student.state_dict().items()}
        | {f"teacher.dino_head.{k}": v for k, v in head_tensors(5).items()},
        "optimizer": {"state": {"0": {"exp_avg": torch.ones(3)}}},
        "iteration": 12,
    }
    with warnings.catch_warnings():  # "torch.distributed is disabled": a single-process save is intended
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(tmp_path / "ckpt"), no_dist=True)

    model = build_backbone_from_checkpoint(tmp_path / "ckpt", verbose=False)
    assert torch.equal(features(model.eval()), features(teacher))
    assert model.num_register_tokens == 4 and model.chunked_blocks
    model = build_backbone_from_checkpoint(tmp_path / "ckpt", checkpoint_key="student", verbose=False)
    assert torch.equal(features(model.eval()), features(student))

    whole = safe_torch_load(tmp_path / "ckpt")
    assert whole["iteration"] == 12 and torch.equal(
        whole["optimizer"]["state"]["0"]["exp_avg"], torch.ones(3)
    )
    with pytest.raises(CheckpointError, match="several backbones match 'model'"):
        extract_backbone_state_dict(tmp_path / "ckpt", checkpoint_key="model")


class _Booby:
    """Unpickling this would run a shell command that creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_booby_trapped_checkpoints_are_refused_without_running(tmp_path):
    marker = tmp_path / "PWNED"
    teacher = random_vit(5, v1=True)
    zip_file, plain_pickle = tmp_path / "evil.pth", tmp_path / "evil.pkl"
    torch.save(
        {"teacher": teacher.state_dict(), "args": argparse.Namespace(a=1), "x": _Booby(marker)}, zip_file
    )
    with open(plain_pickle, "wb") as f:
        pickle.dump({"teacher": {"x": torch.zeros(1)}, "x": _Booby(marker)}, f)
    for path in (zip_file, plain_pickle):
        with pytest.raises(CheckpointError) as info:
            safe_torch_load(path)
        message = str(info.value)
        assert "\n" not in message and "refusing to load" in message and "system" in message
        assert "Namespace" not in message  # allowed types are not blamed
        with pytest.raises(CheckpointError, match="refusing"):
            build_backbone_from_checkpoint(path, verbose=False)
    # a DCP directory whose pickled metadata is booby-trapped is refused as well
    dcp_dir = tmp_path / "dcp"
    dcp_dir.mkdir()
    with open(dcp_dir / ".metadata", "wb") as f:
        pickle.dump(_Booby(marker), f)
    with pytest.raises(CheckpointError, match="refusing"):
        build_backbone_from_checkpoint(dcp_dir, verbose=False)
    assert not marker.exists()


def test_plain_types_of_old_checkpoints_are_allowed(tmp_path):
    path = tmp_path / "old.pth"
    args = argparse.Namespace(output_dir=pathlib.Path("/x/y"), lr=0.1)
    torch.save(
        {"args": args, "best_acc": np.float64(77.3), "dtype": np.dtype("float32"), "n": np.int64(3)}, path
    )
    loaded = safe_torch_load(path)
    assert loaded["args"] == args and loaded["best_acc"] == 77.3 and loaded["n"] == 3
    legacy = tmp_path / "legacy.pth"  # pre-1.6 torch.save format
    torch.save({"args": args, "w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert safe_torch_load(legacy)["args"] == args


def test_missing_file_and_unknown_layout_give_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pth"):
        safe_torch_load(tmp_path / "nope.pth")
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "epoch": 1}, tmp_path / "linear.pth")
    with pytest.raises(
        CheckpointError, match="unknown checkpoint layout.*patch_embed.proj.weight.*epoch, state_dict"
    ):
        build_backbone_from_checkpoint(tmp_path / "linear.pth", verbose=False)
    (tmp_path / "page.pth").write_text("<!DOCTYPE html><html>Google Drive quota exceeded</html>")
    with pytest.raises(CheckpointError, match="HTML page"):
        safe_torch_load(tmp_path / "page.pth")
    snapshot = tmp_path / "snap.pth"
    torch.save(v2_teacher_snapshot(random_vit(6, **V2_KW)), snapshot)
    with pytest.raises(CheckpointError, match=r"no 'student' weights; backbones found under: 'teacher'"):
        extract_backbone_state_dict(snapshot, checkpoint_key="student")


def test_arch_mismatch_is_one_line_naming_both(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(
        {"teacher": {f"backbone.{k}": v for k, v in vit_small(patch_size=16).state_dict().items()}}, path
    )
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(vit_tiny(patch_size=4), path)
    message = str(info.value)
    assert "\n" not in message
    assert "checkpoint is vit_small/16 (embed 384" in message and "model is vit_tiny/4 (embed 192" in message
    teacher = random_vit(7, **V2_KW)
    torch.save(v2_teacher_snapshot(teacher), path)
    with pytest.raises(CheckpointError, match="4 registers.*but model is.*0 registers"):
        load_backbone_weights(vit_tiny(patch_size=PATCH, img_size=IMG, init_values=1e-5), path)
    with pytest.raises(CheckpointError, match="but model is vit_base/16"):
        build_backbone_from_checkpoint(path, arch="vit_base", patch_size=16)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(v1=True),
        dict(num_register_tokens=4, init_values=1e-5, block_chunks=4),
        dict(ffn_layer="swiglufused", init_values=1e-5, num_register_tokens=1, qkv_bias=False),
    ],
)
def test_infer_vit_config_reads_the_architecture_off_the_shapes(kwargs):
    model = random_vit(8, **kwargs)
    config = infer_vit_config(model.state_dict())
    assert config["arch"] == "vit_tiny" and config["patch_size"] == PATCH and config["img_size"] == IMG
    assert config["embed_dim"] == 192 and config["depth"] == 12 and config["num_heads"] == 3
    assert config["num_register_tokens"] == kwargs.get("num_register_tokens", 0)
    assert bool(config["init_values"]) == bool(kwargs.get("init_values"))
    assert config["block_chunks"] == kwargs.get("block_chunks", 0)
    assert config["ffn_layer"] == kwargs.get("ffn_layer", "mlp")
    assert config["use_mask_token"] == (not kwargs.get("v1", False))
    assert config["qkv_bias"] == kwargs.get("qkv_bias", True)
    rebuilt = build_backbone_from_checkpoint(model.state_dict(), verbose=False)
    assert torch.equal(features(rebuilt.eval()), features(model))


def test_grid_and_mask_token_are_adapted_to_the_weights(tmp_path):
    teacher = random_vit(9, v1=True, img_size=64)  # trained at 64 px: 16x16 position grid
    path = tmp_path / "ckpt.pth"
    torch.save(v1_training_checkpoint(teacher, teacher), path)
    model = vit_tiny(patch_size=PATCH, img_size=IMG)  # 8x8 grid and a mask token the file lacks
    report = load_backbone_weights(model, path, verbose=False)
    assert any("pos_embed" in n for n in report.notes) and any("mask_token" in n for n in report.notes)
    for size in (64, 48):  # the checkpoint's function at its own size and when interpolated
        assert torch.equal(features(model.eval(), size), features(teacher, size))


def test_plain_and_wrapped_state_dicts_and_non_vit_modules():
    teacher = random_vit(10, **V2_KW)
    for prefix in ("", "module.", "backbone.", "_orig_mod.module.backbone.", "module._orig_mod.backbone."):
        state = {f"{prefix}{k}": v for k, v in teacher.state_dict().items()} | {"head.weight": torch.zeros(2)}
        model = build_backbone_from_checkpoint(state, verbose=False)
        assert torch.equal(features(model.eval()), features(teacher))
    # a non-ViT backbone (v1 scripts accept torchvision archs) is found by its parameter names, even
    # when a head has a parameter of the same name
    net = nn.Sequential(nn.Linear(4, 4))
    expected = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    ckpt = {
        "teacher": {f"module.backbone.{k}": v for k, v in expected.items()}
        | {"module.head.mlp.0.weight": torch.zeros(8, 4), "module.head.mlp.0.bias": torch.zeros(8)},
        "epoch": 1,
    }
    report = load_backbone_weights(net, ckpt, verbose=False)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in expected.items())
    assert sorted(report.skipped_keys) == ["head.mlp.0.bias", "head.mlp.0.weight"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("zip_format", [True, False])
def test_refusal_names_only_the_offending_objects(tmp_path, zip_format):
    """State dicts are OrderedDicts, which weights_only loading allows: never blamed in a refusal."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    state = random_vit(11, v1=True).state_dict()
    assert type(state).__name__ == "OrderedDict"
    torch.save({"teacher": state, "x": _Booby(marker)}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError) as info:
        safe_torch_load(path)
    listed = re.search(r"pickled code/objects \((.*?)\)", str(info.value)).group(1)
    assert listed == f"GLOBAL {os.system.__module__}.system"  # posix.system; not collections.OrderedDict
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"hello, this is a text file\n", b"\x00" * 64, b"PK\x03\x04 cut"])
def test_empty_text_or_garbage_files_are_corrupt_for_every_loader(tmp_path, content):
    loaders = {
        "safe_torch_load": safe_torch_load,
        "extract_backbone_state_dict": extract_backbone_state_dict,
        "build_backbone_from_checkpoint": lambda p: build_backbone_from_checkpoint(p, verbose=False),
        "load_backbone_weights": lambda p: load_backbone_weights(
            vit_tiny(patch_size=PATCH), p, verbose=False
        ),
    }
    for suffix in (".pth", ".safetensors"):
        path = tmp_path / f"checkpoint{suffix}"
        path.write_bytes(content)
        for name, load in loaders.items():
            with pytest.raises(CheckpointError) as info:
                load(path)
            message = str(info.value)
            assert "\n" not in message and str(path) in message, (name, message)
            assert "corrupt or not a checkpoint" in message, (name, message)
    dcp_dir = tmp_path / "dcp"
    dcp_dir.mkdir()
    (dcp_dir / ".metadata").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"\.metadata is corrupt or not a checkpoint"):
        build_backbone_from_checkpoint(dcp_dir, verbose=False)
