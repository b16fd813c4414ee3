"""The ``handpose`` lifecycle node: camera images in, hand keypoints out.

Interface (see DESIGN.md):

- subscribes ``image`` (16UC1 / mono16 / 32FC1 depth for depth models, rgb8 / bgr8 / rgba8 /
  bgra8 / mono8 for RGB models) and ``camera_info``, sensor-data QoS with the reliability taken
  from ``image_reliability``;
- publishes ``~/keypoints`` (PointCloud2, height = hands, width = joints, height 0 = no hand),
  ``~/markers`` (MarkerArray, when ``publish_markers``), ``~/wrist_pose`` (PoseStamped of the
  first hand's palm frame, when its 3D is known), ``~/debug_image`` (only computed while someone
  subscribes) and ``/diagnostics``. Every output carries the input image's header.

Lifecycle: publishers are made on configure; the model is loaded, the subscriptions made and the
inference worker started on activate; all of it is released on deactivate (the estimator is
closed, which empties the CUDA cache). With ``autostart`` (default) the node configures and
activates itself, so ``ros2 run handpose_ros handpose_node`` works without a lifecycle manager.
If activation fails (say a missing checkpoint) the node logs why and stays up, inactive; fix the
parameter and ``ros2 lifecycle set /handpose activate``.

Threads: the subscription callbacks only convert the message and keep the newest frame (a frame
overwritten before inference ran counts as dropped); one worker thread runs the estimator and
publishes, so a slow model never builds a queue. Bad input is reported by one warning per kind of
problem every 5 s, and the frame is skipped.

Parameters ``model``, ``device``, ``precision`` and ``image_reliability`` take effect at the next
activation; ``publish_markers``, ``min_confidence`` and ``handedness`` at once. ``min_confidence`` hides joints
below it from ``~/markers`` and ``~/wrist_pose``; ``~/keypoints`` always carries every joint with
its confidence. ``joint_names`` is read-only: it reports the loaded model's joints.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterValueException
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from handpose_core.errors import HandPoseError
from handpose_core.geometry import palm_pose
from handpose_core.keypoints import layout_for
from handpose_core.pipelines.hands import HANDEDNESS
from handpose_ros import conversions as conv
from handpose_ros.diagnostics import KindThrottle, PipelineStats, pipeline_status
from handpose_ros.shutdown import shut_down, stopped_by_shutdown

NODE_NAME = "handpose"
BAD_INPUT_LOG_PERIOD_S = 5.0
# Active this long with publishers on the image topic and not one image received: say so (log once,
# and WARN in /diagnostics until an image arrives).
NO_IMAGE_WARN_S = 10.0
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_ENUMS = {
    "precision": ("fp32", "fp16", "bf16"),
    "image_reliability": ("best_effort", "reliable"),
    "backend": ("auto", "torch", "onnxruntime"),
    "handedness": HANDEDNESS,
}
MODALITY_ENCODINGS = {"depth": conv.DEPTH_ENCODINGS, "rgb": conv.COLOR_ENCODINGS}

# name -> (typed default, description)
PARAMETERS: dict[str, tuple[object, str]] = {
    "model": ("default:depth", "checkpoint path, or default:depth / default:rgb (packaged weights)"),
    "device": ("auto", "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"),
    "precision": ("fp32", "fp32, fp16 or bf16 (half precisions on CUDA only)"),
    "image_reliability": ("best_effort", "QoS reliability of the image/camera_info subscriptions"),
    "backend": ("auto", "auto (onnxruntime on a CPU where installed, else torch), torch or onnxruntime"),
    "threads": (0, "CPU threads for inference (0 = one per core; torch's setting is process-wide)"),
    "tracking": (True, "follow the hand from frame to frame (the hand search runs only when the track is "
                       "lost, and for depth once a second); false: every frame on its own"),
    "handedness": ("auto", "which hand is in view: right, left or auto. Used by networks trained on right "
                           "hands (the training recipes' default), which see a left hand mirrored; auto tries "
                           "both over a track's first frames and is less accurate than telling it"),
    "autostart": (True, "configure and activate on start-up, without a lifecycle manager"),
    "publish_markers": (True, "publish the RViz skeleton on ~/markers"),
    "min_confidence": (0.0, "joints below this confidence are left out of ~/markers and ~/wrist_pose"),
    "diagnostics_period": (1.0, "seconds between /diagnostics messages"),
}
RESTART_PARAMETERS = ("model", "device", "precision", "image_reliability", "backend", "threads", "tracking")


def validate_parameter(name: str, value) -> str | None:
    """Reason why ``value`` is not acceptable for parameter ``name``, or None when it is."""
    if name == "model" and not str(value).strip():
        return "model must be a checkpoint path or default:depth / default:rgb"
    if name == "device" and not _DEVICE_RE.match(str(value)):
        return f"device {value!r} is not one of auto, cpu, cuda, cuda:N"
    if name in _ENUMS and value not in _ENUMS[name]:
        return f"{name} {value!r} is not one of {', '.join(_ENUMS[name])}"
    if name == "min_confidence" and not 0.0 <= float(value) <= 1.0:
        return f"min_confidence {value} is outside [0, 1]"
    if name == "threads" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return f"threads {value!r} must be an integer >= 0 (0 = one per core)"
    if name == "diagnostics_period" and not float(value) > 0.0:
        return f"diagnostics_period {value} must be > 0 s"
    return None


@dataclass
class _Frame:
    """One converted input frame waiting for the worker."""

    header: Header
    image: np.ndarray
    intrinsics: tuple[float, float, float, float] | None
    received_s: float  # time.monotonic() when the image callback started (for processing latency)


def _logged(transition):
    """rclpy turns an exception in a transition callback into ERROR without a word: log it first."""

    @functools.wraps(transition)
    def wrapper(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return transition(self, state)
        except Exception:
            if self.context.ok():  # else Ctrl-C shut ROS down under it (e.g. while the model loaded): no news
                self.get_logger().error(f"{transition.__name__} failed:\n{traceback.format_exc()}")
            return TransitionCallbackReturn.ERROR

    return wrapper


def _stamp_seconds(header: Header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


class HandPoseNode(LifecycleNode):
    """Lifecycle node ``handpose``; ``kwargs`` go to :class:`rclpy.lifecycle.LifecycleNode`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._estimator = None
        self._layout = None
        # not _publishers/_subscriptions: rclpy.node.Node uses those names
        self._outputs: dict[str, object] = {}
        self._inputs: list = []
        self._diag_timer = None
        self._worker: threading.Thread | None = None
        self._cond = threading.Condition()  # guards _pending, _stop, _intrinsics
        self._pending: _Frame | None = None
        self._stop = False
        self._intrinsics: tuple[float, float, float, float] | None = None
        self._intrinsics_problem = "no camera_info received yet"
        self._stats = PipelineStats()
        self._hand_taken: str | None = None
        self._throttle = KindThrottle(BAD_INPUT_LOG_PERIOD_S)
        self._active_since = time.monotonic()
        self._no_image_logged = False
        self._setting_joint_names = False

        self.add_on_set_parameters_callback(self._on_set_parameters)
        try:
            self._declare_parameters()
        except Exception:
            # an invalid override: free the node's handles (its rosout registration included)
            self.destroy_node()
            raise

        if self.get_parameter("autostart").value:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    # --- parameters ----------------------------------------------------------------------------

    def _declare_parameters(self) -> None:
        """Declare every parameter; overrides are checked by :meth:`_on_set_parameters`."""
        for name, (default, description) in PARAMETERS.items():
            descriptor = ParameterDescriptor(description=description)
            if name == "min_confidence":
                descriptor.floating_point_range = [FloatingPointRange(from_value=0.0, to_value=1.0)]
            self.declare_parameter(name, default, descriptor)
        # Read-only for users (rejected in _on_set_parameters); rclpy cannot update a parameter
        # declared read_only, and this one changes with every model the node loads.
        self.declare_parameter(
            "joint_names",
            Parameter.Type.STRING_ARRAY,
            ParameterDescriptor(description="joint names of the loaded model (read-only)"),
        )

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            if param.name == "joint_names":
                if self._setting_joint_names or param.type_ == Parameter.Type.NOT_SET:
                    continue
                return SetParametersResult(
                    successful=False, reason="joint_names is read-only: it comes from the loaded model"
                )
            reason = validate_parameter(param.name, param.value)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        active = self._estimator is not None
        for param in params:
            if active and param.name in RESTART_PARAMETERS:
                self.get_logger().info(f"{param.name} takes effect at the next activation")
        return SetParametersResult(successful=True)

    def _param(self, name: str):
        return self.get_parameter(name).value

    # --- lifecycle -----------------------------------------------------------------------------

    @_logged
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Create the output publishers (keypoints, markers, wrist_pose, debug_image, /diagnostics); no model yet."""
        self._outputs = {
            "keypoints": self.create_lifecycle_publisher(PointCloud2, "~/keypoints", 10),
            "markers": self.create_lifecycle_publisher(MarkerArray, "~/markers", 10),
            "wrist_pose": self.create_lifecycle_publisher(PoseStamped, "~/wrist_pose", 10),
            "debug_image": self.create_lifecycle_publisher(Image, "~/debug_image", 1),
            "diagnostics": self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10),
        }
        return super().on_configure(state)

    @_logged
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model, start the inference worker, subscribe to image and camera_info, start diagnostics."""
        if not self._load_model():
            return TransitionCallbackReturn.FAILURE
        result = super().on_activate(state)  # enables the lifecycle publishers
        if result != TransitionCallbackReturn.SUCCESS:
            self._release_model()
            return result
        self._stats = PipelineStats()
        self._hand_taken = None
        self._active_since, self._no_image_logged = time.monotonic(), False
        with self._cond:
            self._stop, self._pending = False, None
        self._worker = threading.Thread(target=self._worker_loop, name="handpose-inference", daemon=True)
        self._worker.start()
        reliability = (
            ReliabilityPolicy.RELIABLE
            if self._param("image_reliability") == "reliable"
            else ReliabilityPolicy.BEST_EFFORT
        )
        qos = QoSProfile(
            history=qos_profile_sensor_data.history,
            depth=qos_profile_sensor_data.depth,
            durability=qos_profile_sensor_data.durability,
            reliability=reliability,
        )
        self._inputs = [
            self.create_subscription(Image, "image", self._on_image, qos),
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos),
        ]
        self._diag_timer = self.create_timer(float(self._param("diagnostics_period")), self._publish_diagnostics)
        return TransitionCallbackReturn.SUCCESS

    @_logged
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe, stop the worker and diagnostics timer, free the model; publishers are disabled, kept."""
        self._stop_pipeline()
        return super().on_deactivate(state)

    @_logged
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy the output publishers (back to unconfigured)."""
        self._destroy_publishers()
        return super().on_cleanup(state)

    @_logged
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the pipeline (subscriptions, worker, model) and destroy the publishers."""
        self._stop_pipeline()
        self._destroy_publishers()
        return super().on_shutdown(state)

    @_logged
    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the pipeline and destroy the publishers, then go back to unconfigured to allow a retry."""
        self._stop_pipeline()
        self._destroy_publishers()
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured, ready to try again

    def destroy_node(self) -> None:
        """Also free the lifecycle state machine.

        rclpy's LifecycleNode.destroy_node leaves the state machine, which holds the rcl node, to
        the garbage collector; finalized late, it unregisters the /rosout publisher of whichever
        node has the same name by then, and that node's log lines vanish from /rosout.
        """
        super().destroy_node()
        self._state_machine.destroy_when_not_in_use()

    def release(self) -> None:
        """Stop the worker and free the model (used on exit, whatever the lifecycle state)."""
        self._stop_pipeline()

    def _load_model(self) -> bool:
        from handpose_core.estimator import HandPoseEstimator  # torch import on first activation only

        model, device, precision = self._param("model"), self._param("device"), self._param("precision")
        self.get_logger().info(f"loading model {model!r} on {device}")
        try:
            estimator = HandPoseEstimator.from_checkpoint(model, device=device, precision=precision,
                                                          threads=self._param("threads"),
                                                          backend=self._param("backend"),
                                                          tracking=self._param("tracking"))
        except HandPoseError as exc:
            self.get_logger().error(
                f"cannot load model {model!r}: {exc}. The node stays up, inactive: set a valid `model` "
                "and activate it again (ros2 lifecycle set <node> activate)"
            )
            return False
        self._estimator = estimator
        self._layout = layout_for(estimator.joint_names)
        self._setting_joint_names = True
        try:
            self.set_parameters([Parameter("joint_names", Parameter.Type.STRING_ARRAY, list(estimator.joint_names))])
        finally:
            self._setting_joint_names = False
        self.get_logger().info(
            f"loaded {estimator.modality} model {model!r} ({estimator.model_name}, "
            f"{len(estimator.joint_names)} joints, {precision}, {estimator.backend}) on {self._device_text(device)}"
        )
        return True

    def _device_text(self, requested: str) -> str:
        dev = self._estimator.device
        name = str(dev)
        if dev.type == "cuda":
            import torch

            name += f" ({torch.cuda.get_device_name(dev)})"
        if requested == "auto":
            how = "auto picked CUDA" if dev.type == "cuda" else "auto fell back to CPU: CUDA is not available"
            return f"{name} [{how}]"
        return name

    def _release_model(self) -> None:
        if self._estimator is not None:
            self._estimator.close()
        self._estimator = None

    def _stop_pipeline(self) -> None:
        for sub in self._inputs:
            self.destroy_subscription(sub)
        self._inputs = []
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        with self._cond:
            self._stop, self._pending = True, None
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None
        self._release_model()

    def _destroy_publishers(self) -> None:
        for pub in self._outputs.values():
            self.destroy_lifecycle_publisher(pub)
        self._outputs = {}

    # --- input callbacks (executor thread: convert and hand over, nothing slow) ----------------

    def _bad_input(self, problem: str) -> None:
        self._stats.bad()
        suppressed = self._throttle.admit(problem)
        if suppressed is not None:
            more = f" ({suppressed} more like this in the last {BAD_INPUT_LOG_PERIOD_S:.0f} s)" if suppressed else ""
            self.get_logger().warning(f"skipping input frame: {problem}{more}")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            intrinsics, problem = conv.camera_info_to_intrinsics(msg), None
        except conv.ConversionError as exc:
            intrinsics, problem = None, str(exc)
        with self._cond:
            self._intrinsics = intrinsics
            self._intrinsics_problem = problem or ""

    def _on_image(self, msg: Image) -> None:
        received_s = time.monotonic()
        self._stats.input()
        estimator = self._estimator
        if estimator is None:
            return
        expected = MODALITY_ENCODINGS[estimator.modality]
        if msg.encoding in conv.ENCODINGS and msg.encoding not in expected:
            self._bad_input(
                f"image encoding {msg.encoding} does not suit the {estimator.modality} model "
                f"(expects {', '.join(sorted(expected))})"
            )
            return
        try:
            image = conv.image_to_numpy(msg)
        except conv.ConversionError as exc:
            self._bad_input(str(exc))
            return
        problem = conv.depth_problem(image) if estimator.modality == "depth" else None
        if problem is not None:
            self._bad_input(problem)
            return
        with self._cond:
            intrinsics, problem = self._intrinsics, self._intrinsics_problem
        if intrinsics is None and estimator.modality == "depth":
            self._bad_input(f"{problem} on {self._camera_info_topic()}; the depth model needs intrinsics")
            return
        with self._cond:
            if self._pending is not None:
                self._stats.dropped()
            self._pending = _Frame(msg.header, image, intrinsics, received_s)
            self._cond.notify()

    def _camera_info_topic(self) -> str:
        return self.resolve_topic_name("camera_info")

    # --- inference worker ----------------------------------------------------------------------

    def _worker_loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                frame, self._pending = self._pending, None
            try:
                self._process(frame)
            except Exception as exc:  # keep serving: one broken frame must not kill the worker
                if not self.context.ok():
                    return  # shutting down (Ctrl-C): the publishers are gone, not a frame problem
                self._bad_input(f"inference failed: {type(exc).__name__}: {exc}")

    def _process(self, frame: _Frame) -> None:
        estimator = self._estimator
        if estimator is None:
            return
        hand = self._param("handedness")
        if estimator.handedness != hand:  # here, in the one thread that runs the estimator
            estimator.handedness = hand
        try:
            poses = estimator.predict(frame.image, intrinsics=frame.intrinsics)
        except HandPoseError as exc:
            self._bad_input(str(exc))
            return
        if poses:  # for /diagnostics: which hand a right-hand network took (None: one that saw both)
            self._hand_taken = poses[0].extras.get("handedness")
        pubs = self._outputs
        pubs["keypoints"].publish(conv.keypoints_to_pointcloud2(poses, frame.header))
        stamp = _stamp_seconds(frame.header)
        latency = self.get_clock().now().nanoseconds * 1e-9 - stamp if stamp > 0 else None
        self._stats.output(latency, time.monotonic() - frame.received_s)

        min_conf = float(self._param("min_confidence"))
        if poses:
            pose = self._wrist_pose(poses[0], frame.header, min_conf)
            if pose is not None:
                pubs["wrist_pose"].publish(pose)
        if self._param("publish_markers"):
            pubs["markers"].publish(conv.keypoints_to_markers(poses, frame.header, self._layout, min_conf))
        if pubs["debug_image"].get_subscription_count() > 0:
            picture = estimator.debug_image(frame.image, poses)
            pubs["debug_image"].publish(conv.numpy_to_image(picture, "rgb8", frame.header))

    def _wrist_pose(self, pose, header: Header, min_conf: float) -> PoseStamped | None:
        palm = self._layout.palm
        if not palm or any(float(pose.confidence[j]) < min_conf for j in palm):
            return None
        result = palm_pose(pose.xyz_m, self._layout)
        return None if result is None else conv.pose_to_pose_stamped(result[0], result[1], header)

    # --- diagnostics ---------------------------------------------------------------------------

    def _no_image_problem(self, received_total: int) -> str | None:
        """Why no image arrives although the image topic has publishers; None when not so.

        Two causes are common: a QoS mismatch (a reliable subscription and a best-effort camera;
        rclpy also logs "incompatible QoS"), and Fast DDS delivering nothing to a subscriber that
        joined a running LARGE_DATA publisher (seen on the development machine; a node restart
        cures it).
        """
        waited = time.monotonic() - self._active_since
        if received_total or waited < NO_IMAGE_WARN_S or not self._inputs:
            return None
        topic = self._inputs[0].topic_name
        publishers = self.count_publishers(topic)
        if not publishers:
            return None
        problem = (
            f"{publishers} publisher(s) on {topic} but no image received in {waited:.0f} s: check that "
            f"their QoS suits image_reliability {self._param('image_reliability')}; with "
            "FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA a restart of this node usually helps"
        )
        if not self._no_image_logged:
            self._no_image_logged = True
            self.get_logger().warning(problem)
        return problem

    def _publish_diagnostics(self) -> None:
        estimator = self._estimator
        if estimator is None or "diagnostics" not in self._outputs:
            return
        snap = self._stats.snapshot()
        problem = self._no_image_problem(snap.inputs_total)
        status = pipeline_status(
            snap,
            problem=problem,
            name=f"{self.get_name()}: hand pose",
            hardware_id=str(estimator.device),
            info={
                "device": str(estimator.device),
                "backend": estimator.backend,
                "model": str(self._param("model")),
                "modality": estimator.modality,
                "joints": str(len(estimator.joint_names)),
                # the network's hands; the hand it is told; the hand the last found pose was taken as
                "hands": estimator.hands,
                "handedness": str(self._param("handedness")),
                "hand_taken": self._hand_taken or "-",
            },
        )
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._outputs["diagnostics"].publish(msg)


def main(args: list[str] | None = None) -> int:
    """Console entry point ``handpose_node``: ``handpose_node --ros-args -p model:=... -r image:=...``."""
    rclpy.init(args=args)
    node = None
    try:
        # Ctrl-C / SIGTERM / rclpy.shutdown(): the normal way out, also while the node starts
        # (autostart loads the model)
        with stopped_by_shutdown():
            try:
                node = HandPoseNode()
            except InvalidParameterValueException as exc:
                print(f"[handpose] invalid parameter: {exc}", file=sys.stderr)
                return 2
            if not rclpy.ok():
                return 0  # rclpy's signal handler shut ROS down while the node started
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            try:
                executor.spin()
            finally:
                node.release()
                executor.remove_node(node)
        return 0
    finally:
        shut_down(node)  # bounded: deleting the DDS participant can block (handpose_ros.shutdown)


if __name__ == "__main__":
    sys.exit(main())
