"""Left and right hands: what a pipeline's network saw, and which hand the user says is in view.

A network trained on right hands only (``hands == "right"``: the default recipes of both families,
and OpenPose's hand network) sees a left hand mirrored; each pipeline mirrors its crops for it.
``handedness`` is the user's word on the hand in view: ``right``, ``left``, or ``auto`` (the
pipeline tries both where it has no track; see each pipeline's module doc).
"""

from __future__ import annotations

from handpose_core.errors import HandPoseError

HANDS = ("both", "right")  # which hands a network saw (checkpoint meta)
HANDEDNESS = ("auto", "right", "left")  # which hand is in view


def check_hands(hands: str, flip_average: bool, where: str) -> str:
    """``hands`` checked against :data:`HANDS` and ``flip_average`` (``where``: the meta key, for
    the message); returns it."""
    if hands not in HANDS:
        raise HandPoseError(f"{where}hands must be one of {HANDS}, got {hands!r}")
    if hands == "right" and flip_average:
        raise HandPoseError(f"{where}flip_average needs a network that saw both hands; this one saw right "
                            f"hands only ({where}hands)")
    return hands


class Handedness:
    """The ``handedness`` attribute of a pipeline: checked on setting, and setting it calls
    ``reset()`` (a track belongs to one hand)."""

    _handedness = "auto"

    def reset(self) -> None:  # pragma: no cover - each pipeline has its own
        raise NotImplementedError

    @property
    def handedness(self) -> str:
        """Which hand is in view: ``auto``, ``right`` or ``left``. Matters only for a network trained on
        right hands; setting it forgets the track."""
        return self._handedness

    @handedness.setter
    def handedness(self, value: str) -> None:
        if value not in HANDEDNESS:
            raise HandPoseError(f"handedness must be one of {HANDEDNESS}, got {value!r}")
        self._handedness = value
        self.reset()
