"""Building blocks of the ViT and its projection heads, shared by both trees (see docs/DESIGN.md)."""

from .attention import XFORMERS_AVAILABLE, Attention
from .block import Block, BlockChunk, add_residual_on_batch_subset
from .dino_head import DINOHead, WeightNormLinear
from .drop_path import DropPath, drop_path
from .layer_scale import LayerScale
from .mlp import Mlp
from .patch_embed import PatchEmbed
from .swiglu_ffn import SwiGLUFFN, SwiGLUFFNFused

__all__ = [
    "XFORMERS_AVAILABLE",
    "Attention",
    "Block",
    "BlockChunk",
    "DINOHead",
    "DropPath",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "SwiGLUFFN",
    "SwiGLUFFNFused",
    "WeightNormLinear",
    "add_residual_on_batch_subset",
    "drop_path",
]
