"""Golden numbers of the v1 trainer: the loss of each of the first iterations and a checksum of the
student and teacher weights after them, for SimDINO and the DINO baseline, from a fixed seed in fp32 on
the CPU in one process (tiny ViT, 28-px crops, a deterministic synthetic dataset).

The constants were recorded on commit d6f7725, before the training core was refactored into
`simdinov2/train/`: the refactor must not change a single number. Re-record them only for a deliberate
change of the numerics (e.g. a different initialisation), never to make a failing refactor pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from golden_data import checksum, write_golden_imagefolder

from simdinov2.checkpoint import safe_torch_load
from simdinov2.loss import DINOLoss, MCRLoss

REL = 1e-5

GOLDEN_FLAGS = [
    "--arch", "vit_tiny", "--patch_size", "4", "--depth", "4", "--global_crops_size", "28",
    "--local_crops_size", "12", "--local_crops_number", "2", "--compile", "false", "--use_fp16", "false",
    "--num_workers", "0", "--batch_size_per_gpu", "8", "--epochs", "2", "--warmup_epochs", "1",
    "--hidden_dim", "128", "--z_dim", "32", "--out_dim", "64", "--lr", "0.005", "--seed", "3",
    "--saveckp_freq", "0", "--device", "cpu",
]  # fmt: skip

# Recorded on commit d6f7725 (before the core refactor). 32 images / batch 8 = 4 iterations per epoch.
GOLDEN = {
    "simdino": {
        "losses": [-1.2240560054779053, -1.2323049306869507, -1.3089627027511597, -1.2886338233947754,
                   -1.2666754722595215, -1.3647016286849976, -1.3048951625823975, -1.3796359300613403],
        "student": (1712.042034722666, 2523.2903195698527),
        "teacher": (1711.8603670082132, 2523.321061157075),
    },
    "dino": {
        "losses": [4.691049098968506, 4.495106220245361, 3.6644628047943115, 3.1305348873138428,
                   3.3531100749969482, 3.234081506729126, 3.3763139247894287, 3.3780651092529297],
        "student": (1776.94870984447, 2609.476298518243),
        "teacher": (1777.6338070514585, 2609.555501442656),
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def golden_data(tmp_path_factory) -> Path:
    return write_golden_imagefolder(tmp_path_factory.mktemp("golden") / "train")


def run_v1(data: Path, out: Path, use_simdino: bool, monkeypatch) -> dict:
    """Train through the command-line entry point; the per-iteration losses are read at the loss module."""
    from simdino import main_dino

    losses: list[float] = []
    if use_simdino:
        original = MCRLoss.forward

        def recording(self, *args, **kwargs):
            loss, parts = original(self, *args, **kwargs)
            losses.append(loss.item())
            return loss, parts

        monkeypatch.setattr(MCRLoss, "forward", recording)
    else:
        original_v1 = DINOLoss.forward_v1

        def recording_v1(self, *args, **kwargs):
            loss = original_v1(self, *args, **kwargs)
            losses.append(loss.item())
            return loss

        monkeypatch.setattr(DINOLoss, "forward_v1", recording_v1)
    argv = [*GOLDEN_FLAGS, "--data_path", str(data), "--output_dir", str(out), "--use_simdino", str(use_simdino)]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main_dino.main(main_dino.get_args_parser().parse_args(argv))
    finally:
        torch.set_num_threads(previous)
    ckpt = safe_torch_load(out / "checkpoint.pth")
    return {"losses": losses, "student": checksum(ckpt["student"]), "teacher": checksum(ckpt["teacher"])}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["simdino", "dino"])
def test_v1_golden_numbers(variant, golden_data, tmp_path, monkeypatch):
    got = run_v1(golden_data, tmp_path / variant, variant == "simdino", monkeypatch)
    want = GOLDEN[variant]
    assert len(got["losses"]) == len(want["losses"])
    assert got["losses"] == pytest.approx(want["losses"], rel=REL)
    for net in ("student", "teacher"):
        assert got[net] == pytest.approx(want[net], rel=REL), net
