"""``handpose-synth``: render synthetic hands into an HDF5 file of the seed notebook's layout.

Example::

    handpose-synth --n 1000 --out data.h5 --seed 0 --test-fraction 0.1

Train frames are generator indices 0..n_train-1 and test frames indices from 1,000,000,000 on,
so asking for more training frames never changes the test set. Bad arguments print one line on
stderr and exit with status 2 before anything is rendered; a failure while writing exits with
status 1. The output file appears only when complete (temporary file + rename).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from handpose_core.camera import DEFAULT_INTRINSICS, Intrinsics
from handpose_core.errors import HandPoseError

PROG = "handpose-synth"
TEST_INDEX_OFFSET = 1_000_000_000


class _UsageError(Exception):
    """A bad command line: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; we want one line
        raise _UsageError(message)


def _probability(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Render procedural hands (depth + RGB + exact 21-joint labels) into an HDF5 file: "
        "image/{train,test} (N,S,S,1) normalized depth crops and label/{train,test} (N,63) normalized "
        "joints as in the DeepPrior seed notebook, pca/*, plus the raw frames and labels.",
    )
    p.add_argument("--n", type=int, required=True, help="number of frames in total (train + test), > 0")
    p.add_argument("--out", required=True, help="output .h5 path; its folder must exist")
    p.add_argument("--seed", type=int, default=0, help="generator seed; same seed = same file content (default 0)")
    p.add_argument(
        "--test-fraction",
        type=_number,
        default=0.1,
        help="share of the frames in the test split, in [0, 1) (default 0.1)",
    )
    p.add_argument(
        "--intrinsics",
        help="pinhole camera 'fx,fy,cx,cy' in pixels (default: 475,475,319.5,239.5 scaled to --width/--height)",
    )
    p.add_argument("--width", type=int, default=640, help="image width in pixels (default 640)")
    p.add_argument("--height", type=int, default=480, help="image height in pixels (default 480)")
    p.add_argument("--no-rgb", action="store_true", help="do not render or store RGB frames (faster, smaller)")
    p.add_argument("--no-raw", action="store_true", help="store only crops and labels, not the full frames")
    p.add_argument("--cube-mm", type=_number, default=300.0, help="edge of the metric crop cube in mm (default 300)")
    p.add_argument("--crop-size", type=int, default=128, help="crop side in pixels (default 128)")
    p.add_argument(
        "--pca-components", type=int, default=30, help="principal components of the train labels stored (default 30)"
    )
    p.add_argument("--left-prob", type=_probability, default=0.5, help="probability of a left hand (default 0.5)")
    p.add_argument("--forearm-prob", type=_probability, default=0.7, help="probability of a forearm (default 0.7)")
    p.add_argument(
        "--background-prob", type=_probability, default=0.7, help="probability of a wall/table plane (default 0.7)"
    )
    p.add_argument(
        "--clutter-prob",
        type=_probability,
        default=0.3,
        help="probability of boxes/spheres behind the hand (default 0.3)",
    )
    p.add_argument("--no-noise", action="store_true", help="no depth noise and no missing pixels at depth edges")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _intrinsics(args) -> Intrinsics:
    width, height = args.width, args.height
    if width < 32 or height < 32:
        raise _UsageError(f"--width and --height must be >= 32, got {width}x{height}")
    if args.intrinsics is None:
        sx, sy = width / DEFAULT_INTRINSICS.width, height / DEFAULT_INTRINSICS.height
        return Intrinsics(
            DEFAULT_INTRINSICS.fx * sx, DEFAULT_INTRINSICS.fy * sy, (width - 1) / 2, (height - 1) / 2, width, height
        )
    parts = args.intrinsics.split(",")
    if len(parts) != 4:
        raise _UsageError(f"--intrinsics needs 4 comma-separated numbers fx,fy,cx,cy, got {args.intrinsics!r}")
    try:
        fx, fy, cx, cy = (_number(v.strip()) for v in parts)
    except argparse.ArgumentTypeError as exc:
        raise _UsageError(f"--intrinsics: {exc}") from None
    try:
        intr = Intrinsics(fx, fy, cx, cy, width, height)
    except HandPoseError as exc:
        raise _UsageError(f"--intrinsics: {exc}") from None
    if not (0 <= cx <= width and 0 <= cy <= height):
        raise _UsageError(f"--intrinsics: principal point ({cx}, {cy}) is outside the {width}x{height} image")
    return intr


def _check_output(out: str) -> Path:
    path = Path(out)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise _UsageError(f"--out {out!r} is a directory")
    if not parent.is_dir():
        raise _UsageError(f"--out: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _UsageError(f"--out: folder {str(parent)!r} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise _UsageError(f"--out: {out!r} exists and is not writable")
    return path


def _validate(args):
    if args.n <= 0:
        raise _UsageError(f"--n must be > 0, got {args.n}")
    if not 0.0 <= args.test_fraction < 1.0:
        raise _UsageError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")
    if args.seed < 0:
        raise _UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.cube_mm <= 0 or args.crop_size < 8 or args.pca_components < 0:
        raise _UsageError("--cube-mm must be > 0, --crop-size >= 8 and --pca-components >= 0")
    return _intrinsics(args), _check_output(args.out)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``handpose-synth``; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # "--intrinsics -475,..." would read as an option to argparse: glue a value that looks numeric.
    for k in range(len(argv) - 1):
        if argv[k] == "--intrinsics" and argv[k + 1][:2].lstrip("-")[:1].isdigit():
            argv[k : k + 2] = [f"--intrinsics={argv[k + 1]}"]
            break
    try:
        args = parser.parse_args(argv)
        intrinsics, out = _validate(args)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)

    # Heavy imports only once the arguments are known to be good.
    from tqdm import tqdm

    from handpose_core.codecs.depth_crop import DepthCropCodec
    from handpose_core.data.hdf5_io import write_hdf5
    from handpose_core.data.synthetic import SynthConfig, SyntheticHands

    noise = not args.no_noise
    config = SynthConfig(
        intrinsics=intrinsics,
        left_prob=args.left_prob,
        forearm_prob=args.forearm_prob,
        background_prob=args.background_prob,
        clutter_prob=args.clutter_prob,
        depth_noise=noise,
        edge_dropout=noise,
        render_rgb=not args.no_rgb,
    )
    hands = SyntheticHands(config, seed=args.seed)
    n_test = int(round(args.n * args.test_fraction))
    n_train = args.n - n_test
    splits = {
        "train": (hands[i] for i in range(n_train)),
        "test": (hands[TEST_INDEX_OFFSET + i] for i in range(n_test)),
    }
    attrs = {
        "generator": f"handpose_core.data.synthetic seed={args.seed}",
        "generator_config": repr(config),
        "seed": args.seed,
        "test_index_offset": TEST_INDEX_OFFSET,
    }
    try:
        with tqdm(total=args.n, unit="frame", disable=args.quiet, desc=PROG, file=sys.stderr) as bar:
            counts = write_hdf5(
                out,
                splits,
                codec=DepthCropCodec(cube_mm=args.cube_mm, size=args.crop_size),
                write_raw=not args.no_raw,
                pca_components=args.pca_components,
                attrs=attrs,
                progress=bar.update,
            )
    except (HandPoseError, OSError) as exc:
        print(f"{PROG}: error: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted, nothing written", file=sys.stderr)
        return 130
    if not args.quiet:
        print(f"{PROG}: wrote {out} (train {counts['train']}, test {counts['test']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
