"""simdinov2.checkpoint.dcp: resuming a v2 run (or --eval-only) never runs code planted in its folder,
and a corrupt, truncated or foreign file is one line that says so."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import pickle
import random
import socket
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from simdinov2.checkpoint import Checkpointer, CheckpointError, safe_torch_load
from simdinov2.checkpoint import dcp as dcp_module
from simdinov2.checkpoint.dcp import rng_state, set_rng_state
from simdinov2.errors import UserError


class _Payload:
    """Unpickling this would run a shell command that creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _trained_linear(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def _saved_run(tmp_path) -> tuple[Checkpointer, os.PathLike]:
    model, optimizer = _trained_linear()
    checkpointer = Checkpointer(tmp_path / "ckpt", model, optimizer)
    return checkpointer, checkpointer.save(3, {"epoch_len": 1})


def _fresh_checkpointer(root) -> Checkpointer:
    model, optimizer = _trained_linear(seed=1)
    return Checkpointer(root, model, optimizer)


def _metadata(folder):
    with open(folder / ".metadata", "rb") as f:
        return pickle.load(f)  # the test's own file: trusted


def _point_entry_at(folder, fqn: str, blob: bytes) -> None:
    """Append `blob` to the shard file and make the metadata entry `fqn` read it (a planted shard entry)."""
    metadata = _metadata(folder)
    index = next(i for i in metadata.storage_data if i.fqn == fqn)
    info = metadata.storage_data[index]
    shard = folder / info.relative_path
    offset = shard.stat().st_size
    with open(shard, "ab") as f:
        f.write(blob)
    metadata.storage_data[index] = dataclasses.replace(info, offset=offset, length=len(blob))
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(metadata, f)


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _one_line_naming(err: pytest.ExceptionInfo, name: str) -> str:
    message = str(err.value)
    assert "\n" not in message and name in message, message
    assert isinstance(err.value, UserError)
    return message


# ---------------------------------------------------------------------------------------------- planted code
@pytest.mark.parametrize("planted", [".metadata", "tensor entry", "byte entry", "rng file"])
def test_planted_payload_in_any_file_a_resume_reads_is_refused_and_never_runs(tmp_path, planted):
    _, folder = _saved_run(tmp_path)
    marker = tmp_path / "PWNED"
    if planted == ".metadata":
        with open(folder / ".metadata", "wb") as f:
            pickle.dump(_Payload(marker), f)
        named = ".metadata"
    elif planted == "tensor entry":  # a shard entry read by DCP's own tensor loader
        _point_entry_at(folder, "model.weight", _torch_bytes(_Payload(marker)))
        named = ".distcp"
    elif planted == "byte entry":  # a non-tensor entry (optimizer hyper-parameters) read by the planner
        _point_entry_at(folder, "optimizer.param_groups.0.lr", _torch_bytes(_Payload(marker)))
        named = ".distcp"
    else:
        torch.save({"python": 1, "numpy": 2, "torch": _Payload(marker)}, folder / "rng_rank0.pt")
        named = "rng_rank0.pt"

    resumed = _fresh_checkpointer(folder.parent)
    readers = {  # what a resume reads, and what --eval-only reads (no optimizer, no RNG)
        "resume": lambda: resumed.load(folder),
        "eval-only": lambda: resumed.load(folder, with_optimizer=False),
    }
    if planted == "byte entry":
        readers.pop("eval-only")  # optimizer hyper-parameters are not read without the optimizer
    if planted == "rng file":
        readers = {"resume": lambda: Checkpointer.restore_rng(folder)}
    for read in readers.values():
        with pytest.raises(CheckpointError) as err:
            read()
        message = _one_line_naming(err, named)
        assert "refusing to load" in message and "system" in message
    if planted != "rng file":  # the backbone loader reads DCP folders through the same readers
        with pytest.raises(CheckpointError, match="refusing to load"):
            safe_torch_load(folder)
    assert not marker.exists()


def test_metadata_reader_admits_only_dcp_records(tmp_path):
    """Even a harmless-looking class outside DCP's metadata records is refused (an allow-list, not a deny-list)."""
    _, folder = _saved_run(tmp_path)
    metadata = _metadata(folder)
    metadata.planner_data = {"x": io.BytesIO(b"")}
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(metadata, f)
    with pytest.raises(CheckpointError) as err:
        _fresh_checkpointer(folder.parent).load(folder)
    assert "_io.BytesIO" in _one_line_naming(err, ".metadata")


# ---------------------------------------------------------------------------------------------- RNG files
def test_rng_state_is_plain_tensors_and_round_trips(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.normal()  # cached gaussians are part of the state
    saved = rng_state()
    path = tmp_path / "rng.pt"
    torch.save(saved, path)
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.normal(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(torch.load(path, weights_only=True))  # no allow-list needed
    again = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.normal(), torch.rand(2))
    assert expected[:4] == again[:4] and torch.equal(expected[4], again[4])


def test_rng_file_of_an_older_version_is_refused_with_the_way_out(tmp_path):
    _, folder = _saved_run(tmp_path)
    old_format = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(old_format, folder / "rng_rank0.pt")  # numpy's state array pickled as an object
    with pytest.raises(CheckpointError) as err:
        Checkpointer.restore_rng(folder)
    message = _one_line_naming(err, "rng_rank0.pt")
    assert "refusing to load" in message and f"delete {folder / 'rng_rank0.pt'}" in message


# ---------------------------------------------------------------------------------------------- corrupt files
@pytest.mark.parametrize(
    "damage",
    [
        "empty .metadata",
        "text .metadata",
        "truncated .distcp",
        "zero-filled .distcp",
        "missing .distcp",
        "empty rng",
        "text json",
    ],
)
def test_corrupt_or_truncated_files_say_corrupt_not_mismatch(tmp_path, damage):
    _, folder = _saved_run(tmp_path)
    shard = next(folder.glob("*.distcp"))
    if damage == "empty .metadata":
        (folder / ".metadata").write_bytes(b""), (named := ".metadata")
    elif damage == "text .metadata":
        (folder / ".metadata").write_text("not a pickle\n"), (named := ".metadata")
    elif damage == "truncated .distcp":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2]), (named := shard.name)
    elif damage == "zero-filled .distcp":  # before: reported as pickled code
        shard.write_bytes(bytes(shard.stat().st_size)), (named := shard.name)
    elif damage == "missing .distcp":
        shard.unlink(), (named := shard.name)
    elif damage == "empty rng":
        (folder / "rng_rank0.pt").write_bytes(b""), (named := "rng_rank0.pt")
    else:
        (folder / "trainer_state.json").write_text("{iteration: "), (named := "trainer_state.json")
    resumed = _fresh_checkpointer(folder.parent)
    with pytest.raises(CheckpointError) as err:
        Checkpointer.restore_rng(folder) if damage == "empty rng" else resumed.load(folder)
    message = _one_line_naming(err, named)
    assert "corrupt or not a checkpoint" in message and "does not match" not in message
    assert "pickled code" not in message and "code execution" not in message


def test_another_model_still_says_does_not_match(tmp_path):
    _, folder = _saved_run(tmp_path)
    other = Checkpointer(folder.parent, nn.Linear(4, 5))
    with pytest.raises(CheckpointError) as err:
        other.load(folder, with_optimizer=False)
    assert "does not match this model" in _one_line_naming(err, str(folder))


def test_clean_resume_restores_model_optimizer_and_trainer_state(tmp_path):
    checkpointer, folder = _saved_run(tmp_path)
    resumed = _fresh_checkpointer(folder.parent)
    assert resumed.load(folder) == {"iteration": 3, "world_size": 1, "epoch_len": 1}
    for key, value in checkpointer.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value)
    saved_avg = [s["exp_avg"] for s in checkpointer.optimizer.state.values()]
    assert all(
        torch.equal(a, s["exp_avg"]) for a, s in zip(saved_avg, resumed.optimizer.state.values(), strict=True)
    )
    assert resumed.optimizer.param_groups[0]["lr"] == 0.01  # byte entries came back through the planner


# ---------------------------------------------------------------------------------------------- two processes
def _two_rank_worker(rank: int, port: int, root: str, fail_rank: int) -> None:
    """Save with 2 gloo ranks, then a save where `fail_rank`'s disk is full, then resume on both ranks."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    outcome = {}
    try:
        checkpointer = Checkpointer(root, *_trained_linear())
        first = checkpointer.save(1)
        real_save = dcp_module.atomic_torch_save

        def full_disk(obj, path):
            real_save(obj, path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        if rank == fail_rank:
            dcp_module.atomic_torch_save = full_disk
        try:
            checkpointer.save(2)
        except UserError as err:
            outcome["error"] = f"{type(err).__name__}: {err}"
        finally:
            dcp_module.atomic_torch_save = real_save
        resumed = _fresh_checkpointer(root)
        outcome["iteration"] = resumed.load(first)["iteration"]
        outcome["rng"] = Checkpointer.restore_rng(first)
        outcome["equal"] = all(
            torch.equal(resumed.model.state_dict()[k], v) for k, v in checkpointer.model.state_dict().items()
        )
    finally:
        torch.distributed.destroy_process_group()
        with open(os.path.join(root, f"outcome{rank}.json"), "w") as f:
            json.dump(outcome, f)


@pytest.mark.distributed
def test_a_full_disk_on_one_rank_ends_the_save_on_every_rank_and_resume_works_sharded(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.start_processes(
        _two_rank_worker, args=(port, str(tmp_path), 1), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        assert time.monotonic() < deadline, "a rank hung"
    outcomes = [json.loads((tmp_path / f"outcome{rank}.json").read_text()) for rank in range(2)]
    assert outcomes[1]["error"].startswith("DiskFullError: no space left on device while saving")
    assert (
        outcomes[0]["error"].startswith("CheckpointError: saving")
        and "another process" in outcomes[0]["error"]
    )
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["checkpoint_00000001"]
    assert all(o["iteration"] == 1 and o["rng"] and o["equal"] for o in outcomes)
