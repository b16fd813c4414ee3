"""Keypoint layouts: joint names and skeleton edges, defined once for the whole project.

``HAND21`` is the OpenPose/MediaPipe order: 0 wrist; thumb 1-4 (CMC, MCP, IP, tip); index 5-8
(MCP, PIP, DIP, tip); middle 9-12; ring 13-16; little 17-20. ``NYU14`` is the 14-joint evaluation
subset of the NYU Hand Pose dataset, as used by DeepPrior and its successors.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeypointLayout:
    """Names and skeleton of one keypoint set.

    ``edges`` are (parent, child) index pairs drawn as bones; ``palm`` names the indices used for
    a palm frame (wrist, index base, middle base) where the layout has them, else empty. ``axis``
    is a (from, to) pair of joints along the hand, from the wrist towards the fingers (DeepPrior's
    second pass turns its crop so that it points up), or empty.
    """

    name: str
    joint_names: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    palm: tuple[int, ...] = ()
    axis: tuple[int, ...] = ()

    @property
    def num_joints(self) -> int:
        """J, the number of joints in the layout."""
        return len(self.joint_names)


_FINGERS = ("thumb", "index", "middle", "ring", "little")
_THUMB_PARTS = ("cmc", "mcp", "ip", "tip")
_FINGER_PARTS = ("mcp", "pip", "dip", "tip")


def _hand21_names() -> tuple[str, ...]:
    names = ["wrist"]
    for finger in _FINGERS:
        parts = _THUMB_PARTS if finger == "thumb" else _FINGER_PARTS
        names += [f"{finger}_{part}" for part in parts]
    return tuple(names)


def _hand21_edges() -> tuple[tuple[int, int], ...]:
    edges = []
    for f in range(5):
        base = 1 + 4 * f
        edges.append((0, base))
        edges += [(base + k, base + k + 1) for k in range(3)]
    return tuple(edges)


HAND21 = KeypointLayout("hand21", _hand21_names(), _hand21_edges(), palm=(0, 5, 9), axis=(0, 9))

# Indices of the 14 evaluation joints in NYU's 36-joint annotation (joint_data.mat), in the order
# used by DeepPrior: little tip/mid, ring tip/mid, middle tip/mid, index tip/mid, thumb tip/mid/base,
# two wrist points and the palm centre.
NYU36_TO_14 = (0, 3, 6, 9, 12, 15, 18, 21, 24, 25, 27, 30, 31, 32)
NYU14 = KeypointLayout(
    "nyu14",
    ("P1", "P2", "R1", "R2", "M1", "M2", "I1", "I2", "T1", "T2", "T3", "W1", "W2", "C"),
    ((13, 1), (1, 0), (13, 3), (3, 2), (13, 5), (5, 4), (13, 7), (7, 6),
     (13, 10), (10, 9), (9, 8), (13, 11), (13, 12)),
    axis=(11, 13),  # one wrist point -> palm centre: not the hand's midline, but a fixed frame
)

LAYOUTS = {layout.name: layout for layout in (HAND21, NYU14)}


def layout_for(joint_names: tuple[str, ...] | list[str]) -> KeypointLayout:
    """The known layout with these joint names, or a layout without edges for unknown names."""
    for layout in LAYOUTS.values():
        if tuple(joint_names) == layout.joint_names:
            return layout
    return KeypointLayout("custom", tuple(joint_names), ())
