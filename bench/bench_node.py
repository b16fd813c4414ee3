"""End-to-end latency and rate of the ROS node: image header stamp -> keypoints at a subscriber.

The node runs as its own process (console entry point ``handpose_node``, or the same ``main`` via
``python -c`` where the package is not installed), on a private ROS_DOMAIN_ID. This process
publishes 640x480 frames of a moving synthetic hand (``SyntheticHands.trajectory``, as a camera
would see it) at a fixed rate, stamped with the time of publishing, and
subscribes to ``/handpose/keypoints`` and ``/diagnostics``. For depth (16UC1 + camera_info) and
RGB (rgb8) in turn it reports:

- latency stamp -> keypoints received here, p50/p95/mean/max ms (what a consumer sees: includes
  both DDS hops and the conversions), and the node's own stamp -> publish figures from /diagnostics;
- output rate, frames sent / answered, frames the node dropped (newest frame wins) and frames
  lost before reaching the node (sent - received by the node).

    python -m bench.bench_node --out bench/results/node.json [--seconds 10 --repeats 3 --rate 30 --device cpu]

Transport: between two processes Fast DDS's default transports lose most best-effort 600-900 KB
frames (UDP fragments; measured ~90 % at 30 Hz on the development machine), which would measure
DDS rather than the node. So the image stream is reliable by default here (publisher and the
node's ``image_reliability``); ``--image-reliability best_effort`` measures the node's default
QoS as is (also fine with ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`` set for both processes).

Models: ``default:depth`` / ``default:rgb`` when the packaged weights are installed, else small
untrained checkpoints from the pipelines' ``save_untrained`` (same architecture family, same
pre/post-processing cost; the RGB one finds no hand, so every frame runs the full scale search
and no tracking). The JSON says which was used.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import machine_info
from handpose_core.atomic import write_json
from handpose_ros.shutdown import shut_down

ROOT = Path(__file__).resolve().parents[1]


def _node_command() -> list[str]:
    script = Path(sys.executable).with_name("handpose_node")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from handpose_ros.node import main; sys.exit(main())"]


def _model_for(modality: str, folder: Path) -> tuple[str, str]:
    """(model parameter, description): packaged weights if installed, else an untrained checkpoint."""
    from handpose_core.errors import HandPoseError
    from handpose_core.estimator import resolve_checkpoint

    name = f"default:{modality}"
    try:
        resolve_checkpoint(name)
        return name, name
    except HandPoseError:
        pass
    if modality == "depth":
        from handpose_core.pipelines.depth import save_untrained
    else:
        from handpose_core.pipelines.rgb import save_untrained
    path = save_untrained(folder / f"{modality}.pt")
    return str(path), f"untrained {modality} checkpoint (save_untrained defaults)"


def _percentiles(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "mean_ms": float("nan"), "max_ms": float("nan")}
    a = np.asarray(values_ms)
    return {
        "p50_ms": float(np.median(a)),
        "p95_ms": float(np.percentile(a, 95)),
        "mean_ms": float(a.mean()),
        "max_ms": float(a.max()),
    }


def run_case(modality: str, model: str, args, frames) -> dict:
    """One node process, one stream; returns the figures for this modality."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from handpose_ros import conversions as conv

    domain = random.SystemRandom().randint(101, 200)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    command = _node_command() + [
        "--ros-args",
        "-p", f"model:={model}",
        "-p", f"device:={args.device}",
        "-p", f"precision:={args.precision}",
        "-p", f"threads:={args.threads}",
        "-p", f"backend:={args.backend}",
        "-p", "diagnostics_period:=1.0",
        "-p", "publish_markers:=true",
        "-p", f"image_reliability:={args.image_reliability}",
        # told, as a user would: the depth network learned right hands and a searched frame of an
        # untold hand would run twice
        "-p", f"handedness:={'left' if frames[0].is_left else 'right'}",
        "--log-level", "warn",
    ]  # fmt: skip
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    lock = threading.Lock()
    arrivals: list[tuple[float, float, int]] = []  # (receive time, stamp, height)
    diagnostics: list[dict[str, str]] = []
    node = None
    try:
        node = Node("bench_node_client", context=context)
        reliability = (
            ReliabilityPolicy.RELIABLE if args.image_reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
        )
        qos = QoSProfile(
            history=qos_profile_sensor_data.history,
            depth=qos_profile_sensor_data.depth,
            durability=qos_profile_sensor_data.durability,
            reliability=reliability,
        )
        image_pub = node.create_publisher(Image, "image", qos)
        info_pub = node.create_publisher(CameraInfo, "camera_info", qos)
        clock = node.get_clock()

        def on_keypoints(msg: PointCloud2) -> None:
            now = clock.now().nanoseconds * 1e-9
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            with lock:
                arrivals.append((now, stamp, msg.height))

        def on_diagnostics(msg: DiagnosticArray) -> None:
            for status in msg.status:
                if status.name.startswith("handpose"):
                    with lock:
                        diagnostics.append({kv.key: kv.value for kv in status.values})

        node.create_subscription(PointCloud2, "/handpose/keypoints", on_keypoints, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        stop = threading.Event()

        def spin() -> None:
            while not stop.is_set():
                executor.spin_once(timeout_sec=0.05)

        spinner = threading.Thread(target=spin, daemon=True)
        spinner.start()

        deadline = time.monotonic() + 90.0
        while image_pub.get_subscription_count() == 0 or node.count_publishers("/handpose/keypoints") == 0:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"node did not come up:\n{log.read().decode(errors='replace')}")
            time.sleep(0.05)

        encoding = "16UC1" if modality == "depth" else "rgb8"
        messages = [conv.numpy_to_image(f.depth_mm if modality == "depth" else f.rgb, encoding) for f in frames]
        intr = frames[0].intrinsics
        info = conv.intrinsics_to_camera_info(intr.as_tuple(), intr.width, intr.height)

        def stream(seconds: float) -> tuple[int, float]:
            period = 1.0 / args.rate
            start = time.monotonic()
            sent = 0
            while time.monotonic() - start < seconds:
                header_stamp = clock.now().to_msg()
                msg = messages[sent % len(messages)]
                msg.header.stamp = header_stamp
                msg.header.frame_id = "camera_optical_frame"
                info.header = msg.header
                info_pub.publish(info)
                image_pub.publish(msg)
                sent += 1
                time.sleep(max(0.0, start + sent * period - time.monotonic()))
            return sent, clock.now().nanoseconds * 1e-9

        stream(args.warmup)  # first inferences, allocator, DDS discovery of every endpoint
        time.sleep(1.5)  # idle for a full diagnostics period: its counters are then the baseline
        with lock:
            arrivals.clear()
            before = diagnostics[-1] if diagnostics else {}
            diagnostics.clear()
        t0 = clock.now().nanoseconds * 1e-9
        sent, t1 = stream(args.seconds)
        time.sleep(1.5)  # let the last answers and one more diagnostics message arrive
        with lock:
            answered = [a for a in arrivals if t0 <= a[1] <= t1]
            diags = list(diagnostics)
        stop.set()
        spinner.join(timeout=2.0)
        executor.shutdown()
    finally:
        shut_down(node, context)  # bounded: deleting the DDS participant can block (handpose_ros.shutdown)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()

    latencies = [(recv - stamp) * 1e3 for recv, stamp, _ in answered]
    after = diags[-1] if diags else {}

    def delta(key: str) -> int | None:
        if key not in after:
            return None
        return int(after[key]) - int(before.get(key, 0))

    def windows(key: str) -> float:
        """Median over the diagnostics windows of one of the node's figures (NaN: none reported)."""
        values = [float(d[key]) for d in diags if d.get(key, "nan") != "nan"]
        return float(np.median(values)) if values else float("nan")

    return {
        "model": model,
        "encoding": encoding,
        "image_size": [int(messages[0].width), int(messages[0].height)],
        "rate_hz": args.rate,
        "seconds": args.seconds,
        "frames_sent": sent,
        "frames_answered": len(answered),
        "hands_found": int(sum(1 for a in answered if a[2] > 0)),
        "output_hz": len(answered) / max(t1 - t0, 1e-9),
        "latency_stamp_to_subscriber": _percentiles(latencies),
        "latencies_ms": latencies,  # pooled over the repeats by combine_runs, then dropped
        # node's own view per 1 s diagnostics window, median over windows: stamp -> publish, and
        # receipt -> publish (its own work; the difference is the image's time in DDS)
        "node_latency_p50_ms": windows("latency_p50_ms"),
        "node_latency_p95_ms": windows("latency_p95_ms"),
        "node_processing_p50_ms": windows("processing_p50_ms"),
        "node_processing_p95_ms": windows("processing_p95_ms"),
        # the node's counters over the measured stream
        "node_received_frames": delta("received_frames"),
        "node_dropped_frames": delta("dropped_frames"),  # newest frame wins: overwritten unprocessed
        "node_bad_frames": delta("bad_frames"),
        "lost_before_node": None if delta("received_frames") is None else sent - delta("received_frames"),
    }


def _report(label: str, r: dict, rate: float) -> None:
    lat = r["latency_stamp_to_subscriber"]
    print(f"[bench_node] {label}: {r['output_hz']:.1f} Hz out of {rate:g}, latency p50 {lat['p50_ms']:.1f} ms "
          f"p95 {lat['p95_ms']:.1f} ms (node's own work p50 {r.get('node_processing_p50_ms', float('nan')):.1f} ms), "
          f"node dropped {r['node_dropped_frames']} of {r['node_received_frames']} "
          "received", flush=True)


def combine_runs(runs: list[dict]) -> dict:
    """Several runs of one case (each a fresh node process) -> pooled figures + each run's own.

    Why repeats: on a small shared machine one run's median can sit ~10 ms off the next one's
    (where the scheduler puts the DDS threads); the pooled figures over fresh processes say what a
    user should expect, and ``runs`` shows the spread.
    """
    counts = ("frames_sent", "frames_answered", "hands_found", "node_received_frames", "node_dropped_frames",
              "node_bad_frames", "lost_before_node")
    pooled = [v for r in runs for v in r["latencies_ms"]]
    out = {k: runs[0][k] for k in ("model", "encoding", "image_size", "rate_hz", "seconds")}
    out["repeats"] = len(runs)
    for key in counts:
        values = [r[key] for r in runs]
        out[key] = None if any(v is None for v in values) else int(sum(values))
    out["output_hz"] = float(np.mean([r["output_hz"] for r in runs]))
    out["latency_stamp_to_subscriber"] = _percentiles(pooled)
    for key in ("node_latency_p50_ms", "node_latency_p95_ms", "node_processing_p50_ms", "node_processing_p95_ms"):
        out[key] = float(np.median([r.get(key, float("nan")) for r in runs]))
    out["runs"] = [{k: v for k, v in r.items() if k != "latencies_ms"} for r in runs]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/node.json")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured stream length per modality")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured stream before it")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per modality, each with a fresh node process; figures are pooled")
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second published")
    parser.add_argument("--device", default="cpu", help="node device: auto, cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="node parameter threads (0 = torch default)")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime"),
                        help="node parameter backend")
    parser.add_argument(
        "--image-reliability",
        choices=("best_effort", "reliable"),
        default="reliable",
        help="QoS of the image stream (publisher and node parameter image_reliability); see the module doc",
    )
    parser.add_argument("--only", choices=("depth", "rgb"), help="run one modality")
    parser.add_argument("--transports", nargs="+", default=["default", "LARGE_DATA"],
                        help="FASTDDS_BUILTIN_TRANSPORTS values to measure, for both processes ('default': "
                             "unset, Fast DDS's UDP + shared memory; LARGE_DATA: what the README recommends)")
    parser.add_argument("--frames", type=int, default=90,
                        help="length of the synthetic trajectory, frames (looped forward and backward)")
    args = parser.parse_args(argv)

    from handpose_core.data.synthetic import SynthConfig, SyntheticHands

    # A camera's view of a moving hand (what the RGB path's tracking relies on), played forward then
    # backward so that looping it never jumps.
    forward = list(SyntheticHands(SynthConfig(), seed=0).trajectory(args.frames, fps=args.rate))
    frames = forward + forward[-2:0:-1]
    results: dict = {
        "machine": machine_info(),
        "config": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "rate_hz": args.rate,
            "device": args.device,
            "precision": args.precision,
            "node_threads": args.threads,
            "node_backend": args.backend,
            "image_qos": f"sensor-data profile (keep last 5) with {args.image_reliability} reliability",
            "keypoints_qos": "reliable, keep last 10",
            "rmw": os.environ.get("RMW_IMPLEMENTATION", "default (rmw_fastrtps_cpp)"),
            "fastdds_builtin_transports": args.transports,
            "latency": "header stamp (set at publish) -> keypoints callback in the publishing process",
            "frames": f"synthetic trajectory of {args.frames} frames (seed 0), looped forward and backward",
        },
    }
    inherited = os.environ.get("FASTDDS_BUILTIN_TRANSPORTS")
    with tempfile.TemporaryDirectory() as tmp:
        for modality in ("depth", "rgb"):
            if args.only and modality != args.only:
                continue
            model, description = _model_for(modality, Path(tmp))
            for transport in args.transports:
                # Fast DDS reads this when each participant is created: this process's context
                # (rclpy.init per run) and the node's process (inherits the environment)
                if transport == "default":
                    os.environ.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
                else:
                    os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = transport
                key = modality if transport == "default" else f"{modality}_{transport.lower()}"
                print(f"[bench_node] {key}: {description}, {args.rate:g} Hz for {args.seconds:g} s, "
                      f"transport {transport}", flush=True)
                runs = []
                for k in range(max(1, args.repeats)):
                    runs.append(run_case(modality, model, args, frames))
                    _report(f"{key} run {k + 1}/{max(1, args.repeats)}", runs[-1], args.rate)
                results[key] = combine_runs(runs)
                results[key].update(model=description, transport=transport)
                _report(f"{key} pooled", results[key], args.rate)
    if inherited is None:
        os.environ.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    else:
        os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = inherited
    write_json(args.out, results)
    print(f"[bench_node] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
