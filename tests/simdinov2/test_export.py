"""simdinov2.export: plain / safetensors / timm exports and timm feature parity (CPU, timm from PyPI)."""

import re

import pytest
import torch

from simdinov2.checkpoint import build_backbone_from_checkpoint, safe_torch_load
from simdinov2.export import export_backbone, main
from simdinov2.models import build_vit, vit_tiny

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

IMG, PATCH = 32, 4


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_model(v1=False, patch=PATCH, img=IMG, **kwargs):
    torch.manual_seed(0)
    model = (
        build_vit("vit_tiny", patch, v1=True, img_size=img)
        if v1
        else vit_tiny(patch_size=patch, img_size=img, **kwargs)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def teacher_snapshot(model, path):
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()} | {
        "dino_head.last.weight": torch.ones(3)
    }
    torch.save({"teacher": state}, path)
    return path


def images(img=IMG, batch=3):
    torch.manual_seed(1)
    return torch.randn(batch, 3, img, img)


def timm_call_from(lines):
    """The create_model call the export printed, evaluated as a user would paste it."""
    match = re.search(r"model = (timm\.create_model\(.*\))$", "\n".join(lines), re.M)
    assert match, lines
    return eval(match.group(1), {"timm": timm})


CONFIGS = {
    "v1: no registers, no LayerScale": dict(v1=True),
    "v2: registers, LayerScale, chunks": dict(num_register_tokens=4, init_values=1e-5, block_chunks=4),
    "LayerScale only": dict(init_values=1e-5),
    "registers only, no qkv bias": dict(num_register_tokens=2, qkv_bias=False),
    "SwiGLU FFN": dict(ffn_layer="swiglufused", init_values=1e-5, num_register_tokens=1),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_timm_export_gives_the_same_cls_features(tmp_path, name):
    model = random_model(**CONFIGS[name])
    source = teacher_snapshot(model, tmp_path / "teacher_checkpoint.pth")
    lines = export_backbone(source, tmp_path / "timm.safetensors", "timm")
    timm_model = timm_call_from(lines).eval()
    timm_model.load_state_dict(safetensors_torch.load_file(str(tmp_path / "timm.safetensors")))  # strict
    x = images()
    with torch.no_grad():
        assert (timm_model(x) - model(x)).abs().max().item() < 1e-5
    # the timm layout reads back into our ViT as the same function
    back = build_backbone_from_checkpoint(tmp_path / "timm.safetensors", verbose=False).eval()
    with torch.no_grad():
        assert (back(x) - model(x)).abs().max().item() < 1e-5


def test_timm_export_of_a_standard_vit_uses_the_registered_name(tmp_path, capsys):
    model = random_model(patch=16, img=224, num_register_tokens=4, init_values=1e-5)
    source = teacher_snapshot(model, tmp_path / "snap.pth")
    main([str(source), "--out", str(tmp_path / "vit.pth"), "--format", "timm"])
    printed = capsys.readouterr().out
    assert (
        'timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, reg_tokens=4' in printed
    )
    assert "no_embed_class=True" in printed and "init_values=" in printed
    timm_model = timm_call_from(printed.splitlines()).eval()
    timm_model.load_state_dict(torch.load(tmp_path / "vit.pth", weights_only=True))
    x = images(224, batch=1)
    with torch.no_grad():
        assert (timm_model(x) - model(x)).abs().max().item() < 1e-5


@pytest.mark.slow
def test_pth_and_safetensors_exports_round_trip(tmp_path, capsys):
    model = random_model(num_register_tokens=4, init_values=1e-5, block_chunks=4)
    source = teacher_snapshot(model, tmp_path / "teacher_checkpoint.pth")
    main([str(source), "--out", str(tmp_path / "backbone.pth")])
    main([str(source), "--out", str(tmp_path / "backbone.safetensors")])  # format from the extension
    printed = capsys.readouterr().out
    assert "vit_tiny/4 (embed 192, depth 12, 4 registers, LayerScale, mlp FFN)" in printed

    plain = torch.load(tmp_path / "backbone.pth", weights_only=True)
    tensors = safetensors_torch.load_file(str(tmp_path / "backbone.safetensors"))
    assert plain.keys() == tensors.keys()
    assert "blocks.11.mlp.fc2.weight" in plain and not any(k.startswith("dino_head") for k in plain)
    assert not any(re.match(r"blocks\.\d+\.\d+\.", k) for k in plain)  # flat, not chunked, block names
    assert all(torch.equal(plain[k], tensors[k]) for k in plain)
    flat = vit_tiny(patch_size=PATCH, img_size=IMG, num_register_tokens=4, init_values=1e-5)
    flat.load_state_dict(plain)  # strict, without our loader: a plain DINOv2-named backbone
    x = images()
    with torch.no_grad():
        assert torch.equal(flat.eval()(x), model(x))
        for path in ("backbone.pth", "backbone.safetensors"):
            rebuilt = build_backbone_from_checkpoint(tmp_path / path, verbose=False).eval()
            assert torch.equal(rebuilt(x), model(x))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "backbone.safetensors"), "pt") as f:
        assert f.metadata()["arch"] == "vit_tiny" and f.metadata()["num_register_tokens"] == "4"
    assert safe_torch_load(tmp_path / "backbone.safetensors").keys() == plain.keys()


def test_cli_errors_are_one_line(tmp_path):
    torch.save({"epoch": 1, "state_dict": {"linear.weight": torch.zeros(2, 2)}}, tmp_path / "linear.pth")
    with pytest.raises(SystemExit, match="error: unknown checkpoint layout"):
        main([str(tmp_path / "linear.pth"), "--out", str(tmp_path / "x.pth")])
    with pytest.raises(SystemExit, match="error: checkpoint not found"):
        main([str(tmp_path / "missing.pth"), "--out", str(tmp_path / "x.pth")])
    with pytest.raises(SystemExit, match="error: .*no 'student' weights"):
        teacher_snapshot(random_model(v1=True), tmp_path / "snap.pth")
        main([str(tmp_path / "snap.pth"), "--out", str(tmp_path / "x.pth"), "--checkpoint-key", "student"])
