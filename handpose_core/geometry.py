"""Rigid-frame helpers on 3D keypoints: the palm frame published as ``~/wrist_pose``.

Frames follow REP 103 optical conventions (x right, y down, z forward, metres); quaternions are
(x, y, z, w), the ROS order.
"""

from __future__ import annotations

import numpy as np

from handpose_core.keypoints import KeypointLayout

# Shorter palm vectors than this (metres) are treated as degenerate (joints on top of each other).
MIN_PALM_LENGTH_M = 1e-4
# Index and middle directions closer than this sine of their angle do not span a plane.
MIN_PALM_SINE = 1e-3


def rotation_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> (4,) unit quaternion (x, y, z, w) with w >= 0.

    Shepperd's method: branch on the largest diagonal term so the square root is well conditioned.
    """
    r = np.asarray(rotation, dtype=np.float64)
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > 0.0:
        s = 2.0 * np.sqrt(1.0 + trace)
        q = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s]
    elif r[0, 0] >= r[1, 1] and r[0, 0] >= r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = [0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s, (r[2, 1] - r[1, 2]) / s]
    elif r[1, 1] >= r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = [(r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s, (r[0, 2] - r[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = [(r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s, (r[1, 0] - r[0, 1]) / s]
    quat = np.asarray(q, dtype=np.float64)
    quat /= np.linalg.norm(quat)
    return -quat if quat[3] < 0 else quat


def palm_frame(xyz_m: np.ndarray, layout: KeypointLayout) -> tuple[np.ndarray, np.ndarray] | None:
    """Palm frame from the wrist, index base and middle base: (origin (3,) m, rotation (3, 3)).

    xyz_m:  (J, 3) metres in the camera optical frame, J = ``layout.num_joints``.
    Axes (columns of the rotation, expressed in the camera frame):
      x: wrist -> middle-finger base (along the hand);
      z: x cross (wrist -> index base), the palm normal (its side depends on left/right hand);
      y: z cross x, in the palm plane, towards the index finger.
    Origin: the wrist. Returns None when the layout has no palm joints, a palm joint is NaN, or
    the three points are (nearly) coincident or collinear.
    """
    if len(layout.palm) != 3:
        return None
    xyz = np.asarray(xyz_m, dtype=np.float64).reshape(-1, 3)
    if len(xyz) != layout.num_joints:
        return None
    wrist, index, middle = (xyz[j] for j in layout.palm)
    if not (np.isfinite(wrist).all() and np.isfinite(index).all() and np.isfinite(middle).all()):
        return None
    along = middle - wrist
    side = index - wrist
    along_len, side_len = np.linalg.norm(along), np.linalg.norm(side)
    if along_len < MIN_PALM_LENGTH_M or side_len < MIN_PALM_LENGTH_M:
        return None
    normal = np.cross(along, side)
    normal_len = np.linalg.norm(normal)
    if normal_len < MIN_PALM_SINE * along_len * side_len:
        return None
    x = along / along_len
    z = normal / normal_len
    y = np.cross(z, x)
    return wrist, np.stack([x, y, z], axis=1)


def palm_pose(xyz_m: np.ndarray, layout: KeypointLayout) -> tuple[np.ndarray, np.ndarray] | None:
    """Palm pose for ``~/wrist_pose``: (position (3,) m, quaternion (4,) x, y, z, w) or None.

    See :func:`palm_frame` for the axes; None when the palm is unknown or degenerate.
    """
    frame = palm_frame(xyz_m, layout)
    if frame is None:
        return None
    origin, rotation = frame
    return origin.astype(np.float64), rotation_to_quaternion(rotation)
