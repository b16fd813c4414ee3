"""``handpose-bag``: record, replay and evaluate rosbag2 bags without a ROS install.

Bags are real rosbag2 directories (``metadata.yaml`` + one sqlite3 ``.db3`` or ``.mcap`` file,
format version 9, the one Jazzy/Kilted write) made with the pure-Python ``rosbags`` library, so
``ros2 bag info`` / ``ros2 bag play`` on a ROS machine read them, and bags recorded there read here.

Sub-commands::

    handpose-bag record OUT --topics /camera/depth/image_raw /camera/depth/camera_info --duration 10
    handpose-bag play BAG [--rate 1.0] [--loop] [--restamp]
    handpose-bag eval BAG --checkpoint default:depth --out keypoints.csv   # or .json
    handpose-bag info BAG

``record`` subscribes with rclpy to serialized (raw) messages and writes them unchanged, with the
receive time as the bag timestamp (as ``ros2 bag record`` does), the publishers' offered QoS and
the Kilted message definitions and type hashes. ``play`` publishes the serialized bytes at the
recorded timing. ``eval`` runs :class:`~handpose_core.HandPoseEstimator` over the bag offline:
each image is deserialized into a real ``sensor_msgs/Image`` and converted by
:mod:`handpose_ros.conversions`, paired with the latest ``camera_info`` before it, exactly as the
live ``handpose`` node does, so its keypoints equal the node's on the same frames.

Bad input (missing bag, no image topic, an image encoding the model cannot use, unknown options)
prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handpose_core.atomic import atomic_write, write_json
from handpose_ros.shutdown import shut_down, stopped_by_shutdown, teardown

PROG = "handpose-bag"
IMAGE_TYPE = "sensor_msgs/msg/Image"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
BAG_VERSION = 9  # rosbag2 metadata version written by Jazzy and Kilted
DEFAULT_QOS_DEPTH = 10
# Receive-side queue depth while recording: deep enough for bursts of a 30 Hz camera.
RECORD_QUEUE_DEPTH = 100


class BagToolError(Exception):
    """A problem the user can fix (bad path, topic, encoding...): one line, exit code 2."""


# ---------------------------------------------------------------------------------------------
# Message types and QoS
# ---------------------------------------------------------------------------------------------


def message_class(type_name: str):
    """``pkg/msg/Type`` (or ``pkg/Type``) -> the generated Python class; BagToolError if unknown."""
    parts = type_name.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise BagToolError(f"malformed message type name {type_name!r} (expected pkg/msg/Type)")
    try:
        return getattr(importlib.import_module(f"{parts[0]}.{parts[1]}"), parts[2])
    except (ImportError, AttributeError):
        raise BagToolError(f"message type {type_name} is not installed in this Python environment") from None


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def _duration_to_qos_time(duration) -> Any:
    from rosbags.interfaces import QosTime

    ns = int(duration.nanoseconds)
    return QosTime(ns // 1_000_000_000, ns % 1_000_000_000)


def rclpy_qos_to_rosbags(profile) -> Any:
    """rclpy QoSProfile (as offered by a publisher) -> rosbags ``Qos`` for metadata.yaml.

    The enum values of rmw and rosbags coincide; unknown values map to UNKNOWN.
    """
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability

    def enum(cls, value):
        try:
            return cls(int(value))
        except ValueError:
            return cls.UNKNOWN

    return Qos(
        history=enum(QosHistory, profile.history),
        depth=int(profile.depth),
        reliability=enum(QosReliability, profile.reliability),
        durability=enum(QosDurability, profile.durability),
        deadline=_duration_to_qos_time(profile.deadline),
        lifespan=_duration_to_qos_time(profile.lifespan),
        liveliness=enum(QosLiveliness, profile.liveliness),
        liveliness_lease_duration=_duration_to_qos_time(profile.liveliness_lease_duration),
        avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions),
    )


def playback_qos(offered: Sequence[Any]):
    """QoS to replay a topic with: the recorded reliability and durability, keep-last 10.

    A bag without QoS (or with UNKNOWN values) replays reliable + volatile, which every
    subscriber (reliable or best effort) accepts.
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliability, durability = ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE
    if offered:
        if offered[0].reliability.name == "BEST_EFFORT":
            reliability = ReliabilityPolicy.BEST_EFFORT
        if offered[0].durability.name == "TRANSIENT_LOCAL":
            durability = DurabilityPolicy.TRANSIENT_LOCAL
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=DEFAULT_QOS_DEPTH, reliability=reliability, durability=durability
    )


def subscription_qos(offered: Sequence[Any]):
    """QoS to record a topic with, adapted to its publishers (like ``ros2 bag record``).

    Reliable only when every publisher offers reliable (else best effort, which matches both);
    transient local only when every publisher offers it (so latched topics arrive).
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    all_reliable = bool(offered) and all(int(q.reliability) == int(ReliabilityPolicy.RELIABLE) for q in offered)
    all_latched = bool(offered) and all(int(q.durability) == int(DurabilityPolicy.TRANSIENT_LOCAL) for q in offered)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=RECORD_QUEUE_DEPTH,
        reliability=ReliabilityPolicy.RELIABLE if all_reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if all_latched else DurabilityPolicy.VOLATILE,
    )


def _init_context(args: Sequence[str] | None = None):
    """A private rclpy context (so the tools also run inside a process that has its own)."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    context = rclpy.Context()
    rclpy.init(
        args=list(args) if args is not None else None, context=context, signal_handler_options=SignalHandlerOptions.NO
    )
    return context


# ---------------------------------------------------------------------------------------------
# record
# ---------------------------------------------------------------------------------------------


@dataclass
class RecordResult:
    path: Path
    counts: dict[str, int] = field(default_factory=dict)  # topic -> messages written
    missing: list[str] = field(default_factory=list)  # requested topics never seen


def record(
    out: str | Path,
    topics: Sequence[str] = (),
    duration_s: float | None = None,
    all_topics: bool = False,
    storage: str = "sqlite3",
    stop: Callable[[], bool] | None = None,
    on_message: Callable[[str], None] | None = None,
    ros_args: Sequence[str] | None = None,
) -> RecordResult:
    """Record ``topics`` (or every topic with ``all_topics``) into a new rosbag2 at ``out``.

    Topics are subscribed as soon as discovery sees a publisher (checked every 0.2 s), with a QoS
    adapted to it. Stops after ``duration_s`` seconds (None: until ``stop()`` returns True or
    Ctrl-C). Bag timestamps are the receive times (ns, ROS clock).
    """
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.errors import WriterError
    from rosbags.typesys import TypesysError

    out = Path(out)
    if out.exists():
        raise BagToolError(f"output {out} exists already; record never overwrites a bag")
    if not topics and not all_topics:
        raise BagToolError("nothing to record: give --topics T [T ...] or --all")
    if duration_s is not None and not duration_s > 0:
        raise BagToolError(f"--duration must be > 0 s, got {duration_s}")
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
    wanted = [_absolute(t) for t in topics]

    typestore = _typestore()
    context = _init_context(ros_args)
    node = Node("handpose_bag_record", context=context, start_parameter_services=False)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    writer = Writer(out, version=BAG_VERSION, storage_plugin=plugin)
    writer.open()
    result = RecordResult(out)
    subscribed: dict[str, Any] = {}
    own_topics = {"/rosout", "/parameter_events"}

    def make_callback(topic: str, connection) -> Callable[[bytes], None]:
        def callback(data: bytes) -> None:
            writer.write(connection, node.get_clock().now().nanoseconds, data)
            result.counts[topic] += 1
            if on_message is not None:
                on_message(topic)

        return callback

    def discover() -> None:
        for name, types in node.get_topic_names_and_types():
            if name in subscribed or not (name in wanted or (all_topics and name not in own_topics)):
                continue
            publishers = node.get_publishers_info_by_topic(name)
            if not publishers:
                continue  # only subscribers so far: its type may still be unknown
            type_name = types[0]
            try:
                cls = message_class(type_name)
            except BagToolError as exc:
                if not all_topics:
                    raise
                print(f"{PROG}: warning: not recording {name}: {exc}", file=sys.stderr)
                subscribed[name] = None
                continue
            offered = [info.qos_profile for info in publishers]
            try:
                msgdef, _ = typestore.generate_msgdef(type_name, ros_version=2)
            except TypesysError:  # a custom type rosbags does not know: play still works by name
                msgdef = ""
            type_hash = _type_hash_string(publishers[0].topic_type_hash) or _typestore_hash(typestore, type_name)
            connection = writer.add_connection(
                name,
                type_name,
                msgdef=msgdef,
                rihs01=type_hash,
                offered_qos_profiles=[rclpy_qos_to_rosbags(q) for q in offered],
            )
            result.counts[name] = 0
            subscribed[name] = node.create_subscription(
                cls, name, make_callback(name, connection), subscription_qos(offered), raw=True
            )

    start = time.monotonic()
    next_discovery = 0.0
    try:
        # Ctrl-C / SIGTERM end a recording normally, as they end the node's spin; the bag is closed below
        with stopped_by_shutdown(context):
            while context.ok():
                now = time.monotonic()
                if duration_s is not None and now - start >= duration_s:
                    break
                if stop is not None and stop():
                    break
                if now >= next_discovery:
                    discover()
                    next_discovery = now + 0.2
                executor.spin_once(timeout_sec=0.05)
    finally:
        try:
            writer.close()
        except WriterError as exc:  # pragma: no cover - disk full and the like
            raise BagToolError(f"could not finish {out}: {exc}") from None
        finally:
            executor.shutdown()
            shut_down(node, context)  # bounded (handpose_ros.shutdown)
    result.missing = [t for t in wanted if subscribed.get(t) is None]
    return result


def _absolute(topic: str) -> str:
    return topic if topic.startswith("/") else "/" + topic


def _type_hash_string(type_hash) -> str:
    """rclpy TypeHash -> ``RIHS01_<hex>``; empty when the middleware reports none."""
    try:
        value = bytes(type_hash.value)
        version = int(type_hash.version)
    except (AttributeError, TypeError, ValueError):
        return ""
    if version != 1 or not any(value):
        return ""
    return f"RIHS01_{value.hex()}"


def _typestore_hash(typestore, type_name: str) -> str:
    from rosbags.typesys import TypesysError

    try:
        return typestore.hash_rihs01(type_name)
    except (KeyError, TypesysError):  # unknown to rosbags and not reported by the middleware
        return "RIHS01_" + "0" * 64


# ---------------------------------------------------------------------------------------------
# Reading bags
# ---------------------------------------------------------------------------------------------


def open_bag(path: str | Path):
    """Open a rosbag2 (directory, ``.db3`` or ``.mcap``) for reading; BagToolError when it cannot."""
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError

    path = Path(path)
    if not path.exists():
        raise BagToolError(f"bag {path} does not exist")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise BagToolError(f"{path} is not a rosbag2 directory (no metadata.yaml)")
    try:
        reader = Reader(path)
        reader.open()
    except (ReaderError, OSError, KeyError, ValueError) as exc:
        raise BagToolError(f"cannot read bag {path}: {exc}") from None
    return reader


def bag_topics(reader) -> dict[str, str]:
    """topic -> message type name."""
    return {c.topic: c.msgtype for c in reader.connections}


def _describe_topics(reader) -> str:
    topics = bag_topics(reader)
    return ", ".join(f"{t} [{ty}]" for t, ty in sorted(topics.items())) or "none"


# ---------------------------------------------------------------------------------------------
# play
# ---------------------------------------------------------------------------------------------


@dataclass
class PlayResult:
    published: int = 0
    loops: int = 0


def play(
    bag: str | Path,
    rate: float = 1.0,
    loop: bool = False,
    topics: Sequence[str] = (),
    delay_s: float = 1.0,
    restamp: bool = False,
    stop: Callable[[], bool] | None = None,
    ros_args: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
    wait_for_subscribers_s: float = 0.0,
) -> PlayResult:
    """Publish the bag's messages at their recorded timing (divided by ``rate``).

    topics:  only these topics (default: all).
    delay_s: wait before the first message, so that subscribers can be discovered.
    restamp: rewrite ``header.stamp`` of messages that have one to "now", shifting every stamp
             of one pass by the same offset (messages of one frame keep a common stamp); the
             others are published as the recorded bytes.
    wait_for_subscribers_s: before the first message (and after ``delay_s``), wait up to this
             long until every played topic has a subscriber (discovery can take seconds).
    """
    import rclpy.serialization
    from rclpy.node import Node

    if not rate > 0:
        raise BagToolError(f"--rate must be > 0, got {rate}")
    reader = open_bag(bag)
    result = PlayResult()
    context = None
    try:
        connections = [c for c in reader.connections if not topics or c.topic in {_absolute(t) for t in topics}]
        if not connections:
            raise BagToolError(f"no topic to play in {bag} (topics: {_describe_topics(reader)})")
        classes = {c.id: message_class(c.msgtype) for c in connections}
        context = _init_context(ros_args)
        node = Node("handpose_bag_play", context=context, start_parameter_services=False)
        publishers = {}
        for c in connections:
            key = (c.topic, c.msgtype)
            if key not in publishers:
                offered = getattr(c.ext, "offered_qos_profiles", [])
                publishers[key] = node.create_publisher(classes[c.id], c.topic, playback_qos(offered))
        stampable = {cid for cid, cls in classes.items() if _has_header(cls)}
        _sleep_until(time.monotonic() + delay_s, context, stop)
        deadline = time.monotonic() + wait_for_subscribers_s
        while wait_for_subscribers_s > 0 and any(p.get_subscription_count() == 0 for p in publishers.values()):
            if time.monotonic() > deadline:
                lonely = sorted(t for (t, _), p in publishers.items() if p.get_subscription_count() == 0)
                print(f"{PROG}: warning: no subscriber on {', '.join(lonely)}; playing anyway", file=sys.stderr)
                break
            if not _sleep_until(time.monotonic() + 0.05, context, stop):
                return result
        while context.ok() and not (stop and stop()):
            t_wall0, t_bag0 = time.monotonic(), None
            stamp_offset_ns = None
            for conn, t_bag, data in reader.messages(connections):
                if t_bag0 is None:
                    t_bag0 = t_bag
                if not _sleep_until(t_wall0 + (t_bag - t_bag0) * 1e-9 / rate, context, stop):
                    return result
                if restamp and conn.id in stampable:
                    msg = rclpy.serialization.deserialize_message(bytes(data), classes[conn.id])
                    old_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                    if stamp_offset_ns is None:
                        stamp_offset_ns = node.get_clock().now().nanoseconds - old_ns
                    new_ns = old_ns + stamp_offset_ns
                    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(new_ns, 1_000_000_000)
                    publishers[(conn.topic, conn.msgtype)].publish(msg)
                else:
                    publishers[(conn.topic, conn.msgtype)].publish(bytes(data))
                result.published += 1
                if progress is not None:
                    progress(result.published)
            result.loops += 1
            if not loop:
                break
        time.sleep(0.2)  # let the middleware hand the last messages over before the node goes
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
        if context is not None:
            teardown(context.try_shutdown)  # bounded (handpose_ros.shutdown)
    return result


def _has_header(cls) -> bool:
    from std_msgs.msg import Header

    return isinstance(getattr(cls(), "header", None), Header)


def _sleep_until(deadline: float, context, stop: Callable[[], bool] | None) -> bool:
    """Sleep in short steps until ``deadline`` (monotonic s); False when asked to stop."""
    while True:
        if not context.ok() or (stop is not None and stop()):
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True
        time.sleep(min(remaining, 0.05))


# ---------------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalFrame:
    """Estimator output for one image: the image header and the hands found."""

    index: int  # position among the image topic's messages
    bag_time_ns: int
    stamp_sec: int
    stamp_nanosec: int
    frame_id: str
    hands: list  # list[HandPose]

    @property
    def stamp_s(self) -> float:
        return self.stamp_sec + self.stamp_nanosec * 1e-9


@dataclass
class EvalResult:
    bag: str
    checkpoint: str
    model: str
    modality: str
    image_topic: str
    camera_info_topic: str | None
    joint_names: tuple[str, ...]
    frames: list[EvalFrame] = field(default_factory=list)
    skipped_no_camera_info: int = 0


def _modality_encodings(modality: str) -> frozenset[str]:
    from handpose_ros import conversions as conv

    return conv.DEPTH_ENCODINGS if modality == "depth" else conv.COLOR_ENCODINGS


def _first_encoding(reader, topic: str) -> str | None:
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    conns = [c for c in reader.connections if c.topic == topic]
    for _, _, data in reader.messages(conns):
        return deserialize_message(bytes(data), Image).encoding
    return None


def choose_image_topic(reader, modality: str, requested: str | None) -> str:
    """The image topic to evaluate: ``requested``, or the one Image topic whose encoding suits
    the model (checked on its first message)."""
    topics = bag_topics(reader)
    images = sorted(t for t, ty in topics.items() if ty == IMAGE_TYPE)
    if requested:
        requested = _absolute(requested)
        if requested not in topics:
            raise BagToolError(
                f"image topic {requested} is not in the bag (image topics: {', '.join(images) or 'none'})"
            )
        if topics[requested] != IMAGE_TYPE:
            raise BagToolError(f"{requested} carries {topics[requested]}, not {IMAGE_TYPE}")
        return requested
    if not images:
        raise BagToolError(f"the bag has no {IMAGE_TYPE} topic (topics: {_describe_topics(reader)})")
    if len(images) == 1:
        return images[0]
    suited = [t for t in images if _first_encoding(reader, t) in _modality_encodings(modality)]
    if len(suited) == 1:
        return suited[0]
    raise BagToolError(
        f"several image topics suit the {modality} model ({', '.join(suited or images)}); choose one with --image-topic"
    )


def choose_camera_info_topic(reader, image_topic: str, requested: str | None) -> str | None:
    """``requested``, else ``<image topic's namespace>/camera_info``, else the only CameraInfo topic."""
    topics = bag_topics(reader)
    infos = sorted(t for t, ty in topics.items() if ty == CAMERA_INFO_TYPE)
    if requested:
        requested = _absolute(requested)
        if topics.get(requested) != CAMERA_INFO_TYPE:
            raise BagToolError(
                f"camera_info topic {requested} is not a {CAMERA_INFO_TYPE} topic in the bag "
                f"(camera_info topics: {', '.join(infos) or 'none'})"
            )
        return requested
    sibling = image_topic.rsplit("/", 1)[0] + "/camera_info"
    if sibling in infos:
        return sibling
    if len(infos) == 1:
        return infos[0]
    return None


def evaluate(
    bag: str | Path,
    checkpoint: str = "default:depth",
    image_topic: str | None = None,
    camera_info_topic: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    max_frames: int | None = None,
    estimator=None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Run the estimator over every image of ``image_topic`` in ``bag`` (in bag order).

    Each image is paired with the latest camera_info recorded before it. Depth models skip images
    that come before any camera_info (counted in ``skipped_no_camera_info``), like the node.
    Raises BagToolError for a missing bag, no suitable image topic, an encoding the model cannot
    use, or no camera_info for a depth model.
    """
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, Image

    from handpose_core.errors import HandPoseError
    from handpose_ros import conversions as conv

    reader = open_bag(bag)
    try:
        if estimator is None:
            from handpose_core.estimator import HandPoseEstimator

            try:
                estimator = HandPoseEstimator.from_checkpoint(checkpoint, device=device, precision=precision)
            except HandPoseError as exc:
                raise BagToolError(f"cannot load checkpoint {checkpoint!r}: {exc}") from None
        modality = estimator.modality
        image_topic = choose_image_topic(reader, modality, image_topic)
        info_topic = choose_camera_info_topic(reader, image_topic, camera_info_topic)
        if info_topic is None and modality == "depth":
            raise BagToolError(
                f"the bag has no camera_info topic for {image_topic}; the depth model needs intrinsics "
                f"(topics: {_describe_topics(reader)})"
            )
        result = EvalResult(
            bag=str(bag),
            checkpoint=str(checkpoint),
            model=estimator.model_name,
            modality=modality,
            image_topic=image_topic,
            camera_info_topic=info_topic,
            joint_names=tuple(estimator.joint_names),
        )
        expected = _modality_encodings(modality)
        conns = [c for c in reader.connections if c.topic in (image_topic, info_topic)]
        intrinsics, info_problem = None, "no camera_info before this image"
        index = -1
        for conn, t_bag, data in reader.messages(conns):
            if conn.topic == info_topic:
                try:
                    intrinsics = conv.camera_info_to_intrinsics(deserialize_message(bytes(data), CameraInfo))
                except conv.ConversionError as exc:
                    intrinsics, info_problem = None, f"camera_info on {info_topic}: {exc}"
                continue
            index += 1
            if max_frames is not None and len(result.frames) >= max_frames:
                break
            msg = deserialize_message(bytes(data), Image)
            if msg.encoding not in expected:
                raise BagToolError(
                    f"{image_topic} frame {index} has encoding {msg.encoding!r}; the {modality} model needs "
                    f"one of {', '.join(sorted(expected))}"
                )
            try:
                image = conv.image_to_numpy(msg)
            except conv.ConversionError as exc:
                raise BagToolError(f"{image_topic} frame {index}: {exc}") from None
            if intrinsics is None and modality == "depth":
                result.skipped_no_camera_info += 1
                continue
            try:
                poses = estimator.predict(image, intrinsics=intrinsics)
            except HandPoseError as exc:
                raise BagToolError(f"{image_topic} frame {index}: {exc}") from None
            result.frames.append(
                EvalFrame(
                    index,
                    int(t_bag),
                    int(msg.header.stamp.sec),
                    int(msg.header.stamp.nanosec),
                    msg.header.frame_id,
                    poses,
                )
            )
            if progress is not None:
                progress(len(result.frames))
        if not result.frames:
            why = f"; {info_problem}" if result.skipped_no_camera_info else ""
            raise BagToolError(f"no frame of {image_topic} could be evaluated{why}")
        return result
    finally:
        reader.close()


def _num(value: float) -> float | None:
    """JSON has no NaN: unknown values become null."""
    value = float(value)
    return value if math.isfinite(value) else None


def eval_to_json(result: EvalResult) -> dict[str, Any]:
    """JSON document: run description plus per-frame hands (NaN -> null)."""
    frames = []
    for f in result.frames:
        hands = [
            {
                "uv_px": [[_num(v) for v in row] for row in p.uv_px],
                "xyz_m": [[_num(v) for v in row] for row in p.xyz_m],
                "confidence": [_num(v) for v in p.confidence],
            }
            for p in f.hands
        ]
        frames.append(
            {
                "index": f.index,
                "bag_time_ns": f.bag_time_ns,
                "stamp": {"sec": f.stamp_sec, "nanosec": f.stamp_nanosec},
                "stamp_s": f.stamp_s,
                "frame_id": f.frame_id,
                "hands": hands,
            }
        )
    return {
        "bag": result.bag,
        "checkpoint": result.checkpoint,
        "model": result.model,
        "modality": result.modality,
        "image_topic": result.image_topic,
        "camera_info_topic": result.camera_info_topic,
        "joint_names": list(result.joint_names),
        "units": {"uv_px": "pixels", "xyz_m": "metres, camera optical frame"},
        "frames": frames,
    }


CSV_COLUMNS = (
    "frame",
    "stamp_sec",
    "stamp_nanosec",
    "frame_id",
    "hands",
    "hand",
    "joint",
    "joint_name",
    "u_px",
    "v_px",
    "x_m",
    "y_m",
    "z_m",
    "confidence",
)


def eval_csv_rows(result: EvalResult) -> Iterator[list]:
    """Long format: one row per (frame, hand, joint); a frame without a hand gets one row with
    ``hands`` = 0 and empty keypoint columns, so "no hand" differs from "frame missing"."""
    for f in result.frames:
        head = [f.index, f.stamp_sec, f.stamp_nanosec, f.frame_id, len(f.hands)]
        if not f.hands:
            yield head + [""] * (len(CSV_COLUMNS) - len(head))
            continue
        for h, p in enumerate(f.hands):
            for j, name in enumerate(result.joint_names):
                yield head + [
                    h,
                    j,
                    name,
                    *(float(v) for v in p.uv_px[j]),
                    *(float(v) for v in p.xyz_m[j]),
                    float(p.confidence[j]),
                ]


def write_eval(result: EvalResult, out: str | Path) -> Path:
    """Write ``out`` as JSON (``.json``) or CSV (anything else, normally ``.csv``)."""
    out = Path(out)
    if out.suffix.lower() == ".json":
        write_json(out, eval_to_json(result), indent=1)
    else:
        def write_csv(tmp: str) -> None:
            with open(tmp, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(CSV_COLUMNS)
                writer.writerows(eval_csv_rows(result))

        atomic_write(out, write_csv)
    return out


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------


def info_lines(bag: str | Path) -> list[str]:
    reader = open_bag(bag)
    try:
        lines = [
            f"bag:      {bag}",
            f"duration: {reader.duration * 1e-9:.3f} s, {reader.message_count} messages",
        ]
        for conn in sorted(reader.connections, key=lambda c: c.topic):
            lines.append(f"  {conn.topic}  [{conn.msgtype}]  {conn.msgcount} msgs")
        return lines
    finally:
        reader.close()


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports errors as one line with exit code 2 (no usage dump)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description=(
            "Record, replay and evaluate rosbag2 bags (sqlite3 or mcap, format 9) for the handpose "
            "node, without a ROS install. Bags are readable by `ros2 bag` on a ROS 2 machine."
        ),
        epilog="Exit codes: 0 ok, 1 nothing recorded, 2 bad input (one line on stderr), 130 interrupted.",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{record,play,eval,info}", parser_class=OneLineParser
    )

    rec = sub.add_parser(
        "record",
        help="record live topics into a new bag",
        description="Subscribe to topics (serialized, unchanged) and write a rosbag2. "
        "Stops after --duration or on Ctrl-C; the bag is always closed properly.",
    )
    rec.add_argument("out", help="bag directory to create (must not exist)")
    group = rec.add_mutually_exclusive_group(required=True)
    group.add_argument("--topics", nargs="+", metavar="TOPIC", help="topics to record (subscribed when they appear)")
    group.add_argument("--all", action="store_true", help="record every topic (except /rosout, /parameter_events)")
    rec.add_argument(
        "--duration", type=float, default=None, metavar="S", help="seconds to record (default: until Ctrl-C)"
    )
    rec.add_argument(
        "--storage", choices=("sqlite3", "mcap"), default="sqlite3", help="storage plugin (default sqlite3)"
    )

    ply = sub.add_parser(
        "play",
        help="publish a bag's messages at the recorded timing",
        description="Publish the recorded serialized messages with rclpy at their recorded "
        "timing, with each topic's recorded reliability/durability.",
    )
    ply.add_argument("bag", help="bag directory (or .db3 / .mcap file)")
    ply.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    ply.add_argument("--loop", action="store_true", help="start over at the end (until Ctrl-C)")
    ply.add_argument("--topics", nargs="+", metavar="TOPIC", default=(), help="only these topics (default: all)")
    ply.add_argument(
        "--delay",
        type=float,
        default=1.0,
        metavar="S",
        help="wait before the first message so subscribers are discovered (default 1 s)",
    )
    ply.add_argument(
        "--wait-for-subscribers",
        type=float,
        default=0.0,
        metavar="S",
        help="before the first message, wait up to S seconds until every played topic has a subscriber",
    )
    ply.add_argument(
        "--restamp",
        action="store_true",
        help="shift header stamps to the playback time (keeps messages of one frame in step)",
    )

    ev = sub.add_parser(
        "eval",
        help="run the hand pose estimator over a bag's images offline",
        description="Run HandPoseEstimator over every image of a topic, each paired with the "
        "latest camera_info before it (as the live node does), and write per-frame "
        "keypoints with the image header stamp.",
    )
    ev.add_argument("bag", help="bag directory (or .db3 / .mcap file)")
    ev.add_argument(
        "--checkpoint",
        default="default:depth",
        help="default:depth, default:rgb or a checkpoint path (default default:depth)",
    )
    ev.add_argument(
        "--image-topic",
        default=None,
        help="image topic (default: the one sensor_msgs/Image topic whose encoding suits the model)",
    )
    ev.add_argument(
        "--camera-info-topic",
        default=None,
        help="camera_info topic (default: <image topic namespace>/camera_info, or the only one)",
    )
    ev.add_argument(
        "--out",
        required=True,
        help="output file: .json (one document, NaN as null) or .csv (one row per frame/hand/joint)",
    )
    ev.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    ev.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    ev.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N evaluated frames")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")

    inf = sub.add_parser("info", help="list a bag's topics, types and message counts")
    inf.add_argument("bag")
    return parser


def _raise_keyboard_interrupt(signum, frame):  # SIGTERM -> the same clean exit as Ctrl-C
    raise KeyboardInterrupt


def _tqdm(total: int | None, desc: str, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=disable, file=sys.stderr, dynamic_ncols=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``handpose-bag``."""
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        if args.command == "record":
            stop_requested = threading.Event()

            def _stop_recording(signum, frame):
                # A flag the record loop reads between two spins: an exception raised inside the
                # executor's spin could leave it waiting on its callback at shutdown (a recorder
                # once hung there after Ctrl-C). A second signal still interrupts at once.
                if stop_requested.is_set():
                    raise KeyboardInterrupt
                stop_requested.set()

            signal.signal(signal.SIGINT, _stop_recording)
            signal.signal(signal.SIGTERM, _stop_recording)
            result = record(args.out, args.topics or (), args.duration, all_topics=args.all, storage=args.storage,
                            stop=stop_requested.is_set)
            for topic, n in sorted(result.counts.items()):
                print(f"{topic}: {n} messages", file=sys.stderr)
            for topic in result.missing:
                print(f"{PROG}: warning: no publisher of {topic} was seen; not recorded", file=sys.stderr)
            print(f"wrote {result.path}", file=sys.stderr)
            if not any(result.counts.values()):
                print(f"{PROG}: error: no message was recorded", file=sys.stderr)
                return 1
            return 0
        if args.command == "play":
            result = play(
                args.bag,
                rate=args.rate,
                loop=args.loop,
                topics=args.topics,
                delay_s=args.delay,
                restamp=args.restamp,
                wait_for_subscribers_s=args.wait_for_subscribers,
            )
            print(f"published {result.published} messages", file=sys.stderr)
            return 0
        if args.command == "eval":
            out = Path(args.out)
            if out.suffix.lower() not in (".json", ".csv"):
                raise BagToolError(f"--out must end in .json or .csv, got {out.name}")
            bars = []  # made at the first evaluated frame, so that errors before it stay one line

            def progress(n: int) -> None:
                if not bars:
                    bars.append(_tqdm(None, "eval", args.quiet))
                bars[0].update(1)

            try:
                result = evaluate(
                    args.bag,
                    args.checkpoint,
                    args.image_topic,
                    args.camera_info_topic,
                    device=args.device,
                    precision=args.precision,
                    max_frames=args.max_frames,
                    progress=progress,
                )
            finally:
                for bar in bars:
                    bar.close()
            write_eval(result, out)
            found = sum(1 for f in result.frames if f.hands)
            extra = (
                f", {result.skipped_no_camera_info} skipped before the first camera_info"
                if result.skipped_no_camera_info
                else ""
            )
            print(
                f"{len(result.frames)} frames of {result.image_topic} ({result.model}), hands in {found}{extra} "
                f"-> {out}",
                file=sys.stderr,
            )
            return 0
        if args.command == "info":
            print("\n".join(info_lines(args.bag)))
            return 0
    except BagToolError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2  # unreachable: argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
