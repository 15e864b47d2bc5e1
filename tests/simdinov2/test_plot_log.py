"""The loss-curve tool reads v1 log.txt and v2 training_metrics.json."""

import json

import pytest

from simdinov2.tools import plot_log


def _write(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_plot_v1_log(tmp_path):
    _write(
        tmp_path / "log.txt",
        [
            {
                "train_loss": -0.8 - 0.1 * e,
                "train_comp_loss": 0.4 + 0.1 * e,
                "train_expa_loss": 0.4,
                "train_lr": 1e-3,
                "train_wd": 0.04,
                "epoch": e,
            }
            for e in range(4)
        ],
    )
    x_key, xs, losses, scheds = plot_log.series(plot_log.read_json_lines(tmp_path / "log.txt"))
    assert x_key == "epoch" and xs == [0, 1, 2, 3]
    assert set(losses) == {"train_loss", "train_comp_loss", "train_expa_loss"}
    assert set(scheds) == {"train_lr", "train_wd"}
    assert plot_log.main([str(tmp_path)]) == 0
    png = tmp_path / "loss_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_v2_metrics_prefers_iterations(tmp_path):
    _write(
        tmp_path / "training_metrics.json",
        [
            {"iteration": i, "total_loss": -1.0 - i / 10, "dino_local_crops_loss": -0.5, "lr": 0.001}
            for i in range(0, 50, 10)
        ],
    )
    _write(tmp_path / "log.txt", [{"train_loss": 1.0, "epoch": 0}])
    out = tmp_path / "x.png"
    assert plot_log.plot_run(tmp_path, out) == out and out.exists()
    x_key, xs, losses, _ = plot_log.series(plot_log.read_json_lines(tmp_path / "training_metrics.json"))
    assert x_key == "iteration" and xs[-1] == 40 and "total_loss" in losses


def test_loss_weight_is_drawn_on_a_weights_panel_not_the_minimised_one(tmp_path, monkeypatch):
    records = [
        {"iteration": i, "total_loss": -1.0 - i, "ibot_loss_weight": 1.0, "lr": 0.001} for i in range(3)
    ]
    _write(tmp_path / "training_metrics.json", records)
    _, _, losses, _ = plot_log.series(records)
    assert "ibot_loss_weight" not in losses and "total_loss" in losses
    assert plot_log.weight_series(records, "iteration") == {"ibot_loss_weight": [1.0, 1.0, 1.0]}
    import matplotlib.axes

    titles = []
    real_set_title = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "set_title",
        lambda ax, t, **kw: (titles.append(t), real_set_title(ax, t, **kw))[1],
    )
    plot_log.plot_run(tmp_path)
    assert titles[1:] == ["loss weights", "schedules"]


def test_plot_errors(tmp_path, capsys):
    assert plot_log.main([str(tmp_path)]) == 2
    assert "no training_metrics.json or log.txt" in capsys.readouterr().err
    (tmp_path / "log.txt").write_text("{not json}\n")
    with pytest.raises(ValueError, match="log.txt:1"):
        plot_log.plot_run(tmp_path)


def test_legends_say_which_way_is_good(tmp_path, monkeypatch):
    """comp_loss / expa_loss are maximised parts (own panel, "higher is better"); the loss is minimised."""
    import matplotlib.pyplot as plt

    _write(tmp_path / "training_metrics.json", [
        {"iteration": i, "loss": -1.0 - i / 100, "comp_loss": 0.5 - i / 200, "expa_loss": 1.5 + i / 50,
         "lr": 1e-3, "wd": 0.04} for i in range(0, 50, 10)
    ])  # fmt: skip
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_log.plot_run(tmp_path)
    (fig,) = figures
    panels = {ax.get_title(): [t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes}
    assert panels[f"{tmp_path.name}: losses (lower is better)"] == [
        "loss (minimised, lower is better; SimDINO: -(coeff*comp + expa))"
    ]
    assert panels["parts of the SimDINO loss (higher is better)"] == [
        "comp_loss: student-teacher cosine similarity (maximised, higher is better)",
        "expa_loss: coding rate of the features (maximised, higher is better)",
    ]
    assert panels["schedules"] == ["lr", "wd"]
    assert plot_log.metric_label("dino_comp_loss").endswith("(maximised, higher is better)")
    assert plot_log.metric_label("koleo_loss") == "koleo_loss (minimised, lower is better)"


def test_released_reference_log_is_the_100_epoch_v1_run():
    from pathlib import Path

    records = plot_log.read_json_lines(
        Path(__file__).resolve().parents[2] / "assets" / "simdino_v1_vitb16_log.txt"
    )
    assert [r["epoch"] for r in records] == list(range(100))
    assert set(records[0]) == {
        "train_loss",
        "train_expa_loss",
        "train_comp_loss",
        "train_lr",
        "train_wd",
        "epoch",
    }
    # healthy SimDINO (what the README says): both parts positive and rising, the loss falling
    assert records[-1]["train_comp_loss"] > records[0]["train_comp_loss"] > 0
    assert records[-1]["train_expa_loss"] > records[0]["train_expa_loss"] > 0
    assert records[-1]["train_loss"] < records[0]["train_loss"] < 0


def test_run_over_reference_in_epochs_and_fractions(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    reference = tmp_path / "reference.txt"
    _write(reference, [{"train_loss": -1.0 - e / 10, "train_expa_loss": 0.4, "train_comp_loss": 0.6 + e / 10,
                        "train_lr": 1e-4, "train_wd": 0.04, "epoch": e} for e in range(10)])  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    _write(run / "training_metrics.json", [
        {"iteration": i, "loss": -1.0, "expa_loss": 0.4, "comp_loss": 0.6, "lr": 1e-3, "wd": 0.04, "effective_rank": 9.0}
        for i in range(0, 40, 10)] + [{"iteration": 39, "knn_monitor_top1": 55.0}])  # fmt: skip
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    assert plot_log.main([str(run), "--reference", str(reference)]) == 0
    axes = figures[0].axes
    expa = next(ax for ax in axes if ax.get_title().startswith("expa_loss"))
    (ours, theirs) = expa.get_lines()
    assert (
        list(ours.get_xdata()) == pytest.approx([1 / 31, 11 / 31, 21 / 31, 1.0])
        and list(theirs.get_xdata())[-1] == 1.0
    )
    assert (run / "curves_vs_reference.png").is_file()
    with pytest.raises(ValueError, match="use --x fraction"):
        plot_log.plot_against_reference(run, reference, "epoch")
    # the plain plot gains a health panel: effective rank and the k-NN monitor's own rows
    plot_log.plot_run(run)
    health = [ax for ax in figures[-1].axes if ax.get_ylabel() in ("effective rank", "k-NN top-1 (%)")]
    assert len(health) == 2 and list(health[1].get_lines()[0].get_ydata()) == [55.0]
