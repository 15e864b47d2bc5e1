"""`python -m simdinov2.export CKPT --format hf --out DIR`: the folder loads with
`transformers.AutoModel.from_pretrained` alone (v1 -> ViTModel, v2 -> Dinov2Model /
Dinov2WithRegistersModel), its CLS feature equals our `x_norm_clstoken` on random input and on a real
image passed through the exported image processor; without transformers, and for an unusable --out, the
error is one line; the folder is written atomically."""

from __future__ import annotations

import errno
import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image

from simdinov2.export import main
from simdinov2.models import build_vit

transformers = pytest.importorskip("transformers")

IMG, PATCH = 32, 4  # the native resolution: no position-embedding interpolation on either side


def random_model(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_vit("vit_tiny", patch_size=PATCH, img_size=IMG, depth=2, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)  # LayerScale, biases and norms away from their initial values
    return model.eval()


def save_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """A training checkpoint as the v1/v2 trainers leave it (teacher entry, DDP + backbone prefixes, a head)."""
    state = {f"module.backbone.{k}": v for k, v in model.state_dict().items()}
    state["module.head.last_layer.weight"] = torch.zeros(8, model.embed_dim)
    torch.save({"teacher": state, "student": {}, "epoch": 1}, path)
    return path


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


CASES = {
    "v1": (dict(v1=True), "ViTModel"),
    "v2-registers-layerscale": (dict(num_register_tokens=4, init_values=1e-5), "Dinov2WithRegistersModel"),
    "v2-swiglu-layerscale": (dict(init_values=1e-5, ffn_layer="swiglufused"), "Dinov2Model"),
    "v2-no-layerscale": (dict(), "Dinov2Model"),  # mask token only: LayerScale of ones on the HF side
}


@pytest.mark.parametrize("case", list(CASES))
def test_hf_folder_loads_with_automodel_and_gives_our_cls_feature(case, tmp_path, tiny_imagefolder, capsys):
    kwargs, expected_class = CASES[case]
    model = random_model(**kwargs)
    out = tmp_path / "hf_export"
    main([str(save_checkpoint(model, tmp_path / "checkpoint.pth")), "--format", "hf", "--out", str(out)])
    assert f"transformers {expected_class}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    hf, info = transformers.AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert type(hf).__name__ == expected_class
    missing = set(info["missing_keys"])
    assert missing == (
        {"pooler.dense.weight", "pooler.dense.bias"} if expected_class == "ViTModel" else set()
    )
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    # the same layer-norm eps (too small to show in the features of this random model)
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {hf.config.layer_norm_eps}

    torch.manual_seed(1)
    x = torch.randn(3, 3, IMG, IMG)
    with torch.no_grad():
        ours = model.forward_features(x)["x_norm_clstoken"]
        theirs = hf(pixel_values=x).last_hidden_state[:, 0]
    assert relative_difference(theirs, ours) < 1e-4

    # a real image through the exported preprocessing: our model sees the same pixels
    processor = transformers.AutoImageProcessor.from_pretrained(str(out))
    image = Image.open(next((tiny_imagefolder / "val").rglob("*.png"))).convert("RGB")
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, IMG, IMG)
    with torch.no_grad():
        real_ours = model.forward_features(pixels)["x_norm_clstoken"]
        real_theirs = hf(pixel_values=pixels).last_hidden_state[:, 0]
    assert relative_difference(real_theirs, real_ours) < 1e-4


def test_missing_transformers_is_one_line(tmp_path, monkeypatch):
    ckpt = save_checkpoint(random_model(v1=True), tmp_path / "checkpoint.pth")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "transformers" else real_find_spec(name, *a),
    )
    with pytest.raises(SystemExit) as exit_info:
        main([str(ckpt), "--format", "hf", "--out", str(tmp_path / "hf")])
    line = str(exit_info.value.code)
    assert "\n" not in line and "needs the transformers package: pip install transformers" in line
    assert not (tmp_path / "hf").exists()


def test_unusable_out_is_one_line_and_an_export_is_replaced_whole(tmp_path, monkeypatch):
    ckpt = save_checkpoint(random_model(num_register_tokens=2, init_values=1e-5), tmp_path / "checkpoint.pth")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    other = tmp_path / "my_folder"
    other.mkdir()
    (other / "data.bin").write_text("keep me")
    for out, message in (
        (a_file / "hf", "cannot be used as the output folder"),
        (other, "exists and is not a Hugging Face export"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([str(ckpt), "--format", "hf", "--out", str(out)])
        line = str(exit_info.value.code)
        assert "\n" not in line and message in line, line
    assert (other / "data.bin").read_text() == "keep me"

    out = tmp_path / "hf"
    main([str(ckpt), "--format", "hf", "--out", str(out)])
    first = (out / "model.safetensors").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        main([str(ckpt), "--format", "hf", "--out", str(out)])
    assert "cannot be written: No space left on device" in str(exit_info.value.code)
    assert (out / "model.safetensors").read_bytes() == first  # the previous export is intact
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    monkeypatch.undo()
    main([str(ckpt), "--format", "hf", "--out", str(out)])  # a second export replaces the first whole
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
