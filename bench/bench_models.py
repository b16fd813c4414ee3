"""Model latency, throughput and distance from the machine's limit, for every registered model.

For each model: single-frame latency (batch 1) p50/p95, batched throughput, FLOPs per frame
(torch's FlopCounterMode: 2 per multiply-add), and achieved FLOP/s as a fraction of this machine's
measured float32 matmul FLOP/s, all in one run so the ratios compare like with like. Each model is
timed as built (``plain``) and as the pipelines load it (``optimized``: BatchNorm folded, see
:mod:`handpose_core.models.inference`), interleaved so that load on the machine hits both alike.

Pipelines: the packaged checkpoints end to end (``HandPoseEstimator.predict`` on 640x480
synthetic frames: hand search / box, crop, network, decode), for each thread count, plain and
optimized, with the largest difference between the two outputs (mm, px): the speed work must not
change the answers.

On a machine with CUDA the models are also measured on the GPU (fp32 and fp16).

    python -m bench.bench_models --out bench/results/models.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import machine_info, summarize_ms, time_calls
from handpose_core.atomic import write_json
from handpose_core.models import create_model, list_models, onnx_backend
from handpose_core.models.inference import fold_batch_norm


def input_shape(name: str, model: torch.nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model is meant for: its ``input_shape`` / ``input_size`` attribute if it has one."""
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return tuple(shape)
    size = getattr(model, "input_size", None)
    if name.startswith("cpm"):
        return (3, size or 368, size or 368)
    return (1, size or 128, size or 128)


def flops_per_frame(model: torch.nn.Module, shape: tuple[int, int, int]) -> int:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, *shape))
    return int(counter.get_total_flops())


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048) -> float:
    """Measured dense matmul FLOP/s (median of 20 at n x n): the practical ceiling for conv/linear layers."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    with torch.inference_mode():
        seconds = time_calls(lambda: a @ b, repeats=20 if device.type == "cpu" else 200, sync=sync)
    return 2 * n**3 / float(sorted(seconds)[len(seconds) // 2])


def bench_model(name: str, device: torch.device, dtype: torch.dtype, batch: int, repeats: int,
                threads: int = 0) -> dict:
    """Timings of one registered model as built (``plain``), with BatchNorm folded (``optimized``)
    and, on the CPU, in onnxruntime (``onnxruntime``), interleaved in rounds."""
    plain = create_model(name).eval()
    shape = input_shape(name, plain)
    flops = flops_per_frame(plain, shape)
    variants = {"plain": plain, "optimized": fold_batch_norm(copy.deepcopy(plain))}
    for key, model in variants.items():
        model = model.to(device=device, dtype=dtype)
        if key == "optimized" and device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        variants[key] = model
    if device.type == "cpu" and onnx_backend.available():
        variants["onnxruntime"] = onnx_backend.OrtModule(plain, torch.zeros(1, *shape), threads=threads,
                                                         dynamic_hw=name.startswith("cpm"))
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    x1 = torch.randn(1, *shape, device=device, dtype=dtype)
    xb = torch.randn(batch, *shape, device=device, dtype=dtype)
    single = {k: [] for k in variants}
    batched = {k: [] for k in variants}
    rounds = 3  # interleave the variants in rounds: a load spike hits all of them
    with torch.inference_mode():
        for _ in range(rounds):
            for key, model in variants.items():
                single[key] += list(time_calls(lambda m=model: m(x1), repeats=max(1, repeats // rounds), sync=sync))
                batched[key] += list(time_calls(lambda m=model: m(xb), repeats=max(1, repeats // (5 * rounds)),
                                                warmup=1, sync=sync))
    out = {"input_shape": list(shape), "params": sum(p.numel() for p in plain.parameters()),
           "gflops_per_frame": flops / 1e9, "batch": batch}
    for key in variants:
        per_frame_batched = float(np.median(batched[key])) / batch
        out[key] = {
            "single": summarize_ms(np.asarray(single[key])),
            "batched_frames_per_s": 1.0 / per_frame_batched,
            "achieved_gflops_per_s_batched": flops / per_frame_batched / 1e9,
            "achieved_gflops_per_s_single": flops / float(np.median(single[key])) / 1e9,
        }
    if device.type == "cuda":
        out["cuda_graph"] = bench_cuda_graph(variants["optimized"], x1, xb, repeats)
    best = min(variants, key=lambda k: out[k]["single"]["p50_ms"])
    out["fastest_single"] = best
    out["speedup_single_fastest_over_plain"] = out["plain"]["single"]["p50_ms"] / out[best]["single"]["p50_ms"]
    return out


def cuda_graph_runner(model: torch.nn.Module, example: torch.Tensor):
    """``model`` captured in a CUDA graph for inputs shaped like ``example``: -> run(x) -> output.

    One replay launches every kernel at once, which removes the per-layer launch cost that
    dominates a single small frame. The output tensor is the graph's own (overwritten by the next
    replay): copy it to keep it.
    """
    static_in = example.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream, as capture requires (cuDNN picks its kernels)
            model(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_out = model(static_in)

    def run(x: torch.Tensor):
        static_in.copy_(x)
        graph.replay()
        return static_out

    return run


def bench_cuda_graph(model: torch.nn.Module, x1: torch.Tensor, xb: torch.Tensor, repeats: int) -> dict:
    """Single frame and batch through CUDA graphs of ``model``; {"error": ...} when capture fails."""
    try:
        single, batched = cuda_graph_runner(model, x1), cuda_graph_runner(model, xb)
        sync = torch.cuda.synchronize
        t1 = time_calls(lambda: single(x1), repeats=repeats, sync=sync)
        tb = time_calls(lambda: batched(xb), repeats=max(1, repeats // 5), warmup=1, sync=sync)
    except Exception as exc:  # noqa: BLE001 - a GPU/driver without graph support, or out of memory: say so
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        single = batched = None  # the graphs' private memory pools go with them
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"single": summarize_ms(np.asarray(t1)), "batched_frames_per_s": len(xb) / float(np.median(tb))}


PIPELINE_VARIANTS = {  # name -> HandPoseEstimator.from_checkpoint keywords
    "plain": {"optimize": False, "backend": "torch"},
    "torch_optimized": {"optimize": True, "backend": "torch"},
    "onnxruntime": {"optimize": True, "backend": "onnxruntime"},
    # every frame searched on its own (the others follow the hand from frame to frame)
    "onnxruntime_per_frame": {"optimize": True, "backend": "onnxruntime", "tracking": False},
}


def bench_pipelines(threads_list: list[int], frames: int, repeats: int) -> dict:
    """End-to-end ``HandPoseEstimator.predict`` of the packaged checkpoints on 640x480 synthetic frames."""
    from handpose_core.data.synthetic import SynthConfig, SyntheticHands
    from handpose_core.errors import HandPoseError
    from handpose_core.estimator import HandPoseEstimator

    # a 30 fps trajectory, as a camera would stream it (the RGB path tracks from frame to frame)
    samples = list(SyntheticHands(SynthConfig(), seed=7).trajectory(frames, fps=30.0))
    variants = {k: v for k, v in PIPELINE_VARIANTS.items()
                if v["backend"] != "onnxruntime" or onnx_backend.available()}
    results = {}
    for modality in ("depth", "rgb"):
        name = f"default:{modality}"

        def run(est, s, modality=modality):
            if modality == "depth":
                return est.predict(s.depth_mm, s.intrinsics.as_tuple())
            return est.predict(s.rgb)

        entry: dict = {"frames": frames}
        for threads in threads_list:
            try:
                # the stream's hand told, as a user would (a right-hand network mirrors a left one)
                hand = "left" if samples[0].is_left else "right"
                estimators = {k: HandPoseEstimator.from_checkpoint(name, device="cpu", threads=threads,
                                                                   handedness=hand, **kw)
                              for k, kw in variants.items()}
            except HandPoseError as exc:
                entry = {"skipped": str(exc)}
                break
            if "max_abs_diff" not in entry:
                # answers against plain torch on the same frames (tracking reset per frame: same crops)
                diff = {k: {"mm": 0.0, "px": 0.0} for k in estimators if k != "plain"}
                found = 0
                for s in samples:
                    poses = {}
                    for key, est in estimators.items():
                        est.reset()
                        poses[key] = run(est, s)
                    found += bool(poses["plain"])
                    for key in diff:
                        if bool(poses[key]) != bool(poses["plain"]):
                            diff[key] = {"mm": float("inf"), "px": float("inf")}
                        elif poses[key]:
                            a, b = poses["plain"][0], poses[key][0]
                            diff[key]["px"] = max(diff[key]["px"], float(np.abs(a.uv_px - b.uv_px).max()))
                            if np.isfinite(a.xyz_m).all():
                                diff[key]["mm"] = max(diff[key]["mm"], float(np.abs(a.xyz_m - b.xyz_m).max()) * 1e3)
                entry["hands_found"] = found
                entry["max_abs_diff"] = diff
            times = {k: [] for k in estimators}
            for _ in range(repeats):
                for key, est in estimators.items():  # interleaved runs over the stream
                    est.reset()
                    for s in samples:
                        t0 = time.perf_counter()
                        run(est, s)
                        times[key].append(time.perf_counter() - t0)
            entry[f"threads_{threads}"] = {k: summarize_ms(np.asarray(v)) for k, v in times.items()}
        results[modality] = entry
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/models.json", help="JSON file to write")
    parser.add_argument("--models", nargs="*", help="registered model names (default: all)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for torch")
    parser.add_argument("--repeats", type=int, default=30, help="timed single-frame calls per model")
    parser.add_argument("--batch", type=int, default=32, help="batch size for the throughput figure")
    parser.add_argument("--pipeline-threads", type=int, nargs="*", default=[1, 2],
                        help="thread counts for the end-to-end pipeline timings")
    parser.add_argument("--pipeline-frames", type=int, default=24, help="synthetic frames per pipeline timing")
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=["cpu", "cuda"],
                        help="what to measure; cuda only where a GPU is present (a GPU machine: --devices cuda)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.models or list_models()
    results = {"machine": machine_info(), "config": vars(args), "cpu": {}, "cuda": {}}
    if "cpu" in args.devices:
        measure_cpu(args, names, results)
    if "cuda" in args.devices and torch.cuda.is_available():
        measure_cuda(names, results)
    write_json(args.out, results)
    return 0


def measure_cpu(args: argparse.Namespace, names: list[str], results: dict) -> None:
    """Every model on the CPU (plain, BatchNorm folded, onnxruntime) and the packaged pipelines end to end."""
    cpu = torch.device("cpu")
    peak = matmul_flops_per_s(cpu)
    results["cpu_matmul_gflops_per_s"] = peak / 1e9
    for name in names:
        # The full OpenPose layout at 368x368 is ~10^11 FLOPs a frame: a few repeats only on CPU.
        heavy = name == "cpm_openpose"
        res = bench_model(name, cpu, torch.float32, batch=4 if heavy else args.batch,
                          repeats=3 if heavy else args.repeats, threads=args.threads)
        variants = [k for k in ("plain", "optimized", "onnxruntime") if k in res]
        for key in variants:
            res[key]["fraction_of_matmul_peak"] = res[key]["achieved_gflops_per_s_batched"] * 1e9 / peak
        results["cpu"][name] = res
        print(f"[cpu] {name}: {res['gflops_per_frame']:.3f} GFLOP/frame, p50 ms "
              + ", ".join(f"{k} {res[k]['single']['p50_ms']:.2f}" for k in variants)
              + f"; fastest {res['fastest_single']}: {res[res['fastest_single']]['batched_frames_per_s']:.1f} "
              f"frames/s batched, {res[res['fastest_single']]['fraction_of_matmul_peak']:.0%} of matmul peak",
              flush=True)
    results["pipelines_cpu"] = bench_pipelines(args.pipeline_threads, args.pipeline_frames, repeats=3)
    torch.set_num_threads(args.threads)
    for modality, entry in results["pipelines_cpu"].items():
        for key, value in entry.items():
            if key.startswith("threads_"):
                print(f"[cpu] pipeline {modality} {key}: p50 ms "
                      + ", ".join(f"{k} {v['p50_ms']:.2f}" for k, v in value.items()), flush=True)


def measure_cuda(names: list[str], results: dict) -> None:
    """Every model on the GPU in fp32 and fp16: single frame and batch 256, against the GPU's matmul rate."""
    gpu = torch.device("cuda")
    torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN time its algorithms once
    for dtype_name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        peak_gpu = matmul_flops_per_s(gpu, dtype, n=8192)
        results["cuda"][f"matmul_{dtype_name}_tflops_per_s"] = peak_gpu / 1e12
        for name in names:
            res = bench_model(name, gpu, dtype, batch=256, repeats=100)
            for key in ("plain", "optimized"):
                res[key]["fraction_of_matmul_peak"] = res[key]["achieved_gflops_per_s_batched"] * 1e9 / peak_gpu
            results["cuda"][f"{name}/{dtype_name}"] = res
            graph = res.get("cuda_graph", {})
            graph_text = (f"; CUDA graph p50 {graph['single']['p50_ms']:.3f} ms" if "single" in graph
                          else f"; CUDA graph: {graph.get('error')}")
            print(f"[cuda] {name} {dtype_name}: p50 {res['optimized']['single']['p50_ms']:.3f} ms, "
                  f"{res['optimized']['batched_frames_per_s']:.0f} frames/s at batch 256{graph_text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
