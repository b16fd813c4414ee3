"""Time MediaPipe Hands on frames from a .npy file; run by ``bench.bench_mediapipe`` in its own venv.

This file imports only numpy and mediapipe (it runs in ``.venv-mediapipe``, made by
``make .venv-mediapipe`` from ``bench/requirements-mediapipe.txt``; mediapipe 0.10.14 needs
numpy < 2 and protobuf < 5, which the project's own venv does not have).

    python bench/mediapipe_worker.py FRAMES.npy OUT.json [--complexity 1] [--passes 1]

FRAMES.npy: (N, H, W, 3) uint8 RGB, a video in order. Each pass makes a fresh ``Hands`` in video
mode (``static_image_mode=False``: the palm detector runs until a hand is found, then the
landmark model tracks it, as in a live camera) and times ``process`` per frame.
OUT.json: {"latency_s": [...], "hands_found": n, "frames": N, "mediapipe": version, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("frames", help="(N, H, W, 3) uint8 RGB .npy")
    parser.add_argument("out", help="JSON file to write")
    parser.add_argument("--complexity", type=int, default=1, help="landmark model: 0 lite, 1 full (default)")
    parser.add_argument("--passes", type=int, default=1, help="passes over the frames, each with a fresh Hands")
    parser.add_argument("--warmup", type=int, default=3, help="untimed frames at the start of each pass")
    args = parser.parse_args(argv)

    import mediapipe as mp

    frames = np.load(args.frames)
    latency, found = [], 0
    for _ in range(args.passes):
        with mp.solutions.hands.Hands(static_image_mode=False, max_num_hands=1,
                                      model_complexity=args.complexity) as hands:
            for i, frame in enumerate(frames):
                t0 = time.perf_counter()
                result = hands.process(frame)
                dt = time.perf_counter() - t0
                if i >= args.warmup:
                    latency.append(dt)
                    found += bool(result.multi_hand_landmarks)
    payload = {"latency_s": latency, "hands_found": found, "frames": len(latency), "mediapipe": mp.__version__,
               "model_complexity": args.complexity, "cpu_count": os.cpu_count()}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
