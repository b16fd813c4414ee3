"""Procedural articulated hand rendered to depth and RGB with exact labels.

The hand is a kinematic tree in the HAND21 order (see :mod:`handpose_core.keypoints`) with adult bone
lengths, anatomical joint-angle limits (:data:`ANGLE_LIMITS_DEG`) and a body made of capsules
(segment + radius): three per finger, overlapping ones for the palm, thenar and thumb web, two for
the forearm. Frames are rendered by analytic ray-capsule intersection on the pixels near the hand
(8x8 tiles culled per capsule, no per-pixel Python), so depth, surface normals and labels agree
exactly.

Frames
  * hand local frame (right hand): origin at the wrist, +y towards the fingers, +x towards the
    thumb, +z out of the palm. A left hand is the right hand with local x negated (a true mirror
    image), applied before the global transform.
  * camera optical frame (REP 103): x right, y down, z forward, metres. ``translation_m`` is where
    the palm centre (midpoint of wrist and middle MCP) lands.

Reproducibility: sample ``i`` of a generator with seed ``s`` draws its hand from
``np.random.default_rng([s, i])`` and its scene and sensor noise from ``default_rng([s, i, 1])``, so
any subset, order or worker split gives byte-identical frames for the same ``(s, i)``.

Sensor noise uses windows of a fixed table of Gaussian noise (a random offset per frame) rather
than fresh draws: drawing 300k normals costs more than rendering the hand.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from handpose_core.camera import DEFAULT_INTRINSICS, Intrinsics
from handpose_core.errors import HandPoseError

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

# --------------------------------------------------------------------------------------------
# Public data classes
# --------------------------------------------------------------------------------------------


@dataclass
class SynthConfig:
    """What the generator samples and renders. Probabilities are per frame."""

    intrinsics: Intrinsics = DEFAULT_INTRINSICS
    z_range_m: tuple[float, float] = (0.3, 1.0)  # palm-centre depth
    left_prob: float = 0.5
    forearm_prob: float = 0.7
    background_prob: float = 0.7  # a wall or table plane behind the hand
    clutter_prob: float = 0.3  # random boxes and spheres behind the hand
    depth_noise: bool = True
    edge_dropout: bool = True
    render_rgb: bool = True
    render_depth: bool = True
    gesture_prob: float = 0.5  # else joint angles uniform within limits
    scale_range: tuple[float, float] = (0.85, 1.15)  # global hand scale
    bone_jitter: float = 0.04  # relative std of each bone length (clipped to +-2.5 std)
    noise_mm_at_half_m: float = 1.5  # depth noise std at 0.5 m; grows with z^2
    edge_dropout_prob: float = 0.6  # chance that a pixel on a depth discontinuity has no return
    table_prob: float = 0.4  # share of background planes that are a table (else a wall)
    max_range_m: float = 2.5  # farther surfaces give no return (0)
    visibility_margin_m: float = 0.006

    def __post_init__(self) -> None:
        self.intrinsics = Intrinsics.from_tuple(self.intrinsics)
        z0, z1 = (float(v) for v in self.z_range_m)
        if not (0.1 <= z0 <= z1 < self.max_range_m):
            raise HandPoseError(f"z_range_m must satisfy 0.1 <= near <= far < max_range_m, got {self.z_range_m}")
        for name in (
            "left_prob",
            "forearm_prob",
            "background_prob",
            "clutter_prob",
            "gesture_prob",
            "edge_dropout_prob",
            "table_prob",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise HandPoseError(f"{name} must be in [0, 1], got {value}")
        s0, s1 = self.scale_range
        if not 0.1 < s0 <= s1:
            raise HandPoseError(f"scale_range must be positive and ordered, got {self.scale_range}")


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

        Discrete fields (handedness) come from the nearer end.
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
        )


@dataclass
class SceneParams:
    """What surrounds the hand: all of it behind the hand, so it never occludes it.

    plane: (4,) (nx, ny, nz, d) with n a unit normal towards the camera and n.x = d on the plane,
    or None. spheres: (K, 7) centre (3), radius, rgb (3). boxes: (K, 18) centre (3), half sizes
    (3), rotation box -> camera (9, row-major), rgb (3). Metres, camera frame, rgb in [0, 1].
    ``rgb_seed`` seeds the RGB background picture (:func:`background_rgb`).
    """

    plane: np.ndarray | None = None
    spheres: np.ndarray = field(default_factory=lambda: np.zeros((0, 7)))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 18)))
    rgb_seed: int = 0


@dataclass
class SynthSample:
    """One rendered frame and its labels.

    depth_mm:  (H, W) uint16 millimetres, 0 = no return; None when depth is not rendered.
    rgb:       (H, W, 3) uint8; None when RGB is not rendered.
    xyz_m:     (21, 3) float32 joints, camera optical frame, metres, HAND21 order.
    uv_px:     (21, 2) float32 exact projection of ``xyz_m`` (may lie outside the image).
    visible:   (21,) bool, joint inside the image and not occluded (the surface at its pixel is at
               most the local flesh radius plus a margin in front of it, see :data:`JOINT_RADIUS_M`).
    intrinsics, is_left, params: the camera and the hand that made the frame; scene: what was
    around it; index: the generator index for ``hands[index]`` frames.
    """

    depth_mm: np.ndarray | None
    rgb: np.ndarray | None
    xyz_m: np.ndarray
    uv_px: np.ndarray
    visible: np.ndarray
    intrinsics: Intrinsics
    is_left: bool
    params: HandParams
    scene: SceneParams | None = None
    index: int = -1  # generator index (``hands[index]``); -1 for frames of a trajectory or render()


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
    """(3, 3) rotation matrix -> (4,) unit quaternion (w, x, y, z), w >= 0."""
    m = np.asarray(m, dtype=np.float64)
    w = math.sqrt(max(0.0, 1.0 + m[0, 0] + m[1, 1] + m[2, 2])) / 2.0
    x = math.copysign(math.sqrt(max(0.0, 1.0 + m[0, 0] - m[1, 1] - m[2, 2])) / 2.0, m[2, 1] - m[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1.0 - m[0, 0] + m[1, 1] - m[2, 2])) / 2.0, m[0, 2] - m[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1.0 - m[0, 0] - m[1, 1] + m[2, 2])) / 2.0, m[1, 0] - m[0, 1])
    q = np.array([w, x, y, z])
    return q / np.linalg.norm(q)


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
        mode = "random"
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


# --------------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------------

_TILE = 8
_KEY_BITS = 6  # capsule id bits in the packed (depth, id) key: at most 63 capsules
_KEY_MASK = np.uint32((1 << _KEY_BITS) - 1)
_FAR = np.float32(1e3)  # "no surface" in the float depth buffer, metres (low 6 bits are 0)
_KEY_MISS = np.array(_FAR).view(np.uint32) | _KEY_MASK


def _capsule_pixel_bounds(a, b, r, intr: Intrinsics):
    """Projected endpoints (n, 2) and a conservative image radius (n,) of each capsule, pixels.

    A sphere of radius r at c projects inside a disc of radius f r sqrt(1 + |c_xy / c_z|^2) /
    (c_z - r) around the projection of c; the worst case along the segment is at an endpoint.
    """
    fx, fy, cx, cy = intr.as_tuple()
    uva = np.column_stack([fx * a[:, 0] / a[:, 2] + cx, fy * a[:, 1] / a[:, 2] + cy])
    uvb = np.column_stack([fx * b[:, 0] / b[:, 2] + cx, fy * b[:, 1] / b[:, 2] + cy])
    tan2 = np.maximum((a[:, :2] ** 2).sum(1) / a[:, 2] ** 2, (b[:, :2] ** 2).sum(1) / b[:, 2] ** 2)
    zmin = np.minimum(a[:, 2], b[:, 2]) - r
    rpx = max(fx, fy) * r * np.sqrt(1.0 + tan2) / np.maximum(zmin, 1e-3) + 1.0
    return uva, uvb, rpx


def _tile_pairs(uva, uvb, rpx, u0, v0, ntx, nty):
    """(tile, capsule) index pairs whose tile may see the capsule, sorted by tile (row-major)."""
    t = _TILE
    cu = (u0 + t * np.arange(ntx, dtype=np.float32) + (t - 1) / 2.0)[None, :, None]
    cv = (v0 + t * np.arange(nty, dtype=np.float32) + (t - 1) / 2.0)[:, None, None]
    f32 = lambda x: x.astype(np.float32)  # noqa: E731
    ua, va = f32(uva[:, 0]), f32(uva[:, 1])
    abu, abv = f32(uvb[:, 0] - uva[:, 0]), f32(uvb[:, 1] - uva[:, 1])
    inv = f32(1.0 / np.maximum((uvb - uva) ** 2 @ np.ones(2), 1e-9))
    eu, ev = cu - ua, cv - va  # (1, ntx, n), (nty, 1, n)
    w = np.clip((eu * abu + ev * abv) * inv, 0.0, 1.0)
    eu = eu - w * abu
    ev = ev - w * abv
    reach = f32((rpx + t * 0.7072) ** 2)
    tile_id, cap_id = np.nonzero((eu * eu + ev * ev <= reach).reshape(nty * ntx, -1))
    return tile_id, cap_id


_PAIR_CHUNK = 192  # (tile, capsule) pairs per chunk: 192 x 64 float32 temporaries of 48 KiB


def _capsule_keys(consts: np.ndarray, du: np.ndarray, dv: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Packed (depth, id) keys of the first hit of each pixel ray with its pair's capsule.

    consts: (10, 1, p) float32 rows: tile ray offset dx0, dy0, end a (3), axis b - a (3), |b - a|^2,
    r^2. du, dv: (64, 1) in-tile ray offsets. Returns (64, p) uint32.

    Rays d = (dx, dy, 1) are re-based at their point of depth a_z (ro = a_z d): the quadratic's
    terms are then hand-sized and float32 keeps ~0.01 mm. Misses come out as NaN (sqrt of a
    negative); comparisons with NaN are False and fmin skips NaN, so no masks are needed, and
    blends are arithmetic (np.where on random masks costs ~40x a multiply).
    """
    dx0, dy0, ax, ay, az, bax, bay, baz, baba, r2 = consts
    dx = dx0 + du
    dy = dy0 + dv
    oax = az * dx - ax
    oay = az * dy - ay
    bard = bax * dx + bay * dy + baz
    baoa = bax * oax + bay * oay
    rdoa = dx * oax + dy * oay
    m = oax * oax + oay * oay - r2  # |oa|^2 - r^2
    rdrd = dx * dx + dy * dy + np.float32(1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        qa = baba * rdrd - bard * bard
        qb = baba * rdoa - baoa * bard
        h = qb * qb - qa * (baba * m - baoa * baoa)
        s = (-qb - np.sqrt(h)) / qa
        y = baoa + s * bard
        body = (y > 0) & (y < baba)
        # Off the cylinder body the entry is on the end sphere on the side the ray came from.
        cap_b = ~(y <= 0)
        b2 = rdoa - cap_b * bard
        c2 = m + cap_b * (baba - 2 * baoa)
        s2 = (-b2 - np.sqrt(b2 * b2 - rdrd * c2)) / rdrd
        # z / False = inf drops body entries that are off the body; a valid body entry is never
        # behind the end-sphere entry.
        z = np.fmin(np.fmin((az + s) / body, az + s2), _FAR)
    # Positive float32 bit patterns sort like the floats; the low 6 bits (< 0.02 mm at 2 m)
    # carry the capsule id, so one min-reduction picks the nearest hit and its capsule.
    return (z.view(np.uint32) & ~_KEY_MASK) | ids


def raycast_capsules(a: np.ndarray, b: np.ndarray, r: np.ndarray, intr: Intrinsics):
    """Nearest ray hit with a set of capsules, on the pixels near them.

    a, b: (n, 3) segment ends, r: (n,) radii, camera frame, metres, all in front of the camera
    (z > r). Returns ``(u0, v0, z, ids)``: the window's top-left pixel, (h, w) float32 depth in
    metres (``_FAR`` where nothing is hit) and (h, w) int16 capsule index (meaningful where
    something is hit); or None when no capsule is in the image. Pixel rays are
    ((u - cx) / fx, (v - cy) / fy, 1), so the ray parameter is the depth z. Work is done on
    (8x8 tile, capsule) pairs whose 2D bounds touch.
    """
    n = len(a)
    if n == 0:
        return None
    if n >= (1 << _KEY_BITS):
        raise HandPoseError(f"at most {(1 << _KEY_BITS) - 1} capsules can be ray cast at once, got {n}")
    if np.any(np.minimum(a[:, 2], b[:, 2]) - r <= 0.01):
        raise HandPoseError("capsules must lie in front of the camera (z - r > 1 cm)")
    width, height = int(intr.width), int(intr.height)
    fx, fy, cx, cy = intr.as_tuple()
    uva, uvb, rpx = _capsule_pixel_bounds(a, b, r, intr)
    lo = np.minimum(uva, uvb) - rpx[:, None]
    hi = np.maximum(uva, uvb) + rpx[:, None]
    u0, v0 = max(0, int(math.floor(lo[:, 0].min()))), max(0, int(math.floor(lo[:, 1].min())))
    u1, v1 = min(width, int(math.ceil(hi[:, 0].max())) + 1), min(height, int(math.ceil(hi[:, 1].max())) + 1)
    if u1 <= u0 or v1 <= v0:
        return None
    t = _TILE
    ntx, nty = -(-(u1 - u0) // t), -(-(v1 - v0) // t)
    tile_id, cap_id = _tile_pairs(uva, uvb, rpx, u0, v0, ntx, nty)
    if tile_id.size == 0:
        return None

    key = np.empty((t * t, tile_id.size), dtype=np.uint32)
    off = np.arange(t * t)
    du = ((off % t) / fx).astype(np.float32)[:, None]
    dv = ((off // t) / fy).astype(np.float32)[:, None]
    ba = b - a
    consts = np.concatenate(
        [
            [(u0 + t * (tile_id % ntx) - cx) / fx, (v0 + t * (tile_id // ntx) - cy) / fy],
            a[cap_id].T,
            ba[cap_id].T,
            [(ba * ba).sum(1)[cap_id], r[cap_id] ** 2],
        ]
    ).astype(np.float32)[:, None, :]  # (10, 1, pairs)
    ids32 = cap_id.astype(np.uint32)
    # Chunks keep every temporary small: large numpy temporaries are fresh mmaps (page faults)
    # and cost more than the arithmetic.
    for c0 in range(0, tile_id.size, _PAIR_CHUNK):
        c1 = min(c0 + _PAIR_CHUNK, tile_id.size)
        key[:, c0:c1] = _capsule_keys(consts[..., c0:c1], du, dv, ids32[c0:c1])
    starts = np.flatnonzero(np.r_[True, tile_id[1:] != tile_id[:-1]])
    best = np.minimum.reduceat(key, starts, axis=1)
    tiles = np.full((nty * ntx, t * t), _KEY_MISS, dtype=np.uint32)
    tiles[tile_id[starts]] = best.T
    img = tiles.reshape(nty, ntx, t, t).transpose(0, 2, 1, 3).reshape(nty * t, ntx * t)[: v1 - v0, : u1 - u0]
    depth = (img & ~_KEY_MASK).view(np.float32)
    ids = (img & _KEY_MASK).astype(np.int16)
    return u0, v0, depth, ids


def _capsule_normals(caps, u, v, z, ids, intr: Intrinsics):
    """Outward unit normals (nx, ny, nz) at pixels (u, v) hit at depth z on capsules ``ids``, and
    the hit's position along each capsule's axis (0 at A, 1 at B); each (n,) float32."""
    a, b, r = caps
    fx, fy, cx, cy = intr.as_tuple()
    ba = b - a
    inv_len2 = 1.0 / np.maximum((ba * ba).sum(1), 1e-12)
    table = np.concatenate([a, ba, inv_len2[:, None], 1.0 / r[:, None]], axis=1).T.astype(np.float32)
    ax, ay, az, bx, by, bz, il, ir = (row[ids] for row in table)
    px = (u.astype(np.float32) - np.float32(cx)) * np.float32(1.0 / fx) * z - ax
    py = (v.astype(np.float32) - np.float32(cy)) * np.float32(1.0 / fy) * z - ay
    pz = z - az
    w = np.clip((px * bx + py * by + pz * bz) * il, 0.0, 1.0)
    # On the surface the distance to the axis is exactly r.
    return (px - w * bx) * ir, (py - w * by) * ir, (pz - w * bz) * ir, w


def _union_box(boxes):
    """Union (u0, v0, w, h) of pixel boxes given as (u0, v0, w, h); None for none."""
    if not boxes:
        return None
    arr = np.array(boxes)
    u0, v0 = arr[:, 0].min(), arr[:, 1].min()
    return int(u0), int(v0), int((arr[:, 0] + arr[:, 2]).max() - u0), int((arr[:, 1] + arr[:, 3]).max() - v0)


def _raycast_box(box: np.ndarray, intr: Intrinsics):
    """Slab intersection of one oriented box over its projected bounds.

    box: (18,) centre (3), half sizes (3), rotation box -> camera (9), rgb (3).
    Returns (u0, v0, z (h, w) float32 with _FAR = miss, normals (h, w, 3) float32) or None.
    """
    centre, half, rot = box[:3], box[3:6], box[6:15].reshape(3, 3)
    corners = centre + (np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T * half) @ rot.T
    uv = intr.project(corners)
    u0, v0 = max(0, int(uv[:, 0].min())), max(0, int(uv[:, 1].min()))
    u1 = min(int(intr.width), int(math.ceil(uv[:, 0].max())) + 1)
    v1 = min(int(intr.height), int(math.ceil(uv[:, 1].max())) + 1)
    if u1 <= u0 or v1 <= v0:
        return None
    fx, fy, cx, cy = intr.as_tuple()
    dx = ((np.arange(u0, u1) - cx) / fx).astype(np.float32)[None, :]
    dy = ((np.arange(v0, v1) - cy) / fy).astype(np.float32)[:, None]
    origin = (-rot.T @ centre).astype(np.float32)  # camera centre in box coordinates
    tnear = np.full((v1 - v0, u1 - u0), -np.inf, np.float32)
    tfar = np.full_like(tnear, np.inf)
    axis = np.zeros(tnear.shape, np.int8)
    sign = np.zeros(tnear.shape, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            d = rot[0, k] * dx + rot[1, k] * dy + np.float32(rot[2, k])  # ray direction, box axis k
            t1 = (-half[k] - origin[k]) / d
            t2 = (half[k] - origin[k]) / d
            near = np.minimum(t1, t2)
            better = near > tnear
            tnear = np.where(better, near, tnear)
            axis[better] = k
            sign = np.where(better, -np.sign(d), sign)
            tfar = np.minimum(tfar, np.maximum(t1, t2))
    hit = (tnear <= tfar) & (tnear > 0)
    z = np.where(hit, tnear, _FAR).astype(np.float32)
    normals = rot.T[axis] * sign[..., None]  # (h, w, 3): rows of rot.T are box axes in camera frame
    return u0, v0, z, normals.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Noise tables and backgrounds
# --------------------------------------------------------------------------------------------

_NOISE_PAD = 768


@functools.lru_cache(maxsize=4)
def _noise_table(height: int, width: int) -> np.ndarray:
    """Fixed standard-normal table; frames use windows of it at random offsets (~600k of them for
    640x480): drawing fresh normals would cost more than rendering the hand. Read-only, shared."""
    table = np.random.default_rng(0x5EED).standard_normal((height + _NOISE_PAD, width + _NOISE_PAD), np.float32)
    table.setflags(write=False)
    return table


def _noise_window(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) float32 standard-normal noise: a window of the fixed table at a random offset."""
    table = _noise_table(height, width)
    oy, ox = rng.integers(0, _NOISE_PAD + 1, size=2)
    return table[oy : oy + height, ox : ox + width]


def _noise_vector(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) float32 standard-normal noise from the fixed table (fresh draws beyond its ~1M values)."""
    flat = _noise_table(256, 256).reshape(-1)
    if n > flat.size:
        return rng.standard_normal(n, dtype=np.float32)
    start = int(rng.integers(0, flat.size - n + 1))
    return flat[start : start + n]


@functools.lru_cache(maxsize=2)
def background_rgb(seed: int, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 random background: colour gradient, optional noise texture and shapes.

    The smooth part is drawn at quarter resolution and upsampled; shapes are drawn at full
    resolution so their edges stay sharp. Cached and read-only: callers copy.
    """
    rng = np.random.default_rng(seed)
    hq, wq = max(1, height // 4), max(1, width // 4)
    corners = rng.uniform(0, 255, (2, 2, 3)).astype(np.float32)
    img = cv2.resize(corners, (wq, hq), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.7:
        for cell in rng.choice([1, 2, 4, 8], size=rng.integers(1, 3), replace=False):
            amp = rng.uniform(10, 60)
            small = rng.random((hq // cell + 2, wq // cell + 2, 1 if rng.random() < 0.5 else 3), np.float32)
            small = cv2.resize((small - 0.5) * amp, (wq, hq), interpolation=cv2.INTER_LINEAR)
            img += small.reshape(hq, wq, -1)
    out = cv2.resize(np.clip(img, 0, 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.7:
        scale = max(width, height)
        for _ in range(int(rng.integers(1, 9))):
            colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
            p = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            q = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 8))
            kind = rng.integers(3)
            if kind == 0:
                cv2.rectangle(out, p, q, colour, thick)
            elif kind == 1:
                cv2.circle(out, p, int(rng.integers(5, max(6, scale // 6))), colour, thick)
            else:
                cv2.line(out, p, q, colour, max(1, thick))
    out.setflags(write=False)
    return out


def _shade(albedo: np.ndarray, normals: np.ndarray, light: np.ndarray, intensity: float, ambient: float):
    """Lambertian with a little wrap (skin scatters light past the terminator): (n, 3) in [0, 1]."""
    ndl = normals @ np.asarray(light, dtype=np.float32)
    diffuse = np.maximum((ndl + np.float32(0.25)) * np.float32(1.0 / 1.25), np.float32(0.0))
    return albedo * (np.float32(ambient) + np.float32(intensity) * diffuse)[..., None]


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------


class SyntheticHands:
    """Seeded, indexable source of synthetic hand frames.

    ``hands[i]`` is ``render(sample_params(i), i)``; the same ``(seed, i)`` always gives the same
    bytes. ``trajectory`` yields a smoothly moving hand for demos and tracking tests. An instance
    keeps scratch buffers between frames: use one instance per thread (processes, e.g. data
    loader workers, each have their own copy anyway).
    """

    def __init__(self, config: SynthConfig | None = None, seed: int = 0):
        self.config = config if config is not None else SynthConfig()
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise HandPoseError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)

    # -- sampling --------------------------------------------------------------------------
    def sample_params(self, index: int) -> HandParams:
        """The hand of frame ``index``, drawn from ``np.random.default_rng([seed, index])``."""
        rng = np.random.default_rng([self.seed, self._check_index(index)])
        cfg = self.config
        angles, _ = sample_joint_angles(rng, cfg.gesture_prob)
        is_left = bool(rng.random() < cfg.left_prob)
        scale = float(rng.uniform(*cfg.scale_range))
        jitter = np.clip(rng.normal(0.0, cfg.bone_jitter, 20), -2.5 * cfg.bone_jitter, 2.5 * cfg.bone_jitter)
        rotation = random_quaternion(rng)
        translation = self._sample_position(rng)
        forearm = float(rng.uniform(0.10, 0.25)) if rng.random() < cfg.forearm_prob else 0.0
        return HandParams(
            joint_angles=angles,
            rotation=rotation,
            translation_m=translation,
            scale=scale,
            bone_lengths_m=NOMINAL_BONE_LENGTHS_M * (1.0 + jitter),
            is_left=is_left,
            forearm_length_m=forearm,
            skin_rgb=_sample_skin(rng),
            light_dir=_sample_light(rng),
            light_intensity=float(rng.uniform(0.55, 1.0)),
            ambient=float(rng.uniform(0.15, 0.4)),
        )

    def _sample_position(self, rng: np.random.Generator, z: float | None = None) -> np.ndarray:
        """Palm centre: depth in ``z_range_m``, projection inside the image away from its border."""
        intr = self.config.intrinsics
        if z is None:
            z = float(rng.uniform(*self.config.z_range_m))
        mu = min(0.06 * intr.fx / z, 0.4 * intr.width)
        mv = min(0.06 * intr.fy / z, 0.4 * intr.height)
        u = rng.uniform(mu, intr.width - 1 - mu)
        v = rng.uniform(mv, intr.height - 1 - mv)
        return intr.backproject(np.array([u, v]), z)

    def sample_scene(self, rng: np.random.Generator, hand_points: np.ndarray, hand_radius: float) -> SceneParams:
        """Background plane and clutter placed strictly behind ``hand_points`` (k, 3) metres."""
        cfg = self.config
        intr = cfg.intrinsics
        gap = 0.03
        zmax = float(hand_points[:, 2].max()) + hand_radius
        plane = None
        if rng.random() < cfg.background_prob:
            if rng.random() < cfg.table_prob:
                # A table below the hand (image down is +y), seen from above at some slant.
                n = np.array([rng.uniform(-0.25, 0.25), -1.0, -rng.uniform(0.2, 1.2)])
            else:
                n = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), -1.0])
            n /= np.linalg.norm(n)
            # n.x = d with the camera (n.0 = 0 > d) and the whole hand on the same side: then no
            # line of sight to the hand crosses the plane.
            d = float((hand_points @ n).min()) - hand_radius - gap - rng.uniform(0.0, 0.5)
            if d < 0:
                plane = np.concatenate([n, [d]])
        spheres = np.zeros((0, 7))
        boxes = np.zeros((0, 18))
        if rng.random() < cfg.clutter_prob:
            ns, nb = int(rng.integers(0, 4)), int(rng.integers(0, 3))
            if ns + nb == 0:
                ns = 1
            sph = []
            for _ in range(ns):
                rad = rng.uniform(0.03, 0.12)
                z = zmax + gap + rad + rng.uniform(0.0, 0.8)
                c = intr.backproject(np.array([rng.uniform(0, intr.width), rng.uniform(0, intr.height)]), z)
                sph.append(np.concatenate([c, [rad], rng.uniform(0.1, 1.0, 3)]))
            bx = []
            for _ in range(nb):
                half = rng.uniform(0.03, 0.15, 3)
                z = zmax + gap + np.linalg.norm(half) + rng.uniform(0.0, 0.8)
                c = intr.backproject(np.array([rng.uniform(0, intr.width), rng.uniform(0, intr.height)]), z)
                rot = quat_to_matrix(random_quaternion(rng))
                bx.append(np.concatenate([c, half, rot.reshape(-1), rng.uniform(0.1, 1.0, 3)]))
            spheres = np.array(sph).reshape(-1, 7)
            boxes = np.array(bx).reshape(-1, 18)
        return SceneParams(plane=plane, spheres=spheres, boxes=boxes, rgb_seed=int(rng.integers(1 << 31)))

    # -- rendering ---------------------------------------------------------------------------
    def __getitem__(self, index: int) -> SynthSample:
        sample = self.render(self.sample_params(index), index)
        sample.index = int(index)
        return sample

    def render(self, params: HandParams, rng_index: int = 0, scene: SceneParams | None = None) -> SynthSample:
        """Render ``params``. Scene (when not given) and sensor noise come from
        ``default_rng([seed, rng_index, 1])``."""
        rng = np.random.default_rng([self.seed, self._check_index(rng_index), 1])
        geometry = _hand_geometry(params)
        if scene is None:
            caps = geometry[1]
            scene = self.sample_scene(rng, np.concatenate([caps[0], caps[1]]), float(caps[2].max()))
        return self._render(params, geometry, scene, rng)

    def _render(self, params: HandParams, geometry, scene: SceneParams, rng: np.random.Generator) -> SynthSample:
        cfg = self.config
        intr = cfg.intrinsics
        height, width = int(intr.height), int(intr.width)
        xyz = geometry[0].astype(np.float32)
        caps = geometry[1]
        if np.any(xyz[:, 2] <= 0.05):
            raise HandPoseError("the hand must be in front of the camera (z > 5 cm)")
        uv = intr.project(xyz).astype(np.float32)

        # -- geometry: nearest surface per pixel (float32 metres, _FAR = nothing) -----------
        # Full-frame float buffers are reused between frames: a fresh 1.2 MB array costs ~300
        # page faults, more than the arithmetic done on it.
        depth, tmp, tmp2 = self._buffers(height, width)
        if scene.plane is not None:
            # 1/z of a plane is affine in the pixel ray: inv = (n . d) / plane_d, > 0 in front.
            n, d = scene.plane[:3], scene.plane[3]
            row = (n[0] * (np.arange(width) - intr.cx) / intr.fx / d).astype(np.float32)
            col = ((n[1] * (np.arange(height) - intr.cy) / intr.fy + n[2]) / d).astype(np.float32)
            np.add(col[:, None], row[None, :], out=tmp)
            np.maximum(tmp, np.float32(1.0 / _FAR), out=tmp)
            np.divide(np.float32(1.0), tmp, out=depth)
        else:
            depth.fill(_FAR)
        windows = []  # (u0, v0, z, ids or normals, kind) of everything drawn on top of the plane
        for box in scene.boxes:
            hit = _raycast_box(box, intr)
            if hit is not None:
                bu, bv, bz, bn = hit
                win = depth[bv : bv + bz.shape[0], bu : bu + bz.shape[1]]
                np.minimum(win, bz, out=win)
                windows.append((bu, bv, bz, bn, box[15:18]))
        hand_a, hand_b, hand_r = caps
        sph = scene.spheres
        a = np.concatenate([hand_a, sph[:, :3]])
        b = np.concatenate([hand_b, sph[:, :3]])
        r = np.concatenate([hand_r, sph[:, 3]])
        cast = raycast_capsules(a, b, r, intr)
        if cast is not None:
            cu, cv, cz, cid = cast
            win = depth[cv : cv + cz.shape[0], cu : cu + cz.shape[1]]
            np.minimum(win, cz, out=win)

        # -- labels -------------------------------------------------------------------------
        px = np.rint(uv).astype(np.int64)
        inside = (px[:, 0] >= 0) & (px[:, 0] < width) & (px[:, 1] >= 0) & (px[:, 1] < height)
        surface = np.full(21, _FAR, dtype=np.float32)
        surface[inside] = depth[px[inside, 1], px[inside, 0]]
        tolerance = JOINT_RADIUS_M * params.scale + cfg.visibility_margin_m
        visible = inside & (surface >= xyz[:, 2] - tolerance)

        # -- depth image ---------------------------------------------------------------------
        depth_mm = None
        if cfg.render_depth:
            depth_mm = np.zeros((height, width), dtype=np.uint16)
            if scene.plane is not None:
                box = (0, 0, width, height)
            else:
                box = _union_box(
                    [(w[0], w[1], w[2].shape[1], w[2].shape[0]) for w in windows]
                    + ([(cu, cv, cz.shape[1], cz.shape[0])] if cast is not None else [])
                )
            if box is not None:
                u0, v0, w, h = box
                # No return beyond max_range_m (and none where nothing was hit: _FAR).
                z = tmp[:h, :w]
                cv2.threshold(depth[v0 : v0 + h, u0 : u0 + w], cfg.max_range_m, 0.0, cv2.THRESH_TOZERO_INV, dst=z)
                # A background plane behind the camera or hit at grazing angles can give -inf or NaN:
                # no return there, like a real sensor.
                np.copyto(z, np.float32(0.0), where=~(z > 0))
                noisy = tmp2[:h, :w]
                if cfg.depth_noise:
                    sigma = np.float32(cfg.noise_mm_at_half_m * 1e-3 / 0.25)  # std = sigma z^2
                    np.multiply(z, z, out=noisy)
                    noisy *= _noise_window(rng, height, width)[v0 : v0 + h, u0 : u0 + w]
                    noisy *= sigma
                    noisy += z
                else:
                    noisy[...] = z
                noisy *= np.float32(1000.0)
                noisy += np.float32(0.5)
                depth_mm[v0 : v0 + h, u0 : u0 + w] = noisy
                if cfg.edge_dropout and cast is not None:
                    self._drop_edges(depth_mm, depth, (cu, cv, cz.shape[1], cz.shape[0]), rng)

        # -- colour image --------------------------------------------------------------------
        rgb = None
        if cfg.render_rgb:
            rgb = background_rgb(scene.rgb_seed, height, width).copy()
            light = (params.light_dir / np.linalg.norm(params.light_dir)).astype(np.float32)
            for bu, bv, bz, bn, colour in windows:
                front = (bz < _FAR) & (bz <= depth[bv : bv + bz.shape[0], bu : bu + bz.shape[1]])
                win = rgb[bv : bv + bz.shape[0], bu : bu + bz.shape[1]]
                shaded = _shade(colour.astype(np.float32), bn[front], light, params.light_intensity, params.ambient)
                win[front] = np.clip(shaded * 255.0, 0, 255).astype(np.uint8)
            if cast is not None:
                self._shade_capsules(rgb, depth, cast, (a, b, r), len(hand_a), sph, params, light, geometry[2:], rng)
        return SynthSample(
            depth_mm=depth_mm,
            rgb=rgb,
            xyz_m=xyz,
            uv_px=uv,
            visible=visible,
            intrinsics=intr,
            is_left=bool(params.is_left),
            params=params,
            scene=scene,
        )

    def _buffers(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Three (H, W) float32 scratch buffers owned by this instance (one instance per thread)."""
        bufs = getattr(self, "_scratch", None)
        if bufs is None or bufs[0].shape != (height, width):
            bufs = tuple(np.empty((height, width), np.float32) for _ in range(3))
            self._scratch = bufs
        return bufs

    def _drop_edges(self, depth_mm: np.ndarray, depth: np.ndarray, box, rng: np.random.Generator) -> None:
        """Zero a random share of the pixels on depth discontinuities near the hand (in place)."""
        u0, v0, w, h = box
        u0, v0 = max(0, u0 - 2), max(0, v0 - 2)
        u1, v1 = min(depth.shape[1], u0 + w + 4), min(depth.shape[0], v0 + h + 4)
        win = depth[v0:v1, u0:u1]
        kernel = np.ones((3, 3), np.uint8)
        jump = cv2.dilate(win, kernel)
        with np.errstate(invalid="ignore"):  # NaN (no surface) compares False: no dropout there
            jump -= cv2.erode(win, kernel)
            jump -= np.float32(0.02) * win
            k = np.flatnonzero(jump > np.float32(0.01))
        k = k[rng.random(k.size) < self.config.edge_dropout_prob]
        ys, xs = np.divmod(k, win.shape[1])
        depth_mm[ys + v0, xs + u0] = 0

    def _shade_capsules(self, rgb, depth, cast, caps, n_hand, spheres, params: HandParams, light, looks, rng):
        """Skin (and sphere) shading of the ray-cast window, then a light blur against aliasing.

        ``looks`` = (dorsal (5, 3), palm (3,)) from :func:`_hand_geometry`: nails go on the dorsal
        half of each fingertip, and the palm side is a little lighter than the back of the hand.
        """
        cu, cv, cz, cid = cast
        h, w = cz.shape
        k = np.flatnonzero((cz < _FAR) & (cz <= depth[cv : cv + h, cu : cu + w]))
        if k.size == 0:
            return
        vs, us = np.divmod(k, w)
        ids = cid.reshape(-1)[k]
        nx, ny, nz, along = _capsule_normals(caps, us + cu, vs + cv, cz.reshape(-1)[k], ids, self.config.intrinsics)
        # Lambert with a little wrap (skin scatters light past the terminator), darker where the
        # surface turns away from the viewer (a soft silhouette, as on real skin).
        ndl = nx * light[0] + ny * light[1] + nz * light[2]
        diffuse = np.maximum((ndl + np.float32(0.25)) * np.float32(1.0 / 1.25), np.float32(0.0))
        shade = (np.float32(params.ambient) + np.float32(params.light_intensity) * diffuse) * (
            np.float32(0.85 * 255.0) + np.float32(0.15 * 255.0) * np.abs(nz)
        )
        dorsal, palm = looks
        is_hand = ids < n_hand
        palm_side = np.maximum(nx * np.float32(palm[0]) + ny * np.float32(palm[1]) + nz * np.float32(palm[2]), 0)
        shade *= np.float32(1.0) + np.float32(0.12) * palm_side * is_hand
        albedo = np.empty((len(caps[0]), 3), dtype=np.float32)
        albedo[:n_hand] = params.skin_rgb
        albedo[n_hand:] = spheres[:, 4:7]
        colour = albedo[ids] * shade[:, None]
        tip = np.flatnonzero((ids < 15) & (ids % 3 == 2) & (along > 0.3) & (along < 1))  # distal: 3f + 2
        if tip.size:
            f = ids[tip] // 3
            d = dorsal.astype(np.float32)[f]
            nail = tip[nx[tip] * d[:, 0] + ny[tip] * d[:, 1] + nz[tip] * d[:, 2] > 0.55]
            nail_albedo = 0.45 * np.asarray(params.skin_rgb, np.float32) + np.float32([0.52, 0.44, 0.43])
            colour[nail] = nail_albedo * shade[nail, None]
        colour += _noise_vector(rng, colour.size).reshape(colour.shape) * np.float32(3.0)
        np.clip(colour, 0, 255, out=colour)
        flat = (vs + cv) * rgb.shape[1] + (us + cu)
        rgb.reshape(-1, 3)[flat] = colour.astype(np.uint8)
        win = rgb[cv : cv + h, cu : cu + w]
        cv2.GaussianBlur(win, (3, 3), 0.6, dst=win)

    # -- trajectories ------------------------------------------------------------------------
    def trajectory(self, n_frames: int, fps: float = 30.0, start_index: int = 0) -> Iterator[SynthSample]:
        """A smoothly moving, articulating hand: key poses every 0.8-1.6 s, eased in between.

        The hand's identity (size, handedness, skin, forearm) and the scene stay fixed; joint
        angles and position follow smootherstep easing, the rotation slerps (at most 70 degrees
        between keys). Frame k's sensor noise comes from ``default_rng([seed, start_index, 3, k])``.
        """
        if int(n_frames) < 0:
            raise HandPoseError(f"n_frames must be >= 0, got {n_frames}")
        if not fps > 0:
            raise HandPoseError(f"fps must be > 0, got {fps}")
        start = self._check_index(start_index)
        rng = np.random.default_rng([self.seed, start, 2])
        duration = n_frames / float(fps)
        keys = [self.sample_params(start)]
        times = [0.0]
        while times[-1] <= duration:
            times.append(times[-1] + rng.uniform(0.8, 1.6))
            keys.append(self._next_key(keys[-1], rng))
        points = []
        radius = 0.0
        for key in keys:
            ka, kb, kr = hand_capsules(key)
            points += [ka, kb]
            radius = max(radius, float(kr.max()))
        scene = self.sample_scene(rng, np.concatenate(points), radius + 0.05)
        seg = 0
        for k in range(int(n_frames)):
            t = k / float(fps)
            while times[seg + 1] < t:
                seg += 1
            x = (t - times[seg]) / (times[seg + 1] - times[seg])
            w = x * x * x * (x * (6 * x - 15) + 10)  # smootherstep: zero velocity at the keys
            params = HandParams.interpolate(keys[seg], keys[seg + 1], w)
            frame_rng = np.random.default_rng([self.seed, start, 3, k])
            yield self._render(params, _hand_geometry(params), scene, frame_rng)

    def _next_key(self, prev: HandParams, rng: np.random.Generator) -> HandParams:
        angles, _ = sample_joint_angles(rng, self.config.gesture_prob)
        axis = rng.standard_normal(3)
        turn = _axis_angle_quat(axis, rng.uniform(0.0, math.radians(70.0)))
        rotation = quat_mul(turn, prev.rotation)
        z0, z1 = self.config.z_range_m
        z = float(np.clip(prev.translation_m[2] + rng.uniform(-0.15, 0.15), z0, z1))
        target = self._sample_position(rng, z)
        # Move at most halfway to a fresh random spot: keeps the hand in view and the motion calm.
        old = prev.translation_m * (z / prev.translation_m[2])
        return replace(prev, joint_angles=angles, rotation=rotation, translation_m=0.5 * (old + target))

    @staticmethod
    def _check_index(index) -> int:
        if not isinstance(index, (int, np.integer)) or index < 0:
            raise HandPoseError(f"sample index must be a non-negative integer, got {index!r}")
        return int(index)


__all__ = [
    "ANGLE_LIMITS_DEG",
    "ANGLE_NAMES",
    "GESTURES",
    "JOINT_LIMITS_DEG",
    "JOINT_RADIUS_M",
    "NOMINAL_BONE_LENGTHS_M",
    "HandParams",
    "SceneParams",
    "SynthConfig",
    "SynthSample",
    "SyntheticHands",
    "background_rgb",
    "forward_kinematics",
    "hand_capsules",
    "matrix_to_quat",
    "quat_to_matrix",
    "random_quaternion",
    "raycast_capsules",
    "sample_joint_angles",
    "slerp",
]
