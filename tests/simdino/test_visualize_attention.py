"""`simdino/visualize_attention.py`: loads compiled / DDP / v2-style checkpoints for real (not silently
random), writes the per-head attention heatmaps and threshold masks as PNGs, and the masks keep the
requested attention mass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from simdino import visualize_attention as va
from simdinov2.models import build_vit


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one intra-op thread is faster under load
    yield
    torch.set_num_threads(previous)


def save_compiled_v1_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """A checkpoint as a torch.compile'd, DDP-wrapped upstream run writes it."""
    backbone = {f"module._orig_mod.backbone.{k}": v for k, v in model.state_dict().items()}
    head = {"module._orig_mod.head.mlp.0.weight": torch.zeros(8, model.embed_dim)}
    torch.save({"teacher": {**backbone, **head}, "student": {}, "epoch": 3}, path)


def test_compiled_checkpoint_is_loaded_and_pngs_are_written(tmp_path):
    torch.manual_seed(0)
    source = build_vit("vit_tiny", patch_size=4, v1=True, img_size=28).eval()
    ckpt = tmp_path / "checkpoint.pth"
    save_compiled_v1_checkpoint(source, ckpt)
    out = tmp_path / "vis"
    written = va.main(["--arch", "vit_tiny", "--patch_size", "4", "--pretrained_weights", str(ckpt),
                       "--image_size", "32", "--threshold", "0.6", "--output_dir", str(out)])  # fmt: skip
    names = sorted(p.name for p in written)
    heads = source.num_heads
    assert names == sorted(["img.png", *[f"attn-head{j}.png" for j in range(heads)],
                            *[f"mask_th0.6_head{j}.png" for j in range(heads)]])  # fmt: skip
    for path in written:
        with Image.open(path) as im:
            assert im.size == (32, 32), path.name  # the default photo, resized, at patch resolution x 4

    args = va.get_args_parser().parse_args(
        ["--arch", "vit_tiny", "--patch_size", "4", "--pretrained_weights", str(ckpt)]
    )
    loaded = va.load_model(args, torch.device("cpu"))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    img = va.preprocess(va.load_image(None), (32, 32), 4)
    torch.testing.assert_close(va.cls_attention_maps(loaded, img), va.cls_attention_maps(source, img))


def test_checkpoint_with_registers_skips_them_in_the_maps(tmp_path):
    torch.manual_seed(0)
    source = build_vit("vit_tiny", patch_size=4, num_register_tokens=2, img_size=28).eval()
    ckpt = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, ckpt)
    # no --arch / --patch_size: the checkpoint's own architecture (the defaults vit_small/8 would not fit)
    args = va.get_args_parser().parse_args(["--pretrained_weights", str(ckpt)])
    model = va.load_model(args, torch.device("cpu"))
    assert model.num_register_tokens == 2 and model.patch_size == 4 and model.embed_dim == 192
    maps = va.cls_attention_maps(model, torch.randn(1, 3, 24, 20))
    assert maps.shape == (model.num_heads, 6, 5)


def test_threshold_masks_keep_the_requested_mass():
    torch.manual_seed(0)
    attn = torch.rand(3, 5, 5) ** 4
    for threshold in (0.3, 0.6, 0.9):
        masks = va.threshold_masks(attn, threshold)
        for head in range(3):
            weights = attn[head] / attn[head].sum()
            kept = weights[masks[head]]
            assert kept.sum() >= threshold - 1e-6
            # minimal: dropping the smallest kept patch falls below the threshold
            assert kept.sum() - kept.min() < threshold + 1e-6
            # and the kept patches are the most attended ones
            assert kept.min() >= weights[~masks[head]].max()


def test_bad_inputs_are_one_line(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "checkpoint.pth"
    save_compiled_v1_checkpoint(build_vit("vit_tiny", patch_size=4, v1=True, img_size=28), ckpt)
    with pytest.raises(SystemExit) as exc:
        va.main(["--arch", "vit_small", "--patch_size", "4", "--pretrained_weights", str(ckpt)])
    message = str(exc.value.code)
    assert (
        "--arch vit_small contradicts" in message
        and "pass --arch vit_tiny" in message
        and "\n" not in message
    )
    with pytest.raises(SystemExit) as exc:
        va.main(["--arch", "vit_tiny", "--patch_size", "4", "--image_path", str(tmp_path / "none.jpg")])
    assert "is not a file" in str(exc.value.code)


def test_image_size_defaults_to_the_training_resolution(tmp_path, capsys):
    """A 28-px model is drawn at 28 px (not upstream's 480, 66 s on a CPU for such a model)."""
    torch.manual_seed(0)
    source = build_vit("vit_tiny", patch_size=4, num_register_tokens=0, img_size=28).eval()
    ckpt = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, ckpt)
    written = va.main(["--pretrained_weights", str(ckpt), "--output_dir", str(tmp_path / "vis")])
    with Image.open(written[0]) as im:
        assert im.size == (28, 28)
    assert "--image_size not given: 28 px, the resolution the model was trained at" in capsys.readouterr().out
    assert va.get_args_parser().parse_args([]).image_size is None


def test_threshold_outside_zero_one_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        va.main(["--threshold", "60", "--output_dir", str(tmp_path)])
    line = str(exit_info.value.code)
    assert "\n" not in line and "--threshold 60.0 is not a fraction of the attention mass" in line, line
