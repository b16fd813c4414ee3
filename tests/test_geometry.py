"""handpose_core.geometry: palm frame and rotation -> quaternion."""

from __future__ import annotations

import numpy as np
import pytest

from handpose_core.geometry import palm_frame, palm_pose, rotation_to_quaternion
from handpose_core.keypoints import HAND21, NYU14


def _quat_to_rotation(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def test_quaternion_round_trip_all_branches():
    rng = np.random.default_rng(0)
    rotations = [_random_rotation(rng) for _ in range(200)]
    # rotations by ~180 degrees about each axis exercise the non-trace branches
    rotations += [np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])]
    for rot in rotations:
        q = rotation_to_quaternion(rot)
        assert np.linalg.norm(q) == pytest.approx(1.0) and q[3] >= 0
        np.testing.assert_allclose(_quat_to_rotation(q), rot, atol=1e-9)
    np.testing.assert_allclose(rotation_to_quaternion(np.eye(3)), [0, 0, 0, 1])


def _hand(wrist, index, middle) -> np.ndarray:
    xyz = np.full((21, 3), np.nan)
    xyz[0], xyz[5], xyz[9] = wrist, index, middle
    return xyz


def test_palm_frame_axes():
    wrist = np.array([0.1, 0.0, 0.5])
    # hand pointing up in the image (-y), index to the right (+x): normal = x cross side
    xyz = _hand(wrist, wrist + [0.03, -0.08, 0.0], wrist + [0.0, -0.09, 0.0])
    origin, rot = palm_frame(xyz, HAND21)
    np.testing.assert_allclose(origin, wrist)
    np.testing.assert_allclose(rot[:, 0], [0, -1, 0], atol=1e-12)  # along the hand
    np.testing.assert_allclose(rot[:, 1], [1, 0, 0], atol=1e-12)  # towards the index
    np.testing.assert_allclose(rot[:, 2], [0, 0, 1], atol=1e-12)  # palm normal
    position, quat = palm_pose(xyz, HAND21)
    np.testing.assert_allclose(position, wrist)
    np.testing.assert_allclose(_quat_to_rotation(quat), rot, atol=1e-9)


def test_palm_pose_is_equivariant_under_rigid_motion():
    rng = np.random.default_rng(1)
    base = _hand([0.0, 0.0, 0.0], [0.03, -0.08, 0.01], [0.0, -0.09, 0.0])
    _, rot0 = palm_frame(base, HAND21)
    for _ in range(10):
        rot, shift = _random_rotation(rng), rng.uniform(-0.5, 0.5, 3)
        moved = base @ rot.T + shift
        origin, rot1 = palm_frame(moved, HAND21)
        np.testing.assert_allclose(origin, shift, atol=1e-12)
        np.testing.assert_allclose(rot1, rot @ rot0, atol=1e-9)


def test_palm_pose_unknown_or_degenerate():
    good = _hand([0, 0, 0.5], [0.03, -0.08, 0.5], [0, -0.09, 0.5])
    assert palm_pose(good, HAND21) is not None
    nan = good.copy()
    nan[5] = np.nan
    assert palm_pose(nan, HAND21) is None
    assert palm_pose(_hand([0, 0, 0.5], [0, -0.05, 0.5], [0, -0.09, 0.5]), HAND21) is None  # collinear
    assert palm_pose(_hand([0, 0, 0.5], [0, 0, 0.5], [0, -0.09, 0.5]), HAND21) is None  # coincident
    assert palm_pose(np.zeros((14, 3)), NYU14) is None  # no palm joints in the layout
    assert palm_pose(np.zeros((14, 3)), HAND21) is None  # wrong joint count
