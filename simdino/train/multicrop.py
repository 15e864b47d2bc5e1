"""v1's student/teacher pair, DINO style: a backbone and a projection head per network, fed a list of
crops of several resolutions (`MultiCropWrapper`), the teacher an EMA of the student.

Owns the v1 architecture choices (`VIT_ARCHS`, `TORCHVISION_ARCHS`), `build_backbone`, `build_head`,
`build_student_teacher` (student with stochastic depth, teacher with the same weights and no gradients),
`build_loss` and `MultiCropStudentTeacher`, which gives the pair, its loss (SimDINO's coding rate or DINO's
cross-entropy) and its DDP wrapper the interface of `simdinov2.train.step.train_step`.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from simdinov2.layers import DINOHead
from simdinov2.loss import DINOLoss, MCRLoss
from simdinov2.models import ARCHS, DinoVisionTransformer, build_vit
from simdinov2.precision import AmpSettings
from simdinov2.train.health import RepresentationProbe
from simdinov2.train.optim import cancel_gradients_last_layer, clip_gradients, ema_update

VIT_ARCHS = list(ARCHS)
# torchvision families whose classifier is a `fc` Linear (DINO's ResNet-50 runs use these).
_TORCHVISION_FAMILIES = ("resnet", "resnext", "wide_resnet", "regnet")


def _torchvision_archs() -> list[str]:
    try:
        import torchvision.models as tvm  # optional: only the convnet archs need it

        names = tvm.list_models(module=tvm)
    except Exception:  # pragma: no cover - torchvision missing or broken
        return []
    return sorted(n for n in names if n.startswith(_TORCHVISION_FAMILIES))


TORCHVISION_ARCHS = _torchvision_archs()


class MultiCropWrapper(nn.Module):
    """Backbone + projection head over a list of crops of possibly different resolutions.

    Consecutive crops of the same size are concatenated into one batch (2 global, then the locals), so
    the backbone runs once per resolution; the head runs once on all CLS embeddings. Output rows are
    view-major: `out.chunk(len(crops))` gives one [B, out] tensor per crop. The state-dict layout is
    `backbone.*` / `head.*`, as in DINO's checkpoints.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: Tensor | list[Tensor]) -> Tensor:
        if isinstance(crops, Tensor):
            crops = [crops]
        groups: list[Tensor] = []
        start = 0
        for end in range(1, len(crops) + 1):
            if end == len(crops) or crops[end].shape[-2:] != crops[start].shape[-2:]:
                groups.append(torch.cat(crops[start:end]))
                start = end
        if isinstance(self.backbone, DinoVisionTransformer):
            # A list input runs each size group through the blocks; going through __call__ (not
            # forward_features) keeps nn.Module.compile() effective.
            embeddings = self.backbone(groups)
        else:
            embeddings = [self.backbone(group) for group in groups]
        return self.head(torch.cat(embeddings))


def build_backbone(args: argparse.Namespace, drop_path_rate: float) -> tuple[nn.Module, int]:
    """The DINO v1 ViT (no mask token, position embedding sized for the global crops) or a torchvision
    convnet with its classifier removed. Returns (backbone, embedding dim)."""
    if args.arch in ARCHS:
        depth = {"depth": args.depth} if getattr(args, "depth", 0) else {}  # 0 / absent: the arch's
        model = build_vit(
            args.arch,
            patch_size=args.patch_size,
            v1=True,
            img_size=args.global_crops_size,
            drop_path_rate=drop_path_rate,
            **depth,
        )
        return model, model.embed_dim
    import torchvision.models as tvm  # optional: only the convnet archs need it

    model = tvm.get_model(args.arch)
    embed_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model, embed_dim


def build_head(args: argparse.Namespace, embed_dim: int, student: bool) -> DINOHead:
    if args.use_simdino:
        # SimDINO: L2-normalised z_dim features straight into the coding-rate loss (no prototypes).
        return DINOHead(
            embed_dim,
            out_dim=args.z_dim,
            hidden_dim=args.hidden_dim,
            bottleneck_dim=args.z_dim,
            use_bn=args.use_bn_in_head,
            normalize=True,
            remove_last_layer=True,
        )
    return DINOHead(
        embed_dim,
        out_dim=args.out_dim,
        hidden_dim=args.hidden_dim,
        bottleneck_dim=args.z_dim,
        use_bn=args.use_bn_in_head,
        normalize=True,
        remove_last_layer=False,
        norm_last_layer=args.norm_last_layer if student else True,
    )


def build_student_teacher(args: argparse.Namespace) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student (with stochastic depth) and teacher (same weights, no drop path, no gradients)."""
    student_backbone, embed_dim = build_backbone(args, args.drop_path_rate)
    teacher_backbone, _ = build_backbone(args, 0.0)
    student = MultiCropWrapper(student_backbone, build_head(args, embed_dim, student=True))
    teacher = MultiCropWrapper(teacher_backbone, build_head(args, embed_dim, student=False))
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    return student, teacher


def build_loss(args: argparse.Namespace) -> nn.Module:
    """SimDINO's coding-rate loss (`--use_simdino true`) or DINO's centered cross-entropy."""
    if args.use_simdino:
        return MCRLoss(eps=args.eps, coeff=args.coeff, expa_type=args.expa_type, reduce_cov=args.reduce_cov)
    return DINOLoss(args.out_dim, student_temp=0.1, center_momentum=0.9)


class MultiCropStudentTeacher:
    """The v1 pair as `train_step` drives it.

    `student` may be DDP-wrapped (`student_without_ddp` is the plain module); `loss_fn` is an `MCRLoss`
    (SimDINO: `use_simdino`) or a `DINOLoss` (the DINO baseline, whose teacher temperature and frozen
    prototype layer follow per-epoch schedules: `values["teacher_temp"]`, `values["epoch"]`)."""

    def __init__(
        self,
        student: nn.Module,
        student_without_ddp: nn.Module,
        teacher: nn.Module,
        loss_fn: nn.Module,
        amp: AmpSettings,
        use_simdino: bool,
        freeze_last_layer: int,
    ) -> None:
        self.student = student
        self.student_without_ddp = student_without_ddp
        self.teacher = teacher
        self.loss_fn = loss_fn
        self.amp = amp
        self.use_simdino = use_simdino
        self.freeze_last_layer = freeze_last_layer
        # effective rank of the teacher's CLS embeddings (and of SimDINO's head output) at logged iterations
        self.probe = RepresentationProbe(teacher.backbone, teacher.head if use_simdino else None)

    def train(self) -> None:
        self.student.train()
        self.teacher.train()

    def apply_optim_schedule(self, optimizer: torch.optim.Optimizer, values: dict[str, float]) -> None:
        """DINO's rule: every group follows the lr schedule, only the first (weights) the wd schedule."""
        for i, param_group in enumerate(optimizer.param_groups):
            param_group["lr"] = values["lr"]
            if i == 0:  # only the first group is regularized
                param_group["weight_decay"] = values["wd"]

    def set_mcr_schedule(self, eps: float | None = None, coeff: float | None = None) -> None:
        """v1 keeps eps and coeff fixed (its flags); nothing to schedule."""

    def forward_losses(
        self, images: list[Tensor], teacher_temp: float, ibot_loss_weight: float | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss and its detached parts (`loss`, and `expa_loss` / `comp_loss` for SimDINO)."""
        with self.amp.autocast():
            # only the 2 global views pass through the teacher
            with torch.no_grad():
                teacher_output = self.teacher(images[:2])
            student_output = self.student(images)
        if self.use_simdino:
            loss, parts = self.loss_fn(list(student_output.chunk(len(images))), list(teacher_output.chunk(2)))
            return loss, {
                "loss": loss.detach(),
                "expa_loss": parts["expa_loss"],
                "comp_loss": parts["comp_loss"],
            }
        loss = self.loss_fn.forward_v1(student_output, teacher_output, teacher_temp)
        return loss, {"loss": loss.detach()}

    def clip_gradients(self, max_norm: float) -> dict[str, float]:
        """DINO's per-parameter clipping (no norms logged, as upstream)."""
        clip_gradients(self.student, max_norm)
        return {}

    def cancel_frozen_gradients(self, values: dict[str, float]) -> None:
        cancel_gradients_last_layer(int(values["epoch"]), self.student, self.freeze_last_layer)

    def update_teacher(self, momentum: float) -> None:
        ema_update(self.teacher.parameters(), self.student_without_ddp.parameters(), momentum)
