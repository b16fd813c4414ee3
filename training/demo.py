"""``make demo``: synthetic camera -> handpose node -> keypoints, measured and drawn.

Runs, as separate processes (the way a robot runs them):

1. the synthetic RGB-D camera, ``python -m handpose_ros.camera_source`` (renders its frames first,
   with a progress bar, then publishes depth, colour, camera_info and ground truth at ``--rate``);
2. the ``handpose`` node, ``python -m handpose_ros.node``, once per mode: depth (``--depth-model``,
   default ``default:depth``, on ``/camera/depth/*``) and then RGB (``--rgb-model``, default
   ``default:rgb``, on ``/camera/color/*``), each with the shipped ``config/*.yaml``;

and, in this process, a consumer that subscribes to ``/handpose/keypoints``, the ground truth
``/camera/hand_gt``, the input images and ``/diagnostics``. Each mode runs ``--seconds`` after its
first keypoints arrive (model loading is not counted), with a live line: input rate, output rate,
latency (image header stamp -> keypoints received here), hands found.

Writes ``--out`` (default ``demo_out/``):

- ``depth_mode.gif`` / ``rgb_mode.gif``: frames at about real time with the predicted skeleton
  (red) and the ground truth (green); ``*_mode.png``: one such frame;
- ``rgb_belief_maps.png``: a strip of the RGB node's ``~/debug_image`` (belief maps blended into
  the hand box), plus ``rgb_belief_maps_joints.png``: every keypoint's belief map of one frame;
- ``summary.json``: per mode, rates (Hz), latency p50/p95 (ms, here and as the node reports it),
  dropped frames, hands found, mean/median error against the ground truth (3D mm where the model
  gives 3D, 2D px) and the files; ``logs/``: the processes' output.

Exit codes: 0 when keypoints arrived in every mode, 1 when a mode got none (or a process died),
2 for bad options or missing default weights (one line), 130 on Ctrl-C. Child processes are
always stopped (SIGINT, then SIGTERM, then SIGKILL), also on Ctrl-C, on errors, and if this
process is killed (they get SIGTERM from the kernel via ``PR_SET_PDEATHSIG`` on Linux). This
process then ends without deleting its own DDS participant: that can block
(:mod:`handpose_ros.shutdown`), and no peer is left to tell.

The ROS domain is random (1-100) unless ``ROS_DOMAIN_ID`` is
set, so two demos or test runs never hear each other.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from handpose_core import atomic
from handpose_ros.shutdown import exit_now, teardown

ROOT = Path(__file__).resolve().parents[1]
PROG = "demo"
KEYPOINTS_TOPIC = "/handpose/keypoints"
DEBUG_TOPIC = "/handpose/debug_image"
GT_TOPIC = "/camera/hand_gt"
MODES = {
    # mode -> (image topic, camera_info topic, node parameter file)
    "depth": ("/camera/depth/image_raw", "/camera/depth/camera_info", "config/depth_deep_prior.yaml"),
    "rgb": ("/camera/color/image_raw", "/camera/color/camera_info", "config/rgb_cpm.yaml"),
}
GT_COLOUR = (40, 220, 40)  # RGB
PRED_COLOUR = (255, 40, 40)
GIF_FPS = 10.0
RATE_WINDOW_S = 2.0
# A node that publishes /diagnostics for STALL_S seconds without receiving one image, while this
# process receives them, is restarted (at most NODE_RESTARTS times): see Consumer.input_stall.
STALL_S = 8.0
NODE_RESTARTS = 2

# Run by the child's Python before exec'ing the real command: ask the kernel to SIGTERM the child
# when this (parent) process dies, however it dies (PR_SET_PDEATHSIG = 1; survives execve), and
# give SIGINT its default: a demo started where SIGINT is ignored (a background job of a script)
# would pass SIG_IGN on, and Python then turns the SIGINT that Children.stop sends first into no
# KeyboardInterrupt (rclpy's own handler still shuts ROS down, mid-call).
_PDEATHSIG_EXEC = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


class DemoError(Exception):
    """Bad options or missing weights: one line, exit code 2."""


# ---------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------


class Children:
    """Starts child processes and guarantees they are stopped (context manager)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.history: list[dict] = []  # every child started: name, pid, exit code (for summary.json)

    def start(self, name: str, args: list[str], log: Path | None) -> subprocess.Popen:
        """``python -m <args>`` in the repository root; output to ``log`` (None: this terminal)."""
        cmd = [sys.executable, "-c", _PDEATHSIG_EXEC, sys.executable, *args]
        out = open(log, "w") if log is not None else None  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        proc._log_file = out  # type: ignore[attr-defined]
        self.procs.append((name, proc))
        self.history.append({"name": name, "pid": proc.pid, "proc": proc})
        return proc

    def report(self) -> list[dict]:
        return [{"name": h["name"], "pid": h["pid"], "returncode": h["proc"].poll()} for h in self.history]

    @staticmethod
    def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
        """SIGINT (a clean rclpy shutdown), then SIGTERM, then SIGKILL."""
        for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if proc.poll() is not None:
                break
            try:
                proc.send_signal(sig)
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        log = getattr(proc, "_log_file", None)
        if log is not None:
            log.close()

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            self.stop(proc)
        self.procs = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


# ---------------------------------------------------------------------------------------------
# Consumer
# ---------------------------------------------------------------------------------------------


def _stamp_key(stamp) -> tuple[int, int]:
    return int(stamp.sec), int(stamp.nanosec)


def _raw_stamp(data: bytes) -> tuple[int, int]:
    """Header stamp of a serialized message without deserializing it (CDR: 4-byte encapsulation,
    then std_msgs/Header's stamp.sec int32 and stamp.nanosec uint32)."""
    order = "<" if data[1] & 1 else ">"
    sec, nanosec = struct.unpack_from(order + "iI", data, 4)
    return sec, nanosec


@dataclass
class Sample:
    """A result kept for the pictures: the input image bytes, prediction and ground truth."""

    image_raw: bytes
    pred: dict | None  # pointcloud2_to_keypoints of the first hand, None = no hand
    gt: dict | None
    err_3d_mm: float
    err_2d_px: float


@dataclass
class ModeStats:
    """Everything measured in one mode's window."""

    inputs: int = 0
    outputs: int = 0
    hands_found: int = 0
    latencies_ms: list = field(default_factory=list)
    errors_3d_mm: list = field(default_factory=list)  # per frame: mean over joints
    errors_2d_px: list = field(default_factory=list)
    answered: set = field(default_factory=set)
    input_stamps: set = field(default_factory=set)
    samples: list = field(default_factory=list)
    diagnostics: dict = field(default_factory=dict)  # last /diagnostics values of the node


class Consumer:
    """Subscribes to the node's output, the truth, the input images and /diagnostics."""

    def __init__(self, context, sample_period_s: float = 1.0 / GIF_FPS, max_samples: int = 60) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import PointCloud2

        self.node = Node("handpose_demo_consumer", context=context, start_parameter_services=False)
        self._lock = threading.Lock()
        self._sample_period_s = sample_period_s
        self._max_samples = max_samples
        self.recording = False
        self.stats = ModeStats()
        self._images: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._truth: OrderedDict[tuple[int, int], dict] = OrderedDict()
        self._in_times: deque[float] = deque()
        self._out_times: deque[float] = deque()
        self._recent_latency: deque[float] = deque(maxlen=60)
        self._last_sample_stamp = -math.inf
        self.first_keypoints = threading.Event()
        self.first_truth = threading.Event()
        self._first_diag_time: float | None = None  # first /diagnostics of the current node
        self._last_image_time = -math.inf
        self.debug_images: list = []
        self._want_debug = 0
        self._image_sub = None
        self._debug_sub = None
        self._sensor_qos = QoSProfile(
            history=qos_profile_sensor_data.history,
            depth=qos_profile_sensor_data.depth,
            reliability=ReliabilityPolicy.BEST_EFFORT,
        )
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(PointCloud2, GT_TOPIC, self._on_truth, reliable)
        self.node.create_subscription(PointCloud2, KEYPOINTS_TOPIC, self._on_keypoints, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="demo-consumer", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down under us at exit
                if self._stop.is_set():
                    return
                raise

    def stop(self) -> None:
        """Stop receiving (the spinning thread ends; the node stays)."""
        self._stop.set()
        self._thread.join(timeout=5.0)

    def close(self) -> None:
        self.stop()
        self.executor.shutdown(timeout_sec=1.0)
        teardown(self.node.destroy_node)  # bounded: Fast DDS can block here (handpose_ros.shutdown)

    # -- mode switching (main thread) -------------------------------------------------------------
    def watch_images(self, topic: str) -> None:
        from sensor_msgs.msg import Image

        with self._lock:
            if self._image_sub is not None:
                self.node.destroy_subscription(self._image_sub)
            self._images.clear()
        self._image_sub = self.node.create_subscription(Image, topic, self._on_image, self._sensor_qos, raw=True)

    def start_window(self) -> None:
        with self._lock:
            self.stats = ModeStats(diagnostics=self.stats.diagnostics)
            self._in_times.clear()
            self._out_times.clear()
            self._recent_latency.clear()
            self._last_sample_stamp = -math.inf
            self.recording = True

    def stop_window(self) -> ModeStats:
        with self._lock:
            self.recording = False
            return self.stats

    def reset_for_mode(self) -> None:
        """Forget the previous node: before starting (or restarting) one."""
        self.first_keypoints.clear()
        with self._lock:
            self.stats = ModeStats()
            self._first_diag_time = None

    def silence(self, loaded_at: float | None, after_s: float) -> str | None:
        """Why the node looks mute, else None: it loaded its model at ``loaded_at`` (monotonic s,
        from its log; None: not yet), ``after_s`` seconds ago or more, and has published no
        /diagnostics since (an active node does every second), while this process receives the
        camera's images.

        Seen in a ``make demo`` run on a fresh clone (2026-12-06, LARGE_DATA): the depth node logged
        its model loaded and an image taken, then nothing of it reached this process; the demo
        waited out ``--startup-timeout`` (60 s) before it restarted the node.
        """
        now = time.monotonic()
        with self._lock:
            first, last_image = self._first_diag_time, self._last_image_time
        if loaded_at is None or first is not None or now - loaded_at < after_s or now - last_image > 1.0:
            return None
        return f"the node loaded its model {now - loaded_at:.0f} s ago but published no /diagnostics"

    def input_stall(self, after_s: float) -> str | None:
        """Why the node looks deaf, else None: it has published /diagnostics for ``after_s``
        seconds, all saying it received no frame, while this process receives the camera's images.

        Seen in about 1 node start in 8 with Fast DDS LARGE_DATA (the depth node and the RGB node
        alike): a node that joins the running camera discovers it but never gets its samples. A new
        node process does; waiting longer does not.
        """
        now = time.monotonic()
        with self._lock:
            first, diag, last_image = self._first_diag_time, self.stats.diagnostics, self._last_image_time
        if first is None or now - first < after_s or now - last_image > 1.0:
            return None
        if diag.get("received_frames") != "0":
            return None
        return f"the node received no image in {now - first:.0f} s of /diagnostics while this process did"

    def grab_debug_images(self, count: int, spacing_s: float, timeout_s: float) -> list:
        """Subscribe to the node's ~/debug_image (so it computes it) and keep ``count`` images."""
        from sensor_msgs.msg import Image

        self.debug_images, self._want_debug, self._debug_spacing = [], count, spacing_s
        self._last_debug = -math.inf
        self._debug_sub = self.node.create_subscription(Image, DEBUG_TOPIC, self._on_debug, 5)
        deadline = time.monotonic() + timeout_s
        while len(self.debug_images) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        self.node.destroy_subscription(self._debug_sub)
        self._debug_sub = None
        return list(self.debug_images)

    # -- callbacks (executor thread) --------------------------------------------------------------
    def _on_image(self, data: bytes) -> None:
        now = time.monotonic()
        key = _raw_stamp(data)
        with self._lock:
            self._last_image_time = now
            self._images[key] = data
            while len(self._images) > 60:
                self._images.popitem(last=False)
            if self.recording:
                self.stats.inputs += 1
                self.stats.input_stamps.add(key)
                self._in_times.append(now)

    def _on_truth(self, msg) -> None:
        from handpose_ros.conversions import pointcloud2_to_keypoints

        truth = pointcloud2_to_keypoints(msg)
        with self._lock:
            self._truth[_stamp_key(msg.header.stamp)] = truth
            while len(self._truth) > 300:
                self._truth.popitem(last=False)
        self.first_truth.set()

    def _on_keypoints(self, msg) -> None:
        from handpose_ros.conversions import pointcloud2_to_keypoints

        now = time.monotonic()
        latency_ms = (
            self.node.get_clock().now().nanoseconds - (msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
        ) / 1e6
        self.first_keypoints.set()
        key = _stamp_key(msg.header.stamp)
        kp = pointcloud2_to_keypoints(msg)
        pred = {k: v[0] for k, v in kp.items()} if msg.height > 0 else None
        with self._lock:
            if not self.recording:
                return
            s = self.stats
            s.outputs += 1
            s.answered.add(key)
            s.latencies_ms.append(latency_ms)
            self._recent_latency.append(latency_ms)
            self._out_times.append(now)
            truth = self._truth.get(key)
            gt = {k: v[0] for k, v in truth.items()} if truth is not None and truth["uv_px"].shape[0] else None
            e3, e2 = math.nan, math.nan
            if pred is not None:
                s.hands_found += 1
                if gt is not None and pred["uv_px"].shape == gt["uv_px"].shape:
                    e3 = _mean_distance(pred["xyz_m"], gt["xyz_m"]) * 1000.0
                    e2 = _mean_distance(pred["uv_px"], gt["uv_px"])
                    if math.isfinite(e3):
                        s.errors_3d_mm.append(e3)
                    if math.isfinite(e2):
                        s.errors_2d_px.append(e2)
            stamp_s = key[0] + key[1] * 1e-9
            image = self._images.get(key)
            if (
                image is not None
                and len(s.samples) < self._max_samples
                and stamp_s - self._last_sample_stamp >= self._sample_period_s * 0.95
            ):
                self._last_sample_stamp = stamp_s
                s.samples.append(Sample(image, pred, gt, e3, e2))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith("handpose"):
                values = {kv.key: kv.value for kv in status.values}
                with self._lock:
                    self.stats.diagnostics = values
                    if self._first_diag_time is None:
                        self._first_diag_time = time.monotonic()

    def _on_debug(self, msg) -> None:
        now = time.monotonic()
        if len(self.debug_images) >= self._want_debug or now - self._last_debug < self._debug_spacing:
            return
        from handpose_ros.conversions import image_to_numpy

        self._last_debug = now
        self.debug_images.append((_stamp_key(msg.header.stamp), image_to_numpy(msg)))

    def node_report(self) -> str:
        """What this process hears from the node, for error messages."""
        with self._lock:
            diag, images = dict(self.stats.diagnostics), len(self._images)
        seen = f"{images} recent input images seen here"
        if not diag:
            return f"no /diagnostics from the node either, {seen}"
        keys = ("input_hz", "output_hz", "published_frames", "bad_frames")
        return "node /diagnostics: " + ", ".join(f"{k} {diag.get(k)}" for k in keys) + f"; {seen}"

    # -- live figures (main thread) ---------------------------------------------------------------
    def live(self) -> dict[str, float]:
        now = time.monotonic()
        with self._lock:
            for times in (self._in_times, self._out_times):
                while times and times[0] < now - RATE_WINDOW_S:
                    times.popleft()
            lat = float(np.median(self._recent_latency)) if self._recent_latency else math.nan
            return {
                "in_hz": len(self._in_times) / RATE_WINDOW_S,
                "out_hz": len(self._out_times) / RATE_WINDOW_S,
                "latency_ms": lat,
                "found": self.stats.hands_found,
                "outputs": self.stats.outputs,
            }


def _mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Euclidean distance over the joints where both are finite; NaN when none is."""
    d = np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)
    d = d[np.isfinite(d)]
    return float(d.mean()) if d.size else math.nan


# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------


def _draw_skeleton(img: np.ndarray, uv: np.ndarray, colour, thickness: int, scale: float) -> None:
    import cv2

    from handpose_core.keypoints import HAND21

    pts = np.asarray(uv, np.float64) * scale
    ok = np.all(np.isfinite(pts), axis=1) & np.all(np.abs(pts) < 1e4, axis=1)
    ipts = np.nan_to_num(pts).round().astype(int)
    for a, b in HAND21.edges:
        if b < len(pts) and ok[a] and ok[b]:
            cv2.line(img, tuple(ipts[a]), tuple(ipts[b]), colour, thickness, cv2.LINE_AA)
    for j in np.nonzero(ok)[0]:
        cv2.circle(img, tuple(ipts[j]), thickness + 1, colour, -1, cv2.LINE_AA)


def _depth_to_rgb(depth_mm: np.ndarray, gt: dict | None) -> np.ndarray:
    """Grey depth, near = bright, in a 0.8 m window starting just in front of the hand."""
    valid = depth_mm > 0
    if gt is not None and np.isfinite(gt["xyz_m"][:, 2]).any():
        near = float(np.nanmin(gt["xyz_m"][:, 2])) * 1000.0 - 100.0
    else:
        near = float(depth_mm[valid].min()) if valid.any() else 0.0
    grey = np.clip(255.0 * (1.0 - (depth_mm.astype(np.float32) - near) / 800.0), 0, 255)
    grey = np.where(valid, grey, 0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def annotate(sample: Sample, mode: str, model_label: str, width: int = 480) -> np.ndarray:
    """One GIF frame: the input, ground truth (green, thin) and prediction (red), with a legend."""
    import cv2
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from handpose_ros.conversions import image_to_numpy

    image = image_to_numpy(deserialize_message(sample.image_raw, Image))
    base = _depth_to_rgb(image, sample.gt) if image.ndim == 2 else image
    scale = width / base.shape[1]
    canvas = cv2.resize(base, (width, round(base.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    canvas = np.ascontiguousarray(canvas)
    if sample.gt is not None:
        _draw_skeleton(canvas, sample.gt["uv_px"], GT_COLOUR, 1, scale)
    if sample.pred is not None:
        _draw_skeleton(canvas, sample.pred["uv_px"], PRED_COLOUR, 2, scale)
    bar = np.zeros((38, canvas.shape[1], 3), np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(bar, f"{mode} mode: {model_label}", (6, 14), font, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(bar, "green: ground truth", (6, 31), font, 0.42, GT_COLOUR, 1, cv2.LINE_AA)
    cv2.putText(bar, "red: predicted", (160, 31), font, 0.42, PRED_COLOUR, 1, cv2.LINE_AA)
    if sample.pred is None:
        err = "no hand found"
    else:
        parts = []
        if math.isfinite(sample.err_3d_mm):
            parts.append(f"{sample.err_3d_mm:.0f} mm")
        if math.isfinite(sample.err_2d_px):
            parts.append(f"{sample.err_2d_px:.0f} px")
        err = "error " + " / ".join(parts) if parts else ""
    cv2.putText(bar, err, (290, 31), font, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([bar, canvas], axis=0)


def write_gif(frames: list[np.ndarray], path: Path) -> None:
    """(H, W, 3) RGB frames as a looping GIF at GIF_FPS, atomically."""
    import imageio.v3 as iio

    atomic.atomic_write(
        path, lambda tmp: iio.imwrite(tmp, np.stack(frames), extension=".gif", duration=int(1000 / GIF_FPS), loop=0)
    )


def write_png(image: np.ndarray, path: Path) -> None:
    """An (H, W, 3) RGB image as PNG, atomically."""
    import cv2

    atomic.write_png(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def debug_strip(images: list, height: int = 240) -> np.ndarray:
    """The node's debug images side by side, each resized to ``height``."""
    import cv2

    tiles = []
    for _, img in images:
        w = round(img.shape[1] * height / img.shape[0])
        tiles.append(cv2.resize(img, (w, height), interpolation=cv2.INTER_AREA))
        tiles.append(np.full((height, 4, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=1)


def joint_belief_strip(checkpoint: str, image: np.ndarray, intrinsics) -> np.ndarray | None:
    """Every keypoint's belief map (and the background map) of one frame from the RGB estimator
    (run in this process), tiled 7 per row after the crop the network saw; None when the model
    finds no hand there."""
    import cv2

    from handpose_core.estimator import HandPoseEstimator

    est = HandPoseEstimator.from_checkpoint(checkpoint, device="cpu")
    try:
        poses = est.predict(image, intrinsics=intrinsics)
        if not poses or poses[0].extras.get("belief_maps") is None:
            return None
        maps = np.asarray(poses[0].extras["belief_maps"], np.float32)
        names = list(poses[0].joint_names) + ["background"]
        tile = 96
        tiles = []
        crop = poses[0].extras.get("crop")  # the network's input, (S, S, 3) uint8 RGB
        if crop is not None and np.asarray(crop).ndim == 3:
            crop = np.asarray(crop, np.uint8)
            tiles.append(np.ascontiguousarray(cv2.resize(crop, (tile, tile), interpolation=cv2.INTER_AREA)))
        for k, m in enumerate(maps):
            heat = cv2.applyColorMap(np.clip(m * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
            heat = cv2.cvtColor(cv2.resize(heat, (tile, tile), interpolation=cv2.INTER_CUBIC), cv2.COLOR_BGR2RGB)
            cv2.putText(
                heat,
                names[k][:12] if k < len(names) else str(k),
                (2, 10),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.3,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
            tiles.append(heat)
        while len(tiles) % 7:
            tiles.append(np.zeros((tile, tile, 3), np.uint8))
        rows = [np.concatenate(tiles[i : i + 7], axis=1) for i in range(0, len(tiles), 7)]
        return np.concatenate(rows, axis=0)
    finally:
        est.close()


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def _pct(values: list, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def _mean(values: list) -> float | None:
    return round(float(np.mean(values)), 2) if values else None


def _diag_float(diag: dict, key: str) -> float | None:
    try:
        value = float(diag[key])
    except (KeyError, ValueError):
        return None
    return round(value, 2) if math.isfinite(value) else None


def mode_summary(stats: ModeStats, window_s: float, model: str, startup_s: float) -> dict:
    diag = stats.diagnostics
    dropped = diag.get("dropped_frames")
    return {
        "model": model,
        "window_s": round(window_s, 2),
        "startup_s": round(startup_s, 2),
        "input_hz": round(stats.inputs / window_s, 2),
        "output_hz": round(stats.outputs / window_s, 2),
        "frames_in": stats.inputs,
        "keypoints_out": stats.outputs,
        "latency_ms": {
            "p50": _pct(stats.latencies_ms, 50),
            "p95": _pct(stats.latencies_ms, 95),
            "mean": _mean(stats.latencies_ms),
            "what": "image header stamp -> keypoints received by the demo's consumer",
        },
        "node_latency_ms": {
            "p50": _diag_float(diag, "latency_p50_ms"),
            "p95": _diag_float(diag, "latency_p95_ms"),
            "what": "the node's /diagnostics, last window: stamp -> publish",
        },
        "dropped_frames": int(dropped) if dropped is not None and dropped.isdigit() else None,
        "unanswered_frames": len(stats.input_stamps - stats.answered),
        "bad_frames": int(diag["bad_frames"]) if diag.get("bad_frames", "").isdigit() else None,
        "hands_found": stats.hands_found,
        "hands_found_ratio": round(stats.hands_found / stats.outputs, 3) if stats.outputs else None,
        "error": {
            "mean_3d_mm": _mean(stats.errors_3d_mm),
            "median_3d_mm": _pct(stats.errors_3d_mm, 50),
            "mean_2d_px": _mean(stats.errors_2d_px),
            "median_2d_px": _pct(stats.errors_2d_px, 50),
            "frames_3d": len(stats.errors_3d_mm),
            "frames_2d": len(stats.errors_2d_px),
            "what": "per frame: mean over the 21 joints of the distance to the ground truth; then over frames "
            "with a hand found (3D only where the model gives 3D)",
        },
    }


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.demo",
        description="Synthetic RGB-D camera -> handpose node (depth mode, then RGB mode) -> keypoints, measured "
        "against the ground truth. Writes GIFs, a belief-map strip and summary.json to --out.",
        epilog="Without trained default weights, pass --depth-model/--rgb-model PATH or --untrained.",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per mode (default 20)")
    parser.add_argument("--modes", nargs="+", choices=tuple(MODES), default=list(MODES), help="modes to run")
    parser.add_argument("--depth-model", default="default:depth", help="depth checkpoint (default default:depth)")
    parser.add_argument("--rgb-model", default="default:rgb", help="RGB checkpoint (default default:rgb)")
    parser.add_argument(
        "--untrained",
        action="store_true",
        help="use freshly made untrained checkpoints (pipeline check only: keypoints are meaningless)",
    )
    parser.add_argument("--device", default="auto", help="node device: auto, cpu, cuda, cuda:N (default auto)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz (default 30)")
    parser.add_argument(
        "--frames", type=int, default=150, help="synthetic frames rendered, looped forwards and backwards (default 150)"
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic hand seed (default 0)")
    parser.add_argument("--gif-frames", type=int, default=60, help="frames per GIF, about real time (default 60)")
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the camera's first frame and for each node's first keypoints",
    )
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar")
    return parser


def _check_model(option: str, value: str, mode: str) -> str:
    """Resolved checkpoint path; DemoError (one line) when it is missing, unreadable or of the
    wrong modality (checked here: the node would only log it and stay inactive)."""
    from handpose_core.checkpoint import load_checkpoint
    from handpose_core.errors import HandPoseError
    from handpose_core.estimator import resolve_checkpoint

    try:
        path = resolve_checkpoint(value)
    except HandPoseError as exc:
        raise DemoError(f"{exc}; or run with {option} PATH, or --untrained for a pipeline check") from None
    if not path.is_file():
        raise DemoError(f"{option} {value}: no such checkpoint file")
    try:
        modality = load_checkpoint(path)["meta"].get("modality")
    except HandPoseError as exc:
        raise DemoError(f"{option}: {exc}") from None
    if modality != mode:
        raise DemoError(f"{option} {value} is a {modality} model, the {mode} mode needs a {mode} model")
    return str(path)


def _check_device(device: str) -> None:
    from handpose_core.errors import HandPoseError
    from handpose_core.estimator import resolve_device

    try:
        resolve_device(device)
    except HandPoseError as exc:
        raise DemoError(f"--device: {exc}") from None


def _untrained(mode: str, out: Path) -> str:
    folder = out / "untrained"
    folder.mkdir(parents=True, exist_ok=True)
    if mode == "depth":
        from handpose_core.pipelines.depth import save_untrained

        return str(save_untrained(folder / "deep_prior_res_untrained.pt"))
    from handpose_core.pipelines.rgb import save_untrained

    return str(save_untrained(folder / "cpm_light_untrained.pt"))


def _ros_env() -> tuple[dict[str, str], int]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    # Fast DDS's default transports lose most best-effort 640x480 images (UDP fragments); its
    # LARGE_DATA mode (shared memory + TCP) carries them whole. Every process needs the same.
    env.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    # One torch thread: with the cores shared (camera, node, this process, other work), torch's
    # thread pool made inference ~10x slower here (depth 77 ms vs 6 ms a frame on 2 busy cores).
    env.setdefault("OMP_NUM_THREADS", "1")
    if env.get("ROS_DOMAIN_ID", "").strip():
        return env, int(env["ROS_DOMAIN_ID"])
    domain = random.SystemRandom().randint(1, 100)
    env["ROS_DOMAIN_ID"] = str(domain)
    return env, domain


class LogWatch:
    """When (time.monotonic()) a line containing ``text`` was first seen in the log file ``path``."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text
        self._seen_at: float | None = None

    def seen_at(self) -> float | None:
        if self._seen_at is None:
            try:
                found = self.text in self.path.read_text(errors="replace")
            except OSError:
                found = False
            if found:
                self._seen_at = time.monotonic()
        return self._seen_at


def _wait(
    event: threading.Event,
    timeout_s: float,
    procs: list[tuple[str, subprocess.Popen]],
    stalled: Callable[[], str | None] | None = None,
) -> str | None:
    """Wait for ``event``; None when set, else why not (timeout, a process that died, or what
    ``stalled`` says once it returns a reason)."""
    deadline = time.monotonic() + timeout_s
    while not event.wait(0.1):
        for name, proc in procs:
            if proc.poll() is not None:
                return f"{name} exited with code {proc.returncode}"
        if stalled is not None and (why := stalled()) is not None:
            return why
        if time.monotonic() > deadline:
            return f"nothing after {timeout_s:.0f} s"
    return None


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not args.seconds > 0 or not args.rate > 0 or args.frames < 1:
        raise DemoError("--seconds and --rate must be > 0 and --frames >= 1")
    models = {}
    for mode in args.modes:
        option, value = ("--depth-model", args.depth_model) if mode == "depth" else ("--rgb-model", args.rgb_model)
        models[mode] = _untrained(mode, out) if args.untrained else _check_model(option, value, mode)
    _check_device(args.device)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env, domain = _ros_env()
    os.environ["ROS_DOMAIN_ID"] = str(domain)  # before rclpy.init
    for name in ("FASTDDS_BUILTIN_TRANSPORTS", "OMP_NUM_THREADS"):
        os.environ[name] = env[name]
    print(f"{PROG}: ROS_DOMAIN_ID={domain}; writing {out}/", file=sys.stderr)

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
    summary: dict = {
        "ok": False,
        "domain_id": domain,
        "camera": {"rate_hz": args.rate, "frames": args.frames, "seed": args.seed, "hand": demo_hand(args.seed)},
        "modes": {},
    }
    consumer = None
    code = 0
    children = Children(env)
    try:
        with children:
            consumer = Consumer(context, max_samples=args.gif_frames)
            camera_args = ["-m", "handpose_ros.camera_source", "--rate", str(args.rate), "--frames", str(args.frames)]
            camera_args += ["--seed", str(args.seed)] + (["--no-progress"] if args.no_progress else [])
            camera = children.start("camera source", camera_args, log=None)  # its progress bar shows here
            why = _wait(consumer.first_truth, args.startup_timeout, [("camera source", camera)])
            if why is not None:
                print(f"{PROG}: error: no frame from the camera source ({why})", file=sys.stderr)
                return 1
            for mode in args.modes:
                result = run_mode(mode, models[mode], args, out, children, consumer)
                summary["modes"][mode] = result
                if result.get("failed"):
                    code = 1
            summary["ok"] = code == 0
    finally:
        summary["processes"] = children.report()
        atomic.write_json(out / "summary.json", summary)
        print(f"{PROG}: wrote {out / 'summary.json'}", file=sys.stderr)
        # This process's DDS participant is left to exit_now (__main__), not deleted: deleting it can
        # block (handpose_ros.shutdown), and no one is left to say goodbye to (the children are
        # stopped, the domain is the demo's own).
        if consumer is not None:
            consumer.stop()
    return code


def demo_hand(seed: int) -> str:
    """``left`` or ``right``: the hand of the camera source's trajectory for ``seed`` (its first key's)."""
    from handpose_core.data.synthetic import SyntheticHands

    return "left" if SyntheticHands(seed=seed).sample_params(0).is_left else "right"


def run_mode(
    mode: str, model: str, args: argparse.Namespace, out: Path, children: Children, consumer: Consumer
) -> dict:
    """Start the node for ``mode``, wait for its first keypoints, measure ``args.seconds``, draw.

    Returns the mode's summary; ``failed`` is set when the node gave no keypoints or died.
    """
    from tqdm import tqdm

    image_topic, info_topic, params = MODES[mode]
    log = out / "logs" / f"node_{mode}.log"
    consumer.watch_images(image_topic)
    print(f"{PROG}: {mode} mode: starting handpose node with {model}", file=sys.stderr)
    t_start = time.monotonic()
    node_args = ["-m", "handpose_ros.node", "--ros-args"]
    if (ROOT / params).is_file():
        node_args += ["--params-file", str(ROOT / params)]
    node_args += ["-p", f"model:={model}", "-p", f"device:={args.device}"]
    if mode == "depth":
        # tell the node the hand, as a user would: a depth network trained on right hands (the default
        # recipe's) mirrors a left one and cannot tell the hands apart well by itself (the packaged
        # weights saw both hands and ignore it). The RGB node keeps its file's handedness: auto.
        node_args += ["-p", f"handedness:={demo_hand(args.seed)}"]
    node_args += ["-r", f"image:={image_topic}", "-r", f"camera_info:={info_topic}"]
    attempts = 1 + NODE_RESTARTS
    for attempt in range(1, attempts + 1):
        consumer.reset_for_mode()
        node = children.start(f"{mode} node", node_args, log=log)
        loaded = LogWatch(log, "loaded ")
        why = _wait(
            consumer.first_keypoints,
            args.startup_timeout,
            [("handpose node", node)],
            stalled=lambda loaded=loaded: consumer.input_stall(STALL_S) or consumer.silence(loaded.seen_at(), STALL_S),
        )
        if why is None:
            break
        report = f"no keypoints from the node ({why}; {consumer.node_report()})"
        alive = node.poll() is None
        children.stop(node)
        if attempt < attempts and alive:
            # Alive but deaf or silent: DDS discovery that never completes (seen on a loaded
            # machine, and with LARGE_DATA after the previous node left). A fresh node discovers afresh.
            print(f"{PROG}: warning: {mode} mode: {report}; restarting the node", file=sys.stderr)
            log = out / "logs" / f"node_{mode}_retry{attempt}.log"
            continue
        print(f"{PROG}: error: {mode} mode: {report}; log {log}: {_tail(log)}", file=sys.stderr)
        return {"model": model, "failed": f"no keypoints ({why})", "node_log": str(log)}
    startup_s = time.monotonic() - t_start

    consumer.start_window()
    t0 = time.monotonic()
    bar_format = "{desc} {bar:20} {n:.0f}/{total:.0f} s{postfix}"
    with tqdm(
        total=round(args.seconds, 1),
        desc=f"{mode:5s}",
        disable=args.no_progress,
        file=sys.stderr,
        dynamic_ncols=True,
        bar_format=bar_format,
    ) as bar:
        while (elapsed := time.monotonic() - t0) < args.seconds and node.poll() is None:
            time.sleep(0.5)
            live = consumer.live()
            bar.n = min(round(elapsed, 1), bar.total)
            bar.set_postfix_str(
                f"in {live['in_hz']:4.1f} Hz | out {live['out_hz']:4.1f} Hz | latency "
                f"{live['latency_ms']:5.0f} ms | hands {live['found']}/{live['outputs']}"
            )
    window = time.monotonic() - t0
    stats = consumer.stop_window()

    result = mode_summary(stats, window, model, startup_s)
    result["node_log"] = str(log)
    if node.poll() is not None:
        print(f"{PROG}: error: {mode} node exited with {node.returncode}; log {log}: {_tail(log)}", file=sys.stderr)
        result["failed"] = f"node exited with {node.returncode}"
    elif mode == "rgb":
        result.update(_belief_strip(consumer, out))  # needs the node running
    children.stop(node)  # frees the CPU for drawing
    if not stats.outputs:
        result["failed"] = "no keypoints in the measured window"
    result.update(_pictures(mode, stats, model, out))
    _print_mode(mode, result)
    return result


def _belief_strip(consumer: Consumer, out: Path) -> dict:
    """A strip of the RGB node's ~/debug_image (subscribed only now: it costs the node time)."""
    debug = consumer.grab_debug_images(count=5, spacing_s=0.4, timeout_s=8.0)
    if not debug:
        return {}
    write_png(debug_strip(debug), out / "rgb_belief_maps.png")
    return {"belief_maps": "rgb_belief_maps.png"}


def _pictures(mode: str, stats: ModeStats, model: str, out: Path) -> dict:
    """GIF + PNG of the mode; for RGB also every keypoint's belief map. Returns the file names."""
    files: dict = {}
    label = Path(model).name
    frames = [annotate(s, mode, label) for s in stats.samples]
    if frames:
        write_gif(frames, out / f"{mode}_mode.gif")
        write_png(frames[len(frames) // 2], out / f"{mode}_mode.png")
        files["gif"], files["snapshot"] = f"{mode}_mode.gif", f"{mode}_mode.png"
    if mode == "rgb" and stats.samples:
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import Image

        from handpose_ros.conversions import image_to_numpy

        sample = next((s for s in stats.samples if s.pred is not None), stats.samples[len(stats.samples) // 2])
        image = image_to_numpy(deserialize_message(sample.image_raw, Image))
        strip = joint_belief_strip(model, image, None)
        if strip is not None:
            write_png(strip, out / "rgb_belief_maps_joints.png")
            files["belief_maps_joints"] = "rgb_belief_maps_joints.png"
    return files


def _print_mode(mode: str, r: dict) -> None:
    err = r["error"]
    parts = [
        f"{mode}: in {r['input_hz']:.1f} Hz, out {r['output_hz']:.1f} Hz",
        f"latency p50 {r['latency_ms']['p50']} ms p95 {r['latency_ms']['p95']} ms",
        f"dropped {r['dropped_frames']}",
        f"hands {r['hands_found']}/{r['keypoints_out']}",
    ]
    if err["mean_3d_mm"] is not None:
        parts.append(f"3D error {err['mean_3d_mm']:.1f} mm")
    if err["mean_2d_px"] is not None:
        parts.append(f"2D error {err['mean_2d_px']:.1f} px")
    print(f"{PROG}: " + ", ".join(parts), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        return run(args)
    except DemoError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; child processes stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    exit_now(main())  # without the interpreter's rclpy shutdown: see run()
