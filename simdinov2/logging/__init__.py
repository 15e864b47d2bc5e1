"""Console and file logging for both trees: `MetricLogger` progress lines with ETA, and `setup_logging`
which tees the console to `output.log` on the main process (other ranks stay quiet)."""

from .helpers import MetricLogger, SmoothedValue, resume_json_lines, setup_logging

__all__ = ["MetricLogger", "SmoothedValue", "resume_json_lines", "setup_logging"]
