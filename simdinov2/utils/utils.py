"""Seeds, argparse booleans and the git commit of the code, shared by both trees (atomic writes:
`simdinov2.io.atomic`)."""

from __future__ import annotations

import argparse
import os
import random
import subprocess

import numpy as np
import torch


def fix_random_seeds(seed: int = 0) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def bool_flag(s: str | bool) -> bool:
    """argparse type for DINO-style `--flag True/False` booleans."""
    if isinstance(s, bool):
        return s
    value = s.strip().lower()
    if value in {"1", "true", "yes", "on", "t", "y"}:
        return True
    if value in {"0", "false", "no", "off", "f", "n"}:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {s!r}: use true or false")


def get_sha() -> str:
    """Git commit of the code (for logs); 'unknown' outside a checkout."""
    cwd = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=cwd, stderr=subprocess.DEVNULL)
        return sha.decode().strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
