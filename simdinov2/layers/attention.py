"""Multi-head self-attention of the ViT (`attn.qkv`, `attn.proj`).

The fused kernel is `torch.nn.functional.scaled_dot_product_attention`. xformers'
`memory_efficient_attention` is used only when it imports AND the tensors live on CUDA (it is never
required; set `XFORMERS_DISABLED=1` to skip it). `attention_probs` computes the softmax explicitly for
attention maps (DINO's `get_last_selfattention`).

One exception, measured: on the CPU in bf16/fp16 (autocast), torch's fused SDPA kernel is several times
slower than the explicit softmax(Q Kᵀ) V at ViT token counts; its backward was 30% of the whole CPU
training step, and one attention layer (projections included) runs 2.4-2.7x faster with the explicit
path at 10-50 tokens (benchmarks/attention.py, benchmarks/RESULTS.md §7). There, sequences of at most
`EXPLICIT_CPU_MAX_TOKENS` tokens take the explicit path (softmax in fp32); fp32 on the CPU and everything
on CUDA keep SDPA.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # optional accelerator; the plain torch path is always available
    if os.environ.get("XFORMERS_DISABLED"):
        raise ImportError("disabled by XFORMERS_DISABLED")
    from xformers.ops import memory_efficient_attention as _xformers_attention

    XFORMERS_AVAILABLE = True
except Exception:  # ImportError, or a broken build that fails at import time
    _xformers_attention = None
    XFORMERS_AVAILABLE = False


# Above this many tokens the explicit path's [B, heads, N, N] probabilities cost too much memory.
EXPLICIT_CPU_MAX_TOKENS = 1024


def _use_explicit_attention(q: Tensor) -> bool:
    """CPU, half precision, at most `EXPLICIT_CPU_MAX_TOKENS` tokens: where the explicit path is faster."""
    low_precision = q.dtype in (torch.bfloat16, torch.float16)
    return q.device.type == "cpu" and low_precision and q.shape[-2] <= EXPLICIT_CPU_MAX_TOKENS


class Attention(nn.Module):
    """softmax(Q Kᵀ / sqrt(d)) V over `num_heads` heads, then an output projection.

    The qkv Linear's output is laid out (3, heads, head_dim) as in DINO/DINOv2, so their checkpoints'
    `attn.qkv.weight` rows mean the same thing here. `qknorm` RMS-normalises each head's queries and keys
    (`q_norm`, `k_norm`, learned per-channel scale starting at 1, so at init it equals upstream SimDINOv2's
    parameter-free RMS norm) before the scaled dot product.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        qknorm: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed_dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.q_norm = nn.RMSNorm(self.head_dim) if qknorm else None
        self.k_norm = nn.RMSNorm(self.head_dim) if qknorm else None

    def _qkv(self, x: Tensor) -> Tensor:
        """[B, N, C] -> [B, N, 3, heads, head_dim], queries and keys normalised when `qknorm`."""
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        if self.q_norm is None:
            return qkv
        q, k, v = qkv.unbind(2)
        return torch.stack((self.q_norm(q), self.k_norm(k), v), dim=2)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, channels = x.shape
        qkv = self._qkv(x)
        dropout_p = self.attn_drop if self.training else 0.0
        if _xformers_attention is not None and x.is_cuda:
            q, k, v = qkv.unbind(2)  # xformers wants [B, N, heads, head_dim]
            try:
                out = _xformers_attention(q, k, v, p=dropout_p)
                out = out.reshape(batch, tokens, channels)
                return self.proj_drop(self.proj(out))
            except NotImplementedError:  # no xformers kernel for this dtype/shape/GPU: use SDPA
                pass
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, N, head_dim]
        if _use_explicit_attention(q):
            probs = self._probs(q, k).to(v.dtype)
            out = F.dropout(probs, dropout_p) @ v if dropout_p else probs @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        out = out.transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(out))

    def _probs(self, q: Tensor, k: Tensor) -> Tensor:
        """softmax(Q Kᵀ / sqrt(d)) in fp32: [B, heads, N, N]."""
        return ((q * self.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)

    def attention_probs(self, x: Tensor) -> Tensor:
        """The attention probabilities softmax(Q Kᵀ / sqrt(d)): [B, heads, N, N] (rows sum to 1)."""
        q, k, _ = self._qkv(x).permute(2, 0, 3, 1, 4)
        return self._probs(q, k).to(q.dtype)


__all__ = ["Attention", "XFORMERS_AVAILABLE"]
