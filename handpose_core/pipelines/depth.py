"""Depth pipeline (DeepPrior): depth frame -> crop (codec) -> model -> decode (codec) -> HandPose.

The same :class:`~handpose_core.codecs.depth_crop.DepthCropCodec` that made the training labels
decodes the predictions, with the codec settings recorded in the checkpoint (``meta['codec']``).

Passes: with ``meta['inference']['passes'] = 2`` the hand is cropped again around the centroid of
the first pass's joints and predicted again (the model must have been trained on crops centred
like that too); checkpoints without the entry run one pass. With ``meta['inference']['align'] =
[a, b]`` (joint indices) that crop is also turned so that the previous pass's joint a -> joint b
points up, as the model saw such crops in training (``DeepPriorRecipe.align``).

Mirror averaging: with ``meta['inference']['flip_average']`` (a model trained on mirrored crops)
a searched frame's final pass runs the crop and its left-right mirror as one batch of 2 and
averages the two predictions, the mirror's u negated back; a tracked frame only with
``track.flip_average`` (:data:`TRACK_DEFAULTS`). A mirrored hand is the other hand with the same
joint order, so nothing is swapped. The earlier passes only place the next crop and run once:
mirroring them too gained 0.06 mm. The 2026-12-01 packaged weights, 2,000 held-out frames:
21.55 -> 20.94 mm; 20 x 60 tracked frames: 16.66 -> 15.59 mm (the 2026-12-02 weights: 15.43 -> 14.67 mm); the
batch of 2 costs ~0.55 ms over one crop (1.0 -> 1.55 ms in onnxruntime on the 2-core development CPU).
With ``meta['inference']['rotation_average']`` (angles, deg) that final pass also cuts its crop
turned by each angle, mirror-averages every crop in the same batch and averages the joints in the
camera frame (``DeepPriorRecipe.rotation_average``; +-15 deg, 2026-12-06 packaged weights: 2,000
held-out frames 18.16 -> 17.83 mm). It needs ``flip_average``: without it the final pass is the crop alone.

Judging the hand search's candidates: the search (:meth:`DepthCropCodec.locate`) takes the nearest
isolated hand-sized blob, holding back one cut by the image border, so a ball or a box can come
before a hand at the border. With ``meta['inference']['search']['candidates']`` > 1 (and
``flip_average``) a searched frame runs up to that many of the search's candidates through every
pass where the first one's result fits its crop badly (:func:`fit_score`: joints on the crop's surface,
the mirror's agreement, how full the crop is; below ``accept``), and a later candidate replaces
the first only where it scores more than ``margin`` higher. About 9 in 10 searched frames accept
their first candidate and cost nothing more; the others pay the rest of the search and the passes
once per further candidate.

Tracking (a stream of frames, as in the ROS node): a model with 2 or more passes was trained on
crops centred on the joints, so the previous frame's final joints serve as the first pass of the
next frame. A tracked frame skips the hand search and the searched-centre pass: it crops on the
previous joint centroid (turned by the previous joints' ``align`` pair) and runs ``passes``
(:data:`TRACK_DEFAULTS`, default 1) network passes. The track is dropped, and the frame searched
as an unrelated one:

- when the tracked crop holds less than ``min_fill`` of pixels inside the cube (the hand left it);
- when the mean joint confidence falls below ``min_confidence``;
- when the image size or the intrinsics change, and on :meth:`DepthPipeline.reset`;
- every ``redetect_every`` frames (0 = never): a track that slid onto another object is
  corrected within that many frames.

Settings: ``meta['inference']['track']`` (a dict of :data:`TRACK_DEFAULTS` entries) and the
``track`` constructor keyword (False turns tracking off). ``HandPose.extras['box_source']`` says
which path a frame took: ``"track"`` or ``"search"``.

Left and right hands: a network trained on right hands only (``meta['inference']['hands'] ==
"right"``, the default recipe's) runs every crop of a left hand mirrored (u -> -u in, its joints'
u negated back out), so a left hand is the mirror image of a right one, exactly. ``handedness``
(constructor keyword, or the attribute) says which hand is in view: ``right``, ``left``, or ``auto``,
where a searched frame that starts a track runs every pass as each hand and keeps the one whose
joints lie farther from the network's mean pose (shown the wrong hand, it hedges), and the track keeps
that hand, through its re-searches too (``track.handedness_frames``, default 1: more frames weigh
the hand longer, see :class:`~handpose_core.pipelines.hands.HandVote`; no setting won clearly). That
takes the wrong hand in about one frame in six and costs accuracy (see the README): tell it.
``HandPose.extras["handedness"]`` says which was taken (None for a network that saw both hands).
Such a network is not mirror-averaged (``flip_average``: the mirror is the other hand); its final
pass still averages the ``rotation_average`` crops, and the search's candidates are judged with a
mirror gap of 0.

Per-joint confidence: the geometric one, 1.0 for a joint predicted inside the crop's cube, falling
linearly to 0.0 at 1.5 cube half-widths from the centre along the worst of u, v, d (a hand the
model cannot explain tends to push joints out of the cube), times, for a network with a confidence
head (``models.deep_prior``), the head's probability that the joint lies within the checkpoint's
``inference.confidence_mm`` of the truth, averaged over the final pass's crops. Tracking follows the
geometric one alone, as before the head: a finger the network cannot read is no reason to lose the hand.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from handpose_core.camera import Intrinsics
from handpose_core.checkpoint import save_checkpoint
from handpose_core.codecs.depth_crop import DepthCropCodec, NoHandError, depth_to_mm
from handpose_core.errors import HandPoseError
from handpose_core.estimator import HandPose
from handpose_core.keypoints import HAND21, KeypointLayout, layout_for
from handpose_core.models import create_model
from handpose_core.models.inference import load_for_inference
from handpose_core.pipelines.hands import Handedness, HandVote, check_hands

TRACK_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "min_fill": 0.05,  # share of crop pixels inside the cube (a hand fills ~15-40 %)
    "min_confidence": 0.5,  # mean joint confidence (see joint_confidence)
    "redetect_every": 30,  # frames: 1 s at 30 Hz
    # network passes on a tracked frame. Measured with the packaged weights on 20 x 60 frames of
    # moving hands (evaluate_deep_prior --sequences): every frame searched 19.52 mm in 4.7 ms;
    # tracked, 1 pass 19.58 mm in 2.0 ms; tracked, 2 passes 19.26 mm in 3.0 ms.
    "passes": 1,
    # mirror-average a tracked frame's pass too, where the checkpoint says flip_average. Off: a
    # tracked frame is the node's hot path. Packaged weights, 20 x 60 tracked frames: 15.43 mm
    # without, 14.67 mm with; the LARGE_DATA depth node's p50 6.9-7.7 ms without, 8.9-9.2 with.
    "flip_average": False,
    # a right-hand network on handedness auto: the frames of a track over which both hands are run
    # and their margins summed before the track keeps one hand (HandVote). 1: the hand is decided on
    # the frame that starts the track and kept, re-searches (redetect_every) included, which then run
    # one way. Tracked, 40 x 60 held-out frames (evaluate_deep_prior --sequences 40 --handedness
    # auto), 1 / 10 / 60 frames / deciding afresh on each re-search (as before): 24-min right-hand
    # weights 15.07 / 16.21 / 16.67 / 16.13 mm (told 13.35); 60-min weights 17.40 / - / 16.83 / 16.87
    # mm. No setting won on both: a few sequences with the wrong hand decide each figure. 1 is the
    # cheapest.
    "handedness_frames": 1,
    # a right-hand network with a confidence head, on handedness auto: a frame's margin also weighs how
    # much surer the network is of its joints run as a left hand than as a right one (mean learned
    # confidence, times this; see DepthPipeline._as_hand). Default-recipe 24-min weights with the head,
    # one frame's pick: weight fitted on 1,000 frames of seed 3000 (0.15-0.35 within 0.5 points), then
    # 2,000 held-out frames of seed 1000 (evaluate_deep_prior --handedness auto): the hand's own 82.5 %
    # -> 86.2 %, 19.80 -> 18.41 mm (told 14.14); 20 tracked sequences 14.52 -> 12.57 mm. The
    # confidence alone picks as well as the spread (82.1 %); they err on different frames.
    "handedness_confidence_weight": 0.2,
}


# Judging the hand search's candidates on a searched frame (DepthPipeline._searched). Written into
# the checkpoint's meta['inference']['search'] by the training recipe (DeepPriorRecipe.search_candidates); a
# checkpoint without the entry takes the search's first candidate, as before.
SEARCH_DEFAULTS: dict[str, Any] = {
    "candidates": 1,  # the search's candidates run through the network (1: its first, unjudged)
    # fit_score weights; the first candidate's score at and above which no other is searched for;
    # the lead a later candidate needs over the first. Weights fitted (logistic regression on "within
    # 60 mm", then rounded) on the candidates of 2,000 synthetic frames of seed 3000 with the 2026-12-06
    # packaged weights; see DeepPriorRecipe.search_candidates for the figures.
    "weights": {"agree": 5.0, "mirror_gap": -4.0, "fill": -2.5},
    "accept": 1.0,
    "margin": 2.0,
}
FIT_FEATURES = ("agree", "mirror_gap", "fill")


def fit_score(uvd_norm: np.ndarray, crop_image: np.ndarray, mirror_gap: float, weights: dict[str, float]) -> float:
    """How well a prediction fits the crop it came from: higher is more hand-like. A linear score of

    - ``agree``: the share of the (J, 3) normalized uvd joints whose depth lies within 0.2 (30 mm at the
      300 mm cube) of the crop's (S, S) normalized depth at their pixel: joints lie on a hand's surface;
    - ``mirror_gap``: mean joint distance between the crop's and its mirror image's predictions
      (normalized units): the network answers a hand consistently, a ball or a floor patch not;
    - ``fill``: the share of crop pixels strictly inside the cube: a surface patch fills the crop.
    """
    size = crop_image.shape[0]
    uv = np.clip(np.rint(uvd_norm[:, :2] * (size / 2.0) + (size - 1) / 2.0).astype(int), 0, size - 1)
    features = {
        "agree": float(np.mean(np.abs(crop_image[uv[:, 1], uv[:, 0]] - uvd_norm[:, 2]) < 0.2)),
        "mirror_gap": float(mirror_gap),
        "fill": float(np.mean((crop_image > -1.0) & (crop_image < 1.0))),
    }
    return sum(float(w) * features[name] for name, w in weights.items())


def _settings(inference: dict[str, Any], name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated by the checkpoint's ``meta['inference'][name]``; HandPoseError for keys it
    does not know (or an entry that is not a dict)."""
    given = inference.get(name, {})
    unknown = set(given) - set(defaults) if isinstance(given, dict) else {"(not a dict)"}
    if unknown:
        raise HandPoseError(f"unknown checkpoint inference.{name} settings: {sorted(unknown)}")
    return {**defaults, **given}


def joint_confidence(uvd_norm: np.ndarray) -> np.ndarray:
    """(J, 3) normalized uvd -> (J,) float32 in [0, 1]: 1 inside the cube, 0 at 1.5x its half-width."""
    worst = np.abs(np.asarray(uvd_norm, dtype=np.float32)).max(axis=1)
    return np.clip((1.5 - worst) / 0.5, 0.0, 1.0).astype(np.float32)


class DepthPipeline(Handedness):
    """A DeepPrior checkpoint blob, ready for inference on ``device`` at ``precision``; ``handedness``:
    see the module doc."""

    def __init__(self, blob: dict[str, Any], device: torch.device, precision: str = "fp32",
                 optimize: bool = True, backend: str = "torch", threads: int = 0,
                 track: bool | None = None, handedness: str = "auto") -> None:
        meta = blob["meta"]
        self.model, self.dtype = load_for_inference(blob, device, precision, optimize, backend, threads)
        # the network's mean pose, (J, 3) normalized uvd: its PCA layer's offset (zeros for a model without one)
        mean = blob["state_dict"].get("pca.bias")
        n_joints = len(meta["joint_names"])
        self._mean_pose = (np.zeros((n_joints, 3), np.float32) if mean is None
                           else mean.detach().cpu().numpy().reshape(n_joints, 3))
        self.device = device
        try:
            self.codec = DepthCropCodec(**meta.get("codec", {}))
        except TypeError as exc:
            raise HandPoseError(f"checkpoint codec settings are not valid: {exc}") from exc
        self.joint_names = tuple(meta["joint_names"])
        self.layout = layout_for(self.joint_names)
        inference = meta.get("inference", {})
        self.passes = max(1, int(inference.get("passes", 1)))
        self.flip_average = bool(inference.get("flip_average", False))
        self.hands = check_hands(inference.get("hands", "both"), self.flip_average, "checkpoint inference.")
        # the final pass of a searched frame is averaged: mirror (flip_average) and/or rotation_average
        self.average_final = self.flip_average or self.hands == "right"
        angles = inference.get("rotation_average", [])
        try:
            self.rotation_average = tuple(float(a) for a in angles)
        except (TypeError, ValueError):
            raise HandPoseError(f"checkpoint inference.rotation_average must be a list of angles in degrees, "
                                f"got {angles!r}") from None
        if not all(np.isfinite(self.rotation_average)):
            raise HandPoseError(f"checkpoint inference.rotation_average must be finite angles, got {angles!r}")
        align = inference.get("align")
        self.align = None if align is None else (int(align[0]), int(align[1]))
        if self.align is not None and not all(0 <= i < len(self.joint_names) for i in self.align):
            raise HandPoseError(
                f"checkpoint inference.align {align} is not a pair of the {len(self.joint_names)} joints")
        self.track_cfg = _settings(inference, "track", TRACK_DEFAULTS)
        self.search_cfg = _settings(inference, "search", SEARCH_DEFAULTS)
        weights = self.search_cfg["weights"]
        try:
            valid = (isinstance(weights, dict) and set(weights) <= set(FIT_FEATURES)
                     and all(np.isfinite(float(v)) for v in weights.values())
                     and all(np.isfinite(float(self.search_cfg[k])) for k in ("accept", "margin")))
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise HandPoseError(f"checkpoint inference.search.weights must map some of {list(FIT_FEATURES)} "
                                f"to numbers, accept and margin be numbers; got {weights!r}, "
                                f"accept {self.search_cfg['accept']!r}, margin {self.search_cfg['margin']!r}")
        candidates = self.search_cfg["candidates"]
        if not (isinstance(candidates, int) and candidates >= 1):
            raise HandPoseError(f"checkpoint inference.search.candidates must be an integer >= 1, got {candidates!r}")
        if int(self.track_cfg["passes"]) < 1:
            raise HandPoseError(f"checkpoint inference.track.passes must be >= 1, got {self.track_cfg['passes']}")
        if track is not None:
            self.track_cfg["enabled"] = bool(track)
        # tracking needs a model trained on joint-centred crops, i.e. one with a second pass
        self.tracking = bool(self.track_cfg["enabled"]) and self.passes >= 2
        self._hand: str | None = None  # the hand the network calls of this frame run as (right-hand network)
        self._vote = HandVote(self.track_cfg["handedness_frames"])
        self.handedness = handedness

    def reset(self) -> None:
        """Forget the track: the next frame is searched as an unrelated one."""
        self._track: tuple[np.ndarray, float] | None = None  # (joint centroid mm, crop rotation deg)
        self._track_key: tuple | None = None
        self._tracked_frames = 0
        self._vote.reset()

    def _run(self, crop, mirror: bool = False) -> np.ndarray:
        """One network pass on a crop -> (J, 3) normalized uvd; with ``mirror`` the mean of the crop's
        prediction and its mirror image's (see the module doc)."""
        return self._run_batch([crop], mirror)[0][0]

    def _run_batch(self, crops: list, mirror: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One network call on N crops -> ((N, J, 3) normalized uvd, (N,) mirror gap, (N, J) learned
        confidence or None for a network without the head); with ``mirror`` each is the mean of the
        crop's prediction and its mirror image's, all mirrors in the same batch of 2N, and the gap is
        the mean joint distance between the two (normalized units; 0 without)."""
        n = len(crops)
        x = torch.from_numpy(np.stack([c.image for c in crops]))[:, None]
        left = self._hand == "left"
        if left:  # a right-hand network sees a left hand mirrored: a right hand
            x = x.flip(-1)
        if mirror:
            x = torch.cat([x, x.flip(-1)])  # the crop's u -> -u: column c -> size - 1 - c
        with torch.inference_mode():
            out = self.model(x.to(device=self.device, dtype=self.dtype)).float().cpu().numpy()
        # a network with a confidence head adds a fourth column (models.deep_prior)
        uvd, learned = out[..., :3], (out[..., 3] if out.shape[-1] == 4 else None)
        if left:
            uvd[:, :, 0] *= -1.0
        if not mirror:
            return uvd, np.zeros(n, np.float32), learned
        uvd[n:, :, 0] *= -1.0
        gap = np.linalg.norm(uvd[:n] - uvd[n:], axis=2).mean(axis=1)
        return (uvd[:n] + uvd[n:]) / 2.0, gap, None if learned is None else (learned[:n] + learned[n:]) / 2.0

    def _final(self, depth_mm: np.ndarray, intrinsics: Intrinsics, crop, rotation_deg: float,
               average: bool) -> tuple[np.ndarray, float, np.ndarray | None]:
        """The final pass on ``crop`` (turned by ``rotation_deg``) -> ((J, 3) normalized uvd in it, the
        crop's mirror gap (see :meth:`_run_batch`), (J,) learned confidence or None). With ``average``:
        each crop mirror-averaged where the checkpoint says ``flip_average``, and with
        ``rotation_average`` offsets the crop is also cut turned by each offset, all in one batch; the
        joints are averaged in the camera frame and encoded back into ``crop``, the confidences
        averaged."""
        mirror = average and self.flip_average
        if not (average and self.rotation_average):
            uvd, gap, learned = self._run_batch([crop], mirror=mirror)
            return uvd[0], float(gap[0]), None if learned is None else learned[0]
        crops = [crop] + [self.codec.encode_mm(depth_mm, intrinsics, com_xyz_mm=crop.com_xyz_mm,
                                               rotation_deg=rotation_deg + offset)
                          for offset in self.rotation_average]
        uvd, gap, learned = self._run_batch(crops, mirror=mirror)
        xyz_m = np.mean([self.codec.decode_joints(u, c) for u, c in zip(uvd, crops, strict=True)], axis=0)
        return (self.codec.encode_joints(xyz_m, crop), float(gap[0]),
                None if learned is None else learned.mean(axis=0))

    def predict(self, image: np.ndarray, intrinsics: Intrinsics | None, depth: np.ndarray | None = None
                ) -> list[HandPose]:
        """(H, W) uint16 mm or float32 m depth -> [HandPose] (one hand) or [] when nothing is in range.

        NaN/inf/negative depth counts as no data. ``depth`` (an aligned extra image) is unused: the
        image itself is the depth. Raises HandPoseError for a wrong dtype/shape or no intrinsics.
        """
        if not isinstance(image, np.ndarray):
            raise HandPoseError(f"depth image must be a numpy array, got {type(image).__name__}")
        if image.ndim != 2:
            raise HandPoseError(
                f"this is a depth model: image must be (H, W) uint16 mm or float32 m, got shape {image.shape}"
            )
        if image.dtype not in (np.uint16, np.float32, np.float64):
            raise HandPoseError(f"depth image must be uint16 (mm) or float32 (m), got dtype {image.dtype}")
        if intrinsics is None:
            raise HandPoseError("a depth model needs camera intrinsics (fx, fy, cx, cy)")
        depth_mm = depth_to_mm(image)
        key = (image.shape, intrinsics.as_tuple())
        found = self._tracked(depth_mm, intrinsics, key) if self.tracking else None
        source = "track"
        if found is None:
            source = "search"
            try:
                # after _tracked: a track it dropped has reset its vote, a re-search keeps it
                found = self._as_hand(self._frame_hand(continuing=True),
                                      lambda: self._searched(depth_mm, intrinsics))
            except NoHandError:
                self.reset()
                return []
        (uvd, crop, xyz_m, _, learned), vote = found
        uv_px = self.codec.decode_uv(uvd, crop)
        inside = joint_confidence(uvd)
        # the track follows the geometric confidence alone: a hand it cannot read well is still there
        if self.tracking and float(inside.mean()) >= self.track_cfg["min_confidence"]:
            self._track = self._next_crop(uv_px, xyz_m)
            self._track_key = key
            self._tracked_frames = 0 if source == "search" else self._tracked_frames + 1
            if vote is not None:
                self._vote.keep(vote)
        else:
            self.reset()
        half_px = (self.codec.size - 1) / 2.0
        crop_uv = (uvd[:, :2] * (self.codec.size / 2.0) + half_px).astype(np.float32)
        extras = {"crop": crop.image, "crop_uv": crop_uv, "uvd_norm": uvd, "warp": crop.warp,
                  "com_xyz_m": (crop.com_xyz_mm / 1000.0).astype(np.float32), "box_source": source,
                  "handedness": self._hand}
        confidence = inside if learned is None else (inside * learned).astype(np.float32)
        return [HandPose(uv_px, xyz_m, confidence, self.joint_names, crop.box_px, extras)]

    def _next_crop(self, uv_px: np.ndarray, xyz_m: np.ndarray) -> tuple[np.ndarray, float] | None:
        """(centre mm, rotation deg) of the crop that follows a prediction ((J, 2) px, (J, 3) m);
        None for a non-finite one.

        The centre is the joint centroid: the estimate re-crops there, which fixes centres that a
        forearm or a nearby surface pulled off the hand; with ``align`` the crop is also turned so
        that the predicted pair points up, as in training.
        """
        centre_mm = xyz_m.astype(np.float64).mean(axis=0) * 1000.0
        if not (np.all(np.isfinite(centre_mm)) and centre_mm[2] > 0):
            return None
        rotation_deg = 0.0
        if self.align is not None:
            du, dv = uv_px[self.align[1]] - uv_px[self.align[0]]
            rotation_deg = float(np.degrees(np.arctan2(dv, du))) + 90.0  # the pair up, as in training
        return centre_mm, rotation_deg

    def _passes(self, depth_mm: np.ndarray, intrinsics: Intrinsics, crop, passes: int, average_last: bool,
                rotation_deg: float = 0.0):
        """``passes`` network passes, the first on ``crop`` (turned by ``rotation_deg``), each later one on
        the crop that follows the previous one -> (uvd, crop, xyz m, the final crop's mirror gap, the
        final pass's learned confidence: None for a network without the head, or where the passes
        stop early); ``average_last``: the last of them averaged (see :meth:`_final`)."""
        gap, learned = 0.0, None
        if passes == 1:
            uvd, gap, learned = self._final(depth_mm, intrinsics, crop, rotation_deg, average_last)
        else:
            uvd = self._run(crop)
        xyz_m = self.codec.decode_joints(uvd, crop)
        for k in range(1, passes):
            follow = self._next_crop(self.codec.decode_uv(uvd, crop), xyz_m)
            if follow is None:
                break
            crop = self.codec.encode_mm(depth_mm, intrinsics, com_xyz_mm=follow[0], rotation_deg=follow[1])
            if k == passes - 1:
                uvd, gap, learned = self._final(depth_mm, intrinsics, crop, follow[1], average_last)
            else:
                uvd = self._run(crop)
            xyz_m = self.codec.decode_joints(uvd, crop)
        return uvd, crop, xyz_m, gap, learned

    def _searched(self, depth_mm: np.ndarray, intrinsics: Intrinsics):
        """A frame without a track -> :meth:`_passes`' result for the hand search's best candidate.

        The search's first candidate runs every pass. With ``search.candidates`` > 1 (and
        ``flip_average``), where its :func:`fit_score` is below ``search.accept`` the search goes on
        for up to ``candidates - 1`` more, each runs every pass too, and the best-scoring one replaces
        the first where it scores more than ``search.margin`` higher. Raises NoHandError.
        """
        def run(com_mm: np.ndarray):
            crop = self.codec.encode_mm(depth_mm, intrinsics, com_xyz_mm=com_mm)
            return self._passes(depth_mm, intrinsics, crop, self.passes, self.average_final)

        def score(result) -> float:
            uvd, crop, _, gap, _ = result
            return fit_score(uvd, crop.image, gap, self.search_cfg["weights"])

        found = self.codec.candidates(depth_mm, intrinsics)
        first = run(next(found))  # NoHandError where nothing is in range
        more = int(self.search_cfg["candidates"]) - 1 if self.average_final else 0
        if more <= 0:
            return first
        first_score = score(first)
        if first_score >= float(self.search_cfg["accept"]):
            return first
        best, best_score = first, first_score
        for result in map(run, itertools.islice(found, more)):
            if (s := score(result)) > best_score:
                best, best_score = result, s
        return best if best_score - first_score > float(self.search_cfg["margin"]) else first

    def _as_hand(self, hand: str | None, run):
        """``run()`` (a frame's passes, -> :meth:`_passes`' result) as ``hand`` -> (its result, None);
        for a right-hand network with ``hand`` None, as each hand -> (the result of the hand the
        track's vote calls, the vote's sum with this frame's margin in it). Sets ``self._hand``.

        A frame's margin is how much farther the left run's final joints lie from the network's mean
        pose than the right run's (normalized units): shown the wrong hand, the network hedges
        towards its mean pose. With a confidence head the margin also has the left run's mean learned
        confidence minus the right run's, weighted (``track.handedness_confidence_weight``). 24-minute
        right-hand weights, 300 held-out frames run both ways: one
        frame's margin picks the hand in 84 % of them (22.2 mm; told, 18.0 mm), joints on the crop's
        surface (``agree`` of :func:`fit_score`) in 65 % (28.1 mm). On the first 500 held-out frames
        (evaluate_deep_prior --handedness auto): 84.6 %, 21.6 mm (told: 17.5 mm)."""
        if self.hands != "right" or hand is not None:
            self._hand = hand
            return run(), None
        results = {}
        for hand in ("right", "left"):
            self._hand = hand
            results[hand] = run()
        spread = {h: float(np.linalg.norm(r[0] - self._mean_pose, axis=1).mean()) for h, r in results.items()}
        margin = spread["left"] - spread["right"]
        if results["left"][4] is not None and results["right"][4] is not None:  # a confidence head: surer of one
            margin += float(self.track_cfg["handedness_confidence_weight"]) * float(
                np.mean(results["left"][4]) - np.mean(results["right"][4]))
        self._hand, total = self._vote.weigh(margin)
        return results[self._hand], total

    def _tracked(self, depth_mm: np.ndarray, intrinsics: Intrinsics, key: tuple):
        """This frame from the previous one's joints, as the track's hand (see :meth:`_as_hand`) ->
        (:meth:`_passes`' result, vote sum or None), or None to search instead."""
        redetect = int(self.track_cfg["redetect_every"])
        if self._track is None or self._track_key != key:
            self.reset()
            return None
        if redetect > 0 and self._tracked_frames + 1 >= redetect:
            self._track = None  # search again; the same hand, so its vote goes on
            return None
        centre_mm, rotation_deg = self._track
        crop = self.codec.encode_mm(depth_mm, intrinsics, com_xyz_mm=centre_mm, rotation_deg=rotation_deg)
        if float(np.mean(crop.image < 1.0)) < self.track_cfg["min_fill"]:
            self.reset()  # the hand left the tracked cube
            return None
        average = self.average_final and bool(self.track_cfg["flip_average"])
        return self._as_hand(self._frame_hand(continuing=True),
                             lambda: self._passes(depth_mm, intrinsics, crop, int(self.track_cfg["passes"]), average,
                                                  rotation_deg))

    def debug_image(self, image: np.ndarray, poses: list[HandPose], scale: int = 3) -> np.ndarray:
        """(S*scale, S*scale, 3) uint8 RGB: the first hand's normalized crop with its skeleton.

        Without a hand: the input depth, min-max normalized, at the same size, marked "no hand".
        """
        size = self.codec.size * scale
        if poses and "crop" in poses[0].extras:
            pose = poses[0]
            return draw_crop(pose.extras["crop"], pose.extras["crop_uv"], self.layout, scale, pose.confidence)
        canvas = np.zeros((size, size, 3), np.uint8)
        if isinstance(image, np.ndarray) and image.ndim == 2 and image.size:
            mm = depth_to_mm(image) if image.dtype in (np.uint16, np.float32, np.float64) else None
            if mm is not None and np.any(mm > 0):
                valid = mm > 0
                lo, hi = float(mm[valid].min()), float(mm[valid].max())
                gray = np.where(valid, 255.0 * (1.0 - (mm - lo) / max(hi - lo, 1.0)), 0.0).astype(np.uint8)
                h, w = gray.shape
                f = size / max(h, w)
                gray = cv2.resize(gray, (max(1, int(w * f)), max(1, int(h * f))), interpolation=cv2.INTER_NEAREST)
                canvas[: gray.shape[0], : gray.shape[1]] = gray[..., None]
        cv2.putText(canvas, "no hand", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 64, 64), 2)
        return canvas


LOW_CONFIDENCE = 0.5
"""Joints below this confidence are drawn red in the debug image (:func:`draw_crop`)."""


# RGB of the thumb, index, middle, ring and little finger's bones in draw_crop (HAND21 order)
FINGER_COLOURS = ((255, 80, 80), (255, 200, 0), (80, 220, 80), (0, 180, 255), (200, 90, 255))


def draw_crop(crop: np.ndarray, crop_uv: np.ndarray, layout: KeypointLayout, scale: int = 3,
              confidence: np.ndarray | None = None) -> np.ndarray:
    """(S, S) normalized crop in [-1, 1] and (J, 2) crop pixels -> (S*scale, S*scale, 3) uint8 RGB.

    Near is bright, the far face and holes are black; bones are coloured per finger; joints are
    white dots, larger red ones where ``confidence`` ((J,), optional) is below :data:`LOW_CONFIDENCE`.
    """
    gray = np.clip((1.0 - crop) * 127.5, 0, 255).astype(np.uint8)
    size = crop.shape[0] * scale
    rgb = cv2.cvtColor(cv2.resize(gray, (size, size), interpolation=cv2.INTER_NEAREST), cv2.COLOR_GRAY2RGB)
    pts = (np.asarray(crop_uv, dtype=np.float64) + 0.5) * scale - 0.5
    for n, (a, b) in enumerate(layout.edges):
        pa, pb = pts[a], pts[b]
        if np.all(np.isfinite(pa)) and np.all(np.isfinite(pb)):
            colour = FINGER_COLOURS[(n // 4 if layout.num_joints == 21 else n) % len(FINGER_COLOURS)]
            cv2.line(rgb, tuple(int(round(c)) for c in pa), tuple(int(round(c)) for c in pb), colour, 2, cv2.LINE_AA)
    low = (np.zeros(len(pts), bool) if confidence is None
           else np.asarray(confidence, np.float32).reshape(-1) < LOW_CONFIDENCE)
    for p, unsure in zip(pts, low, strict=True):
        if np.all(np.isfinite(p)):
            centre = tuple(int(round(c)) for c in p)
            cv2.circle(rgb, centre, 5 if unsure else 3, (255, 40, 40) if unsure else (255, 255, 255), -1, cv2.LINE_AA)
    return rgb


def template_pose(layout: KeypointLayout) -> np.ndarray:
    """(J, 3) normalized uvd of an open hand, fingers up, thumb to the image's left (HAND21), else zeros:
    a right hand seen from its back, or a left hand palm to the camera.

    Used as the mean pose of an untrained checkpoint so its output at least looks like a hand.
    """
    if layout.joint_names != HAND21.joint_names:
        return np.zeros((layout.num_joints, 3), np.float32)
    pts = [(0.0, 0.55, 0.0)]
    thumb = [(-0.15, 0.42), (-0.28, 0.28), (-0.38, 0.15), (-0.46, 0.03)]
    pts += [(u, v, -0.05) for u, v in thumb]
    for base_u, length in zip((-0.14, 0.0, 0.13, 0.25), (0.62, 0.68, 0.63, 0.5), strict=True):
        for t in (0.0, 0.45, 0.75, 1.0):
            pts.append((base_u * (1 + 0.3 * t), 0.05 - length * t, -0.1 * t))
    return np.asarray(pts, dtype=np.float32)


def save_untrained(
    path: str | os.PathLike,
    variant: str = "deep_prior_res",
    joint_names: KeypointLayout | tuple[str, ...] | list[str] = HAND21,
    model_config: dict[str, Any] | None = None,
) -> Path:
    """Write a small valid *untrained* DeepPrior checkpoint (for tests of the node and tools).

    The PCA layer is the identity basis around :func:`template_pose`, so the untrained output is
    about that template (for ``head="pca"``). ``model_config`` adds network settings (e.g.
    ``{"head": "dense"}``). Returns the path.
    """
    names = joint_names.joint_names if isinstance(joint_names, KeypointLayout) else tuple(joint_names)
    layout = layout_for(names)
    codec = DepthCropCodec()
    config = {"num_joints": len(names), "bottleneck": min(30, 3 * len(names)), "input_size": codec.size,
              **(model_config or {})}
    torch.manual_seed(0)
    model = create_model(variant, **config)
    with torch.no_grad():
        model.pca.bias.copy_(torch.from_numpy(template_pose(layout).reshape(-1)))
    meta = {
        "modality": "depth",
        "joint_names": list(names),
        "codec": codec.to_config(),
        "pca": {"k": config["bottleneck"], "source": "identity basis around a template pose (untrained)"},
        "provenance": {"untrained": True, "command": "handpose_core.pipelines.depth.save_untrained"},
    }
    path = Path(path)
    save_checkpoint(path, variant, config, model.state_dict(), meta)
    return path
