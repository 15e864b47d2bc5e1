"""Losses of both trees: SimDINO's coding-rate objective and the DINO / DINOv2 baselines.

- `MCRLoss`, `coding_rate` (mcr_loss.py): the SimDINO / SimDINOv2 objective (CLS tokens).
- `CosinePatchLoss` (ibot_patch_loss.py): SimDINOv2's masked-patch term.
- `DINOLoss`, `iBOTPatchLoss`, `KoLeoLoss`: DINO / DINOv2 baselines for the paper's comparisons.
"""

from simdinov2.loss.dino_clstoken_loss import DINOLoss
from simdinov2.loss.ibot_patch_loss import CosinePatchLoss, iBOTPatchLoss
from simdinov2.loss.koleo_loss import KoLeoLoss
from simdinov2.loss.mcr_loss import MCRLoss, coding_rate

__all__ = ["MCRLoss", "coding_rate", "CosinePatchLoss", "DINOLoss", "iBOTPatchLoss", "KoLeoLoss"]
