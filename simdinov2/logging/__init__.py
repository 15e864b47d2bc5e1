"""Console and file logging for both trees: `MetricLogger` progress lines with ETA, and `setup_logging`
which tees the console to `output.log` on the main process (other ranks stay quiet); the JSON-lines
records of every program (`append_json_lines`, `resume_json_lines`)."""

from .helpers import LengthEstimate, MetricLogger, SmoothedValue, setup_logging
from .json_lines import append_json_lines, resume_json_lines, resume_records

__all__ = [
    "LengthEstimate",
    "MetricLogger",
    "SmoothedValue",
    "append_json_lines",
    "resume_json_lines",
    "resume_records",
    "setup_logging",
]
