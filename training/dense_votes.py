"""Where a DeepPrior dense head looks: its votes and both heads' skeletons on held-out frames.

For each of ``--frames`` held-out synthetic frames (right hands, by default those whose finger angles
are all drawn at random: the generator's hard half), the estimator finds and crops the hand as the
node would (the hand told; the final, hand-up crop). One network pass on that crop then gives three
tiles in a row:

1. the PCA head's skeleton (the joints a ``head="pca"`` network would give),
2. the dense head's skeleton (the joints the network outputs),
3. the dense head's vote weights for the five fingertips, one colour per finger (thumb red, index
   yellow, middle green, ring blue, little violet), over the crop.

The true joints are green crosses on the first two tiles, and each gives that head's mean 3D joint
error on the frame (one pass on one crop: the estimator's own figures average more crops).

    python -m training.dense_votes --checkpoint runs/X/model.pt --out docs/deep_prior_dense_votes.png
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np
import torch

from handpose_core import HandPoseEstimator
from handpose_core.atomic import write_png
from handpose_core.checkpoint import load_checkpoint
from handpose_core.codecs.depth_crop import DepthCrop, DepthCropCodec
from handpose_core.data.synthetic import SynthConfig, SyntheticHands
from handpose_core.errors import HandPoseError
from handpose_core.estimator import resolve_checkpoint
from handpose_core.keypoints import HAND21
from handpose_core.models import create_model
from handpose_core.pipelines.depth import FINGER_COLOURS, draw_crop
from training.evaluate_deep_prior import TEST_SEED

SCALE = 2  # tile = 128 px crop x 2
TIPS = [HAND21.joint_names.index(n) for n in ("thumb_tip", "index_tip", "middle_tip", "ring_tip", "little_tip")]
TIP_COLOURS = np.asarray(FINGER_COLOURS, np.float32)  # each tip in its finger's colour on the skeletons


def _label(tile: np.ndarray, text: str) -> None:
    cv2.putText(tile, text, (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 255, 255), 1, cv2.LINE_AA)


def _with_truth(tile: np.ndarray, truth_px: np.ndarray) -> np.ndarray:
    for u, v in (truth_px + 0.5) * SCALE - 0.5:
        cv2.drawMarker(tile, (int(round(u)), int(round(v))), (0, 255, 0), cv2.MARKER_CROSS, 7, 1, cv2.LINE_AA)
    return tile


def vote_tile(crop: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(S, S) normalized crop and (5, G, G) fingertip vote weights -> (S*SCALE, S*SCALE, 3) uint8 RGB:
    the crop in grey, each tip's weights (scaled to its own peak) blended in its finger's colour."""
    size = crop.shape[0] * SCALE
    gray = np.clip((1.0 - crop) * 127.5, 0, 255).astype(np.float32)
    rgb = np.repeat(cv2.resize(gray, (size, size), interpolation=cv2.INTER_NEAREST)[..., None], 3, axis=2)
    for w, colour in zip(weights, TIP_COLOURS, strict=True):
        alpha = cv2.resize(w / max(float(w.max()), 1e-9), (size, size), interpolation=cv2.INTER_NEAREST)[..., None]
        rgb = rgb * (1 - 0.7 * alpha) + colour * 0.7 * alpha
    return np.clip(rgb, 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a checkpoint without a dense head)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a DeepPrior checkpoint with head 'dense'")
    p.add_argument("--out", default="docs/deep_prior_dense_votes.png", help="picture to write")
    p.add_argument("--frames", type=int, default=4, help="rows: held-out frames to show")
    p.add_argument("--seed", type=int, default=TEST_SEED, help="generator seed of the held-out frames")
    p.add_argument("--articulation", choices=("random", "any"), default="random",
                   help="random: only hands whose finger angles are all drawn at random; any: every hand")
    args = p.parse_args(argv)
    if args.frames < 1:
        p.error("--frames must be at least 1")
    try:
        blob = load_checkpoint(resolve_checkpoint(args.checkpoint))
        model = create_model(blob["model"]["name"], **blob["model"]["config"])
        model.load_state_dict(blob["state_dict"])
        if getattr(model, "head", None) != "dense":
            raise HandPoseError(f"{args.checkpoint} has no dense head (model config head={model.head!r})")
        est = HandPoseEstimator.from_checkpoint(args.checkpoint, device="cpu", tracking=False, handedness="right")
    except HandPoseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model.eval()
    codec = DepthCropCodec(**blob["meta"]["codec"])
    gen = SyntheticHands(SynthConfig(render_rgb=False), seed=args.seed)
    rows = []
    # about a quarter of the frames are right hands with random fingers; a network that finds no hand
    # at all still ends
    for index in range(50 * args.frames):
        params = gen.sample_params(index)
        if params.is_left or (args.articulation == "random" and params.articulation != "random"):
            continue
        sample = gen[index]
        poses = est.predict(sample.depth_mm, sample.intrinsics)
        if not poses:
            continue
        crop, warp = poses[0].extras["crop"], poses[0].extras["warp"]
        truth_px = np.c_[sample.uv_px, np.ones(len(sample.uv_px))] @ warp.T
        with torch.no_grad():
            features = model.forward_features(torch.from_numpy(crop)[None, None])
            dense, _, pca, _ = model.forward_dense(features)
            weights = model.dense.weights(model.dense_map(features))[0, TIPS].numpy()
        half = (crop.shape[0] - 1) / 2.0
        # the crop as the codec cut it, to take this pass's joints back to the camera frame
        cut = DepthCrop(crop, poses[0].extras["com_xyz_m"].astype(np.float64) * 1000.0, codec.cube_mm, warp,
                        sample.intrinsics)
        tiles = []
        for name, joints in (("PCA head", pca[0].numpy()), ("dense head", dense[0].numpy())):
            err_mm = float(np.linalg.norm(codec.decode_joints(joints, cut) - sample.xyz_m, axis=1).mean() * 1000)
            tile = _with_truth(draw_crop(crop, joints[:, :2] * (crop.shape[0] / 2.0) + half, HAND21, SCALE), truth_px)
            _label(tile, f"{name}: {err_mm:.1f} mm")
            tiles.append(tile)
        tile = vote_tile(crop, weights)
        _label(tile, f"fingertip votes (frame {index})")
        tiles.append(tile)
        rows.append(np.concatenate(tiles, axis=1))
        if len(rows) == args.frames:
            break
    if not rows:
        print(f"error: {args.checkpoint} found no hand in {50 * args.frames} frames", file=sys.stderr)
        return 2
    write_png(args.out, cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out}: {len(rows)} frames of seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
