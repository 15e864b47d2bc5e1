"""The v2 configuration: YAML files in this folder and the one way to load, merge and validate them.

A run's configuration is `ssl_default_config.yaml` ⊕ `--config-file` ⊕ `key=value` overrides
(later wins). The default file lists every valid key: a key that is not in it (a typo, an upstream key
we do not use) is rejected with one line naming it and the closest valid keys, and the merged result is
in OmegaConf struct mode so code reading a missing key fails too. A config file may start from another
one with `_base_: relative/path.yaml` (the `train/*.yaml` recipes do).

Also here: the learning-rate scaling rule (`optim.lr` from `optim.base_lr` and the global batch) and
writing the resolved configuration to `<output-dir>/config.yaml`.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from simdinov2.errors import MissingFileError, UserError

from .actions import Action, apply_actions, parse_actions
from .validate import check_v2_config

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG_PATH = CONFIG_DIR / "ssl_default_config.yaml"
BASE_KEY = "_base_"
SCALING_RULES = ("sqrt_wrt_1024", "linear_wrt_1024")
# Sections whose keys are free-form: the keyword arguments of the optimizer chosen by `optim.opt`.
FREE_FORM_SECTIONS = ("optim.kwargs",)

logger = logging.getLogger("simdinov2")

__all__ = [
    "CONFIG_DIR",
    "DEFAULT_CONFIG_PATH",
    "SCALING_RULES",
    "apply_actions",
    "apply_scaling_rules_to_cfg",
    "default_config",
    "get_cfg",
    "load_config_file",
    "merge_with_defaults",
    "parse_overrides",
    "resolve_config_path",
    "scheduled_actions",
    "write_config",
]


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """A config file by path, or by name inside this folder (`simdino_config`, `train/vitl16.yaml`)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / path, CONFIG_DIR / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    raise MissingFileError(
        f"config file {str(name_or_path)!r} not found (give a path, or a name in {CONFIG_DIR} such as simdino_config)"
    )


def load_config_file(name_or_path: str | os.PathLike) -> DictConfig:
    """Read one YAML config, following its `_base_` chain; the result has no `_base_` key."""
    chain: list[Path] = []
    path = resolve_config_path(name_or_path)
    layers: list[DictConfig] = []
    while True:
        path = path.resolve()
        if path in chain:
            cycle = " -> ".join(str(p) for p in [*chain, path])
            raise UserError(f"config files include each other in a cycle: {cycle}")
        chain.append(path)
        try:
            cfg = OmegaConf.load(path)
        except (OSError, OmegaConfBaseException, ValueError) as exc:
            raise UserError(f"cannot read config file {path}: {str(exc).splitlines()[0]}") from exc
        except Exception as exc:  # yaml.YAMLError and friends
            raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
        if cfg is None:
            cfg = OmegaConf.create({})
        if not isinstance(cfg, DictConfig):
            raise UserError(f"config file {path} must hold a mapping of keys, not a {type(cfg).__name__}")
        layers.append(cfg)
        base = cfg.pop(BASE_KEY, None) if BASE_KEY in cfg else None
        if not base:
            break
        base_path = (path.parent / str(base)).resolve()
        if not base_path.is_file():
            raise MissingFileError(
                f"config file {path} names {BASE_KEY}: {base}, but {base_path} does not exist"
            )
        path = base_path
    return OmegaConf.merge(*reversed(layers)) if len(layers) > 1 else layers[0]  # type: ignore[return-value]


def default_config() -> DictConfig:
    """A fresh copy of `ssl_default_config.yaml` (every valid key with its default)."""
    return load_config_file(DEFAULT_CONFIG_PATH)


def parse_overrides(overrides: Iterable[str] | None) -> DictConfig:
    """`["optim.epochs=2", "student.arch=vit_tiny"]` -> a config; each item must be `key=value`."""
    items = [str(o) for o in (overrides or []) if str(o).strip()]
    for item in items:
        key = item.split("=", 1)[0]
        if "=" not in item or not key.strip():
            raise UserError(f"config override {item!r} is not of the form key=value (e.g. optim.epochs=10)")
        if key.startswith("-"):
            raise UserError(f"unrecognised option {item!r}: config overrides are key=value without dashes")
    try:
        return OmegaConf.from_dotlist(items)
    except OmegaConfBaseException as exc:
        raise UserError(f"cannot parse config overrides {items}: {str(exc).splitlines()[0]}") from exc


def _flat_keys(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys -> values; mappings are descended into, lists are leaves."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, (Mapping, DictConfig)) and len(value) > 0:
            out.update(_flat_keys(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _section_keys(cfg: Any, prefix: str = "") -> set[str]:
    sections = set()
    for key, value in cfg.items():
        if isinstance(value, (Mapping, DictConfig)):
            sections.add(f"{prefix}{key}")
            sections |= _section_keys(value, f"{prefix}{key}.")
    return sections


def _closest_keys(key: str, valid: Sequence[str], n: int = 3) -> list[str]:
    """Valid keys close to `key` as a whole, then keys whose last part is close to `key`'s last part."""
    found = difflib.get_close_matches(key, valid, n=n, cutoff=0.6)
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = {k.rsplit(".", 1)[-1]: [] for k in valid}
    for k in valid:
        by_leaf[k.rsplit(".", 1)[-1]].append(k)
    for close_leaf in difflib.get_close_matches(leaf, list(by_leaf), n=n, cutoff=0.75):
        for k in by_leaf[close_leaf]:
            if k not in found:
                found.append(k)
    return found[:n]


def check_keys(candidate: DictConfig, reference: DictConfig, source: str) -> None:
    """Raise one clear ValueError for the first key of `candidate` that `reference` does not define."""
    valid_leaves = _flat_keys(reference)
    sections = _section_keys(reference)
    valid = sorted(set(valid_leaves) | sections)
    for key, value in _flat_keys(candidate).items():
        if key in valid_leaves or any(key.startswith(f"{section}.") for section in FREE_FORM_SECTIONS):
            continue
        if key in sections:
            if isinstance(value, (Mapping, DictConfig)):  # an empty mapping for a section: harmless
                continue
            raise UserError(
                f"config key {key!r} ({source}) is a section, not a value: set its keys, e.g. {key}.<name>=..."
            )
        parent = key.rsplit(".", 1)[0]
        while parent and parent != key:
            if parent in valid_leaves:
                raise UserError(
                    f"config key {parent!r} ({source}) is a value, not a section: it has no key {key[len(parent) + 1 :]!r}"
                )
            if "." not in parent:
                break
            parent = parent.rsplit(".", 1)[0]
        close = _closest_keys(key, valid)
        hint = (
            f"; closest valid keys: {', '.join(close)}"
            if close
            else "; see simdinov2/configs/ssl_default_config.yaml"
        )
        raise UserError(f"unknown config key {key!r} ({source}){hint}")


def merge_with_defaults(
    *configs: DictConfig, overrides: Iterable[str] | None = None, sources: Sequence[str] | None = None
) -> DictConfig:
    """default ⊕ configs... ⊕ overrides, every key checked against the defaults; struct mode result."""
    default = default_config()
    layers: list[DictConfig] = []
    names = list(sources or [])
    for idx, cfg in enumerate(configs):
        source = names[idx] if idx < len(names) else f"config #{idx + 1}"
        check_keys(cfg, default, f"in {source}")
        layers.append(cfg)
    if overrides:
        override_cfg = parse_overrides(overrides)
        check_keys(override_cfg, default, "in the command-line overrides")
        layers.append(override_cfg)
    try:
        merged = OmegaConf.merge(default, *layers)
    except OmegaConfBaseException as exc:
        raise UserError(f"cannot merge the configuration: {str(exc).splitlines()[0]}") from exc
    OmegaConf.set_struct(merged, True)
    return merged  # type: ignore[return-value]


def get_cfg(
    config_file: str | os.PathLike | None = None, overrides: Iterable[str] | None = None
) -> DictConfig:
    """The run configuration: defaults ⊕ `config_file` (if any) ⊕ `key=value` overrides, validated."""
    configs, sources = [], []
    if config_file:
        configs.append(load_config_file(config_file))
        sources.append(str(config_file))
    cfg = merge_with_defaults(*configs, overrides=overrides, sources=sources)
    _check_types(cfg, default_config())
    _check_values(cfg)
    return cfg


def _check_types(cfg: DictConfig, reference: DictConfig) -> None:
    """A key whose default is a boolean must hold one, a key whose default is a number a number
    (`optim.epochs=abc` is one line naming the key, not a `ValueError` from deep inside training).
    Integer defaults accept any number: some are sentinels of float keys (`-1`: "same as the start")."""
    values = _flat_keys(cfg)
    for key, default in _flat_keys(reference).items():
        value = values.get(key)
        if type(default) not in (bool, int, float) or value is None:
            continue
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise UserError(
                    f"{key}={value!r} must be true or false (its default is {str(default).lower()})"
                )
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key}={value!r} must be a number (its default is {default!r})")


def _check_values(cfg: DictConfig) -> None:
    """Value checks that can be done without a dataset or a device (one clear line each)."""
    check_v2_config(cfg)  # the ranges of the values both trees share
    if cfg.optim.scaling_rule not in SCALING_RULES:
        raise UserError(
            f"optim.scaling_rule={cfg.optim.scaling_rule!r} is not one of {', '.join(SCALING_RULES)}"
        )
    if cfg.train.centering not in ("centering", "sinkhorn_knopp", "none"):
        raise UserError(
            f"train.centering={cfg.train.centering!r} is not one of centering, sinkhorn_knopp, none"
        )
    if cfg.train.sharding not in ("auto", "fsdp", "ddp", "none"):
        raise UserError(f"train.sharding={cfg.train.sharding!r} is not one of auto, fsdp, ddp, none")
    if int(cfg.train.batch_size_per_gpu) < 1:
        raise UserError(f"train.batch_size_per_gpu must be >= 1 (got {cfg.train.batch_size_per_gpu})")
    if int(cfg.optim.epochs) < 1:
        raise UserError(f"optim.epochs must be >= 1 (got {cfg.optim.epochs})")
    for key in ("global_crops_scale", "local_crops_scale"):
        value = cfg.crops[key]
        if not isinstance(value, (ListConfig, list)) or len(value) != 2:
            raise UserError(f"crops.{key} must be a pair [min, max] (got {value})")
    ratio = cfg.ibot.mask_ratio_min_max
    if not isinstance(ratio, (ListConfig, list)) or len(ratio) != 2:
        raise UserError(f"ibot.mask_ratio_min_max must be a pair [min, max] (got {ratio})")
    # Upstream names one implementation of each coding-rate term; other names are not silently ignored.
    for key, only in (("expa_loss", "mcr"), ("comp_loss", "cosine")):
        if str(cfg.dino.mcr[key]) != only:
            raise UserError(
                f"dino.mcr.{key}={cfg.dino.mcr[key]!r} is not implemented; the only choice is {only}"
            )
    if bool(cfg.student.drop_masks) and max(float(cfg.ibot.loss_weight), float(cfg.ibot.loss_weight_end)) > 0:
        raise UserError(
            "student.drop_masks=true removes the masked patches the iBOT / patch loss needs: set ibot.loss_weight=0"
        )
    scheduled_actions(cfg)
    _check_crops_fit_patches(cfg)


def scheduled_actions(cfg: DictConfig) -> list[Action]:
    """`train.actions` checked against the run's keys: sorted (epoch, key, value) triples."""
    return parse_actions(cfg.train.actions, [k for k in _flat_keys(cfg) if k != "train.actions"])


def _check_crops_fit_patches(cfg: DictConfig) -> None:
    """A crop smaller than one patch is refused; a global crop that is not a whole number of patches is
    trained on with its border pixels dropped, with a warning (as v1 does)."""
    patch = int(cfg.student.patch_size)
    crops = ["global_crops_size"] + (["local_crops_size"] if int(cfg.crops.local_crops_number) > 0 else [])
    for key in crops:
        if int(cfg.crops[key]) < patch:
            raise UserError(
                f"crops.{key}={cfg.crops[key]} is smaller than one patch (student.patch_size={patch}): "
                f"raise crops.{key} or lower student.patch_size"
            )
    if int(cfg.crops.global_crops_size) % patch:
        logger.warning(
            "crops.global_crops_size=%d is not a multiple of student.patch_size=%d: border pixels are "
            "dropped",
            int(cfg.crops.global_crops_size),
            patch,
        )


def apply_scaling_rules_to_cfg(cfg: DictConfig, world_size: int) -> DictConfig:
    """Set `optim.lr` from `optim.base_lr` (given for a global batch of 1024) and the global batch."""
    global_batch = int(cfg.train.batch_size_per_gpu) * int(world_size)
    rule = cfg.optim.scaling_rule
    if rule == "sqrt_wrt_1024":
        factor = math.sqrt(global_batch / 1024.0)
    elif rule == "linear_wrt_1024":
        factor = global_batch / 1024.0
    else:
        raise UserError(f"optim.scaling_rule={rule!r} is not one of {', '.join(SCALING_RULES)}")
    cfg.optim.lr = float(cfg.optim.base_lr) * factor
    return cfg


def write_config(cfg: DictConfig, output_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved configuration (atomically) to `output_dir/name`; returns the path."""
    from simdinov2.checkpoint import atomic_write_text

    path = Path(output_dir) / name
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
    return path
