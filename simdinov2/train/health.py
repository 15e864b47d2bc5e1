"""Is the representation healthy? Effective rank of the teacher's features, and the coding rate's batch guard.

`effective_rank(Z)` = exp(entropy of the normalised singular values of Z) (Roy & Vetterli 2007; RankMe
uses it for self-supervised features): 1 when every row is the same direction (collapse), up to
min(rows, dim) when the spectrum is flat. `RepresentationProbe` keeps the last batch of the teacher's global
CLS embeddings (and, for the coding-rate objectives, of its head's output) through forward hooks, so the
training loops need one line each; `measure()` costs one small SVD and runs only at logged iterations.

A run whose effective rank (backbone, or SimDINO's head) falls under `collapse_threshold(rows, dim)` gets one
warning line (again only after it has recovered). The threshold was measured on the demo data (docs/RESULTS.md:
a collapsing SimDINO run against the normal recipe).

`warn_if_rank_deficient_covariance` is the batch-size guard: the coding rate's covariance of a process's
batch has rank at most the batch size, so a batch smaller than the feature dimension leaves it
rank-deficient unless the covariance is summed over processes (`reduce_cov`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from simdinov2 import distributed

logger = logging.getLogger("simdinov2")

# A rank under max(COLLAPSE_FLOOR, COLLAPSE_FRACTION x min(rows, dim)) signals collapse (docs/RESULTS.md: on the
# demo data a collapsing run fell to 0.045 (backbone) and 0.015 (head) of that maximum while the normal recipe
# never went under 0.15; a full collapse gives 1, whatever the size).
COLLAPSE_FRACTION = 0.1
COLLAPSE_FLOOR = 2.0


@torch.no_grad()
def effective_rank(features: Tensor, centered: bool = False) -> float:
    """exp(H(p)), p = singular values of `features` [n, d] divided by their sum. Uncentred by default, as
    RankMe (a collapse to one constant vector gives 1); `centered=True` measures the spread around the mean
    (docs/RESULTS.md's test-set column)."""
    features = features.detach().double() if centered else features.detach().float()
    if centered:
        features = features - features.mean(0)
    singular = torch.linalg.svdvals(features)
    total = singular.sum()
    if not total > 1e-12:
        return 0.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def collapse_threshold(rows: int, dim: int, fraction: float = COLLAPSE_FRACTION) -> float:
    """The effective rank under which features of a [rows, dim] batch are collapsing."""
    return max(COLLAPSE_FLOOR, fraction * min(rows, dim))


def _cls_rows(output: Any) -> Tensor:
    """CLS embeddings from a backbone's output: a tensor, a list of per-resolution tensors (v1's ViT fed a
    list of crop groups) or DINOv2's dict."""
    if isinstance(output, dict):
        return output["x_norm_clstoken"]
    if isinstance(output, (list, tuple)):
        return torch.cat([_cls_rows(o) for o in output])
    return output


class RepresentationProbe:
    """Forward hooks on the teacher's `backbone` (and `head`, or None) that keep the last batch's outputs.

    `measure()` returns `{"effective_rank": ..., "effective_rank_head": ...}` of the last batch (the head's
    only when a head is probed) and warns once when the backbone's falls under `threshold`."""

    def __init__(
        self, backbone: nn.Module, head: nn.Module | None = None, fraction: float = COLLAPSE_FRACTION
    ):
        self.fraction = fraction
        self.collapsed = False
        self._cls: Tensor | None = None
        self._head: Tensor | None = None
        self._handles = [backbone.register_forward_hook(self._keep_cls)]
        if head is not None:
            self._handles.append(head.register_forward_hook(self._keep_head))

    def _keep_cls(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._cls = _cls_rows(output).detach()

    def _keep_head(self, module: nn.Module, inputs: Any, output: Any) -> None:
        # v2's head may also take the masked patch tokens after the CLS rows: keep the CLS rows only.
        rows = self._cls.shape[0] if self._cls is not None else output.shape[0]
        self._head = output[:rows].detach()

    def measure(self) -> dict[str, float]:
        if self._cls is None:
            return {}
        features = {"effective_rank": self._cls}
        if self._head is not None:
            features["effective_rank_head"] = self._head
        values = {name: effective_rank(f) for name, f in features.items()}
        low = [
            f"{name} {values[name]:.2f} < {collapse_threshold(*f.shape, self.fraction):.1f} (of at most "
            f"{min(f.shape)})"
            for name, f in features.items()
            if values[name] < collapse_threshold(*f.shape, self.fraction)
        ]
        if low and not self.collapsed and distributed.is_main_process():
            logger.warning(
                "the representation is collapsing: teacher's %s; see docs/RESULTS.md (collapse) and "
                "the README's healthy curves",
                ", ".join(low),
            )
        self.collapsed = bool(low)
        return values

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def probe_teacher(model: Any) -> RepresentationProbe:
    """The probe of v2's `SSLMetaArch`: its teacher backbone, and the DINO head when the coding rate uses it."""
    teacher = model.teacher
    uses_head = model.do_dino and model.dino_use_mcr and "dino_head" in teacher
    return RepresentationProbe(teacher.backbone, teacher.dino_head if uses_head else None)


def warn_if_rank_deficient_covariance(
    batch_per_process: int, feature_dim: int, reduce_cov: bool, world_size: int, flag: str
) -> bool:
    """One warning line when a process's batch cannot give the coding rate a full-rank covariance."""
    if reduce_cov or batch_per_process >= feature_dim:
        return False
    if not distributed.is_main_process():  # the same on every process: one line
        return True
    remedy = (
        f"set {flag} to sum it over the {world_size} processes"
        if world_size > 1
        else f"use a larger batch, or several processes with {flag}"
    )
    logger.warning(
        f"batch of {batch_per_process} images per process < feature dimension {feature_dim}: the coding rate's "
        f"covariance is rank-deficient on each process (rank <= {batch_per_process}); {remedy} "
        "(docs/RESULTS.md: reduce_cov)"
    )
    return True
