"""The v2 self-distillation model: student and EMA teacher, their heads, and the training losses.

`SSLMetaArch` owns what one training step computes (SimDINOv2, arXiv 2502.10385, and the DINOv2
baseline it is compared with):
- the teacher backbone sees the 2 global crops; its CLS tokens and the patch tokens at the iBOT mask
  positions go through the teacher head (`dino_head`, shared with iBOT unless `ibot.separate_head`);
- the student backbone sees the global crops (with iBOT masks) and the local crops; its CLS tokens of
  all crops and its masked patch tokens go through the student head;
- CLS loss: the coding-rate `MCRLoss` (`dino.use_mcr`, paper eq. for −coeff·comp − expa) or DINO's
  cross-entropy; patch loss: `CosinePatchLoss` (`ibot.use_mcr`) or iBOT's cross-entropy; KoLeo on
  the student's global CLS tokens; the cross-entropy targets use `train.centering`
  (`centering | sinkhorn_knopp`), the coding-rate losses take the raw teacher features (`none`);
- the teacher is an EMA of the student (`update_teacher`), correct whatever the sharding mode;
- `prepare_for_distributed_training`: FSDP2 / DDP / single process (see `simdinov2.fsdp`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from torch import Tensor, nn

from simdinov2 import distributed
from simdinov2.checkpoint import (
    CheckpointError,
    extract_backbone_state_dict,
    infer_vit_config,
    load_backbone_weights,
)
from simdinov2.fsdp import shard_module, wrap_ddp
from simdinov2.layers import DINOHead
from simdinov2.loss import CosinePatchLoss, DINOLoss, KoLeoLoss, MCRLoss, iBOTPatchLoss
from simdinov2.models import build_model
from simdinov2.precision import autocast, resolve_dtype
from simdinov2.train.optim import ema_update, fuse_param_groups, layerwise_param_groups

logger = logging.getLogger("simdinov2")

N_GLOBAL_CROPS = 2


def ibot_enabled(cfg: Any) -> bool:
    """Whether the masked-patch loss is ever active (its weight, or its scheduled end value, is > 0)."""
    return max(float(cfg.ibot.loss_weight), float(cfg.ibot.loss_weight_end)) > 0


def _head(cfg_head: Any, in_dim: int) -> DINOHead:
    return DINOHead(
        in_dim=in_dim,
        out_dim=int(cfg_head.head_n_prototypes),
        hidden_dim=int(cfg_head.head_hidden_dim),
        bottleneck_dim=int(cfg_head.head_bottleneck_dim),
        nlayers=int(cfg_head.head_nlayers),
        normalize=bool(cfg_head.head_normalize),
        remove_last_layer=bool(cfg_head.remove_last_layer),
        # DINOv2 trains the prototypes' weight-norm gain (`last_layer.weight_g`); DINO v1 froze it.
        norm_last_layer=False,
    )


def load_pretrained_backbone(
    backbone: nn.Module,
    source: Any,
    checkpoint_key: str = "teacher",
    img_size: int | None = None,
    patch_size: int | None = None,
) -> Any:
    """Load a checkpoint of any layout the loader reads into `backbone`, resized to it.

    `img_size` / `patch_size` are those the weights were trained at (`student.pretrained_img_size` /
    `pretrained_patch_size`; None = read from the weights). The position embedding is resampled to the
    backbone's patch grid and the patch kernel to its patch size (FlexiViT's pseudo-inverse resize, as
    upstream), then everything else loads strictly. Returns the loader's report."""
    state_dict, _ = extract_backbone_state_dict(source, checkpoint_key)
    found = infer_vit_config(state_dict)
    for name, given in (("pretrained_img_size", img_size), ("pretrained_patch_size", patch_size)):
        key = name.removeprefix("pretrained_")
        if given is not None and int(given) != int(found[key]):
            raise CheckpointError(
                f"student.{name}={given} but the weights in {source} were trained with {key} {found[key]}: "
                f"set student.{name}={found[key]} or null"
            )
    model = getattr(backbone, "module", backbone)
    grid = model.pos_embed.shape[1] - 1
    side = int(grid**0.5)
    old_side = int((state_dict["pos_embed"].shape[1] - 1) ** 0.5)
    resized = dict(state_dict)
    if old_side != side:
        resized["pos_embed"] = resample_abs_pos_embed(
            state_dict["pos_embed"].float(),
            new_size=[side, side],
            old_size=[old_side, old_side],
            num_prefix_tokens=1,
        ).to(state_dict["pos_embed"].dtype)
    # Upstream's qknorm has no parameters: weights without `q_norm` / `k_norm` start from our scale 1 (the
    # same function as upstream's norm).
    for name, value in model.state_dict().items():
        if name.endswith(("attn.q_norm.weight", "attn.k_norm.weight")):
            flat_name = ".".join(
                part for i, part in enumerate(name.split(".")) if not (i == 1 and model.chunked_blocks)
            )
            if name not in resized and flat_name not in resized:
                resized[flat_name] = value.detach().clone()
    kernel = state_dict["patch_embed.proj.weight"]
    if kernel.shape[-1] != model.patch_size:
        resized["patch_embed.proj.weight"] = resample_patch_embed(
            kernel.float(), new_size=[model.patch_size, model.patch_size]
        ).to(kernel.dtype)
    return load_backbone_weights(model, resized, checkpoint_key=checkpoint_key, verbose=False)


def _unwrap(module: nn.Module) -> nn.Module:
    inner = getattr(module, "module", None)
    return inner if isinstance(inner, nn.Module) else module


class SSLMetaArch(nn.Module):
    """Student / teacher pair with the SimDINOv2 (or DINOv2) objective. See the module docstring."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        student_backbone, teacher_backbone, embed_dim = build_model(
            cfg.student, only_teacher=False, img_size=int(cfg.crops.global_crops_size)
        )
        if cfg.student.pretrained_weights:
            report = load_pretrained_backbone(
                student_backbone,
                str(cfg.student.pretrained_weights),
                img_size=cfg.student.pretrained_img_size,
                patch_size=cfg.student.pretrained_patch_size,
            )
            logger.info(
                "student backbone initialised from %s: %s", cfg.student.pretrained_weights, report.summary()
            )
        self.embed_dim = embed_dim
        self.drop_masks = bool(cfg.student.drop_masks)
        self.n_local_crops = int(cfg.crops.local_crops_number)

        self.do_dino = float(cfg.dino.loss_weight) > 0
        self.do_koleo = float(cfg.dino.koleo_loss_weight) > 0
        self.do_ibot = ibot_enabled(cfg)
        self.ibot_separate_head = bool(cfg.ibot.separate_head) and self.do_ibot
        self.dino_use_mcr = bool(cfg.dino.use_mcr)
        self.ibot_use_mcr = bool(cfg.ibot.use_mcr)
        if not (self.do_dino or self.do_ibot):
            raise ValueError("dino.loss_weight and ibot.loss_weight are both 0: nothing to train")
        self.centering = str(cfg.train.centering)
        # the teacher temperature matters only with a cross-entropy
        self.uses_cross_entropy = (self.do_dino and not self.dino_use_mcr) or (
            self.do_ibot and not self.ibot_use_mcr
        )
        self._check_centering()

        student: dict[str, nn.Module] = {"backbone": student_backbone}
        teacher: dict[str, nn.Module] = {"backbone": teacher_backbone}
        if self.do_dino or (self.do_ibot and not self.ibot_separate_head):
            student["dino_head"] = _head(cfg.dino, embed_dim)
            teacher["dino_head"] = _head(cfg.dino, embed_dim)
        if self.ibot_separate_head:
            student["ibot_head"] = _head(cfg.ibot, embed_dim)
            teacher["ibot_head"] = _head(cfg.ibot, embed_dim)
        dino_out_dim = student["dino_head"].out_dim if "dino_head" in student else 0
        ibot_out_dim = student["ibot_head"].out_dim if self.ibot_separate_head else dino_out_dim

        self._build_losses(dino_out_dim, ibot_out_dim)

        self.student = nn.ModuleDict(student)
        self.teacher = nn.ModuleDict(teacher)
        # The teacher starts as a copy of the student; it only ever changes by the EMA update.
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False
        if cfg.MODEL.WEIGHTS:
            self.load_backbone_weights(str(cfg.MODEL.WEIGHTS))
        self.sharding = "none"
        self.device = torch.device("cpu")
        self._student_dtype: torch.dtype | None = None
        self._teacher_dtype: torch.dtype | None = None
        logger.info(
            "model: %s/%d (embed %d), CLS loss %s, patch loss %s, KoLeo %s, heads %s",
            cfg.student.arch,
            int(cfg.student.patch_size),
            embed_dim,
            ("coding rate" if self.dino_use_mcr else "DINO") if self.do_dino else "off",
            ("cosine" if self.ibot_use_mcr else "iBOT") if self.do_ibot else "off",
            "on" if self.do_koleo else "off",
            ", ".join(student),
        )

    def _check_centering(self) -> None:
        if self.uses_cross_entropy and self.centering == "none":
            raise ValueError(
                "train.centering=none leaves DINO's cross-entropy without teacher targets: set "
                "train.centering=centering or sinkhorn_knopp, or dino.use_mcr=true and ibot.use_mcr=true"
            )
        if not self.uses_cross_entropy and self.centering != "none":
            logger.info(
                "train.centering=%s is unused: the coding-rate losses take raw teacher features",
                self.centering,
            )

    def _build_losses(self, dino_out_dim: int, ibot_out_dim: int) -> None:
        """`dino_loss` (coding rate or DINO's cross-entropy), `koleo_loss`, `ibot_patch_loss`: those in use."""
        if self.do_dino:
            if self.dino_use_mcr:
                mcr = self.cfg.dino.mcr
                self.dino_loss = MCRLoss(
                    eps=float(mcr.eps),
                    coeff=float(mcr.coeff),
                    expa_type=int(mcr.expa_type),
                    reduce_cov=int(mcr.reduce_cov),
                )
            else:
                self.dino_loss = DINOLoss(dino_out_dim)
        if self.do_koleo:
            self.koleo_loss = KoLeoLoss()
        if self.do_ibot:
            self.ibot_patch_loss = CosinePatchLoss() if self.ibot_use_mcr else iBOTPatchLoss(ibot_out_dim)

    # ------------------------------------------------------------------ distribution
    def prepare_for_distributed_training(
        self, sharding: str, device: torch.device, compile_blocks: bool = False
    ) -> None:
        """Move to `device`, optionally compile, then shard (fsdp), wrap (ddp) or leave as is (none).

        Must run before the optimizer is built (FSDP2 replaces the parameters by sharded ones)."""
        self.to(device)
        if compile_blocks:
            for model in (self.student, self.teacher):
                for module in model.values():
                    for block in module.block_list() if hasattr(module, "block_list") else []:
                        block.compile()
                    if not hasattr(module, "block_list"):
                        module.compile()
            logger.info("compile: transformer blocks and heads compiled with torch.compile")
        precision = self.cfg.compute_precision
        if sharding == "fsdp":
            for name in list(self.student.keys()):
                shard_module(self.student[name], precision.student[name], device)
                # No backward through the teacher: free its gathered parameters right after use.
                shard_module(self.teacher[name], precision.teacher[name], device, reshard_after_forward=True)
        elif sharding == "ddp":
            for name in list(self.student.keys()):
                self.student[name] = wrap_ddp(self.student[name], device)
        if sharding != "fsdp":
            # FSDP casts per module; elsewhere autocast in the backbones' precision does the same job.
            self._student_dtype = resolve_dtype(
                precision.student.backbone.mixed_precision.param_dtype, device
            )
            self._teacher_dtype = resolve_dtype(
                precision.teacher.backbone.mixed_precision.param_dtype, device
            )
        self.sharding = sharding
        self.device = device
        logger.info("sharding: %s over %d process(es) on %s", sharding, distributed.get_world_size(), device)

    def _autocast(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
        return autocast(self.device, dtype)

    def compute_dtypes(self) -> list[torch.dtype]:
        """Precisions the student computes in (to decide whether fp16 loss scaling is needed)."""
        if self.sharding != "fsdp":
            return [self._student_dtype or torch.float32]
        precision = self.cfg.compute_precision.student
        return [
            resolve_dtype(precision[name].mixed_precision.param_dtype, self.device) for name in self.student
        ]

    def train(self, mode: bool = True) -> SSLMetaArch:
        super().train(mode)
        self.teacher.eval()
        return self

    def load_backbone_weights(self, path: str) -> None:
        """`MODEL.WEIGHTS`: student and teacher backbones from a training checkpoint of any layout the loader
        reads (its `student` / `teacher` entries; a single backbone goes to both). Heads start fresh; a
        resumable checkpoint in the output directory, when there is one, replaces all of this."""
        teacher_report = load_pretrained_backbone(self.teacher.backbone, path, checkpoint_key="teacher")
        try:
            student_report = load_pretrained_backbone(self.student.backbone, path, checkpoint_key="student")
        except CheckpointError:  # no separate student entry (a teacher snapshot, an exported backbone)
            student_report = load_pretrained_backbone(self.student.backbone, path, checkpoint_key="teacher")
        logger.info(
            "MODEL.WEIGHTS %s: teacher %s; student %s",
            path,
            teacher_report.summary(),
            student_report.summary(),
        )

    # ------------------------------------------------------------------ optimisation helpers
    def get_params_groups(self) -> list[dict]:
        """Layer-wise-decayed, fused parameter groups of every student module."""
        groups: list[dict] = []
        for module in self.student.values():
            groups += layerwise_param_groups(
                module,
                lr_decay_rate=float(self.cfg.optim.layerwise_decay),
                patch_embed_lr_mult=float(self.cfg.optim.patch_embed_lr_mult),
            )
        return fuse_param_groups(groups)

    def cancel_frozen_gradients(self, values: dict[str, float]) -> None:
        """`train_step`'s hook. `student.freeze_backbone_epochs` (`values["freeze_backbone"]` set): drop the
        student backbone's gradients after the backward, so the optimizer skips its parameters (as upstream's
        requires_grad=False; works under DDP and FSDP too). The prototypes freeze through a last-layer lr of 0."""
        if values.get("freeze_backbone"):
            for p in self.student.backbone.parameters():
                p.grad = None

    def clip_gradients(self, max_norm: float) -> dict[str, float]:
        """Clip each student module's total gradient norm to `max_norm` (DINOv2); returns the norms."""
        norms = {}
        for name, module in self.student.items():
            params = [p for p in module.parameters() if p.grad is not None]
            if not params:
                continue
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if hasattr(norm, "full_tensor"):  # FSDP2: the norm is a DTensor
                norm = norm.full_tensor()
            norms[f"{name}_grad_norm"] = float(norm)
        return norms

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher ← m·teacher + (1−m)·student, module by module, on whatever shards this rank holds."""
        for name, student_module in self.student.items():
            ema_update(self.teacher[name].parameters(), student_module.parameters(), momentum)

    def set_mcr_schedule(self, eps: float | None = None, coeff: float | None = None) -> None:
        """Per-iteration values of the coding-rate eps and compression weight (no-op without MCR)."""
        if self.do_dino and self.dino_use_mcr:
            if eps is not None:
                self.dino_loss.eps = float(eps)
            if coeff is not None:
                self.dino_loss.coeff = float(coeff)

    # ------------------------------------------------------------------ the step
    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - use forward_losses
        raise NotImplementedError("SSLMetaArch: call forward_losses(batch, teacher_temp, ibot_loss_weight)")

    @torch.no_grad()
    def _teacher_targets(
        self, global_crops: Tensor, mask_indices: Tensor, n_masked_tensor: Tensor, teacher_temp: float
    ) -> tuple[Tensor | None, Tensor | None]:
        """Teacher CLS targets [2B, K] and masked-patch targets [M, K] (None when unused)."""
        with self._autocast(self._teacher_dtype):
            out = self.teacher.backbone(global_crops, is_training=True)
            cls_tokens = out["x_norm_clstoken"]
            masked_tokens = None
            if self.do_ibot:
                masked_tokens = out["x_norm_patchtokens"].flatten(0, 1).index_select(0, mask_indices)
            cls_after_head = masked_after_head = None
            if self.do_ibot and not self.ibot_separate_head:
                joint = self.teacher.dino_head(torch.cat([cls_tokens, masked_tokens]))
                cls_after_head, masked_after_head = joint.split([cls_tokens.shape[0], masked_tokens.shape[0]])
            else:
                if "dino_head" in self.teacher and self.do_dino:
                    cls_after_head = self.teacher.dino_head(cls_tokens)
                if self.do_ibot:
                    masked_after_head = self.teacher.ibot_head(masked_tokens)
        cls_after_head = cls_after_head.float() if cls_after_head is not None else None
        masked_after_head = masked_after_head.float() if masked_after_head is not None else None

        if self.do_dino and not self.dino_use_mcr:
            if self.centering == "centering":
                targets = self.dino_loss.softmax_center_teacher(cls_after_head, teacher_temp=teacher_temp)
                self.dino_loss.update_center(cls_after_head)
            else:
                targets = self.dino_loss.sinkhorn_knopp_teacher(cls_after_head, teacher_temp=teacher_temp)
            cls_after_head = targets
        if self.do_ibot and not self.ibot_use_mcr:
            if self.centering == "centering":
                targets = self.ibot_patch_loss.softmax_center_teacher(
                    masked_after_head, teacher_temp=teacher_temp
                )
                self.ibot_patch_loss.update_center(masked_after_head)
            else:
                targets = self.ibot_patch_loss.sinkhorn_knopp_teacher(
                    masked_after_head, teacher_temp=teacher_temp, n_masked_patches_tensor=n_masked_tensor
                )
            masked_after_head = targets
        return cls_after_head, masked_after_head

    def forward_losses(
        self, batch: dict[str, Any], teacher_temp: float, ibot_loss_weight: float | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss (to back-propagate) and its detached parts for one collated batch."""
        global_crops = batch["collated_global_crops"].to(self.device, non_blocking=True)
        local_crops = batch["collated_local_crops"].to(self.device, non_blocking=True)
        masks = batch["collated_masks"].to(self.device, non_blocking=True)
        mask_indices = batch["mask_indices_list"].to(self.device, non_blocking=True)
        masks_weight = batch["masks_weight"].to(self.device, non_blocking=True)
        n_masked_tensor = batch["n_masked_patches"].to(self.device, non_blocking=True)
        n_masked = int(mask_indices.shape[0])
        n_local = self.n_local_crops if local_crops.shape[0] > 0 else 0
        if ibot_loss_weight is None:
            ibot_loss_weight = float(self.cfg.ibot.loss_weight)

        teacher_cls, teacher_masked = self._teacher_targets(
            global_crops, mask_indices, n_masked_tensor, teacher_temp
        )

        with self._autocast(self._student_dtype):
            student_masks = masks if (self.do_ibot or self.drop_masks) else None
            if n_local:
                global_out, local_out = self.student.backbone(
                    [global_crops, local_crops], masks=[student_masks, None], is_training=True
                )
            else:
                global_out = self.student.backbone(global_crops, masks=student_masks, is_training=True)
                local_out = None
            global_cls = global_out["x_norm_clstoken"]
            head_inputs = []
            if n_local:
                head_inputs.append(local_out["x_norm_clstoken"])
            head_inputs.append(global_cls)
            masked_tokens = None
            if self.do_ibot:
                masked_tokens = global_out["x_norm_patchtokens"].flatten(0, 1).index_select(0, mask_indices)
                if not self.ibot_separate_head:
                    head_inputs.append(masked_tokens)
            local_cls_after_head = global_cls_after_head = None
            if "dino_head" in self.student:
                sizes = [t.shape[0] for t in head_inputs]
                head_out = list(self.student.dino_head(torch.cat(head_inputs)).split(sizes))
                local_cls_after_head = head_out.pop(0) if n_local else None
                global_cls_after_head = head_out.pop(0)
            if self.do_ibot:
                masked_after_head = (
                    self.student.ibot_head(masked_tokens) if self.ibot_separate_head else head_out.pop(0)
                )

        loss_dict: dict[str, Tensor] = {}
        total: Tensor = global_crops.new_zeros((), dtype=torch.float32)
        if self.do_dino:
            student_views = list(global_cls_after_head.chunk(N_GLOBAL_CROPS))
            if n_local:
                student_views += list(local_cls_after_head.chunk(n_local))
            teacher_views = list(teacher_cls.chunk(N_GLOBAL_CROPS))
            if self.dino_use_mcr:
                dino_loss, parts = self.dino_loss(student_views, teacher_views)
                loss_dict.update({f"dino_{k}": v for k, v in parts.items()})
            else:
                dino_loss = self.dino_loss(student_views, teacher_views)
            loss_dict["dino_loss"] = dino_loss.detach()
            total = total + float(self.cfg.dino.loss_weight) * dino_loss
        if self.do_koleo:
            koleo = sum(self.koleo_loss(view) for view in global_cls.chunk(N_GLOBAL_CROPS))
            koleo = float(self.cfg.dino.koleo_loss_weight) * koleo
            loss_dict["koleo_loss"] = koleo.detach()  # weighted, as upstream logs it
            total = total + koleo
        if self.do_ibot:
            ibot_loss = self.ibot_patch_loss.forward_masked(
                masked_after_head,
                teacher_masked,
                student_masks_flat=masks,
                n_masked_patches=n_masked,
                masks_weight=masks_weight,
            )
            loss_dict["ibot_loss"] = ibot_loss.detach()
            total = total + float(ibot_loss_weight) * ibot_loss
        loss_dict["total_loss"] = total.detach()
        return total, loss_dict

    def teacher_for_snapshot(self) -> nn.Module:
        """The module whose state dict is the evaluation snapshot (`backbone.*`, `dino_head.*`, ...)."""
        return self.teacher


__all__ = ["N_GLOBAL_CROPS", "SSLMetaArch", "ibot_enabled"]
