"""Set-up shared by the v2 evaluation CLIs (k-NN, linear, logistic regression).

Owns: the common flags (`--config-file --pretrained-weights --output-dir --opts`), loading the training
config (a resolved `config.yaml` of a run, any config layered on the defaults, or the defaults alone),
building the frozen teacher backbone, the evaluation crop size, `run_main` (process group and logging
around an evaluation's work) and `eval_cli` (the command line; the compute dtype is
`simdinov2.precision.config_compute_dtype`).

The backbone is built from the checkpoint's own tensors (`simdinov2.eval.backbone`), so v1 checkpoints
evaluate here too. `--opts student.*=...` state the architecture explicitly: a contradiction with the
weights is refused naming the option; a config file that describes another model is reported in one log
line and the weights win. The config's forward-time options (position-embedding interpolation) apply.
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
from simdinov2.checkpoint import infer_vit_config
from simdinov2.cli import HelpFormatter, run_cli
from simdinov2.configs import get_cfg
from simdinov2.errors import MissingFileError, UserError
from simdinov2.eval.backbone import (
    build_eval_backbone,
    describe,
    differing_fields,
    read_checkpoint,
    refuse_contradiction,
    training_crop_size,
)
from simdinov2.logging import setup_logging
from simdinov2.models import build_model
from simdinov2.precision import config_compute_dtype

logger = logging.getLogger("simdinov2")


def get_args_parser(
    add_help: bool = True,
    parents: Sequence[argparse.ArgumentParser] | None = None,
    description: str | None = None,
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description or "Evaluation set-up",
        parents=list(parents or []),
        add_help=add_help,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--config-file",
        type=str,
        default=None,
        help="training config (e.g. the run's resolved OUTPUT_DIR/config.yaml): evaluation crop, "
        "precision, interpolation. Optional: without it the defaults apply, with the training "
        "crop a v1 checkpoint stores. The architecture always comes from the checkpoint",
    )
    parser.add_argument(
        "--pretrained-weights",
        type=str,
        required=add_help,
        help="teacher snapshot, e.g. OUTPUT_DIR/eval/training_N/teacher_checkpoint.pth",
    )
    parser.add_argument(
        "--checkpoint-key",
        type=str,
        default="teacher",
        help="entry of the checkpoint holding the backbone (teacher or student)",
    )
    parser.add_argument("--output-dir", type=str, default=".", help="where results and logs are written")
    parser.add_argument(
        "--opts", nargs="*", default=[], help="config overrides, key=value (e.g. student.arch=vit_small)"
    )
    return parser


def get_eval_args_parser(
    description: str,
    add_help: bool,
    parents: Sequence[argparse.ArgumentParser] | None,
    train_role: str = "training",
    val_role: str = "evaluation",
) -> argparse.ArgumentParser:
    """The parser of a v2 evaluation: the set-up flags above, then `parents`, then the dataset flags
    (DINOv2's dataset strings, `train_role` / `val_role` saying what each set is for) and loader workers."""
    parser = argparse.ArgumentParser(
        description=description,
        parents=[get_args_parser(add_help=False), *(parents or [])],
        add_help=add_help,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--train-dataset",
        dest="train_dataset_str",
        type=str,
        default="ImageNet:split=TRAIN",
        help=f"{train_role} dataset string, e.g. ImageFolder:root=P/train",
    )
    parser.add_argument(
        "--val-dataset",
        dest="val_dataset_str",
        type=str,
        default="ImageNet:split=VAL",
        help=f"{val_role} dataset string, e.g. ImageFolder:root=P/val",
    )
    parser.add_argument("--num-workers", type=int, default=8, help="data-loading workers per process")
    return parser


def load_eval_config(config_file: str | None, opts: Sequence[str] = ()) -> DictConfig:
    """The training config: `ssl_default_config.yaml` ⊕ `config_file` (when given) ⊕ `key=value`
    overrides, validated by the v2 config loader (a run's resolved `config.yaml` passes through unchanged)."""
    if config_file and not os.path.isfile(config_file):
        raise MissingFileError(f"--config-file {config_file} does not exist")
    return get_cfg(config_file or None, list(opts))


def eval_image_size(requested: int | None, config: DictConfig, config_file: str | None = None) -> int:
    """`--image-size` if given, else the training global crop size of the config (224 if unset); one line
    says which and why (a model trained on 28-px crops evaluated at the default 224 px is slow)."""
    if requested is not None:
        if requested <= 0:
            raise UserError(f"--image-size must be positive (got {requested})")
        return int(requested)
    size = int(OmegaConf.select(config, "crops.global_crops_size", default=224))
    source = (
        f"--config-file {config_file}" if config_file else "the default config, as no --config-file was given"
    )
    logger.info(
        "evaluating at %d px: crops.global_crops_size of %s (the run's config.yaml gives its training "
        "crop; --image-size N chooses)",
        size,
        source,
    )
    return size


# Config keys of `student` -> the architecture fields (as the checkpoint loader names them) they set.
_STUDENT_KEY_FIELDS = {
    "arch": ("embed_dim",),  # the width; the depth is the checkpoint's
    "patch_size": ("patch_size",),
    "num_register_tokens": ("num_register_tokens",),
    "layerscale": ("init_values",),
    "ffn_layer": ("ffn_layer", "mlp_ratio"),
    "qkv_bias": ("qkv_bias",),
    "proj_bias": ("proj_bias",),
    "ffn_bias": ("ffn_bias",),
}
_STUDENT_FIELDS = tuple(f for fields in _STUDENT_KEY_FIELDS.values() for f in fields)


def _spelt_for(key: str, weights: dict[str, Any]) -> str:
    """The value of `student.<key>` that matches the weights, as an override would spell it."""
    if key == "layerscale":
        return "1e-5" if weights["init_values"] else "null"
    value = weights[key] if key in weights else weights[_STUDENT_KEY_FIELDS[key][0]]
    return str(value).lower() if isinstance(value, bool) else str(value)


def _config_architecture(config: DictConfig) -> dict[str, Any]:
    """The architecture fields of the ViT `config.student` describes (built on the meta device)."""
    with torch.device("meta"):
        model, _ = build_model(config.student, only_teacher=True)
    return infer_vit_config(model.state_dict())


def _stated_student_keys(opts: Sequence[str]) -> list[str]:
    """The `student.*` architecture keys set explicitly on the command line (`--opts student.k=v`)."""
    keys = [
        opt.split("=", 1)[0].strip().removeprefix("student.") for opt in opts if opt.startswith("student.")
    ]
    return [key for key in keys if key in _STUDENT_KEY_FIELDS]


def _architecture_check(config: DictConfig, opts: Sequence[str], config_file: str | None, source: str):
    """check(weights) for `build_eval_backbone`: refuse `--opts student.*` that contradict the weights; log
    one line when the config file describes another model than the weights."""
    stated = _config_architecture(config)

    def check(weights: dict[str, Any]) -> None:
        for key in _stated_student_keys(opts):
            fields = {f: stated[f] for f in _STUDENT_KEY_FIELDS[key]}
            value = OmegaConf.select(config, f"student.{key}")
            refuse_contradiction(
                weights,
                fields,
                f"--opts student.{key}={value}",
                f"--opts student.{key}={_spelt_for(key, weights)}",
                source,
            )
        if config_file:
            differing = differing_fields(weights, {f: stated[f] for f in (*_STUDENT_FIELDS, "depth")})
            if differing:
                logger.info(
                    "--config-file %s describes %s but the checkpoint holds %s: the checkpoint's architecture is "
                    "evaluated", config_file, describe(stated, tuple(differing)), describe(weights, tuple(differing)),
                )  # fmt: skip

    return check


def build_model_for_eval(
    config: DictConfig,
    pretrained_weights: Any,
    checkpoint_key: str = "teacher",
    device: torch.device | None = None,
    opts: Sequence[str] = (),
    config_file: str | None = None,
    source: str = "",
    **vit_kwargs: Any,
) -> nn.Module:
    """The backbone of `pretrained_weights` (a path or an already read checkpoint), built from its own
    tensors and loaded strictly, frozen, in eval mode, on `device`. `opts` are the command-line config
    overrides (their `student.*` architecture keys must agree with the weights); `vit_kwargs` are
    options the weights do not record (e.g. `drop_path_rate` for fine-tuning)."""
    if "student" not in config:
        raise UserError(
            "the config has no `student` section (arch, patch_size, ...); pass the run's config.yaml"
        )
    source = source or str(pretrained_weights)
    model, _ = build_eval_backbone(
        pretrained_weights, checkpoint_key, source, check=_architecture_check(config, opts, config_file, source),
        interpolate_offset=float(OmegaConf.select(config, "student.interpolate_offset", default=0.1)),
        interpolate_antialias=bool(OmegaConf.select(config, "student.interpolate_antialias", default=False)),
        **vit_kwargs,
    )  # fmt: skip
    return model.to(device or distributed.get_device())


def setup_and_build_model(
    args: argparse.Namespace, **vit_kwargs: Any
) -> tuple[nn.Module, torch.dtype, DictConfig]:
    """(frozen model on this process's device, autocast dtype, config) from the parsed set-up flags;
    `vit_kwargs` as for `build_model_for_eval`."""
    if not args.pretrained_weights:
        raise UserError("--pretrained-weights is required (a teacher_checkpoint.pth, or a v1 checkpoint.pth)")
    if not os.path.exists(args.pretrained_weights):
        raise MissingFileError(f"--pretrained-weights {args.pretrained_weights} does not exist")
    opts = list(getattr(args, "opts", []) or [])
    config_file = getattr(args, "config_file", None)
    checkpoint = read_checkpoint(args.pretrained_weights)
    crop = training_crop_size(checkpoint)
    if not config_file and crop:  # no run config: the crop the v1 checkpoint was trained at (opts still win)
        opts = [f"crops.global_crops_size={crop}", *opts]
        logger.info(
            "no --config-file: evaluation crop %d px, the training crop stored in the checkpoint", crop
        )
    config = load_eval_config(config_file, opts)
    model = build_model_for_eval(
        config,
        checkpoint,
        getattr(args, "checkpoint_key", "teacher"),
        opts=opts,
        config_file=config_file,
        source=args.pretrained_weights,
        **vit_kwargs,
    )
    return model, config_compute_dtype(config), config


def run_main(
    worker: Callable[[argparse.Namespace], Any], args: argparse.Namespace, log_to_output_dir: bool = True
) -> Any:
    """What every evaluation `main(args)` of both trees does around its work: join the process group the
    launcher described (torchrun / SLURM / submitit's environment; none for a single process) and log to
    the console, and to `output_dir/log.txt` with `log_to_output_dir` (the v2 programs; the v1 programs
    keep DINO's `log.txt` for their own records). Called directly by the submitit launchers; the
    command-line wrapper `simdinov2.cli.run_cli` ends the process group."""
    distributed.init_distributed("auto")
    setup_logging(getattr(args, "output_dir", None) if log_to_output_dir else None, log_name="log.txt")
    return worker(args)


def eval_cli(
    parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], Any], argv: Sequence[str] | None
) -> Any:
    """The command line of a v2 evaluation: parse `argv`, run `main(args)` through the one command-line
    wrapper (`simdinov2.cli.run_cli`: a user error is one line `PROG: error: ...` and exit status 1)."""
    return run_cli(parser.prog, main, parser.parse_args(argv))
