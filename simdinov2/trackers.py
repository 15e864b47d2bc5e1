"""Experiment trackers of both trees: Weights & Biases and SwanLab, on the main process only.

Owns `ExperimentTrackers` (start, `log(metrics, step)`, `finish()`), the check that the tracker packages
are installed, and wandb's mode: without an API key (no WANDB_API_KEY, no api.wandb.ai entry in
~/.netrc) wandb logs offline, said in one log line, instead of failing or prompting; WANDB_MODE, when
set, is honoured. A tracker that fails to start is a `UserError` naming the fix. Callers create the
trackers inside `simdinov2.errors.agree_on_errors` so that a failure on rank 0 stops every rank.
"""

from __future__ import annotations

import importlib.util
import logging
import netrc
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from simdinov2 import distributed
from simdinov2.errors import UserError

logger = logging.getLogger("simdinov2")

PACKAGES = {"wandb": "wandb", "swanlab": "swanlab"}


def check_packages(wandb: bool, swanlab: bool, flags: dict[str, str] | None = None) -> None:
    """One line naming the pip package when a requested tracker is not installed (on every rank)."""
    flags = flags or {"wandb": "--track_wandb", "swanlab": "--track_swan"}
    for name, wanted in (("wandb", wandb), ("swanlab", swanlab)):
        if wanted and importlib.util.find_spec(PACKAGES[name]) is None:
            raise UserError(f"{flags[name]} needs the {PACKAGES[name]} package: pip install {PACKAGES[name]}")


def wandb_has_credentials() -> bool:
    """Whether wandb could log online: an API key in the environment or in ~/.netrc (wandb login)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode() -> str | None:
    """The mode to start wandb in: WANDB_MODE when set, offline without credentials, else wandb's own."""
    if os.environ.get("WANDB_MODE"):
        return None  # wandb reads it itself
    if not wandb_has_credentials():
        return "offline"
    return None


class ExperimentTrackers:
    """Optional wandb / swanlab logging on the main process; every other rank holds no tracker.

    One wandb run per output folder: its id is kept in `wandb_run_id.txt`, so a resumed (e.g. requeued)
    job appends to the same run."""

    def __init__(
        self,
        output_dir: str | Path,
        config: dict[str, Any],
        project: str,
        wandb: bool = False,
        swanlab: bool = False,
        flags: dict[str, str] | None = None,
    ) -> None:
        self.wandb: Any = None
        self.swanlab: Any = None
        check_packages(wandb, swanlab, flags)
        if not distributed.is_main_process():
            return
        self.output_dir = Path(output_dir)
        self.flags = flags or {"wandb": "--track_wandb", "swanlab": "--track_swan"}
        if wandb:
            self.wandb = self._start_wandb(config, project)
        if swanlab:
            self.swanlab = self._start_swanlab(config, project)

    def _start_wandb(self, config: dict[str, Any], project: str) -> Any:
        import wandb  # optional dependency: imported only when asked for

        id_file = self.output_dir / "wandb_run_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        mode = wandb_mode()
        if mode == "offline":
            logger.info(
                "wandb: no API key configured (WANDB_API_KEY or `wandb login`): logging offline to %s/wandb; "
                "upload later with `wandb sync`",
                self.output_dir,
            )
        try:
            return wandb.init(
                project=project,
                name=self.output_dir.resolve().name,
                id=run_id,
                resume="allow",
                dir=str(self.output_dir),
                config=config,
                mode=mode,
            )
        except Exception as e:  # wandb raises its own error types (login, network, ...)
            detail = " ".join(str(e).split())[:200]
            raise UserError(
                f"{self.flags['wandb']}: wandb.init failed ({detail}); run `wandb login`, or set WANDB_MODE=offline"
            ) from e

    def _start_swanlab(self, config: dict[str, Any], project: str) -> Any:
        import swanlab  # optional dependency: imported only when asked for

        try:
            swanlab.init(
                project=project,
                experiment_name=self.output_dir.resolve().name,
                config=config,
                logdir=str(self.output_dir / "swanlog"),
            )
        except Exception as e:  # swanlab raises its own error types
            raise UserError(
                f"{self.flags['swanlab']}: swanlab.init failed ({e}); log in, or use offline mode"
            ) from e
        return swanlab  # the module logs to its current run

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if self.swanlab is not None:
            self.swanlab.log(metrics, step=step)

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
        if self.swanlab is not None:
            self.swanlab.finish()
            self.swanlab = None
