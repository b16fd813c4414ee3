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


# how the evaluators feed a network trained on right hands: each frame's own hand told, or "auto"
HANDEDNESS_PROTOCOLS = ("known", "auto")


def hand_of(is_left: bool, protocol: str) -> str:
    """What the estimator is told about a held-out frame under a handedness ``protocol``: the frame's
    own hand (``known``: ``left`` / ``right``) or ``auto``."""
    if protocol not in HANDEDNESS_PROTOCOLS:
        raise ValueError(f"handedness protocol must be one of {HANDEDNESS_PROTOCOLS}, got {protocol!r}")
    return ("left" if is_left else "right") if protocol == "known" else "auto"
