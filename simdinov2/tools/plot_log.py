"""Draw loss curves of any run: `python -m simdinov2.tools.plot_log RUN_DIR [--out loss_curve.png]`, or over a
reference run's: `... RUN_DIR --reference assets/simdino_v1_vitb16_log.txt [--x fraction|epoch]`.

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
# Health of the representation: the teacher's effective rank (every progress line) and the k-NN monitor.
HEALTH_KEYS = ("effective_rank", "effective_rank_head", "knn_monitor_top1")
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


def health_series(records: list[dict], x_key: str) -> dict[str, tuple[list[float], list[float]]]:
    """{name: (x values, values)} of the health metrics (effective rank, k-NN monitor) a log holds: each on
    the rows that have it (the monitor writes rows of its own)."""
    found: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key.endswith(HEALTH_KEYS) and isinstance(value, (int, float)) and x_key in record:
                xs, values = found.setdefault(key, ([], []))
                xs.append(float(record[x_key]))
                values.append(float(value))
    return found


def series(records: list[dict]) -> tuple[str, list[float], dict[str, list[float]], dict[str, list[float]]]:
    """x axis name and values, loss series and schedule (lr/wd) series (the k-NN monitor's rows left out)."""
    x_key = "iteration" if any("iteration" in r for r in records) else "epoch"
    records = [r for r in records if not any(k.startswith("knn_monitor") for k in r)]
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
    names = [
        k for k in (records[0] if records else {}) if is_weight(k) and isinstance(records[0][k], (int, float))
    ]
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
    health = health_series(records, x_key)
    fig, axes = plt.subplots(
        1, len(panels) + bool(health), figsize=(6 * (len(panels) + bool(health)), 4), squeeze=False
    )
    if health:
        _draw_health(axes[0][-1], health, x_key)
    # strict=False: the health panel, when drawn, is one more axis (the last) than there are panels
    for ax, (panel_title, ylabel, curves, log_scale) in zip(axes[0], panels, strict=False):
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


# Quantities compared with a reference log, and the log keys that hold them in either tree.
REFERENCE_QUANTITIES = {
    "loss": ("loss", "train_loss", "total_loss"),
    "expa_loss": ("expa_loss",),
    "comp_loss": ("comp_loss",),
    "lr": ("lr", "train_lr"),
    "wd": ("wd", "train_wd"),
}


def _quantity_keys(record: dict, quantity: str) -> list[str]:
    names = REFERENCE_QUANTITIES[quantity]
    suffix_match = quantity.endswith("_loss")  # v2 names its parts dino_..._expa_loss
    return [k for k in record if k in names or (suffix_match and k.endswith(quantity))]


def _x_values(records: list[dict], x_axis: str, source: Path) -> list[float]:
    """Epochs as logged, or the fraction of the logged run (1 at its last row)."""
    key = "iteration" if "iteration" in records[0] else "epoch"
    if x_axis == "epoch":
        if key != "epoch":
            raise ValueError(
                f"{source} counts iterations, not epochs: use --x fraction (or the run's log.txt)"
            )
        return [float(r["epoch"]) for r in records]
    last = float(records[-1][key]) + 1
    return [(float(r[key]) + 1) / last for r in records]


def plot_against_reference(run_dir: str | Path, reference: str | Path, x_axis: str = "fraction",
                           out: str | Path | None = None) -> Path:  # fmt: skip
    """Draw the run's loss parts, lr and wd over a reference log's (e.g. `assets/simdino_v1_vitb16_log.txt`),
    against epochs or the fraction of each run; returns the PNG (default RUN/curves_vs_reference.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_path = Path(run_dir)
    log = (
        run_path / "log.txt" if x_axis == "epoch" and (run_path / "log.txt").is_file() else find_log(run_path)
    )
    runs = {}
    for name, path in (("this run", log), (f"reference ({Path(reference).name})", Path(reference))):
        records = [r for r in read_json_lines(path) if not any(k.startswith("knn_monitor") for k in r)]
        if not records:
            raise ValueError(f"{path} is empty")
        runs[name] = (records, _x_values(records, x_axis, path))
    fig, axes = plt.subplots(1, len(REFERENCE_QUANTITIES), figsize=(4.5 * len(REFERENCE_QUANTITIES), 3.8))
    for ax, quantity in zip(axes, REFERENCE_QUANTITIES, strict=True):
        for name, (records, xs) in runs.items():
            for key in _quantity_keys(records[0], quantity):
                ax.plot(xs, [float(r.get(key, float("nan"))) for r in records], label=f"{name}: {key}",
                        linestyle="--" if name.startswith("reference") else "-")  # fmt: skip
        meaning = maximised_part(quantity)
        ax.set_title(f"{quantity} ({'maximised' if meaning else 'schedule' if quantity in ('lr', 'wd') else 'minimised'})",
                     fontsize=10)  # fmt: skip
        if quantity in ("lr", "wd"):
            ax.set_yscale("log")
        ax.set_xlabel("epoch" if x_axis == "epoch" else "fraction of the run")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    out_path = Path(out) if out else (log.parent / "curves_vs_reference.png")
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def _draw_health(ax, health: dict[str, tuple[list[float], list[float]]], x_key: str) -> None:
    """Effective rank on the left axis, the k-NN monitor's top-1 (%) on a right one."""
    knn = {k: v for k, v in health.items() if "knn_monitor" in k}
    for k, (xs, values) in health.items():
        if k not in knn:
            ax.plot(xs, values, label=f"{k} (collapse: near 1)")
    ax.set_xlabel(x_key)
    ax.set_ylabel("effective rank")
    ax.set_title("health of the representation (higher is better)", fontsize=10)
    ax.grid(alpha=0.3)
    if knn:
        right = ax.twinx()
        for k, (xs, values) in knn.items():
            right.plot(xs, values, "o-", color="tab:red", label=f"{k} (%)")
        right.set_ylabel("k-NN top-1 (%)")
        right.legend(fontsize=7, loc="lower right")
    if len(health) > len(knn):
        ax.legend(fontsize=7, loc="upper left")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("run_dir", help="training output directory (or a log file)")
    parser.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/loss_curve.png)")
    parser.add_argument("--title", default=None)
    parser.add_argument(
        "--reference",
        default=None,
        help="""a reference log (JSON lines, e.g.
        assets/simdino_v1_vitb16_log.txt, upstream's released ViT-B/16 v1 run): draw the run's loss parts, lr and
        wd over it into RUN_DIR/curves_vs_reference.png""",
    )
    parser.add_argument(
        "--x",
        default="fraction",
        choices=["fraction", "epoch"],
        help="x axis with --reference: fraction of each run (default) or epochs as logged",
    )
    args = parser.parse_args(argv)
    try:
        if args.reference:
            path = plot_against_reference(args.run_dir, args.reference, args.x, args.out)
        else:
            path = plot_run(args.run_dir, args.out, args.title)
    except (FileNotFoundError, ValueError) as e:
        print(f"plot_log: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
