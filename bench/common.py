"""Shared benchmark plumbing: machine description and timing statistics (JSON goes through handpose_core.atomic)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, torch version and threads, GPU if any."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        # the vector instructions torch's kernels use here: AVX2 vs AVX512 changes every figure ~2-3x
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return info


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 3, sync: Callable[[], None] | None = None):
    """Run ``fn`` ``warmup + repeats`` times; per-call seconds of the timed runs as an array."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times[i] = time.perf_counter() - t0
    return times


def summarize_ms(seconds: np.ndarray) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "n": int(ms.size)}

