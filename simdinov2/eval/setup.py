"""Set-up shared by the v2 evaluation CLIs (k-NN, linear, logistic regression).

Owns: the common flags (`--config-file --pretrained-weights --output-dir --opts`), loading the training
config (a resolved `config.yaml` of a run, or any config layered on the defaults), building the frozen
teacher backbone from it with the pretrained weights (through the shared checkpoint loader), the
autocast dtype the config asks for, the evaluation crop size, and `run_cli` (process group, logging,
user errors turned into one line and a non-zero exit).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from simdinov2 import distributed

logger = logging.getLogger("simdinov2")

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def get_args_parser(
    add_help: bool = True, parents: Sequence[argparse.ArgumentParser] | None = None, description: str | None = None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description or "Evaluation set-up", parents=list(parents or []), add_help=add_help
    )
    parser.add_argument("--config-file", type=str, required=add_help,
                        help="training config (e.g. the run's resolved OUTPUT_DIR/config.yaml)")
    parser.add_argument("--pretrained-weights", type=str, required=add_help,
                        help="teacher snapshot, e.g. OUTPUT_DIR/eval/training_N/teacher_checkpoint.pth")
    parser.add_argument("--checkpoint-key", type=str, default="teacher",
                        help="entry of the checkpoint holding the backbone (teacher or student)")
    parser.add_argument("--output-dir", type=str, default=".", help="where results and logs are written")
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides, key=value (e.g. student.arch=vit_small)")
    return parser


def load_eval_config(config_file: str, opts: Sequence[str] = ()) -> DictConfig:
    """The training config: `ssl_default_config.yaml` ⊕ `config_file` ⊕ `key=value` overrides, validated
    by the v2 config loader (a run's resolved `config.yaml` passes through unchanged)."""
    from simdinov2.configs import get_cfg

    if not config_file:
        raise ValueError("--config-file is required (e.g. OUTPUT_DIR/config.yaml of the training run)")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file {config_file} does not exist")
    return get_cfg(config_file, list(opts))


def get_autocast_dtype(config: DictConfig) -> torch.dtype:
    """Teacher-backbone compute dtype of the config (fp32 when the config does not say)."""
    name = OmegaConf.select(config, "compute_precision.teacher.backbone.mixed_precision.param_dtype", default="fp32")
    return _DTYPES.get(str(name), torch.float32)


def eval_image_size(requested: int | None, config: DictConfig) -> int:
    """`--image-size` if given, else the training global crop size of the config (224 if unset)."""
    if requested is not None:
        if requested <= 0:
            raise ValueError(f"--image-size must be positive (got {requested})")
        return int(requested)
    return int(OmegaConf.select(config, "crops.global_crops_size", default=224))


def build_model_for_eval(
    config: DictConfig, pretrained_weights: str, checkpoint_key: str = "teacher", device: torch.device | None = None
) -> nn.Module:
    """Teacher backbone of `config.student` with `pretrained_weights` loaded (strict on the backbone),
    frozen, in eval mode, on `device`."""
    from simdinov2.checkpoint import load_backbone_weights
    from simdinov2.models import build_model

    if "student" not in config:
        raise ValueError("the config has no `student` section (arch, patch_size, ...); pass the run's config.yaml")
    img_size = int(OmegaConf.select(config, "crops.global_crops_size", default=224))
    model, _ = build_model(config.student, only_teacher=True, img_size=img_size)
    report = load_backbone_weights(model, pretrained_weights, checkpoint_key=checkpoint_key, verbose=False)
    logger.info("pretrained weights %s: %s", pretrained_weights, report.summary())
    model.requires_grad_(False)
    model.eval()
    return model.to(device or distributed.get_device())


def setup_and_build_model(args: argparse.Namespace) -> tuple[nn.Module, torch.dtype, DictConfig]:
    """(frozen model on this process's device, autocast dtype, config) from the parsed set-up flags."""
    config = load_eval_config(args.config_file, getattr(args, "opts", []) or [])
    if not args.pretrained_weights:
        raise ValueError("--pretrained-weights is required (a teacher_checkpoint.pth)")
    model = build_model_for_eval(config, args.pretrained_weights, getattr(args, "checkpoint_key", "teacher"))
    return model, get_autocast_dtype(config), config


# User mistakes surface as these; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, KeyError)


def run_main(worker: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> Any:
    """What every v2 evaluation `main(args)` does around its work: join the process group the launcher
    described (torchrun / SLURM / submitit's environment; none for a single process) and log to the
    console and `output_dir/log.txt`. Called directly by the submitit launchers."""
    from simdinov2.logging import setup_logging

    distributed.init_distributed("auto")
    setup_logging(getattr(args, "output_dir", None), log_name="log.txt")
    return worker(args)


def run_cli(
    parser: argparse.ArgumentParser,
    main: Callable[[argparse.Namespace], Any],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse `argv` and run `main`; a user error ends the run with one line and exit code 1."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise SystemExit(f"error: {message}") from None
    finally:
        distributed.destroy()
    return 0
