"""Evaluate a CPM checkpoint on held-out synthetic hands: PCK, AUC, EPE, per joint and per stage.

Examples::

    python -m training.evaluate_cpm handpose_core/weights/cpm_light_synth.pt
    python -m training.evaluate_cpm runs/cpm_light/model.pt --frames 2000 --pipeline-frames 300

Protocols:

- ``crops`` (the headline): a square crop around the ground-truth 2D keypoints (1.5 x their
  extent), as in the CMU hand evaluations; every stage's belief maps are decoded, so the per-stage
  table shows what the later stages add.
- ``pipeline``: full 640x480 frames through :class:`HandPoseEstimator` without any label: box from
  the aligned depth image's nearest object (``pipeline_depth``) and from the RGB scale search alone
  (``pipeline_search``). A frame without a detection counts every joint as a miss.
- ``tracking``: moving-hand sequences (RGB only) through one estimator each, as the node runs it:
  the scale search finds the hand, then each frame's box follows the last keypoints. Besides
  PCK/EPE, ``off_hand`` is the share of reported hands whose mean joint error exceeds the hand's
  own size, i.e. keypoints put on something else (a false positive that tracking then keeps).
- ``hand_free``: crops of hand-free parts of the held-out frames (background, clutter, forearm) at
  hand scale and up to 3x it; ``false_positive@t`` is the share whose mean joint confidence reaches
  t (0.2 reports a hand, 0.3 keeps tracking it).

PCK@0.2 is normalized by max(w, h) of the GT keypoints' bounding box; AUC is over thresholds
0..0.5; EPE is in source-image pixels. Writes a JSON, a PCK plot and a stage-by-stage picture of
the belief maps of one frame (all drawn with OpenCV). ``--record`` also stores the headline
figures, with this command line, in the checkpoint's ``meta["held_out"]`` (rewritten atomically;
weights unchanged), as the packaged weights carry them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from handpose_core.atomic import write_json, write_png
from handpose_core.checkpoint import load_checkpoint, update_meta
from handpose_core.codecs.belief_maps import BeliefMapCodec, InputSpec
from handpose_core.keypoints import HAND21
from handpose_core.models import create_model
from handpose_core.models.cpm import MirrorAveraged
from handpose_core.pipelines.rgb import draw_skeleton
from handpose_core.training.cpm_task import (
    DataConfig,
    cached_crop_set,
    evaluate_crop_set,
    evaluate_hand_free,
    held_out_crops,
    predict_crops,
)
from handpose_core.training.metrics_2d import bbox_size, evaluate_2d, plot_pck
from training import ARTICULATION_HALVES, HANDEDNESS_PROTOCOLS, HandTally, articulation_groups, command_line, hand_of


def load_model(path: str | Path, device: torch.device):
    """A CPM checkpoint -> (eval-mode model, belief-map codec, input spec, blob); the model is wrapped
    in :class:`MirrorAveraged` where the checkpoint's ``pipeline.flip_average`` says the RGB pipeline
    runs it so, so that the crop figures are the pipeline's."""
    blob = load_checkpoint(path)
    model = create_model(blob["model"]["name"], **blob["model"]["config"])
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    meta = blob["meta"]
    if meta.get("pipeline", {}).get("flip_average"):  # as the RGB pipeline runs it
        model = MirrorAveraged(model).eval()
    return model, BeliefMapCodec(**meta["codec"]), InputSpec(**meta["input"]), blob


def time_model(model, size: int, runs: int = 50) -> dict:
    """Median / p90 forward time at batch 1, ms (no_grad, current thread count)."""
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            ts.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": float(np.median(ts)), "p90_ms": float(np.percentile(ts, 90)), "input": size,
            "threads": torch.get_num_threads()}


def pipeline_eval(checkpoint: str, seed: int, frames: int, handedness: str = "known") -> dict:
    """End-to-end figures on full frames (see module docstring)."""
    from handpose_core import HandPoseEstimator
    from handpose_core.data.synthetic import SyntheticHands

    gen = SyntheticHands(seed=seed)
    est = HandPoseEstimator.from_checkpoint(checkpoint, device="cpu")
    out = {}
    for mode in ("depth", "search"):
        preds, gts, times, found, hands, articulations = [], [], [], 0, HandTally(handedness), []
        for i in range(frames):
            s = gen[i]
            articulations.append(s.params.articulation)
            # each frame on its own (setting the hand forgets the track): no tracking between unrelated frames
            est.handedness = hand_of(s.is_left, handedness)
            t0 = time.perf_counter()
            if mode == "depth":
                poses = est.predict(s.rgb, s.intrinsics.as_tuple(), depth=s.depth_mm)
            else:
                poses = est.predict(s.rgb)
            times.append((time.perf_counter() - t0) * 1000)
            found += bool(poses)
            hands.add(poses, s.is_left)
            preds.append(poses[0].uv_px if poses else np.full((21, 2), np.nan, np.float32))
            gts.append(s.uv_px)
        pred_uv, gt_uv = np.stack(preds), np.stack(gts)
        r = evaluate_2d(pred_uv, gt_uv, joint_names=HAND21.joint_names)
        r.pop("per_joint")
        # PCK@0.2 per prior of the fingers (see training.articulation_groups): the halves differ
        r["by_articulation"] = {g: evaluate_2d(pred_uv[m], gt_uv[m])["pck@0.2"]
                                for g, m in articulation_groups(articulations).items()
                                if g in ARTICULATION_HALVES and m.any()}
        r["detected"] = found / frames
        r["latency_median_ms"] = float(np.median(times))
        r.update(hands.figures())
        out[f"pipeline_{mode}"] = r
    return out


def tracking_eval(checkpoint: str, seed: int, sequences: int, frames: int, handedness: str = "known") -> dict:
    """The ``tracking`` protocol (see module docstring) on ``sequences`` x ``frames`` frames."""
    from handpose_core import HandPoseEstimator
    from handpose_core.data.synthetic import SyntheticHands

    gen = SyntheticHands(seed=seed)
    est = HandPoseEstimator.from_checkpoint(checkpoint, device="cpu")
    preds, gts, hands = [], [], HandTally(handedness)
    for q in tqdm(range(sequences), desc="tracking", unit="seq"):
        # one hand per sequence, its first key's (SyntheticHands.trajectory); setting it forgets the track
        est.handedness = hand_of(gen.sample_params(q).is_left, handedness)
        for s in gen.trajectory(frames, start_index=q):
            poses = est.predict(s.rgb)
            hands.add(poses, s.is_left)
            preds.append(poses[0].uv_px if poses else np.full((21, 2), np.nan, np.float32))
            gts.append(s.uv_px)
    pred, gt = np.stack(preds), np.stack(gts)
    err = np.linalg.norm(pred - gt, axis=2).mean(axis=1)  # (N,) mean joint error, NaN: no hand reported
    found = np.isfinite(err)
    per_seq = [float(e[np.isfinite(e)].mean()) if np.isfinite(e).any() else float("nan")
               for e in err.reshape(sequences, frames)]
    r = evaluate_2d(pred, gt, joint_names=HAND21.joint_names)
    r.pop("per_joint")
    r.update(sequences=sequences, frames_per_sequence=frames, detected=float(found.mean()),
             off_hand=float((err[found] > bbox_size(gt)[found]).sum() / max(found.sum(), 1)),
             per_sequence_epe_px=per_seq, **hands.figures())
    return r


def stage_picture(model, codec, spec, crop: np.ndarray, gt_uv: np.ndarray, path: Path, joint: int = 8) -> Path:
    """Row 1: input crop + GT, then each stage's max over keypoint maps (JET) with its decoded skeleton.
    Row 2: background map of each stage; row 3: one joint's map (default index tip) per stage."""
    uv, conf, maps = predict_crops(model, codec, spec, crop[None], torch.device("cpu"), keep_maps=True)
    cell = 224
    k = len(HAND21.joint_names)

    def panel(img_rgb, title):
        img = cv2.resize(img_rgb, (cell, cell), interpolation=cv2.INTER_NEAREST)
        # white on a dark strip: an outlined label is unreadable at this size over a heat map
        cv2.rectangle(img, (0, 0), (cell - 1, 23), (0, 0, 0), -1)
        cv2.putText(img, title, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        return img

    def heat(m):
        up = codec.upsample(m[None])[0]
        c = cv2.applyColorMap(np.clip(up * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
        return cv2.cvtColor(c, cv2.COLOR_BGR2RGB)

    scale = cell / crop.shape[0]
    first = panel(crop, "input + GT")
    draw_skeleton(first, gt_uv * scale + (scale - 1) / 2, None, HAND21.edges)
    blank = np.full_like(first, 255)
    rows = [[first], [panel(crop, "background maps")], [panel(crop, f"{HAND21.joint_names[joint]} map")]]
    for t, m in enumerate(maps):
        m = m[0]
        err = np.linalg.norm(uv[t, 0] - gt_uv, axis=1)
        over = (0.45 * crop + 0.55 * heat(m[:k].max(axis=0))).astype(np.uint8)
        p = panel(over, f"stage {t + 1}: EPE {err.mean():.1f}px")
        draw_skeleton(p, uv[t, 0] * scale + (scale - 1) / 2, None, HAND21.edges, thickness=1)
        rows[0].append(p)
        rows[1].append(panel(heat(m[k]), f"stage {t + 1} background"))
        rows[2].append(panel((0.45 * crop + 0.55 * heat(m[joint])).astype(np.uint8),
                             f"stage {t + 1} conf {conf[t, 0, joint]:.2f}"))
    del blank
    grid = np.vstack([np.hstack(r) for r in rows])
    write_png(path, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m training.evaluate_cpm", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="CPM checkpoint (.pt) or default:rgb")
    p.add_argument("--seed", type=int, default=DataConfig.eval_seed, help="held-out generator seed")
    p.add_argument("--frames", type=int, default=1000, help="held-out frames for the crop protocol")
    p.add_argument("--pipeline-frames", type=int, default=200, help="full frames through the estimator (0 = skip)")
    p.add_argument("--sequences", type=int, default=20,
                   help="moving-hand sequences for the tracking protocol (0 = skip)")
    p.add_argument("--sequence-frames", type=int, default=60, help="frames per tracking sequence")
    p.add_argument("--hand-free", type=int, default=500, help="held-out frames to cut hand-free crops from (0 = skip)")
    p.add_argument("--cache-dir", default=DataConfig.cache_dir)
    p.add_argument("--json", default="docs/cpm_eval.json", help="result JSON")
    p.add_argument("--plot", default="docs/cpm_pck.png", help="PCK curve PNG")
    p.add_argument("--stages-png", default="docs/cpm_stages.png", help="stage-by-stage belief maps of one frame")
    p.add_argument("--stage-frame", type=int, default=0, help="held-out frame shown in the stages picture")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--handedness", choices=HANDEDNESS_PROTOCOLS, default="known",
                   help="for a network trained on right hands, in the pipeline and tracking protocols: "
                        "known = each frame's own hand is told (as OpenPose's body detector tells its "
                        "hand network); auto = the estimator decides (the crop protocol reports both)")
    p.add_argument("--record", action="store_true",
                   help="also store the headline figures in the checkpoint's meta['held_out']")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from handpose_core.estimator import resolve_checkpoint

    ckpt = str(resolve_checkpoint(args.checkpoint))
    model, codec, spec, blob = load_model(ckpt, torch.device("cpu"))
    d = DataConfig()
    t0 = time.perf_counter()
    data = cached_crop_set("synthetic", args.seed, args.frames, d.cache_size, d.cache_margin, args.cache_dir, d.workers)
    t_data = time.perf_counter() - t0
    t0 = time.perf_counter()
    right = blob["meta"].get("pipeline", {}).get("hands") == "right"
    stages: list[dict] = []  # each stage's evaluate_2d result, for the curves
    crops_result = evaluate_crop_set(model, codec, spec, data, torch.device("cpu"), "known" if right else "none",
                                     stages)
    t_eval = time.perf_counter() - t0
    result = {
        "checkpoint": args.checkpoint, "model": blob["model"], "held_out": {"source": "synthetic", "seed": args.seed,
                                                                 "frames": len(data)},
        "crops": crops_result, "timing": {"model_forward": time_model(model, spec.size), "eval_seconds": t_eval,
                                          "data_seconds": t_data},
        "hands": "right" if right else "both", "handedness": args.handedness if right else "not used",
    }
    if right:  # the hand not told: each crop run both ways, the more confident kept
        auto = evaluate_crop_set(model, codec, spec, data, torch.device("cpu"), "auto")
        result["crops_auto"] = {k: auto[k] for k in ("pck@0.2", "auc", "epe_mean_px", "handedness_accuracy")}
    if args.pipeline_frames > 0:
        result.update(pipeline_eval(ckpt, args.seed, args.pipeline_frames, args.handedness))
    if args.sequences > 0:
        result["tracking"] = tracking_eval(ckpt, args.seed, args.sequences, args.sequence_frames, args.handedness)
    if args.hand_free > 0:
        free = cached_crop_set("synthetic", args.seed, args.hand_free, d.cache_size, d.cache_margin, args.cache_dir,
                               d.workers, negative=True)
        result["hand_free"] = evaluate_hand_free(model, codec, spec, free, torch.device("cpu"),
                                                 cache_margin=d.cache_margin)
    # curves: every stage (crop protocol) and the pipelines
    curves = {f"stage {t + 1}": r for t, r in enumerate(stages)}
    for key, label in (("pipeline_depth", "pipeline (depth)"), ("pipeline_search", "pipeline (search)"),
                       ("tracking", "tracked sequences")):
        if key in result:
            curves[label] = result[key]
    plot_pck(curves, args.plot, title=f"{blob['model']['name']}: PCK on {len(data)} held-out synthetic hands")
    crop, gt, _ = held_out_crops(data, spec.size, mirror=data.is_left if right else False, indices=[args.stage_frame])
    stage_picture(model, codec, spec, crop[0], gt[0], Path(args.stages_png))
    write_json(args.json, result)
    table = ["| stage | PCK@0.2 | AUC 0-0.5 | EPE px |", "|---|---|---|---|"]
    for name, s in crops_result["per_stage"].items():
        table.append(f"| {name} | {s['pck@0.2']:.4f} | {s['auc']:.4f} | {s['epe_mean_px']:.2f} |")
    print("\n".join(table))
    printed: dict = {"crops": {k: crops_result[k] for k in ("pck@0.2", "auc", "epe_mean_px", "epe_median_px",
                                                            "pck@0.2_visible")}}
    if right:
        printed["crops_auto"] = result["crops_auto"]
    for k in ("pipeline_depth", "pipeline_search"):
        if k in result:
            printed[k] = {kk: result[k][kk] for kk in ("pck@0.2", "auc", "detected", "latency_median_ms",
                                                        "handedness_accuracy", "by_articulation") if kk in result[k]}
    if "tracking" in result:
        printed["tracking"] = {k: result["tracking"][k] for k in ("pck@0.2", "epe_mean_px", "detected", "off_hand",
                                                                  "handedness_accuracy") if k in result["tracking"]}
    if "hand_free" in result:
        printed["hand_free"] = result["hand_free"]
    printed["model_forward"] = result["timing"]["model_forward"]
    print(json.dumps(printed, indent=2))
    if args.record:
        update_meta(ckpt, held_out=headline(result, command_line("training.evaluate_cpm", argv)))
        print(f"recorded the figures in {ckpt}")
    return result


def headline(result: dict, command: str) -> dict:
    """The figures a checkpoint carries in ``meta["held_out"]``: the crop protocol's PCK/AUC/EPE (the
    model as the RGB pipeline runs it) and per-stage PCK, PCK@0.2 of whichever other protocols ran,
    rounded, and the command that made them."""
    crops = result["crops"]
    out = {**result["held_out"],
           "protocol": "crop around the GT 2D keypoints, margin 1.5, model as the RGB pipeline runs it"
                       + ("; left hands mirrored (the hand told)" if result.get("hands") == "right" else "")
                       + "; PCK normalized by max(bbox w, h) of the GT keypoints",
           **{k: round(crops[k], 4) for k in ("pck@0.2", "auc", "epe_mean_px", "pck@0.2_visible")},
           **{f"{name}_pck@0.2": round(s["pck@0.2"], 4) for name, s in crops["per_stage"].items()}}
    if "crops_auto" in result:
        out["crops_auto_pck@0.2"] = round(result["crops_auto"]["pck@0.2"], 4)
    out["handedness"] = result.get("handedness", "not used")
    for key in ("pipeline_depth", "pipeline_search", "tracking"):
        if key in result:
            out[f"{key}_pck@0.2"] = round(result[key]["pck@0.2"], 4)
    if "tracking" in result:
        out["tracking_off_hand"] = round(result["tracking"]["off_hand"], 4)
    if "hand_free" in result:
        out.update({f"hand_free_{k}": round(v, 4) for k, v in result["hand_free"].items() if k != "crops"})
    out["command"] = command
    return out


if __name__ == "__main__":
    main()
