"""Left and right hands: what a pipeline's network saw, and which hand the user says is in view.

A network trained on right hands only (``hands == "right"``: the default recipes of both families,
and OpenPose's hand network) sees a left hand mirrored; each pipeline mirrors its crops for it.
``handedness`` is the user's word on the hand in view: ``right``, ``left``, or ``auto`` (the
pipeline runs a frame both ways until its track's :class:`HandVote` settles, then the hand it
called; see each pipeline's module doc).
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
    ``reset()`` (a track belongs to one hand). The pipeline sets ``hands`` and ``_vote`` (its
    track's :class:`HandVote`)."""

    _handedness = "auto"
    hands = "both"
    _vote: HandVote

    def _frame_hand(self, continuing: bool) -> str | None:
        """The hand to run this frame as: None for a network that saw both hands; the hand told;
        on ``auto``, the one the track's vote settled on where this frame ``continuing`` the track,
        else None (both ways)."""
        if self.hands != "right":
            return None
        if self.handedness != "auto":
            return self.handedness
        return self._vote.hand if continuing and self._vote.settled else None

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


class HandVote:
    """``auto`` handedness over a track: the evidence of its first ``window`` frames, summed.

    Each frame a right-hand network runs as both hands gives a margin, the left way's score minus
    the right way's (positive: a left hand); the hand taken is the sign of the margins summed over
    the track so far, and after ``window`` frames the track keeps it and runs one way only. One
    frame's pick is right in four or five frames of five, but frames of one track often err the
    same way, so the sum gains only as the hand moves, and a tracked frame runs both ways until the
    vote settles. RGB sums 60 frames; depth decides on the first (``window`` 1), where summing more
    did not score clearly better (see each pipeline's module doc).
    """

    def __init__(self, window: int) -> None:
        if not (isinstance(window, int) and window >= 1):
            raise HandPoseError(f"handedness_frames must be an integer >= 1, got {window!r}")
        self.window = window
        self.reset()

    def reset(self) -> None:
        """A new track: no evidence yet."""
        self.total = 0.0
        self.frames = 0

    @property
    def hand(self) -> str:
        """The hand the sum so far calls (right on a tie, as :meth:`weigh`)."""
        return _called(self.total)

    @property
    def settled(self) -> bool:
        """The track has weighed ``window`` frames: it keeps its hand."""
        return self.frames >= self.window

    def weigh(self, left_margin: float) -> tuple[str, float]:
        """This frame's margin (left minus right) -> (the hand the sum calls, right on a tie; the sum),
        without keeping it: :meth:`keep` the sum if the track goes on."""
        total = self.total + float(left_margin)
        return _called(total), total

    def keep(self, total: float) -> None:
        """The track goes on with this frame's sum (from :meth:`weigh`)."""
        self.total = total
        self.frames += 1


def _called(left_margin: float) -> str:
    """The hand a summed margin calls: left where positive, right otherwise (a tie too)."""
    return "left" if left_margin > 0 else "right"
