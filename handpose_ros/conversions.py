"""ROS message <-> numpy conversions for the handpose node, in the manner of cv_bridge's ``core.py``.

No node and no rclpy runtime: only message classes, numpy and (for colour conversion) OpenCV.
Every failure raises :class:`ConversionError` (a :class:`~handpose_core.errors.HandPoseError`), so
the node catches one type, and its message names the problem in one line.

Images
------
:func:`image_to_numpy` returns what :meth:`handpose_core.HandPoseEstimator.predict` consumes:

==============  =========================================================================
encoding        array
==============  =========================================================================
``16UC1``       (H, W) uint16 depth in millimetres (REP 118)
``mono16``      (H, W) uint16, treated like ``16UC1`` (some depth drivers publish mono16)
``32FC1``       (H, W) float32 depth in metres; NaN means "no return" (REP 118)
``rgb8``        (H, W, 3) uint8 RGB
``bgr8``        (H, W, 3) uint8 RGB (channels reordered)
``rgba8``       (H, W, 3) uint8 RGB (alpha dropped)
``bgra8``       (H, W, 3) uint8 RGB (reordered, alpha dropped)
``mono8``       (H, W, 3) uint8 RGB with R = G = B = the grey value, so that a monochrome
                camera feeds the RGB model without a special case. Use
                :func:`image_to_numpy_raw` for the (H, W) grey image.
==============  =========================================================================

:func:`image_to_numpy_raw` returns the pixels exactly as stored (message channel order, native
byte order): (H, W) for one channel, (H, W, C) otherwise. Both honour ``step`` (row padding) and
``is_bigendian``, and both return arrays that own their memory (never views of ``msg.data``).

:func:`numpy_to_image` is the inverse of :func:`image_to_numpy`: it takes the canonical array
(depth (H, W), colour (H, W, 3) RGB) and writes it in the requested encoding (alpha = 255; mono8
from RGB via OpenCV's luma weights, exact for grey input). :func:`numpy_to_image_raw` is the
inverse of :func:`image_to_numpy_raw`. Messages are written unpadded (``step = width * bpp``) in
the machine's byte order unless ``is_bigendian`` is given.

When ``cv_bridge`` is importable the byte-level decode/encode (raw arrays, native byte order) is
delegated to it; validation, byte swapping and channel reordering stay here, so the results are
identical with and without it.

Keypoints
---------
:func:`keypoints_to_pointcloud2` and :func:`keypoints_to_markers` pack
:class:`~handpose_core.HandPose` results, :func:`pose_to_pose_stamped` a palm pose from
:func:`handpose_core.geometry.palm_pose`; :func:`pointcloud2_to_keypoints` unpacks the cloud
for consumers and tests.
"""

from __future__ import annotations

import array
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, PoseStamped
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from handpose_core.errors import HandPoseError
from handpose_core.keypoints import KeypointLayout, layout_for

if TYPE_CHECKING:
    from handpose_core.estimator import HandPose

try:  # cv_bridge comes with a full ROS install; the PyPI wheels lack it.
    from cv_bridge import CvBridge as _CvBridge
except ImportError:  # pragma: no cover - depends on the installation
    _CvBridge = None


class ConversionError(HandPoseError):
    """A ROS message cannot be converted; the message names the problem."""


# encoding -> (numpy dtype (native order), channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "16UC1": (np.dtype(np.uint16), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
    "mono8": (np.dtype(np.uint8), 1),
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
}
DEPTH_ENCODINGS = frozenset({"16UC1", "mono16", "32FC1"})
COLOR_ENCODINGS = frozenset({"rgb8", "bgr8", "rgba8", "bgra8", "mono8"})

_NATIVE_BIG = sys.byteorder == "big"


def bytes_per_pixel(encoding: str) -> int:
    """Bytes of one pixel in ``encoding``; raises :class:`ConversionError` for unknown encodings."""
    dtype, channels = _encoding_info(encoding)
    return dtype.itemsize * channels


def _encoding_info(encoding: str) -> tuple[np.dtype, int]:
    try:
        return ENCODINGS[encoding]
    except KeyError:
        known = ", ".join(ENCODINGS)
        raise ConversionError(f"unsupported image encoding {encoding!r} (supported: {known})") from None


# ---------------------------------------------------------------------------------------------
# Image -> numpy
# ---------------------------------------------------------------------------------------------


def _check_image(msg: Image) -> tuple[np.dtype, int]:
    """Validate encoding and geometry; return (dtype, channels)."""
    dtype, channels = _encoding_info(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ConversionError(f"image has zero size ({width}x{height}, encoding {msg.encoding})")
    row_bytes = width * dtype.itemsize * channels
    if step < row_bytes:
        raise ConversionError(
            f"image step {step} < width*bytes_per_pixel = {width}*{dtype.itemsize * channels} = "
            f"{row_bytes} ({msg.encoding})"
        )
    if len(msg.data) < step * height:
        raise ConversionError(
            f"image data is {len(msg.data)} bytes, shorter than step*height = {step}*{height} = "
            f"{step * height} ({width}x{height} {msg.encoding})"
        )
    return dtype, channels


def _decode_numpy(msg: Image, dtype: np.dtype, channels: int) -> np.ndarray:
    """Bytes -> (H, W[, C]) array in the message's byte order, padding removed, own memory."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * dtype.itemsize * channels
    rows = np.frombuffer(msg.data, dtype=np.uint8, count=step * height).reshape(height, step)
    packed = np.ascontiguousarray(rows[:, :row_bytes])  # copies; also fixes odd-step alignment
    stored = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    shape = (height, width) if channels == 1 else (height, width, channels)
    return packed.view(stored).reshape(shape)


def _decode_cv_bridge(msg: Image, dtype: np.dtype, channels: int) -> np.ndarray:
    """Thin delegation to cv_bridge (native byte order, aligned rows only: see caller)."""
    return np.array(_CvBridge().imgmsg_to_cv2(msg, desired_encoding="passthrough"), dtype=dtype, copy=True)


def image_to_numpy_raw(msg: Image) -> np.ndarray:
    """Pixels as stored: (H, W) or (H, W, C), message channel order, native byte order.

    Raises :class:`ConversionError` for an unknown encoding, zero size, ``step`` shorter than a
    row, or data shorter than ``step * height``.
    """
    dtype, channels = _check_image(msg)
    # cv_bridge (ROS 2 core.py) byte-swaps with ndarray.newbyteorder(), gone in numpy 2, and reads
    # rows as step // bytes_per_pixel pixels, wrong when the padding is not whole pixels; so only
    # the case it handles exactly is delegated.
    if (
        _CvBridge is not None
        and bool(msg.is_bigendian) == _NATIVE_BIG
        and int(msg.step) % (dtype.itemsize * channels) == 0
    ):
        return _decode_cv_bridge(msg, dtype, channels)
    array_ = _decode_numpy(msg, dtype, channels)
    return array_.astype(dtype, copy=False) if array_.dtype != dtype else array_


def image_to_numpy(msg: Image) -> np.ndarray:
    """Canonical array for the estimator: depth (H, W) uint16 mm / float32 m, colour (H, W, 3) RGB.

    See the module docstring for the table per encoding.
    """
    raw = image_to_numpy_raw(msg)
    encoding = msg.encoding
    if encoding in DEPTH_ENCODINGS or encoding == "rgb8":
        return raw
    if encoding == "bgr8":
        return np.ascontiguousarray(raw[..., ::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(raw[..., :3])
    if encoding == "bgra8":
        return np.ascontiguousarray(raw[..., 2::-1])
    if encoding == "mono8":
        return np.repeat(raw[..., None], 3, axis=2)
    raise ConversionError(f"unsupported image encoding {encoding!r}")  # unreachable: checked above


def depth_problem(depth: np.ndarray) -> str | None:
    """Why a canonical depth image carries no usable pixel, or None when at least one is valid.

    Valid: > 0 and finite (REP 118: 0 and NaN mean "no return"). Only an image with no valid pixel
    at all is a problem; holes are normal. The estimator would read such a frame as "no hand", so
    the node reports it as bad input instead of publishing an empty result.
    """
    if depth.dtype == np.uint16:
        return None if depth.any() else f"depth image is all zero ({depth.shape[1]}x{depth.shape[0]}, no valid pixel)"
    finite = np.isfinite(depth)
    if not finite.any():
        return f"depth image is all NaN/inf ({depth.shape[1]}x{depth.shape[0]}, no valid pixel)"
    if not (depth[finite] > 0).any():
        return f"depth image has no valid pixel (all zero, negative, NaN or inf; {depth.shape[1]}x{depth.shape[0]})"
    return None


# ---------------------------------------------------------------------------------------------
# numpy -> Image
# ---------------------------------------------------------------------------------------------


def _encode_numpy(array_: np.ndarray, encoding: str, header: Header | None, is_bigendian: bool) -> Image:
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(array_.shape[0]), int(array_.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(is_bigendian)
    stored = array_.dtype.newbyteorder(">" if is_bigendian else "<")
    data = np.ascontiguousarray(array_, dtype=stored).tobytes()
    msg.step = len(data) // msg.height
    msg.data = array.array("B", data)  # array.array: the fast path of the generated setter
    return msg


def _encode_cv_bridge(array_: np.ndarray, encoding: str, header: Header | None) -> Image:
    """Thin delegation to cv_bridge (native byte order)."""
    msg = _CvBridge().cv2_to_imgmsg(np.ascontiguousarray(array_), encoding=encoding)
    if header is not None:
        msg.header = header
    return msg


def numpy_to_image_raw(
    array_: np.ndarray, encoding: str, header: Header | None = None, is_bigendian: bool | None = None
) -> Image:
    """Inverse of :func:`image_to_numpy_raw`: ``array_`` already in ``encoding``'s layout.

    array_:       (H, W) or (H, W, 1) for one-channel encodings, (H, W, C) otherwise, of the
                  encoding's dtype.
    is_bigendian: byte order of the written data; ``None`` = this machine's.
    """
    dtype, channels = _encoding_info(encoding)
    if not isinstance(array_, np.ndarray):
        raise ConversionError(f"expected a numpy array for {encoding}, got {type(array_).__name__}")
    if channels == 1 and array_.ndim == 3 and array_.shape[2] == 1:
        array_ = array_[..., 0]
    expected = "(H, W)" if channels == 1 else f"(H, W, {channels})"
    if array_.ndim != (2 if channels == 1 else 3) or (channels > 1 and array_.shape[2] != channels):
        raise ConversionError(f"{encoding} needs an array of shape {expected}, got {array_.shape}")
    if array_.dtype.newbyteorder("=") != dtype:
        raise ConversionError(f"{encoding} needs dtype {dtype}, got {array_.dtype}")
    if array_.shape[0] == 0 or array_.shape[1] == 0:
        raise ConversionError(f"cannot write a zero-size image (shape {array_.shape}) as {encoding}")
    big = _NATIVE_BIG if is_bigendian is None else bool(is_bigendian)
    if _CvBridge is not None and big == _NATIVE_BIG:
        return _encode_cv_bridge(array_.astype(dtype, copy=False), encoding, header)
    return _encode_numpy(array_, encoding, header, big)


def numpy_to_image(
    array_: np.ndarray, encoding: str, header: Header | None = None, is_bigendian: bool | None = None
) -> Image:
    """Inverse of :func:`image_to_numpy`: canonical array -> ``encoding``.

    array_: depth encodings: (H, W) uint16 (16UC1, mono16) or float32 (32FC1);
            colour encodings: (H, W, 3) uint8 RGB; mono8 also takes (H, W) uint8 grey.
    """
    dtype, channels = _encoding_info(encoding)
    if not isinstance(array_, np.ndarray):
        raise ConversionError(f"expected a numpy array for {encoding}, got {type(array_).__name__}")
    if encoding in DEPTH_ENCODINGS:
        return numpy_to_image_raw(array_, encoding, header, is_bigendian)
    if encoding == "mono8" and array_.ndim == 2:
        return numpy_to_image_raw(array_, encoding, header, is_bigendian)
    if array_.ndim != 3 or array_.shape[2] != 3 or array_.dtype != np.uint8:
        raise ConversionError(
            f"{encoding} from numpy needs (H, W, 3) uint8 RGB, got shape {array_.shape} {array_.dtype}"
        )
    if encoding == "rgb8":
        raw = array_
    elif encoding == "bgr8":
        raw = array_[..., ::-1]
    elif encoding in ("rgba8", "bgra8"):
        rgb = array_ if encoding == "rgba8" else array_[..., ::-1]
        alpha = np.full(array_.shape[:2] + (1,), 255, dtype=np.uint8)
        raw = np.concatenate([rgb, alpha], axis=2)
    else:  # mono8 from RGB
        import cv2

        raw = cv2.cvtColor(np.ascontiguousarray(array_), cv2.COLOR_RGB2GRAY)
    return numpy_to_image_raw(np.ascontiguousarray(raw), encoding, header, is_bigendian)


# ---------------------------------------------------------------------------------------------
# CameraInfo
# ---------------------------------------------------------------------------------------------


def camera_info_to_intrinsics(msg: CameraInfo) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) pixels from ``K`` (k[0], k[4], k[2], k[5]).

    Raises :class:`ConversionError` for an all-zero K (an uncalibrated camera), non-finite values
    or non-positive focal lengths.
    """
    k = [float(v) for v in msg.k]
    if len(k) != 9:
        raise ConversionError(f"camera_info K has {len(k)} entries, 9 expected")
    if not any(k):
        raise ConversionError("camera_info K is all zero (uncalibrated camera)")
    fx, fy, cx, cy = k[0], k[4], k[2], k[5]
    if not all(math.isfinite(v) for v in (fx, fy, cx, cy)):
        raise ConversionError(f"camera_info K has non-finite values: fx,fy,cx,cy={fx, fy, cx, cy}")
    if fx <= 0 or fy <= 0:
        raise ConversionError(f"camera_info focal lengths must be > 0, got fx={fx} fy={fy}")
    return fx, fy, cx, cy


def intrinsics_to_camera_info(
    intrinsics: Sequence[float], width: int, height: int, header: Header | None = None
) -> CameraInfo:
    """(fx, fy, cx, cy) -> CameraInfo with K and P filled, no distortion (for publishers and tests)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


# ---------------------------------------------------------------------------------------------
# Keypoints -> PointCloud2 / MarkerArray / PoseStamped
# ---------------------------------------------------------------------------------------------

KEYPOINT_FIELDS = ("x", "y", "z", "u", "v", "confidence")
_POINT_DTYPE = np.dtype([(name, "<f4") for name in KEYPOINT_FIELDS])


def keypoint_fields() -> list[PointField]:
    """The six float32 fields of ``~/keypoints``: x, y, z (m), u, v (px), confidence."""
    return [
        PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
        for i, name in enumerate(KEYPOINT_FIELDS)
    ]


def keypoints_to_pointcloud2(poses: Sequence, header: Header, num_joints: int | None = None) -> PointCloud2:
    """Organized cloud: height = hands, width = joints, fields :data:`KEYPOINT_FIELDS` (float32).

    poses:      HandPose-like objects with ``xyz_m`` (J, 3) m (NaN unknown), ``uv_px`` (J, 2) px,
                ``confidence`` (J,).
    num_joints: width for an empty cloud is always 0; given, it checks every pose has J joints.
    No hand -> height 0, width 0, same fields and point_step, empty data.
    """
    msg = PointCloud2(header=header, fields=keypoint_fields(), is_bigendian=False)
    msg.point_step = _POINT_DTYPE.itemsize
    msg.is_dense = False  # unknown values are NaN
    if not poses:
        msg.height, msg.width, msg.row_step = 0, 0, 0
        return msg
    joints = {len(p.confidence) for p in poses}
    if len(joints) != 1 or (num_joints is not None and joints != {num_joints}):
        raise ConversionError(f"all hands must have the same joint count, got {sorted(joints)}")
    width = joints.pop()
    points = np.empty((len(poses), width), dtype=_POINT_DTYPE)
    for row, pose in enumerate(poses):
        xyz = np.asarray(pose.xyz_m, dtype=np.float32).reshape(width, 3)
        uv = np.asarray(pose.uv_px, dtype=np.float32).reshape(width, 2)
        points[row]["x"], points[row]["y"], points[row]["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
        points[row]["u"], points[row]["v"] = uv[:, 0], uv[:, 1]
        points[row]["confidence"] = np.asarray(pose.confidence, dtype=np.float32).reshape(width)
    msg.height, msg.width = len(poses), width
    msg.row_step = msg.point_step * width
    msg.data = array.array("B", points.tobytes())
    return msg


def pointcloud2_to_keypoints(msg: PointCloud2) -> dict[str, np.ndarray]:
    """Unpack ``~/keypoints``: {'xyz_m': (H, W, 3), 'uv_px': (H, W, 2), 'confidence': (H, W)} float32.

    H = hands, W = joints. Reads the fields by name and offset, so it accepts any cloud carrying
    these six float32 fields.
    """
    offsets = {f.name: f for f in msg.fields}
    missing = [name for name in KEYPOINT_FIELDS if name not in offsets]
    if missing:
        raise ConversionError(f"point cloud lacks the keypoint fields {missing}")
    if any(offsets[name].datatype != PointField.FLOAT32 for name in KEYPOINT_FIELDS):
        raise ConversionError("keypoint fields must be FLOAT32")
    h, w = int(msg.height), int(msg.width)
    if len(msg.data) < h * int(msg.row_step) or int(msg.row_step) < w * int(msg.point_step):
        raise ConversionError(
            f"point cloud data is {len(msg.data)} bytes, too short for {h}x{w} points "
            f"(row_step {msg.row_step}, point_step {msg.point_step})"
        )
    order = ">" if msg.is_bigendian else "<"
    dtype = np.dtype(
        {
            "names": list(KEYPOINT_FIELDS),
            "formats": [order + "f4"] * len(KEYPOINT_FIELDS),
            "offsets": [offsets[name].offset for name in KEYPOINT_FIELDS],
            "itemsize": int(msg.point_step),
        }
    )
    if h * w == 0:
        points = np.zeros((h, w), dtype=dtype)
    else:
        rows = np.frombuffer(msg.data, np.uint8, count=h * int(msg.row_step)).reshape(h, int(msg.row_step))
        points = np.ascontiguousarray(rows[:, : w * int(msg.point_step)]).view(dtype).reshape(h, w)

    def get(name: str) -> np.ndarray:
        return points[name].astype(np.float32)

    return {
        "xyz_m": np.stack([get("x"), get("y"), get("z")], axis=-1),
        "uv_px": np.stack([get("u"), get("v")], axis=-1),
        "confidence": get("confidence"),
    }


def _rgba(values: Sequence[float]) -> ColorRGBA:
    r, g, b, a = (float(v) for v in values)
    return ColorRGBA(r=r, g=g, b=b, a=a)


def keypoints_to_markers(
    poses: Sequence[HandPose],
    header: Header,
    layout: KeypointLayout | None = None,
    min_confidence: float = 0.0,
    joint_diameter_m: float = 0.012,
    bone_width_m: float = 0.006,
    joint_color: Sequence[float] = (1.0, 0.3, 0.1, 1.0),
    bone_color: Sequence[float] = (0.1, 0.8, 1.0, 1.0),
) -> MarkerArray:
    """RViz skeleton: a DELETEALL first (clears the previous frame's hands), then per hand i a
    SPHERE_LIST (ns ``joints``, id i) and a LINE_LIST of the layout's edges (ns ``bones``, id i).

    Joints without 3D (NaN) or with confidence < ``min_confidence`` are left out, and so are bones
    touching them; a hand with no drawable joint gets no markers. No hand -> only the DELETEALL.
    Positions are metres in ``header.frame_id``.
    """
    out = MarkerArray()
    out.markers.append(Marker(header=header, action=Marker.DELETEALL))
    for hand, pose in enumerate(poses):
        names = tuple(pose.joint_names)
        edges = (layout or layout_for(names)).edges
        xyz = np.asarray(pose.xyz_m, dtype=np.float64).reshape(-1, 3)
        conf = np.asarray(pose.confidence, dtype=np.float64).reshape(-1)
        ok = [bool(np.isfinite(xyz[j]).all() and conf[j] >= min_confidence) for j in range(len(xyz))]
        points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in xyz]
        joint_points = [points[j] for j in range(len(points)) if ok[j]]
        if not joint_points:
            continue
        joints = Marker(header=header, ns="joints", id=hand, type=Marker.SPHERE_LIST, action=Marker.ADD)
        joints.pose.orientation.w = 1.0
        joints.scale.x = joints.scale.y = joints.scale.z = float(joint_diameter_m)
        joints.color = _rgba(joint_color)
        joints.points = joint_points
        joints.lifetime = Duration()
        out.markers.append(joints)
        bone_points = [points[k] for a, b in edges if ok[a] and ok[b] for k in (a, b)]
        if bone_points:
            bones = Marker(header=header, ns="bones", id=hand, type=Marker.LINE_LIST, action=Marker.ADD)
            bones.pose.orientation.w = 1.0
            bones.scale.x = float(bone_width_m)
            bones.color = _rgba(bone_color)
            bones.points = bone_points
            out.markers.append(bones)
    return out


def pose_to_pose_stamped(position_m: Sequence[float], quaternion_xyzw: Sequence[float], header: Header) -> PoseStamped:
    """Position (3,) metres and unit quaternion (x, y, z, w) -> PoseStamped in ``header.frame_id``."""
    msg = PoseStamped(header=header)
    p, q = [float(v) for v in position_m], [float(v) for v in quaternion_xyzw]
    if len(p) != 3 or len(q) != 4:
        raise ConversionError(f"pose needs 3 position and 4 quaternion values, got {len(p)} and {len(q)}")
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = p
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = q
    return msg
