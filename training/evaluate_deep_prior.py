"""Evaluate a DeepPrior checkpoint on held-out synthetic frames through the full inference path.

Each frame goes through ``HandPoseEstimator.predict`` exactly as in the ROS node (hand search on the
whole depth frame, crop, model, decode), so the figures include localisation failures. Writes
OUT/eval.json (mean / per-joint error in mm, the DeepPrior-papers curve "fraction of frames whose
worst joint is within d mm", d = 0..80, detection rate; the same after a per-frame Procrustes
alignment, PA-MPJPE, which leaves the articulation's share of the error; ``by_articulation``: the
same for each prior the generator drew the fingers from: ``gestures``, and ``random`` with every
angle uniform within its limits, see :func:`training.articulation_groups`) and OUT/eval.png (the
curves of all frames, aligned, and of the two halves). ``visibility``: for all frames and each half,
the error of the joints the camera sees and of the hidden ones, and how far the worst-joint figure
would rise were either kind exact (:func:`handpose_core.training.metrics.visibility_figures`). For a
checkpoint with a confidence head (``train_deep_prior --fit-confidence``) the JSON also gets ``confidence``
(:func:`handpose_core.training.metrics.confidence_figures`: how well the published per-joint
confidence foretells each joint's error, and the frames kept when the least confident are dropped),
drawn in OUT/NAME_confidence.png.

The held-out frames are unrelated, so each is searched on its own (no tracking). With
``--sequences N`` the JSON also gets ``tracking``: N moving-hand sequences
(``SyntheticHands.trajectory``, 30 fps) run as the node runs a camera stream, once with tracking
(the previous frame's joints place the crop; see :mod:`handpose_core.pipelines.depth`) and once
with every frame searched: mean error, worst joint within 40 mm, predict time and the share of
frames that took the tracked path.

    python -m training.evaluate_deep_prior --checkpoint runs/deep_prior/model.pt --n-test 2000 --out docs

``--record`` also stores the headline figures, with this command line, in the checkpoint's
``meta["held_out"]`` (the file is rewritten atomically; weights unchanged), as the packaged
weights carry them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from handpose_core import HandPoseEstimator
from handpose_core.atomic import write_json, write_png
from handpose_core.checkpoint import update_meta
from handpose_core.data.synthetic import SynthConfig, SyntheticHands
from handpose_core.errors import HandPoseError
from handpose_core.estimator import resolve_checkpoint
from handpose_core.training.metrics import (
    confidence_figures,
    joint_errors,
    plot_curves,
    pose_metrics,
    pose_metrics_by_group,
    visibility_figures,
)
from training import (
    ARTICULATION_HALVES,
    ARTICULATION_KEYS,
    HANDEDNESS_PROTOCOLS,
    HandTally,
    articulation_groups,
    command_line,
    hand_of,
)

TEST_SEED = 1000  # training uses small data seeds; held-out frames come from this one


def evaluate(checkpoint: str, n_test: int, seed: int = TEST_SEED, device: str = "cpu",
             progress: bool = True, handedness: str = "known") -> dict:
    """Figures of ``checkpoint`` on ``n_test`` synthetic frames of generator ``seed`` (see module doc)."""
    # unrelated frames: no tracking from one to the next
    est = HandPoseEstimator.from_checkpoint(checkpoint, device=device, tracking=False)
    gen = SyntheticHands(SynthConfig(render_rgb=False), seed=seed)
    preds, gts, found, articulations, confidences, visible = [], [], [], [], [], []
    t_predict, hands = [], HandTally(handedness)
    for i in tqdm(range(n_test), desc="evaluate", disable=not progress, unit="frame"):
        sample = gen[i]
        est.handedness = hand_of(sample.is_left, handedness)
        t0 = time.perf_counter()
        poses = est.predict(sample.depth_mm, sample.intrinsics)
        t_predict.append(time.perf_counter() - t0)
        gts.append(sample.xyz_m * 1000.0)
        articulations.append(sample.params.articulation)
        visible.append(sample.visible)
        found.append(bool(poses))
        hands.add(poses, sample.is_left)
        preds.append(poses[0].xyz_m * 1000.0 if poses else np.full_like(sample.xyz_m, np.nan))
        confidences.append(poses[0].confidence if poses else np.zeros(len(sample.xyz_m), np.float32))
    pred, gt, found = np.asarray(preds), np.asarray(gts), np.asarray(found)
    if not found.any():
        raise HandPoseError("the model found no hand in any test frame")
    # a frame without a detection counts as a failure at every threshold, of both curves
    figures = pose_metrics(pred[found], gt[found], est.joint_names, missed=int((~found).sum()))
    figures.update({
        "detection_rate": float(found.mean()), "test_seed": seed,
        "checkpoint": str(checkpoint), "model": est.model_name,
        "predict_ms_p50": float(np.median(t_predict) * 1e3), "device": str(est.device),
        "hands": est.hands, "handedness": handedness if est.hands == "right" else "not used",
    })
    figures.update(hands.figures())
    # the generator draws half its hands from gesture priors and half with every finger angle uniform
    # within its limits; the two halves score far apart, so each is reported on its own
    art_groups = articulation_groups(articulations)
    by_group = pose_metrics_by_group(pred, gt, found, art_groups, est.joint_names)
    figures["by_articulation"] = {g: {k: f[k] for k in ARTICULATION_KEYS if k in f} for g, f in by_group.items()}
    # what the camera sees against what it does not: is a miss a hidden joint guessed wrong, or a seen one?
    visible = np.asarray(visible)
    groups = {"all": np.ones(len(found), bool), **{g: art_groups[g] for g in ARTICULATION_HALVES}}
    figures["visibility"] = {g: visibility_figures(pred[m & found], gt[m & found], visible[m & found], est.joint_names)
                             for g, m in groups.items() if (m & found).any()}
    within_mm = est.checkpoint_meta.get("inference", {}).get("confidence_mm")
    if within_mm is not None:  # a network with a confidence head: how well its confidence foretells the error
        figures["confidence"] = confidence_figures(np.asarray(confidences)[found], joint_errors(pred[found], gt[found]),
                                                   float(within_mm))
    return figures


def confident_half(confidence: dict) -> tuple[str, dict]:
    """(the coverage key "frames_within_<frame_mm>mm", the coverage row of the more confident half of the
    frames) of ``figures["confidence"]``."""
    key = f"frames_within_{confidence['frame_mm']:g}mm"
    return key, next(r for r in confidence["coverage"] if abs(r["kept"] - 0.5) < 1e-6)


def plot_confidence(figures: dict) -> np.ndarray:
    """(H, 2W, 3) uint8 BGR: the confidence's calibration (left) and the frames kept by it (right)."""
    c = figures["confidence"]
    bins = c["calibration"]
    reliability = plot_curves(
        {"joints": ([100 * b["mean_confidence"] for b in bins], [b["within_share"] for b in bins]),
         "perfectly calibrated": ([0, 100], [0.0, 1.0])},
        f"joint confidence: AUROC {c['joint_auroc']:.2f}",
        x_label="published joint confidence (%)", y_label=f"joints within {c['within_mm']:g} mm (%)")
    key, _ = confident_half(c)
    kept = plot_curves(
        {"kept frames": ([100 * r["kept"] for r in c["coverage"]], [r[key] for r in c["coverage"]])},
        f"least confident frames dropped: AUROC {c['frame_auroc']:.2f}",
        x_label="frames kept, most confident first (%)",
        y_label=f"kept frames, worst joint within {c['frame_mm']:g} mm (%)")
    return np.hstack([reliability, kept])


def tracking_eval(checkpoint: str, sequences: int, frames: int, seed: int = TEST_SEED, device: str = "cpu",
                  progress: bool = True, handedness: str = "known") -> dict:
    """The ``tracking`` protocol (module doc): {"tracked": figures, "per_frame": figures, ...}."""
    gen = SyntheticHands(SynthConfig(render_rgb=False), seed=seed)
    streams = [list(gen.trajectory(frames, start_index=q)) for q in range(sequences)]
    out: dict = {"sequences": sequences, "frames_per_sequence": frames, "seed": seed}
    for mode, tracking in (("tracked", True), ("per_frame", False)):
        est = HandPoseEstimator.from_checkpoint(checkpoint, device=device, tracking=tracking)
        errors, times, tracked, hands = [], [], 0, HandTally(handedness)
        for stream in tqdm(streams, desc=f"sequences, {mode}", disable=not progress, unit="seq"):
            est.handedness = hand_of(stream[0].is_left, handedness)  # one hand per sequence; resets
            for s in stream:
                t0 = time.perf_counter()
                poses = est.predict(s.depth_mm, s.intrinsics)
                times.append(time.perf_counter() - t0)
                hands.add(poses, s.is_left)
                if poses:
                    tracked += poses[0].extras.get("box_source") == "track"
                    errors.append(np.linalg.norm(poses[0].xyz_m - s.xyz_m, axis=1) * 1000.0)
                else:
                    errors.append(np.full(len(s.xyz_m), np.inf))
        err = np.stack(errors)
        found = np.isfinite(err).all(axis=1)
        out[mode] = {"mean_error_mm": float(err[found].mean()) if found.any() else float("nan"),
                     "frames_within_40mm": float((err.max(axis=1) <= 40).mean()),
                     "detection_rate": float(found.mean()), "tracked_share": tracked / len(err),
                     "predict_ms_p50": float(np.median(times) * 1e3),
                     "predict_ms_p95": float(np.percentile(times, 95) * 1e3), **hands.figures()}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint path or default:depth")
    p.add_argument("--n-test", type=int, default=2000, help="held-out synthetic frames")
    p.add_argument("--seed", type=int, default=TEST_SEED, help="generator seed of the held-out frames")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", default="runs/eval", help="folder for eval.json and eval.png")
    p.add_argument("--name", default="eval", help="file stem of the outputs")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = default)")
    p.add_argument("--sequences", type=int, default=0,
                   help="also run this many moving-hand sequences with and without tracking (0 = off)")
    p.add_argument("--sequence-frames", type=int, default=60, help="frames per sequence (30 fps)")
    p.add_argument("--handedness", choices=HANDEDNESS_PROTOCOLS, default="known",
                   help="for a network trained on right hands: known = each frame's own hand is told "
                        "(as on the one-hand benchmarks NYU, ICVL, MSRA); auto = the estimator decides")
    p.add_argument("--record", action="store_true",
                   help="also store the headline figures in the checkpoint's meta['held_out']")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n_test <= 0:
        print("error: --n-test must be > 0", file=sys.stderr)
        return 2
    try:
        figures = evaluate(args.checkpoint, args.n_test, args.seed, args.device, not args.no_progress,
                           args.handedness)
        if args.sequences > 0:
            figures["tracking"] = tracking_eval(args.checkpoint, args.sequences, args.sequence_frames,
                                                args.seed + 1, args.device, not args.no_progress, args.handedness)
    except HandPoseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)  # the atomic writers create it
    write_json(out / f"{args.name}.json", figures)
    title = (f"{figures['model']}: mean {figures['mean_error_mm']:.1f} mm, "
             f"{figures['frames_within_40mm']:.0%} of frames within 40 mm (n={figures['n_frames']})")
    curves = {"all frames": (figures["thresholds_mm"], figures["fraction_within"]),
              "all, Procrustes-aligned": (figures["thresholds_mm"], figures["pa_fraction_within"])}
    by_art = figures["by_articulation"]
    for group, label in (("gestures", "gesture hands"), ("random", "random fingers")):
        r = by_art.get(group, {})
        if "fraction_within" in r:
            curves[f"{label} ({r['n_frames']})"] = (figures["thresholds_mm"], r["fraction_within"])
    img = plot_curves(curves, title)
    write_png(out / f"{args.name}.png", img)
    if "confidence" in figures:
        write_png(out / f"{args.name}_confidence.png", plot_confidence(figures))
    print(f"mean error {figures['mean_error_mm']:.2f} mm (detected frames), detection {figures['detection_rate']:.1%}, "
          f"worst joint within 40 mm: {figures['frames_within_40mm']:.1%}; Procrustes-aligned "
          f"{figures['pa_mean_error_mm']:.2f} mm, {figures['pa_frames_within_40mm']:.1%}"
          + (f", the hand's own taken in {figures['handedness_accuracy']:.1%}" if "handedness_accuracy" in figures
             else "") + f"; wrote {out}/{args.name}.json/.png")
    for group in ARTICULATION_HALVES:
        if "mean_error_mm" in by_art.get(group, {}):
            r = by_art[group]
            print(f"  {group} ({r['n_frames']} frames): mean error {r['mean_error_mm']:.2f} mm, worst joint within "
                  f"40 mm {r['frames_within_40mm']:.1%}; Procrustes-aligned {r['pa_mean_error_mm']:.2f} mm, "
                  f"{r['pa_frames_within_40mm']:.1%}")
    for group, v in figures.get("visibility", {}).items():
        print(f"  {group}, seen / hidden joints ({v['hidden_share']:.0%} hidden): {v['visible_mean_mm']:.2f} / "
              f"{v['hidden_mean_mm']:.2f} mm; worst joint within 40 mm were the seen ones exact "
              f"{v['frames_within_40mm_visible_exact']:.1%}, were the hidden ones "
              f"{v['frames_within_40mm_hidden_exact']:.1%}")
    if "confidence" in figures:
        c = figures["confidence"]
        key, half = confident_half(c)
        print(f"confidence: joints within {c['within_mm']:g} mm told apart with AUROC {c['joint_auroc']:.3f}; "
              f"frames by their least confident joint, AUROC {c['frame_auroc']:.3f}; the most confident half "
              f"of the frames: worst joint within {c['frame_mm']:g} mm {half[key]:.1%}, "
              f"mean error {half['mean_error_mm']:.2f} mm")
    for mode, r in figures.get("tracking", {}).items():
        if isinstance(r, dict):
            print(f"sequences, {mode}: mean error {r['mean_error_mm']:.2f} mm, within 40 mm "
                  f"{r['frames_within_40mm']:.1%}, tracked {r['tracked_share']:.0%} of frames, "
                  f"predict p50 {r['predict_ms_p50']:.2f} ms (p95 {r['predict_ms_p95']:.2f})"
                  + (f", the hand's own taken in {r['handedness_accuracy']:.1%}" if "handedness_accuracy" in r else ""))
    if args.record:
        path = resolve_checkpoint(args.checkpoint)
        update_meta(path, held_out=headline(figures, command_line("training.evaluate_deep_prior", argv)))
        print(f"recorded the figures in {path}")
    return 0


def headline(figures: dict, command: str) -> dict:
    """The figures a checkpoint carries in ``meta["held_out"]``: the headline numbers of
    :func:`evaluate` (and of :func:`tracking_eval` if run), rounded, and the command that made them."""
    keys = ("n_frames", "mean_error_mm", "median_error_mm", "frames_within_20mm", "frames_within_40mm",
            "frames_within_80mm", "pa_mean_error_mm", "detection_rate", "test_seed", "handedness")
    out = {k: round(figures[k], 4) if isinstance(figures[k], float) else figures[k] for k in keys}
    out["by_articulation"] = {g: {k: round(r[k], 4) for k in ("mean_error_mm", "frames_within_40mm")}
                              for g, r in figures.get("by_articulation", {}).items()
                              if g in ARTICULATION_HALVES and "mean_error_mm" in r}
    if "confidence" in figures:
        c = figures["confidence"]
        key, half = confident_half(c)
        out["confidence"] = {"within_mm": c["within_mm"], "joint_auroc": round(c["joint_auroc"], 4),
                             "frame_auroc": round(c["frame_auroc"], 4),
                             f"most_confident_half_{key}": round(half[key], 4)}
    if "tracking" in figures:
        t = figures["tracking"]
        out["sequences"] = {"sequences": t["sequences"], "frames_per_sequence": t["frames_per_sequence"],
                            "seed": t["seed"],
                            **{mode: {k: round(t[mode][k], 4) for k in ("mean_error_mm", "frames_within_40mm",
                                                                         "tracked_share")}
                               for mode in ("tracked", "per_frame")}}
    out["command"] = command
    return out


if __name__ == "__main__":
    sys.exit(main())
