"""Reading timm-layout ViT state dicts back into our layout (the inverse of `simdinov2.export --format timm`).

Owns `from_timm_layout`: timm keeps registers in `reg_token`, has no position slot for CLS in register
models, and packs SwiGLU's two input projections into `mlp.fc1`; our ViT names them `register_tokens`,
`pos_embed` with a CLS slot, and `mlp.w12` / `mlp.w3`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def from_timm_layout(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], bool]:
    """Undo `simdinov2.export`'s timm conversion (and read timm DINOv2 weights): exact inverse.

    timm keeps registers in `reg_token` and, for register models, no position slot for CLS (its position
    embedding was folded into `cls_token`); a zero CLS slot gives back the same function.
    """
    converted = False
    out = dict(state_dict)
    if "reg_token" in out:
        out["register_tokens"] = out.pop("reg_token")
        converted = True
    pos = out.get("pos_embed")
    if (
        pos is not None
        and pos.ndim == 3
        and pos.shape[1] > 0
        and math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]
    ):
        # 1 + side^2 is never a square, so a square count means "no CLS slot"
        out["pos_embed"] = torch.cat((torch.zeros_like(pos[:, :1]), pos), dim=1)
        converted = True
    for key in [k for k in out if k.endswith("mlp.fc1.weight")]:
        fc2 = out.get(key.replace("mlp.fc1.", "mlp.fc2."))
        if fc2 is not None and out[key].shape[0] == 2 * fc2.shape[1]:  # timm's packed SwiGLU
            for name in [k for k in out if k.startswith(key[: -len("fc1.weight")])]:
                out[name.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.")] = out.pop(name)
            converted = True
    return out, converted


__all__ = ["from_timm_layout"]
