"""Export the backbone of any checkpoint as a plain state dict, safetensors, or a timm ViT state dict.

    python -m simdinov2.export CKPT --out F [--format pth|safetensors|timm] [--checkpoint-key teacher]

CKPT is anything `simdinov2.checkpoint` reads (v1/v2 training checkpoints, teacher snapshots, DCP
directories, backbone state dicts). Exports use flat block names (`blocks.{i}`), no heads.

`timm` gives the key layout of `timm.models.vision_transformer.VisionTransformer`; the printed
`timm.create_model(...)` call builds the matching model, whose `model(x)` (num_classes=0, token pool)
equals our `model(x)`, the final-norm CLS embedding. Registers use timm's DINOv2 convention:
`reg_token`, `no_embed_class=True`, the CLS position embedding folded into `cls_token` (exact, since
DINOv2 adds it to CLS only); SwiGLU becomes timm's packed `fc1`/`fc2` (`SwiGLUPacked`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from torch import Tensor

from simdinov2.checkpoint import (
    CheckpointError,
    build_backbone_from_checkpoint,
    describe_vit_config,
    extract_backbone,
    infer_vit_config,
)
from simdinov2.help_format import HelpFormatter

FORMATS = ("pth", "safetensors", "timm")
_TIMM_SIZES = {"vit_tiny": "tiny", "vit_small": "small", "vit_base": "base", "vit_large": "large"}


def flat_backbone_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The backbone as our flat-block ViT (`blocks.{i}`) holds it, in the source's dtype.

    Going through a strict load into a freshly built model validates the weights on the way and uses
    the ViT's own flat <-> chunked block mapping.
    """
    model = build_backbone_from_checkpoint(state_dict, block_chunks=0, verbose=False)
    dtype = state_dict["patch_embed.proj.weight"].dtype
    return {key: value.detach().to(dtype) for key, value in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- timm
def _timm_mlp_ratio(hidden: int, dim: int) -> float:
    """A ratio with int(dim * ratio) == hidden, as timm computes the FFN width."""
    ratio = hidden / dim
    return ratio if int(dim * ratio) == hidden else (hidden + 0.5) / dim


def timm_model_args(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(timm model name, create_model kwargs) for the ViT described by `infer_vit_config`."""
    import timm

    patch, img = config["patch_size"], config["img_size"]
    size = _TIMM_SIZES.get(config["arch"] or "")
    kwargs: dict[str, Any] = {}
    if size is not None:
        name = f"vit_{size}_patch{patch}_{img}"
        if not timm.is_model(name):
            name = f"vit_{size}_patch16_224"
            kwargs.update(patch_size=patch, img_size=img)
    elif config["arch"] == "vit_giant2":
        name = "vit_giant_patch14_dinov2"
        kwargs.update(patch_size=patch, img_size=img)
    else:
        name = "vit_base_patch16_224"
        kwargs.update(
            patch_size=patch, img_size=img, embed_dim=config["embed_dim"], depth=config["depth"],
            num_heads=config["num_heads"],
        )  # fmt: skip
        if config["num_heads"] is None:
            raise CheckpointError(
                f"cannot tell the number of heads of embed_dim {config['embed_dim']} for timm"
            )
    kwargs["num_classes"] = 0
    if config["in_chans"] != 3:
        kwargs["in_chans"] = config["in_chans"]
    if config["num_register_tokens"]:
        kwargs.update(reg_tokens=config["num_register_tokens"], no_embed_class=True)
    if config["init_values"]:
        kwargs["init_values"] = 1e-5  # turns LayerScale on; the weights hold the learned scales
    if not config["qkv_bias"]:
        kwargs["qkv_bias"] = False
    if not config["proj_bias"]:
        kwargs["proj_bias"] = False
    if not config["ffn_bias"]:
        raise CheckpointError("timm's ViT has no option for FFN layers without bias; export as pth instead")
    dim = config["embed_dim"]
    if config["ffn_layer"] == "mlp":
        hidden = round(config["mlp_ratio"] * dim)
        if hidden != 4 * dim or name == "vit_giant_patch14_dinov2":
            kwargs["mlp_ratio"] = _timm_mlp_ratio(hidden, dim)
    else:
        from timm.layers import SwiGLUPacked

        swiglu_width = (int(dim * config["mlp_ratio"] * 2 / 3) + 7) // 8 * 8
        # timm's packed SwiGLU: fc1 holds both halves (2 x width), fc2 takes the width; the block passes
        # its act_layer to the FFN, so SiLU must be set on the model too.
        kwargs.update(
            mlp_ratio=_timm_mlp_ratio(2 * swiglu_width, dim), mlp_layer=SwiGLUPacked, act_layer="silu"
        )
    return name, kwargs


def format_timm_call(name: str, kwargs: dict[str, Any]) -> str:
    def render(value: Any) -> str:
        if callable(value):
            return "timm.layers.SwiGLUPacked"
        return repr(value)

    args = "".join(f", {key}={render(value)}" for key, value in kwargs.items())
    return f'timm.create_model("{name}", pretrained=False{args})'


def to_timm_state_dict(state_dict: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Tensor]:
    """Our (flat) backbone keys -> timm VisionTransformer keys; the inverse lives in the loader."""
    registers = config["num_register_tokens"]
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key == "mask_token":  # iBOT training only
            continue
        if key == "register_tokens":
            out["reg_token"] = value
        elif key == "cls_token" and registers:
            # no_embed_class: timm adds no position to CLS, so the CLS position (constant) is folded in.
            out["cls_token"] = value + state_dict["pos_embed"][:, :1].to(value.dtype)
        elif key == "pos_embed" and registers:
            out["pos_embed"] = value[:, 1:]
        else:
            out[key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")] = value
    return out


# ---------------------------------------------------------------------------------------------- export
def _save(tensors: dict[str, Tensor], out: Path, metadata: dict[str, str]) -> None:
    tensors = {key: value.detach().contiguous() for key, value in tensors.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise CheckpointError(
                "writing .safetensors needs the safetensors package: pip install safetensors"
            ) from None
        save_file(tensors, str(out), metadata=metadata)
    else:
        from simdinov2.checkpoint import atomic_torch_save

        atomic_torch_save(tensors, out)


def export_backbone(
    checkpoint: str | os.PathLike | Any,
    out: str | os.PathLike,
    fmt: str | None = None,
    checkpoint_key: str = "teacher",
) -> list[str]:
    """Write the backbone of `checkpoint` to `out`; returns the lines the CLI prints.

    `fmt` defaults to `safetensors` for a `.safetensors` name and `pth` otherwise; `timm` writes timm's
    key layout (to `.safetensors` or torch format, following the name).
    """
    out = Path(out)
    fmt = fmt or ("safetensors" if out.suffix == ".safetensors" else "pth")
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "safetensors" and out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    extracted = extract_backbone(checkpoint, checkpoint_key)
    config = infer_vit_config(extracted.state_dict)
    state_dict = flat_backbone_state_dict(extracted.state_dict)
    metadata = {
        "format": "pt",
        "producer": "simdinov2.export",
        "layout": "timm" if fmt == "timm" else "dinov2",
        "arch": str(config["arch"]),
        "patch_size": str(config["patch_size"]),
        "img_size": str(config["img_size"]),
        "num_register_tokens": str(config["num_register_tokens"]),
        "layerscale": str(bool(config["init_values"])),
        "ffn_layer": config["ffn_layer"],
    }
    timm_call = None
    if fmt == "timm":
        name, kwargs = timm_model_args(config)
        state_dict = to_timm_state_dict(state_dict, config)
        timm_call = format_timm_call(name, kwargs)
    _save(state_dict, out, metadata)

    fields = ("embed_dim", "depth", "num_register_tokens", "init_values", "ffn_layer")
    size_mb = out.stat().st_size / 2**20
    skipped = f"; left out {len(extracted.skipped)} head/other tensors" if extracted.skipped else ""
    entry = f" {extracted.entry!r}" if extracted.entry else ""
    lines = [
        f"wrote {out} ({fmt}, {len(state_dict)} tensors, {size_mb:.1f} MiB): {describe_vit_config(config, fields)}",
        f"  from {extracted.layout}{entry} of {extracted.source}{skipped}",
    ]
    reader = (
        f'safetensors.torch.load_file("{out}")'
        if out.suffix == ".safetensors"
        else f'torch.load("{out}", weights_only=True)'
    )
    if timm_call is not None:
        lines += [
            "load it in timm with:",
            f"  model = {timm_call}",
            f"  model.load_state_dict({reader})",
            "  model(x) is the final-norm CLS embedding; add dynamic_img_size=True for other input sizes",
        ]
    else:
        lines.append(f'load it with: simdinov2.checkpoint.build_backbone_from_checkpoint("{out}")')
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simdinov2.export", description="Export the ViT backbone of a SimDINO/DINO checkpoint.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", help="checkpoint file, teacher snapshot, DCP directory or state dict")
    parser.add_argument("--out", required=True, help="output file (.pth or .safetensors)")
    parser.add_argument("--format", choices=FORMATS, default=None, help="default: from the --out extension")
    parser.add_argument(
        "--checkpoint-key", "--checkpoint_key", default="teacher", help="teacher (default) or student"
    )
    args = parser.parse_args(argv)
    try:
        lines = export_backbone(args.checkpoint, args.out, args.format, args.checkpoint_key)
    except (ValueError, FileNotFoundError, ImportError) as err:
        raise SystemExit(f"error: {err}") from None
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
