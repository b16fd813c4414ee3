"""`make bench`: run every benchmark, write bench/results/*.json and bench/results/SUMMARY.md.

Each benchmark module exposes ``main(argv)`` and writes its own JSON; this runner only sequences
them (one at a time: they share two cores) and collects the headline figures into a table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from handpose_core.checkpoint import atomic_write

RESULTS = Path("bench/results")
# (module, json name); a module that does not exist yet is reported as skipped, not as a failure.
BENCHMARKS = [
    ("bench.bench_synthetic", "synthetic.json"),
    ("bench.bench_models", "models.json"),
    ("bench.bench_node", "node.json"),
    ("bench.bench_mediapipe", "mediapipe.json"),
]


def _headlines(payload: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in payload.items():
        if key in ("machine", "config"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _headlines(value, name + ".")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append((name, f"{value:.4g}"))
    return rows


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _models_table(payload: dict) -> list[str]:
    """One row per model variant: FLOPs, single-frame p50 per backend, batched rate of the fastest."""
    peak = payload.get("cpu_matmul_gflops_per_s")
    threads = payload["config"].get("threads")
    lines = [] if not payload.get("cpu") else [
        f"CPU float32 matmul: {_fmt(peak, 1)} GFLOP/s measured; threads {threads}.", "",
        "| model | input | GFLOP/frame | p50 ms torch | p50 ms torch, BN folded | p50 ms onnxruntime "
        "| p95 ms fastest | batched frames/s fastest | % of matmul peak |",
        "|---|---|---|---|---|---|---|---|---|"]
    for name, r in payload.get("cpu", {}).items():
        f = r[r["fastest_single"]]
        ort = r.get("onnxruntime", {}).get("single", {}).get("p50_ms")
        lines.append(f"| {name} | {'x'.join(map(str, r['input_shape']))} | {r['gflops_per_frame']:.3f} | "
                     f"{r['plain']['single']['p50_ms']:.2f} | {r['optimized']['single']['p50_ms']:.2f} | "
                     f"{_fmt(ort)} | {f['single']['p95_ms']:.2f} | {f['batched_frames_per_s']:.1f} | "
                     f"{100 * f['fraction_of_matmul_peak']:.0f} |")
    pipes = payload.get("pipelines_cpu", {})
    if pipes:
        lines += ["", "End to end (`HandPoseEstimator.predict`, 640x480 synthetic stream), p50 (p95) ms:", "",
                  "| pipeline | threads | torch | torch, BN folded | onnxruntime | onnxruntime, no tracking "
                  "| max diff to torch |",
                  "|---|---|---|---|---|---|---|"]
        for modality, entry in pipes.items():
            diff = entry.get("max_abs_diff", {})
            worst = ", ".join(f"{k}: {v['mm']:.4f} mm / {v['px']:.4f} px" for k, v in diff.items())
            for key, value in entry.items():
                if key.startswith("threads_"):
                    cells = [f"{value[k]['p50_ms']:.2f} ({value[k]['p95_ms']:.2f})" if k in value else "-"
                             for k in ("plain", "torch_optimized", "onnxruntime", "onnxruntime_per_frame")]
                    lines.append(f"| {modality} | {key.split('_')[1]} | {' | '.join(cells)} | {worst} |")
    cuda = {name: r for name, r in payload.get("cuda", {}).items() if isinstance(r, dict)}
    if cuda:
        lines += ["", f"GPU {payload['machine'].get('cuda')} (BatchNorm folded, channels-last):", "",
                  "| model/precision | p50 ms, one frame | frames/s at batch 256 | % of matmul peak "
                  "| CUDA graph: p50 ms, one frame | CUDA graph: frames/s at batch 256 |",
                  "|---|---|---|---|---|---|"]
        for name, r in cuda.items():
            o, g = r["optimized"], r.get("cuda_graph", {})
            graph = (f"{g['single']['p50_ms']:.3f} | {g['batched_frames_per_s']:.0f}" if "single" in g
                     else f"{g.get('error', '-')} | -")
            lines.append(f"| {name} | {o['single']['p50_ms']:.3f} | {o['batched_frames_per_s']:.0f} | "
                         f"{100 * o['fraction_of_matmul_peak']:.0f} | {graph} |")
    return lines


def _node_table(payload: dict) -> list[str]:
    lines = ["| stream | DDS transport | runs | out Hz | p50 ms | p95 ms | run p50s ms | node's own work p50 ms "
             "| node dropped | lost before node |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload.values():
        if not (isinstance(r, dict) and "latency_stamp_to_subscriber" in r):
            continue
        lat = r["latency_stamp_to_subscriber"]
        runs = ", ".join(f"{x['latency_stamp_to_subscriber']['p50_ms']:.1f}" for x in r.get("runs", []))
        lines.append(f"| {r['encoding']} {r['image_size'][0]}x{r['image_size'][1]} @ {r['rate_hz']:g} Hz | "
                     f"{r.get('transport', 'default')} | {r.get('repeats', 1)} | {r['output_hz']:.1f} | "
                     f"{lat['p50_ms']:.1f} | {lat['p95_ms']:.1f} | {runs or '-'} | "
                     f"{r.get('node_processing_p50_ms', float('nan')):.1f} | {r['node_dropped_frames']} | "
                     f"{r['lost_before_node']} |")
    return lines


def _mediapipe_table(payload: dict) -> list[str]:
    if "skipped" in payload:
        return [f"skipped: {payload['skipped']}"]
    lines = ["| contender | p50 ms | p95 ms | hands found / frames |", "|---|---|---|---|"]
    for key in ("ours_rgb_default", "mediapipe_full", "mediapipe_lite"):
        r = payload[key]
        lines.append(f"| {key} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['hands_found']}/{r['frames_timed']} |")
    lines += ["", f"Ratio ours / MediaPipe full (p50): **{payload['ratio_ours_over_mediapipe_full_p50']:.2f}**; "
              f"/ lite: {payload['ratio_ours_over_mediapipe_lite_p50']:.2f}. {payload['caveat']}."]
    return lines


TABLES = {"models.json": _models_table, "node.json": _node_table, "mediapipe.json": _mediapipe_table}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="benchmark modules to run (default: all)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = ["# Benchmarks", "", f"Run {time.strftime('%Y-%m-%d %H:%M')}", ""]
    failed = 0
    for module_name, json_name in BENCHMARKS:
        if args.only and module_name.split(".")[-1] not in args.only and module_name not in args.only:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            print(f"[bench] {module_name}: not present, skipped")
            continue
        out = RESULTS / json_name
        print(f"[bench] {module_name} -> {out}", flush=True)
        rc = module.main(["--out", str(out)])
        if rc:
            failed += 1
            print(f"[bench] {module_name} failed with {rc}")
            continue
        payload = json.loads(out.read_text())
        lines += [f"## {module_name} (`{out}`)", ""]
        machine = payload.get("machine", {})
        lines += [f"Machine: {machine.get('cpu')} ({machine.get('cpu_capability', '?')}), {machine.get('cores')} "
                  f"cores, torch {machine.get('torch')}, "
                  f"GPU {machine.get('cuda') or 'none'}.", ""]
        if json_name in TABLES:
            lines += TABLES[json_name](payload)
        else:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in _headlines(payload)]
        lines.append("")
    atomic_write(RESULTS / "SUMMARY.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    print(f"[bench] summary: {RESULTS / 'SUMMARY.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
