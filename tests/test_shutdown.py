"""handpose_ros.shutdown: a ROS 2 teardown that blocks (Fast DDS's TCP transport) never keeps a program alive."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from handpose_ros.shutdown import stopped_by_shutdown, teardown

ROOT = Path(__file__).resolve().parents[1]


def run_script(body: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(body)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    return proc, time.monotonic() - t0


def test_teardown_runs_the_steps_in_order_here():
    calls = []
    teardown(lambda: calls.append("node"), lambda: calls.append("context"))
    assert calls == ["node", "context"]


def test_a_failing_step_raises_and_stops_the_rest():
    calls = []

    def fail():
        raise RuntimeError("context already shut down")

    with pytest.raises(RuntimeError, match="already shut down"):
        teardown(fail, lambda: calls.append("after"))
    assert calls == []


def test_a_teardown_that_returns_disarms_the_deadline():
    proc, _ = run_script(
        """
        import time
        from handpose_ros.shutdown import stopped_by_shutdown, teardown
        teardown(lambda: None, timeout_s=0.3)
        time.sleep(1.0)  # past the deadline: the process must not be ended
        print("done")
        """
    )
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    assert "Timeout" not in proc.stderr


def test_a_step_that_blocks_holding_the_gil_ends_the_process():
    # ctypes.PyDLL keeps the GIL during the call, as rclpy's rcl_node_fini binding does: no Python
    # thread could time this out. The deadline is 0.5 s; the call would last 30 s.
    proc, seconds = run_script(
        """
        import ctypes
        from handpose_ros.shutdown import stopped_by_shutdown, teardown
        print("outputs written", flush=True)
        teardown(lambda: ctypes.PyDLL(None).sleep(30), timeout_s=0.5)
        print("not reached")
        """
    )
    assert proc.returncode == 1, proc.stderr
    assert seconds < 20
    assert proc.stdout == "outputs written\n"
    assert proc.stderr.startswith("Timeout (0:00:00.500000)!"), proc.stderr
    assert "in teardown" in proc.stderr  # the stack names where it blocked


def test_exit_now_flushes_and_skips_the_interpreters_exit():
    proc, _ = run_script(
        """
        import atexit, sys
        from handpose_ros.shutdown import exit_now
        atexit.register(lambda: print("atexit ran"))
        sys.stdout.write("summary written")  # no newline: still in the buffer
        exit_now(130)
        """
    )
    assert proc.returncode == 130
    assert proc.stdout == "summary written"


def test_a_spin_stopped_by_shutdown_ends_quietly_and_other_errors_propagate():
    """rclpy's signal handler can shut the context down between the executor's ok() and its wait
    set: that RCLError is a normal way out once the context is down, and an error while it is up."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.impl.implementation_singleton import rclpy_implementation

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(rclpy_implementation.RCLError):
            with stopped_by_shutdown(context):
                raise rclpy_implementation.RCLError("failed to initialize wait set")
        for exc in (KeyboardInterrupt(), ExternalShutdownException()):
            with stopped_by_shutdown(context):
                raise exc
        with pytest.raises(ValueError):
            with stopped_by_shutdown(context):
                raise ValueError("a bug")
        with pytest.raises(RuntimeError):  # while the context is up, a RuntimeError is a bug too
            with stopped_by_shutdown(context):
                raise RuntimeError("Unable to convert call argument '0' to Python object")
    finally:
        context.try_shutdown()
    assert not context.ok()
    with stopped_by_shutdown(context):  # down now: the same error is a normal way out
        raise rclpy_implementation.RCLError("the given context is not valid")
    with stopped_by_shutdown(context):  # so is pybind11's when a take meets the shut-down context
        raise RuntimeError("Unable to convert call argument '0' to Python object")
    with pytest.raises(ValueError):
        with stopped_by_shutdown(context):
            raise ValueError("a bug")
