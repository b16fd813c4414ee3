"""The synthetic camera source: consistent headers, camera_info, images and ground truth.

rclpy tests run on a random ROS_DOMAIN_ID set before rclpy.init (tests/ros_util.py); child
processes inherit it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from handpose_core.camera import DEFAULT_INTRINSICS
from handpose_ros import camera_source as cs
from handpose_ros import conversions as conv
from tests import ros_util as ru

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
NS = "/camera"
TOPICS = {k: f"{NS}/{v}" for k, v in cs.TOPICS.items()}
TYPES = {"depth": Image, "color": Image, "depth_info": CameraInfo, "color_info": CameraInfo, "gt": PointCloud2}
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


def _key(msg) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def _complete_frames(probe: ru.Probe) -> list[dict]:
    """Frames (by stamp) for which all five topics arrived, in stamp order."""
    by_topic = {k: {_key(m): m for m in probe.messages(TOPICS[k])} for k in TOPICS}
    stamps = sorted(set.intersection(*(set(d) for d in by_topic.values())))
    return [{k: by_topic[k][s] for k in TOPICS} for s in stamps]


def test_ping_pong_plays_forwards_then_backwards_without_a_jump():
    assert [cs.ping_pong(4, k) for k in range(9)] == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert [cs.ping_pong(1, k) for k in range(3)] == [0, 0, 0]


def test_frames_share_one_header_and_agree_with_camera_info_and_truth():
    rate = 20.0
    with ru.ros_context() as context:
        probe = ru.Probe(context)
        for kind, topic in TOPICS.items():
            probe.subscribe(TYPES[kind], topic, RELIABLE)
        camera = cs.CameraSource(
            context=context,
            progress=False,
            parameter_overrides=[Parameter("frames", value=3), Parameter("rate", value=rate)],
        )
        with ru.Spinner(context, probe.node, camera):
            assert probe.wait_for(lambda: len(_complete_frames(probe)) >= 8, timeout=30.0)
        camera.destroy_node()
    frames = _complete_frames(probe)
    now_s = time.time()
    fx, fy, cx, cy = DEFAULT_INTRINSICS.as_tuple()
    for f in frames:
        header = f["gt"].header
        assert header.frame_id == "camera_optical_frame"
        assert all(m.header == header for m in f.values())
        assert abs(now_s - (header.stamp.sec + header.stamp.nanosec * 1e-9)) < 60
        depth, color, info = f["depth"], f["color"], f["depth_info"]
        assert (depth.encoding, depth.width, depth.height, depth.step) == ("16UC1", 640, 480, 1280)
        assert (color.encoding, color.width, color.height, color.step) == ("rgb8", 640, 480, 1920)
        assert list(info.k) == [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        assert (info.width, info.height) == (640, 480) and f["color_info"].k.tolist() == info.k.tolist()

        truth = conv.pointcloud2_to_keypoints(f["gt"])
        assert truth["xyz_m"].shape == (1, 21, 3)
        xyz, uv, visible = truth["xyz_m"][0], truth["uv_px"][0], truth["confidence"][0] > 0.5
        np.testing.assert_allclose(DEFAULT_INTRINSICS.project(xyz), uv, atol=1e-2)  # truth agrees with K
        # The depth image agrees with the truth: at visible joints the surface is a few mm
        # (the finger's radius, sensor noise) in front of the joint.
        depth_mm = conv.image_to_numpy(depth).astype(np.float64)
        rgb = conv.image_to_numpy(color)
        assert visible.sum() >= 3
        u, v = np.round(uv[visible]).astype(int).T
        surface = depth_mm[v, u]
        ok = surface > 0
        assert np.median(np.abs(surface[ok] - xyz[visible, 2][ok] * 1000.0)) < 30.0
        assert rgb.shape == (480, 640, 3) and rgb.std() > 1.0

    stamps = np.array([f["gt"].header.stamp.sec + f["gt"].header.stamp.nanosec * 1e-9 for f in frames])
    assert np.all(np.diff(stamps) > 0)
    assert abs(np.median(np.diff(stamps)) - 1.0 / rate) < 0.3 / rate
    # 3 rendered frames, played forwards and backwards: at most 3 distinct truths, neighbours differ
    payloads = [bytes(f["gt"].data) for f in frames]
    assert len(set(payloads)) <= 3
    assert payloads[0] != payloads[1] or payloads[1] != payloads[2]


def test_console_entry_takes_flags_ros_parameters_and_remapping():
    with ru.ros_context() as context:
        probe = ru.Probe(context)
        probe.subscribe(PointCloud2, "/cam2/hand_gt", RELIABLE)
        probe.subscribe(Image, "/cam2/depth/image_raw", RELIABLE)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "handpose_ros.camera_source",
                "--frames",
                "2",
                "--no-color",
                "--no-progress",
                "--ros-args",
                "-p",
                "frame_id:=my_optical_frame",
                "-r",
                "__ns:=/cam2",
            ],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            with ru.Spinner(context, probe.node):
                # Both topics: discovery of the two publishers can complete at different times.
                got = probe.wait_for(
                    lambda: len(probe.messages("/cam2/depth/image_raw")) >= 3 and probe.messages("/cam2/hand_gt"),
                    timeout=30.0,
                )
                color_publishers = probe.node.count_publishers("/cam2/color/image_raw")
        finally:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=20)
    assert got, out
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert {m.header.frame_id for m in probe.messages("/cam2/hand_gt")} == {"my_optical_frame"}
    assert color_publishers == 0  # --no-color


def test_count_stops_the_source_and_bad_options_exit_2_with_one_line():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "handpose_ros.camera_source",
            "--frames",
            "1",
            "--count",
            "3",
            "--rate",
            "30",
            "--no-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for args in (["--rate", "0"], ["--frames", "0"], ["--reliability", "sometimes"]):
        proc = subprocess.run(
            [sys.executable, "-m", "handpose_ros.camera_source", "--no-progress", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)
    proc = subprocess.run(
        [sys.executable, "-m", "handpose_ros.camera_source", "--bag", "/nonexistent/bag"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


def test_bag_replay_restamps_to_now_and_keeps_frames_together(tmp_path):
    store = get_typestore(Stores.ROS2_KILTED)
    bag = tmp_path / "tiny"
    with Writer(bag, version=9) as writer:
        c_img = writer.add_connection("/camera/depth/image_raw", "sensor_msgs/msg/Image", typestore=store)
        c_info = writer.add_connection("/camera/depth/camera_info", "sensor_msgs/msg/CameraInfo", typestore=store)
        for i in range(3):
            h = Header(frame_id="camera_optical_frame")
            h.stamp.sec, h.stamp.nanosec = 100 + i, 0  # long ago
            t = 1_000_000_000 * (100 + i) // 10  # 0.1 s apart
            info = conv.intrinsics_to_camera_info(DEFAULT_INTRINSICS.as_tuple(), 64, 48, h)
            writer.write(c_info, t, serialize_message(info))
            writer.write(
                c_img,
                t + 1000,
                serialize_message(conv.numpy_to_image(np.full((48, 64), 500 + i, np.uint16), "16UC1", h)),
            )
    with ru.ros_context() as context:
        probe = ru.Probe(context)
        probe.subscribe(Image, "/camera/depth/image_raw", RELIABLE)
        probe.subscribe(CameraInfo, "/camera/depth/camera_info", RELIABLE)
        with ru.Spinner(context, probe.node):
            proc = subprocess.run(
                [sys.executable, "-m", "handpose_ros.camera_source", "--bag", str(bag), "--count", "1"],
                cwd=ROOT,
                env=dict(os.environ),
                capture_output=True,
                text=True,
                timeout=120,
            )
            probe.wait_for(lambda: len(probe.messages("/camera/depth/image_raw")) >= 3, timeout=10.0)
    assert proc.returncode == 0, proc.stderr
    images = probe.messages("/camera/depth/image_raw")
    infos = probe.messages("/camera/depth/camera_info")
    assert [int(conv.image_to_numpy(m)[0, 0]) for m in images] == [500, 501, 502]
    assert [_key(m) for m in images] == [_key(m) for m in infos]
    stamps = np.array([m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in images])
    assert abs(time.time() - stamps[-1]) < 30  # shifted to now
    np.testing.assert_allclose(np.diff(stamps), 1.0, atol=1e-3)  # the recorded spacing of the stamps
