"""`python -m simdinov2.run.torchrun ...`: torchrun, ending in one line when torchrun itself is stopped.

Takes exactly torchrun's arguments and runs torch's own launcher (`torch.distributed.run.main`). The only
difference is the end of a run that torchrun's process was signalled out of (Ctrl-C in the terminal,
`kill -TERM` of its pid, SLURM's `scancel`): torch's launcher forwards the signal to the workers (ours
then finish the iteration under way, write its checkpoint and say so in one line, see
`simdinov2.train.interrupt`), waits for them, and then raises its `SignalException` out of `main`, which
Python prints as a traceback of torch's launcher code although nothing failed. Here that ending is one
line and the exit status is 128 + the signal, as a shell reports a signalled command. Everything else
(worker failures and their error report included) is torchrun's, unchanged.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from torch.distributed import run as torch_run
from torch.distributed.elastic.multiprocessing import SignalException


def main(argv: Sequence[str] | None = None) -> int:
    try:
        torch_run.main(None if argv is None else list(argv))
    except SignalException as stopped:
        name = signal.Signals(stopped.sigval).name
        print(
            f"torchrun: stopped by {name}; the workers were passed the signal and checkpoint the iteration "
            "they reached (see their line above): run the same command to resume",
            file=sys.stderr,
            flush=True,
        )
        return 128 + int(stopped.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
