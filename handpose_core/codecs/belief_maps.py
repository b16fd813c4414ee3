"""Belief-map codec (CPM / OpenPose hand): keypoints <-> Gaussian peak maps, plus the hand crop.

Used by BOTH the training targets (:meth:`BeliefMapCodec.encode`) and the inference decode
(:meth:`BeliefMapCodec.decode`), so label and prediction conventions cannot drift apart.

Coordinates. Pixel (u, v) has its origin at the centre of the top-left pixel (as everywhere in
handpose). A belief map of stride ``s`` has cell (i, j) centred on input pixel
``(s * j + (s - 1) / 2, s * i + (s - 1) / 2)`` -- exactly the convention of an ``s``-fold
``cv2.resize``, which is how the maps are upsampled at decode (OpenPose does the same).

Crop. :class:`CropBox` is a square box in the source image (centre and side, pixels);
:meth:`CropBox.warp` is the affine from source pixels to the ``input_size`` network crop (with
optional rotation for augmentation); :func:`warp_points` maps keypoints either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from handpose_core.errors import HandPoseError


@dataclass(frozen=True)
class CropBox:
    """Square hand box in source-image pixels: centre (cx, cy) and side length."""

    cx: float
    cy: float
    side: float

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) pixel bounds."""
        h = self.side / 2.0
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)

    def warp(self, input_size: int, rotation_deg: float = 0.0, mirrored: bool = False) -> np.ndarray:
        """(2, 3) float64 affine, source px -> crop px (``input_size`` px square), turning the content
        by ``rotation_deg`` counter-clockwise as displayed (``cv2.getRotationMatrix2D``'s sense).

        ``mirrored`` also flips the crop left-right (crop u -> input_size - 1 - u, after the turn):
        a left hand then looks like a right hand, for a network trained on right hands only. The
        flip is part of the warp, so :func:`warp_points` maps the mirrored crop's keypoints back to
        the source image without a separate step.
        """
        scale = input_size / self.side
        theta = np.deg2rad(rotation_deg)
        c, s = np.cos(theta) * scale, np.sin(theta) * scale
        linear = np.array([[c, s], [-s, c]])
        if mirrored:
            linear[0] *= -1.0
        centre = np.full(2, (input_size - 1) / 2.0)
        offset = centre - linear @ np.array([self.cx, self.cy])
        return np.hstack([linear, offset[:, None]])

    def clipped(self, width: int, height: int) -> CropBox | None:
        """A square box centred on this box's overlap with the image, its side shrunk to the longer
        side of that overlap (so on the other axis it can still reach past the image); None when the
        overlap is under a pixel."""
        x0, y0, x1, y1 = self.xyxy
        ix0, iy0 = max(x0, -0.5), max(y0, -0.5)
        ix1, iy1 = min(x1, width - 0.5), min(y1, height - 0.5)
        if ix1 - ix0 < 1.0 or iy1 - iy0 < 1.0:
            return None
        side = min(self.side, max(ix1 - ix0, iy1 - iy0))
        return CropBox((ix0 + ix1) / 2.0, (iy0 + iy1) / 2.0, side)


def box_from_keypoints(uv_px: np.ndarray, margin: float = 1.5, valid: np.ndarray | None = None,
                       min_side: float = 16.0) -> CropBox:
    """Square box around (K, 2) keypoints (px): side = ``margin`` x the larger extent of their bbox,
    at least ``min_side`` px.

    Keypoints that are NaN or where ``valid`` is False are ignored; raises :class:`HandPoseError`
    when none is left.
    """
    uv = np.asarray(uv_px, dtype=np.float64).reshape(-1, 2)
    ok = np.all(np.isfinite(uv), axis=1)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    if not ok.any():
        raise HandPoseError("cannot build a hand box: no valid keypoint")
    pts = uv[ok]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    side = max(float((hi - lo).max()) * margin, min_side)
    centre = (lo + hi) / 2.0
    return CropBox(float(centre[0]), float(centre[1]), side)


def warp_points(uv_px: np.ndarray, warp: np.ndarray, inverse: bool = False) -> np.ndarray:
    """(..., 2) points through a (2, 3) affine (or its inverse); NaN stays NaN. float32 out."""
    m = cv2.invertAffineTransform(warp) if inverse else np.asarray(warp, dtype=np.float64)
    uv = np.asarray(uv_px, dtype=np.float64)
    out = uv @ m[:, :2].T + m[:, 2]
    return out.astype(np.float32)


def crop_image(image: np.ndarray, warp: np.ndarray, input_size: int, border_value: float = 128.0,
               interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Cut the (input_size, input_size[, C]) network crop out of ``image`` with one affine warp.

    Outside the source image the crop is ``border_value`` (OpenPose pads with 128 grey).
    """
    channels = 1 if image.ndim == 2 else image.shape[2]
    return cv2.warpAffine(image, warp, (input_size, input_size), flags=interpolation,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(border_value,) * min(channels, 4))


@dataclass(frozen=True)
class InputSpec:
    """How a uint8 crop becomes the network input: channel order, value scale and offset.

    OpenPose: BGR, x / 256 - 0.5, 368 px box, grey (128) padding. Our trained models use RGB with
    the same scaling. ``normalize`` is used by training and inference alike.
    """

    size: int = 128
    channel_order: str = "rgb"  # order the network expects; images enter as RGB
    scale: float = 1.0 / 256.0
    offset: float = -0.5
    border_value: float = 128.0

    def to_config(self) -> dict:
        """Fields as a JSON-able dict (checkpoint meta ``input``); ``InputSpec(**cfg)`` rebuilds it."""
        return {"size": int(self.size), "channel_order": self.channel_order, "scale": float(self.scale),
                "offset": float(self.offset), "border_value": float(self.border_value)}

    def normalize(self, crops_rgb: np.ndarray) -> np.ndarray:
        """(..., S, S, 3) RGB, uint8 or float in [0, 255] -> (..., 3, S, S) float32 network input."""
        x = np.asarray(crops_rgb)
        if self.channel_order == "bgr":
            x = x[..., ::-1]
        elif self.channel_order != "rgb":
            raise HandPoseError(f"unknown channel_order {self.channel_order!r} (rgb, bgr)")
        x = x.astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))


@dataclass
class BeliefMapCodec:
    """Keypoints (K, 2) in crop pixels <-> belief maps (K + 1, S/stride, S/stride).

    input_size: side S of the square network crop, pixels.
    stride:     network output stride (8 for CPM).
    sigma_px:   Gaussian peak standard deviation, in input (crop) pixels. Keep it >= stride / 2:
                a narrower peak falls between map cells and cannot be decoded to sub-pixel precision.
    """

    input_size: int = 128
    stride: int = 8
    sigma_px: float = 6.0

    def __post_init__(self) -> None:
        if self.input_size <= 0 or self.stride <= 0 or self.input_size % self.stride:
            raise HandPoseError(f"input_size {self.input_size} must be a positive multiple of stride {self.stride}")
        if not self.sigma_px > 0:
            raise HandPoseError(f"sigma_px must be > 0, got {self.sigma_px}")

    def to_config(self) -> dict:
        """Fields as a JSON-able dict (checkpoint meta ``codec``); ``BeliefMapCodec(**cfg)`` rebuilds it."""
        return {"input_size": int(self.input_size), "stride": int(self.stride), "sigma_px": float(self.sigma_px)}

    @property
    def map_size(self) -> int:
        """Side m of the square belief maps, cells: input_size / stride."""
        return self.input_size // self.stride

    def cell_centres(self) -> np.ndarray:
        """(map_size,) crop-pixel coordinate of each map cell's centre."""
        return self.stride * np.arange(self.map_size, dtype=np.float64) + (self.stride - 1) / 2.0

    def encode(self, uv_px: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """(..., K, 2) crop pixels -> (..., K + 1, m, m) float32 targets, m = input_size / stride.

        Channel k is exp(-d^2 / 2 sigma^2) around keypoint k; the last channel is the background,
        1 - max over the keypoint maps. Keypoints that are NaN or not ``valid`` (..., K) get an
        all-zero map. Keypoints outside the crop still contribute their tails inside it. Leading
        dimensions are a batch (training encodes a whole batch in one call).
        """
        uv = np.asarray(uv_px, dtype=np.float64)
        if uv.ndim < 2 or uv.shape[-1] != 2:
            uv = uv.reshape(-1, 2)
        ok = np.all(np.isfinite(uv), axis=-1)
        if valid is not None:
            ok &= np.asarray(valid, dtype=bool).reshape(ok.shape)
        k = uv.shape[-2]
        c = self.cell_centres()
        # separable Gaussian: outer product of the x and y profiles
        gx = np.exp(-((c - np.where(ok, uv[..., 0], 0.0)[..., None]) ** 2) / (2 * self.sigma_px**2))
        gy = np.exp(-((c - np.where(ok, uv[..., 1], 0.0)[..., None]) ** 2) / (2 * self.sigma_px**2))
        maps = np.zeros((*uv.shape[:-2], k + 1, self.map_size, self.map_size), dtype=np.float32)
        keypoint_maps = gy[..., :, None] * gx[..., None, :]
        keypoint_maps[~ok] = 0.0
        maps[..., :k, :, :] = keypoint_maps
        maps[..., k, :, :] = 1.0 - maps[..., :k, :, :].max(axis=-3) if k else 1.0
        return maps

    def upsample(self, maps: np.ndarray) -> np.ndarray:
        """(C, m, m) maps -> (C, S, S) float32 by bicubic resampling (the OpenPose decode)."""
        return self._upsample_hwc(maps).transpose(2, 0, 1)

    def _upsample_hwc(self, maps: np.ndarray) -> np.ndarray:
        """(C, m, m) maps -> (S, S, C) float32, OpenCV's own layout (no transposing copy)."""
        maps = np.asarray(maps, dtype=np.float32)
        size = (maps.shape[2] * self.stride, maps.shape[1] * self.stride)
        hwc = np.ascontiguousarray(maps.transpose(1, 2, 0))
        # cv2.resize handles at most 512 channels at once; belief maps have 22
        up = cv2.resize(hwc, size, interpolation=cv2.INTER_CUBIC)
        return up[:, :, None] if up.ndim == 2 else up

    def decode(self, maps: np.ndarray, num_keypoints: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(K[+1], m, m) maps -> ((K, 2) float32 crop pixels, (K,) float32 confidence in [0, 1]).

        1. each keypoint map is upsampled (bicubic) to crop resolution; its argmax is the integer
           peak and the value there, clipped to [0, 1], the confidence;
        2. the peak is refined to sub-pixel precision by fitting a parabola to the *log* of the
           stride-resolution map along x and y through the peak cell (a second-order Taylor
           expansion, as in DARK, Zhang et al. 2020): exact for the Gaussian targets, where a fit
           on the bicubic-upsampled map is biased by up to ~1.5 px. A fit that lands more than a
           cell away (a flat or multi-modal map) is rejected and the integer peak kept.
        ``num_keypoints`` defaults to C - 1 (the last map is the background).
        """
        maps = np.asarray(maps, dtype=np.float32)
        if maps.ndim != 3:
            raise HandPoseError(f"belief maps must be (C, h, w), got shape {maps.shape}")
        k = maps.shape[0] - 1 if num_keypoints is None else num_keypoints
        coarse = maps[:k]
        # integer peaks on the (S, S, K) upsampled maps: an argmax over a transposed view would
        # copy 1.4 MB first (~1 ms a frame on a small CPU)
        up = self._upsample_hwc(coarse).reshape(-1, k)
        idx = up.argmax(axis=0)
        ys_px, xs_px = np.divmod(idx, coarse.shape[2] * self.stride)
        uv = np.stack([xs_px, ys_px], axis=1).astype(np.float32)
        conf = np.clip(up[idx, np.arange(k)], 0.0, 1.0).astype(np.float32)
        h, w = coarse.shape[1:]
        s, off = self.stride, (self.stride - 1) / 2.0
        # Vectorized over the keypoints (a per-joint Python loop cost ~2 ms a frame on a small CPU).
        # Coarse cell of the peak: the best of the (up to) 2x2 cells around the pixel peak, the
        # first in row-major order on ties.
        fx, fy = (uv[:, 0] - off) / s, (uv[:, 1] - off) / s
        xs = np.clip(np.stack([np.floor(fx), np.ceil(fx)], 1), 0, w - 1).astype(int)  # (K, 2)
        ys = np.clip(np.stack([np.floor(fy), np.ceil(fy)], 1), 0, h - 1).astype(int)
        joint = np.arange(k)
        cand = coarse[joint[:, None, None], ys[:, :, None], xs[:, None, :]].reshape(k, 4)
        best = cand.argmax(axis=1)
        cy, cx = ys[joint, best // 2], xs[joint, best % 2]
        value = coarse[joint, cy, cx]
        rx = _parabola_vertices(coarse, joint, cy, cx, value, axis=2)
        ry = _parabola_vertices(coarse, joint, cy, cx, value, axis=1)
        ok = (value > 0) & np.isfinite(rx) & np.isfinite(ry)
        uv[ok, 0] = s * rx[ok] + off
        uv[ok, 1] = s * ry[ok] + off
        return uv, conf


def _parabola_vertices(coarse: np.ndarray, joint: np.ndarray, cy: np.ndarray, cx: np.ndarray,
                       value: np.ndarray, axis: int) -> np.ndarray:
    """(K,) sub-cell vertex of the parabola through the log-map's 3 samples around each peak cell.

    ``axis`` 2 fits along x (the peak's row), 1 along y (its column). The log is floored at
    ``value * 1e-6`` so zero cells stay finite. The samples are i-1..i+1, shifted inwards at the
    map's ends; NaN where they are not concave or the vertex lies more than one cell from ``i``.
    """
    i = cx if axis == 2 else cy
    n = coarse.shape[axis]
    if n < 3:
        return np.full(len(joint), np.nan)
    c = np.clip(i, 1, n - 2)
    taps = c[:, None] + np.arange(-1, 2)[None, :]  # (K, 3)
    samples = (coarse[joint[:, None], cy[:, None], taps] if axis == 2 else coarse[joint[:, None], taps, cx[:, None]])
    floor = np.maximum(value, 0)[:, None].astype(np.float32) * np.float32(1e-6)
    with np.errstate(divide="ignore", invalid="ignore"):  # joints with value <= 0 are discarded anyway
        log = np.log(np.maximum(samples, floor)).astype(np.float64)
        a, b, d = log[:, 0], log[:, 1], log[:, 2]
        curv = a - 2.0 * b + d
        vertex = c + 0.5 * (a - d) / curv
    good = (curv < -1e-9) & (np.abs(vertex - i) <= 1.0)
    return np.where(good, vertex, np.nan)


def decode_peaks(maps: np.ndarray, refine: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(K, H, W) maps at pixel resolution -> ((K, 2) float32 (u, v) px, (K,) float32 peak in [0, 1]).

    ``refine``: quadratic fit of the 3x3 neighbourhood of each argmax (second-order Taylor).
    Used directly on the multi-scale average of the RGB pipeline, which lives at image resolution.
    """
    k, h, w = maps.shape
    flat = maps.reshape(k, -1)
    idx = flat.argmax(axis=1)
    ys, xs = np.divmod(idx, w)
    peak = flat[np.arange(k), idx]
    uv = np.stack([xs, ys], axis=1).astype(np.float64)
    if refine:
        inner = (xs > 0) & (xs < w - 1) & (ys > 0) & (ys < h - 1)
        for j in np.nonzero(inner)[0]:
            x, y, m = xs[j], ys[j], maps[j].astype(np.float64)
            dx = 0.5 * (m[y, x + 1] - m[y, x - 1])
            dy = 0.5 * (m[y + 1, x] - m[y - 1, x])
            dxx = m[y, x + 1] - 2 * m[y, x] + m[y, x - 1]
            dyy = m[y + 1, x] - 2 * m[y, x] + m[y - 1, x]
            dxy = 0.25 * (m[y + 1, x + 1] - m[y + 1, x - 1] - m[y - 1, x + 1] + m[y - 1, x - 1])
            det = dxx * dyy - dxy * dxy
            if det <= 1e-12 or dxx >= 0:  # not a proper maximum: keep the integer peak
                continue
            off_x = -(dyy * dx - dxy * dy) / det
            off_y = -(dxx * dy - dxy * dx) / det
            if abs(off_x) <= 1.0 and abs(off_y) <= 1.0:
                uv[j] += (off_x, off_y)
    return uv.astype(np.float32), np.clip(peak, 0.0, 1.0).astype(np.float32)
