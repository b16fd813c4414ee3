"""Synthetic hand generator speed: frames per second on ONE thread, 640x480.

For each configuration (depth + RGB, the default; depth only; RGB only) it renders ``--frames``
consecutive samples ``hands[i]`` (pose sampling + rendering + labels, everything a data loader
pays for) after a warm-up, and reports the median and p95 wall time per frame, frames/s from the
median, and the median CPU time per frame (less sensitive to other processes on a shared
machine). The load average before and after is recorded for the same reason.

    python -m bench.bench_synthetic --out bench/results/synthetic.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # effective when this module is the first to load numpy

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import machine_info  # noqa: E402
from handpose_core.atomic import write_json  # noqa: E402
from handpose_core.data.synthetic import SynthConfig, SyntheticHands  # noqa: E402

CONFIGS = {
    "depth_rgb": SynthConfig(),
    "depth_only": SynthConfig(render_rgb=False),
    "rgb_only": SynthConfig(render_depth=False),
}


def bench_config(config: SynthConfig, frames: int, warmup: int, seed: int) -> dict:
    hands = SyntheticHands(config, seed=seed)
    for i in range(warmup):
        hands[10_000_000 + i]
    wall = np.empty(frames)
    cpu = np.empty(frames)
    start = time.perf_counter()
    for i in range(frames):
        t0, c0 = time.perf_counter(), time.process_time()
        hands[i]
        wall[i], cpu[i] = time.perf_counter() - t0, time.process_time() - c0
    total = time.perf_counter() - start
    median = float(np.median(wall)) * 1e3
    return {
        "frames": frames,
        "median_ms": median,
        "p95_ms": float(np.percentile(wall, 95)) * 1e3,
        "fps": 1000.0 / median,
        "fps_overall": frames / total,
        "cpu_median_ms": float(np.median(cpu)) * 1e3,
        "fps_cpu": 1000.0 / (float(np.median(cpu)) * 1e3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/synthetic.json", help="JSON result path")
    parser.add_argument("--frames", type=int, default=300, help="timed frames per configuration (default 300)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed frames first (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.frames <= 0:
        print("bench_synthetic: --frames must be > 0", file=sys.stderr)
        return 2

    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    load_before = os.getloadavg()
    results = {}
    for name, config in CONFIGS.items():
        results[name] = bench_config(config, args.frames, args.warmup, args.seed)
        r = results[name]
        print(
            f"[synthetic] {name:10s} {r['median_ms']:6.2f} ms/frame median ({r['fps']:.0f} fps), "
            f"p95 {r['p95_ms']:.2f} ms, cpu {r['cpu_median_ms']:.2f} ms ({r['fps_cpu']:.0f} fps)",
            flush=True,
        )
    intr = CONFIGS["depth_rgb"].intrinsics
    payload = {
        "benchmark": "synthetic hand generator, one thread",
        "image": f"{intr.width}x{intr.height}",
        "threads": {"torch": torch.get_num_threads(), "cv2": cv2.getNumThreads()},
        **results,
        "machine": {**machine_info(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
    }
    write_json(args.out, payload)
    print(f"[synthetic] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
