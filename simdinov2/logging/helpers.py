"""Metric smoothing, DINO-style progress lines (iteration/total, metrics, time per iteration, ETA) and
console tee to a file. Shared by the v1 scripts and the v2 trainer."""

from __future__ import annotations

import contextlib
import datetime
import logging
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from simdinov2 import distributed
from simdinov2.io.output_dir import make_output_dir

from .json_lines import append_json_lines

logger = logging.getLogger("simdinov2")


class SmoothedValue:
    """A window median/average plus a global average of a scalar series."""

    def __init__(self, window_size: int = 20, fmt: str = "{median:.6f} ({global_avg:.6f})") -> None:
        self.deque: deque[float] = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt

    def update(self, value: float, n: int = 1) -> None:
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self) -> None:
        """Make `global_avg` the average over all processes (the window stays local)."""
        if not distributed.is_enabled():
            return
        t = torch.tensor([self.count, self.total], dtype=torch.float64, device=distributed.get_device())
        torch.distributed.all_reduce(t)
        self.count = int(t[0].item())
        self.total = float(t[1].item())

    @property
    def median(self) -> float:
        return float(torch.tensor(list(self.deque)).median().item()) if self.deque else 0.0

    @property
    def avg(self) -> float:
        return sum(self.deque) / len(self.deque) if self.deque else 0.0

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def value(self) -> float:
        return self.deque[-1] if self.deque else 0.0

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, value=self.value)


def metrics_row_due(iteration: int, print_freq: int, n_iterations: int) -> bool:
    """Whether `log_every` prints (and writes the `output_file` row of) `iteration`."""
    return iteration % print_freq == 0 or iteration == n_iterations - 1


class MetricLogger:
    """Collects metrics and prints a progress line every `print_freq` iterations.

    If `output_file` is given, the main process also appends one JSON line per printed iteration
    (DINOv2's `training_metrics.json`) with the values of that iteration (not window medians, so that
    plotted schedules such as the lr are exact)."""

    def __init__(self, delimiter: str = "  ", output_file: str | Path | None = None) -> None:
        self.meters: defaultdict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.delimiter = delimiter
        self.output_file = Path(output_file) if output_file else None
        self._updates = 0  # calls of `update`: whether the consumer of `log_every` finished its item

    def update(self, **kwargs: Any) -> None:
        self._updates += 1
        for k, v in kwargs.items():
            if v is None:
                continue
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.meters[k].update(float(v))

    def __getattr__(self, attr: str) -> SmoothedValue:
        meters = self.__dict__.get("meters")
        if meters is not None and attr in meters:
            return meters[attr]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{attr}'")

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def synchronize_between_processes(self) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def _dump_json(self, iteration: int, iter_time: float, data_time: float) -> None:
        if self.output_file is None or not distributed.is_main_process():
            return
        record = {"iteration": iteration, "iter_time": iter_time, "data_time": data_time}
        record.update({name: meter.value for name, meter in self.meters.items()})
        append_json_lines(self.output_file, [record])

    def log_every(
        self,
        iterable: Iterable[Any],
        print_freq: int,
        header: str = "",
        n_iterations: int | None = None,
        start_iteration: int = 0,
        json_iteration_offset: int = 0,
        images_per_iteration: int = 0,
        eta: Callable[[int], float] | None = None,
    ) -> Iterator[Any]:
        """Yield from `iterable`, printing `header [it/total] eta: ... img/s: ... metrics ... time: ...`.

        `n_iterations` / `start_iteration` are those of the whole run when a per-epoch loop passes them
        (then the ETA is that of the run); `images_per_iteration` (over all processes) adds the
        throughput. `json_iteration_offset` is added to the iteration written to `output_file`; `eta(i)`,
        when given, is the ETA after iteration `i` in seconds (a time budget's rest)."""
        i = start_iteration
        if n_iterations is None:
            n_iterations = len(iterable)  # type: ignore[arg-type]
        start_time = time.time()
        end = time.time()
        iter_time = SmoothedValue(fmt="{avg:.4f}")
        data_time = SmoothedValue(fmt="{avg:.4f}")
        width = len(str(n_iterations))
        # A per-epoch loop (a sized iterable within a longer run) also reports its epoch's last iteration.
        try:
            last_of_iterable = start_iteration + len(iterable) - 1  # type: ignore[arg-type]
        except TypeError:  # an iterator, or a loader over an infinite sampler
            last_of_iterable = -1
        last_dumped = -1
        for obj in iterable:
            data_time.update(time.time() - end)
            updates_at_yield = self._updates
            try:
                yield obj
            except GeneratorExit:
                # The consumer stopped early: before this item (a time budget) or after it (a stop signal; its
                # `update` says so). The record ends with the last iteration it finished.
                done = i if self._updates != updates_at_yield else i - 1
                if done >= start_iteration and done != last_dumped:
                    self._dump_json(done + json_iteration_offset, iter_time.avg, data_time.avg)
                raise
            iter_time.update(time.time() - end)
            if metrics_row_due(i, print_freq, n_iterations) or i == last_of_iterable:
                self._dump_json(i + json_iteration_offset, iter_time.avg, data_time.avg)
                last_dumped = i
                eta_seconds = eta(i) if eta is not None else iter_time.global_avg * (n_iterations - i - 1)
                eta_text = str(datetime.timedelta(seconds=int(eta_seconds)))
                throughput = (
                    [f"img/s: {images_per_iteration / iter_time.avg:.1f}"]
                    if images_per_iteration and iter_time.avg
                    else []
                )
                msg = self.delimiter.join(
                    [
                        header,
                        f"[{i:{width}d}/{n_iterations}]",
                        f"eta: {eta_text}",
                        *throughput,
                        str(self),
                        f"time: {iter_time}",
                        f"data: {data_time}",
                    ]
                )
                logger.info(msg)
            i += 1
            end = time.time()
            if i >= n_iterations:
                break
        total_time = time.time() - start_time
        per_it = total_time / max(i - start_iteration, 1)
        logger.info(
            f"{header} Total time: {datetime.timedelta(seconds=int(total_time))} ({per_it:.4f} s / it)"
        )


class _Tee:
    """Write to the console and to a file (the v1 `output.log`)."""

    def __init__(self, stream: Any, path: Path) -> None:
        self.stream = stream
        self.path = Path(path).resolve()
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 - open for the whole run, closed by close()

    def write(self, data: str) -> int:
        self.stream.write(data)
        self._to_file(data)
        return len(data)

    def flush(self) -> None:
        self.stream.flush()
        self._to_file(None)

    def _to_file(self, data: str | None) -> None:
        """Copy to the file while it can be written: a full disk stops the copy with one warning on the
        console (not a "Logging error" traceback for every line, nor a failed flush at exit)."""
        if self.file is None:
            return
        try:
            if data is not None:
                self.file.write(data)
            self.file.flush()
        except OSError as exc:
            file, self.file = self.file, None
            with contextlib.suppress(OSError):
                file.close()
            self.stream.write(
                f"warning: no longer copying the console to {self.path}: {exc.strerror or exc}\n"
            )

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()


def setup_logging(
    output_dir: str | Path | None = None, log_name: str = "output.log", level: int = logging.INFO
) -> None:
    """Configure the `simdinov2` logger; on the main process tee stdout/stderr into `output_dir/log_name`.

    Non-main processes log warnings only, so a torchrun with 8 processes prints one progress stream."""
    root = logging.getLogger("simdinov2")
    root.setLevel(level if distributed.is_main_process() else logging.WARNING)
    root.propagate = False
    if distributed.is_main_process() and output_dir is not None:
        path = make_output_dir(output_dir)
        target = (path / log_name).resolve()
        if isinstance(sys.stdout, _Tee) and sys.stdout.path != target:
            # A second run in the same process (tests, submitit's debug executor) logs to its own folder.
            for name in ("stdout", "stderr"):
                tee = getattr(sys, name)
                if isinstance(tee, _Tee):
                    tee.close()
                    setattr(sys, name, tee.stream)
        if not isinstance(sys.stdout, _Tee):
            sys.stdout = _Tee(sys.stdout, target)  # type: ignore[assignment]
            sys.stderr = _Tee(sys.stderr, target)  # type: ignore[assignment]
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    root.addHandler(handler)


class LengthEstimate:
    """A long loop says its size when it starts and, once its first iterations are timed, how long the
    whole takes at that pace, each with how to shorten it (one line each, main process).

    `tick()` after every iteration: the first one (loader start-up, first calls) is left out of the
    measure, the next `probe` are timed (fewer in a short loop, so that it too gets its estimate while
    iterations are left: half of those after the first)."""

    def __init__(self, what: str, size: str, iterations: int, shorten: str, probe: int = 5) -> None:
        self.what, self.iterations, self.shorten = what, int(iterations), shorten
        self.probe = max(1, min(probe, (self.iterations - 1) // 2))
        self.count, self._timed_from = 0, 0.0
        if distributed.is_main_process():
            logger.info("%s: %s; time estimate after %d iterations; %s", what, size, self.probe + 1, shorten)

    def tick(self) -> None:
        self.count += 1
        if self.count == 1:
            self._timed_from = time.monotonic()
        elif self.count == self.probe + 1 and distributed.is_main_process():
            per_iteration = (time.monotonic() - self._timed_from) / self.probe
            left = max(self.iterations - self.count, 0)
            logger.info(
                "%s: %.2f s per iteration, about %s for the %d iterations left; %s", self.what, per_iteration,
                datetime.timedelta(seconds=int(per_iteration * left)), left, self.shorten,
            )  # fmt: skip
