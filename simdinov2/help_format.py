"""The `--help` format of every program of both trees (no torch import: the launchers and light tools use it).

Owns `HelpFormatter`: each flag's default shown as `(default: X)`, unless its help already speaks of the
default or there is none to show (None, an off switch); descriptions keep their own line breaks.
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """`--help` with each flag's default, `(default: X)`, unless its help already speaks of the default or
    there is none to show (None, an off switch); descriptions keep their own line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        empty = isinstance(default, (list, tuple)) and not default
        no_default = (
            default is None
            or default is False
            or default is argparse.SUPPRESS
            or empty
            or not action.option_strings
        )
        if no_default or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)"
