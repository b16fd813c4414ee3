"""2D keypoint metrics: PCK, AUC of the PCK curve, end-point error, per joint; plots with OpenCV.

Conventions (as in the CMU hand / OpenPose evaluations):

- PCK@a: share of keypoints whose error is at most ``a * max(w, h)``, with (w, h) the size of
  the bounding box of that hand's *ground-truth* keypoints, in the same pixels as the error.
- AUC: area under the PCK curve for thresholds a in [0, a_max] (default 0.5), divided by a_max,
  so a perfect detector scores 1.
- EPE: Euclidean error in pixels (of whatever image the keypoints are given in).

Keypoints can be excluded with ``valid`` (N, K) (unlabelled joints); they count nowhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from handpose_core.atomic import write_png
from handpose_core.errors import HandPoseError

DEFAULT_THRESHOLDS = np.linspace(0.0, 0.5, 51)


def bbox_size(gt_uv: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(N, K, 2) px -> (N,) max(width, height) of each hand's valid GT keypoints (px)."""
    gt = np.asarray(gt_uv, dtype=np.float64)
    ok = np.ones(gt.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    lo = np.where(ok[..., None], gt, np.inf).min(axis=1)
    hi = np.where(ok[..., None], gt, -np.inf).max(axis=1)
    size = (hi - lo).max(axis=1)
    return np.where(np.isfinite(size), size, np.nan)


def keypoint_errors(pred_uv: np.ndarray, gt_uv: np.ndarray) -> np.ndarray:
    """(N, K, 2), (N, K, 2) px -> (N, K) Euclidean errors, px (NaN predictions -> inf)."""
    pred = np.asarray(pred_uv, dtype=np.float64)
    gt = np.asarray(gt_uv, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[2] != 2:
        raise HandPoseError(f"pred and gt must both be (N, K, 2), got {pred.shape} and {gt.shape}")
    err = np.linalg.norm(pred - gt, axis=2)
    return np.where(np.isnan(err), np.inf, err)


def pck_curve(pred_uv: np.ndarray, gt_uv: np.ndarray, valid: np.ndarray | None = None,
              thresholds: np.ndarray = DEFAULT_THRESHOLDS) -> np.ndarray:
    """PCK at each threshold, (T,) in [0, 1]: pred_uv, gt_uv (N, K, 2) px; valid (N, K) bool;
    thresholds (T,) as fractions of max(w, h) of each hand's ground-truth bounding box."""
    err = keypoint_errors(pred_uv, gt_uv)
    ok = _valid(valid, err.shape, gt_uv)
    norm = bbox_size(gt_uv, ok)[:, None]
    ok &= np.isfinite(norm) & (norm > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (err / norm)[ok]
    return np.array([(rel <= t).mean() if rel.size else np.nan for t in thresholds])


def _valid(valid, shape, gt_uv) -> np.ndarray:
    ok = np.ones(shape, bool) if valid is None else np.asarray(valid, bool).copy()
    ok &= np.all(np.isfinite(np.asarray(gt_uv)), axis=2)
    return ok


def evaluate_2d(pred_uv: np.ndarray, gt_uv: np.ndarray, valid: np.ndarray | None = None,
                joint_names: tuple[str, ...] | None = None, pck_at: float = 0.2,
                thresholds: np.ndarray = DEFAULT_THRESHOLDS, counted: np.ndarray | None = None) -> dict[str, Any]:
    """All figures for one prediction set; JSON-ready.

    pred_uv, gt_uv: (N, K, 2) px in the same image; valid: (N, K) bool, labelled joints (they
    define each hand's bounding box); counted: (N, K) bool, the subset of joints to score (e.g.
    only visible ones), default all valid ones.
    Returns frames, keypoints (the counted ones), ``f"pck@{pck_at:g}"`` (e.g. ``pck@0.2``), auc
    and auc_range (0..max threshold), epe_mean_px, epe_median_px, per_joint {name: {pck,
    epe_mean_px}}, and the curve {thresholds, pck}.
    """
    err = keypoint_errors(pred_uv, gt_uv)
    labelled = _valid(valid, err.shape, gt_uv)
    norm = bbox_size(gt_uv, labelled)[:, None]
    ok = labelled if counted is None else labelled & np.asarray(counted, bool)
    ok &= np.isfinite(norm) & (norm > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = err / norm
    thresholds = np.asarray(thresholds, dtype=np.float64)
    curve = np.array([(rel[ok] <= t).mean() if ok.any() else np.nan for t in thresholds])
    finite = ok & np.isfinite(err)
    names = joint_names or tuple(f"j{k}" for k in range(err.shape[1]))
    per_joint = {}
    for k, name in enumerate(names):
        m = ok[:, k]
        per_joint[name] = {
            "pck": float((rel[m, k] <= pck_at).mean()) if m.any() else float("nan"),
            "epe_mean_px": float(err[finite[:, k], k].mean()) if finite[:, k].any() else float("nan"),
        }
    return {
        "frames": int(err.shape[0]),
        "keypoints": int(ok.sum()),
        f"pck@{pck_at:g}": float((rel[ok] <= pck_at).mean()) if ok.any() else float("nan"),
        "auc": float(np.trapezoid(curve, thresholds) / (thresholds[-1] - thresholds[0])),
        "auc_range": [float(thresholds[0]), float(thresholds[-1])],
        "epe_mean_px": float(err[finite].mean()) if finite.any() else float("nan"),
        "epe_median_px": float(np.median(err[finite])) if finite.any() else float("nan"),
        "per_joint": per_joint,
        "curve": {"thresholds": [float(t) for t in thresholds], "pck": [float(p) for p in curve]},
    }


def plot_pck(curves: dict[str, dict], path: str | Path, title: str = "PCK", size: tuple[int, int] = (640, 480)
             ) -> Path:
    """Draw PCK curves ({label: evaluate_2d result or {"thresholds", "pck"}}) to a PNG with OpenCV."""
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 60, 20, 40, 50
    pw, ph = w - left - right, h - top - bottom
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127)]
    all_t = [np.asarray(c.get("curve", c)["thresholds"]) for c in curves.values()]
    tmax = max(float(t.max()) for t in all_t) if all_t else 0.5

    def xy(t, p):
        return int(left + pw * t / tmax), int(top + ph * (1 - p))

    for i in range(6):  # grid and ticks
        p = i / 5
        cv2.line(img, xy(0, p), xy(tmax, p), (225, 225, 225), 1)
        cv2.putText(img, f"{p:.1f}", (8, xy(0, p)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        t = tmax * i / 5
        cv2.line(img, xy(t, 0), xy(t, 1), (225, 225, 225), 1)
        cv2.putText(img, f"{t:.2f}", (xy(t, 0)[0] - 14, h - bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(img, xy(0, 1), xy(tmax, 0), (0, 0, 0), 1)
    cv2.putText(img, "normalized threshold (error / max(bbox w, h))", (left + 60, h - 12), cv2.FONT_HERSHEY_SIMPLEX,
                0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, title, (left, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (label, c) in enumerate(curves.items()):
        curve = c.get("curve", c)
        t, p = np.asarray(curve["thresholds"]), np.nan_to_num(np.asarray(curve["pck"]))
        colour = palette[i % len(palette)][::-1]  # BGR drawing, saved by imwrite as BGR
        pts = np.array([xy(a, b) for a, b in zip(t, p, strict=True)], np.int32)
        cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
        ly = top + ph - 20 - 18 * (len(curves) - 1 - i)  # bottom right: PCK curves rise away from it
        cv2.line(img, (left + pw - 200, ly), (left + pw - 175, ly), colour, 2)
        cv2.putText(img, label, (left + pw - 170, ly + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    path = Path(path)
    write_png(path, img)
    return path

