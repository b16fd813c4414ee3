"""handpose_ros.conversions: Image <-> numpy for every encoding, CameraInfo, keypoint messages.

No rclpy runtime is needed: only message classes.
"""

from __future__ import annotations

import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from handpose_core.errors import HandPoseError
from handpose_core.keypoints import HAND21, NYU14
from handpose_ros import conversions as conv
from handpose_ros.conversions import ConversionError

ALL_ENCODINGS = ["16UC1", "mono16", "32FC1", "mono8", "rgb8", "bgr8", "rgba8", "bgra8"]


def _raw_array(encoding: str, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random pixels in the message layout of ``encoding``."""
    rng = np.random.default_rng(seed)
    dtype, channels = conv.ENCODINGS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype == np.float32:
        return rng.uniform(0.2, 4.0, size=shape).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


def _message(raw: np.ndarray, encoding: str, pad: int = 0, big: bool = False) -> Image:
    """Hand-built Image with ``pad`` junk bytes after each row, in big or little byte order."""
    height, width = raw.shape[:2]
    stored = raw.astype(raw.dtype.newbyteorder(">" if big else "<"))
    rows = stored.reshape(height, -1).view(np.uint8).reshape(height, -1)
    junk = np.full((height, pad), 0xAB, dtype=np.uint8)
    data = np.concatenate([rows, junk], axis=1).tobytes()
    return Image(
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(big),
        step=rows.shape[1] + pad,
        data=data,
    )


def _header(stamp_sec: int = 12, frame: str = "camera_optical") -> Header:
    h = Header(frame_id=frame)
    h.stamp.sec, h.stamp.nanosec = stamp_sec, 345
    return h


# --- images: raw round trips -----------------------------------------------------------------


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
@pytest.mark.parametrize("size", [(4, 6), (3, 7), (1, 1)])
def test_raw_round_trip_every_encoding(encoding, size):
    raw = _raw_array(encoding, *size)
    msg = conv.numpy_to_image_raw(raw, encoding, _header())
    assert msg.encoding == encoding and (msg.height, msg.width) == size
    assert msg.step == size[1] * conv.bytes_per_pixel(encoding)
    assert msg.header.frame_id == "camera_optical" and msg.header.stamp.sec == 12
    back = conv.image_to_numpy_raw(msg)
    assert back.dtype == raw.dtype and back.shape == raw.shape
    np.testing.assert_array_equal(back, raw)
    assert back.flags.writeable and back.flags.c_contiguous


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
@pytest.mark.parametrize("pad", [1, 3, 8])
@pytest.mark.parametrize("big", [False, True])
def test_step_padding_and_byte_order(encoding, pad, big):
    raw = _raw_array(encoding, 5, 7, seed=pad)  # odd width
    msg = _message(raw, encoding, pad=pad, big=big)
    back = conv.image_to_numpy_raw(msg)
    assert back.dtype.isnative
    np.testing.assert_array_equal(back, raw)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1", "mono16"])
def test_write_big_endian(encoding):
    raw = _raw_array(encoding, 3, 5)
    msg = conv.numpy_to_image_raw(raw, encoding, is_bigendian=True)
    assert msg.is_bigendian == 1
    expected = raw.astype(raw.dtype.newbyteorder(">")).tobytes()
    assert bytes(msg.data) == expected
    np.testing.assert_array_equal(conv.image_to_numpy(msg), raw)


def test_big_endian_depth_values():
    # 1000 mm = 0x03E8: big-endian bytes 03 E8
    msg = Image(height=1, width=2, encoding="16UC1", is_bigendian=1, step=4, data=bytes([3, 232, 0, 1]))
    np.testing.assert_array_equal(conv.image_to_numpy(msg), [[1000, 1]])
    msg.is_bigendian = 0
    np.testing.assert_array_equal(conv.image_to_numpy(msg), [[59395, 256]])


def test_longer_data_than_needed_is_accepted():
    raw = _raw_array("16UC1", 2, 3)
    msg = _message(raw, "16UC1")
    msg.data = bytes(msg.data) + b"\x00" * 10
    np.testing.assert_array_equal(conv.image_to_numpy(msg), raw)


# --- images: canonical arrays ----------------------------------------------------------------


def test_canonical_colour_is_rgb():
    rgb = _raw_array("rgb8", 3, 5)
    bgr = rgb[..., ::-1]
    alpha = np.full((3, 5, 1), 7, np.uint8)
    cases = {
        "rgb8": rgb,
        "bgr8": bgr,
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([bgr, alpha], axis=2),
    }
    for encoding, raw in cases.items():
        out = conv.image_to_numpy(_message(np.ascontiguousarray(raw), encoding, pad=2))
        assert out.shape == (3, 5, 3) and out.dtype == np.uint8, encoding
        np.testing.assert_array_equal(out, rgb, err_msg=encoding)


def test_mono8_becomes_grey_rgb():
    grey = _raw_array("mono8", 4, 3)
    out = conv.image_to_numpy(_message(grey, "mono8", pad=1))
    assert out.shape == (4, 3, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)
    np.testing.assert_array_equal(conv.image_to_numpy_raw(_message(grey, "mono8")), grey)


@pytest.mark.parametrize("encoding", ["16UC1", "mono16", "32FC1"])
def test_canonical_depth(encoding):
    raw = _raw_array(encoding, 4, 5)
    out = conv.image_to_numpy(_message(raw, encoding, pad=2))
    assert out.shape == (4, 5) and out.dtype == raw.dtype
    np.testing.assert_array_equal(out, raw)


def test_nan_depth_survives():
    depth = np.full((2, 3), np.nan, np.float32)
    depth[0, 0] = 1.5
    out = conv.image_to_numpy(conv.numpy_to_image(depth, "32FC1"))
    assert out[0, 0] == np.float32(1.5) and np.isnan(out[1:]).all()


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
def test_canonical_round_trip_every_encoding(encoding):
    """numpy_to_image(image_to_numpy(msg)) == msg for opaque colour and grey images."""
    raw = _raw_array(encoding, 5, 3)
    if encoding in ("rgba8", "bgra8"):
        raw[..., 3] = 255  # the canonical RGB array has no alpha: written back as opaque
    msg = conv.numpy_to_image_raw(raw, encoding, _header())
    canonical = conv.image_to_numpy(msg)
    again = conv.numpy_to_image(canonical, encoding, _header())
    assert (again.encoding, again.height, again.width, again.step) == (
        msg.encoding,
        msg.height,
        msg.width,
        msg.step,
    )
    assert bytes(again.data) == bytes(msg.data)
    np.testing.assert_array_equal(conv.image_to_numpy(again), canonical)


def test_mono8_from_rgb_uses_luma():
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    grey = conv.image_to_numpy_raw(conv.numpy_to_image(rgb, "mono8"))
    assert grey[0, 1] > grey[0, 0] > grey[0, 2] > 0


def test_depth_problem():
    assert conv.depth_problem(np.array([[0, 1]], np.uint16)) is None
    assert "all zero" in conv.depth_problem(np.zeros((2, 3), np.uint16))
    holes = np.array([[np.nan, 0.5]], np.float32)
    assert conv.depth_problem(holes) is None
    assert "all NaN" in conv.depth_problem(np.full((2, 2), np.nan, np.float32))
    assert "no valid pixel" in conv.depth_problem(np.array([[0.0, -1.0, np.nan, np.inf]], np.float32))


# --- images: errors --------------------------------------------------------------------------


def test_errors_are_handpose_errors():
    assert issubclass(ConversionError, HandPoseError)


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda m: setattr(m, "encoding", "yuv422"), "unsupported image encoding 'yuv422'"),
        (lambda m: setattr(m, "encoding", ""), "unsupported image encoding ''"),
        (lambda m: setattr(m, "data", bytes(m.data)[:-1]), "shorter than step*height"),
        (lambda m: setattr(m, "step", 5), "step 5 < width*bytes_per_pixel"),
        (lambda m: setattr(m, "width", 0), "zero size"),
        (lambda m: setattr(m, "height", 0), "zero size"),
    ],
)
def test_bad_images_raise_named_errors(mutate, words):
    msg = conv.numpy_to_image_raw(_raw_array("16UC1", 4, 3), "16UC1")
    mutate(msg)
    with pytest.raises(ConversionError, match=re.escape(words)):
        conv.image_to_numpy(msg)


@pytest.mark.parametrize(
    "array_, encoding, words",
    [
        (np.zeros((2, 2), np.uint16), "yuv422", "unsupported image encoding"),
        (np.zeros((2, 2), np.float64), "32FC1", "needs dtype float32"),
        (np.zeros((2, 2, 3), np.uint16), "16UC1", "needs an array of shape"),
        (np.zeros((2, 2), np.uint8), "rgb8", "needs \\(H, W, 3\\) uint8 RGB"),
        (np.zeros((0, 2), np.uint16), "16UC1", "zero-size"),
        ([[1, 2]], "16UC1", "expected a numpy array"),
    ],
)
def test_bad_arrays_raise_named_errors(array_, encoding, words):
    with pytest.raises(ConversionError, match=words):
        conv.numpy_to_image(array_, encoding)


# --- cv_bridge delegation --------------------------------------------------------------------


class _FakeCvBridge:
    """Stands in for cv_bridge.CvBridge with the ROS 2 core.py passthrough behaviour."""

    calls = 0

    def imgmsg_to_cv2(self, msg, desired_encoding="passthrough"):
        assert desired_encoding == "passthrough"
        type(self).calls += 1
        dtype, channels = conv.ENCODINGS[msg.encoding]
        per_row = msg.step // dtype.itemsize // channels
        shape = (msg.height, per_row) if channels == 1 else (msg.height, per_row, channels)
        im = np.ndarray(shape=shape, dtype=dtype, buffer=bytes(msg.data))
        return np.ascontiguousarray(im[:, : msg.width])

    def cv2_to_imgmsg(self, cvim, encoding="passthrough"):
        type(self).calls += 1
        return Image(
            height=cvim.shape[0],
            width=cvim.shape[1],
            encoding=encoding,
            is_bigendian=int(sys.byteorder == "big"),
            data=cvim.tobytes(),
            step=cvim.nbytes // cvim.shape[0],
        )


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
def test_cv_bridge_branch_gives_identical_results(monkeypatch, encoding):
    raw = _raw_array(encoding, 3, 5)
    messages = [_message(raw, encoding, pad=p, big=b) for p in (0, 1, 4) for b in (False, True)]
    expected = [(conv.image_to_numpy(m), conv.image_to_numpy_raw(m)) for m in messages]
    canonical = expected[0][0]
    written = conv.numpy_to_image(canonical, encoding, _header())
    monkeypatch.setattr(conv, "_CvBridge", _FakeCvBridge)
    _FakeCvBridge.calls = 0
    for msg, (want, want_raw) in zip(messages, expected, strict=True):
        np.testing.assert_array_equal(conv.image_to_numpy(msg), want)
        np.testing.assert_array_equal(conv.image_to_numpy_raw(msg), want_raw)
    with_bridge = conv.numpy_to_image(canonical, encoding, _header())
    assert bytes(with_bridge.data) == bytes(written.data)
    assert (with_bridge.step, with_bridge.is_bigendian, with_bridge.header) == (
        written.step,
        written.is_bigendian,
        written.header,
    )
    assert _FakeCvBridge.calls > 0


# --- CameraInfo ------------------------------------------------------------------------------


def test_camera_info_intrinsics():
    msg = conv.intrinsics_to_camera_info((475.0, 476.0, 319.5, 239.5), 640, 480, _header())
    assert conv.camera_info_to_intrinsics(msg) == (475.0, 476.0, 319.5, 239.5)
    assert (msg.width, msg.height) == (640, 480)


def test_camera_info_rejects_zero_k():
    with pytest.raises(ConversionError, match="K is all zero"):
        conv.camera_info_to_intrinsics(CameraInfo())
    msg = conv.intrinsics_to_camera_info((475.0, 475.0, 1.0, 1.0), 4, 4)
    msg.k[0] = float("nan")
    with pytest.raises(ConversionError, match="non-finite"):
        conv.camera_info_to_intrinsics(msg)
    msg.k[0] = -1.0
    with pytest.raises(ConversionError, match="focal lengths must be > 0"):
        conv.camera_info_to_intrinsics(msg)


# --- keypoints -------------------------------------------------------------------------------


def _pose(joints: int = 21, seed: int = 0, names=HAND21.joint_names, nan_xyz: bool = False):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-0.1, 0.6, size=(joints, 3)).astype(np.float32)
    if nan_xyz:
        xyz[:] = np.nan
    return SimpleNamespace(
        uv_px=rng.uniform(0, 640, size=(joints, 2)).astype(np.float32),
        xyz_m=xyz,
        confidence=rng.uniform(0, 1, size=joints).astype(np.float32),
        joint_names=tuple(names),
    )


def test_pointcloud2_layout_and_values():
    poses = [_pose(seed=1), _pose(seed=2, nan_xyz=True)]
    msg = conv.keypoints_to_pointcloud2(poses, _header())
    assert msg.header == _header()
    assert (msg.height, msg.width) == (2, 21)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1),
        ("y", 4, PointField.FLOAT32, 1),
        ("z", 8, PointField.FLOAT32, 1),
        ("u", 12, PointField.FLOAT32, 1),
        ("v", 16, PointField.FLOAT32, 1),
        ("confidence", 20, PointField.FLOAT32, 1),
    ]
    assert msg.point_step == 24 and msg.row_step == 24 * 21 and len(msg.data) == 2 * 24 * 21
    assert not msg.is_bigendian and not msg.is_dense
    # independent decode of the raw bytes
    flat = np.frombuffer(bytes(msg.data), dtype="<f4").reshape(2, 21, 6)
    for row, pose in enumerate(poses):
        np.testing.assert_array_equal(flat[row, :, 0:3], pose.xyz_m)
        np.testing.assert_array_equal(flat[row, :, 3:5], pose.uv_px)
        np.testing.assert_array_equal(flat[row, :, 5], pose.confidence)
    back = conv.pointcloud2_to_keypoints(msg)
    np.testing.assert_array_equal(back["xyz_m"][0], poses[0].xyz_m)
    assert np.isnan(back["xyz_m"][1]).all()
    np.testing.assert_array_equal(back["uv_px"][1], poses[1].uv_px)
    np.testing.assert_array_equal(back["confidence"], np.stack([p.confidence for p in poses]))


def test_pointcloud2_no_hand():
    msg = conv.keypoints_to_pointcloud2([], _header())
    assert (msg.height, msg.width, msg.row_step, len(msg.data)) == (0, 0, 0, 0)
    assert [f.name for f in msg.fields] == list(conv.KEYPOINT_FIELDS) and msg.point_step == 24
    assert msg.header == _header()
    back = conv.pointcloud2_to_keypoints(msg)
    assert back["xyz_m"].shape == (0, 0, 3) and back["confidence"].shape == (0, 0)


def test_pointcloud2_errors():
    with pytest.raises(ConversionError, match="same joint count"):
        conv.keypoints_to_pointcloud2([_pose(21), _pose(14, names=NYU14.joint_names)], _header())
    msg = conv.keypoints_to_pointcloud2([_pose()], _header())
    msg.data = bytes(msg.data)[:-4]
    with pytest.raises(ConversionError, match="too short"):
        conv.pointcloud2_to_keypoints(msg)
    msg.fields = msg.fields[:5]
    with pytest.raises(ConversionError, match="lacks the keypoint fields"):
        conv.pointcloud2_to_keypoints(msg)


def test_markers_skeleton():
    pose = _pose(seed=3)
    pose.xyz_m[20] = np.nan  # little tip unknown: joint and its bone left out
    msg = conv.keypoints_to_markers([pose, _pose(seed=4, nan_xyz=True)], _header())
    assert msg.markers[0].action == Marker.DELETEALL
    assert len(msg.markers) == 3  # the hand without 3D draws nothing
    joints, bones = msg.markers[1], msg.markers[2]
    assert (joints.ns, joints.id, joints.type, joints.action) == ("joints", 0, Marker.SPHERE_LIST, Marker.ADD)
    assert (bones.ns, bones.id, bones.type) == ("bones", 0, Marker.LINE_LIST)
    assert all(m.header == _header() for m in msg.markers)
    assert len(joints.points) == 20
    assert len(bones.points) == 2 * (len(HAND21.edges) - 1)
    a, b = HAND21.edges[0]
    assert bones.points[0].x == pytest.approx(float(pose.xyz_m[a, 0]))
    assert bones.points[1].z == pytest.approx(float(pose.xyz_m[b, 2]))
    assert joints.color.a > 0 and joints.scale.x > 0 and bones.scale.x > 0


def test_markers_min_confidence_and_no_hand():
    pose = _pose(seed=5)
    pose.confidence[:] = 0.9
    pose.confidence[[0, 1]] = 0.1
    msg = conv.keypoints_to_markers([pose], _header(), min_confidence=0.5)
    assert len(msg.markers[1].points) == 19
    assert len(msg.markers[2].points) == 2 * (len(HAND21.edges) - 6)  # 5 bones at the wrist + thumb cmc-mcp
    empty = conv.keypoints_to_markers([], _header())
    assert [m.action for m in empty.markers] == [Marker.DELETEALL]
    assert empty.markers[0].header == _header()


def test_markers_nyu_layout():
    msg = conv.keypoints_to_markers([_pose(14, names=NYU14.joint_names)], _header())
    assert len(msg.markers[2].points) == 2 * len(NYU14.edges)


def test_pose_stamped():
    msg = conv.pose_to_pose_stamped([0.1, 0.2, 0.5], [0.0, 0.0, 0.0, 1.0], _header())
    assert msg.header == _header()
    assert (msg.pose.position.x, msg.pose.position.z, msg.pose.orientation.w) == (0.1, 0.5, 1.0)
    with pytest.raises(ConversionError, match="3 position and 4 quaternion"):
        conv.pose_to_pose_stamped([0.0, 0.0], [0, 0, 0, 1], _header())
