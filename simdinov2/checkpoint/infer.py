"""A ViT's architecture read off its tensor shapes, and the one-line description used in mismatch errors.

Owns `infer_vit_config` (arch name from the `ARCH_SPECS` table, patch, registers, LayerScale, FFN,
chunks, biases), `describe_vit_config` and `config_mismatch` (which fields make a checkpoint unfit
for a model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from simdinov2.models.vision_transformer import ARCH_SPECS, parse_block_key

from .errors import CheckpointError
from .layouts import BACKBONE_MARKER


def infer_vit_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Architecture of a backbone state dict, read from tensor shapes.

    Returns `arch` (a name of `ARCH_SPECS` or None for a non-standard width) plus `DinoVisionTransformer`
    keyword arguments: img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
    num_register_tokens, init_values (1e-5 when LayerScale is present: the value is overwritten by the
    weights), ffn_layer, block_chunks (of the source), use_mask_token, qkv_bias, proj_bias, ffn_bias.
    """
    if BACKBONE_MARKER not in state_dict:
        raise CheckpointError(f"not a ViT backbone state dict: no {BACKBONE_MARKER!r} key")
    proj = state_dict[BACKBONE_MARKER]
    embed_dim, in_chans, patch_h, patch_w = proj.shape
    if patch_h != patch_w:
        raise CheckpointError(f"non-square patches ({patch_h}x{patch_w}) are not supported")

    blocks: dict[int, dict[str, Tensor]] = {}
    chunks: set[int] = set()
    for key, value in state_dict.items():
        parsed = parse_block_key(key)
        if parsed is None:
            continue
        index, chunk, rest = parsed
        blocks.setdefault(index, {})[rest] = value
        if chunk is not None:
            chunks.add(chunk)
    if not blocks:
        raise CheckpointError("not a ViT backbone state dict: no blocks.* keys")
    depth = max(blocks) + 1
    first = blocks[min(blocks)]

    if "mlp.w12.weight" in first:
        ffn_layer = "swiglufused"
        # The ViT turns mlp_ratio into a SwiGLU width of 2/3 of it rounded up to 8 (DINOv2); ratio 4
        # reproduces the stored width of the standard archs, otherwise invert the 2/3.
        mlp_ratio = 4.0
        swiglu_width = first["mlp.w3.weight"].shape[1]
        if (int(embed_dim * mlp_ratio * 2 / 3) + 7) // 8 * 8 != swiglu_width:
            mlp_ratio = swiglu_width * 1.5 / embed_dim
    elif "mlp.fc1.weight" in first:
        ffn_layer = "mlp"
        mlp_ratio = first["mlp.fc1.weight"].shape[0] / embed_dim
    else:
        raise CheckpointError("not a ViT backbone state dict: blocks have neither mlp.fc1 nor mlp.w12")

    pos = state_dict.get("pos_embed")
    if pos is None or pos.ndim != 3:
        raise CheckpointError("not a ViT backbone state dict: no [1, tokens, dim] pos_embed")
    side = math.isqrt(pos.shape[1] - 1)
    if side * side != pos.shape[1] - 1:
        raise CheckpointError(f"pos_embed holds {pos.shape[1] - 1} patch positions, not a square grid")

    arch = next((name for name, spec in ARCH_SPECS.items() if spec.embed_dim == embed_dim), None)
    num_heads = ARCH_SPECS[arch].num_heads if arch else None
    registers = state_dict.get("register_tokens")
    return {
        "arch": arch,
        "img_size": side * patch_h,
        "patch_size": patch_h,
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": mlp_ratio,
        "num_register_tokens": registers.shape[1] if registers is not None else 0,
        "init_values": 1e-5 if "ls1.gamma" in first else None,
        "ffn_layer": ffn_layer,
        "block_chunks": len(chunks),
        "use_mask_token": "mask_token" in state_dict,
        "qkv_bias": "attn.qkv.bias" in first,
        "proj_bias": "attn.proj.bias" in first,
        "ffn_bias": "mlp.fc1.bias" in first or "mlp.w12.bias" in first,
    }


def describe_vit_config(config: Mapping[str, Any], fields: tuple[str, ...] = ("embed_dim",)) -> str:
    """'vit_small/16 (embed 384)'-style name, with the requested details in parentheses."""
    name = f"{config.get('arch') or 'vit'}/{config['patch_size']}"
    texts = {
        "embed_dim": f"embed {config['embed_dim']}",
        "depth": f"depth {config['depth']}",
        "num_register_tokens": f"{config['num_register_tokens']} registers",
        "init_values": "LayerScale" if config.get("init_values") else "no LayerScale",
        "ffn_layer": f"{config['ffn_layer']} FFN",
        "mlp_ratio": f"mlp_ratio {config['mlp_ratio']:g}",
        "qkv_bias": "qkv bias" if config["qkv_bias"] else "no qkv bias",
        "proj_bias": "proj bias" if config["proj_bias"] else "no proj bias",
        "ffn_bias": "FFN bias" if config["ffn_bias"] else "no FFN bias",
        "in_chans": f"{config['in_chans']} input channels",
    }
    details = [texts[f] for f in fields if f in texts]
    return f"{name} ({', '.join(details)})" if details else name


# Fields that must agree between checkpoint and model (img_size / chunks / mask token are adapted).
_ARCH_FIELDS = (
    "patch_size",
    "embed_dim",
    "depth",
    "num_register_tokens",
    "init_values",
    "ffn_layer",
    "mlp_ratio",
    "qkv_bias",
    "proj_bias",
    "ffn_bias",
    "in_chans",
)


def config_mismatch(ckpt: Mapping[str, Any], model: Mapping[str, Any]) -> list[str]:
    def same(f: str) -> bool:
        if f == "init_values":
            return bool(ckpt[f]) == bool(model[f])
        if f == "mlp_ratio":
            return math.isclose(ckpt[f], model[f], rel_tol=1e-6) or ckpt["ffn_layer"] != model["ffn_layer"]
        return ckpt[f] == model[f]

    return [f for f in _ARCH_FIELDS if not same(f)]


__all__ = ["config_mismatch", "describe_vit_config", "infer_vit_config"]
