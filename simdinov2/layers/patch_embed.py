"""Image to patch tokens: a strided convolution `proj` (checkpoint name `patch_embed.proj`)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Split an image [B, C, H, W] into non-overlapping patches and embed them: [B, N, D].

    Like DINO v1, sizes that are not a multiple of the patch size are floored (the border that does not
    fill a whole patch is ignored); `H // patch_size` x `W // patch_size` tokens come out, row-major.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if patch_size < 1 or img_size < patch_size:
            raise ValueError(
                f"patch_size must be between 1 and img_size (got patch_size={patch_size}, img_size={img_size})"
            )
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size * self.grid_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected images [B, {self.in_chans}, H, W], got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height < self.patch_size or width < self.patch_size:
            raise ValueError(
                f"image {height}x{width} is smaller than one {self.patch_size}px patch; "
                "use larger crops or a smaller patch_size"
            )
        x = self.proj(x)  # [B, D, H/p, W/p]
        x = x.flatten(2).transpose(1, 2)  # [B, N, D], row-major over the patch grid
        return self.norm(x)


__all__ = ["PatchEmbed"]
