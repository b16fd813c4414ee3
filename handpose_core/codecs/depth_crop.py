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

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
    hand_slab_mm: float = 100.0  # a candidate is judged on the slab this deep behind its nearest point
    isolation_mm: float = 50.0  # ... and on how much that slab grows when cut this much deeper
    # candidates appear at most this far behind the nearest pixel: far enough to pass a floor that
    # slopes up to the camera (nearest at ~200 mm) and reach a hand 700 mm behind it
    search_depth_mm: float = 900.0
    slab_scales: tuple[float, ...] = (1.0, 0.5)  # slab and isolation depths tried, as factors
    max_growth: float = 1.25  # a hand is isolated: its slab grows at most this much (area ratio)
    min_hand_area_mm2: float = 2000.0  # metric area of the slab: a hand edge-on ~ 3000-4000
    small_hand_area_mm2: float = 5000.0  # below this, a blob cut by the image border is held back
    border_px: int = 16  # "cut by the border": the seed reaches this close to the image edge
    max_hand_area_mm2: float = 30000.0  # open hand + forearm ~ 15000-25000; a torso is larger
    refine_iters: int = 4  # mean-shift iterations at most
    refine_stride: int = 2  # mean shift on every 2nd pixel

    def to_config(self) -> dict:
        """All fields as a dict (checkpoint meta ``codec``); ``DepthCropCodec(**cfg)`` rebuilds it."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    # -- hand localisation -------------------------------------------------------------------
    def locate(self, depth_mm: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
        """Centre of the nearest hand-like object in ``depth_mm`` ((H, W) float32 mm from
        :func:`depth_to_mm`, 0 = no data), (3,) float64 mm, optical frame. Raises NoHandError.

        A layered search on a 1/``search_stride`` image: depth thresholds grow from the nearest
        valid pixel in ``layer_mm`` steps, and every blob of at least ``min_hand_px`` that appears
        within ``search_depth_mm`` behind the nearest pixel is a candidate, nearest first. A candidate is judged
        on its *slab*: the blob that contains it once the threshold is ``hand_slab_mm`` deeper.
        It is a hand when the slab

        - has a hand-sized metric area (``min_hand_area_mm2`` .. ``max_hand_area_mm2``: a hand with
          some forearm; a torso's slab is larger, a speckle or a body part cut by the image border
          smaller), and
        - is isolated: cut ``isolation_mm`` deeper still, it grows by at most ``max_growth``. A hand
          held in the air is surrounded by a depth gap; the nearest part of a torso or a table
          continues smoothly into more surface.

        This picks a hand raised beside the body even where the chest is nearer. When no candidate
        qualifies (a hand touching the body, a lone hand in the synthetic data whose slab is cut by
        the crop) the nearest blob of hand size is taken, preferring one that does not touch the
        bottom image edge (an arm or torso entering from below touches it). The seed is then
        refined by mean shift on the full-resolution frame (every ``refine_stride``-th pixel) over
        the points within the cube around it, ignoring those behind the slab's isolation cut
        (:meth:`_refine`).
        """
        return next(self.candidates(depth_mm, intrinsics))

    def candidates(self, depth_mm: np.ndarray, intrinsics: Intrinsics) -> Iterator[np.ndarray]:
        """The search's hand centres in ``depth_mm`` ((H, W) float32 mm from :func:`depth_to_mm`,
        0 = no data), (3,) float64 mm each, optical frame, best first, lazily: the first is
        :meth:`locate`'s and costs what it does; the later ones (see :meth:`_search_all`), each at
        least ``cube_mm / 4`` from those before it, are searched for only when asked for, by a caller
        that can judge which one holds the hand. Raises NoHandError at the first ``next`` when
        nothing hand-sized is in range (it never ends without a centre)."""
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
        centres: list[np.ndarray] = []
        for seed in self._search_all(small, valid_small, near_mm, min_px_small, intrinsics):
            com = self._centre(depth_mm, small, seed, intrinsics)
            if all(np.linalg.norm(com - c) >= self.cube_mm / 4.0 for c in centres):
                centres.append(com)
                yield com
        if not centres:
            raise NoHandError(f"no object of at least {self.min_hand_px} pixels in range")

    def _centre(self, depth_mm: np.ndarray, small: np.ndarray, seed, intrinsics: Intrinsics) -> np.ndarray:
        """A search seed ((rows, cols) in ``small``, z limit mm) -> refined centre (3,) float64 mm."""
        s = self.search_stride
        (vs, us), z_limit = seed
        com_uvd = np.array([us.mean() * s, vs.mean() * s, float(np.median(small[vs, us]))])
        com_uvd = self._refine(depth_mm, com_uvd, intrinsics, z_limit)
        return intrinsics.backproject(com_uvd[:2], com_uvd[2])

    def _search_all(self, small, valid_small, near_mm, min_px, intr):
        """Layered search of :meth:`locate`: yields seeds ((rows, cols) of a blob in ``small``, z limit mm),
        best first: the nearest isolated hand-sized slab; then those held back for the image border
        and the others, one per object, down to ``search_depth_mm`` behind the nearest pixel; the
        fallback blob only where none qualified; then every hand-sized blob not yet taken, qualified or
        not, nearest first. Lazy: the first seed costs what it did alone.

        The z limit is the depth behind which the blob's surroundings start (the isolation cut of an
        accepted slab): the mean shift ignores farther points, such as a wall just behind the hand.
        """
        s = self.search_stride
        step = self.layer_mm
        slabs = []  # (slab layers, isolation layers), thickest first
        for f in self.slab_scales:
            pair = (max(1, round(f * self.hand_slab_mm / step)), max(1, round(f * self.isolation_mm / step)))
            if pair not in slabs:
                slabs.append(pair)
        n_birth = max(1, int(self.search_depth_mm // step))
        flat_depth = small.ravel()
        flat_valid = valid_small.ravel()
        # metric area of each search pixel, mm^2: a pixel at depth z covers (s z / fx) x (s z / fy)
        px_area = flat_depth * flat_depth * np.float32(s * s / (intr.fx * intr.fy))
        layers: dict[int, tuple] = {}

        def layer(i):
            """Threshold near + i * step -> (labels (H*W,), inside (H*W,) bool, px count, area mm2)."""
            if i not in layers:
                inside = flat_valid & (flat_depth <= near_mm + i * step)
                _, labels = cv2.connectedComponents(inside.reshape(small.shape).view(np.uint8), connectivity=8)
                labels = labels.ravel()
                lab_in = labels[inside]
                n = int(labels.max()) + 1
                layers[i] = (labels, inside, np.bincount(lab_in, minlength=n),
                             np.bincount(lab_in, weights=px_area[inside], minlength=n))
            return layers[i]

        def blobs(i):
            """Layer i -> (labels (H*W,), its components of at least ``min_px`` pixels (not the background),
            px counts, areas mm2)."""
            labels, _, counts, area = layer(i)
            big = np.flatnonzero(counts >= min_px)
            return labels, big[big > 0], counts, area

        def parent(i, j):
            """Label map from layer i to the (nested) layer j: component c of i lies in parent[c] of j."""
            labels_i, inside_i, _, _ = layer(i)
            labels_j = layer(j)[0]
            up = np.zeros(int(labels_i.max()) + 1, dtype=labels_j.dtype)
            up[labels_i[inside_i]] = labels_j[inside_i]
            return up

        band = max(1, int(np.ceil(self.border_px / s)))  # sensors often give no data at the very edge
        border = np.ones(small.shape, bool)
        border[band:-band, band:-band] = False
        border = border.ravel()
        judged = set()
        held = []  # (pixels, seed) of small qualifying slabs whose seed touches the image border
        later = []  # (pixels, seed) of the qualifying slabs after the first
        first = None  # pixels of the first qualifying slab, once yielded
        taken = np.zeros(small.size, bool)  # pixels of the first and the later slabs
        for i in range(1, n_birth + 1):
            labels_i, born, _, _ = blobs(i)
            if born.size == 0:
                continue
            cut = np.isin(born, labels_i[border])  # seed already cut by the image border
            for k_slab, k_iso in slabs:
                slab_of = parent(i, i + k_slab)[born]
                deeper_of = parent(i + k_slab, i + k_slab + k_iso)
                labels_s, _, _, area_s = layer(i + k_slab)
                area_d = layer(i + k_slab + k_iso)[3]
                for slab in sorted(set(slab_of.tolist()), key=lambda c: -area_s[c]):
                    if (i + k_slab, k_iso, slab) in judged:
                        continue
                    judged.add((i + k_slab, k_iso, slab))
                    area = area_s[slab]
                    growth = area_d[deeper_of[slab]] / max(area, 1e-6)
                    if not (self.min_hand_area_mm2 <= area <= self.max_hand_area_mm2 and growth <= self.max_growth):
                        continue
                    pixels = np.flatnonzero(labels_s == slab)
                    if first is not None and taken[pixels].any():
                        continue  # a slab already taken, seen again at a deeper threshold
                    rows, cols = np.divmod(pixels, small.shape[1])
                    if self._edges_touched(rows, cols, small.shape, band) >= 3:
                        continue  # a floor or wall seen steeply: a hand with its forearm reaches 1-2 edges
                    # a small blob whose seed is cut by the image border is likely part of something
                    # larger outside the view: only taken when nothing else qualifies
                    found = ((rows, cols), near_mm + (i + k_slab + k_iso) * step)
                    if area < self.small_hand_area_mm2 and np.all(cut[slab_of == slab]):
                        held.append((pixels, found))
                    elif first is None:
                        yield found
                        first = pixels
                        taken[pixels] = True
                    else:
                        later.append((pixels, found))
                        taken[pixels] = True
        # then the held-back slabs (nearest first), then the later ones; one seed per object: a slab
        # that shares pixels with an earlier seed is that object seen at a deeper threshold
        out = np.zeros(small.size, bool)
        if first is not None:
            out[first] = True
        for pixels, found in held + later:
            if not out[pixels].any():
                out[pixels] = True
                yield found
        if not out.any():
            # No isolated hand-sized blob: the nearest blob of hand size, preferring one that does not
            # touch the bottom edge.
            fallback = None
            for i in range(1, n_birth + 1):
                labels, big, counts, _ = blobs(i)
                if big.size == 0:
                    continue
                if fallback is None:
                    fallback = (labels, big[np.argmax(counts[big])])
                bottom = set(np.unique(labels.reshape(small.shape)[-1]).tolist())
                free = [c for c in big.tolist() if c not in bottom]
                if free:
                    fallback = (labels, max(free, key=lambda c: counts[c]))
                    break
            if fallback is None:
                return
            labels, best = fallback
            pixels = np.flatnonzero(labels == best)
            out[pixels] = True
            yield np.divmod(pixels, small.shape[1]), np.inf
        # Then the hand-sized blobs not yet taken, nearest first, one per object: a hand that touches a
        # surface or the image's bottom edge, or is not isolated from its forearm, where a ball or a
        # patch of a wall came first (only a caller that judges the candidates asks for these).
        for i in range(1, n_birth + 1):
            labels_i, big, _, area_i = blobs(i)
            for c in big:
                if not self.min_hand_area_mm2 <= area_i[c] <= self.max_hand_area_mm2:
                    continue
                pixels = np.flatnonzero(labels_i == c)
                if not out[pixels].any():
                    out[pixels] = True
                    yield np.divmod(pixels, small.shape[1]), near_mm + i * step + self.hand_slab_mm

    @staticmethod
    def _edges_touched(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], band: int) -> int:
        """How many of the image's 4 edges (within ``band`` pixels) a blob's pixels reach."""
        h, w = shape
        return (int(rows.min() < band) + int(rows.max() >= h - band) + int(cols.min() < band)
                + int(cols.max() >= w - band))

    def _refine(self, depth_mm: np.ndarray, com_uvd: np.ndarray, intr: Intrinsics,
                z_limit_mm: float = np.inf) -> np.ndarray:
        """Mean shift: ``com_uvd`` (u px, v px, z mm) -> centre of the valid 3D points within ``cube_mm / 2``
        and nearer than ``z_limit_mm``.

        Runs on every ``refine_stride``-th pixel (the mean of tens of thousands of points barely
        moves, the cost drops 4x) and stops once a step moves the centre less than 0.5 mm.
        """
        r = max(1, int(self.refine_stride))
        sub = depth_mm[::r, ::r]
        half = self.cube_mm / 2.0
        min_px = max(1, self.min_hand_px // (r * r))
        z_max = min(self.max_depth_mm, z_limit_mm)
        for _ in range(self.refine_iters):
            u, v, d = com_uvd
            hu, hv = half * intr.fx / d / r, half * intr.fy / d / r
            x0 = int(max(0, np.floor(u / r - hu)))
            x1 = int(min(sub.shape[1], np.ceil(u / r + hu) + 1))
            y0 = int(max(0, np.floor(v / r - hv)))
            y1 = int(min(sub.shape[0], np.ceil(v / r + hv) + 1))
            z = sub[y0:y1, x0:x1].astype(np.float64)
            keep = (z > self.min_depth_mm) & (z < z_max) & (np.abs(z - d) < half)
            if np.count_nonzero(keep) < min_px:
                break
            # On the window grid, without gathering the points: a pixel's ray is (a[col], b[row], 1),
            # so its 3D point is (a z, b z, z) and the sums of x and y are column/row sums of z.
            a = (np.arange(x0, x1) * r - intr.cx) / intr.fx
            b = (np.arange(y0, y1) * r - intr.cy) / intr.fy
            cx, cy = (u - intr.cx) * d / intr.fx, (v - intr.cy) * d / intr.fy
            dist2 = (a[None, :] * z - cx) ** 2
            dist2 += (b[:, None] * z - cy) ** 2
            dist2 += (z - d) ** 2
            inside = keep & (dist2 < half * half)
            n = np.count_nonzero(inside)
            if n < min_px:
                break
            z_in = np.where(inside, z, 0.0)
            x, y, z_mean = float(z_in.sum(axis=0) @ a) / n, float(z_in.sum(axis=1) @ b) / n, float(z_in.sum()) / n
            moved = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z_mean - d) ** 2)
            com_uvd = np.array([x * intr.fx / z_mean + intr.cx, y * intr.fy / z_mean + intr.cy, z_mean])
            if moved < 0.5:
                break
        return com_uvd

    # -- encode / decode ---------------------------------------------------------------------
    def warp_for(
        self, com_xyz_mm: np.ndarray, intrinsics: Intrinsics, cube_mm: float, rotation_deg: float = 0.0
    ) -> np.ndarray:
        """(2, 3) affine from image px to crop px for a cube of side ``cube_mm`` (mm) centred at
        ``com_xyz_mm`` ((3,) mm, optical frame). The crop shows the image turned by ``rotation_deg``
        counter-clockwise as displayed (``cv2.getRotationMatrix2D``'s sense)."""
        com_uv = intrinsics.project(com_xyz_mm)
        z = float(com_xyz_mm[2])
        # crop pixels per image pixel along each axis: the cube's projected extent maps to `size`
        sx = self.size / (cube_mm * intrinsics.fx / z)
        sy = self.size / (cube_mm * intrinsics.fy / z)
        theta = np.deg2rad(rotation_deg)
        c, s = np.cos(theta), np.sin(theta)
        linear = np.array([[c * sx, s * sy], [-s * sx, c * sy]])
        centre = np.array([(self.size - 1) / 2.0, (self.size - 1) / 2.0])
        offset = centre - linear @ com_uv
        return np.hstack([linear, offset[:, None]])

    def encode(self, depth: np.ndarray, intrinsics: Intrinsics, **options: Any) -> DepthCrop:
        """Depth frame -> :class:`DepthCrop`. Raises :class:`NoHandError` when nothing is in range.

        depth: (H, W) uint16 mm or float32 metres. ``options``: those of :meth:`encode_mm`.
        """
        return self.encode_mm(depth_to_mm(depth), intrinsics, **options)

    def encode_mm(
        self,
        depth_mm: np.ndarray,
        intrinsics: Intrinsics,
        com_xyz_mm: np.ndarray | None = None,
        rotation_deg: float = 0.0,
        scale: float = 1.0,
        shift_mm: np.ndarray | None = None,
    ) -> DepthCrop:
        """:meth:`encode` of a frame already converted by :func:`depth_to_mm` ((H, W) float32 mm,
        0 = no data; several crops of one frame convert it once).

        ``com_xyz_mm`` ((3,) mm, optical frame) overrides the localisation; ``rotation_deg`` (as in
        :meth:`warp_for`), ``scale`` (factor on ``cube_mm``) and ``shift_mm`` ((3,) mm added to the
        centre) augment.
        """
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
