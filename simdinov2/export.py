"""Export the backbone of any checkpoint as a plain state dict, safetensors, a timm ViT state dict, or a
Hugging Face transformers model folder.

    python -m simdinov2.export CKPT --out F [--format pth|safetensors|timm|hf] [--checkpoint-key teacher]

CKPT is anything `simdinov2.checkpoint` reads (v1/v2 training checkpoints, teacher snapshots, DCP
directories, backbone state dicts). Exports use flat block names (`blocks.{i}`), no heads.

`timm` gives the key layout of `timm.models.vision_transformer.VisionTransformer`; the printed
`timm.create_model(...)` call builds the matching model, whose `model(x)` (num_classes=0, token pool)
equals our `model(x)`, the final-norm CLS embedding. Registers use timm's DINOv2 convention:
`reg_token`, `no_embed_class=True`, the CLS position embedding folded into `cls_token` (exact, since
DINOv2 adds it to CLS only); SwiGLU becomes timm's packed `fc1`/`fc2` (`SwiGLUPacked`).

`hf` writes a folder (config.json, model.safetensors, preprocessor_config.json) that
`transformers.AutoModel.from_pretrained` loads with no code of ours, in the layout of the hub's
checkpoints: DINO's (v1) ViT as `ViTModel` (as facebook/dino-vitb16: no pooler weights, so transformers
initialises and names its unused pooler), a ViT with registers as `Dinov2WithRegistersModel`, one with
other DINOv2 parts (LayerScale, SwiGLU, mask token) as `Dinov2Model`. `last_hidden_state[:, 0]` is our
`x_norm_clstoken` at the checkpoint's resolution (exactly, on CPU in float32); at other sizes both sides
interpolate the position grid in their own way (ViTModel needs `interpolate_pos_encoding=True`), which
differed by 1e-5 to 1e-4 (relative) on a tiny ViT at 1.5 times its resolution. transformers is needed
only for this format.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from simdinov2.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_bytes,
    build_backbone_from_checkpoint,
    describe_vit_config,
    extract_backbone,
    infer_vit_config,
)
from simdinov2.cli import HelpFormatter, make_output_dir
from simdinov2.data.augmentations import IMAGENET_MEAN, IMAGENET_STD
from simdinov2.errors import UserError

FORMATS = ("pth", "safetensors", "timm", "hf")
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
def _ffn_ratio(hidden: int, dim: int) -> float:
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
            kwargs["mlp_ratio"] = _ffn_ratio(hidden, dim)
    else:
        from timm.layers import SwiGLUPacked

        swiglu_width = (int(dim * config["mlp_ratio"] * 2 / 3) + 7) // 8 * 8
        # timm's packed SwiGLU: fc1 holds both halves (2 x width), fc2 takes the width; the block passes
        # its act_layer to the FFN, so SiLU must be set on the model too.
        kwargs.update(mlp_ratio=_ffn_ratio(2 * swiglu_width, dim), mlp_layer=SwiGLUPacked, act_layer="silu")
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


# ---------------------------------------------------------------------------------------------- Hugging Face
HF_INSTALL = "pip install transformers"
# Where a transformers checkpoint on the hub (facebook/dino-vitb16, facebook/dinov2-base, ...) keeps each
# tensor of a block: the legacy names that every transformers version reads.
_HF_VIT_BLOCK = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_HF_DINOV2_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.w12": "mlp.weights_in",
    "mlp.w3": "mlp.weights_out",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
}


def hf_model_class(state_dict: dict[str, Tensor], config: dict[str, Any]) -> str:
    """ViTModel for DINO's (v1) ViT; Dinov2Model / Dinov2WithRegistersModel for a ViT with DINOv2's parts
    (registers, LayerScale, SwiGLU or the iBOT mask token)."""
    if config["num_register_tokens"]:
        return "Dinov2WithRegistersModel"
    if config["init_values"] or config["ffn_layer"] != "mlp" or "mask_token" in state_dict:
        return "Dinov2Model"
    return "ViTModel"


def hf_config(model_class: str, config: dict[str, Any], ffn_width: int) -> Any:
    """The transformers config of the ViT `infer_vit_config` describes, whose FFN hidden width (SwiGLU:
    of one half) is `ffn_width`; layer-norm eps 1e-6 as ours."""
    import transformers

    if not (config["proj_bias"] and config["ffn_bias"]):
        raise CheckpointError(
            "transformers' ViT and DINOv2 have no option for projections without bias; export as pth"
        )
    if config["num_heads"] is None:
        raise CheckpointError(
            f"cannot tell the number of heads of embed_dim {config['embed_dim']} for transformers"
        )
    dim = config["embed_dim"]
    common = dict(hidden_size=dim, num_hidden_layers=config["depth"], num_attention_heads=config["num_heads"],
                  hidden_act="gelu", layer_norm_eps=1e-6, image_size=config["img_size"],
                  patch_size=config["patch_size"], num_channels=config["in_chans"], qkv_bias=config["qkv_bias"],
                  architectures=[model_class])  # fmt: skip
    if model_class == "ViTModel":
        return transformers.ViTConfig(intermediate_size=ffn_width, **common)
    swiglu = config["ffn_layer"] != "mlp"
    ratio = round(config["mlp_ratio"])  # transformers' DINOv2 takes an integer ratio
    hf_width = (int(dim * ratio * 2 / 3) + 7) // 8 * 8 if swiglu else dim * ratio
    if hf_width != ffn_width:
        raise CheckpointError(
            f"the FFN width {ffn_width} is not one transformers' DINOv2 builds from an integer "
            f"mlp_ratio of embed_dim {dim}; export as pth or timm instead"
        )
    common.update(mlp_ratio=ratio, use_swiglu_ffn=swiglu, layerscale_value=1.0)
    if model_class == "Dinov2WithRegistersModel":
        return transformers.Dinov2WithRegistersConfig(
            num_register_tokens=config["num_register_tokens"], **common
        )
    return transformers.Dinov2Config(**common)


def to_hf_state_dict(state_dict: dict[str, Tensor], model_class: str) -> dict[str, Tensor]:
    """Our flat backbone keys -> the transformers hub layout of `model_class` (q, k, v split; DINOv2's
    LayerScale of ones and a zero mask token where the source has none)."""
    block_names = _HF_VIT_BLOCK if model_class == "ViTModel" else _HF_DINOV2_BLOCK
    top = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
           "register_tokens": "embeddings.register_tokens", "mask_token": "embeddings.mask_token",
           "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
           "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
           "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}  # fmt: skip
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key in top:
            if key != "mask_token" or model_class != "ViTModel":
                out[top[key]] = value
            continue
        _, index, rest = key.split(".", 2)  # blocks.{i}.<rest>
        prefix = f"encoder.layer.{index}."
        if rest.startswith("attn.qkv."):
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                out[f"{prefix}attention.attention.{name}.{rest.rsplit('.', 1)[1]}"] = part
        else:
            module, param = rest.rsplit(".", 1) if not rest.endswith(".gamma") else (rest, "")
            out[prefix + block_names[module] + (f".{param}" if param else "")] = value
    if model_class != "ViTModel":
        dim, dtype = state_dict["cls_token"].shape[-1], state_dict["cls_token"].dtype
        out.setdefault("embeddings.mask_token", state_dict["cls_token"].new_zeros(1, dim))
        for index in {key.split(".")[1] for key in state_dict if key.startswith("blocks.")}:
            for scale in ("layer_scale1", "layer_scale2"):
                out.setdefault(f"encoder.layer.{index}.{scale}.lambda1", torch.ones(dim, dtype=dtype))
    return out


def hf_image_processor(model_class: str, img_size: int) -> Any:
    """The preprocessing of the hub's DINO / DINOv2 models at this model's resolution: ViT's resize to the
    square input; DINOv2's shorter side to 256/224 of it, then a centre crop; ImageNet mean and std."""
    import transformers

    stats = dict(image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), resample=3)  # bicubic
    if model_class == "ViTModel":
        return transformers.ViTImageProcessor(size={"height": img_size, "width": img_size}, **stats)
    return transformers.BitImageProcessor(
        size={"shortest_edge": round(img_size * 256 / 224)},
        crop_size={"height": img_size, "width": img_size},
        **stats,
    )


def _replace_export_dir(tmp: Path, out: Path) -> None:
    """Move the complete export `tmp` to `out`, replacing a previous export there; a folder that holds
    anything else is refused (never deleted)."""
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / "config.json").is_file())):
        raise UserError(f"--out {out} exists and is not a Hugging Face export: give a new folder")
    if out.exists():
        old = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_hf(checkpoint: Any, out: str | os.PathLike, checkpoint_key: str = "teacher") -> list[str]:
    """Write a folder that `transformers.AutoModel.from_pretrained(out)` loads with no code of ours
    (config.json, model.safetensors, preprocessor_config.json), atomically; returns the lines to print."""
    if importlib.util.find_spec("transformers") is None:
        raise UserError(f"--format hf needs the transformers package: {HF_INSTALL}")
    from safetensors.torch import save_file  # a dependency of transformers

    out = Path(out).expanduser()
    extracted = extract_backbone(checkpoint, checkpoint_key)
    config = infer_vit_config(extracted.state_dict)
    state_dict = flat_backbone_state_dict(extracted.state_dict)
    model_class = hf_model_class(state_dict, config)
    ffn = (
        state_dict["blocks.0.mlp.w3.weight"].shape[1]
        if "blocks.0.mlp.w3.weight" in state_dict
        else state_dict["blocks.0.mlp.fc1.weight"].shape[0]
    )
    hf_cfg = hf_config(model_class, config, ffn)
    tensors = {k: v.detach().contiguous() for k, v in to_hf_state_dict(state_dict, model_class).items()}
    make_output_dir(out.parent, "--out")  # a parent that is a file or read-only is one line now
    tmp = out.with_name(f".{out.name}.tmp-{secrets.token_hex(4)}")
    try:
        tmp.mkdir()
        hf_cfg.save_pretrained(str(tmp))
        hf_image_processor(model_class, config["img_size"]).save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _replace_export_dir(tmp, out)
    except OSError as err:  # read-only folder, full disk, ...
        raise UserError(
            f"--out {out} cannot be written: {err.strerror or err}; give a writable folder with free space"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [
        f"wrote {out} (transformers {model_class}, {len(tensors)} tensors): "
        f"{describe_vit_config(config, ('embed_dim', 'depth', 'num_register_tokens', 'init_values', 'ffn_layer'))}",
        f"  from {extracted.layout} of {extracted.source}",
        "load it with: transformers.AutoModel.from_pretrained"
        f'("{out}") and AutoImageProcessor.from_pretrained("{out}"); last_hidden_state[:, 0] is the final-norm '
        f"CLS embedding (pass interpolate_pos_encoding=True to ViTModel for sizes other than {config['img_size']})",
    ]


# ---------------------------------------------------------------------------------------------- export
def _save(tensors: dict[str, Tensor], out: Path, metadata: dict[str, str]) -> None:
    tensors = {key: value.detach().contiguous() for key, value in tensors.items()}
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give a file name in it, e.g. {out / 'backbone.pth'}")
    make_output_dir(out.parent, flag="--out")  # under a file, read-only: one line
    if out.suffix == ".safetensors":
        try:
            from safetensors.torch import save
        except ImportError:
            raise CheckpointError(
                "writing .safetensors needs the safetensors package: pip install safetensors"
            ) from None
        atomic_write_bytes(out, save(tensors, metadata=metadata))  # a full disk: one line, no cut file
    else:
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
    if fmt == "hf":
        return export_hf(checkpoint, out, checkpoint_key)
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
        prog="python -m simdinov2.export",
        description="Export the ViT backbone of a SimDINO/DINO checkpoint.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", help="checkpoint file, teacher snapshot, DCP directory or state dict")
    parser.add_argument(
        "--out", required=True, help="output file (.pth or .safetensors); a folder for --format hf"
    )
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
