"""CMU Panoptic hand keypoint data (Simon et al. 2017, http://domedb.perception.cs.cmu.edu/handdb.html).

Layouts understood by :class:`CMUHands` (pass the folder, or the combined JSON file):

- ``hand_labels`` (``manual_train``, ``manual_test``) and ``hand_labels_synth`` (``synth1`` ..
  ``synth4``): one ``<name>.jpg`` (or ``.png``) per hand with a ``<name>.json`` next to it holding
  ``hand_pts`` (21 x [x, y, flag]) and ``is_left`` (0/1); other keys (``hand_box_center``,
  ``head_size``, ``mpii_image`` ...) are ignored. Sub-folders are searched, so the dataset root
  works too. Files whose ``hand_pts`` is not 21 x 3 (e.g. parts of ``synth1``) are skipped and
  counted in :attr:`CMUHands.skipped`.
- ``hand143_panopticdb``: one ``hands_v143_14817.json`` with ``root`` = list of
  {``img_paths`` (relative to the JSON's folder), ``joint_self`` (21 x [x, y, flag]),
  ``img_width``, ``img_height``, optional ``is_left``}.

Keypoints are in the HAND21 (OpenPose) order already. The flag convention is CMU's own: 1 means
the point is annotated (and then counted as visible); anything else marks it unlabelled, and its
``uv_px`` is NaN (DESIGN: unknown values are NaN, never 0).

:meth:`CMUHands.crop` cuts a square box around the labels (``margin`` x their extent; CMU used
2.2, as does the seed article's "extract the patch containing the hand and resize it").
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from handpose_core.codecs.belief_maps import box_from_keypoints, crop_image, warp_points
from handpose_core.errors import HandPoseError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class CMUSample:
    """One labelled hand.

    rgb:     (H, W, 3) uint8 RGB image.
    uv_px:   (21, 2) float32 image pixels; NaN where not annotated.
    visible: (21,) bool, annotated (CMU flag == 1).
    valid:   (21,) bool, the same (kept separate from ``visible`` to match the synthetic data).
    """

    rgb: np.ndarray
    uv_px: np.ndarray
    visible: np.ndarray
    valid: np.ndarray
    is_left: bool
    path: Path


@dataclass(frozen=True)
class _Entry:
    image: Path
    pts: np.ndarray  # (21, 3)
    is_left: bool


def _read_json(path: Path):
    try:
        text = path.read_text()
    except OSError as exc:
        raise HandPoseError(f"cannot read {path}: {exc}") from exc
    if not text.strip():
        raise HandPoseError(f"{path} is empty (expected CMU hand labels JSON)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HandPoseError(f"{path} is not valid JSON: {exc}") from exc


def _points(value) -> np.ndarray | None:
    try:
        pts = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if pts.shape != (21, 3):
        return None
    return pts


class CMUHands:
    """Index of a CMU hand-label folder; ``dataset[i] -> CMUSample``. See the module docstring."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.skipped = 0
        if self.root.is_file() and self.root.suffix == ".json":
            self.entries = self._panoptic(self.root)
        elif self.root.is_dir():
            combined = sorted(self.root.glob("hands_v*.json"))
            self.entries = self._panoptic(combined[0]) if combined else self._per_image(self.root)
        else:
            raise HandPoseError(f"CMU hand data not found: {self.root}")
        if not self.entries:
            raise HandPoseError(f"no labelled hands in {self.root} ({self.skipped} files skipped)")

    def _panoptic(self, path: Path) -> list[_Entry]:
        data = _read_json(path)
        root = data.get("root") if isinstance(data, dict) else None
        if not isinstance(root, list):
            raise HandPoseError(f"{path} has no 'root' list (expected the hand143_panopticdb layout)")
        entries = []
        for item in root:
            pts = _points(item.get("joint_self")) if isinstance(item, dict) else None
            if pts is None or "img_paths" not in item:
                self.skipped += 1
                continue
            entries.append(_Entry(path.parent / str(item["img_paths"]), pts, bool(item.get("is_left", 0))))
        return entries

    def _per_image(self, folder: Path) -> list[_Entry]:
        entries = []
        for js in sorted(folder.rglob("*.json")):
            image = next((js.with_suffix(s) for s in IMAGE_SUFFIXES if js.with_suffix(s).is_file()), None)
            if image is None:
                continue
            data = _read_json(js)
            pts = _points(data.get("hand_pts")) if isinstance(data, dict) else None
            if pts is None:
                self.skipped += 1
                continue
            entries.append(_Entry(image, pts, bool(data.get("is_left", 0))))
        return entries

    def __len__(self) -> int:
        return len(self.entries)

    def labels(self, index: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """((21, 2) float32 px with NaN where unlabelled, (21,) bool annotated, is_left) without the image."""
        e = self.entries[index]
        ok = e.pts[:, 2] == 1
        uv = np.where(ok[:, None], e.pts[:, :2], np.nan).astype(np.float32)
        return uv, ok, e.is_left

    def __getitem__(self, index: int) -> CMUSample:
        if not 0 <= index < len(self.entries):
            raise IndexError(index)
        e = self.entries[index]
        bgr = cv2.imread(str(e.image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise HandPoseError(f"cannot read image {e.image}")
        uv, ok, is_left = self.labels(index)
        return CMUSample(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), uv, ok.copy(), ok, is_left, e.image)

    def crop(self, index: int, size: int = 368, margin: float = 2.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Square hand crop: ((size, size, 3) uint8 RGB, (21, 2) crop px (NaN unlabelled), (2, 3) warp)."""
        s = self[index]
        box = box_from_keypoints(s.uv_px, margin, valid=s.valid)
        warp = box.warp(size)
        return crop_image(s.rgb, warp, size), warp_points(s.uv_px, warp), warp
