"""Per-iteration schedules shared by both trees (lr, weight decay, teacher momentum, temperatures, eps/coeff).

DINO (v1) precomputes a numpy array per schedule; DINOv2 indexes a `CosineScheduler`. Both are the same
curve: an optional freeze at 0, an optional linear warm-up from `start_warmup_value`, an optional plateau at
`base_value` (`peak_iters`, upstream SimDINOv2's `optim.peak_epochs`), then a half cosine from `base_value` to
`final_value`. It is built once here.
"""

from __future__ import annotations

import numpy as np


def cosine_schedule(
    base_value: float,
    final_value: float,
    total_iters: int,
    warmup_iters: int = 0,
    start_warmup_value: float = 0.0,
    freeze_iters: int = 0,
    peak_iters: int = 0,
) -> np.ndarray:
    """Array of `total_iters` values: `freeze_iters` zeros, linear warm-up, `peak_iters` at `base_value`,
    then cosine to `final_value`."""
    total_iters = int(total_iters)
    freeze_iters = min(int(freeze_iters), total_iters)
    warmup_iters = min(int(warmup_iters), total_iters - freeze_iters)
    peak_iters = min(max(int(peak_iters), 0), total_iters - freeze_iters - warmup_iters)
    freeze = np.zeros(freeze_iters)
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.zeros(0)
    peak = np.full(peak_iters, float(base_value))
    n_cos = total_iters - freeze_iters - warmup_iters - peak_iters
    steps = np.arange(n_cos)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * steps / max(n_cos, 1)))
    schedule = np.concatenate((freeze, warmup, peak, cosine))
    assert len(schedule) == total_iters
    return schedule


def cosine_scheduler_epochs(
    base_value: float,
    final_value: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """DINO v1's `cosine_scheduler(base, final, epochs, niter_per_ep, warmup_epochs, start_warmup_value)`."""
    return cosine_schedule(
        base_value, final_value, epochs * niter_per_ep, warmup_epochs * niter_per_ep, start_warmup_value
    )


class CosineScheduler:
    """DINOv2-style indexable schedule; past the end it returns `final_value`."""

    def __init__(
        self,
        base_value: float,
        final_value: float,
        total_iters: int,
        warmup_iters: int = 0,
        start_warmup_value: float = 0.0,
        freeze_iters: int = 0,
        peak_iters: int = 0,
    ) -> None:
        self.final_value = final_value
        self.total_iters = int(total_iters)
        self.schedule = cosine_schedule(
            base_value, final_value, total_iters, warmup_iters, start_warmup_value, freeze_iters, peak_iters
        )

    def __getitem__(self, it: int) -> float:
        if it >= self.total_iters:
            return float(self.final_value)
        return float(self.schedule[it])

    def __len__(self) -> int:
        return self.total_iters
