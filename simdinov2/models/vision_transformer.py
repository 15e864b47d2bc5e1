"""The Vision Transformer used by both trees (DINO v1 scripts and the DINOv2-style package).

Owns: `DinoVisionTransformer` (registers, LayerScale, SwiGLU, block chunks, iBOT mask token,
position-embedding interpolation for any crop size, multi-crop list input), the arch table
`ARCH_SPECS` (name -> width, depth, heads, mlp ratio, FFN) with its builders `vit_from_arch`,
`vit_tiny/small/base/large/giant2` and `ARCHS` (name -> builder), and `parse_block_key` /
`remap_block_keys` (flat <-> chunked block names).

Parameter names follow DINO/DINOv2 exactly (`cls_token`, `pos_embed`, `register_tokens`, `mask_token`,
`patch_embed.proj`, `blocks.{i}` or `blocks.{chunk}.{i}`, `norm`) so their checkpoints load strict=True.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from simdinov2.layers import Block, BlockChunk, Mlp, PatchEmbed, SwiGLUFFNFused

# "swiglu" is an alias of "swiglufused" (DINOv2 builds the same fused-width SwiGLU for both names).
FFN_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": Mlp,
    "swiglu": SwiGLUFFNFused,
    "swiglufused": SwiGLUFFNFused,
}


def _init_weights_vit(module: nn.Module) -> None:
    """DINO/DINOv2 init: trunc-normal(0.02) Linear weights, zero biases; LayerNorm ones/zeros."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _check_vit_arguments(
    ffn_layer: str,
    embed_dim: int,
    num_heads: int,
    depth: int,
    block_chunks: int,
    num_register_tokens: int,
    cls_token_init: str,
) -> None:
    if ffn_layer not in FFN_LAYERS:
        raise ValueError(f"unknown ffn_layer {ffn_layer!r}; choose one of {sorted(FFN_LAYERS)}")
    if embed_dim % num_heads != 0:
        raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
    if not 0 <= block_chunks <= depth:
        raise ValueError(f"block_chunks must be between 0 and depth={depth} (got {block_chunks})")
    if num_register_tokens < 0:
        raise ValueError(f"num_register_tokens must be >= 0 (got {num_register_tokens})")
    if cls_token_init not in ("dino", "dinov2"):
        raise ValueError(f"cls_token_init must be dino or dinov2 (got {cls_token_init!r})")


def _drop_rates(drop_path_rate: float, depth: int, uniform: bool) -> list[float]:
    if uniform:
        return [drop_path_rate] * depth
    # Stochastic depth grows linearly with depth (first block 0, last block drop_path_rate); plain Python,
    # not torch.linspace, so the model can be built on the meta device.
    return [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]


def build_blocks(
    block_fn: Callable[..., nn.Module],
    depth: int,
    block_chunks: int,
    drop_rates: list[float],
    **block_kwargs: Any,
) -> nn.ModuleList:
    """The `depth` transformer blocks, in `block_chunks` `BlockChunk`s when > 0 (DINOv2's FSDP layout, whose
    identity padding keeps the global block index as the name inside each chunk: `blocks.1.6.*`)."""
    blocks_list = [block_fn(drop_path=drop_rates[i], **block_kwargs) for i in range(depth)]
    if block_chunks == 0:
        return nn.ModuleList(blocks_list)
    chunk_size = depth // block_chunks
    return nn.ModuleList(
        BlockChunk([nn.Identity()] * start + blocks_list[start : start + chunk_size])
        for start in range(0, depth, chunk_size)
    )


class DinoVisionTransformer(nn.Module):
    """ViT backbone with DINO v1 and DINOv2 checkpoint compatibility.

    Token order inside the blocks: [CLS, registers..., patches...] (DINOv2). The position embedding covers
    CLS + patches of an `img_size` image and is bicubically resized for other crop sizes.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        ffn_bias: bool = True,
        proj_bias: bool = True,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        init_values: float | None = None,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        block_fn: Callable[..., nn.Module] = Block,
        ffn_layer: str = "mlp",
        block_chunks: int = 0,
        num_register_tokens: int = 0,
        interpolate_antialias: bool = False,
        interpolate_offset: float = 0.1,
        use_mask_token: bool = True,
        attn_drop: float = 0.0,
        ffn_drop: float = 0.0,
        qknorm: bool = False,
        drop_masks: bool = False,
        gradient_checkpointing: bool = False,
        cls_token_init: str = "dinov2",
    ) -> None:
        super().__init__()
        _check_vit_arguments(
            ffn_layer, embed_dim, num_heads, depth, block_chunks, num_register_tokens, cls_token_init
        )
        self.cls_token_init = cls_token_init
        norm_layer = partial(nn.LayerNorm, eps=1e-6)

        self.num_features = self.embed_dim = embed_dim
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.depth = depth
        self.num_tokens = 1
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        # iBOT replaces masked patches by the mask token; MAE-style `drop_masks` removes them instead.
        self.drop_masks = drop_masks
        # Recompute each block's activations during the backward instead of storing them (training only).
        self.gradient_checkpointing = gradient_checkpointing

        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim
        )
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_tokens, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )
        # DINO v1 checkpoints have no mask token: v1 builds use use_mask_token=False to load strict=True.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim)) if use_mask_token else None

        self.chunked_blocks = block_chunks > 0
        # Kept packed (fmt: skip): one keyword per line would take __init__ over the 80-line limit.
        self.blocks = build_blocks(
            block_fn, depth, block_chunks, _drop_rates(drop_path_rate, depth, drop_path_uniform),
            dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_bias=proj_bias,
            ffn_bias=ffn_bias, norm_layer=norm_layer, act_layer=act_layer, ffn_layer=FFN_LAYERS[ffn_layer],
            init_values=init_values, drop=ffn_drop, attn_drop=attn_drop, qknorm=qknorm,
        )  # fmt: skip
        self.n_blocks = len(self.blocks)

        self.norm = norm_layer(embed_dim)
        self.head = nn.Identity()
        self.init_weights()

    # ------------------------------------------------------------------ init / structure
    def init_weights(self) -> None:
        """DINOv2 init: pos_embed trunc-normal(0.02), cls/register tokens normal(1e-6), mask token 0.
        `cls_token_init="dino"` (the v1 tree): the CLS token trunc-normal(0.02), as DINO v1."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token_init == "dino":
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        else:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        if self.mask_token is not None:
            nn.init.zeros_(self.mask_token)
        self.apply(_init_weights_vit)

    def block_list(self) -> list[nn.Module]:
        """The `depth` transformer blocks in order, without the chunk padding."""
        if not self.chunked_blocks:
            return list(self.blocks)
        return [blk for chunk in self.blocks for blk in chunk if not isinstance(blk, nn.Identity)]

    def block_names(self) -> list[str]:
        """State-dict prefix of every block in order: `blocks.{i}` or `blocks.{chunk}.{i}`."""
        if not self.chunked_blocks:
            return [f"blocks.{i}" for i in range(len(self.blocks))]
        return [
            f"blocks.{c}.{i}"
            for c, chunk in enumerate(self.blocks)
            for i, blk in enumerate(chunk)
            if not isinstance(blk, nn.Identity)
        ]

    # ------------------------------------------------------------------ tokens
    def interpolate_pos_encoding(self, x: Tensor, height: int, width: int) -> Tensor:
        """Position embedding for an image of `height` x `width` pixels: [1, 1 + rows*cols, D].

        Bicubic resize of the patch-grid part; unchanged when the grid matches. The DINO "+offset"
        scale-factor kludge (dino issue #8) is kept so released checkpoints give the same features.
        """
        num_patch_pos = self.pos_embed.shape[1] - 1
        rows, cols = height // self.patch_size, width // self.patch_size
        side = int(math.sqrt(num_patch_pos))
        if side * side != num_patch_pos:
            raise ValueError(f"pos_embed holds {num_patch_pos} patch positions, not a square grid")
        if rows == side and cols == side:
            return self.pos_embed
        previous_dtype = x.dtype
        pos_embed = self.pos_embed.float()
        class_pos = pos_embed[:, :1]
        patch_pos = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)  # [1, D, side, side]
        if self.interpolate_offset:
            scale = ((rows + self.interpolate_offset) / side, (cols + self.interpolate_offset) / side)
            patch_pos = F.interpolate(
                patch_pos, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias
            )
        else:
            patch_pos = F.interpolate(
                patch_pos, size=(rows, cols), mode="bicubic", antialias=self.interpolate_antialias
            )
        if patch_pos.shape[-2:] != (rows, cols):
            raise RuntimeError(
                f"pos_embed interpolation gave {tuple(patch_pos.shape[-2:])}, expected {(rows, cols)}"
            )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat((class_pos, patch_pos), dim=1).to(previous_dtype)

    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Images [B, C, H, W] -> tokens [B, 1 + R + N, D]: patch embed, mask token where `masks` [B, N] is
        True (iBOT), CLS, position embedding, then the R register tokens after CLS (no pos embed, DINOv2).

        With `drop_masks` the masked patches are removed after the position embedding instead (MAE
        style): every image must then mask the same number of patches, and N is the number kept."""
        height, width = x.shape[-2:]
        x = self.patch_embed(x)
        if masks is not None:
            if self.mask_token is None:
                raise ValueError("masks were given but this model was built with use_mask_token=False")
            if masks.shape != x.shape[:2]:
                raise ValueError(
                    f"masks must have shape [B, N]={tuple(x.shape[:2])}, got {tuple(masks.shape)}"
                )
            masks = masks.to(torch.bool)
            if not self.drop_masks:
                x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, height, width)
        if masks is not None and self.drop_masks:
            kept = (~masks).sum(dim=1)
            if bool((kept != kept[0]).any()):
                raise ValueError(
                    "drop_masks needs the same number of masked patches in every image of a batch"
                )
            patches = x[:, 1:][~masks].reshape(x.shape[0], int(kept[0]), x.shape[-1])
            x = torch.cat((x[:, :1], patches), dim=1)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(x.shape[0], -1, -1).to(x.dtype)
            x = torch.cat((x[:, :1], registers, x[:, 1:]), dim=1)
        return x

    # ------------------------------------------------------------------ forward
    def _features_dict(self, x_prenorm: Tensor, masks: Tensor | None) -> dict[str, Tensor | None]:
        x_norm = self.norm(x_prenorm)
        first_patch = 1 + self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1:first_patch],
            "x_norm_patchtokens": x_norm[:, first_patch:],
            "x_prenorm": x_prenorm,
            "masks": masks,
        }

    def forward_features_list(
        self, x_list: Sequence[Tensor], masks_list: Sequence[Tensor | None] | None = None
    ) -> list[dict[str, Tensor | None]]:
        """One dict per input tensor; each size group goes through the blocks on its own."""
        if masks_list is None:
            masks_list = [None] * len(x_list)
        if len(masks_list) != len(x_list):
            raise ValueError(
                f"got {len(x_list)} image tensors but {len(masks_list)} masks (use None for no mask)"
            )
        return [self._forward_features_single(x, m) for x, m in zip(x_list, masks_list, strict=True)]

    def _forward_features_single(self, x: Tensor, masks: Tensor | None) -> dict[str, Tensor | None]:
        x = self.prepare_tokens_with_masks(x, masks)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # One checkpoint per block (not per chunk): only the block inputs stay in memory. The RNG
            # state is replayed, so stochastic depth and dropout draw the same in the recomputation.
            for block in self.block_list():
                x = checkpoint(block, x, use_reentrant=False)
        else:
            for block in self.blocks:
                x = block(x)
        return self._features_dict(x, masks)

    def forward_features(
        self, x: Tensor | Sequence[Tensor], masks: Tensor | Sequence[Tensor | None] | None = None
    ) -> dict[str, Tensor | None] | list[dict[str, Tensor | None]]:
        """Final-norm CLS / register / patch tokens, pre-norm tokens and the masks.

        A list of image tensors (e.g. 2 global + local crops of another size) gives a list of dicts,
        `masks` then being a list aligned with it (None entries allowed) or None.
        """
        if isinstance(x, (list, tuple)):
            return self.forward_features_list(x, masks)
        return self._forward_features_single(x, masks)

    def forward(
        self,
        x: Tensor | Sequence[Tensor],
        masks: Tensor | Sequence[Tensor | None] | None = None,
        is_training: bool = False,
    ) -> Any:
        """Final-norm CLS embedding [B, D] (a list of them for list input); the feature dict(s) if is_training."""
        features = self.forward_features(x, masks)
        if is_training:
            return features
        if isinstance(features, list):
            return [self.head(f["x_norm_clstoken"]) for f in features]
        return self.head(features["x_norm_clstoken"])

    # ------------------------------------------------------------------ probing helpers
    def _resolve_block_indices(self, n: int | Sequence[int]) -> list[int]:
        if isinstance(n, int):
            if not 1 <= n <= self.depth:
                raise ValueError(f"n must be between 1 and depth={self.depth} (got {n})")
            return list(range(self.depth - n, self.depth))
        indices = sorted({int(i) % self.depth if -self.depth <= int(i) < 0 else int(i) for i in n})
        if not indices or indices[0] < 0 or indices[-1] >= self.depth:
            raise ValueError(f"block indices must lie in [0, {self.depth}) (got {list(n)})")
        return indices

    def _get_intermediate_layers(self, x: Tensor, n: int | Sequence[int]) -> list[Tensor]:
        wanted = self._resolve_block_indices(n)
        x = self.prepare_tokens_with_masks(x)
        outputs = []
        for i, block in enumerate(self.block_list()):
            x = block(x)
            if i in wanted:
                outputs.append(x)
            if i == wanted[-1]:
                break  # later blocks are not needed
        return outputs

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple[Tensor, ...] | tuple[tuple[Tensor, Tensor], ...]:
        """Outputs of the last `n` blocks (int) or of the listed block indices, in block order.

        Each output is the patch tokens [B, N, D] (registers dropped), or [B, D, rows, cols] with
        `reshape`; `return_class_token` pairs each with its CLS token [B, D]; `norm` applies the final norm.
        """
        outputs = self._get_intermediate_layers(x, n)
        if norm:
            outputs = [self.norm(out) for out in outputs]
        class_tokens = [out[:, 0] for out in outputs]
        outputs = [out[:, 1 + self.num_register_tokens :] for out in outputs]
        if reshape:
            batch = x.shape[0]
            rows, cols = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
            outputs = [out.reshape(batch, rows, cols, -1).permute(0, 3, 1, 2).contiguous() for out in outputs]
        if return_class_token:
            return tuple(zip(outputs, class_tokens, strict=True))
        return tuple(outputs)

    def get_last_selfattention(self, x: Tensor) -> Tensor:
        """Attention probabilities of the last block: [B, heads, T, T], T = 1 + registers + patches."""
        x = self.prepare_tokens_with_masks(x)
        blocks = self.block_list()
        for block in blocks[:-1]:
            x = block(x)
        last = blocks[-1]
        return last.attn.attention_probs(last.norm1(x))


# ---------------------------------------------------------------------- the arch table
@dataclass(frozen=True)
class ArchSpec:
    """What an arch name fixes: width, depth, heads, FFN width ratio and FFN type."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    ffn_layer: str = "mlp"

    def vit_kwargs(self) -> dict[str, Any]:
        """These fields as `DinoVisionTransformer` keyword arguments."""
        return asdict(self)


# The one table of architectures: the builders below and the checkpoint loader both read it.
ARCH_SPECS: dict[str, ArchSpec] = {
    "vit_tiny": ArchSpec(embed_dim=192, depth=12, num_heads=3),  # DINO v1 / DeiT-Ti
    "vit_small": ArchSpec(embed_dim=384, depth=12, num_heads=6),
    "vit_base": ArchSpec(embed_dim=768, depth=12, num_heads=12),  # ~86M parameters
    "vit_large": ArchSpec(embed_dim=1024, depth=24, num_heads=16),  # ~304M parameters
    # DINOv2's ViT-g/2: head dim 64, SwiGLU FFN unless told otherwise
    "vit_giant2": ArchSpec(embed_dim=1536, depth=40, num_heads=24, ffn_layer="swiglufused"),
}


def vit_from_arch(
    arch: str, patch_size: int = 16, num_register_tokens: int = 0, **kwargs: Any
) -> DinoVisionTransformer:
    """`DinoVisionTransformer` with the `ARCH_SPECS[arch]` dimensions; `kwargs` override any of them."""
    if arch not in ARCH_SPECS:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCH_SPECS)}")
    kwargs = {**ARCH_SPECS[arch].vit_kwargs(), **kwargs}
    return DinoVisionTransformer(patch_size=patch_size, num_register_tokens=num_register_tokens, **kwargs)


def vit_tiny(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: Any) -> DinoVisionTransformer:
    """ViT-Ti: width 192, 12 blocks, 3 heads."""
    return vit_from_arch("vit_tiny", patch_size, num_register_tokens, **kwargs)


def vit_small(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: Any) -> DinoVisionTransformer:
    """ViT-S: width 384, 12 blocks, 6 heads."""
    return vit_from_arch("vit_small", patch_size, num_register_tokens, **kwargs)


def vit_base(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: Any) -> DinoVisionTransformer:
    """ViT-B: width 768, 12 blocks, 12 heads."""
    return vit_from_arch("vit_base", patch_size, num_register_tokens, **kwargs)


def vit_large(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: Any) -> DinoVisionTransformer:
    """ViT-L: width 1024, 24 blocks, 16 heads."""
    return vit_from_arch("vit_large", patch_size, num_register_tokens, **kwargs)


def vit_giant2(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: Any) -> DinoVisionTransformer:
    """ViT-g/2 of DINOv2: width 1536, 40 blocks, 24 heads, SwiGLU FFN."""
    return vit_from_arch("vit_giant2", patch_size, num_register_tokens, **kwargs)


# name -> builder, in the order of ARCH_SPECS (command-line choices, hub entries)
ARCHS: dict[str, Callable[..., DinoVisionTransformer]] = {
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "vit_base": vit_base,
    "vit_large": vit_large,
    "vit_giant2": vit_giant2,
}


# ---------------------------------------------------------------------- checkpoint key layout
_CHUNKED_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_FLAT_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def parse_block_key(key: str) -> tuple[int, int | None, str] | None:
    """(global block index, chunk index or None, rest of the key) of a `blocks.i.*` / `blocks.c.i.*` key.

    None for keys outside the blocks. Keys must be stripped of prefixes (`module.`, `backbone.`...).
    """
    chunked = _CHUNKED_KEY.match(key)
    if chunked:
        return int(chunked.group(2)), int(chunked.group(1)), chunked.group(3)
    flat = _FLAT_KEY.match(key)
    if flat:
        return int(flat.group(1)), None, flat.group(2)
    return None


def remap_block_keys(state_dict: dict[str, Any], model: DinoVisionTransformer) -> dict[str, Any]:
    """Rename `blocks.i.*` / `blocks.c.i.*` keys to the block layout of `model` (flat or chunked).

    Works in both directions and between different chunk counts: the global block index i is what
    identifies a block. Keys must already be stripped of prefixes (`module.`, `backbone.`...); other keys
    are returned unchanged, and so are block indices the model does not have (a strict load then reports
    them). Returns a new dict; the input is not modified.
    """
    target_names = model.block_names()
    remapped: dict[str, Any] = {}
    for key, value in state_dict.items():
        parsed = parse_block_key(key)
        if parsed is None:
            remapped[key] = value
            continue
        block_index, _chunk, rest = parsed
        if block_index < len(target_names):
            key = f"{target_names[block_index]}.{rest}"
        remapped[key] = value
    return remapped


__all__ = [
    "ARCHS",
    "ARCH_SPECS",
    "ArchSpec",
    "DinoVisionTransformer",
    "FFN_LAYERS",
    "parse_block_key",
    "remap_block_keys",
    "vit_base",
    "vit_giant2",
    "vit_large",
    "vit_small",
    "vit_from_arch",
    "vit_tiny",
]
