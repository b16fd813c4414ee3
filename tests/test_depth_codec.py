"""Depth crop codec: exact round trip, hand search on synthetic and real SR305 frames."""

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from handpose_core.camera import SR305_INTRINSICS, Intrinsics
from handpose_core.codecs.depth_crop import DepthCropCodec, NoHandError, depth_to_mm
from handpose_core.data.synthetic import SynthConfig, SyntheticHands
from handpose_core.errors import HandPoseError

SR305 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sr305"
CAMERA = Intrinsics(475.0, 476.0, 320.5, 238.0)


@pytest.fixture(scope="module")
def samples():
    gen = SyntheticHands(SynthConfig(render_rgb=False), seed=11)
    return [gen[i] for i in range(12)]


@pytest.mark.parametrize("rotation, scale, shift", [(0.0, 1.0, None), (37.0, 1.2, (8.0, -5.0, 12.0)),
                                                    (-150.0, 0.85, (-3.0, 4.0, -20.0))])
def test_encode_decode_joints_round_trip_within_half_mm(samples, rotation, scale, shift):
    codec = DepthCropCodec()
    for s in samples:
        crop = codec.encode(s.depth_mm, s.intrinsics, com_xyz_mm=s.xyz_m.mean(0) * 1000, rotation_deg=rotation,
                            scale=scale, shift_mm=shift)
        back = codec.decode_joints(codec.encode_joints(s.xyz_m, crop), crop)
        assert np.abs(back - s.xyz_m).max() * 1000 < 0.5
        uv = codec.decode_uv(codec.encode_joints(s.xyz_m, crop), crop)
        np.testing.assert_allclose(uv, s.uv_px, atol=1e-3)


def test_crop_is_normalized_and_joints_inside_cube(samples):
    codec = DepthCropCodec()
    inside = 0
    for s in samples:
        crop = codec.encode(s.depth_mm, s.intrinsics)
        assert crop.image.shape == (128, 128) and crop.image.dtype == np.float32
        assert crop.image.min() >= -1.0 and crop.image.max() <= 1.0
        assert (crop.image < 0.99).sum() > 100  # the hand is in the crop
        inside += np.abs(codec.encode_joints(s.xyz_m, crop)).max() <= 1.2
    assert inside >= 0.75 * len(samples)  # the search centres on the hand on most synthetic frames


def test_no_object_in_range_and_bad_input():
    codec = DepthCropCodec()
    with pytest.raises(NoHandError):
        codec.encode(np.zeros((480, 640), np.uint16), CAMERA)
    far = np.full((480, 640), 4000, np.uint16)  # a wall 4 m away: beyond max_depth_mm
    with pytest.raises(NoHandError):
        codec.encode(far, CAMERA)
    nan = np.full((480, 640), np.nan, np.float32)
    with pytest.raises(NoHandError):
        codec.encode(nan, CAMERA)
    with pytest.raises(HandPoseError, match="dtype"):
        depth_to_mm(np.zeros((480, 640), np.int8))
    with pytest.raises(HandPoseError, match="2-D"):
        depth_to_mm(np.zeros((480, 640, 3), np.uint16))


def test_float_metres_and_nan_inf_are_handled_like_mm():
    depth = np.zeros((480, 640), np.float32)
    depth[200:260, 300:340] = 0.5
    depth[0, 0], depth[1, 1], depth[2, 2] = np.nan, np.inf, -1.0
    mm = depth_to_mm(depth)
    assert mm[230, 320] == pytest.approx(500.0)
    assert mm[0, 0] == 0 and mm[1, 1] == 0 and mm[2, 2] == 0
    com = DepthCropCodec().locate(mm, CAMERA)
    assert com[2] == pytest.approx(500.0, abs=1.0)
    assert CAMERA.project(com) == pytest.approx([319.5, 229.5], abs=1.5)


@pytest.mark.skipif(not SR305.is_dir(), reason="shared SR305 frames not present")
def test_finds_the_hand_on_every_real_sr305_frame():
    """On the real sensor frames the crop must hold the hand: the nearest object, in front of the body.

    With no joint labels, "found" means: the crop centre is at least 25 mm nearer
    than the median depth of the frame (the torso), and the crop is not filled by the torso: a hand
    and forearm cover well under 60 % of it, a chest nearly all.
    """
    codec = DepthCropCodec()
    frames = sorted(SR305.glob("*/*.png"))
    assert len(frames) == 19
    for path in frames:
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        depth_m = raw.astype(np.float32) * 0.125e-3
        crop = codec.encode(depth_m, SR305_INTRINSICS)
        body_mm = np.median(raw[raw > 0]) * 0.125
        assert crop.com_xyz_mm[2] < body_mm - 25, path.name
        foreground = (crop.image < 0.99).mean()
        assert 0.05 < foreground < 0.6, (path.name, foreground)


@pytest.mark.parametrize("frame", [700, 767, 793, 845])
def test_a_floor_sloping_up_to_the_camera_is_not_the_hand(frame):
    """Held-out frames (seed 1000) where a floor's near strip (touching the bottom and both sides,
    ~200 mm away) came before a hand in the air 400-800 mm behind it. The search took the strip
    for the hand (errors of 480-930 mm through the estimator, centres ~600 mm off); the centre must
    now be on the hand and its forearm (within half a cube of the joints' centroid; the estimator's
    second pass re-centres on the hand)."""
    sample = SyntheticHands(SynthConfig(render_rgb=False), seed=1000)[frame]
    com = DepthCropCodec().locate(depth_to_mm(sample.depth_mm), sample.intrinsics)
    assert np.linalg.norm(com - sample.xyz_m.mean(axis=0) * 1000) < 150.0


def _refine_by_gathering(codec: DepthCropCodec, depth_mm, com_uvd, intr, z_limit_mm=np.inf):
    """The mean shift written plainly (gather the window's points, then average): the oracle
    for the grid form in DepthCropCodec._refine."""
    r = codec.refine_stride
    sub = depth_mm[::r, ::r]
    half = codec.cube_mm / 2.0
    min_px = max(1, codec.min_hand_px // (r * r))
    for _ in range(codec.refine_iters):
        u, v, d = com_uvd
        hu, hv = half * intr.fx / d / r, half * intr.fy / d / r
        x0, x1 = int(max(0, np.floor(u / r - hu))), int(min(sub.shape[1], np.ceil(u / r + hu) + 1))
        y0, y1 = int(max(0, np.floor(v / r - hv))), int(min(sub.shape[0], np.ceil(v / r + hv) + 1))
        window = sub[y0:y1, x0:x1]
        keep = (window > codec.min_depth_mm) & (window < min(codec.max_depth_mm, z_limit_mm))
        keep &= np.abs(window - d) < half
        vs, us = np.nonzero(keep)
        if vs.size < min_px:
            break
        zs = window[vs, us].astype(np.float64)
        xs = ((us + x0) * r - intr.cx) * zs / intr.fx
        ys = ((vs + y0) * r - intr.cy) * zs / intr.fy
        cx, cy = (u - intr.cx) * d / intr.fx, (v - intr.cy) * d / intr.fy
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 + (zs - d) ** 2 < half * half
        if np.count_nonzero(inside) < min_px:
            break
        x, y, z = xs[inside].mean(), ys[inside].mean(), zs[inside].mean()
        moved = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - d) ** 2)
        com_uvd = np.array([x * intr.fx / z + intr.cx, y * intr.fy / z + intr.cy, z])
        if moved < 0.5:
            break
    return com_uvd


def test_mean_shift_equals_the_plain_gather_and_average_form(samples):
    codec = DepthCropCodec()
    checked = 0
    for s in samples:
        depth_mm = depth_to_mm(s.depth_mm)
        com = codec.locate(depth_mm, s.intrinsics)
        uv = s.intrinsics.project(com[None])[0]
        for offset in ((0.0, 0.0, 0.0), (9.0, -6.0, 15.0), (-20.0, 14.0, -30.0)):
            start = np.array([uv[0], uv[1], com[2]]) + offset
            for z_limit in (np.inf, com[2] + 60.0):
                got = codec._refine(depth_mm, start, s.intrinsics, z_limit)
                want = _refine_by_gathering(codec, depth_mm, start, s.intrinsics, z_limit)
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
                checked += 1
    assert checked == 6 * len(samples)


def test_candidates_start_with_locate_and_keep_apart(samples):
    """The first candidate is locate's centre; later ones lie at least a quarter cube from earlier ones."""
    codec = DepthCropCodec()
    counts = []
    for s in samples:
        depth_mm = depth_to_mm(s.depth_mm)
        cands = list(itertools.islice(codec.candidates(depth_mm, s.intrinsics), 4))
        counts.append(len(cands))
        assert 1 <= len(cands) <= 4
        np.testing.assert_allclose(cands[0], codec.locate(depth_mm, s.intrinsics))
        for i in range(len(cands)):
            for j in range(i):
                assert np.linalg.norm(cands[i] - cands[j]) >= codec.cube_mm / 4
    assert max(counts) > 1  # some of these frames hold more than one hand-like object
    with pytest.raises(NoHandError):
        next(codec.candidates(np.zeros((48, 64), np.float32), CAMERA))


@pytest.mark.parametrize("index, first_off_mm, hand_within_mm, why", [
    (546, 200.0, 100.0, "the hand cut by the left border is held back; a ball first (an estimate 559 mm off)"),
    (267, 250.0, 160.0, "a ball qualifies; the hand, whose forearm leaves the bottom edge, does not"),
    (1345, 250.0, 160.0, "a patch of a sloping wall first; the hand at the right border"),
    (1693, 250.0, 160.0, "a wall nearer than the hand; the hand touches the bottom edge"),
])
def test_a_hand_the_search_does_not_take_first_is_still_a_candidate(index, first_off_mm, hand_within_mm, why):
    """Held-out frames (seed 1000) whose first candidate is not the hand: the hand must be a later one.
    Frame 546: a slab held back at the border. The others put a 27-minute network 390-870 mm off while
    the search offered one candidate; the hand is now a hand-sized blob that did not qualify."""
    sample = SyntheticHands(SynthConfig(render_rgb=False), seed=1000)[index]
    centroid = sample.xyz_m.mean(axis=0) * 1000
    cands = list(itertools.islice(DepthCropCodec().candidates(depth_to_mm(sample.depth_mm), sample.intrinsics), 4))
    distances = [float(np.linalg.norm(c - centroid)) for c in cands]
    assert distances[0] > first_off_mm and min(distances[1:], default=np.inf) < hand_within_mm, (why, distances)
