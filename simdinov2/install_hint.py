"""One clear line instead of a traceback when a command runs without the package's dependencies.

Standard library only, so that it imports before torch and the rest: a command wraps its first project import
in `with exit_with_install_hint("main_dino.py"):`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

INSTALL_HINT = "install the package first: `pip install -e .` from the repository root"


@contextmanager
def exit_with_install_hint(script: str) -> Iterator[None]:
    """Turn an ImportError raised inside the block into `<script>: error: <what is missing>; <INSTALL_HINT>`."""
    try:
        yield
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit(f"{script}: error: {exc}; {INSTALL_HINT}") from exc
