"""Checkpoint loading for both trees: every layout, safely (see docs/DESIGN.md).

`loader` finds and loads a ViT backbone in any supported layout; `download` turns a `weights=` value
(path, file:// or http(s) URL, Google Drive link) into a local file.
"""

from .download import (
    ChecksumError,
    DownloadError,
    cache_dir,
    download_weights,
    google_drive_file_id,
    resolve_weights,
    sha256_of,
)
from .loader import (
    CheckpointError,
    LoadReport,
    build_backbone_from_checkpoint,
    describe_vit_config,
    extract_backbone_state_dict,
    infer_vit_config,
    load_backbone_weights,
    load_dcp_checkpoint,
    safe_torch_load,
    strip_wrapper_prefixes,
)

__all__ = [
    "CheckpointError",
    "ChecksumError",
    "DownloadError",
    "LoadReport",
    "build_backbone_from_checkpoint",
    "cache_dir",
    "describe_vit_config",
    "download_weights",
    "extract_backbone_state_dict",
    "google_drive_file_id",
    "infer_vit_config",
    "load_backbone_weights",
    "load_dcp_checkpoint",
    "resolve_weights",
    "safe_torch_load",
    "sha256_of",
    "strip_wrapper_prefixes",
]
