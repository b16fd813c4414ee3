"""Analytic ray-capsule rendering: depth, capsule ids and surface normals for the pixels near the hand.

Part of :mod:`handpose_core.data.synthetic`. Capsules (segment ``a``-``b``, radius ``r``, metres,
camera optical frame) are culled per 8x8 pixel tile, and each surviving (tile, capsule) pair is
intersected in array code: no per-pixel Python. Depth and capsule id are packed into one
uint32 key so that a single minimum gives the nearest surface and what it belongs to.
"""

from __future__ import annotations

import math

import numpy as np

from handpose_core.camera import Intrinsics
from handpose_core.errors import HandPoseError

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
        # z / False = inf drops body entries that are off the body (abs: an off-body entry behind
        # the camera would give -inf, which won the min as a hit at -inf; valid entries are in
        # front of the camera, z > 0, and keep their value); a valid body entry is never behind
        # the end-sphere entry.
        z = np.fmin(np.fmin(np.abs((az + s) / body), az + s2), _FAR)
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


