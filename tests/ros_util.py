"""Helpers for tests that use rclpy: isolated contexts, a background spinner, a probe node.

Every context gets its own random ``ROS_DOMAIN_ID`` (set in ``os.environ`` before ``rclpy.init``
and inherited by child processes), so parallel test runs never hear each other.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import rclpy
import torch
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from handpose_core.estimator import HandPose
from handpose_core.keypoints import HAND21


def random_domain_id() -> int:
    # 1..100: inside the range every RMW maps to valid ports, clear of the default 0.
    return random.SystemRandom().randint(1, 100)


@contextlib.contextmanager
def ros_context(domain_id: int | None = None) -> Iterator[Context]:
    """A fresh rclpy context on a random domain; shut down on exit."""
    domain = random_domain_id() if domain_id is None else domain_id
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


class Spinner:
    """Spins nodes on a single-threaded executor in a background thread."""

    def __init__(self, context: Context, *nodes: Node) -> None:
        self.executor = SingleThreadedExecutor(context=context)
        for node in nodes:
            self.executor.add_node(node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.02)

    def __enter__(self) -> Spinner:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.executor.shutdown(timeout_sec=1.0)


def qos(reliable: bool) -> QoSProfile:
    """Sensor-data QoS with the given reliability."""
    return QoSProfile(
        history=qos_profile_sensor_data.history,
        depth=qos_profile_sensor_data.depth,
        durability=qos_profile_sensor_data.durability,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
    )


class Probe:
    """A test node that records what arrives on the topics it subscribes to."""

    def __init__(self, context: Context, name: str = "probe") -> None:
        self.node = Node(name, context=context)
        self._cond = threading.Condition()
        self.received: dict[str, list] = {}
        self.subscriptions: dict[str, object] = {}

    def subscribe(self, msg_type, topic: str, qos_profile: QoSProfile | int = 10):
        self.received.setdefault(topic, [])

        def callback(msg, topic=topic):
            with self._cond:
                self.received[topic].append(msg)
                self._cond.notify_all()

        subscription = self.node.create_subscription(msg_type, topic, callback, qos_profile)
        self.subscriptions[topic] = subscription
        return subscription

    def messages(self, topic: str) -> list:
        with self._cond:
            return list(self.received.get(topic, []))

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate()`` holds (re-checked on every message and every 50 ms)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def wait_for_subscribers(self, publisher, count: int = 1, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while publisher.get_subscription_count() < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def wait_for_publishers(self, topic: str, count: int = 1, timeout: float = 10.0) -> bool:
        """Block until ``count`` writers have *matched* our reader on ``topic``.

        The graph (``count_publishers``) learns of a writer before the writer has matched this
        reader; a message published in between is lost on a volatile topic, so tests that wait on
        the graph fail now and then on a loaded machine. ``topic`` must be one :meth:`subscribe` made.
        """
        subscription = self.subscriptions[topic]
        deadline = time.monotonic() + timeout
        while subscription.get_publisher_count() < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


def header(index: int, frame_id: str = "camera_optical_frame") -> Header:
    """A distinct, recognisable stamp per frame: sec = 1000 + index, nanosec = 7 * index."""
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = 1000 + index, 7 * index
    return h


def now_header(node: Node, frame_id: str = "camera_optical_frame") -> Header:
    """A header stamped with ``node``'s clock now (for latency measurements)."""
    h = Header(frame_id=frame_id)
    h.stamp = node.get_clock().now().to_msg()
    return h


def broken_image(kind: str, template: Image) -> Image:
    """A copy of ``template`` broken in one way: encoding, short, step, empty."""
    msg = Image(
        header=template.header,
        height=template.height,
        width=template.width,
        encoding=template.encoding,
        is_bigendian=template.is_bigendian,
        step=template.step,
        data=template.data,
    )
    if kind == "encoding":
        msg.encoding = "yuv422_yuy2"
    elif kind == "short":
        msg.data = bytes(template.data)[: len(template.data) // 2]
    elif kind == "step":
        msg.step = template.width  # fewer bytes than one row of a multi-byte encoding
    elif kind == "empty":
        msg.height, msg.width, msg.step, msg.data = 0, 0, 0, b""
    else:
        raise ValueError(kind)
    return msg


class FakeEstimator:
    """Stands in for HandPoseEstimator where a test is about the node, not the model.

    Every predict sleeps ``delay_s`` and returns one HAND21 hand whose ``uv_px[:, 1]`` is the call
    number; ``calls``, ``debug_calls`` and ``closed`` record what the node did with it.
    """

    model_name = "fake"
    backend = "torch"

    def __init__(self, delay_s: float = 0.0, modality: str = "depth") -> None:
        self.delay_s = delay_s
        self.modality = modality
        self.device = torch.device("cpu")
        self.joint_names = HAND21.joint_names
        self.calls = 0
        self.debug_calls = 0
        self.closed = False
        self.handedness = "auto"
        self.hands = "right"
        self.handedness_seen: list[str] = []  # the handedness each predict ran with

    def predict(self, image, intrinsics=None, depth=None) -> list[HandPose]:
        self.calls += 1
        self.handedness_seen.append(self.handedness)
        time.sleep(self.delay_s)
        j = len(self.joint_names)
        xyz = np.stack([np.linspace(-0.05, 0.05, j), 0.05 * np.cos(np.arange(j)), np.full(j, 0.5)], axis=1)
        uv = np.stack([np.arange(j), np.full(j, self.calls)], axis=1)
        hand = "left" if self.handedness == "left" else "right"
        return [HandPose(uv.astype(np.float32), xyz.astype(np.float32), np.ones(j, np.float32), self.joint_names,
                         extras={"handedness": hand})]

    def debug_image(self, image, poses) -> np.ndarray:
        self.debug_calls += 1
        return np.zeros((8, 8, 3), np.uint8)

    def close(self) -> None:
        self.closed = True
