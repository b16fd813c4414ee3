"""Book-keeping for the node's ``/diagnostics`` and its throttled bad-input log lines.

Both classes are thread-safe: the node's subscription callbacks, its inference worker and its
diagnostics timer touch them from different threads.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

# Latencies kept per reporting window; at camera rates a window holds far fewer.
_MAX_LATENCIES = 4096


@dataclass(frozen=True)
class StatsSnapshot:
    """One reporting window. Rates in Hz, latencies in ms (NaN when no output), totals since start."""

    window_s: float
    input_hz: float
    output_hz: float
    latency_p50_ms: float
    latency_p95_ms: float
    processing_p50_ms: float
    processing_p95_ms: float
    inputs_in_window: int
    outputs_in_window: int
    bad_in_window: int
    inputs_total: int
    dropped_total: int
    bad_total: int
    outputs_total: int


class PipelineStats:
    """Counts input frames, outputs (with their latencies), drops and bad frames.

    Two latencies per output: header stamp -> publish (what a consumer sees of this hop, the
    camera's transport included) and receipt -> publish (the node's own work: conversion, queue,
    inference, message packing). Their difference is the time the frame spent in DDS (and in the
    camera driver after stamping), so a slow figure says which side to look at.
    Rates are over the window since the previous :meth:`snapshot` (the diagnostics period).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._inputs = self._outputs = self._bad = 0
        self._latencies_s: deque[float] = deque(maxlen=_MAX_LATENCIES)
        self._processing_s: deque[float] = deque(maxlen=_MAX_LATENCIES)
        self.inputs_total = self.dropped_total = self.bad_total = self.outputs_total = 0

    def input(self) -> None:
        with self._lock:
            self._inputs += 1
            self.inputs_total += 1

    def dropped(self) -> None:
        with self._lock:
            self.dropped_total += 1

    def bad(self) -> None:
        with self._lock:
            self._bad += 1
            self.bad_total += 1

    def output(self, latency_s: float | None, processing_s: float | None = None) -> None:
        """One published result: stamp -> publish ``latency_s`` (None when the input had no stamp)
        and receipt -> publish ``processing_s`` (None: not measured)."""
        with self._lock:
            self._outputs += 1
            self.outputs_total += 1
            for value, store in ((latency_s, self._latencies_s), (processing_s, self._processing_s)):
                if value is not None and math.isfinite(value):
                    store.append(value)

    def snapshot(self) -> StatsSnapshot:
        """Figures for the window since the last call, then start a new window."""
        with self._lock:
            now = self._clock()
            window = max(now - self._window_start, 1e-9)
            p50, p95 = _percentiles_ms(self._latencies_s)
            proc50, proc95 = _percentiles_ms(self._processing_s)
            snap = StatsSnapshot(
                window_s=window,
                input_hz=self._inputs / window,
                output_hz=self._outputs / window,
                latency_p50_ms=p50,
                latency_p95_ms=p95,
                processing_p50_ms=proc50,
                processing_p95_ms=proc95,
                inputs_in_window=self._inputs,
                outputs_in_window=self._outputs,
                bad_in_window=self._bad,
                inputs_total=self.inputs_total,
                dropped_total=self.dropped_total,
                bad_total=self.bad_total,
                outputs_total=self.outputs_total,
            )
            self._window_start = now
            self._inputs = self._outputs = self._bad = 0
            self._latencies_s.clear()
            self._processing_s.clear()
            return snap


def _percentiles_ms(seconds: deque[float]) -> tuple[float, float]:
    """(p50, p95) in ms of latencies in seconds; NaN for none."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return tuple(float(v) for v in np.percentile(ms, [50, 95])) if ms.size else (math.nan, math.nan)


def problem_kind(message: str) -> str:
    """Throttle key of a problem message: the text with its numbers blanked out.

    "data is 10 bytes, shorter than step*height = 1280" and the same with other sizes are one
    kind; different encodings or different checks stay different kinds.
    """
    return re.sub(r"\d+(\.\d+)?", "#", message)


class KindThrottle:
    """Lets one log line per problem kind through every ``period_s`` seconds; counts the rest."""

    def __init__(self, period_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = float(period_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def admit(self, message: str) -> int | None:
        """None when this message's kind was logged less than ``period_s`` ago (counted), else the
        number of suppressed messages of that kind since its last line."""
        kind = problem_kind(message)
        with self._lock:
            now = self._clock()
            last = self._last.get(kind)
            if last is not None and now - last < self.period_s:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return None
            self._last[kind] = now
            return self._suppressed.pop(kind, 0)


def _fmt(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.2f}"


def pipeline_status(
    snap: StatsSnapshot, name: str, hardware_id: str, info: dict[str, str], problem: str | None = None
) -> DiagnosticStatus:
    """Pack a snapshot into one DiagnosticStatus.

    Level: OK while frames flow (or none arrive: a stopped camera is not a node fault); WARN when
    frames arrive but none yield output, or some were bad in this window, or with ``problem`` (its
    text becomes the message: the node's own finding, such as publishers that deliver nothing).
    """
    if problem:
        level, message = DiagnosticStatus.WARN, problem
    elif snap.inputs_in_window and not snap.outputs_in_window:
        level, message = DiagnosticStatus.WARN, "images arrive but produce no keypoints (see the log)"
    elif snap.bad_in_window:
        level, message = DiagnosticStatus.WARN, f"{snap.bad_in_window} bad input frames (see the log)"
    elif not snap.inputs_in_window:
        level, message = DiagnosticStatus.OK, "waiting for images"
    else:
        level, message = DiagnosticStatus.OK, "running"
    values = {
        "input_hz": _fmt(snap.input_hz),
        "output_hz": _fmt(snap.output_hz),
        "latency_p50_ms": _fmt(snap.latency_p50_ms),
        "latency_p95_ms": _fmt(snap.latency_p95_ms),
        "processing_p50_ms": _fmt(snap.processing_p50_ms),
        "processing_p95_ms": _fmt(snap.processing_p95_ms),
        "dropped_frames": str(snap.dropped_total),
        "bad_frames": str(snap.bad_total),
        "received_frames": str(snap.inputs_total),
        "published_frames": str(snap.outputs_total),
        "window_s": _fmt(snap.window_s),
        **info,
    }
    return DiagnosticStatus(
        level=level,
        name=name,
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )
