"""Offline entry points: ``python -m training.<name>`` (train, evaluate, import weights, demo)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command a run records with its results: ``python -m <module> <args>``, shell-quoted.

    ``argv`` is what the entry point's ``main`` was given; None means the process's own arguments.
    """
    return f"python -m {module} " + shlex.join(sys.argv[1:] if argv is None else argv)
