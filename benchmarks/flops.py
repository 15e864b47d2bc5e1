"""Analytic FLOPs of the multi-crop training step, per source image: the numerator of the GPU MFU.

A matmul of [m, k] by [k, n] costs 2·m·k·n FLOPs (multiply and add). For one crop of `s` px through a
ViT with patch `p`, width `d`, `L` blocks, MLP ratio 4 and `r` register tokens, `N = (s/p)²` patches and
`T = N + 1 + r` tokens:

    patch embedding      2 · N · (3·p²) · d
    one block            24 · T · d²        qkv 6Td², output projection 2Td², MLP 2·(2·T·d·4d) = 16Td²
                       +  4 · T² · d        attention scores Q·Kᵀ and weighted values P·V
    forward              patch embedding + L · block

The projection head on the CLS token, `nlayers` linear layers d → h → … → h → b (+ b → K prototypes for
DINO / DINOv2), costs 2·(d·h + (nlayers − 2)·h² + h·b) (+ 2·b·K).

One step, per source image: the student runs forward and backward (backward ≈ 2 × forward, so 3 ×
forward) on every crop, the teacher forward only on the global crops. Not counted, as usual for MFU:
normalisations, activations, softmax, the loss, the optimizer, recomputation under gradient
checkpointing, and v2's iBOT head on the masked patch tokens (about 0.3% of a ViT-L step with
256-dim SimDINOv2 heads, under 1% with DINOv2's 65536 prototypes). `tests/test_gpu_check.py` checks
the forward formulas against `torch.utils.flop_counter` on the project's ViT and head.
"""

from __future__ import annotations

from dataclasses import dataclass

# Width and depth of the project's ViTs (simdinov2.models.vision_transformer), MLP ratio 4 for all.
VIT_SHAPES: dict[str, tuple[int, int]] = {
    "vit_tiny": (192, 12),
    "vit_small": (384, 12),
    "vit_base": (768, 12),
    "vit_large": (1024, 24),
}
MLP_RATIO = 4


def vit_forward_flops(
    arch: str, patch_size: int, image_size: int, num_register_tokens: int = 0, depth: int = 0
) -> int:
    """FLOPs of one `image_size`-px crop through the ViT backbone, forward (formula in the module docstring).

    `depth` > 0 overrides the arch's number of blocks (v1's `--depth`)."""
    if arch not in VIT_SHAPES:
        raise ValueError(f"no FLOP formula for arch {arch!r}: one of {', '.join(VIT_SHAPES)}")
    width, arch_depth = VIT_SHAPES[arch]
    depth = depth or arch_depth
    patches = (image_size // patch_size) ** 2
    tokens = patches + 1 + num_register_tokens
    patch_embed = 2 * patches * 3 * patch_size**2 * width
    block = 2 * tokens * width * (3 + 1 + 2 * MLP_RATIO) * width + 4 * tokens**2 * width
    return patch_embed + depth * block


def head_forward_flops(
    in_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int, prototypes: int = 0
) -> int:
    """FLOPs of the projection head on one token: the MLP, plus the prototype layer when `prototypes` > 0."""
    if nlayers < 2:
        raise ValueError("the head formula covers nlayers >= 2")
    mlp = 2 * (in_dim * hidden_dim + (nlayers - 2) * hidden_dim**2 + hidden_dim * bottleneck_dim)
    return mlp + 2 * bottleneck_dim * prototypes


@dataclass(frozen=True)
class StepShape:
    """What one training step computes per source image."""

    arch: str
    patch_size: int
    global_size: int
    local_size: int
    local_crops: int
    num_register_tokens: int = 0
    depth: int = 0
    head_hidden: int = 2048
    head_bottleneck: int = 256
    head_layers: int = 3
    prototypes: int = 0  # 0: SimDINO heads (no prototype layer)

    def crop_forward_flops(self, size: int) -> int:
        width = VIT_SHAPES[self.arch][0]
        backbone = vit_forward_flops(self.arch, self.patch_size, size, self.num_register_tokens, self.depth)
        head = head_forward_flops(
            width, self.head_hidden, self.head_bottleneck, self.head_layers, self.prototypes
        )
        return backbone + head

    def flops_per_image(self) -> int:
        """Student forward + backward on 2 global + n local crops, teacher forward on the 2 globals."""
        global_crop = self.crop_forward_flops(self.global_size)
        local_crop = self.crop_forward_flops(self.local_size)
        student = 3 * (2 * global_crop + self.local_crops * local_crop)
        teacher = 2 * global_crop
        return student + teacher


__all__ = ["MLP_RATIO", "VIT_SHAPES", "StepShape", "head_forward_flops", "vit_forward_flops"]
