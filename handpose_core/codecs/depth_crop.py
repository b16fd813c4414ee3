"""Depth crop codec (DeepPrior): full depth frame <-> normalized metric cube around the hand.

Encode:
1. the hand is the nearest hand-sized object within ``[min_depth_mm, max_depth_mm]`` (see
   :meth:`DepthCropCodec.locate` for the layered search);
2. its centre of mass is refined by mean shift inside a sphere of half the cube;
3. a metric cube of ``cube_mm`` centred there is cut out with one affine warp to ``size x size``
   (the same warp carries in-plane rotation, scale and centre jitter for augmentation), and depth
   is normalized to [-1, 1] inside the cube (background and holes -> +1, the far face).

Joints are encoded in *normalized uvd* crop space: u, v in [-1, 1] across the crop, d in [-1, 1]
across the cube's depth. ``decode_joints`` is the exact inverse (crop uv -> image uv through the
inverse warp, d -> z, then back-projection through the real intrinsics), so the training labels and
the inference decode are the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from handpose_core.camera import Intrinsics
from handpose_core.errors import HandPoseError


class NoHandError(HandPoseError):
    """The depth image holds no object in range: an explicit "no hand" result, not a failure."""


@dataclass(frozen=True)
class DepthCrop:
    """One encoded crop.

    image:      (size, size) float32 normalized depth in [-1, 1] (+1 = far face / no data).
    com_xyz_mm: (3,) float64 cube centre, mm, camera optical frame.
    cube_mm:    edge length of the cube actually used (after scale augmentation), mm.
    warp:       (2, 3) float64 affine, image pixels -> crop pixels.
    intrinsics: the camera the frame came from.
    """

    image: np.ndarray
    com_xyz_mm: np.ndarray
    cube_mm: float
    warp: np.ndarray
    intrinsics: Intrinsics

    @property
    def box_px(self) -> tuple[float, float, float, float]:
        """Axis-aligned bounds (x0, y0, x1, y1) of the crop in image pixels."""
        size = self.image.shape[0]
        inv = cv2.invertAffineTransform(self.warp)
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64)
        pts = corners @ inv.T
        return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


def depth_to_mm(depth: np.ndarray) -> np.ndarray:
    """(H, W) uint16 mm or float32/64 metres -> (H, W) float32 mm with 0 where invalid (NaN, inf, <= 0)."""
    if not isinstance(depth, np.ndarray) or depth.ndim != 2:
        shape = getattr(depth, "shape", None)
        raise HandPoseError(f"depth image must be a 2-D array (H, W), got shape {shape}")
    if depth.shape[0] < 8 or depth.shape[1] < 8:
        raise HandPoseError(f"depth image is too small: {depth.shape[1]}x{depth.shape[0]}")
    if depth.dtype == np.uint16:
        return depth.astype(np.float32)
    if depth.dtype in (np.float32, np.float64):
        mm = depth.astype(np.float32) * 1000.0
        mm[~np.isfinite(mm) | (mm < 0)] = 0.0
        return mm
    raise HandPoseError(f"depth image must be uint16 (mm) or float32 (m), got dtype {depth.dtype}")


@dataclass
class DepthCropCodec:
    """Encode/decode between depth frames and DeepPrior's normalized cube. Units: mm inside."""

    cube_mm: float = 300.0
    size: int = 128
    min_depth_mm: float = 150.0
    max_depth_mm: float = 1500.0
    nearest_k: int = 4  # the k-th nearest (search-image) pixel starts the search: ignores speckles
    min_hand_px: int = 160  # full-resolution pixels; blobs smaller than this are noise, not a hand
    layer_mm: float = 25.0  # depth step of the layered search
    search_stride: int = 4  # the search runs on every 4th pixel: 16x fewer pixels, same blobs
    refine_iters: int = 4

    def to_config(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    # -- hand localisation -------------------------------------------------------------------
    def locate(self, depth_mm: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
        """Centre of the nearest hand-sized object, (3,) float64 mm, optical frame. Raises NoHandError.

        A layered search on a 1/``search_stride`` image: the depth threshold grows from the nearest
        valid pixel in ``layer_mm`` steps and the first blob of hand size that does not touch the
        bottom image edge is the seed (a torso or an arm entering from below touches it; a hand held
        up does not). If none qualifies, the nearest blob of hand size is taken whatever it touches.
        The seed is then refined by mean shift on the full image inside a sphere of ``cube_mm / 2``.
        """
        s = self.search_stride
        small = np.ascontiguousarray(depth_mm[::s, ::s])
        valid_small = (small > self.min_depth_mm) & (small < self.max_depth_mm)
        values = small[valid_small]
        min_px_small = max(1, self.min_hand_px // (s * s))
        if values.size < min_px_small:
            raise NoHandError(
                f"no object between {self.min_depth_mm:.0f} and {self.max_depth_mm:.0f} mm "
                f"({values.size * s * s} valid pixels)"
            )
        k = min(self.nearest_k, values.size - 1)
        near_mm = float(np.partition(values, k)[k])
        seed = None
        fallback = None
        for threshold in np.arange(near_mm + self.layer_mm, near_mm + self.cube_mm + 1e-3, self.layer_mm):
            mask = (valid_small & (small <= threshold)).astype(np.uint8)
            count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
            big = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_px_small]
            if not big:
                continue
            if fallback is None:
                fallback = (labels, max(big, key=lambda i: stats[i, cv2.CC_STAT_AREA]))
            free = [i for i in big if stats[i, cv2.CC_STAT_TOP] + stats[i, cv2.CC_STAT_HEIGHT] < small.shape[0]]
            if free:
                seed = (labels, max(free, key=lambda i: stats[i, cv2.CC_STAT_AREA]))
                break
        if seed is None:
            seed = fallback
        if seed is None:
            raise NoHandError(f"no object of at least {self.min_hand_px} pixels in range")
        labels, label = seed
        vs, us = np.nonzero(labels == label)
        com_uvd = np.array([us.mean() * s, vs.mean() * s, float(np.median(small[vs, us]))])
        valid = (depth_mm > self.min_depth_mm) & (depth_mm < self.max_depth_mm)
        for _ in range(self.refine_iters):
            com_uvd = self._refine(depth_mm, valid, com_uvd, intrinsics)
        return intrinsics.backproject(com_uvd[:2], com_uvd[2])

    def _refine(self, depth_mm: np.ndarray, valid: np.ndarray, com_uvd: np.ndarray, intr: Intrinsics):
        """Mean-shift step: centre of the valid 3D points within ``cube_mm / 2`` of ``com_uvd``."""
        half = self.cube_mm / 2.0
        u, v, d = com_uvd
        hu, hv = half * intr.fx / d, half * intr.fy / d
        x0, x1 = int(max(0, np.floor(u - hu))), int(min(depth_mm.shape[1], np.ceil(u + hu) + 1))
        y0, y1 = int(max(0, np.floor(v - hv))), int(min(depth_mm.shape[0], np.ceil(v + hv) + 1))
        window = depth_mm[y0:y1, x0:x1]
        vs, us = np.nonzero(valid[y0:y1, x0:x1] & (np.abs(window - d) < half))
        if vs.size < self.min_hand_px:
            return com_uvd
        zs = window[vs, us]
        xs = (us + x0 - intr.cx) * zs / intr.fx
        ys = (vs + y0 - intr.cy) * zs / intr.fy
        cx, cy = (u - intr.cx) * d / intr.fx, (v - intr.cy) * d / intr.fy
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 + (zs - d) ** 2 < half * half
        if inside.sum() < self.min_hand_px:
            return com_uvd
        x, y, z = xs[inside].mean(), ys[inside].mean(), zs[inside].mean()
        return np.array([x * intr.fx / z + intr.cx, y * intr.fy / z + intr.cy, z])

    # -- encode / decode ---------------------------------------------------------------------
    def warp_for(
        self, com_xyz_mm: np.ndarray, intrinsics: Intrinsics, cube_mm: float, rotation_deg: float = 0.0
    ) -> np.ndarray:
        """(2, 3) affine from image pixels to crop pixels for a cube centred at ``com_xyz_mm``."""
        com_uv = intrinsics.project(com_xyz_mm)
        z = float(com_xyz_mm[2])
        # pixels per crop pixel along each axis: the cube's projected extent maps to `size`
        sx = self.size / (cube_mm * intrinsics.fx / z)
        sy = self.size / (cube_mm * intrinsics.fy / z)
        theta = np.deg2rad(rotation_deg)
        c, s = np.cos(theta), np.sin(theta)
        linear = np.array([[c * sx, s * sy], [-s * sx, c * sy]])
        centre = np.array([(self.size - 1) / 2.0, (self.size - 1) / 2.0])
        offset = centre - linear @ com_uv
        return np.hstack([linear, offset[:, None]])

    def encode(
        self,
        depth: np.ndarray,
        intrinsics: Intrinsics,
        com_xyz_mm: np.ndarray | None = None,
        rotation_deg: float = 0.0,
        scale: float = 1.0,
        shift_mm: np.ndarray | None = None,
    ) -> DepthCrop:
        """Depth frame -> :class:`DepthCrop`. Raises :class:`NoHandError` when nothing is in range.

        depth: (H, W) uint16 mm or float32 metres. ``com_xyz_mm`` overrides the localisation;
        ``rotation_deg``, ``scale`` (cube size factor) and ``shift_mm`` (centre jitter) augment.
        """
        depth_mm = depth_to_mm(depth)
        com = self.locate(depth_mm, intrinsics) if com_xyz_mm is None else np.asarray(com_xyz_mm, float)
        if shift_mm is not None:
            com = com + np.asarray(shift_mm, dtype=np.float64)
        if not np.all(np.isfinite(com)) or com[2] <= 0:
            raise NoHandError(f"hand centre is not in front of the camera: {com}")
        cube = self.cube_mm * float(scale)
        warp = self.warp_for(com, intrinsics, cube, rotation_deg)
        # Nearest-neighbour: interpolating across a silhouette would invent depths between
        # the hand and the background.
        patch = cv2.warpAffine(
            depth_mm, warp, (self.size, self.size), flags=cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_CONSTANT, borderValue=0.0,
        )
        half = cube / 2.0
        norm = (patch - np.float32(com[2])) / np.float32(half)
        norm[(patch <= 0) | (norm > 1.0)] = 1.0
        np.clip(norm, -1.0, 1.0, out=norm)
        return DepthCrop(norm.astype(np.float32), com, cube, warp, intrinsics)

    def encode_joints(self, xyz_m: np.ndarray, crop: DepthCrop) -> np.ndarray:
        """(J, 3) metres, optical frame -> (J, 3) float32 normalized uvd in the crop's cube."""
        xyz_mm = np.asarray(xyz_m, dtype=np.float64) * 1000.0
        uv = crop.intrinsics.project(xyz_mm)
        uv_crop = np.hstack([uv, np.ones((len(uv), 1))]) @ crop.warp.T
        half_px = (self.size - 1) / 2.0
        uv_norm = (uv_crop - half_px) / (self.size / 2.0)
        d_norm = (xyz_mm[:, 2] - crop.com_xyz_mm[2]) / (crop.cube_mm / 2.0)
        return np.column_stack([uv_norm, d_norm]).astype(np.float32)

    def decode_joints(self, uvd_norm: np.ndarray, crop: DepthCrop) -> np.ndarray:
        """(J, 3) normalized uvd -> (J, 3) float32 metres, optical frame (exact inverse of encode)."""
        uvd_norm = np.asarray(uvd_norm, dtype=np.float64)
        half_px = (self.size - 1) / 2.0
        uv_crop = uvd_norm[:, :2] * (self.size / 2.0) + half_px
        inv = cv2.invertAffineTransform(crop.warp)
        uv = np.hstack([uv_crop, np.ones((len(uv_crop), 1))]) @ inv.T
        z_mm = uvd_norm[:, 2] * (crop.cube_mm / 2.0) + crop.com_xyz_mm[2]
        return (crop.intrinsics.backproject(uv, z_mm) / 1000.0).astype(np.float32)

    def decode_uv(self, uvd_norm: np.ndarray, crop: DepthCrop) -> np.ndarray:
        """(J, 3) normalized uvd -> (J, 2) float32 image pixels."""
        half_px = (self.size - 1) / 2.0
        uv_crop = np.asarray(uvd_norm, dtype=np.float64)[:, :2] * (self.size / 2.0) + half_px
        inv = cv2.invertAffineTransform(crop.warp)
        return (np.hstack([uv_crop, np.ones((len(uv_crop), 1))]) @ inv.T).astype(np.float32)
