"""The synthetic hand itself: anatomy tables, per-frame parameters, rotations, kinematics, pose priors.

Part of :mod:`handpose_core.data.synthetic` (which renders it and re-exports the public names).
Frames: hand local frame (right hand) with the origin at the wrist, +y towards the fingers, +x
towards the thumb, +z out of the palm; a left hand mirrors local x. The camera optical frame
(REP 103) is x right, y down, z forward, metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from handpose_core.errors import HandPoseError
from handpose_core.geometry import rotation_to_quaternion

# --------------------------------------------------------------------------------------------
# Anatomy tables (metres, degrees). Chains are thumb, index, middle, ring, little.
# --------------------------------------------------------------------------------------------

FINGERS = ("thumb", "index", "middle", "ring", "little")

ANGLE_NAMES: tuple[str, ...] = (
    ("thumb_cmc_flex", "thumb_cmc_abd", "thumb_mcp_flex", "thumb_ip_flex")
    + tuple(f"{f}_{p}" for f in FINGERS[1:] for p in ("mcp_flex", "mcp_abd", "pip_flex", "dip_flex"))
    + ("wrist_flex", "wrist_dev")
)
"""Order of :attr:`HandParams.joint_angles`. Flexion is positive towards the palm; finger abduction
is positive towards the thumb; thumb CMC abduction lifts the thumb out of the palm plane (palmar
abduction) and CMC flexion swings it across the palm (with coupled pronation: opposition)."""

_LIMITS = {
    "thumb_cmc_flex": (-15.0, 50.0),
    "thumb_cmc_abd": (0.0, 70.0),
    "thumb_mcp_flex": (-10.0, 60.0),
    "thumb_ip_flex": (-15.0, 80.0),
    "mcp_flex": (-20.0, 90.0),
    "mcp_abd": (-20.0, 20.0),
    "pip_flex": (0.0, 110.0),
    "dip_flex": (0.0, 80.0),
    "wrist_flex": (-60.0, 60.0),
    "wrist_dev": (-20.0, 30.0),
}
JOINT_LIMITS_DEG: dict[str, tuple[float, float]] = {
    name: _LIMITS.get(name, _LIMITS.get(name.split("_", 1)[-1])) for name in ANGLE_NAMES
}
"""Anatomical range of every angle in :data:`ANGLE_NAMES`, degrees (lo, hi)."""
ANGLE_LIMITS_DEG = np.array([JOINT_LIMITS_DEG[n] for n in ANGLE_NAMES], dtype=np.float64)
"""(22, 2) the same table as an array, rows in :data:`ANGLE_NAMES` order."""

# Nominal (scale 1) chain roots in the local frame: thumb CMC and the four MCPs.
_ROOTS_M = np.array(
    [
        [0.019, 0.025, 0.010],  # thumb CMC
        [0.025, 0.086, 0.000],  # index MCP
        [0.005, 0.090, -0.002],  # middle MCP: wrist -> middle MCP ~ 9 cm
        [-0.013, 0.085, 0.000],  # ring MCP
        [-0.029, 0.077, 0.003],  # little MCP
    ]
)
# Bone lengths along each chain: thumb metacarpal/proximal/distal, finger proximal/middle/distal.
_PHALANGES_M = np.array(
    [
        [0.043, 0.031, 0.026],
        [0.042, 0.025, 0.020],
        [0.046, 0.028, 0.021],
        [0.043, 0.027, 0.020],
        [0.034, 0.020, 0.019],
    ]
)
NOMINAL_BONE_LENGTHS_M = np.column_stack([np.linalg.norm(_ROOTS_M, axis=1), _PHALANGES_M]).reshape(-1)
"""(20,) nominal bone lengths in ``HAND21.edges`` order (wrist->root, then three per chain)."""
_ROOT_DIRS = _ROOTS_M / np.linalg.norm(_ROOTS_M, axis=1, keepdims=True)

_FINGER_SPLAY = np.deg2rad([8.0, 2.0, -5.0, -12.0])  # rest direction of index..little, + = radial
_SPREAD_DIR = np.deg2rad([14.0, 3.0, -9.0, -17.0])  # abduction pattern of a spread hand
_THUMB_REST = math.radians(42.0)  # thumb metacarpal direction in the palm plane, from +y to +x
_THUMB_PRONATION = math.radians(62.0)  # rest rotation of the thumb about its own axis

# Capsule radii (scale 1). Fingers taper from ~9.5 mm to ~7 mm.
_CHAIN_RADII_M = np.array(
    [
        [0.0125, 0.0105, 0.0095],
        [0.0095, 0.0085, 0.0077],
        [0.0098, 0.0088, 0.0079],
        [0.0092, 0.0083, 0.0075],
        [0.0082, 0.0074, 0.0068],
    ]
)
_TIP_INSET = 0.5  # the tip label sits this many tip radii inside the end of the fingertip
_PALM_RADIUS_M = 0.0115
_FOREARM_RADIUS_M = 0.0175
_FOREARM_HALF_WIDTH_M = 0.012

JOINT_RADIUS_M = np.array(
    [0.028] + [0.0135, 0.0125, 0.0105, 0.0095] + [_PALM_RADIUS_M, 0.0098, 0.0088, 0.0079] * 4,
    dtype=np.float64,
)
"""(21,) depth of each joint below the skin at scale 1, metres: the largest radius of the capsules
around it; for the wrist, half the width of the forearm (it is seen from the side as often as from
the palm). A joint is visible when the rendered surface at its pixel is no more than
``JOINT_RADIUS_M * scale + SynthConfig.visibility_margin_m`` in front of it; a joint hidden behind
its own bone (a finger pointing at the camera) counts as occluded."""

# Skin albedo anchors from light to dark (linear RGB in [0, 1]).
_SKIN_TONES = np.array([[0.96, 0.80, 0.70], [0.86, 0.64, 0.52], [0.66, 0.45, 0.33], [0.40, 0.27, 0.19]])


@dataclass
class HandParams:
    """Everything that defines the hand in one frame. Interpolable (:meth:`interpolate`).

    joint_angles:   (22,) radians, :data:`ANGLE_NAMES` order.
    rotation:       (4,) unit quaternion (w, x, y, z), hand local frame -> camera frame (a (3, 3)
                    rotation matrix is accepted and converted).
    translation_m:  (3,) palm centre in the camera frame, metres.
    scale:          global size factor applied to every length.
    bone_lengths_m: (20,) bone lengths before ``scale``, ``HAND21.edges`` order.
    forearm_length_m: 0 for no forearm.
    skin_rgb:       (3,) albedo in [0, 1]; light_dir: (3,) unit vector towards the light, camera
                    frame; light_intensity and ambient scale the Lambertian shading.
    articulation:   the prior ``joint_angles`` were drawn from (:func:`sample_joint_angles`):
                    ``"random"`` (each angle uniform within its limits) or a gesture name; ``""``
                    for hands not drawn by the generator. Evaluators report figures per prior.
    """

    joint_angles: np.ndarray
    rotation: np.ndarray
    translation_m: np.ndarray
    scale: float = 1.0
    bone_lengths_m: np.ndarray = field(default_factory=lambda: NOMINAL_BONE_LENGTHS_M.copy())
    is_left: bool = False
    forearm_length_m: float = 0.0
    skin_rgb: np.ndarray = field(default_factory=lambda: _SKIN_TONES[1].copy())
    light_dir: np.ndarray = field(default_factory=lambda: np.array([0.3, -0.5, -0.81]))
    light_intensity: float = 0.85
    ambient: float = 0.3
    articulation: str = ""

    def __post_init__(self) -> None:
        rot = np.asarray(self.rotation, dtype=np.float64)
        if rot.shape == (3, 3):
            rot = matrix_to_quat(rot)
        if rot.shape != (4,) or not np.all(np.isfinite(rot)) or np.linalg.norm(rot) < 1e-9:
            raise HandPoseError(f"rotation must be a (4,) quaternion or a (3, 3) matrix, got shape {rot.shape}")
        self.rotation = rot / np.linalg.norm(rot)

    @property
    def rotation_matrix(self) -> np.ndarray:
        """(3, 3) float64 hand local -> camera rotation."""
        return quat_to_matrix(self.rotation)

    @staticmethod
    def interpolate(a: HandParams, b: HandParams, w: float) -> HandParams:
        """Blend ``a`` (w = 0) to ``b`` (w = 1): linear for vectors, slerp for the rotation.

        Discrete fields (handedness, articulation) come from the nearer end.
        """
        lerp = lambda x, y: (1.0 - w) * np.asarray(x, float) + w * np.asarray(y, float)  # noqa: E731
        light = lerp(a.light_dir, b.light_dir)
        return HandParams(
            joint_angles=lerp(a.joint_angles, b.joint_angles),
            rotation=slerp(a.rotation, b.rotation, w),
            translation_m=lerp(a.translation_m, b.translation_m),
            scale=float(lerp(a.scale, b.scale)),
            bone_lengths_m=lerp(a.bone_lengths_m, b.bone_lengths_m),
            is_left=a.is_left if w < 0.5 else b.is_left,
            forearm_length_m=float(lerp(a.forearm_length_m, b.forearm_length_m)),
            skin_rgb=lerp(a.skin_rgb, b.skin_rgb),
            light_dir=light / max(np.linalg.norm(light), 1e-9),
            light_intensity=float(lerp(a.light_intensity, b.light_intensity)),
            ambient=float(lerp(a.ambient, b.ambient)),
            articulation=a.articulation if w < 0.5 else b.articulation,
        )


# --------------------------------------------------------------------------------------------
# Rotations
# --------------------------------------------------------------------------------------------


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(4,) quaternion (w, x, y, z), any norm -> (3, 3) rotation matrix."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> (4,) unit quaternion (w, x, y, z), w >= 0: this module's order of
    :func:`handpose_core.geometry.rotation_to_quaternion`, which returns ROS's (x, y, z, w)."""
    return np.roll(rotation_to_quaternion(m), 1)


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of (w, x, y, z) quaternions (rotation b first, then a)."""
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ]
    )


def slerp(q0: np.ndarray, q1: np.ndarray, w: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions along the shorter arc."""
    q0 = np.asarray(q0, float) / np.linalg.norm(q0)
    q1 = np.asarray(q1, float) / np.linalg.norm(q1)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + w * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(dot)
    return (math.sin((1 - w) * theta) * q0 + math.sin(w * theta) * q1) / math.sin(theta)


def random_quaternion(rng: np.random.Generator) -> np.ndarray:
    """Uniform over SO(3): a normalized 4-D Gaussian (w >= 0)."""
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def _axis_angle_quat(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    return np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * axis])


def _rot(axis: int, angles: np.ndarray) -> np.ndarray:
    """Batched rotation matrices (n, 3, 3) about local axis 0 (x), 1 (y) or 2 (z)."""
    angles = np.asarray(angles, dtype=np.float64)
    c, s = np.cos(angles), np.sin(angles)
    m = np.zeros(angles.shape + (3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m[..., axis, axis] = 1.0
    m[..., i, i] = c
    m[..., j, j] = c
    m[..., i, j] = -s
    m[..., j, i] = s
    return m


# --------------------------------------------------------------------------------------------
# Kinematics and geometry
# --------------------------------------------------------------------------------------------


def _chain_frames(params: HandParams) -> tuple[np.ndarray, np.ndarray]:
    """Local joints (21, 3) at scale 1 (right hand) and the three bone rotations (5, 3, 3, 3)."""
    a = np.asarray(params.joint_angles, dtype=np.float64)
    if a.shape != (len(ANGLE_NAMES),):
        raise HandPoseError(f"joint_angles must have shape ({len(ANGLE_NAMES)},), got {a.shape}")
    lengths = np.asarray(params.bone_lengths_m, dtype=np.float64).reshape(5, 4)
    fingers = a[4:20].reshape(4, 4)  # mcp_flex, mcp_abd, pip_flex, dip_flex
    # First bone of each chain: thumb metacarpal (CMC flexion + palmar abduction + pronation that
    # grows with both: opposition), finger proximal phalanges (abduction then MCP flexion).
    cmc_flex, cmc_abd = a[0], a[1]
    thumb = (
        _rot(2, -(_THUMB_REST - cmc_flex))
        @ _rot(0, cmc_abd)
        @ _rot(1, -(_THUMB_PRONATION + 0.5 * cmc_abd + 0.6 * cmc_flex))
    )
    first = np.concatenate([thumb[None], _rot(2, -(_FINGER_SPLAY + fingers[:, 1])) @ _rot(0, fingers[:, 0])])
    second = first @ _rot(0, np.concatenate([[a[2]], fingers[:, 2]]))
    third = second @ _rot(0, np.concatenate([[a[3]], fingers[:, 3]]))
    frames = np.stack([first, second, third], axis=1)  # (5, 3, 3, 3)
    bones = frames[:, :, :, 1] * lengths[:, 1:, None]  # local +y of each bone times its length
    roots = _ROOT_DIRS * lengths[:, :1]
    chain = roots[:, None, :] + np.concatenate([np.zeros((5, 1, 3)), np.cumsum(bones, axis=1)], axis=1)
    joints = np.concatenate([np.zeros((1, 3)), chain.reshape(20, 3)])
    return joints, frames


_TIPS = np.arange(4, 21, 4)
_MCPS = np.array([5, 9, 13, 17])


def _capsule_table() -> tuple[np.ndarray, np.ndarray]:
    """Endpoint indices (into :func:`_local_points`) and radii (scale 1) of the hand's capsules."""
    caps, radii = [], []
    for f in range(5):  # three per chain; the last one ends at the inset tip point 21 + f
        base = 4 * f + 1
        caps += [(base, base + 1), (base + 1, base + 2), (base + 2, 21 + f)]
        radii += list(_CHAIN_RADII_M[f])
    # Palm: metacarpals and three capsules between them (close enough that the palm has no
    # ribs), a bar across the knuckles, the thenar eminence and the thumb-index web.
    caps += [(26 + k, mcp) for k, mcp in enumerate(_MCPS)] + [(30 + k, 33 + k) for k in range(3)]
    radii += [_PALM_RADIUS_M] * 3 + [_PALM_RADIUS_M * 0.92] + [_PALM_RADIUS_M] * 3
    caps += [(5, 17), (1, 36), (37, 36), (38, 39)]
    radii += [0.0105, 0.0135, 0.0125, 0.0065]
    return np.array(caps), np.array(radii)


_CAPSULES, _CAPSULE_RADII_M = _capsule_table()


def _local_points(params: HandParams, frames_out: list | None = None):
    """Local points at scale 1 (right hand): 21 joints then the helper points of the capsules.

    Also returns the (n, 2) capsule endpoint indices and (n,) radii of the hand (no forearm).
    ``frames_out``, when given, receives the bone frames of :func:`_chain_frames`.
    """
    j, frames = _chain_frames(params)
    if frames_out is not None:
        frames_out.append(frames)
    tip_dir = j[_TIPS] - j[_TIPS - 1]
    tips = j[_TIPS] - (_TIP_INSET * _CHAIN_RADII_M[:, 2] / np.linalg.norm(tip_dir, axis=1))[:, None] * tip_dir
    mcps = j[_MCPS]
    bases = mcps * [0.55, 0.0, 1.0] + [0.0, 0.010, 0.0]
    thumb_dir = j[2] - j[1]
    helpers = np.concatenate(
        [
            tips,  # 21..25
            bases,  # 26..29 metacarpal bases
            0.5 * (bases[:-1] + bases[1:]),  # 30..32 between the bases
            0.5 * (mcps[:-1] + mcps[1:]) - [0.0, 0.004, 0.0],  # 33..35 between the knuckles
            [j[1] + 0.55 * thumb_dir, [0.010, 0.030, 0.004]],  # 36, 37 thenar
            [j[1] + 0.85 * thumb_dir, 0.55 * j[5] + 0.45 * j[6]],  # 38, 39 web
        ]
    )
    return np.concatenate([j, helpers]), (_CAPSULES, _CAPSULE_RADII_M)


def _to_camera(points: np.ndarray, params: HandParams) -> np.ndarray:
    """Local points (scale 1, right hand) -> camera frame: mirror, scale, rotate, translate."""
    pivot = 0.5 * (points[0] + points[9])
    local = (points - pivot) * float(params.scale)
    if params.is_left:
        local = local * np.array([-1.0, 1.0, 1.0])
    return local @ params.rotation_matrix.T + np.asarray(params.translation_m, dtype=np.float64)


def forward_kinematics(params: HandParams) -> np.ndarray:
    """(21, 3) float32 joints in the camera optical frame, metres, HAND21 order."""
    joints, _ = _chain_frames(params)
    return _to_camera(joints, params).astype(np.float32)


def hand_capsules(params: HandParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Capsules of the hand and forearm, camera frame, metres: ends A (n, 3), B (n, 3), radii (n,)."""
    return _hand_geometry(params)[1]


def _hand_geometry(params: HandParams):
    """One kinematics pass: joints (21, 3), capsules (A, B, r) and appearance directions, camera frame.

    Returns ``(joints, (a, b, r), dorsal, palm)``: ``dorsal`` (5, 3) unit vectors pointing out of
    the nail side of each distal phalanx, ``palm`` (3,) the palm's outward normal.
    """
    frames = []
    points, (caps, radii) = _local_points(params, frames)
    cam = _to_camera(points, params)
    a, b = cam[caps[:, 0]], cam[caps[:, 1]]
    r = radii * float(params.scale)
    if params.forearm_length_m > 0:
        fa = _forearm(params, cam)
        if fa is not None:
            a, b, r = np.concatenate([a, fa[0]]), np.concatenate([b, fa[1]]), np.concatenate([r, fa[2]])
    mirror = np.array([-1.0 if params.is_left else 1.0, 1.0, 1.0])
    rot = params.rotation_matrix
    dorsal = -(frames[0][:, 2, :, 2] * mirror) @ rot.T  # local +z of a bone points to its palm side
    palm = rot @ np.array([0.0, 0.0, 1.0])
    return cam[:21], (a, b, r), dorsal, palm


def _forearm(params: HandParams, cam_points: np.ndarray):
    """Two side-by-side capsules (a flattened forearm) from the wrist, bent by the wrist angles.

    Shortened when it points at the camera (it would hide the hand) or would reach behind z = 0.12 m.
    """
    wf, wd = params.joint_angles[20], params.joint_angles[21]
    frame = _rot(0, wf) @ _rot(2, wd)
    mirror = np.array([-1.0 if params.is_left else 1.0, 1.0, 1.0])
    rot = params.rotation_matrix
    direction = rot @ (mirror * (frame @ np.array([0.0, -1.0, 0.0])))
    side = rot @ (mirror * (frame @ np.array([1.0, 0.0, 0.0])))
    s = float(params.scale)
    length = params.forearm_length_m * s * float(np.clip((direction[2] + 0.6) / 0.4, 0.0, 1.0))
    wrist = cam_points[0] + direction * 0.004 * s
    if direction[2] < 0:
        length = min(length, (wrist[2] - 0.12) / -direction[2])
    if length < 0.01:
        return None
    starts = wrist + np.outer([1.0, -1.0], side * _FOREARM_HALF_WIDTH_M * s)
    return starts, starts + direction * length, np.full(2, _FOREARM_RADIUS_M * s)


# --------------------------------------------------------------------------------------------
# Pose sampling
# --------------------------------------------------------------------------------------------

# Gesture priors: per chain (flex-or-cmc_flex, abd-or-cmc_abd, second flex, third flex), degrees.
_GESTURES = {
    "open": [[-5, 15, 5, 5], [0, 0, 5, 3], [0, 0, 5, 3], [0, 0, 5, 3], [0, 0, 5, 3]],
    "relaxed": [[5, 25, 15, 15], [20, 0, 30, 20], [25, 0, 35, 23], [30, 0, 40, 27], [35, 0, 45, 30]],
    "fist": [[40, 35, 40, 35], [85, 0, 100, 65], [88, 0, 102, 68], [88, 0, 100, 66], [85, 0, 98, 65]],
    "point": [[40, 35, 40, 35], [0, 0, 5, 3], [88, 0, 102, 68], [88, 0, 100, 66], [85, 0, 98, 65]],
    "pinch": [[25, 55, 20, 25], [45, 0, 45, 30], [30, 0, 40, 27], [35, 0, 45, 30], [40, 0, 50, 33]],
}
GESTURES = tuple(_GESTURES)
RANDOM_ARTICULATION = "random"
"""The prior of hands whose finger angles are each uniform within their limits (no gesture)."""


def sample_joint_angles(rng: np.random.Generator, gesture_prob: float = 0.5) -> tuple[np.ndarray, str]:
    """(22,) radians within :data:`ANGLE_LIMITS_DEG`, and the prior used ("random" or a gesture).

    DIP follows 2/3 of PIP plus noise in every mode (the tendon coupling of real fingers). Finger
    abduction follows a shared spread pattern plus noise so that neighbours do not cross.
    """
    lo, hi = ANGLE_LIMITS_DEG[:, 0], ANGLE_LIMITS_DEG[:, 1]
    deg = np.zeros(len(ANGLE_NAMES))
    if rng.random() < gesture_prob:
        mode = GESTURES[rng.integers(len(GESTURES))]
        deg[:20] = np.asarray(_GESTURES[mode], dtype=np.float64).reshape(-1) + rng.normal(0.0, 7.0, 20)
        spread = rng.uniform(-0.1, 1.0) if mode in ("open", "relaxed", "point") else rng.uniform(-0.2, 0.3)
    else:
        mode = RANDOM_ARTICULATION
        deg[:20] = rng.uniform(lo[:20], hi[:20])
        spread = rng.uniform(-0.3, 1.0)
    fingers = deg[4:20].reshape(4, 4)  # view
    fingers[:, 1] = np.rad2deg(_SPREAD_DIR) * spread + rng.normal(0.0, 3.0, 4)
    fingers[:, 3] = np.clip(fingers[:, 2], 0.0, None) * (2.0 / 3.0) + rng.normal(0.0, 6.0, 4)
    deg[20:] = rng.uniform(lo[20:], hi[20:]) * 0.7
    return np.deg2rad(np.clip(deg, lo, hi)), mode


def _sample_skin(rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(0.0, len(_SKIN_TONES) - 1)
    k = min(int(t), len(_SKIN_TONES) - 2)
    base = (1 - (t - k)) * _SKIN_TONES[k] + (t - k) * _SKIN_TONES[k + 1]
    return np.clip(base * rng.normal(1.0, 0.04, 3), 0.05, 1.0)


def _sample_light(rng: np.random.Generator) -> np.ndarray:
    """A unit direction towards a light on the camera's side of the scene."""
    d = rng.standard_normal(3)
    d[2] = -abs(d[2]) - 0.8
    return d / np.linalg.norm(d)


