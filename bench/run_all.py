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
        lines += [f"## {module_name}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in _headlines(payload)]
        lines.append("")
    atomic_write(RESULTS / "SUMMARY.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    print(f"[bench] summary: {RESULTS / 'SUMMARY.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
