"""Checkpoints for both trees: saving atomically, resuming v2 runs, and loading a backbone from any layout.

Every file is read without running anything it contains (see docs/DESIGN.md). Modules:
- `atomic_torch_save` / `atomic_write_text` / `sweep_temporaries` are `simdinov2.io.atomic`'s (temporary +
  rename, umask honoured, disk full = one `simdinov2.errors.DiskFullError` line), handed on here;
- `safe_load`: `safe_torch_load` and the restricted readers of DCP directories;
- `layouts`: where the backbone is inside a checkpoint (`extract_backbone_state_dict`,
  `strip_wrapper_prefixes`); `timm_layout`: timm-layout state dicts back into ours;
- `infer`: the architecture from tensor shapes (`infer_vit_config`, `describe_vit_config`);
- `loader`: `load_backbone_weights`, `build_backbone_from_checkpoint`;
- `dcp`: the v2 resumable checkpoints (`Checkpointer`) and the consolidated `save_teacher_snapshot`;
- `download`: a `weights=` value (path, file:// or http(s) URL, Google Drive link) -> a local file;
- `errors`: `CheckpointError`, `CheckpointNotFoundError` (both `simdinov2.errors.UserError`).
"""

from simdinov2.io.atomic import atomic_torch_save, atomic_write_bytes, atomic_write_text, sweep_temporaries

from .dcp import TRAINER_STATE, Checkpointer, full_state_dict, save_teacher_snapshot
from .download import (
    ChecksumError,
    DownloadError,
    cache_dir,
    download_weights,
    google_drive_file_id,
    resolve_weights,
    sha256_of,
)
from .errors import CheckpointError, CheckpointNotFoundError
from .infer import describe_vit_config, infer_vit_config
from .layouts import extract_backbone, extract_backbone_state_dict, strip_wrapper_prefixes
from .loader import LoadReport, build_backbone_from_checkpoint, load_backbone_weights
from .safe_load import load_dcp_checkpoint, safe_torch_load

__all__ = [
    "TRAINER_STATE",
    "CheckpointError",
    "CheckpointNotFoundError",
    "Checkpointer",
    "ChecksumError",
    "DownloadError",
    "LoadReport",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "sweep_temporaries",
    "build_backbone_from_checkpoint",
    "cache_dir",
    "describe_vit_config",
    "download_weights",
    "extract_backbone",
    "extract_backbone_state_dict",
    "full_state_dict",
    "google_drive_file_id",
    "infer_vit_config",
    "load_backbone_weights",
    "load_dcp_checkpoint",
    "resolve_weights",
    "safe_torch_load",
    "save_teacher_snapshot",
    "sha256_of",
    "strip_wrapper_prefixes",
]
