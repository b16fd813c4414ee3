"""Our RGB path against the peer, MediaPipe Hands, on the same frames, on the same CPU, in one run.

Frames: a 640x480 synthetic RGB video (``SyntheticHands.trajectory``, 30 fps), saved once and
given to both. Ours: ``HandPoseEstimator.from_checkpoint("default:rgb").predict(rgb)`` frame by
frame (box by tracking, scale search when the track is lost), as the node runs it. MediaPipe:
``mediapipe.solutions.hands.Hands`` in video mode (palm detector, then landmark tracking), in its
own venv (``bench/mediapipe_worker.py``), full (complexity 1, its default) and lite (0) landmark
models. Passes alternate (ours, MediaPipe full, MediaPipe lite, ours, ...) so that load on the
machine hits all alike; the headline is the ratio of medians, ours / MediaPipe full.

Caveat written into the JSON: the frames are synthetic hands (capsule fingers), which
MediaPipe's models were never trained on, so its detection rate here says nothing about its
accuracy on real hands; timing-wise, a frame without a detected hand costs MediaPipe its palm
detector, a frame with one costs its landmark model. Both counts are reported.

    python -m bench.bench_mediapipe --out bench/results/mediapipe.json [--frames 90 --passes 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import machine_info, summarize_ms
from handpose_core.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PYTHON = ROOT / ".venv-mediapipe" / "bin" / "python"


def _run_worker(python: Path, frames_path: Path, complexity: int, tmp: Path) -> dict:
    out = tmp / f"mp_{complexity}.json"
    cmd = [str(python), str(ROOT / "bench" / "mediapipe_worker.py"), str(frames_path), str(out),
           "--complexity", str(complexity)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"mediapipe worker failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/mediapipe.json", help="JSON file to write")
    parser.add_argument("--frames", type=int, default=90, help="video length, frames (30 fps)")
    parser.add_argument("--passes", type=int, default=3, help="alternating passes of each contender")
    parser.add_argument("--seed", type=int, default=11, help="synthetic trajectory seed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for ours (0 = torch default)")
    parser.add_argument("--mediapipe-python", default=str(DEFAULT_PYTHON),
                        help="python of the venv holding mediapipe (make .venv-mediapipe)")
    args = parser.parse_args(argv)

    import torch

    from handpose_core.data.synthetic import SynthConfig, SyntheticHands
    from handpose_core.estimator import HandPoseEstimator

    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {"machine": machine_info(), "config": {**vars(args), "image_size": [640, 480]}}
    python = Path(args.mediapipe_python)
    if not python.is_file():
        results["skipped"] = f"no MediaPipe venv at {python}: run `make .venv-mediapipe`"
        write_json(args.out, results)
        print(f"[bench_mediapipe] {results['skipped']}")
        return 0

    samples = list(SyntheticHands(SynthConfig(render_depth=False), seed=args.seed).trajectory(args.frames, fps=30.0))
    rgb = np.stack([s.rgb for s in samples])
    estimator = HandPoseEstimator.from_checkpoint("default:rgb", device="cpu")
    warmup = 3
    ours, ours_found = [], 0
    mp_runs: dict[int, list[dict]] = {1: [], 0: []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        frames_path = tmp / "frames.npy"
        np.save(frames_path, rgb)
        for p in range(args.passes):
            estimator.reset()
            for i, frame in enumerate(rgb):
                t0 = time.perf_counter()
                poses = estimator.predict(frame)
                dt = time.perf_counter() - t0
                if i >= warmup:
                    ours.append(dt)
                    ours_found += bool(poses)
            for complexity in (1, 0):
                mp_runs[complexity].append(_run_worker(python, frames_path, complexity, tmp))
            print(f"[bench_mediapipe] pass {p + 1}/{args.passes} done", flush=True)

    ours_stats = summarize_ms(np.asarray(ours))
    results["ours_rgb_default"] = {**ours_stats, "hands_found": ours_found, "frames_timed": len(ours),
                                   "torch_threads": torch.get_num_threads()}
    for complexity, label in ((1, "mediapipe_full"), (0, "mediapipe_lite")):
        runs = mp_runs[complexity]
        latency = np.concatenate([r["latency_s"] for r in runs])
        results[label] = {**summarize_ms(latency), "hands_found": int(sum(r["hands_found"] for r in runs)),
                          "frames_timed": int(latency.size), "version": runs[0]["mediapipe"]}
    results["ratio_ours_over_mediapipe_full_p50"] = ours_stats["p50_ms"] / results["mediapipe_full"]["p50_ms"]
    results["ratio_ours_over_mediapipe_lite_p50"] = ours_stats["p50_ms"] / results["mediapipe_lite"]["p50_ms"]
    results["caveat"] = ("synthetic frames: MediaPipe was not trained on such hands, so its hands_found is not an "
                         "accuracy figure; without a hand it runs the palm detector each frame, with one the "
                         "landmark model")
    write_json(args.out, results)
    print(f"[bench_mediapipe] ours p50 {ours_stats['p50_ms']:.2f} ms, MediaPipe full "
          f"{results['mediapipe_full']['p50_ms']:.2f} ms, lite {results['mediapipe_lite']['p50_ms']:.2f} ms; "
          f"ratio ours/full {results['ratio_ours_over_mediapipe_full_p50']:.2f}; wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
