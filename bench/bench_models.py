"""Model latency, throughput and distance from the machine's limit, for every registered model.

For each model: single-frame latency (batch 1) p50/p95, batched throughput, FLOPs per frame
(torch's FlopCounterMode: 2 per multiply-add), and achieved FLOP/s as a fraction of this machine's
measured float32 matmul FLOP/s, all in one run so the ratios compare like with like. On a machine
with CUDA the same is measured on the GPU (fp32 and fp16).

    python -m bench.bench_models --out bench/results/models.json
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import machine_info, summarize_ms, time_calls, write_json
from handpose_core.models import create_model, list_models


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


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024) -> float:
    """Measured dense matmul FLOP/s: the practical ceiling for conv/linear layers on this device."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    with torch.inference_mode():
        seconds = time_calls(lambda: a @ b, repeats=20 if device.type == "cpu" else 200, sync=sync)
    return 2 * n**3 / float(sorted(seconds)[len(seconds) // 2])


def bench_model(name: str, device: torch.device, dtype: torch.dtype, batch: int, repeats: int) -> dict:
    model = create_model(name).eval().to(device=device, dtype=dtype)
    shape = input_shape(name, model)
    flops = flops_per_frame(model.float().cpu(), shape)
    model = model.to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    x1 = torch.randn(1, *shape, device=device, dtype=dtype)
    xb = torch.randn(batch, *shape, device=device, dtype=dtype)
    with torch.inference_mode():
        single = time_calls(lambda: model(x1), repeats=repeats, sync=sync)
        batched = time_calls(lambda: model(xb), repeats=max(3, repeats // 5), sync=sync)
    per_frame_batched = float(sorted(batched)[len(batched) // 2]) / batch
    return {
        "input_shape": list(shape),
        "params": sum(p.numel() for p in model.parameters()),
        "gflops_per_frame": flops / 1e9,
        "single": summarize_ms(single),
        "batch": batch,
        "batched_frames_per_s": 1.0 / per_frame_batched,
        "achieved_gflops_per_s_batched": flops / per_frame_batched / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/models.json", help="JSON file to write")
    parser.add_argument("--models", nargs="*", help="registered model names (default: all)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for torch")
    parser.add_argument("--repeats", type=int, default=30, help="timed single-frame calls per model")
    parser.add_argument("--batch", type=int, default=32, help="batch size for the throughput figure")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.models or list_models()
    results = {"machine": machine_info(), "config": vars(args), "cpu": {}, "cuda": {}}
    cpu = torch.device("cpu")
    peak = matmul_flops_per_s(cpu)
    results["cpu_matmul_gflops_per_s"] = peak / 1e9
    for name in names:
        # The full OpenPose layout at 368x368 is ~10^11 FLOPs a frame: a few repeats only on CPU.
        heavy = name == "cpm_openpose"
        res = bench_model(name, cpu, torch.float32, batch=4 if heavy else args.batch,
                          repeats=3 if heavy else args.repeats)
        res["fraction_of_matmul_peak"] = res["achieved_gflops_per_s_batched"] * 1e9 / peak
        results["cpu"][name] = res
        print(f"[cpu] {name}: p50 {res['single']['p50_ms']:.2f} ms, "
              f"{res['batched_frames_per_s']:.1f} frames/s batched, "
              f"{res['fraction_of_matmul_peak']:.0%} of matmul peak", flush=True)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        for dtype_name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
            peak_gpu = matmul_flops_per_s(gpu, dtype, n=8192)
            results["cuda"][f"matmul_{dtype_name}_tflops_per_s"] = peak_gpu / 1e12
            for name in names:
                res = bench_model(name, gpu, dtype, batch=256, repeats=100)
                res["fraction_of_matmul_peak"] = res["achieved_gflops_per_s_batched"] * 1e9 / peak_gpu
                results["cuda"][f"{name}/{dtype_name}"] = res
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
