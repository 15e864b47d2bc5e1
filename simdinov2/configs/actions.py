"""`train.actions`: configuration changes scheduled by epoch, in a safe form.

Upstream SimDINOv2 runs `exec` on the strings of `train.actions` (a list of `[epoch, python code]`), which lets
a config file run arbitrary code. Here an action is `[epoch, "key=value"]` (or a list of such strings): when
that epoch starts, the value is set on the configuration exactly like a command-line override (same key
check, same parsing). Anything that is not `key=value` on a known key is refused when the configuration is
loaded, with one line — nothing is ever executed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from simdinov2.errors import UserError

__all__ = ["Action", "apply_actions", "parse_actions"]

# A dotted config key: letters, digits and underscores, starting with a letter or underscore.
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

Action = tuple[int, str, str]  # (epoch, dotted key, value text)


def _refuse(item: Any, why: str) -> UserError:
    return UserError(
        f'train.actions entry {item!r} {why}: write [epoch, "key=value"], e.g. [10, "ibot.loss_weight=0.5"] '
        "(config overrides only; code is never executed)"
    )


def parse_actions(actions: Sequence[Any] | None, valid_keys: Iterable[str]) -> list[Action]:
    """`[[epoch, "key=value" | ["key=value", ...]], ...]` -> sorted (epoch, key, value) triples.

    Raises one UserError line for an entry that is not of that form, a key not in `valid_keys`, or a
    string that is not `key=value` (e.g. upstream's Python statements)."""
    valid = set(valid_keys)
    parsed: list[Action] = []
    for item in actions or []:
        if not isinstance(item, (list, tuple, ListConfig)) or len(item) != 2:
            raise _refuse(item, "is not a pair [epoch, override]")
        epoch, overrides = item[0], item[1]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise _refuse(list(item), "has no epoch (a whole number >= 0) first")
        texts = list(overrides) if isinstance(overrides, (list, tuple, ListConfig)) else [overrides]
        for text in texts:
            if not isinstance(text, str) or "=" not in text:
                raise _refuse(list(item), "is not a key=value override")
            key, value = (part.strip() for part in text.split("=", 1))
            if not _KEY.match(key):
                raise _refuse(list(item), f"has {key!r} where a dotted config key belongs")
            if key not in valid:
                raise _refuse(list(item), f"names {key!r}, which is not a config key")
            parsed.append((int(epoch), key, value))
    return sorted(parsed, key=lambda action: action[0])


def apply_actions(cfg: DictConfig, actions: Sequence[Action], epoch: int) -> dict[str, Any]:
    """Set the overrides scheduled for `epoch` on `cfg` (in place); returns {key: new value}."""
    changed: dict[str, Any] = {}
    for action_epoch, key, value in actions:
        if action_epoch != int(epoch):
            continue
        parsed = OmegaConf.from_dotlist([f"{key}={value}"])
        new_value = OmegaConf.select(parsed, key)
        OmegaConf.update(cfg, key, new_value, merge=False)
        changed[key] = OmegaConf.select(cfg, key)
    return changed
