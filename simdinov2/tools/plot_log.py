"""Draw loss curves of any run: `python -m simdinov2.tools.plot_log RUN_DIR [--out loss_curve.png]`.

Reads, in this order of preference, the per-iteration `training_metrics.json` (v2 trainer, and the v1 trainer's
per-iteration log) or the per-epoch `log.txt` of the v1 trainer (one JSON object per line). Every numeric key
whose name contains "loss" is drawn against iterations (or epochs); learning rate and weight decay go to a
second panel when present.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LOG_FILES = ("training_metrics.json", "log.txt")


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
        if "loss" in k:
            losses[k] = values
        elif k.endswith("lr") or k.endswith("wd") or k in ("lr", "wd"):
            scheds[k] = values
    return x_key, xs, losses, scheds


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
    n_panels = 2 if scheds else 1
    fig, axes = plt.subplots(1, n_panels, figsize=(6 * n_panels, 4), squeeze=False)
    ax = axes[0][0]
    for k, v in losses.items():
        ax.plot(xs, v, label=k)
    ax.set_xlabel(x_key)
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"{Path(run_dir).name}: losses")
    if scheds:
        ax2 = axes[0][1]
        for k, v in scheds.items():
            ax2.plot(xs, v, label=k)
        ax2.set_xlabel(x_key)
        ax2.set_yscale("log")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
        ax2.set_title("schedules")
    fig.tight_layout()
    out_path = Path(out) if out else (log.parent / "loss_curve.png")
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
