"""The benchmark plumbing that turns runs into figures: pooling repeated node runs, the summary tables."""

from __future__ import annotations

import numpy as np
import pytest

from bench.bench_node import combine_runs
from bench.run_all import _models_table, _node_table


def _run(latencies, dropped, received=300):
    return {"model": "default:depth", "encoding": "16UC1", "image_size": [640, 480], "rate_hz": 30.0,
            "seconds": 10.0, "frames_sent": 300, "frames_answered": len(latencies), "hands_found": len(latencies),
            "output_hz": 29.0 + dropped / 10, "latency_stamp_to_subscriber": {"p50_ms": float(np.median(latencies))},
            "latencies_ms": list(latencies), "node_latency_p50_ms": 9.0 + dropped, "node_latency_p95_ms": 12.0,
            "node_received_frames": received, "node_dropped_frames": dropped, "node_bad_frames": 0,
            "lost_before_node": None if received is None else 300 - received}


def test_combine_runs_pools_latencies_and_sums_counts():
    fast, slow = _run([10.0] * 30, dropped=0), _run([20.0] * 10, dropped=2)
    out = combine_runs([fast, slow])
    assert out["repeats"] == 2 and out["frames_answered"] == 40 and out["node_dropped_frames"] == 2
    lat = out["latency_stamp_to_subscriber"]
    assert lat["p50_ms"] == 10.0 and lat["max_ms"] == 20.0  # pooled samples, not a mean of medians
    assert lat["mean_ms"] == pytest.approx(12.5)
    assert out["output_hz"] == pytest.approx(29.1) and out["node_latency_p50_ms"] == pytest.approx(10.0)
    assert [r["latency_stamp_to_subscriber"]["p50_ms"] for r in out["runs"]] == [10.0, 20.0]
    assert all("latencies_ms" not in r for r in out["runs"])  # raw samples stay out of the JSON
    # a run whose node never reported its counters makes the total unknown, not smaller
    assert combine_runs([fast, _run([10.0], dropped=0, received=None)])["node_received_frames"] is None


def test_node_table_has_a_row_per_case_with_its_transport():
    ld = combine_runs([_run([9.0] * 5, dropped=0)])
    ld["transport"] = "LARGE_DATA"
    rows = _node_table({"machine": {}, "config": {}, "depth": combine_runs([_run([11.0] * 5, dropped=1)]),
                        "depth_large_data": ld})
    assert len(rows) == 4 and rows[0].startswith("| stream | DDS transport")
    assert "| default | 1 |" in rows[2] and "| 11.0 |" in rows[2]
    assert "| LARGE_DATA | 1 |" in rows[3] and "| 9.0 |" in rows[3]


def test_models_table_lists_cpu_and_cuda_rows():
    timing = {"single": {"p50_ms": 1.0, "p95_ms": 1.5}, "batched_frames_per_s": 2000.0,
              "fraction_of_matmul_peak": 0.5}
    model = {"input_shape": [1, 128, 128], "gflops_per_frame": 0.037, "fastest_single": "optimized",
             "plain": timing, "optimized": timing}
    graphed = dict(model, cuda_graph={"single": {"p50_ms": 0.25}, "batched_frames_per_s": 90000.0})
    failed = dict(model, cuda_graph={"error": "RuntimeError: no graphs"})
    payload = {"machine": {"cuda": "GPU X"}, "config": {"threads": 2}, "cpu_matmul_gflops_per_s": 90.0,
               "cpu": {"deep_prior_res": model},
               "cuda": {"matmul_fp16_tflops_per_s": 1.0, "deep_prior_res/fp16": graphed,
                        "deep_prior_res/fp32": failed}}
    rows = _models_table(payload)
    assert rows[0].startswith("CPU float32 matmul: 90.0 GFLOP/s")
    assert any(r.startswith("| deep_prior_res | 1x128x128 | 0.037 |") for r in rows)
    assert rows[-2] == "| deep_prior_res/fp16 | 1.000 | 2000 | 50 | 0.250 | 90000 |"
    assert rows[-1] == "| deep_prior_res/fp32 | 1.000 | 2000 | 50 | RuntimeError: no graphs | - |"
    assert _models_table({"machine": {}, "config": {}, "cpu": {}, "cuda": {}}) == []


def test_cuda_graph_bench_reports_a_failed_capture_instead_of_raising():
    import torch

    from bench.bench_models import bench_cuda_graph

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the capture would succeed")
    out = bench_cuda_graph(torch.nn.Conv2d(1, 1, 3), torch.zeros(1, 1, 8, 8), torch.zeros(4, 1, 8, 8), repeats=3)
    assert set(out) == {"error"} and out["error"]
