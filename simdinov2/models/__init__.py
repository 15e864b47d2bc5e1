"""Backbone construction for both trees: `build_vit` (v1 scripts, hubconf) and `build_model` (v2 config).

The ViT and the arch table (`ARCH_SPECS`) live in `vision_transformer.py`; this module only turns an
arch name or a config node into models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .vision_transformer import (
    ARCH_SPECS,
    ARCHS,
    FFN_LAYERS,
    ArchSpec,
    DinoVisionTransformer,
    remap_block_keys,
    vit_base,
    vit_from_arch,
    vit_giant2,
    vit_large,
    vit_small,
    vit_tiny,
)

# `student` defaults for keys a config node does not set: DINOv2's layout (no registers, no chunks) with the
# upstream SimDINOv2 position-embedding interpolation (antialiased, no offset; the v1 tree keeps DINO's +0.1).
_STUDENT_DEFAULTS: dict[str, Any] = {
    "arch": "vit_large",
    "patch_size": 16,
    "drop_path_rate": 0.3,
    "layerscale": 1.0e-5,
    "drop_path_uniform": True,
    "ffn_layer": "mlp",
    "block_chunks": 0,
    "qkv_bias": True,
    "proj_bias": True,
    "ffn_bias": True,
    "num_register_tokens": 0,
    "interpolate_antialias": True,
    "interpolate_offset": 0.0,
    "qknorm": False,
    "drop_masks": False,
    "gradient_checkpointing": False,
    "attn_drop": 0.0,
    "ffn_drop": 0.0,
}


def _arch_fn(arch: str):
    name = arch.removesuffix("_memeff")  # DINOv2 config names like vit_large_memeff mean the same model
    if name not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCHS)}")
    return ARCHS[name]


def build_vit(arch: str, patch_size: int = 16, v1: bool = False, **kwargs: Any) -> DinoVisionTransformer:
    """Build a ViT by arch name. `v1=True` gives the DINO v1 layout (no mask token, no registers, no
    LayerScale, MLP FFN, DINO's CLS-token init) so DINO / SimDINO v1 checkpoints load strict=True; other
    kwargs go to the ViT."""
    fn = _arch_fn(arch)
    if v1:
        # None / 0 mean "off" for registers and LayerScale, so only truthy values are refused.
        for key, v1_value in (("num_register_tokens", 0), ("init_values", None), ("ffn_layer", "mlp")):
            value = kwargs.get(key, v1_value)
            if value != v1_value and (key == "ffn_layer" or value):
                raise ValueError(
                    f"{key}={kwargs[key]!r} is not part of the DINO v1 ViT; drop it or build with v1=False"
                )
        kwargs["use_mask_token"] = False
        kwargs.setdefault("cls_token_init", "dino")  # trunc-normal(0.02), as DINO v1
        kwargs.setdefault("ffn_layer", "mlp")  # vit_giant2 would otherwise default to SwiGLU
    return fn(patch_size=patch_size, **kwargs)


def _get(cfg: Any, key: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, _STUDENT_DEFAULTS[key])
    return getattr(cfg, key, _STUDENT_DEFAULTS[key])


def build_model(
    cfg_student: Any, only_teacher: bool = False, img_size: int = 224
) -> tuple[DinoVisionTransformer, DinoVisionTransformer, int] | tuple[DinoVisionTransformer, int]:
    """DINOv2-style: (student, teacher, embed_dim) from the `student` config node; (teacher, embed_dim)
    when `only_teacher`. The teacher gets no stochastic depth, dropout or activation checkpointing; missing
    keys use `_STUDENT_DEFAULTS`."""
    arch_fn = _arch_fn(str(_get(cfg_student, "arch")))
    vit_kwargs = dict(
        img_size=img_size,
        patch_size=int(_get(cfg_student, "patch_size")),
        init_values=_get(cfg_student, "layerscale"),
        ffn_layer=str(_get(cfg_student, "ffn_layer")),
        block_chunks=int(_get(cfg_student, "block_chunks")),
        qkv_bias=bool(_get(cfg_student, "qkv_bias")),
        proj_bias=bool(_get(cfg_student, "proj_bias")),
        ffn_bias=bool(_get(cfg_student, "ffn_bias")),
        num_register_tokens=int(_get(cfg_student, "num_register_tokens")),
        interpolate_offset=float(_get(cfg_student, "interpolate_offset")),
        interpolate_antialias=bool(_get(cfg_student, "interpolate_antialias")),
        qknorm=bool(_get(cfg_student, "qknorm")),
        drop_masks=bool(_get(cfg_student, "drop_masks")),
    )
    teacher = arch_fn(**vit_kwargs)
    if only_teacher:
        return teacher, teacher.embed_dim
    # Regularisers and the memory trade-off concern the student only (as upstream): the teacher runs
    # without gradients, dropout or stochastic depth.
    student = arch_fn(
        **vit_kwargs,
        drop_path_rate=float(_get(cfg_student, "drop_path_rate")),
        drop_path_uniform=bool(_get(cfg_student, "drop_path_uniform")),
        attn_drop=float(_get(cfg_student, "attn_drop")),
        ffn_drop=float(_get(cfg_student, "ffn_drop")),
        gradient_checkpointing=bool(_get(cfg_student, "gradient_checkpointing")),
    )
    return student, teacher, student.embed_dim


__all__ = [
    "ARCHS",
    "ARCH_SPECS",
    "FFN_LAYERS",
    "ArchSpec",
    "DinoVisionTransformer",
    "build_model",
    "build_vit",
    "remap_block_keys",
    "vit_base",
    "vit_from_arch",
    "vit_giant2",
    "vit_large",
    "vit_small",
    "vit_tiny",
]
