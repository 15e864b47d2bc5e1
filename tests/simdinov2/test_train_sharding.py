"""fsdp, ddp and none train the same model: identical losses, gradient norms and EMA teacher.

Two processes (gloo) each see half of every step's images; the single process sees all of them. With
`reduce_cov=1` the coding rate is that of the whole batch in both set-ups (the covariance is all-reduced
over ranks, as upstream does), the other
terms are batch means, and DDP / FSDP average gradients, so every step must agree to float tolerance.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp
from train_utils import EQUIV_EXTRA, equivalence_batches, free_port, run_steps, sharding_worker, tiny_cfg


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_ddp_and_single_process_train_identically(tmp_path):
    modes = ["ddp", "fsdp"]
    mp.spawn(sharding_worker, args=(2, free_port(), str(tmp_path), modes), nprocs=2, join=True)

    cfg = tiny_cfg(extra=EQUIV_EXTRA + ["train.sharding=none"])
    reference = run_steps(cfg, equivalence_batches(cfg, rank=0, world_size=1))
    # The teacher really moved away from its initial copy of the student (the EMA is not a no-op) ...
    initial_teacher = reference["initial_teacher"]
    moved = max((reference["teacher"][k] - initial_teacher[k]).abs().max().item() for k in initial_teacher)
    assert moved > 1e-4
    # ... and clipping was active, so it is compared too.
    assert reference["losses"][0]["backbone_grad_norm"] > float(cfg.optim.clip_grad)

    for mode in modes:
        losses = json.loads((tmp_path / f"losses_{mode}.json").read_text())
        assert len(losses) == len(reference["losses"])
        for step, (got, want) in enumerate(zip(losses, reference["losses"], strict=True)):
            assert set(got) == set(want), (mode, step)
            for key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), (mode, step, key)
        teacher = torch.load(tmp_path / f"teacher_{mode}.pt")
        assert set(teacher) == set(reference["teacher"])
        for key, value in reference["teacher"].items():
            torch.testing.assert_close(
                teacher[key], value, rtol=1e-4, atol=1e-5, msg=f"{mode}: teacher {key}"
            )
