"""Run the depth estimator on the real RealSense SR305 frames and save a picture of crops + skeletons.

The SR305 frames (shared/data/sr305: 640x480 uint16 PNG, 0.125 mm per unit, f = 476.007 px,
c = (313.683, 242.755)) have no joint labels: this checks by eye that the hand search finds the
hand on a real sensor and that the predicted skeleton is plausible.

    python -m training.sr305_demo --checkpoint default:depth --data ../shared/data/sr305 --out docs/deep_prior_sr305.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from handpose_core import HandPoseEstimator
from handpose_core.atomic import write_png
from handpose_core.camera import SR305_INTRINSICS
from handpose_core.errors import HandPoseError

SR305_UNIT_M = 0.125e-3  # metres per depth unit


def load_sr305(path: Path) -> np.ndarray:
    """(H, W) float32 depth in metres from one SR305 PNG (0 = no return)."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16 or raw.ndim != 2:
        raise HandPoseError(f"{path} is not a 16-bit single-channel depth PNG")
    return raw.astype(np.float32) * SR305_UNIT_M


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="default:depth", help="DeepPrior checkpoint path or default:depth")
    p.add_argument("--data", default="../shared/data/sr305", help="folder holding the SR305 sequences")
    p.add_argument("--out", default="docs/deep_prior_sr305.png", help="picture to write")
    p.add_argument("--columns", type=int, default=5, help="tiles per row")
    p.add_argument("--handedness", choices=("right", "left", "auto"), default="right",
                   help="the hand in the frames (the stored SR305 frames are of a right hand, per their README)")
    args = p.parse_args(argv)
    frames = sorted(Path(args.data).glob("*/*.png"), key=lambda f: (f.parent.name, int(f.stem)))
    if not frames:
        print(f"error: no PNG frames under {args.data}", file=sys.stderr)
        return 2
    # a search on every frame
    est = HandPoseEstimator.from_checkpoint(args.checkpoint, device="cpu", tracking=False, handedness=args.handedness)
    tiles, found = [], 0
    for path in frames:
        depth_m = load_sr305(path)
        poses = est.predict(depth_m, SR305_INTRINSICS)
        found += bool(poses)
        tile = cv2.cvtColor(est.debug_image(depth_m, poses), cv2.COLOR_RGB2BGR)
        tile = cv2.resize(tile, (256, 256), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, f"{path.parent.name[-6:]}/{path.stem}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    while len(tiles) % args.columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + args.columns]) for i in range(0, len(tiles), args.columns)]
    write_png(args.out, np.vstack(rows))
    print(f"hand found on {found}/{len(frames)} frames; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
