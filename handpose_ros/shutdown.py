"""How the package's ROS 2 programs (node, camera source, bag tool, benchmarks) end: a spin that a
shutdown interrupts (or a start) ends quietly (:func:`stopped_by_shutdown`), and the teardown is bounded
(:func:`teardown`, :func:`shut_down`).

Why the bound: Fast DDS's TCP transport, which ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`` turns on, now and
then blocks while it deletes a participant: ``rcl_node_fini`` of a process's last node ->
``delete_participant`` -> ``TCPChannelResourceBasic::disconnect`` waits on a mutex
(eProsima/Fast-DDS#2010, open). Seen here on about 1 in 15 Ctrl-C's of the demo's node, still
blocked when the demo sent SIGTERM 10 s later (native stacks from ``py-spy dump --native``).

The blocked call holds the GIL (rclpy's bindings keep it around ``rcl_node_fini``), so no Python
code runs until it returns: a thread joined with a timeout never wakes up (tried: the node still
hung until SIGTERM). The deadline is faulthandler's watchdog, a C thread that needs no GIL.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

TEARDOWN_S = 5.0  # a healthy teardown takes well under a second
_STDERR_FD = 2  # a descriptor, not sys.stderr: that may be a capture object without one (pytest)


def teardown(*steps: Callable[[], object], timeout_s: float = TEARDOWN_S) -> None:
    """Run the ROS 2 teardown ``steps`` (node destruction, ``try_shutdown``) in order, here.

    Should they still be running after ``timeout_s`` seconds, the process ends: faulthandler
    writes ``Timeout (0:00:05)!`` and every thread's Python stack (this function among them) to
    stderr and exits with code 1. Call it after the program's outputs are published and its
    files closed. A step's exception propagates as usual.
    """
    faulthandler.dump_traceback_later(timeout_s, exit=True, file=_STDERR_FD)
    try:
        for step in steps:
            step()
    finally:
        faulthandler.cancel_dump_traceback_later()


@contextlib.contextmanager
def stopped_by_shutdown(context: Any | None = None) -> Iterator[None]:
    """Ends a block that starts a node and spins it quietly where ROS 2 is being stopped.

    The ways out it takes as normal: Ctrl-C (``KeyboardInterrupt``), SIGTERM or ``rclpy.shutdown()``
    (``ExternalShutdownException``), and a ``RuntimeError`` (``RCLError`` is one) raised while
    ``context`` (None: rclpy's default) is no longer ok. That last one is rclpy's own signal handler
    shutting the context down under the executor: between its ``ok()`` check and its wait set ("the
    given context is not valid"), or while it takes a message (pybind11's "Unable to convert call
    argument '0' to Python object" from ``take_message``). It happens in a process that started with
    SIGINT ignored, as a program started in the background by a script does, where Python raises no
    ``KeyboardInterrupt``. Each was seen once in a full test run: the node exited 1 with that
    traceback after the test's Ctrl-C. Any other error, or one while the context is up, propagates.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException
    try:
        yield
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:  # RCLError included
        if rclpy.ok(context=context):
            raise


def shut_down(node: Any | None, context: Any | None = None) -> None:
    """A program's last ROS 2 step, under :func:`teardown`'s bound: destroy ``node`` (the context's
    last: this deletes the DDS participant) and shut ``context`` down (None: rclpy's default).

    ``node`` None: the node's constructor raised (Ctrl-C while the node loaded its model or rendered
    its frames) and the half-built node has no name left; the collector frees it, here, inside the
    bound, rather than at interpreter exit, outside it.
    """
    import rclpy

    teardown(node.destroy_node if node is not None else gc.collect, lambda: rclpy.try_shutdown(context=context))


def exit_now(code: int) -> NoReturn:
    """Flush stdout/stderr and end the process with ``code`` at once (``os._exit``), without the
    interpreter's finalization, which would shut rclpy down and delete DDS participants (see above)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
