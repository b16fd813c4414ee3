"""Pictures of synthetic frames: colourised depth, skeleton overlays and contact sheets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from handpose_core.checkpoint import atomic_write
from handpose_core.keypoints import HAND21

if TYPE_CHECKING:
    from handpose_core.data.synthetic import SynthSample

# One BGR colour per chain (thumb, index, middle, ring, little); the wrist edges use the chain's.
FINGER_COLOURS_BGR = ((0, 0, 255), (0, 200, 255), (0, 220, 0), (255, 160, 0), (255, 0, 200))


def colorize_depth(depth_mm: np.ndarray, near_mm: float | None = None, span_mm: float = 400.0) -> np.ndarray:
    """(H, W) uint16 mm -> (H, W, 3) uint8 BGR: turbo from ``near_mm`` (default: the nearest
    returns) over ``span_mm``; black = no return."""
    valid = depth_mm > 0
    if not valid.any():
        return np.zeros(depth_mm.shape + (3,), np.uint8)
    if near_mm is None:
        near_mm = float(np.percentile(depth_mm[valid], 0.5))
    scaled = np.clip((depth_mm.astype(np.float32) - near_mm) * (255.0 / span_mm), 0, 255).astype(np.uint8)
    out = cv2.applyColorMap(scaled, cv2.COLORMAP_TURBO)
    out[~valid] = 0
    return out


def draw_skeleton(
    image_bgr: np.ndarray, uv_px: np.ndarray, visible: np.ndarray, scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
) -> None:
    """Draw HAND21 bones and joints in place: visible joints filled, occluded ones hollow.

    Pixel ``uv`` is drawn at ``(uv - offset) * scale``.
    """
    pts = [(int(round((u - offset[0]) * scale)), int(round((v - offset[1]) * scale))) for u, v in uv_px]
    radius = 3 if scale < 1.5 else 4
    for k, (i, j) in enumerate(HAND21.edges):
        cv2.line(image_bgr, pts[i], pts[j], FINGER_COLOURS_BGR[k // 4], 1, cv2.LINE_AA)
    for j, p in enumerate(pts):
        colour = (255, 255, 255) if j == 0 else FINGER_COLOURS_BGR[(j - 1) // 4]
        cv2.circle(image_bgr, p, radius, colour, -1 if visible[j] else 1, cv2.LINE_AA)


def _zoom(image: np.ndarray, uv_px: np.ndarray, visible: np.ndarray, size: int) -> np.ndarray:
    """Square crop around the hand's 2D joints, resized to ``size``, skeleton drawn."""
    lo, hi = uv_px.min(0), uv_px.max(0)
    centre = (lo + hi) / 2.0
    half = max(float((hi - lo).max()) * 0.65, 12.0)
    x0, y0 = centre - half
    scale = size / (2.0 * half)
    warp = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
    out = cv2.warpAffine(image, warp, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    draw_skeleton(out, uv_px, visible, scale, (x0, y0))
    return out


def sample_panel(sample: SynthSample, scale: float = 0.5) -> np.ndarray:
    """One BGR panel: colourised depth | RGB (labels drawn) | RGB zoomed on the hand (labels drawn)."""
    h, w = int(sample.intrinsics.height), int(sample.intrinsics.width)
    size = (int(round(w * scale)), int(round(h * scale)))
    near = float(sample.xyz_m[:, 2].min()) * 1000.0 - 40.0
    depth = colorize_depth(sample.depth_mm, near) if sample.depth_mm is not None else np.zeros((h, w, 3), np.uint8)
    rgb = cv2.cvtColor(sample.rgb, cv2.COLOR_RGB2BGR) if sample.rgb is not None else np.zeros((h, w, 3), np.uint8)
    parts = []
    for img in (depth, rgb):
        small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        draw_skeleton(small, sample.uv_px, sample.visible, scale)
        parts.append(small)
    parts.append(_zoom(rgb if sample.rgb is not None else depth, sample.uv_px, sample.visible, size[1]))
    panel = np.concatenate(parts, axis=1)
    tag = f"{'L' if sample.is_left else 'R'} z={sample.xyz_m[0, 2]:.2f}m vis={int(sample.visible.sum())}/21"
    cv2.putText(panel, tag, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return panel


def contact_sheet(
    samples: Sequence[SynthSample], path: str | os.PathLike, cols: int = 2, scale: float = 0.5
) -> np.ndarray:
    """Save a PNG grid of ``samples`` and return it (BGR).

    Each cell: colourised depth | RGB | RGB zoomed on the hand, with the 2D labels and HAND21
    skeleton drawn (visible joints filled, occluded hollow).
    """
    panels = [sample_panel(s, scale) for s in samples]
    if not panels:
        raise ValueError("contact_sheet needs at least one sample")
    ph, pw = panels[0].shape[:2]
    rows = -(-len(panels) // cols)
    sheet = np.full((rows * (ph + 4), cols * (pw + 4), 3), 40, np.uint8)
    for k, panel in enumerate(panels):
        r, c = divmod(k, cols)
        sheet[r * (ph + 4) : r * (ph + 4) + ph, c * (pw + 4) : c * (pw + 4) + pw] = panel

    def write(tmp: str) -> None:
        ok, buf = cv2.imencode(".png", sheet)
        if not ok:
            raise OSError("PNG encoding failed")
        with open(tmp, "wb") as fh:
            fh.write(buf.tobytes())
        umask = os.umask(0)  # temporary files are 0600: give the PNG a plain file's mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)

    atomic_write(path, write)
    return sheet


def main(argv: list[str] | None = None) -> int:
    """``python -m handpose_core.data.synthetic_viz --out docs/synthetic_contact_sheet.png``."""
    import argparse

    from handpose_core.data.synthetic import SyntheticHands

    parser = argparse.ArgumentParser(description="Contact sheet of synthetic frames (depth | RGB | zoom, labels drawn)")
    parser.add_argument("--out", default="docs/synthetic_contact_sheet.png", help="PNG path")
    parser.add_argument("--n", type=int, default=12, help="frames (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--cols", type=int, default=2, help="cells per row (default 2)")
    args = parser.parse_args(argv)
    hands = SyntheticHands(seed=args.seed)
    contact_sheet([hands[i] for i in range(args.n)], args.out, cols=args.cols)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
