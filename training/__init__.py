"""Offline entry points: ``python -m training.<name>`` (train, evaluate, import weights, demo)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

import numpy as np

from handpose_core.data.synth_hand import GESTURES, RANDOM_ARTICULATION


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


class HandTally:
    """How often an estimator on ``auto`` took each frame's own hand: :meth:`add` each frame's poses,
    then :meth:`figures` gives ``{"handedness_accuracy": share}`` (empty where no pose said a hand:
    a network that saw both hands, or the hand told)."""

    def __init__(self, protocol: str) -> None:
        self.counting = protocol == "auto"
        self.correct: list[bool] = []

    def add(self, poses: Sequence, is_left: bool) -> None:
        """One frame's ``predict`` result and its true hand."""
        if self.counting and poses and poses[0].extras.get("handedness"):
            self.correct.append(poses[0].extras["handedness"] == hand_of(is_left, "known"))

    def figures(self) -> dict[str, float]:
        return {"handedness_accuracy": sum(self.correct) / len(self.correct)} if self.correct else {}


# the two halves of the generator's hands, as articulation_groups names them: what the evaluators print
ARTICULATION_HALVES = ("gestures", "random")
# what a per-prior breakdown keeps of each group's figures (the evaluators' JSON "by_articulation")
ARTICULATION_KEYS = ("n_frames", "detection_rate", "mean_error_mm", "frames_within_40mm", "pa_mean_error_mm",
                     "pa_frames_within_40mm", "fraction_within")


def articulation_groups(articulations: Sequence[str]) -> dict[str, np.ndarray]:
    """Held-out synthetic frames grouped by the prior their finger angles came from
    (``HandParams.articulation``): ``gestures`` (the five gesture priors together), ``random``
    (every angle uniform within its limits: fingers in unrelated, often unnatural poses), then
    each gesture on its own. {name: (N,) bool mask}; a frame of unknown prior ("") is in none."""
    arts = np.asarray(list(articulations), dtype=object)
    groups = {"gestures": np.isin(arts, GESTURES), "random": arts == RANDOM_ARTICULATION}
    groups.update({g: arts == g for g in GESTURES})
    return groups
