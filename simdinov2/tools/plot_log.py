"""Draw loss curves of any run: `python -m simdinov2.tools.plot_log RUN_DIR [--out loss_curve.png]`.

Reads, in this order of preference, the per-iteration `training_metrics.json` (v2 trainer, and the v1 trainer's
per-iteration log) or the per-epoch `log.txt` of the v1 trainer (one JSON object per line). Every numeric key
whose name contains "loss" is drawn against iterations (or epochs); learning rate and weight decay go to a
last panel when present.

Direction matters: the SimDINO objective is loss = -(coeff*comp + expa), minimised, while its parts are
maximised (`comp_loss`: student-teacher cosine similarity; `expa_loss`: coding rate of the features). The
maximised parts get their own panel and every legend entry says which way is good.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from simdinov2.help_format import HelpFormatter

LOG_FILES = ("training_metrics.json", "log.txt")
# Parts of the SimDINO objective that training maximises, by name suffix (v1 `comp_loss`, v2 `dino_comp_loss`,
# `train_` prefixes of log.txt), with what they measure.
MAXIMISED_PARTS = {
    "comp_loss": "student-teacher cosine similarity",
    "expa_loss": "coding rate of the features",
}


def maximised_part(name: str) -> str | None:
    """What a maximised loss part measures, or None for a minimised loss."""
    return next((meaning for suffix, meaning in MAXIMISED_PARTS.items() if name.endswith(suffix)), None)


def metric_label(name: str) -> str:
    """Legend entry saying which way is good."""
    meaning = maximised_part(name)
    if meaning:
        return f"{name}: {meaning} (maximised, higher is better)"
    if name in ("loss", "train_loss", "total_loss", "dino_loss"):
        return f"{name} (minimised, lower is better; SimDINO: -(coeff*comp + expa))"
    return f"{name} (minimised, lower is better)"


def read_json_lines(path: Path) -> list[dict]:
    """Parse a JSON-lines file, skipping blank lines; a malformed line raises ValueError naming it."""
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno} is not a JSON line ({e.msg})") from None
    return records


def find_log(run_dir: Path) -> Path:
    if run_dir.is_file():
        return run_dir
    for name in LOG_FILES:
        if (run_dir / name).is_file():
            return run_dir / name
    raise FileNotFoundError(f"no {' or '.join(LOG_FILES)} in {run_dir}: pass a training output directory")


def series(records: list[dict]) -> tuple[str, list[float], dict[str, list[float]], dict[str, list[float]]]:
    """x axis name and values, loss series and schedule (lr/wd) series."""
    x_key = "iteration" if any("iteration" in r for r in records) else "epoch"
    xs = [float(r.get(x_key, i)) for i, r in enumerate(records)]
    losses: dict[str, list[float]] = {}
    scheds: dict[str, list[float]] = {}
    keys = [k for k in records[0] if isinstance(records[0][k], (int, float))] if records else []
    for k in keys:
        if k == x_key:
            continue
        values = [float(r.get(k, float("nan"))) for r in records]
        if "loss" in k and not is_weight(k):
            losses[k] = values
        elif k.endswith("lr") or k.endswith("wd") or k in ("lr", "wd"):
            scheds[k] = values
    return x_key, xs, losses, scheds


def is_weight(name: str) -> bool:
    """A loss weight (v2 `ibot_loss_weight`): a schedule, neither minimised nor maximised."""
    return name.endswith("_weight")


def weight_series(records: list[dict], x_key: str) -> dict[str, list[float]]:
    """The loss-weight series of the records (drawn on their own panel)."""
    names = [k for k in (records[0] if records else {}) if is_weight(k) and isinstance(records[0][k], (int, float))]
    return {k: [float(r.get(k, float("nan"))) for r in records] for k in names if k != x_key}


def plot_run(run_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Write a PNG of the run's loss curves and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = find_log(Path(run_dir))
    records = read_json_lines(log)
    if not records:
        raise ValueError(f"{log} is empty: the run has not logged anything yet")
    x_key, xs, losses, scheds = series(records)
    minimised = {k: v for k, v in losses.items() if not maximised_part(k)}
    maximised = {k: v for k, v in losses.items() if maximised_part(k)}
    panels = [(title or f"{Path(run_dir).name}: losses (lower is better)", "loss", minimised, False)]
    if maximised:
        panels.append(("parts of the SimDINO loss (higher is better)", "value", maximised, False))
    weights = weight_series(records, x_key)
    if weights:
        panels.append(("loss weights", "weight", weights, False))
    if scheds:
        panels.append(("schedules", None, scheds, True))
    panels = [p for p in panels if p[2]] or panels[:1]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (panel_title, ylabel, curves, log_scale) in zip(axes[0], panels):
        for k, v in curves.items():
            ax.plot(xs, v, label=k if log_scale or is_weight(k) else metric_label(k))
        ax.set_xlabel(x_key)
        if ylabel:
            ax.set_ylabel(ylabel)
        if log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(panel_title, fontsize=10)
    fig.tight_layout()
    out_path = Path(out) if out else (log.parent / "loss_curve.png")
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("run_dir", help="training output directory (or a log file)")
    parser.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/loss_curve.png)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        path = plot_run(args.run_dir, args.out, args.title)
    except (FileNotFoundError, ValueError) as e:
        print(f"plot_log: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
