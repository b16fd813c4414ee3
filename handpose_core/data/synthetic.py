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

Modules: :mod:`~handpose_core.data.synth_hand` (anatomy, :class:`HandParams`, kinematics, pose
priors), :mod:`~handpose_core.data.synth_raycast` (the capsule renderer) and this one (scene,
sensor model, the generator); the public names of all three are importable from here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from handpose_core.camera import DEFAULT_INTRINSICS, Intrinsics

# The hand model and the renderer live in their own modules; their public names are re-exported
# here, so ``from handpose_core.data.synthetic import ...`` is the one import users need.
from handpose_core.data.synth_hand import (
    ANGLE_LIMITS_DEG,
    ANGLE_NAMES,
    FINGERS,
    GESTURES,
    JOINT_LIMITS_DEG,
    JOINT_RADIUS_M,
    NOMINAL_BONE_LENGTHS_M,
    HandParams,
    _axis_angle_quat,
    _hand_geometry,
    _sample_light,
    _sample_skin,
    forward_kinematics,
    hand_capsules,
    matrix_to_quat,
    quat_mul,
    quat_to_matrix,
    random_quaternion,
    sample_joint_angles,
    slerp,
)
from handpose_core.data.synth_raycast import _FAR, _capsule_normals, _raycast_box, _union_box, raycast_capsules
from handpose_core.errors import HandPoseError

__all__ = [
    "ANGLE_LIMITS_DEG", "ANGLE_NAMES", "FINGERS", "GESTURES", "JOINT_LIMITS_DEG", "JOINT_RADIUS_M",
    "NOMINAL_BONE_LENGTHS_M", "HandParams", "SceneParams", "SynthConfig", "SynthSample", "SyntheticHands",
    "background_rgb", "forward_kinematics", "hand_capsules", "matrix_to_quat", "quat_mul", "quat_to_matrix",
    "random_quaternion", "raycast_capsules", "sample_joint_angles", "slerp",
]

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
        angles, articulation = sample_joint_angles(rng, cfg.gesture_prob)
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
            articulation=articulation,
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
        angles, articulation = sample_joint_angles(rng, self.config.gesture_prob)
        axis = rng.standard_normal(3)
        turn = _axis_angle_quat(axis, rng.uniform(0.0, math.radians(70.0)))
        rotation = quat_mul(turn, prev.rotation)
        z0, z1 = self.config.z_range_m
        z = float(np.clip(prev.translation_m[2] + rng.uniform(-0.15, 0.15), z0, z1))
        target = self._sample_position(rng, z)
        # Move at most halfway to a fresh random spot: keeps the hand in view and the motion calm.
        old = prev.translation_m * (z / prev.translation_m[2])
        return replace(prev, joint_angles=angles, rotation=rotation, translation_m=0.5 * (old + target),
                       articulation=articulation)

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

