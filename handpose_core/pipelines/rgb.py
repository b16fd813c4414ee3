"""RGB pipeline (CPM / OpenPose hand): image -> hand box -> crop -> belief maps -> keypoints.

Where the hand box comes from, in order of preference:

a. ``roi``: a fixed region of interest (x0, y0, x1, y1) source pixels, set by the user (attribute
   or constructor keyword). It is made square around its centre and clipped to the image; a ROI
   entirely outside the image gives ``[]``.
b. tracking: the previous frame's keypoints with ``crop_margin`` (the training crop margin). The
   track is dropped when the mean joint confidence falls below ``track_min_confidence``, when the
   image size changes, or on :meth:`RGBPipeline.reset`; ``track=False`` turns tracking off.
c. an aligned depth image (``depth`` + ``intrinsics``): the nearest isolated hand-sized object,
   found by :meth:`DepthCropCodec.locate`, with a box of ``hand_box_mm`` projected at its depth.
d. search: the whole frame at several scales (each scale assumes the hand spans a fraction of
   the frame's shorter side, ``search_fractions``), belief maps averaged over the scales in
   image coordinates (OpenPose's scale search), then a second pass on the box around the
   confident keypoints found.

Refinement: for the box sources listed in ``refine`` the crop is run once more, on the box its
keypoints call for (``crop_margin`` x their extent, as the tracker would cut it), so that the
network sees the label-fitted box it was trained on rather than a metric or coarse one.

A hand is reported when the mean joint confidence reaches ``min_confidence``; otherwise ``[]``.

Left and right hands: a network trained on right hands only (``pipeline.hands == "right"``, the
packaged one) sees a left hand's crop mirrored (the mirror is part of the crop warp, so keypoints
map back through it). ``handedness`` says which hand is in view: ``right``, ``left``, or ``auto``,
where a frame runs its crop both ways in one batch, and the hand taken is the one the summed margins
of the track's frames so far call (the left way's mean last-stage confidence minus the right
way's; :class:`~handpose_core.pipelines.hands.HandVote`). After ``handedness_frames`` frames (default
60, 2 s at 30 Hz) the track keeps its hand and a tracked frame runs once. ``auto`` costs accuracy:
with the 40-minute right-hand weights of 2026-12-07 the more confident way was the hand's in 79 %
of 1,000 held-out crops, PCK@0.2 0.808 against 0.870 with the hand told (the mean confidence over
all stages, the median, or the stages' agreement picked no better). Frames of one track often err
the same way, so the vote is right more often only as the hand moves: on 42 held-out sequences of
60 frames, summing 60 frames tracked at PCK@0.2 0.811, 10 frames 0.747, the first frame alone 0.743
(told: 0.844); with the 90-minute right-hand weights 0.825 against 0.745 (told: 0.862).
``HandPose.extras["handedness"]`` says which way was taken.

Input images: (H, W, 3) uint8 RGB. Decisions for other inputs: (H, W) or (H, W, 1) uint8 grey is
replicated to 3 channels (mono8 cameras work); (H, W, 4) uint8 is taken as RGBA and the alpha
dropped; any other shape or dtype (a uint16 depth image, float images) raises HandPoseError.
Images smaller than the network input are fine: the crop warp pads with grey.

3D: with ``depth`` (aligned (H, W) uint16 mm or float32 m) and ``intrinsics``, each keypoint's
depth is the median of the valid depths in a (2 * depth_window + 1)^2 pixel window around it
(robust to holes and edge pixels); NaN when none is valid. Without them xyz_m is NaN.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from handpose_core.camera import Intrinsics
from handpose_core.checkpoint import save_checkpoint
from handpose_core.codecs.belief_maps import (
    BeliefMapCodec,
    CropBox,
    InputSpec,
    box_from_keypoints,
    crop_image,
    decode_peaks,
    warp_points,
)
from handpose_core.codecs.depth_crop import DepthCropCodec, NoHandError, depth_to_mm
from handpose_core.errors import HandPoseError
from handpose_core.keypoints import HAND21, layout_for
from handpose_core.models.cpm import MirrorAveraged
from handpose_core.models.inference import load_for_inference
from handpose_core.pipelines.hands import Handedness, HandVote, check_hands

if TYPE_CHECKING:
    from handpose_core.estimator import HandPose

# Defaults of the pipeline's knobs; a checkpoint may override them in meta["pipeline"].
PIPELINE_DEFAULTS: dict[str, Any] = {
    "crop_margin": 1.5,  # box side / larger extent of the keypoints' bbox (as in training)
    "min_confidence": 0.2,  # mean joint confidence below this -> no hand
    "track_min_confidence": 0.3,  # mean joint confidence below this -> drop the track
    "keypoint_min_confidence": 0.1,  # joints below this do not shape the next box
    "hand_box_mm": 250.0,  # metric box side around the depth blob's centre
    # hand extent / shorter image side, one scale each. 0.18 finds hands ~1 m away (about 60-90 px
    # at 640x480): with only 0.8/0.5/0.3, 57 % of held-out synthetic frames had hands under 0.2
    # and the search-only PCK@0.2 was 0.594 (0.650 with 0.18; mean beat max or best-scale fusion)
    "search_fractions": [0.8, 0.5, 0.3, 0.18],
    "search_max_side": 320,  # the scale-search average lives on a grid of at most this long side
    "depth_window": 3,  # half-width of the depth lookup window, pixels
    # average every network call with the mirror image's (models.cpm.MirrorAveraged): CPMs trained on
    # both hands (--hands both) set it; off for right-hand networks (the default recipe's, the packaged
    # weights, OpenPose's), whose mirror image is the other hand.
    # The 2026-12-01 weights: crops PCK@0.2 0.819 -> 0.829, tracked sequences 0.773 -> 0.783. Mirroring
    # only the crop pass (the search frame 139 -> 94 ms) tracked worse, 0.757: keep both.
    "flip_average": False,
    # box sources whose crop is run a second time on the box its keypoints call for (crop_margin x
    # their extent, as the tracker cuts): the depth box is metric and the search's box comes from
    # coarse maps, so neither is fitted to the hand the way training boxes are. One network call
    # more on those frames. Sources: "depth", "search", "track" ("roi" is the user's box, kept).
    # 2026-12-01 weights, held-out: ["depth", "search"] took full frames 0.735 -> 0.785 (depth box)
    # and 0.677 -> 0.713 (search), tracked sequences 0.783 -> 0.793 (their first frames); adding
    # "track" tracked at 0.805 but doubled a tracked frame's cost (RGB node p50 17.7 ms in one
    # make bench run with it, 12.7 ms in the next run without it).
    "refine": [],
    # which hands the network saw (set by training, not a user knob): "both", or "right" (trained on
    # right hands, left ones mirrored, as OpenPose's hand network is fed).
    "hands": "both",
    # for a "right" network, which hand is in view: "right", "left" (its crops are mirrored), or
    # "auto": a frame runs its crop both ways and the track takes the hand its frames' confidence
    # margins, summed, call (HandVote); after handedness_frames frames it keeps it and runs once
    # (see the module doc for the figures).
    "handedness": "auto",
    "handedness_frames": 60,
}
REFINE_SOURCES = ("depth", "search", "track")


def rgb_meta(model_name: str, model_config: dict, codec: BeliefMapCodec, spec: InputSpec,
             pipeline: dict | None = None, **extra: Any) -> dict[str, Any]:
    """Checkpoint metadata an RGB (CPM) model needs at inference; training adds provenance."""
    meta = {
        "modality": "rgb",
        "family": "cpm",
        "joint_names": list(HAND21.joint_names),
        "layout": HAND21.name,
        "input": spec.to_config(),
        "codec": codec.to_config(),
        "pipeline": {**PIPELINE_DEFAULTS, **(pipeline or {})},
        "model_name": model_name,
    }
    meta.update(extra)
    return meta


def save_untrained(path: str | os.PathLike, variant: str = "cpm_light", seed: int = 0) -> Path:
    """Write a small valid *untrained* RGB checkpoint (random weights) for tests; returns the path.

    The estimator loads it like a trained one (``HandPoseEstimator.from_checkpoint(path)``); its
    predictions are meaningless and usually ``[]`` (low confidence).
    """
    from handpose_core.models import create_model

    torch.manual_seed(seed)
    model = create_model(variant)
    size = int(getattr(model, "input_size", 128))
    spec = InputSpec(size=size)
    codec = BeliefMapCodec(input_size=size, stride=8, sigma_px=max(4.0, size / 24.0))
    meta = rgb_meta(variant, {}, codec, spec, provenance={"untrained": True, "seed": seed})
    save_checkpoint(path, variant, {}, model.state_dict(), meta)
    return Path(path)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Validate/convert an input image to (H, W, 3) uint8 RGB (see the module docstring)."""
    if not isinstance(image, np.ndarray):
        raise HandPoseError(f"image must be a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise HandPoseError(f"image is empty (shape {image.shape})")
    if image.dtype != np.uint8:
        raise HandPoseError(
            f"RGB model needs a uint8 colour image, got dtype {image.dtype} with shape {image.shape}"
            + (" (a depth image? this checkpoint is an RGB model)" if image.ndim == 2 else "")
        )
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    raise HandPoseError(f"RGB image must be (H, W, 3) uint8 (also accepted: grey (H, W), RGBA), got {image.shape}")


class RGBPipeline(Handedness):
    """Checkpoint blob -> ``predict(image, intrinsics, depth) -> list[HandPose]`` for CPM models;
    ``handedness``: see the module doc."""

    def __init__(self, blob: dict[str, Any], device: torch.device, precision: str = "fp32",
                 roi: tuple[float, float, float, float] | None = None, optimize: bool = True,
                 backend: str = "torch", threads: int = 0, track: bool = True, **overrides: Any) -> None:
        meta = blob["meta"]
        self.tracking = bool(track)
        self.model, self.dtype = load_for_inference(blob, device, precision, optimize, backend, threads)
        self.device = device
        self.spec = InputSpec(**meta["input"])
        self.codec = BeliefMapCodec(**meta["codec"])
        self.layout = layout_for(meta["joint_names"])
        self.joint_names = tuple(meta["joint_names"])
        cfg = {**PIPELINE_DEFAULTS, **meta.get("pipeline", {}), **overrides}
        unknown = set(cfg) - set(PIPELINE_DEFAULTS)
        if unknown:
            raise HandPoseError(f"unknown RGB pipeline options: {sorted(unknown)}")
        self.cfg = cfg
        bad = set(cfg["refine"]) - set(REFINE_SOURCES)
        if bad:
            raise HandPoseError(f"refine: unknown box sources {sorted(bad)} (choose from {list(REFINE_SOURCES)})")
        self.hands = check_hands(cfg["hands"], cfg["flip_average"], "")
        if cfg["flip_average"]:
            self.model = MirrorAveraged(self.model)
        self.roi = roi
        self.depth_codec = DepthCropCodec()
        self._track: CropBox | None = None
        self._track_shape: tuple[int, int] | None = None
        self._vote = HandVote(cfg["handedness_frames"])
        self.handedness = cfg["handedness"]

    def reset(self) -> None:
        """Forget the tracked box (next frame searches again)."""
        self._track = None
        self._track_shape = None
        self._vote.reset()

    # -- network ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def _run(self, crops_rgb: np.ndarray) -> list[np.ndarray]:
        """(N, S', S'', 3) uint8 -> every stage's maps, list of (N, K+1, h, w) float32."""
        x = torch.from_numpy(self.spec.normalize(crops_rgb)).to(self.device, self.dtype)
        return [m.float().cpu().numpy() for m in self.model(x)]

    def _predict_box(self, rgb: np.ndarray, box: CropBox, hand: str | None = None) -> list[dict[str, Any]]:
        """One box's keypoints, one dict per way the crop ran. ``hand`` (a right-hand network only):
        ``left`` mirrors the crop, ``right`` keeps it, None runs it both ways in one batch (right, then
        left); ``out["hand"]`` says which (None for a network that saw both hands)."""
        size = self.spec.size
        if self.hands != "right":
            hands: list[str | None] = [None]
        else:
            hands = [hand] if hand is not None else ["right", "left"]
        warps = [box.warp(size, mirrored=h == "left") for h in hands]
        crops = np.stack([crop_image(rgb, w, size, self.spec.border_value) for w in warps])
        stages = self._run(crops)
        outs = []
        for n, (h, warp) in enumerate(zip(hands, warps, strict=True)):
            maps = stages[-1][n]
            uv_crop, conf = self.codec.decode(maps, num_keypoints=len(self.joint_names))
            outs.append({"uv": warp_points(uv_crop, warp, inverse=True), "conf": conf, "warp": warp, "crop": crops[n],
                         "maps": maps, "stage_maps": [s[n] for s in stages], "box": box, "hand": h})
        return outs

    def _choose(self, outs: list[dict[str, Any]]) -> tuple[dict[str, Any], float | None]:
        """The way to report of a box's one or two (right, left) ways, and the track's vote sum with
        this frame's confidence margin in it (None for one way): see :class:`HandVote`."""
        if len(outs) == 1:
            return outs[0], None
        hand, total = self._vote.weigh(float(outs[1]["conf"].mean()) - float(outs[0]["conf"].mean()))
        return outs[hand == "left"], total

    def _fitted_box(self, out: dict[str, Any]) -> CropBox:
        """The box a pass's keypoints call for: ``crop_margin`` x the extent of its confident joints
        (all joints where fewer than 3 are confident), the box the network was trained on."""
        ok = out["conf"] >= self.cfg["keypoint_min_confidence"]
        return box_from_keypoints(out["uv"], self.cfg["crop_margin"], valid=ok if ok.sum() >= 3 else None)

    # -- box sources -----------------------------------------------------------------------------
    def _roi_box(self, h: int, w: int) -> CropBox | None:
        x0, y0, x1, y1 = (float(v) for v in self.roi)
        if not (x1 > x0 and y1 > y0):
            raise HandPoseError(f"roi must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {self.roi}")
        return CropBox((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)).clipped(w, h)

    def _depth_box(self, depth_mm: np.ndarray, intr: Intrinsics) -> CropBox | None:
        try:
            com = self.depth_codec.locate(depth_mm, intr)
        except NoHandError:
            return None
        u, v = intr.project(com)
        side = self.cfg["hand_box_mm"] * intr.fx / float(com[2])
        return CropBox(float(u), float(v), float(side))

    def _search(self, rgb: np.ndarray) -> CropBox | None:
        """Scale search over the frame; the box around its confident keypoints, or None.

        A right-hand network sees the frame mirrored for a left hand; with ``handedness`` auto it
        sees it both ways and each map keeps the larger value (the box needs only where the hand
        is; the crop pass then decides which hand it is)."""
        h, w = rgb.shape[:2]
        k = len(self.joint_names)
        grid = min(1.0, self.cfg["search_max_side"] / max(h, w))
        gw, gh = max(1, round(w * grid)), max(1, round(h * grid))
        acc = np.zeros((k, gh, gw), np.float32)
        hand_px = self.spec.size / self.cfg["crop_margin"]  # hand extent the network was trained on
        stride = self.codec.stride
        fractions = self.cfg["search_fractions"]
        for frac in fractions:
            f = hand_px / (frac * min(h, w))
            sw, sh = max(stride, round(w * f)), max(stride, round(h * f))
            scaled = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
            pw, ph = -sw % stride, -sh % stride  # pad right/bottom to a multiple of the stride
            padded = cv2.copyMakeBorder(scaled, 0, ph, 0, pw, cv2.BORDER_CONSTANT,
                                        value=(self.spec.border_value,) * 3)
            maps = self._search_maps(padded)[:k]
            up = self.codec.upsample(maps)[:, :sh, :sw]
            acc += np.stack([cv2.resize(m, (gw, gh), interpolation=cv2.INTER_LINEAR) for m in up])
        acc /= len(fractions)
        uv, conf = decode_peaks(acc)
        uv = (uv + 0.5) / grid - 0.5
        ok = conf >= self.cfg["keypoint_min_confidence"]
        if ok.sum() < 3:
            return None
        return box_from_keypoints(uv, self.cfg["crop_margin"], valid=ok)

    def _search_maps(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8, W a multiple of the stride -> last-stage maps (K+1, H/8, W/8), for this
        network's hands and ``handedness`` (map column j of the mirror image is column w - 1 - j)."""
        if self.hands != "right" or self.handedness == "right":
            return self._run(image[None])[-1][0]
        if self.handedness == "left":
            return np.ascontiguousarray(self._run(image[None, :, ::-1])[-1][0][:, :, ::-1])
        both = self._run(np.stack([image, image[:, ::-1]]))[-1]
        return np.maximum(both[0], both[1][:, :, ::-1])

    # -- public ----------------------------------------------------------------------------------
    def predict(self, image: np.ndarray, intrinsics: Intrinsics | None = None,
                depth: np.ndarray | None = None) -> list[HandPose]:
        """(H, W, 3) uint8 RGB (see module docstring for other inputs) -> list[HandPose] (0 or 1 hand).

        intrinsics: needed for 3D and for the depth box; depth: aligned (H, W) uint16 mm / float32 m.
        """
        from handpose_core.estimator import HandPose

        rgb = as_rgb(image)
        h, w = rgb.shape[:2]
        if intrinsics is not None:
            intrinsics = Intrinsics.from_tuple(intrinsics, width=w, height=h)
        if depth is not None:
            if not isinstance(depth, np.ndarray) or depth.shape[:2] != (h, w) or depth.ndim != 2:
                raise HandPoseError(
                    f"depth must be an (H, W) image aligned with the {w}x{h} colour image, "
                    f"got shape {getattr(depth, 'shape', None)}"
                )
            depth_mm = depth_to_mm(depth)
        if self._track_shape != (h, w):
            self.reset()

        source, box = None, None
        if self.roi is not None:
            box, source = self._roi_box(h, w), "roi"
            if box is None:
                return []
        elif self._track is not None:
            box, source = self._track.clipped(w, h), "track"
        if box is None and depth is not None and intrinsics is not None:
            box, source = self._depth_box(depth_mm, intrinsics), "depth"
        if box is None:
            box, source = self._search(rgb), "search"
            if box is None:
                self.reset()
                return []

        hand = self._frame_hand(continuing=source == "track")
        if source != "track":
            self._vote.reset()  # a new track (the ROI's frames are each one)
        out, vote = self._choose(self._predict_box(rgb, box, hand))
        if source in self.cfg["refine"]:
            fitted = self._fitted_box(out).clipped(w, h)
            if fitted is not None:
                box, out = fitted, self._predict_box(rgb, fitted, out["hand"])[0]
        conf = out["conf"]
        mean_conf = float(conf.mean())
        if self.tracking and source != "roi" and mean_conf >= self.cfg["track_min_confidence"]:
            self._track = self._fitted_box(out)
            self._track_shape = (h, w)
            if vote is not None:
                self._vote.keep(vote)
        else:
            self.reset()
        if mean_conf < self.cfg["min_confidence"]:
            return []

        xyz = np.full((len(conf), 3), np.nan, np.float32)
        if depth is not None and intrinsics is not None:
            xyz = self._lift(out["uv"], depth_mm, intrinsics)
        x0, y0, x1, y1 = box.xyxy
        extras = {"belief_maps": out["maps"], "stage_maps": out["stage_maps"], "warp": out["warp"],
                  "crop": out["crop"], "box_source": source, "handedness": out["hand"]}
        return [HandPose(out["uv"].astype(np.float32), xyz, conf.astype(np.float32), self.joint_names,
                         (x0, y0, x1, y1), extras)]

    def _lift(self, uv: np.ndarray, depth_mm: np.ndarray, intr: Intrinsics) -> np.ndarray:
        """(J, 2) px -> (J, 3) float32 metres by a median depth lookup; NaN where no valid depth."""
        h, w = depth_mm.shape
        r = int(self.cfg["depth_window"])
        xyz = np.full((len(uv), 3), np.nan, np.float32)
        for j, (u, v) in enumerate(uv):
            if not (np.isfinite(u) and np.isfinite(v)):
                continue
            ui, vi = int(round(float(u))), int(round(float(v)))
            win = depth_mm[max(0, vi - r) : min(h, vi + r + 1), max(0, ui - r) : min(w, ui + r + 1)]
            vals = win[win > 0]
            if vals.size:
                xyz[j] = intr.backproject(np.array([u, v]), np.median(vals)) / 1000.0
        return xyz

    def debug_image(self, image: np.ndarray, poses: list[HandPose]) -> np.ndarray:
        """(H, W, 3) uint8 RGB: max over the keypoint maps (JET) blended into each hand's box + skeleton."""
        rgb = as_rgb(image).copy()
        h, w = rgb.shape[:2]
        size = self.spec.size
        for pose in poses:
            maps = pose.extras.get("belief_maps")
            warp = pose.extras.get("warp")
            if maps is not None and warp is not None:
                up = self.codec.upsample(maps[: len(pose.joint_names)]).max(axis=0)
                heat = cv2.applyColorMap(np.clip(up * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
                heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
                inv = cv2.invertAffineTransform(warp)
                heat_img = cv2.warpAffine(heat, inv, (w, h), flags=cv2.INTER_LINEAR)
                mask = cv2.warpAffine(np.ones((size, size), np.float32), inv, (w, h))[..., None] * 0.5
                rgb = (rgb * (1 - mask) + heat_img * mask).astype(np.uint8)
            draw_skeleton(rgb, pose.uv_px, pose.confidence, layout_for(pose.joint_names).edges)
        return rgb


def draw_skeleton(rgb: np.ndarray, uv_px: np.ndarray, confidence: np.ndarray | None,
                  edges: Sequence[tuple[int, int]], min_conf: float = 0.0, thickness: int = 2) -> np.ndarray:
    """Draw bones and joints in place on an (H, W, 3) uint8 RGB image and return it; one hue per finger.

    uv_px: (J, 2) px; confidence: (J,) in [0, 1] or None; edges: (parent, child) joint indices.
    Joints that are NaN or below ``min_conf`` are left out, with their bones.
    """
    colours = [(255, 255, 255), (255, 80, 80), (255, 200, 0), (80, 220, 80), (0, 180, 255), (200, 80, 255)]
    ok = np.all(np.isfinite(uv_px), axis=1)
    if confidence is not None:
        ok &= np.asarray(confidence) >= min_conf
    pts = np.nan_to_num(np.asarray(uv_px, np.float64)).round().astype(int)
    for a, b in edges:
        if ok[a] and ok[b]:
            colour = colours[1 + (b - 1) // 4 if b > 0 else 0]
            cv2.line(rgb, tuple(pts[a]), tuple(pts[b]), colour, thickness, cv2.LINE_AA)
    for j in np.nonzero(ok)[0]:
        colour = colours[0 if j == 0 else 1 + (j - 1) // 4]
        cv2.circle(rgb, tuple(pts[j]), thickness + 1, colour, -1, cv2.LINE_AA)
    return rgb
