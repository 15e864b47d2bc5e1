"""`simdinov2/train/health.py`: effective rank, the collapse warning of the probe and the batch-size guard."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from simdinov2.train.health import (
    RepresentationProbe,
    collapse_threshold,
    effective_rank,
    warn_if_rank_deficient_covariance,
)


def test_effective_rank_of_known_spectra():
    assert effective_rank(torch.ones(16, 8)) == pytest.approx(1.0)  # every row the same direction
    assert effective_rank(torch.eye(8)) == pytest.approx(8.0)  # flat spectrum
    assert effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0]))) == pytest.approx(2.0)
    assert effective_rank(torch.zeros(4, 4)) == 0.0
    wide = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    assert 20 < effective_rank(wide) < 32


def test_probe_reads_hooks_and_warns_once_per_collapse(caplog):
    backbone, head = nn.Linear(8, 8), nn.Linear(8, 4)
    probe = RepresentationProbe(backbone, head)
    assert probe.measure() == {}
    head(backbone(torch.randn(16, 8)))
    values = probe.measure()
    assert values["effective_rank"] > 2 and 1 <= values["effective_rank_head"] <= 4
    with torch.no_grad():
        backbone.weight.zero_()
        backbone.bias.fill_(1.0)  # every input gives the same embedding: collapse
    with caplog.at_level(logging.WARNING, logger="simdinov2"):
        for _ in range(3):
            head(backbone(torch.randn(16, 8)))
            assert probe.measure()["effective_rank"] == pytest.approx(1.0)
    warnings = [r.getMessage() for r in caplog.records if "collapsing" in r.getMessage()]
    assert len(warnings) == 1 and "effective_rank 1.00 < 2.0" in warnings[0]
    probe.remove()


def test_collapse_threshold_is_relative_with_a_floor():
    assert collapse_threshold(128, 192) == pytest.approx(12.8)
    assert collapse_threshold(8, 192) == 2.0  # a full collapse (rank 1) is caught at any size
    assert collapse_threshold(4096, 768) == pytest.approx(76.8)


def test_batch_guard(caplog):
    with caplog.at_level(logging.WARNING, logger="simdinov2"):
        assert warn_if_rank_deficient_covariance(64, 256, False, 8, "--reduce_cov 1")
        assert not warn_if_rank_deficient_covariance(64, 256, True, 8, "--reduce_cov 1")
        assert not warn_if_rank_deficient_covariance(512, 256, False, 8, "--reduce_cov 1")
    assert len(caplog.records) == 1 and "set --reduce_cov 1" in caplog.records[0].getMessage()


def test_monitor_time_is_left_out_of_the_budget():
    from simdinov2.train.clock import TrainingClock

    clock = TrainingClock(100.0, total_iterations=10, niter_per_epoch=5)
    times = iter([0.0, 30.0, 30.0])
    clock.now = lambda: next(times)
    clock.start()  # t = 0
    clock.exclude(12.0)  # 12 s of k-NN monitor
    assert clock.elapsed() == pytest.approx(18.0)  # t = 30
