"""Belief-map codec and hand crop transform: round trips and conventions."""

from __future__ import annotations

import numpy as np
import pytest

from handpose_core import HandPoseError
from handpose_core.codecs.belief_maps import (
    BeliefMapCodec,
    CropBox,
    InputSpec,
    box_from_keypoints,
    crop_image,
    decode_peaks,
    warp_points,
)
from handpose_core.training.metrics_2d import bbox_size, evaluate_2d, pck_curve, plot_pck


@pytest.mark.parametrize("size,sigma", [(128, 6.0), (128, 4.0), (368, 7.0), (64, 4.0), (160, 8.0), (96, 8.0)])
def test_round_trip_within_one_pixel(size, sigma):
    codec = BeliefMapCodec(input_size=size, stride=8, sigma_px=sigma)
    rng = np.random.default_rng(size)
    for _ in range(20):
        uv = rng.uniform(-0.5, size - 0.5, (21, 2))  # anywhere in the crop, borders included
        maps = codec.encode(uv)
        assert maps.shape == (22, size // 8, size // 8) and maps.dtype == np.float32
        dec, conf = codec.decode(maps)
        err = np.linalg.norm(dec - uv, axis=1)
        assert err.max() < 1.0, err.max()
        assert np.all((conf > 0.4) & (conf <= 1.0))


def test_encode_background_and_invalid_keypoints():
    codec = BeliefMapCodec(64, 8, 4.0)
    uv = np.array([[20.0, 30.0], [np.nan, np.nan], [40.0, 10.0]])
    maps = codec.encode(uv, valid=np.array([True, True, False]))
    assert maps.shape == (4, 8, 8)
    assert maps[0].max() > 0.8
    assert np.all(maps[1] == 0) and np.all(maps[2] == 0)  # NaN and not-valid -> empty maps
    np.testing.assert_allclose(maps[3], 1.0 - maps[:3].max(axis=0))
    assert maps[3].min() < 0.2 and maps[3].max() == pytest.approx(1.0, abs=1e-3)


def test_encode_batch_equals_one_at_a_time():
    codec = BeliefMapCodec(64, 8, 4.0)
    rng = np.random.default_rng(3)
    uv = rng.uniform(-10, 74, (5, 21, 2))
    uv[1, 4] = np.nan
    valid = rng.random((5, 21)) > 0.2
    maps = codec.encode(uv, valid)
    assert maps.shape == (5, 22, 8, 8) and maps.dtype == np.float32
    for b in range(5):
        np.testing.assert_array_equal(maps[b], codec.encode(uv[b], valid[b]))
    assert np.all(maps[1, 4] == 0)


def test_cell_centre_convention_matches_peak():
    codec = BeliefMapCodec(64, 8, 4.0)
    maps = codec.encode(np.array([[8 * 3 + 3.5, 8 * 5 + 3.5]]))  # exactly on cell (row 5, col 3)
    assert np.unravel_index(maps[0].argmax(), maps[0].shape) == (5, 3)
    assert maps[0, 5, 3] == pytest.approx(1.0)


def test_decode_confidence_is_peak_clipped():
    codec = BeliefMapCodec(64, 8, 6.0)
    maps = codec.encode(np.array([[30.0, 30.0], [10.0, 50.0]]))
    maps[0] *= 0.3
    maps[1] *= 3.0
    _, conf = codec.decode(maps)
    assert conf[0] == pytest.approx(0.3, abs=0.03)
    assert conf[1] == 1.0


def test_decode_handles_flat_and_negative_maps():
    codec = BeliefMapCodec(64, 8, 4.0)
    uv, conf = codec.decode(np.full((22, 8, 8), -0.1, np.float32))
    assert np.all(np.isfinite(uv)) and np.all(conf == 0.0)
    with pytest.raises(HandPoseError):
        codec.decode(np.zeros((8, 8)))


def test_decode_peaks_subpixel():
    yy, xx = np.mgrid[0:40, 0:50]
    m = np.exp(-((xx - 21.3) ** 2 + (yy - 17.6) ** 2) / (2 * 3.0**2))[None]
    uv, conf = decode_peaks(m.astype(np.float32))
    assert np.allclose(uv[0], [21.3, 17.6], atol=0.15)


def test_codec_validates_config():
    with pytest.raises(HandPoseError):
        BeliefMapCodec(100, 8, 4.0)
    with pytest.raises(HandPoseError):
        BeliefMapCodec(64, 8, 0.0)


def test_crop_box_warp_round_trip_and_image_content():
    box = CropBox(cx=100.0, cy=80.0, side=50.0)
    for rot in (0.0, 30.0, -90.0):
        warp = box.warp(128, rotation_deg=rot)
        pts = np.array([[100.0, 80.0], [90.0, 70.0], [120.0, 99.0]])
        crop_pts = warp_points(pts, warp)
        np.testing.assert_allclose(crop_pts[0], [63.5, 63.5], atol=1e-4)  # centre -> crop centre
        np.testing.assert_allclose(warp_points(crop_pts, warp, inverse=True), pts, atol=1e-4)
    # a bright pixel in the source lands where the warp says
    img = np.zeros((200, 200, 3), np.uint8)
    img[90, 110] = 255
    warp = box.warp(100)
    crop = crop_image(img, warp, 100, border_value=0, interpolation=0)
    u, v = warp_points(np.array([[110.0, 90.0]]), warp)[0]
    assert crop[int(round(v)), int(round(u))].max() == 255


def test_crop_pads_outside_with_grey():
    img = np.zeros((20, 20, 3), np.uint8)
    crop = crop_image(img, CropBox(0.0, 0.0, 40.0).warp(32), 32)
    assert crop[0, 0].tolist() == [128, 128, 128] and crop[24, 24].tolist() == [0, 0, 0]


def test_box_from_keypoints_and_clipping():
    uv = np.array([[10.0, 20.0], [50.0, 40.0], [np.nan, np.nan], [500.0, 500.0]])
    box = box_from_keypoints(uv, margin=1.5, valid=np.array([True, True, True, False]))
    assert (box.cx, box.cy, box.side) == pytest.approx((30.0, 30.0, 60.0))
    with pytest.raises(HandPoseError):
        box_from_keypoints(np.full((3, 2), np.nan))
    assert CropBox(-100, -100, 20).clipped(64, 48) is None
    c = CropBox(0, 0, 40).clipped(64, 48)
    x0, y0, x1, y1 = c.xyxy
    assert x0 >= -0.5 and y0 >= -0.5 and c.side <= 40


def test_input_spec_normalisation():
    crop = np.zeros((4, 4, 3), np.uint8)
    crop[..., 0] = 255
    rgb = InputSpec(size=4).normalize(crop)
    bgr = InputSpec(size=4, channel_order="bgr").normalize(crop)
    assert rgb.shape == (3, 4, 4)
    assert rgb[0, 0, 0] == pytest.approx(255 / 256 - 0.5) and rgb[2, 0, 0] == pytest.approx(-0.5)
    assert bgr[2, 0, 0] == pytest.approx(255 / 256 - 0.5)


def test_metrics_pck_auc_epe():
    gt = np.zeros((2, 3, 2))
    gt[:, 1] = [100.0, 0.0]
    gt[:, 2] = [0.0, 50.0]  # bbox 100 x 50 -> normaliser 100 px
    pred = gt.copy()
    pred[0, 0] += [15.0, 0.0]  # 0.15 -> inside PCK@0.2
    pred[1, 2] += [0.0, 30.0]  # 0.30 -> outside
    r = evaluate_2d(pred, gt, joint_names=("a", "b", "c"))
    assert r["pck@0.2"] == pytest.approx(5 / 6)
    assert r["epe_mean_px"] == pytest.approx(45 / 6)
    assert r["per_joint"]["c"]["pck"] == pytest.approx(0.5)
    assert bbox_size(gt).tolist() == [100.0, 100.0]
    curve = pck_curve(pred, gt, thresholds=[0.0, 0.1, 0.2, 0.5])
    assert curve.tolist() == pytest.approx([4 / 6, 4 / 6, 5 / 6, 1.0])
    assert 0.8 < r["auc"] < 1.0
    # an excluded joint counts nowhere
    valid = np.ones((2, 3), bool)
    valid[1, 2] = False
    assert evaluate_2d(pred, gt, valid)["pck@0.2"] == pytest.approx(1.0)


def test_plot_pck_writes_png(tmp_path):
    import cv2

    gt = np.random.default_rng(0).uniform(0, 100, (5, 21, 2))
    r = evaluate_2d(gt + 3.0, gt)
    path = plot_pck({"model": r}, tmp_path / "pck.png")
    img = cv2.imread(str(path))
    assert img.shape == (480, 640, 3) and (img < 250).any()


def _reference_decode(codec: BeliefMapCodec, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-joint loop that BeliefMapCodec.decode replaced by array code: the answers must agree."""

    def vertex(profile, i):
        n = len(profile)
        if n < 3:
            return None
        c = min(max(i, 1), n - 2)
        a, b, d = (float(v) for v in profile[c - 1 : c + 2])
        curv = a - 2.0 * b + d
        if curv >= -1e-9:
            return None
        v = c + 0.5 * (a - d) / curv
        return None if abs(v - i) > 1.0 else v

    k = maps.shape[0] - 1
    coarse = maps[:k]
    uv, conf = decode_peaks(codec.upsample(coarse), refine=False)
    h, w = coarse.shape[1:]
    s, off = codec.stride, (codec.stride - 1) / 2.0
    for j in range(k):
        fx, fy = (uv[j, 0] - off) / s, (uv[j, 1] - off) / s
        xs = np.unique(np.clip([np.floor(fx), np.ceil(fx)], 0, w - 1).astype(int))
        ys = np.unique(np.clip([np.floor(fy), np.ceil(fy)], 0, h - 1).astype(int))
        sub = coarse[j][np.ix_(ys, xs)]
        iy, ix = np.unravel_index(int(sub.argmax()), sub.shape)
        cy, cx = int(ys[iy]), int(xs[ix])
        if coarse[j, cy, cx] <= 0:
            continue
        log_map = np.log(np.maximum(coarse[j], coarse[j, cy, cx] * 1e-6))
        rx, ry = vertex(log_map[cy, :], cx), vertex(log_map[:, cx], cy)
        if rx is not None and ry is not None:
            uv[j] = (s * rx + off, s * ry + off)
    return uv, conf


@pytest.mark.parametrize("case", ["encoded", "noisy", "edges", "negative"])
def test_vectorized_decode_equals_per_joint_reference(case):
    rng = np.random.default_rng(7)
    codec = BeliefMapCodec(128, 8, 6.0)
    for _ in range(5):
        uv = rng.uniform(-10, 138, (21, 2)).astype(np.float32)  # some peaks beyond the crop's edge
        maps = codec.encode(uv)
        if case == "noisy":
            maps = maps + rng.normal(0, 0.05, maps.shape).astype(np.float32)
        elif case == "edges":
            maps[:, :, :2] = maps[:, :, -2:] = 0.9  # flat ridges along the borders
        elif case == "negative":
            maps = maps - 0.5
        got_uv, got_conf = codec.decode(maps)
        ref_uv, ref_conf = _reference_decode(codec, maps)
        np.testing.assert_allclose(got_uv, ref_uv, atol=1e-4)
        np.testing.assert_array_equal(got_conf, ref_conf)
