"""Console and file logging for both trees: `MetricLogger` progress lines with ETA, and `setup_logging`
which tees the console to `output.log` on the main process (other ranks stay quiet)."""

from .helpers import LengthEstimate, MetricLogger, SmoothedValue, resume_json_lines, setup_logging

__all__ = ["LengthEstimate", "MetricLogger", "SmoothedValue", "resume_json_lines", "setup_logging"]
