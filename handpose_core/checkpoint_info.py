"""handpose-info: what a checkpoint holds, without writing Python.

Examples:

    handpose-info default:depth            # the packaged DeepPrior weights
    handpose-info runs/cpm_light/model.pt --json > meta.json

Prints the model and its size, the input it takes, how it was trained (steps, time, the exact
command), the held-out figures stored with it (``--record`` of the evaluation tools) and the
inference settings the estimator will use. ``--json`` prints the whole metadata instead. A file that
is missing or not a handpose checkpoint gives one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Any

from handpose_core.checkpoint import load_checkpoint
from handpose_core.errors import HandPoseError

PROG = "handpose-info"


def describe(blob: dict[str, Any]) -> list[str]:
    """Human-readable lines for a loaded checkpoint (see the module docstring)."""
    meta = blob["meta"]
    model = blob["model"]
    n_weights = sum(int(t.numel()) for t in blob["state_dict"].values() if t.is_floating_point())
    names = meta.get("joint_names", [])
    config = model.get("config", {})
    side = config.get("dense_size", 16)
    head = f", dense head {side}x{side}" if config.get("head") == "dense" else ""
    lines = [f"model      {model['name']} ({n_weights / 1e6:.2f} M weights{head}), {meta.get('modality', '?')} input, "
             f"{len(names)} joints ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"]
    if "input" in meta:  # RGB models: the network's crop
        spec = meta["input"]
        lines.append(f"input      {spec['size']}x{spec['size']} {spec.get('channel_order', '')} crop, "
                     f"scale {spec.get('scale'):g}, offset {spec.get('offset'):g}")
    elif "cube_mm" in meta.get("codec", {}):  # depth models: the metric cube
        codec = meta["codec"]
        lines.append(f"input      {codec['size']}x{codec['size']} depth crop of a {codec['cube_mm']:g} mm cube")
    training = meta.get("training", {})
    step = training.get("step", blob.get("step", 0))
    minutes = f", {training['elapsed_s'] / 60:.1f} min" if "elapsed_s" in training else ""
    lines.append(f"trained    {step:,} steps{minutes}")
    first = 0
    for seg in training.get("resumed_from", []):  # the earlier segments of a resumed run
        until = f"to {seg['elapsed_s'] / 60:.1f} min"
        lines.append(f"           steps {first:,}-{seg['step']:,} ({until}): {seg['command']}")
        first = seg["step"]
    command = meta.get("provenance", {}).get("command")
    if command:
        lines.append(f"           {f'steps {first:,}-{step:,}: ' if first else ''}{command}")
    fit = meta.get("confidence")  # a confidence head fitted afterwards (train_deep_prior --fit-confidence)
    if isinstance(fit, dict) and "command" in fit:
        lines.append(f"           then a confidence head ({fit.get('steps', 0):,} steps, "
                     f"{fit.get('seconds', 0) / 60:.1f} min; joints unchanged): {fit['command']}")
    held_out = dict(meta.get("held_out", {}))
    if held_out:
        measured_by = held_out.pop("command", None)
        lines += _block("held out", _items(held_out))
        if measured_by:
            lines.append(f"           measured by: {measured_by}")
    else:
        lines.append("held out   none recorded (the evaluation tools' --record stores them)")
    for key in ("inference", "pipeline"):  # depth / RGB estimator settings
        if key in meta:
            lines += _block("inference", _items(meta[key]))
    return lines


def _items(d: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"a": 1, "b": {"c": 0.12345}}`` -> ``["a 1", "b.c 0.1235"]``."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _items(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k} {round(v, 4) if isinstance(v, float) else v}")
    return out


def _block(title: str, items: list[str], width: int = 100) -> list[str]:
    """Items packed into lines of at most ``width`` characters under an 11-character title column;
    short items share lines, a long one (a note, a protocol) is wrapped on its own."""
    lines, line = [], ""
    for item in items:
        if len(item) > 40:
            if line:
                lines.append(line)
                line = ""
            lines += textwrap.wrap(item, width - 11, break_on_hyphens=False)
        elif line and len(line) + 2 + len(item) > width - 11:
            lines.append(line)
            line = item
        else:
            line = f"{line}, {item}" if line else item
    if line:
        lines.append(line)
    return [f"{title if i == 0 else '':<11}{text}" for i, text in enumerate(lines)]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``handpose-info``; returns the exit status."""
    p = argparse.ArgumentParser(prog=PROG, description="What a checkpoint holds, without writing Python.",
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint path, default:depth or default:rgb")
    p.add_argument("--json", action="store_true", help="print the whole metadata as JSON")
    args = p.parse_args(argv)
    from handpose_core.estimator import resolve_checkpoint

    try:
        path = resolve_checkpoint(args.checkpoint)
        blob = load_checkpoint(path)
    except HandPoseError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"path": str(path), "model": blob["model"], "step": blob.get("step", 0),
                          "meta": blob["meta"]}, indent=2, default=str))
    else:
        print(path)
        print("\n".join("  " + line for line in describe(blob)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
