"""``handpose-bag``: record / play / eval / info on real rosbag2 files.

rclpy tests run on a random ROS_DOMAIN_ID set before rclpy.init (tests/ros_util.py); the CLI runs
as a separate process, which inherits it. Checkpoints are the pipelines' untrained ones.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header, String

from handpose_core import HandPoseEstimator
from handpose_core.data.synthetic import SynthConfig, SyntheticHands
from handpose_ros import bag_tool
from handpose_ros import conversions as conv
from tests import ros_util as ru

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
DEPTH_TOPIC, INFO_TOPIC = "/camera/depth/image_raw", "/camera/depth/camera_info"
COLOR_TOPIC, COLOR_INFO_TOPIC = "/camera/color/image_raw", "/camera/color/camera_info"
N_FRAMES = 4


# --- helpers -----------------------------------------------------------------------------------


def run_cli(*args: str, timeout: float = 120.0, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "handpose_ros.bag_tool", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or dict(os.environ),
    )


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "handpose_ros.bag_tool", *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("handpose-bag: error: ")
    for word in words:
        assert word in lines[0], lines[0]


def stamp_header(i: int, frame_id: str = "camera_optical_frame") -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = 1_700_000_000 + i, 1000 * i
    return h


def write_bag(
    path: Path, messages: list[tuple[str, str, object]], t0_ns: int = 1_700_000_000_000_000_000, dt_ns: int = 50_000_000
) -> Path:
    """Write (topic, type name, message) tuples with rosbags, serialized by rclpy, dt apart."""
    store = get_typestore(Stores.ROS2_KILTED)
    with Writer(path, version=9) as writer:
        conns = {}
        for k, (topic, type_name, msg) in enumerate(messages):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, type_name, typestore=store)
            writer.write(conns[topic], t0_ns + k * dt_ns, serialize_message(msg))
    return path


@pytest.fixture(scope="module")
def frames():
    gen = SyntheticHands(SynthConfig(), seed=3)
    return list(gen.trajectory(N_FRAMES, fps=30.0))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    from handpose_core.pipelines import depth, rgb

    folder = tmp_path_factory.mktemp("ckpt")
    return {"depth": depth.save_untrained(folder / "depth.pt"), "rgb": rgb.save_untrained(folder / "rgb.pt")}


@pytest.fixture(scope="module")
def rgbd_bag(tmp_path_factory, frames) -> Path:
    """camera_info then depth, colour per frame, both cameras, like a RealSense bag."""
    messages = []
    for i, s in enumerate(frames):
        h = stamp_header(i)
        info = conv.intrinsics_to_camera_info(s.intrinsics.as_tuple(), 640, 480, h)
        messages += [
            (INFO_TOPIC, bag_tool.CAMERA_INFO_TYPE, info),
            (DEPTH_TOPIC, bag_tool.IMAGE_TYPE, conv.numpy_to_image(s.depth_mm, "16UC1", h)),
            (COLOR_INFO_TOPIC, bag_tool.CAMERA_INFO_TYPE, info),
            (COLOR_TOPIC, bag_tool.IMAGE_TYPE, conv.numpy_to_image(s.rgb, "rgb8", h)),
        ]
    return write_bag(tmp_path_factory.mktemp("bags") / "rgbd", messages)


def expected_poses(checkpoint: Path, images: list[np.ndarray], intrinsics) -> list[list]:
    est = HandPoseEstimator.from_checkpoint(checkpoint, device="cpu")
    return [est.predict(img, intrinsics=intrinsics) for img in images]


def assert_same_hands(json_hands: list[dict], poses: list, atol: float = 0.0) -> None:
    assert len(json_hands) == len(poses)
    for hand, pose in zip(json_hands, poses, strict=True):
        for key in ("uv_px", "xyz_m", "confidence"):
            got = np.array([[np.nan if v is None else v for v in np.atleast_1d(row)] for row in hand[key]], float)
            want = np.asarray(getattr(pose, key), float).reshape(got.shape)
            np.testing.assert_allclose(got, want, atol=atol, rtol=0, equal_nan=True, err_msg=key)


# --- record ------------------------------------------------------------------------------------


def test_record_writes_a_bag_that_rosbags_reads_back_identically(tmp_path):
    out = tmp_path / "rec"
    n = 12
    with ru.ros_context() as context:
        probe = ru.Probe(context, "bag_test_publisher")
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        pub_img = probe.node.create_publisher(Image, DEPTH_TOPIC, qos)
        pub_info = probe.node.create_publisher(CameraInfo, INFO_TOPIC, qos)
        recorder = start_cli("record", str(out), "--topics", DEPTH_TOPIC, INFO_TOPIC, "--duration", "60")
        try:
            assert probe.wait_for_subscribers(pub_img, timeout=30.0), "recorder never subscribed"
            assert probe.wait_for_subscribers(pub_info, timeout=10.0)
            rng = np.random.default_rng(0)
            sent = []
            for i in range(n):
                depth = rng.integers(0, 4000, size=(48, 64), dtype=np.uint16)
                img = conv.numpy_to_image(depth, "16UC1", stamp_header(i))
                pub_info.publish(conv.intrinsics_to_camera_info((60.0, 60.0, 32.0, 24.0), 64, 48, stamp_header(i)))
                pub_img.publish(img)
                sent.append(img)
                time.sleep(0.03)
            time.sleep(1.0)  # reliable delivery of the last ones
        finally:
            recorder.send_signal(signal.SIGINT)  # Ctrl-C: the recorder closes the bag and exits 0
            _, err = recorder.communicate(timeout=30)
    assert recorder.returncode == 0, err

    meta = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 9 and meta["storage_identifier"] == "sqlite3"
    assert meta["relative_file_paths"] == ["rec.db3"] and (out / "rec.db3").is_file()
    topics = {t["topic_metadata"]["name"]: t for t in meta["topics_with_message_count"]}
    assert topics[DEPTH_TOPIC]["topic_metadata"]["type"] == "sensor_msgs/msg/Image"
    assert topics[DEPTH_TOPIC]["topic_metadata"]["type_description_hash"] == get_typestore(
        Stores.ROS2_KILTED
    ).hash_rihs01("sensor_msgs/msg/Image")
    assert topics[DEPTH_TOPIC]["topic_metadata"]["offered_qos_profiles"][0]["reliability"] == "reliable"
    assert topics[DEPTH_TOPIC]["message_count"] == n and topics[INFO_TOPIC]["message_count"] == n

    with Reader(out) as reader:
        conns = [c for c in reader.connections if c.topic == DEPTH_TOPIC]
        raw = [bytes(data) for _, _, data in reader.messages(conns)]
        stamps_ns = [t for _, t, _ in reader.messages(conns)]
    assert len(raw) == n
    assert stamps_ns == sorted(stamps_ns)  # receive times
    for got, want in zip(raw, sent, strict=True):
        # (the serialized bytes may differ from a re-serialization only in CDR padding)
        msg = deserialize_message(got, Image)
        assert bytes(msg.data) == bytes(want.data)
        assert (msg.header, msg.encoding, msg.height, msg.width, msg.step) == (
            want.header,
            want.encoding,
            want.height,
            want.width,
            want.step,
        )


def test_record_refuses_to_overwrite_and_needs_topics(tmp_path):
    (tmp_path / "exists").mkdir()
    assert_one_line_error(run_cli("record", str(tmp_path / "exists"), "--topics", "/x", "--duration", "1"), "exists")
    proc = run_cli("record", str(tmp_path / "new"))
    assert proc.returncode == 2 and "--topics" in proc.stderr and "Traceback" not in proc.stderr


# --- play --------------------------------------------------------------------------------------


def test_play_publishes_the_recorded_bytes_at_the_recorded_timing(tmp_path):
    n = 6
    sent = [String(data=f"message {i}") for i in range(n)]
    bag = write_bag(tmp_path / "strings", [("/chatter", "std_msgs/msg/String", m) for m in sent], dt_ns=100_000_000)
    with ru.ros_context() as context:
        probe = ru.Probe(context)
        arrivals = []
        probe.subscribe(String, "/chatter", QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        probe.node.create_subscription(String, "/chatter", lambda m: arrivals.append(time.monotonic()), 50)
        with ru.Spinner(context, probe.node):
            proc = run_cli("play", str(bag), "--delay", "0.2", "--wait-for-subscribers", "30", timeout=60)
            assert probe.wait_for(lambda: len(probe.messages("/chatter")) >= n, timeout=5.0)
    assert proc.returncode == 0, proc.stderr
    assert [m.data for m in probe.messages("/chatter")] == [m.data for m in sent]
    gaps = np.diff(arrivals)
    assert abs(float(np.median(gaps)) - 0.1) < 0.05  # recorded 100 ms apart


def test_play_restamp_shifts_header_stamps_to_now_keeping_frames_together(rgbd_bag, tmp_path):
    with ru.ros_context() as context:
        probe = ru.Probe(context)
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        probe.subscribe(Image, DEPTH_TOPIC, qos)
        probe.subscribe(CameraInfo, INFO_TOPIC, qos)
        with ru.Spinner(context, probe.node):
            proc = run_cli(
                "play", str(rgbd_bag), "--restamp", "--topics", DEPTH_TOPIC, INFO_TOPIC, "--wait-for-subscribers", "30"
            )
            assert probe.wait_for(lambda: len(probe.messages(DEPTH_TOPIC)) >= N_FRAMES, timeout=5.0)
            now_s = time.time()
    assert proc.returncode == 0, proc.stderr
    images, infos = probe.messages(DEPTH_TOPIC), probe.messages(INFO_TOPIC)
    img_stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in images]
    assert all(abs(now_s - s) < 30 for s in img_stamps)  # recorded in 2023, now shifted to now
    np.testing.assert_allclose(np.diff(img_stamps), 1.0, atol=1e-3)  # the recorded spacing of the stamps
    assert [m.header.stamp for m in images] == [m.header.stamp for m in infos]


# --- eval --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_eval_depth_equals_the_estimator_on_the_same_frames(rgbd_bag, frames, checkpoints, tmp_path, fmt):
    out = tmp_path / f"keypoints.{fmt}"
    proc = run_cli("eval", str(rgbd_bag), "--checkpoint", str(checkpoints["depth"]), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    want = expected_poses(checkpoints["depth"], [s.depth_mm for s in frames], frames[0].intrinsics.as_tuple())
    assert all(len(p) == 1 for p in want)
    if fmt == "json":
        doc = json.loads(out.read_text())
        assert doc["image_topic"] == DEPTH_TOPIC and doc["camera_info_topic"] == INFO_TOPIC
        assert doc["modality"] == "depth" and len(doc["joint_names"]) == 21
        assert [f["stamp"] for f in doc["frames"]] == [
            {"sec": stamp_header(i).stamp.sec, "nanosec": stamp_header(i).stamp.nanosec} for i in range(N_FRAMES)
        ]
        for frame, poses in zip(doc["frames"], want, strict=True):
            assert frame["frame_id"] == "camera_optical_frame"
            assert_same_hands(frame["hands"], poses, atol=1e-6)
    else:
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == N_FRAMES * 21
        assert tuple(rows[0]) == bag_tool.CSV_COLUMNS
        got = np.array([[float(r[k]) for k in ("u_px", "v_px", "x_m", "y_m", "z_m", "confidence")] for r in rows])
        ref = np.concatenate([np.column_stack([p[0].uv_px, p[0].xyz_m, p[0].confidence]) for p in want])
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-6)
        assert rows[21]["stamp_sec"] == str(stamp_header(1).stamp.sec) and rows[21]["joint_name"] == "wrist"


def test_eval_rgb_picks_the_colour_topic_and_equals_the_estimator(rgbd_bag, frames, checkpoints, tmp_path):
    out = tmp_path / "rgb.json"
    proc = run_cli(
        "eval",
        str(rgbd_bag),
        "--checkpoint",
        str(checkpoints["rgb"]),
        "--out",
        str(out),
        "--quiet",
        "--max-frames",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["image_topic"] == COLOR_TOPIC and doc["camera_info_topic"] == COLOR_INFO_TOPIC
    # The RGB pipeline tracks across frames: compare with one estimator fed the same sequence.
    want = expected_poses(checkpoints["rgb"], [s.rgb for s in frames[:2]], frames[0].intrinsics.as_tuple())
    assert len(doc["frames"]) == 2
    for frame, poses in zip(doc["frames"], want, strict=True):
        assert_same_hands(frame["hands"], poses, atol=1e-6)


def test_eval_output_equals_the_live_node_on_the_same_frames(frames, checkpoints, tmp_path):
    """Play the bag into a running handpose node; its ~/keypoints equal eval's, frame by frame."""
    info = conv.intrinsics_to_camera_info(frames[0].intrinsics.as_tuple(), 640, 480, stamp_header(0))
    # camera_info also well before the first image: the node drops images that beat their intrinsics
    messages = [(INFO_TOPIC, bag_tool.CAMERA_INFO_TYPE, info)] * 3
    for i, s in enumerate(frames):
        messages += [
            (INFO_TOPIC, bag_tool.CAMERA_INFO_TYPE, info),
            (DEPTH_TOPIC, bag_tool.IMAGE_TYPE, conv.numpy_to_image(s.depth_mm, "16UC1", stamp_header(i))),
        ]
    bag = write_bag(tmp_path / "live", messages)
    out = tmp_path / "eval.json"
    proc = run_cli("eval", str(bag), "--checkpoint", str(checkpoints["depth"]), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    offline = {(f["stamp"]["sec"], f["stamp"]["nanosec"]): f["hands"] for f in json.loads(out.read_text())["frames"]}

    with ru.ros_context() as context:
        probe = ru.Probe(context)
        probe.subscribe(
            PointCloud2, "/handpose/keypoints", QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        )
        node = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "handpose_ros.node",
                "--ros-args",
                "-p",
                f"model:={checkpoints['depth']}",
                "-p",
                "device:=cpu",
                "-p",
                "image_reliability:=reliable",
                "-r",
                f"image:={DEPTH_TOPIC}",
                "-r",
                f"camera_info:={INFO_TOPIC}",
            ],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            with ru.Spinner(context, probe.node):
                deadline = time.monotonic() + 60
                while probe.node.count_subscribers(DEPTH_TOPIC) < 1 and time.monotonic() < deadline:
                    assert node.poll() is None, node.stdout.read()
                    time.sleep(0.1)
                assert probe.node.count_subscribers(DEPTH_TOPIC) >= 1, "node never subscribed"
                # messages 50 ms apart in the bag, 100 ms apart at rate 0.5: the node keeps up, drops none.
                play = run_cli("play", str(bag), "--rate", "0.5", "--wait-for-subscribers", "30")
                assert play.returncode == 0, play.stderr
                assert probe.wait_for(lambda: len(probe.messages("/handpose/keypoints")) >= N_FRAMES, timeout=20)
        finally:
            node.send_signal(signal.SIGINT)
            try:
                node.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node.kill()
    live = probe.messages("/handpose/keypoints")
    assert len(live) == N_FRAMES
    for msg in live:
        hands = offline[(msg.header.stamp.sec, msg.header.stamp.nanosec)]
        kp = conv.pointcloud2_to_keypoints(msg)
        assert msg.height == len(hands) == 1
        for key in ("uv_px", "xyz_m", "confidence"):
            got = kp[key][0].astype(float)
            want = np.array([[np.nan if v is None else v for v in np.atleast_1d(r)] for r in hands[0][key]], float)
            # the node publishes float32 and may run torch with another thread count
            np.testing.assert_allclose(got, want.reshape(got.shape), atol=1e-4, rtol=1e-4, equal_nan=True)


def test_eval_skips_depth_frames_before_the_first_camera_info(frames, checkpoints, tmp_path):
    s = frames[0]
    messages = [
        (DEPTH_TOPIC, bag_tool.IMAGE_TYPE, conv.numpy_to_image(s.depth_mm, "16UC1", stamp_header(0))),
        (
            INFO_TOPIC,
            bag_tool.CAMERA_INFO_TYPE,
            conv.intrinsics_to_camera_info(s.intrinsics.as_tuple(), 640, 480, stamp_header(0)),
        ),
        (DEPTH_TOPIC, bag_tool.IMAGE_TYPE, conv.numpy_to_image(s.depth_mm, "16UC1", stamp_header(1))),
    ]
    bag = write_bag(tmp_path / "late_info", messages)
    result = bag_tool.evaluate(bag, str(checkpoints["depth"]))
    assert result.skipped_no_camera_info == 1
    assert [f.stamp_sec for f in result.frames] == [stamp_header(1).stamp.sec]


# --- bad input ---------------------------------------------------------------------------------


def run_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """``handpose-bag`` in this process (fast: torch is loaded once); same result shape as run_cli."""
    capsys.readouterr()
    try:
        code = bag_tool.main(list(args))
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def test_bad_inputs_as_separate_processes_give_one_line_and_exit_code_2(frames, checkpoints, tmp_path):
    out = str(tmp_path / "k.json")
    assert_one_line_error(run_cli("eval", str(tmp_path / "missing"), "--out", out), "does not exist")
    s = frames[0]
    info = conv.intrinsics_to_camera_info(s.intrinsics.as_tuple(), 640, 480, stamp_header(0))
    wrong = write_bag(
        tmp_path / "wrong_encoding",
        [
            (INFO_TOPIC, bag_tool.CAMERA_INFO_TYPE, info),
            (DEPTH_TOPIC, bag_tool.IMAGE_TYPE, conv.numpy_to_image(s.rgb, "rgb8", stamp_header(0))),
        ],
    )
    assert_one_line_error(
        run_cli("eval", str(wrong), "--checkpoint", str(checkpoints["depth"]), "--out", out), "'rgb8'", "depth model"
    )
    assert not Path(out).exists()


def test_eval_bad_inputs_give_one_line_and_exit_code_2(frames, checkpoints, tmp_path, capsys):
    ck = str(checkpoints["depth"])
    out = str(tmp_path / "k.json")

    def check(args, *words):
        assert_one_line_error(run_main(capsys, *args), *words)

    check(("play", str(tmp_path / "missing")), "does not exist")
    check(("info", str(tmp_path / "missing")), "does not exist")
    (tmp_path / "notabag").mkdir()
    check(("eval", str(tmp_path / "notabag"), "--checkpoint", ck, "--out", out), "metadata")

    no_images = write_bag(tmp_path / "no_images", [("/chatter", "std_msgs/msg/String", String(data="hi"))])
    check(("eval", str(no_images), "--checkpoint", ck, "--out", out), "no sensor_msgs/msg/Image topic", "/chatter")

    s = frames[0]
    info = conv.intrinsics_to_camera_info(s.intrinsics.as_tuple(), 640, 480, stamp_header(0))
    colour = conv.numpy_to_image(s.rgb, "rgb8", stamp_header(0))
    wrong = write_bag(
        tmp_path / "wrong_encoding",
        [(INFO_TOPIC, bag_tool.CAMERA_INFO_TYPE, info), (DEPTH_TOPIC, bag_tool.IMAGE_TYPE, colour)],
    )
    check(("eval", str(wrong), "--checkpoint", ck, "--out", out), "'rgb8'", "depth model")
    yuv = conv.numpy_to_image(s.depth_mm, "16UC1", stamp_header(0))
    yuv.encoding = "yuv422"
    unknown = write_bag(
        tmp_path / "unknown_encoding",
        [(INFO_TOPIC, bag_tool.CAMERA_INFO_TYPE, info), (DEPTH_TOPIC, bag_tool.IMAGE_TYPE, yuv)],
    )
    check(("eval", str(unknown), "--checkpoint", ck, "--out", out), "'yuv422'")
    depth = conv.numpy_to_image(s.depth_mm, "16UC1", stamp_header(0))
    no_info = write_bag(tmp_path / "no_info", [(DEPTH_TOPIC, bag_tool.IMAGE_TYPE, depth)])
    check(("eval", str(no_info), "--checkpoint", ck, "--out", out), "camera_info")
    check(("eval", str(wrong), "--checkpoint", ck, "--image-topic", "/nope", "--out", out), "/nope")
    check(("eval", str(wrong), "--checkpoint", ck, "--image-topic", INFO_TOPIC, "--out", out), "CameraInfo")
    check(("eval", str(wrong), "--checkpoint", str(tmp_path / "none.pt"), "--out", out), "checkpoint")
    check(("eval", str(wrong), "--checkpoint", ck, "--out", str(tmp_path / "k.txt")), ".json")
    check(("play", str(wrong), "--rate", "0"), "--rate")
    assert not Path(out).exists()


def test_unknown_option_and_missing_command_exit_2_with_one_line(capsys):
    for args in (("eval",), ("frobnicate",), ("play", "x", "--rate", "fast"), ()):
        proc = run_main(capsys, *args)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_help_explains_every_command(capsys):
    top = run_cli("--help", timeout=60)
    assert top.returncode == 0
    for command in ("record", "play", "eval", "info"):
        assert command in top.stdout
    ev = run_main(capsys, "eval", "--help")
    for option in ("--checkpoint", "--image-topic", "--camera-info-topic", "--out", ".csv", ".json"):
        assert option in ev.stdout
    rec = run_main(capsys, "record", "--help")
    for option in ("--topics", "--duration", "--all", "--storage"):
        assert option in rec.stdout
    ply = run_main(capsys, "play", "--help")
    for option in ("--rate", "--loop", "--restamp", "--delay"):
        assert option in ply.stdout


def test_info_lists_topics_and_counts(rgbd_bag):
    proc = run_cli("info", str(rgbd_bag), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"{DEPTH_TOPIC}  [sensor_msgs/msg/Image]  {N_FRAMES} msgs" in proc.stdout


def test_qos_conversion_round_trips_rmw_values():
    from rclpy.duration import Infinite
    from rclpy.qos import DurabilityPolicy, QoSProfile

    profile = QoSProfile(
        depth=7, reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.TRANSIENT_LOCAL
    )
    qos = bag_tool.rclpy_qos_to_rosbags(profile)
    assert qos.depth == 7 and qos.reliability.name == "BEST_EFFORT" and qos.durability.name == "TRANSIENT_LOCAL"
    profile.deadline = Infinite
    assert bag_tool.rclpy_qos_to_rosbags(profile).deadline == (9223372036, 854775807)  # as ros2 bag writes it
    back = bag_tool.playback_qos([qos])
    assert back.reliability == ReliabilityPolicy.BEST_EFFORT and back.durability == DurabilityPolicy.TRANSIENT_LOCAL
    sub = bag_tool.subscription_qos([profile])
    assert sub.reliability == ReliabilityPolicy.BEST_EFFORT and sub.durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert bag_tool.subscription_qos([QoSProfile(depth=1)]).reliability == ReliabilityPolicy.RELIABLE
