"""Command-line tools that work on any run directory (plots, ...)."""
