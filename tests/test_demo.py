"""``python -m training.demo`` (``make demo``): a short smoke run with untrained checkpoints.

The demo starts the camera source and the node as child processes on the ROS_DOMAIN_ID the test
picks (random, set in the child's environment before anything calls rclpy.init).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ros_util import random_domain_id
from training import demo

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
MODE_KEYS = {
    "model",
    "input_hz",
    "output_hz",
    "frames_in",
    "keypoints_out",
    "latency_ms",
    "node_latency_ms",
    "dropped_frames",
    "unanswered_frames",
    "hands_found",
    "hands_found_ratio",
    "error",
    "gif",
    "snapshot",
}


def demo_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(random_domain_id())
    return env


def sigint_as_in_a_terminal() -> None:
    """preexec_fn: the default SIGINT action, as a program started from a shell prompt has. Where the
    test runner was started as a background job of a script (CI), SIGINT is ignored, the demo
    inherits that, and Ctrl-C (the SIGINT below) does nothing: the Ctrl-C test once timed out so."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def assert_gone(pid: int) -> None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    # a zombie that nobody reaped yet is gone too: check its state
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    assert state == "Z", f"child process {pid} still running (state {state})"


def test_demo_smoke_writes_summary_gifs_and_cleans_up(tmp_path):
    out = tmp_path / "demo_out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.demo",
            "--untrained",
            "--seconds",
            "2",
            "--frames",
            "10",
            "--rate",
            "15",
            "--gif-frames",
            "6",
            "--no-progress",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=300,  # ~25 s normally; room for the node restarts of a deaf node (Consumer.input_stall)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] is True
    assert set(summary["modes"]) == {"depth", "rgb"}
    for mode, result in summary["modes"].items():
        assert MODE_KEYS <= set(result), (mode, MODE_KEYS - set(result))
        assert result["keypoints_out"] > 0 and result["output_hz"] > 0 and result["input_hz"] > 0
        assert result["latency_ms"]["p50"] > 0 and result["latency_ms"]["p95"] >= result["latency_ms"]["p50"]
        assert {"mean_3d_mm", "mean_2d_px", "median_3d_mm", "median_2d_px"} <= set(result["error"])
        gif = out / result["gif"]
        assert gif.read_bytes()[:6] == b"GIF89a"
        assert (out / result["snapshot"]).is_file()
    depth = summary["modes"]["depth"]
    # the untrained DeepPrior still finds the nearest object and answers in 3D: errors are numbers
    assert depth["hands_found"] > 0 and depth["error"]["mean_3d_mm"] > 0 and depth["error"]["mean_2d_px"] > 0
    assert (out / "rgb_belief_maps.png").is_file()
    assert "in " in proc.stderr and "Hz" in proc.stderr  # the per-mode line
    names = [c["name"] for c in summary["processes"]]
    # camera, depth node, rgb node; plus a node restarted when it heard no images (Consumer.input_stall)
    assert names[0] == "camera source" and {"depth node", "rgb node"} == set(names[1:]), names
    assert len(names) <= 3 + 2 * demo.NODE_RESTARTS, names
    for child in summary["processes"]:
        assert child["returncode"] is not None
        assert_gone(child["pid"])


def test_ctrl_c_stops_every_child(tmp_path):
    out = tmp_path / "demo_out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "training.demo",
            "--untrained",
            "--modes",
            "depth",
            "--seconds",
            "60",
            "--frames",
            "5",
            "--no-progress",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=demo_env(),
        preexec_fn=sigint_as_in_a_terminal,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        for line in proc.stderr:  # wait until the node runs
            if "depth mode: starting" in line or time.monotonic() > deadline:
                break
        time.sleep(3.0)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest
    summary = json.loads((out / "summary.json").read_text())
    assert [c["name"] for c in summary["processes"]] == ["camera source", "depth node"]
    for child in summary["processes"]:
        assert_gone(child["pid"])


def test_missing_model_is_one_line_and_exit_code_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "training.demo", "--depth-model", str(tmp_path / "none.pt"), "--out", str(tmp_path)],
        cwd=ROOT,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--depth-model" in lines[0] and "none.pt" in lines[0]


def test_a_model_of_the_wrong_modality_is_refused_up_front(tmp_path):
    from handpose_core.pipelines import rgb

    ck = rgb.save_untrained(tmp_path / "rgb.pt")
    proc = subprocess.run(
        [sys.executable, "-m", "training.demo", "--modes", "depth", "--depth-model", str(ck), "--out", str(tmp_path)],
        cwd=ROOT,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "rgb model" in lines[0], proc.stderr


def test_a_deaf_node_is_detected_from_its_diagnostics_and_the_wait_returns_why():
    """The demo restarts a node whose /diagnostics say it received nothing while the demo's own
    subscriber gets the camera's images (Fast DDS LARGE_DATA, ~1 node start in 8); the wait ends early."""
    import threading

    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    from tests.ros_util import ros_context

    def diagnostics(received: int) -> DiagnosticArray:
        values = [KeyValue(key="received_frames", value=str(received)), KeyValue(key="input_hz", value="0.00")]
        return DiagnosticArray(status=[DiagnosticStatus(name="handpose: hand pose", values=values)])

    image = serialize_message(Image(height=1, width=1, encoding="mono8", step=1, data=b"\x00"))
    with ros_context() as context:
        consumer = demo.Consumer(context)
        try:
            assert consumer.input_stall(0.0) is None  # no diagnostics yet: still loading
            # mute: loaded, images flow here, but no /diagnostics
            assert consumer.silence(None, 0.0) is None  # still loading
            assert consumer.silence(time.monotonic(), 0.0) is None  # no image here either
            consumer._on_image(image)
            assert consumer.silence(time.monotonic(), 60.0) is None  # not for long enough
            why = consumer.silence(time.monotonic() - 9.0, 8.0)
            assert why is not None and "no /diagnostics" in why and "9 s" in why
            consumer._on_diagnostics(diagnostics(0))
            assert consumer.silence(time.monotonic() - 9.0, 8.0) is None  # it speaks
            consumer._on_image(image)
            assert consumer.input_stall(60.0) is None  # not for long enough
            why = consumer.input_stall(0.0)
            assert why is not None and "received no image" in why
            consumer._on_diagnostics(diagnostics(5))
            assert consumer.input_stall(0.0) is None  # it hears the camera: only slow
            consumer.reset_for_mode()
            consumer._on_diagnostics(diagnostics(0))
            consumer._last_image_time = time.monotonic() - 5.0
            assert consumer.input_stall(0.0) is None  # the camera is silent here too: not the node's fault

            never = threading.Event()
            t0 = time.monotonic()
            assert demo._wait(never, 30.0, [], stalled=lambda: "deaf") == "deaf"
            assert time.monotonic() - t0 < 5.0
            assert demo._wait(never, 0.2, [], stalled=lambda: None) == "nothing after 0 s"
        finally:
            consumer.close()


def test_log_watch_notes_when_the_line_first_appears(tmp_path):
    log = tmp_path / "node_depth.log"
    watch = demo.LogWatch(log, "loaded ")
    assert watch.seen_at() is None  # no log yet
    log.write_text("[INFO] [handpose]: loading model 'x.pt' on auto\n")
    assert watch.seen_at() is None
    before = time.monotonic()
    log.write_text(log.read_text() + "[INFO] [handpose]: loaded depth model 'x.pt' (...)\n")
    first = watch.seen_at()
    assert first is not None and first >= before
    time.sleep(0.01)
    assert watch.seen_at() == first  # the first sighting, not the latest
