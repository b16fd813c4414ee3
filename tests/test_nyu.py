"""NYU Hand Pose loader on small files in the real layout, written by the tests.

The depth PNGs are written by a minimal PNG encoder below (RGB byte order as the PNG format
stores it, no OpenCV), so the G/B unpacking is checked independently of OpenCV's BGR order.
"""

from __future__ import annotations

import logging
import struct
import zlib
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import scipy.io

from handpose_core.camera import NYU_INTRINSICS
from handpose_core.codecs.depth_crop import DepthCropCodec
from handpose_core.data.nyu import NYUDataset, NYUFrame, encode_dataset, read_nyu_depth
from handpose_core.errors import HandPoseError
from handpose_core.keypoints import NYU14, NYU36_TO_14

FX, FY, CX, CY = NYU_INTRINSICS.as_tuple()
H, W = 480, 640
N_FRAMES = 3


# -- writers ------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_rgb_png(path, rgb: np.ndarray) -> None:
    """(H, W, 3) uint8 in R, G, B order -> 8-bit truecolour PNG (colour type 2), no OpenCV involved."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[r].tobytes() for r in range(h))  # filter type 0 per row
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + _png_chunk(b"IDAT", zlib.compress(raw, 1)) + _png_chunk(b"IEND", b""))


def pack_nyu(depth_mm: np.ndarray, rng=None) -> np.ndarray:
    """(H, W) uint16 -> (H, W, 3) RGB with G = high byte, B = low byte; R gets junk (NYU leaves it unused)."""
    rgb = np.zeros(depth_mm.shape + (3,), np.uint8)
    if rng is not None:
        rgb[..., 0] = rng.integers(0, 256, depth_mm.shape, dtype=np.uint8)
    rgb[..., 1] = depth_mm >> 8
    rgb[..., 2] = depth_mm & 0xFF
    return rgb


def nyu_uvd(xyz_mm: np.ndarray) -> np.ndarray:
    """NYU's own projection of y-up millimetres: u = fx x/z + cx, v = cy - fy y/z, d = z."""
    x, y, z = xyz_mm[..., 0], xyz_mm[..., 1], xyz_mm[..., 2]
    return np.stack([FX * x / z + CX, CY - FY * y / z, z], axis=-1)


def blob_depth(centre_mm: np.ndarray, radius_mm: float = 60.0) -> np.ndarray:
    """A hand-sized disc (slightly domed) at ``centre_mm`` (NYU y-up convention) on an empty background."""
    u0, v0, z0 = nyu_uvd(centre_mm)
    r_px = radius_mm * FX / z0
    vv, uu = np.mgrid[0:H, 0:W]
    rr = np.hypot(uu - u0, vv - v0) / r_px
    depth = np.zeros((H, W), np.uint16)
    inside = rr < 1.0
    depth[inside] = np.round(z0 + 20.0 * rr[inside] ** 2).astype(np.uint16)
    return depth


def make_split(folder, seed: int = 0, kinects=(1, 2), empty_frames=(2,)) -> dict:
    """Write a 3-frame NYU split; returns the arrays written (xyz in NYU's y-up mm, uvd)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    centres = np.array([[-40.0, 30.0, 700.0], [60.0, -50.0, 650.0], [0.0, 0.0, 750.0]])
    xyz = np.empty((3, N_FRAMES, 36, 3))
    for k in range(3):
        for f in range(N_FRAMES):
            c = centres[f] + [10.0 * k, 0.0, 0.0]
            xyz[k, f] = c + rng.uniform([-45, -45, -25], [45, 45, 25], size=(36, 3))
    uvd = nyu_uvd(xyz)
    names = np.array([f"F{j // 6}_J{j % 6}" for j in range(36)], dtype=object).reshape(1, 36)
    scipy.io.savemat(folder / "joint_data.mat", {"joint_xyz": xyz, "joint_uvd": uvd, "joint_names": names})
    depth = {}
    for k in kinects:
        for f in range(N_FRAMES):
            c = centres[f] + [10.0 * (k - 1), 0.0, 0.0]
            d = np.zeros((H, W), np.uint16) if f in empty_frames else blob_depth(c)
            depth[k, f] = d
            write_rgb_png(folder / f"depth_{k}_{f + 1:07d}.png", pack_nyu(d, rng))
    return {"xyz": xyz, "uvd": uvd, "depth": depth, "names": [f"F{j // 6}_J{j % 6}" for j in range(36)]}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nyu") / "train"
    return folder, make_split(folder)


# -- depth packing --------------------------------------------------------------------------------


def test_depth_packing_decodes_exactly(tmp_path):
    rng = np.random.default_rng(3)
    depth = rng.integers(0, 65536, (48, 64), dtype=np.uint16)
    known = [0, 1, 255, 256, 258, 700, 0x1234, 4095, 65535]
    depth[0, : len(known)] = known
    write_rgb_png(tmp_path / "depth_1_0000001.png", pack_nyu(depth, rng))
    out = read_nyu_depth(tmp_path / "depth_1_0000001.png")
    assert out.dtype == np.uint16 and out.shape == (48, 64)
    np.testing.assert_array_equal(out, depth)
    # 258 = G 1, B 2: swapping the channels would read 513; R (junk) must not leak in
    assert out[0, 4] == 258 and out[0, 6] == 0x1234


def test_depth_channel_order_matches_opencv_bgr(tmp_path):
    """The same packing written through OpenCV (BGR: B channel 0, G channel 1) reads back the same."""
    depth = np.array([[0, 1, 258, 700], [1500, 0x0A0B, 40000, 65535]], dtype=np.uint16)
    depth = np.repeat(np.repeat(depth, 4, 0), 4, 1)
    bgr = np.zeros(depth.shape + (3,), np.uint8)
    bgr[..., 0] = depth & 0xFF
    bgr[..., 1] = depth >> 8
    bgr[..., 2] = 77
    cv2.imwrite(str(tmp_path / "d.png"), bgr)
    np.testing.assert_array_equal(read_nyu_depth(tmp_path / "d.png"), depth)


# -- dataset ------------------------------------------------------------------------------------


def test_len_getitem_and_frame_contents(split):
    folder, data = split
    ds = NYUDataset(folder)
    assert len(ds) == N_FRAMES
    assert ds.joint_names == NYU14.joint_names and ds.intrinsics == NYU_INTRINSICS
    frame = ds[1]
    assert isinstance(frame, NYUFrame) and frame.index == 1
    assert frame.path.name == "depth_1_0000002.png"
    assert frame.depth_mm.shape == (H, W) and frame.depth_mm.dtype == np.uint16
    np.testing.assert_array_equal(frame.depth_mm, data["depth"][1, 1])
    assert frame.xyz_m.shape == (14, 3) and frame.xyz_m.dtype == np.float32
    assert frame.uvd.shape == (14, 3)
    np.testing.assert_allclose(frame.uvd, data["uvd"][0, 1, list(NYU36_TO_14)], atol=1e-3)
    assert ds[-1].index == N_FRAMES - 1
    with pytest.raises(IndexError):
        ds[N_FRAMES]


def test_xyz_is_optical_frame_metres_and_projects_to_uvd(split):
    folder, data = split
    ds = NYUDataset(folder, joints="all36")
    for i in range(N_FRAMES):
        frame = ds[i]
        raw = data["xyz"][0, i]
        np.testing.assert_allclose(frame.xyz_m[:, 0], raw[:, 0] / 1000.0, atol=1e-6)
        np.testing.assert_allclose(frame.xyz_m[:, 1], -raw[:, 1] / 1000.0, atol=1e-6)  # y up -> y down
        np.testing.assert_allclose(frame.xyz_m[:, 2], raw[:, 2] / 1000.0, atol=1e-6)
        uv = NYU_INTRINSICS.project(frame.xyz_m)
        np.testing.assert_allclose(uv, data["uvd"][0, i, :, :2], atol=1e-3)
    # y sign: a joint above the principal point (v < cy) has negative optical y
    frame = ds[0]
    above = frame.uvd[:, 1] < CY
    assert above.any() and (~above).any()
    assert (frame.xyz_m[above, 1] < 0).all() and (frame.xyz_m[~above, 1] > 0).all()


def test_36_to_14_selection_picks_the_right_rows(split):
    folder, data = split
    ds14, ds36 = NYUDataset(folder), NYUDataset(folder, joints="all36")
    assert ds36.joint_names == tuple(data["names"])
    frame14, frame36 = ds14[0], ds36[0]
    assert frame36.xyz_m.shape == (36, 3)
    np.testing.assert_array_equal(frame14.xyz_m, frame36.xyz_m[list(NYU36_TO_14)])
    for k, row in enumerate(NYU36_TO_14):  # each selected row is the raw joint `row`, nothing else
        expected = data["xyz"][0, 0, row] * [1e-3, -1e-3, 1e-3]
        np.testing.assert_allclose(frame14.xyz_m[k], expected, atol=1e-6)
        others = np.delete(data["xyz"][0, 0], row, axis=0) * [1e-3, -1e-3, 1e-3]
        assert np.abs(others - frame14.xyz_m[k]).max(axis=1).min() > 1e-4


def test_kinect_argument_selects_the_camera(split):
    folder, data = split
    ds2 = NYUDataset(folder, kinect=2)
    frame = ds2[0]
    assert frame.path.name == "depth_2_0000001.png"
    np.testing.assert_allclose(frame.xyz_m, data["xyz"][1, 0, list(NYU36_TO_14)] * [1e-3, -1e-3, 1e-3], atol=1e-6)
    np.testing.assert_array_equal(frame.depth_mm, data["depth"][2, 0])
    with pytest.raises(HandPoseError, match="depth_3_0000001.png"):
        NYUDataset(folder, kinect=3)  # no depth files written for kinect 3
    for bad in (0, 4, "1"):
        with pytest.raises(HandPoseError, match="kinect"):
            NYUDataset(folder, kinect=bad)
    with pytest.raises(HandPoseError, match="joints"):
        NYUDataset(folder, joints="all21")


# -- encoding -----------------------------------------------------------------------------------


def test_encode_dataset_shapes_and_labels_decode_to_joints(split, caplog):
    folder, _ = split
    ds = NYUDataset(folder)
    codec = DepthCropCodec()
    with caplog.at_level(logging.INFO, logger="handpose_core.data.nyu"):
        crops, labels = encode_dataset(ds, codec, progress=False)
    assert crops.shape == (N_FRAMES, codec.size, codec.size) and crops.dtype == np.float16
    assert labels.shape == (N_FRAMES, 14 * 3) and labels.dtype == np.float32
    assert "1 of 3 frames" in caplog.text  # frame 2 has no hand in its depth
    for i in range(N_FRAMES):
        frame = ds[i]
        if i == 2:
            xyz_mm = frame.xyz_m.astype(np.float64) * 1000.0
            crop = codec.encode(frame.depth_mm, frame.intrinsics,
                                com_xyz_mm=0.5 * (xyz_mm.min(axis=0) + xyz_mm.max(axis=0)))
            assert (crop.image == 1.0).all()
        else:
            crop = codec.encode(frame.depth_mm, frame.intrinsics)  # the hand was found by the search
        np.testing.assert_array_equal(crops[i], crop.image.astype(np.float16))
        decoded = codec.decode_joints(labels[i].reshape(-1, 3), crop)
        np.testing.assert_allclose(decoded, frame.xyz_m, atol=0.5e-3)  # 0.5 mm
        assert np.abs(labels[i]).max() <= 1.0


def test_training_entry_point_loads_nyu(split):
    pytest.importorskip("torch")
    from training.train_deep_prior import load_training_data

    folder, _ = split
    args = SimpleNamespace(data=f"nyu:{folder}", no_progress=True)
    data, names, provenance = load_training_data(args, DepthCropCodec())
    assert data.crops.shape == (N_FRAMES, 128, 128) and data.labels.shape == (N_FRAMES, 42)
    assert data.big_factor == 1.0
    assert names == NYU14.joint_names and provenance["n_train"] == N_FRAMES


# -- errors ---------------------------------------------------------------------------------------


def test_missing_folder_and_mat(tmp_path):
    with pytest.raises(HandPoseError, match="NYU folder not found.*nope"):
        NYUDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HandPoseError, match="joint file not found.*joint_data.mat"):
        NYUDataset(tmp_path / "empty")
    (tmp_path / "empty" / "joint_data.mat").write_bytes(b"this is not a mat file" * 10)
    with pytest.raises(HandPoseError, match="joint_data.mat is not a readable MATLAB"):
        NYUDataset(tmp_path / "empty")


@pytest.mark.parametrize("missing", ["joint_xyz", "joint_uvd"])
def test_mat_missing_key(tmp_path, missing):
    make_split(tmp_path, kinects=(1,))
    mat = {k: v for k, v in scipy.io.loadmat(tmp_path / "joint_data.mat").items() if not k.startswith("__")}
    del mat[missing]
    scipy.io.savemat(tmp_path / "joint_data.mat", mat)
    with pytest.raises(HandPoseError, match=f"joint_data.mat lacks '{missing}'"):
        NYUDataset(tmp_path)


@pytest.mark.parametrize(
    ("xyz_shape", "uvd_shape", "kinect", "message"),
    [
        ((3, 3, 35, 3), (3, 3, 35, 3), 1, r"'joint_xyz' must be \(kinects, frames, 36, 3\), got \(3, 3, 35, 3\)"),
        ((3, 3, 36, 3), (3, 3, 36), 1, r"'joint_uvd' must be \(kinects, frames, 36, 3\), got \(3, 3, 36\)"),
        ((3, 0, 36, 3), (3, 0, 36, 3), 1, r"'joint_xyz' must be .*got \(3, 0, 36, 3\)"),
        ((3, 3, 36, 3), (3, 2, 36, 3), 1, r"joint_xyz \(3, 3, 36, 3\) and joint_uvd \(3, 2, 36, 3\) differ"),
        ((1, 3, 36, 3), (1, 3, 36, 3), 2, r"'joint_xyz' has 1 kinect\(s\), kinect=2"),
    ],
)
def test_mat_wrong_shapes(tmp_path, xyz_shape, uvd_shape, kinect, message):
    scipy.io.savemat(tmp_path / "joint_data.mat",
                     {"joint_xyz": np.ones(xyz_shape), "joint_uvd": np.ones(uvd_shape)})
    with pytest.raises(HandPoseError, match=message):
        NYUDataset(tmp_path, kinect=kinect)


def test_truncated_png(tmp_path):
    make_split(tmp_path, kinects=(1,))
    good = (tmp_path / "depth_1_0000002.png").read_bytes()
    (tmp_path / "depth_1_0000002.png").write_bytes(good[: len(good) // 2])
    ds = NYUDataset(tmp_path)
    with pytest.raises(HandPoseError, match=r"depth_1_0000002.png is truncated"):
        ds[1]
    # all bytes present but the image data damaged: OpenCV cannot decode it
    broken = bytearray(good)
    idat = broken.index(b"IDAT")
    broken[idat + 8: idat + 40] = bytes(32)
    (tmp_path / "depth_1_0000002.png").write_bytes(bytes(broken))
    with pytest.raises(HandPoseError, match=r"depth_1_0000002.png is truncated or corrupt"):
        ds[1]
    (tmp_path / "depth_1_0000002.png").write_bytes(b"")
    with pytest.raises(HandPoseError, match=r"depth_1_0000002.png is not a PNG"):
        ds[1]


def test_missing_png(tmp_path):
    make_split(tmp_path, kinects=(1,))
    (tmp_path / "depth_1_0000003.png").unlink()
    ds = NYUDataset(tmp_path)  # only the first frame is checked up front
    with pytest.raises(HandPoseError, match=r"not found: .*depth_1_0000003.png"):
        ds[2]
    with pytest.raises(HandPoseError, match=r"depth_1_0000003.png"):
        encode_dataset(ds, DepthCropCodec(), progress=False)


def test_16bit_single_channel_png_is_rejected(tmp_path):
    make_split(tmp_path, kinects=(1,))
    cv2.imwrite(str(tmp_path / "depth_1_0000001.png"), np.full((H, W), 700, np.uint16))
    with pytest.raises(HandPoseError, match=r"depth_1_0000001.png is a 16-bit single-channel PNG.*\(G << 8\) \| B"):
        NYUDataset(tmp_path)[0]
    cv2.imwrite(str(tmp_path / "depth_1_0000001.png"), np.full((H, W), 7, np.uint8))
    with pytest.raises(HandPoseError, match=r"8-bit single-channel"):
        read_nyu_depth(tmp_path / "depth_1_0000001.png")
    cv2.imwrite(str(tmp_path / "depth_1_0000001.png"), np.zeros((H, W, 3), np.uint16))
    with pytest.raises(HandPoseError, match=r"3-channel uint16 PNG"):
        read_nyu_depth(tmp_path / "depth_1_0000001.png")


def test_wrong_frame_size(tmp_path):
    make_split(tmp_path, kinects=(1,))
    write_rgb_png(tmp_path / "depth_1_0000001.png", pack_nyu(np.zeros((240, 320), np.uint16)))
    with pytest.raises(HandPoseError, match=r"depth_1_0000001.png is 320x240, NYU frames are 640x480"):
        NYUDataset(tmp_path)[0]
