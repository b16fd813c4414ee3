"""``handpose_camera_source``: a synthetic RGB-D hand camera (or a bag replay) for demos and tests.

Publishes, in the node's namespace (default ``/camera``), every frame with one common header
(stamp = publish time, ``frame_id`` = ``camera_optical_frame``; depth and colour are aligned, so
one frame and one set of intrinsics serve both):

=======================  =========================  =================================================
topic                    type                       content
=======================  =========================  =================================================
``depth/image_raw``      sensor_msgs/Image          16UC1, millimetres, 0 = no return
``depth/camera_info``    sensor_msgs/CameraInfo     K, P of the synthetic camera, plumb_bob, D = 0
``color/image_raw``      sensor_msgs/Image          rgb8
``color/camera_info``    sensor_msgs/CameraInfo     same as the depth one (aligned images)
``hand_gt``              sensor_msgs/PointCloud2    true keypoints, the ``~/keypoints`` layout of the
                                                    handpose node (height = hands, width = 21 joints,
                                                    fields x y z (m) u v (px) confidence); confidence
                                                    is 1 for visible joints and 0 for occluded ones
=======================  =========================  =================================================

The frames come from :meth:`handpose_core.data.synthetic.SyntheticHands.trajectory` (a smoothly
moving, articulating hand), rendered up front (with a progress bar: rendering may be slower than
the publishing rate) and played forwards then backwards, so the loop has no jump. With ``--bag``
the node instead replays a rosbag2 (see :func:`handpose_ros.bag_tool.play`) with its header
stamps shifted to the playback time.

Options are command-line flags (``--help``) and, except ``--bag``, equally ROS parameters of the
same names (``--ros-args -p rate:=15.0``); topics move with ROS remapping (``-r __ns:=/cam2``,
``-r depth/image_raw:=/other``). An image topic without subscribers is skipped (its camera_info
is still published), which saves the serialization of 1 MB per frame.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from handpose_ros import conversions as conv
from handpose_ros.shutdown import shut_down, stopped_by_shutdown

NODE_NAME = "camera_source"
DEFAULT_NAMESPACE = "/camera"
TOPICS = {
    "depth": "depth/image_raw",
    "depth_info": "depth/camera_info",
    "color": "color/image_raw",
    "color_info": "color/camera_info",
    "gt": "hand_gt",
}

# name -> (typed default, description); also the command-line flags (--name, dashes for _).
PARAMETERS: dict[str, tuple[object, str]] = {
    "rate": (30.0, "frames per second published (Hz)"),
    "frames": (150, "frames rendered up front, then played forwards and backwards"),
    "seed": (0, "synthetic generator seed (same seed, same hand motion)"),
    "frame_id": ("camera_optical_frame", "header.frame_id of every message"),
    "publish_depth": (True, "publish depth/image_raw and depth/camera_info"),
    "publish_color": (True, "publish color/image_raw and color/camera_info"),
    "reliability": ("reliable", "QoS reliability of the publishers: reliable or best_effort"),
    "count": (0, "stop after publishing this many frames (0: run until Ctrl-C)"),
}


@dataclass
class Frame:
    """One pre-built frame: messages whose header is filled in when published."""

    depth: Image | None
    color: Image | None
    gt: PointCloud2


@dataclass
class _Truth:
    """HandPose-like view of a synthetic sample for :func:`conversions.keypoints_to_pointcloud2`."""

    xyz_m: np.ndarray
    uv_px: np.ndarray
    confidence: np.ndarray


def ping_pong(n: int, k: int) -> int:
    """Index of the k-th published frame when ``n`` frames play forwards, then backwards."""
    if n <= 1:
        return 0
    period = 2 * (n - 1)
    p = k % period
    return p if p < n else period - p


def render_frames(
    n_frames: int,
    fps: float,
    seed: int,
    depth: bool = True,
    color: bool = True,
    progress: bool = True,
) -> tuple[list[Frame], tuple[float, float, float, float], tuple[int, int]]:
    """Render the synthetic trajectory into messages; returns (frames, (fx, fy, cx, cy), (w, h))."""
    from tqdm import tqdm

    from handpose_core.data.synthetic import SynthConfig, SyntheticHands

    generator = SyntheticHands(SynthConfig(render_depth=depth, render_rgb=color), seed=seed)
    frames: list[Frame] = []
    intrinsics, size = None, None
    samples = generator.trajectory(n_frames, fps=fps)
    for sample in tqdm(
        samples,
        total=n_frames,
        desc="rendering",
        unit="frame",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    ):
        intrinsics = sample.intrinsics.as_tuple()
        size = (int(sample.intrinsics.width), int(sample.intrinsics.height))
        truth = _Truth(sample.xyz_m, sample.uv_px, np.asarray(sample.visible, dtype=np.float32))
        frames.append(
            Frame(
                depth=conv.numpy_to_image(sample.depth_mm, "16UC1") if depth else None,
                color=conv.numpy_to_image(sample.rgb, "rgb8") if color else None,
                gt=conv.keypoints_to_pointcloud2([truth], Header()),
            )
        )
    return frames, intrinsics, size


class CameraSource(Node):
    """Publishes pre-rendered synthetic RGB-D frames at ``rate`` Hz (see the module docstring)."""

    def __init__(
        self, frames: list[Frame] | None = None, intrinsics=None, size=None, progress: bool = True, **kwargs
    ) -> None:
        kwargs.setdefault("namespace", DEFAULT_NAMESPACE)
        super().__init__(NODE_NAME, **kwargs)
        for name, (default, description) in PARAMETERS.items():
            from rcl_interfaces.msg import ParameterDescriptor

            self.declare_parameter(name, default, ParameterDescriptor(description=description, read_only=True))
        rate = float(self._param("rate"))
        if not rate > 0:
            raise ValueError(f"rate must be > 0 Hz, got {rate}")
        if self._param("reliability") not in ("reliable", "best_effort"):
            raise ValueError(f"reliability must be reliable or best_effort, got {self._param('reliability')!r}")
        if frames is None:
            n = int(self._param("frames"))
            if n < 1:
                raise ValueError(f"frames must be >= 1, got {n}")
            frames, intrinsics, size = render_frames(
                n,
                rate,
                int(self._param("seed")),
                bool(self._param("publish_depth")),
                bool(self._param("publish_color")),
                progress,
            )
        self.frames = frames
        self.info = conv.intrinsics_to_camera_info(intrinsics, size[0], size[1])
        self.published = 0
        self.done = threading.Event()
        reliability = (
            ReliabilityPolicy.RELIABLE if self._param("reliability") == "reliable" else ReliabilityPolicy.BEST_EFFORT
        )
        qos = QoSProfile(depth=5, reliability=reliability)
        self._pubs = {"gt": self.create_publisher(PointCloud2, TOPICS["gt"], qos)}
        if self._param("publish_depth"):
            self._pubs["depth"] = self.create_publisher(Image, TOPICS["depth"], qos)
            self._pubs["depth_info"] = self.create_publisher(CameraInfo, TOPICS["depth_info"], qos)
        if self._param("publish_color"):
            self._pubs["color"] = self.create_publisher(Image, TOPICS["color"], qos)
            self._pubs["color_info"] = self.create_publisher(CameraInfo, TOPICS["color_info"], qos)
        self._timer = self.create_timer(1.0 / rate, self._tick)
        topics = ", ".join(self.resolve_topic_name(TOPICS[k]) for k in self._pubs)
        self.get_logger().info(
            f"publishing {len(frames)} synthetic frames (forwards and backwards) at {rate:g} Hz on {topics}"
        )

    def _param(self, name: str):
        return self.get_parameter(name).value

    def _tick(self) -> None:
        count = int(self._param("count"))
        if count and self.published >= count:
            self._timer.cancel()
            self.done.set()
            return
        frame = self.frames[ping_pong(len(self.frames), self.published)]
        header = Header(frame_id=str(self._param("frame_id")))
        header.stamp = self.get_clock().now().to_msg()
        self.info.header = header
        # Ground truth first: a consumer that matches results to truth by stamp has it in hand
        # before the estimator's output for this frame can arrive.
        frame.gt.header = header
        self._pubs["gt"].publish(frame.gt)
        for kind in ("depth", "color"):
            msg = getattr(frame, kind)
            if msg is None or kind not in self._pubs:
                continue
            self._pubs[f"{kind}_info"].publish(self.info)
            # An image nobody listens to is not sent: serializing 1 MB costs the CPU the
            # estimator needs.
            if self._pubs[kind].get_subscription_count() > 0:
                msg.header = header
                self._pubs[kind].publish(msg)
        self.published += 1


def build_parser() -> argparse.ArgumentParser:
    from handpose_ros.bag_tool import OneLineParser

    parser = OneLineParser(
        prog="handpose_camera_source",
        description="Synthetic RGB-D hand camera for the handpose node: depth (16UC1 mm), colour (rgb8), "
        "camera_info and ground-truth keypoints (PointCloud2) under /camera, or a bag replay (--bag).",
        epilog="Every option but --bag is also a ROS parameter of the same name (underscores), e.g. "
        "`--ros-args -p rate:=15.0`; move the topics with `--ros-args -r __ns:=/cam2`. "
        "Topics: " + ", ".join(f"{DEFAULT_NAMESPACE}/{t}" for t in TOPICS.values()) + ".",
    )
    parser.add_argument("--rate", type=float, help="frames per second (default 30)")
    parser.add_argument(
        "--frames",
        type=int,
        help="frames rendered up front, played forwards and backwards "
        "(default 150 = 5 s at 30 Hz; memory ~1.5 MB per frame)",
    )
    parser.add_argument("--seed", type=int, help="synthetic generator seed (default 0)")
    parser.add_argument("--frame-id", help="header frame_id (default camera_optical_frame)")
    parser.add_argument(
        "--no-depth", dest="publish_depth", action="store_const", const=False, help="do not render or publish depth"
    )
    parser.add_argument(
        "--no-color", dest="publish_color", action="store_const", const=False, help="do not render or publish colour"
    )
    parser.add_argument("--reliability", choices=("reliable", "best_effort"), help="publisher QoS (default reliable)")
    parser.add_argument(
        "--count", type=int, help="stop after this many frames (default 0: until Ctrl-C); with --bag: play it once"
    )
    parser.add_argument(
        "--bag",
        help="replay this rosbag2 (all its topics, looped, header stamps shifted to now, after waiting up to 5 s "
        "for subscribers) instead of synthetic frames",
    )
    parser.add_argument("--no-progress", action="store_true", help="no rendering progress bar")
    return parser


def _overrides(args: argparse.Namespace) -> list[Parameter]:
    """Flags the user gave, as parameter overrides (flags left out leave ROS ``-p`` values alone)."""
    out = []
    for name in PARAMETERS:
        value = getattr(args, name, None)
        if value is not None:
            out.append(Parameter(name, value=value))
    return out


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``handpose_camera_source``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = argv[argv.index("--ros-args") :] if "--ros-args" in argv else []
    args = build_parser().parse_args(argv[: len(argv) - len(ros_args)])
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    if args.bag:
        from handpose_ros import bag_tool

        try:
            # Like a camera that is already running: wait (a little) for subscribers to be discovered.
            result = bag_tool.play(
                args.bag,
                loop=not args.count,
                restamp=True,
                delay_s=0.2,
                wait_for_subscribers_s=5.0,
                ros_args=["handpose_camera_source", *ros_args],
            )
        except bag_tool.BagToolError as exc:
            print(f"handpose_camera_source: error: {exc}", file=sys.stderr)
            return 2
        print(f"published {result.published} messages from {args.bag}", file=sys.stderr)
        return 0

    rclpy.init(args=["handpose_camera_source", *ros_args])
    node = None
    try:
        with stopped_by_shutdown():  # Ctrl-C / SIGTERM, also while the frames are rendered
            try:
                node = CameraSource(parameter_overrides=_overrides(args), progress=not args.no_progress)
            except ValueError as exc:
                print(f"handpose_camera_source: error: {exc}", file=sys.stderr)
                return 2
            if not rclpy.ok():
                return 0  # rclpy's signal handler shut ROS down while the frames were rendered
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            try:
                while rclpy.ok() and not node.done.is_set():
                    executor.spin_once(timeout_sec=0.1)
                time.sleep(0.2)  # let the last messages leave before the node goes
            finally:
                executor.remove_node(node)
        return 0
    finally:
        shut_down(node)  # bounded: deleting the DDS participant can block (handpose_ros.shutdown)


if __name__ == "__main__":
    sys.exit(main())
