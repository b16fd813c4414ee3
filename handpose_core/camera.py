"""Pinhole intrinsics and the projections between pixels and the camera optical frame.

Frames follow REP 103 optical conventions: x right, y down, z forward, metres. Pixel (u, v) has
its origin at the centre of the top-left pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from handpose_core.errors import HandPoseError


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole camera: focal lengths and principal point in pixels, image size in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int = 640
    height: int = 480

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v) for v in values):
            raise HandPoseError(f"intrinsics must be finite numbers, got fx,fy,cx,cy={values}")
        if self.fx <= 0 or self.fy <= 0:
            raise HandPoseError(f"focal lengths must be > 0, got fx={self.fx} fy={self.fy}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise HandPoseError(f"image size must be > 0, got {self.width}x{self.height}")

    @classmethod
    def from_tuple(cls, values: Intrinsics | Sequence[float], width: int = 640, height: int = 480) -> Intrinsics:
        """From ``(fx, fy, cx, cy)`` px and the image size px, or an :class:`Intrinsics` (returned as
        is, its own size kept)."""
        if isinstance(values, Intrinsics):
            return values
        try:
            fx, fy, cx, cy = (float(v) for v in values)
        except (TypeError, ValueError) as exc:
            raise HandPoseError(f"intrinsics must be (fx, fy, cx, cy), got {values!r}") from exc
        return cls(fx, fy, cx, cy, int(width), int(height))

    def as_tuple(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) px."""
        return (float(self.fx), float(self.fy), float(self.cx), float(self.cy))

    def matrix(self) -> np.ndarray:
        """(3, 3) float64 camera matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def project(self, xyz: np.ndarray) -> np.ndarray:
        """(..., 3) points in the optical frame (any unit) -> (..., 2) pixels (u, v)."""
        xyz = np.asarray(xyz, dtype=np.float64)
        z = xyz[..., 2]
        u = self.fx * xyz[..., 0] / z + self.cx
        v = self.fy * xyz[..., 1] / z + self.cy
        return np.stack([u, v], axis=-1)

    def backproject(self, uv: np.ndarray, z: np.ndarray) -> np.ndarray:
        """(..., 2) pixels and (...) depth -> (..., 3) points, in the unit of ``z``."""
        uv = np.asarray(uv, dtype=np.float64)
        z = np.asarray(z, dtype=np.float64)
        x = (uv[..., 0] - self.cx) * z / self.fx
        y = (uv[..., 1] - self.cy) * z / self.fy
        return np.stack([x, y, z], axis=-1)


# Cameras named in the project's data sources.
NYU_INTRINSICS = Intrinsics(588.03, 587.07, 320.0, 240.0, 640, 480)
SR305_INTRINSICS = Intrinsics(476.007, 476.007, 313.683, 242.755, 640, 480)
DEFAULT_INTRINSICS = Intrinsics(475.0, 475.0, 319.5, 239.5, 640, 480)
