"""Self-attention maps of a ViT's CLS token, as DINO draws them (`simdino/visualize_attention.py`, the
demo's figure).

Owns `cls_attention_maps` (the last block's CLS→patch attention per head on the patch grid) and
`threshold_masks` (per head, the patches holding a given fraction of the attention mass).
"""

from __future__ import annotations

import torch

from simdinov2.models import DinoVisionTransformer


@torch.no_grad()
def cls_attention_maps(model: DinoVisionTransformer, img: torch.Tensor) -> torch.Tensor:
    """CLS→patch attention of the last block per head, on the patch grid: [heads, H/p, W/p] (registers
    are skipped)."""
    patch = model.patch_size
    rows, cols = img.shape[-2] // patch, img.shape[-1] // patch
    attentions = model.get_last_selfattention(img)  # [1, heads, T, T]
    first_patch = 1 + model.num_register_tokens
    return attentions[0, :, 0, first_patch:].reshape(-1, rows, cols).float()


def threshold_masks(attn: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per head, keep the patches with the largest attention until they hold `threshold` of the mass."""
    heads = attn.shape[0]
    flat = attn.reshape(heads, -1)
    flat = flat / flat.sum(dim=1, keepdim=True)
    values, order = torch.sort(flat, dim=1)
    cumulative = torch.cumsum(values, dim=1)
    keep_sorted = cumulative > (1 - threshold)
    masks = torch.zeros_like(flat, dtype=torch.bool)
    masks.scatter_(1, order, keep_sorted)
    return masks.reshape(attn.shape)
