"""3D pose metrics as in the DeepPrior papers: mean joint error, per-joint error, worst-joint curve.

All functions take joints in the same metric unit (mm here) and frame: (N, J, 3) predictions and
ground truth. NaN ground-truth joints (unknown) are left out of the means and do not count as the
worst joint of a frame.

Beside the errors as predicted, :func:`pose_metrics` gives them after a per-frame Procrustes
alignment (PA-MPJPE, as FreiHAND and HO-3D report): what is left once the hand's placement,
orientation and size are taken out is the error of its articulation.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def joint_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N, J, 3), (N, J, 3) -> (N, J) Euclidean distance per joint (NaN where gt is NaN)."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred and gt must both be (N, J, 3), got {pred.shape} and {gt.shape}")
    return np.linalg.norm(pred - gt, axis=-1)


def fraction_within(errors: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """(N, J) errors -> (len(thresholds),) fraction of frames whose *worst* joint is within each threshold."""
    worst = np.nanmax(errors, axis=1)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    return (worst[None, :] <= thresholds[:, None]).mean(axis=1)


def procrustes_align(pred: np.ndarray, gt: np.ndarray, scale: bool = True) -> np.ndarray:
    """(N, J, 3) predictions -> (N, J, 3) each frame moved by the similarity transform (rotation,
    translation and, with ``scale``, a uniform scale) that best fits it to ``gt`` in least squares.

    Umeyama's solution (IEEE PAMI 1991), the rotation kept proper (det +1): a mirrored hand is not a
    fit. scipy's ``orthogonal_procrustes`` allows reflections, hence the few lines here. Joints whose
    ground truth is NaN take no part in the fit; a frame with fewer than 3 known joints is left as is.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    joint_errors(pred, gt)  # shape check
    aligned = pred.copy()
    for n, (p, g) in enumerate(zip(pred, gt, strict=True)):
        known = np.isfinite(g).all(axis=1) & np.isfinite(p).all(axis=1)
        if known.sum() < 3:
            continue
        p_mean, g_mean = p[known].mean(axis=0), g[known].mean(axis=0)
        pc, gc = p[known] - p_mean, g[known] - g_mean
        u, sing, vt = np.linalg.svd(pc.T @ gc)  # (3, 3) cross-covariance
        d = np.sign(np.linalg.det(u @ vt)) or 1.0
        rotation = u @ np.diag([1.0, 1.0, d]) @ vt  # row vectors: p @ rotation
        var = (pc**2).sum()
        s = (sing[0] + sing[1] + d * sing[2]) / var if scale and var > 0 else 1.0
        aligned[n] = s * (p - p_mean) @ rotation + g_mean
    return aligned


def pose_metrics(pred_mm: np.ndarray, gt_mm: np.ndarray, joint_names: Sequence[str] | None = None,
                 max_threshold_mm: int = 80, missed: int = 0) -> dict:
    """Summary of (N, J, 3) mm predictions against ground truth; plain Python, JSON-ready.

    ``missed``: further frames without a prediction (no hand found). They count as failures at every
    threshold of the curves and ``frames_within_*`` (fractions of N + missed frames) and are left
    out of the mean errors.

    Keys: ``n_frames`` (N + missed), ``mean_error_mm`` (over all joints and predicted frames),
    ``median_error_mm``, ``mean_worst_error_mm`` (per-frame maximum, averaged), ``per_joint_mm``
    {name: mean}, ``thresholds_mm`` [0..max], ``fraction_within`` (worst joint <= d, one per
    threshold), ``frames_within_20mm/40mm/80mm``; and after :func:`procrustes_align`:
    ``pa_mean_error_mm`` (PA-MPJPE), ``pa_fraction_within`` (the curve), ``pa_frames_within_40mm``.
    """
    errors = joint_errors(pred_mm, gt_mm)
    pa_errors = joint_errors(procrustes_align(pred_mm, gt_mm), gt_mm)
    names = list(joint_names) if joint_names is not None else [str(j) for j in range(errors.shape[1])]
    thresholds = list(range(0, max_threshold_mm + 1))
    found_share = errors.shape[0] / (errors.shape[0] + missed)  # a missed frame is within no threshold

    def within(errs: np.ndarray, ds: Sequence[float]) -> list[float]:
        return [float(f) * found_share for f in fraction_within(errs, ds)]

    f20, f40, f80 = within(errors, (20, 40, 80))
    return {
        "n_frames": int(errors.shape[0] + missed),
        "mean_error_mm": float(np.nanmean(errors)),
        "median_error_mm": float(np.nanmedian(errors)),
        "mean_worst_error_mm": float(np.mean(np.nanmax(errors, axis=1))),
        "per_joint_mm": {n: float(v) for n, v in zip(names, np.nanmean(errors, axis=0), strict=True)},
        "thresholds_mm": thresholds,
        "fraction_within": within(errors, thresholds),
        "frames_within_20mm": f20,
        "frames_within_40mm": f40,
        "frames_within_80mm": f80,
        "pa_mean_error_mm": float(np.nanmean(pa_errors)),
        "pa_fraction_within": within(pa_errors, thresholds),
        "pa_frames_within_40mm": within(pa_errors, (40,))[0],
    }


def pose_metrics_by_group(pred_mm: np.ndarray, gt_mm: np.ndarray, found: np.ndarray,
                          groups: dict[str, np.ndarray], joint_names: Sequence[str] | None = None) -> dict:
    """:func:`pose_metrics` of each group of frames: {name: figures}.

    pred_mm, gt_mm: (N, J, 3) mm (pred rows where ``found`` is False are ignored); found: (N,) bool,
    the frame got a prediction; groups: {name: (N,) bool mask}. A group's frames without a
    prediction count as its misses (``missed=``). Empty groups are left out; a group with no
    prediction at all gives only ``{"n_frames": n, "detection_rate": 0.0}``.
    """
    found = np.asarray(found, dtype=bool)
    out = {}
    for name, mask in groups.items():
        mask = np.asarray(mask, dtype=bool)
        hit = mask & found
        if not mask.any():
            continue
        if not hit.any():
            out[name] = {"n_frames": int(mask.sum()), "detection_rate": 0.0}
            continue
        out[name] = pose_metrics(pred_mm[hit], gt_mm[hit], joint_names, missed=int((mask & ~found).sum()))
        out[name]["detection_rate"] = float(hit.sum() / mask.sum())
    return out


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for telling ``positive`` (bool) items from the rest
    (the Mann-Whitney U statistic, ties counted half); NaN where either class is empty."""
    from scipy.stats import rankdata

    positive = np.asarray(positive, bool).ravel()
    ranks = rankdata(np.asarray(score, np.float64).ravel())
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


CONFIDENCE_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COVERAGE_KEPT = tuple(np.round(np.arange(1.0, 0.09, -0.05), 2))


def confidence_figures(confidence: np.ndarray, errors_mm: np.ndarray, within_mm: float,
                       frame_mm: float = 40.0) -> dict:
    """How well per-joint confidences foretell the joints' errors.

    confidence: (F, J) in [0, 1], a joint's probability of lying within ``within_mm`` of the truth;
    errors_mm: (F, J) the joints' errors. Returns ``joint_auroc`` (confidence telling the joints
    within ``within_mm`` from the rest), ``calibration`` (for each confidence bin of
    :data:`CONFIDENCE_BINS`: joints, their mean confidence and the share actually within), and, with
    a frame scored by its least confident joint, ``frame_auroc`` (telling frames whose worst joint is
    within ``frame_mm``) and ``coverage``: keeping only the most confident share of frames
    (:data:`COVERAGE_KEPT`), their share with the worst joint within ``frame_mm`` and mean error.
    """
    conf = np.asarray(confidence, np.float64)
    err = np.asarray(errors_mm, np.float64)
    within = err <= within_mm
    bins = []
    for lo, hi in zip(CONFIDENCE_BINS[:-1], CONFIDENCE_BINS[1:], strict=True):
        sel = (conf >= lo) & ((conf < hi) if hi < 1.0 else (conf <= hi))
        if sel.any():
            bins.append({"from": lo, "to": hi, "joints": int(sel.sum()), "mean_confidence": float(conf[sel].mean()),
                         "within_share": float(within[sel].mean())})
    score = conf.min(axis=1)
    frame_ok = err.max(axis=1) <= frame_mm
    order = np.argsort(-score, kind="stable")
    coverage = []
    for kept in COVERAGE_KEPT:
        k = order[: max(1, int(round(kept * len(order))))]
        coverage.append({"kept": float(kept), f"frames_within_{frame_mm:g}mm": float(frame_ok[k].mean()),
                         "mean_error_mm": float(err[k].mean())})
    return {"within_mm": float(within_mm), "joint_auroc": auroc(within, conf), "calibration": bins,
            "frame_auroc": auroc(frame_ok, score), "frame_mm": float(frame_mm), "coverage": coverage}


def plot_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]], title: str = "",
                size: tuple[int, int] = (720, 480), x_label: str = "distance threshold d (mm)",
                y_label: str = "frames with worst joint within d (%)") -> np.ndarray:
    """Draw curves with OpenCV (no matplotlib): by default "fraction of frames with worst joint within d".

    curves: {label: (xs, fractions)}, xs from 0 (mm by default); the y axis shows fractions as %.
    Returns (H, W, 3) uint8 BGR, ready for cv2.imwrite.
    """
    w, h = size
    left, right, top, bottom = 70, 20, 40, 60
    img = np.full((h, w, 3), 255, np.uint8)
    x_max = max(max(t) for t, _ in curves.values()) if curves else 80
    pw, ph = w - left - right, h - top - bottom

    def to_px(x: float, y: float) -> tuple[int, int]:
        return int(round(left + pw * x / x_max)), int(round(top + ph * (1.0 - y)))

    grey, black = (210, 210, 210), (0, 0, 0)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i in range(11):  # grid + y ticks every 10 %
        y = i / 10
        cv2.line(img, to_px(0, y), to_px(x_max, y), grey, 1)
        cv2.putText(img, f"{i * 10}", (left - 35, to_px(0, y)[1] + 5), font, 0.45, black, 1, cv2.LINE_AA)
    for x in range(0, int(x_max) + 1, 10):
        cv2.line(img, to_px(x, 0), to_px(x, 1), grey, 1)
        cv2.putText(img, f"{x}", (to_px(x, 0)[0] - 8, top + ph + 20), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.rectangle(img, to_px(0, 1), to_px(x_max, 0), black, 1)
    cv2.putText(img, x_label, (left + pw // 2 - 110, h - 15), font, 0.55, black, 1, cv2.LINE_AA)
    ylab = np.full((24, 330, 3), 255, np.uint8)
    cv2.putText(ylab, y_label, (2, 17), font, 0.5, black, 1, cv2.LINE_AA)
    ylab = cv2.rotate(ylab, cv2.ROTATE_90_COUNTERCLOCKWISE)
    y0 = max(0, top + ph // 2 - ylab.shape[0] // 2)
    img[y0 : y0 + ylab.shape[0], 4 : 4 + ylab.shape[1]] = ylab[: h - y0]
    if title:
        cv2.putText(img, title, (left, 25), font, 0.6, black, 1, cv2.LINE_AA)
    colours = [(200, 80, 0), (0, 120, 230), (40, 160, 40), (30, 30, 200), (150, 60, 150)]
    for n, (label, (xs, ys)) in enumerate(curves.items()):
        colour = colours[n % len(colours)]
        pts = np.array([to_px(x, y) for x, y in zip(xs, ys, strict=True)], np.int32)
        cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
        ly = top + ph - 20 - 22 * (len(curves) - 1 - n)
        cv2.line(img, (left + pw - 250, ly - 5), (left + pw - 220, ly - 5), colour, 2)
        cv2.putText(img, label, (left + pw - 212, ly), font, 0.45, black, 1, cv2.LINE_AA)
    return img


def visibility_figures(pred_mm: np.ndarray, gt_mm: np.ndarray, visible: np.ndarray,
                       joint_names: Sequence[str] | None = None, frame_mm: float = 40.0, near_mm: float = 20.0) -> dict:
    """The error split by what the camera sees (synthetic frames, where the generator knows it).

    pred_mm, gt_mm: (F, J, 3) joints, mm, a row per frame; visible: (F, J) bool, the joint's own
    surface is what the camera sees at its pixel (``SyntheticSample.visible``). Returns:

    - ``visible_mean_mm``, ``hidden_mean_mm``, ``hidden_share``: the mean error of each kind of joint
      and the share of joints the camera does not see;
    - ``frames_within_{frame_mm}mm_visible_exact``: the share of frames whose worst joint would be
      within ``frame_mm`` were every visible joint exact (the hidden ones as predicted), and
      ``..._hidden_exact`` the other way round. Where neither reaches a target, both kinds of joint
      must get better to reach it;
    - ``visible_misses``: visible joints more than ``frame_mm`` off, and
      ``visible_misses_near_other_finger`` / ``..._near_own_finger``: the share of them predicted
      within ``near_mm`` of a joint of another finger / of another joint of their own finger (a
      finger taken for its neighbour; a finger read as straight when curled or the other way). A
      joint's finger is its name up to the first "_" (``index_tip`` -> ``index``); without
      ``joint_names`` every joint is a finger of its own.
    """
    pred = np.asarray(pred_mm, np.float64)
    gt = np.asarray(gt_mm, np.float64)
    vis = np.asarray(visible, bool)
    err = joint_errors(pred, gt)
    if vis.shape != err.shape:
        raise ValueError(f"visible must be (F, J) like the joints, got {vis.shape} for {err.shape}")
    key = f"frames_within_{frame_mm:g}mm"
    out = {
        # nanmean: unknown (NaN) true joints are left out, as in the module's other figures
        "visible_mean_mm": float(np.nanmean(err[vis])) if vis.any() else float("nan"),
        "hidden_mean_mm": float(np.nanmean(err[~vis])) if (~vis).any() else float("nan"),
        "hidden_share": float((~vis).mean()),
        f"{key}_visible_exact": float(fraction_within(np.where(vis, 0.0, err), (frame_mm,))[0]),
        f"{key}_hidden_exact": float(fraction_within(np.where(vis, err, 0.0), (frame_mm,))[0]),
    }
    miss_f, miss_j = np.nonzero(vis & (err > frame_mm))
    out["visible_misses"] = int(len(miss_f))
    if len(miss_f):
        # the nearest other true joint to each missed prediction, and whether it is on the same finger
        others = np.linalg.norm(gt[miss_f] - pred[miss_f, miss_j][:, None], axis=-1)  # (M, J)
        others[np.arange(len(miss_j)), miss_j] = np.inf
        nearest = others.argmin(axis=1)
        near = others.min(axis=1) <= near_mm
        names = list(joint_names) if joint_names is not None else [str(j) for j in range(gt.shape[1])]
        finger = np.array([name.split("_")[0] for name in names])
        same = finger[nearest] == finger[miss_j]
        out["visible_misses_near_other_finger"] = float((near & ~same).mean())
        out["visible_misses_near_own_finger"] = float((near & same).mean())
    return out
