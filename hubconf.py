"""torch.hub entry points for the seven checkpoints of the SimDINO release.

    model = torch.hub.load("<owner>/<repo>" or "/path/to/checkout", "simdinov2_vitb16", source="github" or "local")
    cls = model(images)                      # [B, D] final-norm CLS embedding
    feats = model.forward_features(images)   # x_norm_clstoken, x_norm_regtokens, x_norm_patchtokens, ...

Every entry takes `(pretrained=True, weights=None, **kwargs)`:
- `weights`: a local path, a `file://` URL or any http(s) URL to use instead of the release's Google
  Drive link (downloads go to `$TORCH_HOME/hub/checkpoints`, resumable, sha256-checked when known);
- `pretrained=False`: the same architecture with random weights;
- kwargs: `checkpoint_key` ("teacher", or "student" for v1 training checkpoints), `sha256`, `progress`,
  `arch` / `patch_size` (the expected architecture, checked against the weights), and ViT options
  such as `drop_path_rate`.

With weights, the model is built from what the file contains (registers, LayerScale, FFN, block chunks)
and loaded strictly, so it computes exactly the function of those weights; a file of another arch or
patch size is refused with one line naming both.

Any other name (a DINOv2 habit such as `dinov2_vitb14`, a ViT-S) is answered with the list of entries.
"""

from __future__ import annotations

import sys as _sys

# Imported under private names: torch.hub.list() offers every public callable of this module. (No
# dataclass: torch.hub executes this file without registering it in sys.modules, which dataclasses need.)
from typing import Any as _Any
from typing import NamedTuple as _NamedTuple

dependencies = ["torch"]


class _Release(_NamedTuple):
    arch: str
    layout: str  # "v1": DINO ViT (no registers / LayerScale / mask token); "v2": DINOv2 ViT
    url: str
    file_name: str
    sha256: str | None = None  # the release publishes no checksums; set when known


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view?usp=drive_link"


# Order and links of the README's tables: SimDINO B, L; SimDINOv2 B, L; DINO B; DINOv2 B, L.
_RELEASES = {
    "simdino_vitb16": _Release(
        "vit_base", "v1", _drive("1nqcX0IgKQ8H3ZFJKaEx_O5wTVqdorLyQ"), "simdino_vitb16.pth"
    ),
    "simdino_vitl16": _Release(
        "vit_large", "v1", _drive("1jy27VYHHSxllMqWr5DiKk80y9ZBrKkPV"), "simdino_vitl16.pth"
    ),
    "simdinov2_vitb16": _Release(
        "vit_base", "v2", _drive("1g_f3aEFdfiKCn8IH11Y4FwtEDu1pPbQv"), "simdinov2_vitb16.pth"
    ),
    "simdinov2_vitl16": _Release(
        "vit_large", "v2", _drive("1IotEWszh1chGtzwl8X_ul6j3ACT7Tn6i"), "simdinov2_vitl16.pth"
    ),
    "dino_vitb16": _Release("vit_base", "v1", _drive("1o-FtJ0TDNPAZiREa_qjGENksYL_3Ohc8"), "dino_vitb16.pth"),
    "dinov2_vitb16": _Release(
        "vit_base", "v2", _drive("1QZpUkC_yX2V9rWqHW3qLTFfvD6BUqyN_"), "dinov2_vitb16.pth"
    ),
    "dinov2_vitl16": _Release(
        "vit_large", "v2", _drive("1p-cUWNShnZEFBJ_mnw77HnvCFIV0FthN"), "dinov2_vitl16.pth"
    ),
}

# The SimDINOv2 / DINOv2 recipe's ViT (simdino_config.yaml): 4 registers, LayerScale, MLP FFN, 4 chunks.
_V2_LAYOUT = {"num_register_tokens": 4, "init_values": 1.0e-5, "ffn_layer": "mlp", "block_chunks": 4}


def _random_model(release: _Release, arch: str, patch_size: int, kwargs: dict[str, _Any]) -> _Any:
    from simdinov2.models import ARCHS, build_vit

    if release.layout == "v1":
        return build_vit(arch, patch_size=patch_size, v1=True, **kwargs)
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCHS)}")
    return ARCHS[arch](patch_size=patch_size, **{**_V2_LAYOUT, **kwargs})


def _load(name: str, pretrained: bool, weights: _Any, kwargs: dict[str, _Any]) -> _Any:
    from simdinov2.checkpoint import build_backbone_from_checkpoint, resolve_weights

    release = _RELEASES[name]
    arch = kwargs.pop("arch", release.arch)
    patch_size = kwargs.pop("patch_size", 16)
    checkpoint_key = kwargs.pop("checkpoint_key", "teacher")
    progress = kwargs.pop("progress", True)
    sha256 = kwargs.pop("sha256", release.sha256 if weights is None else None)
    if not pretrained:
        if weights is not None:
            raise ValueError(f"{name}: weights={weights!r} was given with pretrained=False; drop one of them")
        return _random_model(release, arch, patch_size, kwargs)
    if weights is None:
        path = resolve_weights(release.url, sha256=sha256, file_name=release.file_name, progress=progress)
    else:
        path = resolve_weights(weights, sha256=sha256, progress=progress)
    return build_backbone_from_checkpoint(
        path, checkpoint_key=checkpoint_key, arch=arch, patch_size=patch_size, **kwargs
    )


def simdino_vitb16(pretrained: bool = True, weights: _Any = None, **kwargs: _Any) -> _Any:
    """SimDINO ViT-B/16 (ImageNet-1k, 100 epochs; k-NN 74.9%, linear 77.3%), DINO v1 ViT layout."""
    return _load("simdino_vitb16", pretrained, weights, kwargs)


def simdino_vitl16(pretrained: bool = True, weights: _Any = None, **kwargs: _Any) -> _Any:
    """SimDINO ViT-L/16 (ImageNet-1k, 100 epochs; k-NN 75.6%, linear 77.4%), DINO v1 ViT layout."""
    return _load("simdino_vitl16", pretrained, weights, kwargs)


# The released SimDINOv2 checkpoints were trained with upstream v2's position-embedding interpolation.
_SIMDINOV2_INTERPOLATION = {"interpolate_antialias": True, "interpolate_offset": 0.0}


def simdinov2_vitb16(pretrained: bool = True, weights: _Any = None, **kwargs: _Any) -> _Any:
    """SimDINOv2 ViT-B/16 (ImageNet-1k, 100 epochs; k-NN 78.1%, linear 79.7%), DINOv2 ViT layout."""
    return _load("simdinov2_vitb16", pretrained, weights, {**_SIMDINOV2_INTERPOLATION, **kwargs})


def simdinov2_vitl16(pretrained: bool = True, weights: _Any = None, **kwargs: _Any) -> _Any:
    """SimDINOv2 ViT-L/16 (ImageNet-1k, 100 epochs; k-NN 81.1%, linear 82.4%), DINOv2 ViT layout."""
    return _load("simdinov2_vitl16", pretrained, weights, {**_SIMDINOV2_INTERPOLATION, **kwargs})


def dino_vitb16(pretrained: bool = True, weights: _Any = None, **kwargs: _Any) -> _Any:
    """DINO ViT-B/16 trained by the SimDINO authors (k-NN 72.9%, linear 76.3%), DINO v1 ViT layout."""
    return _load("dino_vitb16", pretrained, weights, kwargs)


def dinov2_vitb16(pretrained: bool = True, weights: _Any = None, **kwargs: _Any) -> _Any:
    """DINOv2 ViT-B/16 trained by the SimDINO authors (k-NN 76.0%, linear 77.2%), DINOv2 ViT layout."""
    return _load("dinov2_vitb16", pretrained, weights, kwargs)


def dinov2_vitl16(pretrained: bool = True, weights: _Any = None, **kwargs: _Any) -> _Any:
    """DINOv2 ViT-L/16 trained by the SimDINO authors (k-NN 80.8%, linear 82.0%), DINOv2 ViT layout."""
    return _load("dinov2_vitl16", pretrained, weights, kwargs)


def _unknown_entry(name: str) -> AttributeError:
    meta = ""
    if name.startswith(("dino_", "dinov2_")):
        meta = (
            "; Meta's own DINO / DINOv2 models (ViT-S, patch 8 or 14, ...) load from facebookresearch/dino or "
            "facebookresearch/dinov2"
        )
    return AttributeError(
        f"this repository's hubconf has no entry {name!r}; its entries are {', '.join(_RELEASES)} "
        f"(the released ViT-B/16 and ViT-L/16 checkpoints){meta}"
    )


def __getattr__(name: str) -> _Any:
    if name.startswith("__"):  # protocol look-ups (copy, pickle, ...) keep Python's plain answer
        raise AttributeError(name)
    raise _unknown_entry(name)


def __dir__() -> list[str]:
    # torch.hub checks `name in dir(hubconf)` before getattr and otherwise answers only "Cannot find
    # callable"; for the name it is looking up (the `func_name` of torch.hub._load_attr_from_module),
    # say it exists so that the lookup reaches __getattr__ and its list of entries. torch.hub.list()
    # sees the plain names.
    names = set(globals())
    caller = _sys._getframe(1)
    looked_up = (
        caller.f_locals.get("func_name") if caller.f_code.co_name == "_load_attr_from_module" else None
    )
    if isinstance(looked_up, str):
        names.add(looked_up)
    return sorted(names)
