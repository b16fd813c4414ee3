"""CPM training task for the shared harness: cached hand crops, augmentation, all-stage L2 loss.

Data. Frames are rendered once (synthetic generator, RGB only; or a CMU hand-label folder) and a
square crop around each hand -- ``cache_margin`` x the extent of its 2D labels, as the seed
article suggests -- is stored at ``cache_size`` px in an ``.npz`` cache with its labels and the
affine from the source frame. Training batches are cut from those crops on the fly:

- box: ``crop_margin`` x the label extent (the inference box convention), with scale, centre
  jitter and in-plane rotation (:class:`AugmentConfig`);
- colour: brightness, contrast, per-channel gain, saturation, noise, blur, rare greyscale
  (per crop, applied to the whole batch at once);
- hands (``Recipe.hands``): ``right`` (the light recipe) mirrors every left hand's crop, so the
  network learns right hands only, as OpenPose's hand network is fed (it gets the hand from the body
  detector); the RGB pipeline is told the hand or tries both. ``both`` leaves left hands as they
  are. Either way no keypoint is swapped: a mirrored left hand is a right hand.

Hand-free crops (``DataConfig.negatives``): boxes of 0.7-3x a hand's size cut from the same frames
away from every joint (background, clutter, the forearm), cached the same way with no valid label. A
share of each batch (``negative_share``) is drawn from them with an all-background target, so the
maps, and the confidence the RGB pipeline's scale search and tracker trust, learn to stay low
where there is no hand. Without them the network never sees a box without a hand in training.

Batch ``k`` of a run depends only on (seed, step), so a resumed run sees the same batches.

Loss: intermediate supervision, sum over all T stages of the mean squared error between the
stage's belief maps and the Gaussian targets of :class:`BeliefMapCodec` (Wei et al. 2016).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from handpose_core.codecs.belief_maps import (
    BeliefMapCodec,
    CropBox,
    InputSpec,
    box_from_keypoints,
    crop_image,
    warp_points,
)
from handpose_core.errors import HandPoseError
from handpose_core.keypoints import HAND21
from handpose_core.models.cpm import LIGHT_CONFIG
from handpose_core.pipelines.hands import check_hands
from handpose_core.training.harness import TrainConfig, use_cpu_bf16
from handpose_core.training.metrics_2d import evaluate_2d

log = logging.getLogger(__name__)


# -- configuration -------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """Where training/held-out crops come from and how they are cached.

    source:      'synthetic' or 'cmu:<folder>' (see :mod:`handpose_core.data.cmu_hands`).
    seed:        generator seed of the training frames; held-out frames use ``eval_seed``.
    """

    source: str = "synthetic"
    seed: int = 1
    frames: int = 16000
    eval_source: str = "synthetic"
    eval_seed: int = 1_000_003
    eval_frames: int = 1000
    cache_size: int = 176
    cache_margin: float = 2.2
    cache_dir: str = "runs/cache"
    workers: int = 2
    # hand-free crops cut from the first ``negatives`` training frames (eval: ``eval_negatives``
    # from the held-out frames) and the share of batch items drawn from them; 0 = none
    negatives: int = 0
    negative_share: float = 0.0
    eval_negatives: int = 0


@dataclass
class AugmentConfig:
    """Per-sample augmentation of the training crops (all uniform unless said otherwise)."""

    crop_margin: float = 1.5  # box side / label extent, as at inference
    # Box scale and shift as wide as the boxes inference cuts: the depth box is metric (not fitted
    # to the hand's extent) and the scale search's windows are loose. Tighter jitter (0.9-1.2,
    # 0.05, 20 deg) scored higher on label-fitted crops but lost hands in full frames.
    scale: tuple[float, float] = (0.85, 1.3)  # box side factor
    shift: float = 0.08  # std of the box centre jitter, fraction of the box side
    rotation_deg: float = 30.0  # +- in-plane rotation (the generator already rotates hands in 3D)
    brightness: float = 0.25  # +- fraction of 255
    contrast: float = 0.3  # factor in [1 - c, 1 + c]
    gain: float = 0.12  # per-channel factor in [1 - g, 1 + g]
    saturation: float = 0.4  # blend towards grey by up to this much (or away by half)
    noise_std: float = 6.0  # max std of additive Gaussian noise, grey levels
    blur_prob: float = 0.2
    grey_prob: float = 0.05


@dataclass
class Recipe:
    """A named training setup: model, optimisation, data and augmentation."""

    model_name: str
    model_config: dict[str, Any]
    train: TrainConfig
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sigma_px: float = 6.0  # Gaussian target std in input pixels
    # CPU speed-ups: bfloat16 autocast (oneDNN, ~1.3x on AVX512-BF16 CPUs; only used where the
    # CPU has native bfloat16, see harness.use_cpu_bf16) and channels-last tensors (~1.3x);
    # together ~2x per step. Weights, BatchNorm and the loss stay float32.
    cpu_bf16: bool = False
    channels_last: bool = False
    # Foreground weighting of the L2 loss: pixel weight 1 + fg_weight * (max over the keypoint
    # targets), so the few pixels near joints are not drowned by the easy background. 0 = plain
    # L2 as in the CPM paper (and the packaged cpm_light weights); train_cpm --fg-weight sets it.
    fg_weight: float = 0.0
    # "right": left-hand crops are mirrored before the network (in training, evaluation and the RGB
    # pipeline), which so learns right hands only, as OpenPose's hand network does; the pipeline is
    # told the hand, or tries both (PIPELINE_DEFAULTS["handedness"]). "both": crops as they come.
    hands: str = "both"


RECIPES: dict[str, Recipe] = {
    # CPU recipe: ~160 samples/s on 2 idle AVX2 cores (fewer on a shared machine); the run is bounded by
    # wall clock (the cosine LR schedule runs on time) so that it ends on schedule whatever the load.
    # 40 min of training + ~2 min to render the crop cache + the held-out evaluation fit the
    # 45-minute budget. The step cap lies beyond what 40 min reach, so time ends the run: ~24,000
    # steps on that AVX2 machine, 48,601 on an AVX-512-BF16 one (2026-12-07, 49 ms a step; a 40,000
    # cap would have ended it at 33 min, as a 20,000 cap once did on the slower one). The packaged
    # weights are this recipe's 40-min run on the faster machine: held-out crops PCK@0.2 0.902 with
    # the hand told (the 90-min both-hands weights they replaced: 0.877), tracked sequences 0.901
    # (0.869); the hand not told 0.846 and 0.871.
    "cpm_light": Recipe(
        # the full config, not {}: the checkpoint then keeps its layout if the variant's defaults change
        "cpm_light", dict(LIGHT_CONFIG),
        TrainConfig(steps=100000, batch_size=16, optimizer="adam", lr=3e-3, weight_decay=1e-4,
                    lr_policy="cosine", warmup_steps=100, grad_clip=5.0, time_budget_s=2400.0,
                    log_every=20, ckpt_every=500, out_dir="runs/cpm_light"),
        # Hand-free crops are reported (eval_negatives) but not trained on: 10 % of them cost 0.025
        # crops PCK in a 10-min test; a 38-min run with them tracked 42 held-out sequences at PCK
        # 0.758 against 0.773 for these weights (14,328 against 18,363 steps). The tracker's false
        # locks came from the scale search missing small hands (search_fractions), not from the
        # network firing on hand-free boxes (0.5 % of them reach 0.2). --negative-share turns it on.
        data=DataConfig(negatives=4000, eval_negatives=500),
        # lr 3e-3 and sigma 8 px (were 2e-3 and 6 px): 10-min runs, 1 thread each, two at a time,
        # held-out crops PCK@0.2: 0.678 and 0.687 (two seeds) -> 0.700 (lr), 0.703 (sigma), 0.715
        # (both). Batch 16 stays: batch 64 (lr 4e-3) runs more samples a second, but in 10 min on 2
        # threads its 1,734 x 64 samples scored 0.704 against 0.741 for 6,086 x 16.
        # Tried and not taken (2026-12-06, the same 10-min test; this recipe 0.715): lr 5e-3 0.715;
        # crop_margin 1.3 / 1.2 in training and evaluation (bigger hands in the crop) 0.713 / 0.703;
        # stage convs dilated 1, 2, 4 (a wider view at the same FLOPs) 0.721 in fewer steps (3,696
        # against 4,019), within the 0.01 spread of two seeds. Test-time averaging of the crop at
        # x0.85/1.15 scale or +-15 deg (on top of the mirror; the previous weights, integer argmax):
        # 0.844 -> 0.850 / 0.851, for 3x the network cost.
        # Tried and not taken (2026-12-06, later; runs with 6 % more steps than the baselines, on a
        # quieter machine): 10-min tests sigma 10 px 0.725, weight decay 0 0.724 (this recipe 0.709-0.715,
        # three runs); a weight average (EMA 0.999 / 0.9995) scored what the trained weights did (0.711 /
        # 0.709), the cosine LR already ends at zero. Both changes together in a full 40-min run (25,749
        # steps): held-out crops PCK@0.2 0.859 (this recipe's 40-min run 0.859), AUC 0.783 (0.788), EPE
        # 11.3 px (11.0), full frames depth box 0.805 (0.811), RGB search 0.789 (0.772), tracked 0.836
        # (0.843).
        sigma_px=8.0, cpu_bf16=True, channels_last=True,
        # hands "right" (left hands mirrored, as OpenPose feeds its hand network): 10-min runs, 1
        # thread each, two at a time, 3,230 / 3,224 steps: held-out crops PCK@0.2 0.687 (both hands)
        # -> 0.721 (right hands, the hand told), EPE 19.0 -> 17.2 px. The 40-min run (2026-12-07, a
        # slower day: 15,241 steps where the both-hands run of 2026-12-06 made 24,468): crops 0.870
        # with the hand told (both hands, mirror-averaged: 0.859), depth box 0.828 (0.811), search
        # 0.752 (0.772), tracked 0.844 (0.843); the hand not told (auto) 0.808.
        hands="right",
    ),
    # The OpenPose layout (VGG-19, 6 stages, 368 px): a GPU recipe; one CPU step takes seconds.
    "cpm_openpose": Recipe(
        "cpm_openpose", {},
        TrainConfig(steps=60000, batch_size=16, optimizer="adam", lr=1e-4, weight_decay=0.0,
                    lr_policy="cosine", warmup_steps=1000, grad_clip=10.0, log_every=50, ckpt_every=2000,
                    out_dir="runs/cpm_openpose"),
        data=DataConfig(frames=30000, cache_size=480, cache_margin=2.2),
        sigma_px=7.0,
    ),
    # Smoke test: tiny model, tiny data, seconds.
    "cpm_tiny": Recipe(
        "cpm_tiny", {},
        TrainConfig(steps=20, batch_size=8, optimizer="adam", lr=1e-3, lr_policy="cosine", log_every=5,
                    ckpt_every=0, out_dir="runs/cpm_tiny", tensorboard=False),
        data=DataConfig(frames=48, eval_frames=16, cache_size=96, workers=1),
        sigma_px=4.0,
    ),
}


# -- crop cache ------------------------------------------------------------------------------------
@dataclass
class CropSet:
    """Cached hand crops.

    crops:   (N, C, C, 3) uint8 RGB, C = cache_size.
    uv:      (N, 21, 2) float32 labels in crop pixels.
    visible: (N, 21) bool (generator visibility / CMU visibility flag).
    valid:   (N, 21) bool, the joint is labelled at all.
    warps:   (N, 2, 3) float64 affine, source frame pixels -> crop pixels.
    is_left: (N,) bool.
    """

    crops: np.ndarray
    uv: np.ndarray
    visible: np.ndarray
    valid: np.ndarray
    warps: np.ndarray
    is_left: np.ndarray

    def __len__(self) -> int:
        return len(self.crops)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **asdict(self))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> CropSet:
        with np.load(path) as z:
            return cls(**{k: z[k] for k in ("crops", "uv", "visible", "valid", "warps", "is_left")})


def cache_crop(rgb: np.ndarray, uv_px: np.ndarray, valid: np.ndarray, size: int, margin: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Square crop around a hand's labels: ((size, size, 3) uint8, (K, 2) crop px, (2, 3) warp)."""
    box = box_from_keypoints(uv_px, margin, valid=valid)
    warp = box.warp(size)
    return crop_image(rgb, warp, size), warp_points(uv_px, warp), warp


# A hand-free box keeps every joint this many hand extents (Chebyshev) from its centre: the
# widest training box is 1.5 x 1.3 extents across (half: 0.98), rotated by up to 30 deg (x 1.37),
# plus centre jitter.
NEGATIVE_CLEARANCE = 1.6
NEGATIVE_SCALE = (0.7, 3.0)  # hand-free boxes: this range x the frame's hand (log-uniform)


def negative_crop(rgb: np.ndarray, uv_px: np.ndarray, valid: np.ndarray, size: int, margin: float,
                  rng: np.random.Generator, scale_range: tuple[float, float] = NEGATIVE_SCALE, tries: int = 30
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """A hand-free crop of a frame: ((size, size, 3) uint8, (2, 3) warp) or None where none fits.

    The box is what :func:`cache_crop` would cut around a hand ``m`` times this frame's hand
    (``margin`` x m x its label extent), m log-uniform in ``scale_range``: the scale search
    proposes boxes of its own scales, not the hand's. Its centre is uniform over the frame, at
    least ``NEGATIVE_CLEARANCE`` x m extents from every joint (in or out of the frame), and at
    least m extents from the frame's edges where the frame allows, so that the crop is mostly
    picture rather than padding.
    """
    hand = box_from_keypoints(uv_px, 1.0, valid=valid, min_side=8.0)
    h, w = rgb.shape[:2]
    uv = np.asarray(uv_px, np.float64)[np.asarray(valid, bool)]
    for _ in range(tries):
        extent = hand.side * float(np.exp(rng.uniform(*np.log(scale_range))))
        lo = np.minimum(extent, np.array([w, h]) / 2.0)
        centre = rng.uniform(lo, np.maximum(lo, np.array([w - 1.0, h - 1.0]) - lo))
        if np.abs(uv - centre).max(axis=1).min() > NEGATIVE_CLEARANCE * extent:
            warp = CropBox(float(centre[0]), float(centre[1]), extent * margin).warp(size)
            return crop_image(rgb, warp, size), warp
    return None


def _negative_row(rgb, uv_px, valid, size, margin, rng) -> tuple | None:
    cut = negative_crop(rgb, uv_px, valid, size, margin, rng)
    if cut is None:
        return None
    k = len(uv_px)
    return (cut[0], np.full((k, 2), np.nan, np.float32), np.zeros(k, bool), np.zeros(k, bool), cut[1], False)


def _render_synthetic(args) -> list[tuple]:
    seed, indices, size, margin, negative = args
    from handpose_core.data.synthetic import SynthConfig, SyntheticHands

    torch.set_num_threads(1)
    gen = SyntheticHands(SynthConfig(render_depth=False), seed=seed)
    out = []
    for i in indices:
        s = gen[int(i)]
        valid = np.ones(len(s.uv_px), bool)
        if negative:
            out.append(_negative_row(s.rgb, s.uv_px, valid, size, margin, np.random.default_rng([seed, int(i)])))
        else:
            crop, uv, warp = cache_crop(s.rgb, s.uv_px, valid, size, margin)
            out.append((crop, uv, s.visible, valid, warp, s.is_left))
    return out


def _collect(rows: list[tuple]) -> CropSet:
    crops, uv, vis, valid, warps, left = zip(*rows, strict=True)
    return CropSet(np.stack(crops), np.stack(uv).astype(np.float32), np.stack(vis).astype(bool),
                   np.stack(valid).astype(bool), np.stack(warps), np.array(left, bool))


def build_crop_set(source: str, seed: int, frames: int, size: int, margin: float, workers: int = 1,
                   negative: bool = False) -> CropSet:
    """Render/read ``frames`` frames from ``source`` and crop their hands (see module docstring).

    ``negative``: hand-free crops of the same frames instead (:func:`negative_crop`); frames where
    none fits are skipped, so the set can be shorter than ``frames``.
    """
    if source == "synthetic":
        idx = np.arange(frames)
        chunks = [(seed, idx[w::workers], size, margin, negative) for w in range(max(1, workers))]
        if workers > 1:
            # spawn, not fork: a fork of a process whose torch/onnxruntime/DDS threads hold a lock
            # hangs in the child (seen once in the test suite: a worker asleep on a futex for good)
            with mp.get_context("spawn").Pool(workers) as pool:
                parts = pool.map(_render_synthetic, chunks)
        else:
            parts = [_render_synthetic(chunks[0])]
        rows: list = [None] * frames
        for w, part in enumerate(parts):
            for j, row in zip(idx[w::workers], part, strict=True):
                rows[j] = row
        return _collect([r for r in rows if r is not None])
    if source.startswith("cmu:"):
        from handpose_core.data.cmu_hands import CMUHands

        data = CMUHands(source[4:])
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(data))[: frames if frames > 0 else len(data)]
        rows = []
        for i in order:
            s = data[int(i)]
            if negative:
                row = _negative_row(s.rgb, s.uv_px, s.valid, size, margin, np.random.default_rng([seed, int(i)]))
                if row is not None:
                    rows.append(row)
                continue
            crop, uv, warp = cache_crop(s.rgb, s.uv_px, s.valid, size, margin)
            rows.append((crop, uv, s.visible, s.valid, warp, s.is_left))
        if not rows:
            raise HandPoseError(f"no hand-free crop fits in any of {len(order)} frames of {source}")
        return _collect(rows)
    raise HandPoseError(f"unknown data source {source!r} (synthetic, cmu:<folder>)")


def cached_crop_set(source: str, seed: int, frames: int, size: int, margin: float, cache_dir: str | Path,
                    workers: int = 1, negative: bool = False) -> CropSet:
    """:func:`build_crop_set` memoised in ``cache_dir`` by its arguments."""
    # the hand crops' key is unchanged by the hand-free option (their caches stay valid)
    hand_free = ["negative", NEGATIVE_CLEARANCE, NEGATIVE_SCALE] if negative else []
    key = json.dumps([source, seed, frames, size, margin, "v1", *hand_free])
    kind = "cpmneg" if negative else "cpm"
    name = f"{kind}_{source.split(':')[0]}_s{seed}_n{frames}_{size}_{hashlib.sha1(key.encode()).hexdigest()[:8]}.npz"
    path = Path(cache_dir) / name
    if path.is_file():
        log.info("crop cache %s", path)
        return CropSet.load(path)
    log.info("building crop cache %s (%d frames from %s%s)", path, frames, source, ", hand-free" if negative else "")
    data = build_crop_set(source, seed, frames, size, margin, workers, negative)
    data.save(path)
    return data


# -- augmentation ----------------------------------------------------------------------------------
def training_sample(data: CropSet, i: int, rng: np.random.Generator, input_size: int, aug: AugmentConfig | None,
                    cache_margin: float = DataConfig.cache_margin, mirror: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One network crop, its box jittered by ``aug`` (None: the evaluation box): ((S, S, 3) uint8,
    (K, 2) crop px, (2, 3) cache->input warp). Colour jitter is applied to whole batches
    (:func:`colour_jitter`). ``mirror`` flips the crop left-right (:meth:`CropBox.warp`), labels too.

    A hand-free item (no valid label) is boxed like a hand that filled its cache crop the way
    hands fill theirs: centred, extent = cache side / ``cache_margin``.
    """
    uv, valid = data.uv[i], data.valid[i]
    if valid.any():
        box = box_from_keypoints(uv, 1.0, valid=valid, min_side=4.0)
    else:
        side = data.crops.shape[1]
        box = CropBox((side - 1) / 2.0, (side - 1) / 2.0, side / cache_margin)
    if aug is None:
        box = CropBox(box.cx, box.cy, box.side * 1.5)
        warp = box.warp(input_size, mirrored=mirror)
    else:
        side = box.side * aug.crop_margin * rng.uniform(*aug.scale)
        cx, cy = np.array([box.cx, box.cy]) + rng.normal(0.0, aug.shift * side, 2)
        warp = CropBox(float(cx), float(cy), float(side)).warp(input_size, rng.uniform(-1, 1) * aug.rotation_deg,
                                                               mirrored=mirror)
    crop = crop_image(data.crops[i], warp, input_size)
    return crop, warp_points(uv, warp), warp


def colour_jitter(crops: np.ndarray, rng: np.random.Generator, aug: AugmentConfig) -> np.ndarray:
    """Photometric augmentation of a batch: (B, S, S, 3) uint8 -> (B, S, S, 3) float32 in [0, 255].

    Each crop draws its own contrast, per-channel gain, brightness, saturation, blur and noise
    level. The batch is jittered in whole-batch array operations (contrast, gain and brightness
    folded into one multiply-add per pixel): done one crop at a time it cost 1 ms a crop, the
    largest part of a training step's data time. The result stays float (no uint8 round trip):
    it goes straight to :meth:`InputSpec.normalize`.
    """
    x = np.array(crops, np.float32)  # a copy: float input is not jittered in place
    b = len(x)
    mean = x.mean(axis=(1, 2, 3))
    contrast = rng.uniform(1 - aug.contrast, 1 + aug.contrast, b)
    gain = rng.uniform(1 - aug.gain, 1 + aug.gain, (b, 3))
    brightness = rng.uniform(-aug.brightness, aug.brightness, b) * 255.0
    # ((x - mean) * contrast + mean) * gain + brightness
    scale = contrast[:, None] * gain
    offset = (mean * (1 - contrast))[:, None] * gain + brightness[:, None]
    x *= scale[:, None, None, :].astype(np.float32)
    x += offset[:, None, None, :].astype(np.float32)
    grey = rng.random(b) < aug.grey_prob
    sat = np.where(grey, 1.0, rng.uniform(-0.5 * aug.saturation, aug.saturation, b)).astype(np.float32)
    x += (x.mean(axis=3, keepdims=True) - x) * sat[:, None, None, None]  # towards (or away from) grey
    blur = rng.random(b) < aug.blur_prob
    blur_sigma = rng.uniform(0.5, 1.2, b)
    for i in np.flatnonzero(blur):
        x[i] = cv2.GaussianBlur(x[i], (5, 5), blur_sigma[i])
    if aug.noise_std > 0:
        noise_std = rng.uniform(0, aug.noise_std, b).astype(np.float32)
        x += rng.standard_normal(x.shape, dtype=np.float32) * noise_std[:, None, None, None]
    return np.clip(x, 0, 255, out=x)


# -- the task ----------------------------------------------------------------------------------------
class CPMTask:
    """:class:`~handpose_core.training.harness.TrainTask` for the CPM family."""

    def __init__(self, recipe: Recipe, command: str = "", train_data: CropSet | None = None,
                 recipe_name: str = "", negatives: CropSet | None = None) -> None:
        from handpose_core.models import create_model

        self.recipe = recipe
        self.recipe_name = recipe_name
        self._cpu_bf16 = use_cpu_bf16(recipe.cpu_bf16)
        self.model_name = recipe.model_name
        self.model_config = dict(recipe.model_config)
        probe = create_model(self.model_name, **self.model_config)
        self.input_size = int(self.model_config.get("input_size", probe.input_size))
        self.num_keypoints = int(probe.num_keypoints)
        self.codec = BeliefMapCodec(input_size=self.input_size, stride=probe.stride, sigma_px=recipe.sigma_px)
        self.spec = InputSpec(size=self.input_size)
        self.command = command
        self._data = train_data
        self._negatives = negatives
        d = recipe.data
        check_hands(recipe.hands, False, "recipe ")
        if not 0.0 <= d.negative_share < 1.0:
            raise HandPoseError(f"negative_share must be in [0, 1), got {d.negative_share}")
        if d.negative_share > 0 and d.negatives <= 0 and negatives is None:
            raise HandPoseError("negative_share > 0 needs hand-free crops: set negatives > 0")

    @property
    def data(self) -> CropSet:
        """Hand training crops: those given, else the recipe's cached crop set (built on first use)."""
        if self._data is None:
            d = self.recipe.data
            self._data = cached_crop_set(d.source, d.seed, d.frames, d.cache_size, d.cache_margin, d.cache_dir,
                                         d.workers)
        return self._data

    @property
    def negatives(self) -> CropSet | None:
        """Hand-free training crops (None when the recipe uses none)."""
        d = self.recipe.data
        if self._negatives is None and d.negative_share > 0:
            self._negatives = cached_crop_set(d.source, d.seed, d.negatives, d.cache_size, d.cache_margin,
                                              d.cache_dir, d.workers, negative=True)
        return self._negatives

    def build_model(self) -> torch.nn.Module:
        """Fresh model for the harness to train (channels-last where the recipe says)."""
        from handpose_core.models import create_model

        model = create_model(self.model_name, **self.model_config)
        return model.to(memory_format=torch.channels_last) if self.recipe.channels_last else model

    def make_batch(self, indices: np.ndarray, rng: np.random.Generator, augment: bool = True,
                   hand_free: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) float32 inputs and (B, K+1, S/8, S/8) float32 targets.

        ``indices`` index the hand crops, or, where ``hand_free`` (B,) bool is set, the hand-free
        crops (their targets: every keypoint map zero, background one).
        """
        aug = self.recipe.augment if augment else None
        margin = self.recipe.data.cache_margin
        crops, uv, valid = [], [], []
        for b, i in enumerate(indices):
            data = self.negatives if hand_free is not None and hand_free[b] else self.data
            mirror = self.recipe.hands == "right" and bool(data.is_left[int(i)])
            crop, uv_crop, _ = training_sample(data, int(i), rng, self.input_size, aug, margin, mirror)
            crops.append(crop)
            uv.append(uv_crop)
            valid.append(data.valid[int(i)])
        images = np.stack(crops)
        if aug is not None:
            images = colour_jitter(images, rng, aug)
        x = torch.from_numpy(self.spec.normalize(images))
        return x, torch.from_numpy(self.codec.encode(np.stack(uv), np.stack(valid)))

    def batches(self, start_step: int, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Harness batch source: endless :meth:`make_batch` batches, each drawn by (seed, step)."""
        n = len(self.data)
        share = self.recipe.data.negative_share
        n_free = len(self.negatives) if share > 0 else 0
        step = start_step
        while True:
            rng = np.random.default_rng([seed, step])
            indices = rng.integers(0, n, batch_size)
            hand_free = None
            if share > 0:  # drawn only then, so recipes without hand-free crops keep their batches
                hand_free = rng.random(batch_size) < share
                indices = np.where(hand_free, rng.integers(0, n_free, batch_size), indices)
            yield self.make_batch(indices, rng, hand_free=hand_free)
            step += 1

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device
             ) -> tuple[torch.Tensor, dict]:
        """Harness training loss: belief-map MSE (``fg_weight``-weighted) summed over stages; logs each."""
        x, target = (t.to(device, non_blocking=True) for t in batch)
        if self.recipe.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._cpu_bf16 and device.type == "cpu"):
            stages = model(x)
        if self.recipe.fg_weight > 0:
            weight = 1.0 + self.recipe.fg_weight * target[:, :-1].amax(dim=1, keepdim=True)
            losses = [(weight * (out.float() - target).square()).mean() for out in stages]
        else:
            losses = [F.mse_loss(out.float(), target) for out in stages]
        total = torch.stack(losses).sum()
        return total, {f"loss_stage{t + 1}": float(v.detach()) for t, v in enumerate(losses)}

    def checkpoint_meta(self) -> dict[str, Any]:
        """RGB checkpoint metadata the harness saves with the weights (:func:`rgb_meta` plus provenance)."""
        from handpose_core.pipelines.rgb import rgb_meta

        r = self.recipe
        return rgb_meta(self.model_name, self.model_config, self.codec, self.spec,
                        # flip_average: the data hold left and right hands, so a mirrored crop is
                        # just another hand (models.cpm.MirrorAveraged)
                        # refine: a second crop on the box the keypoints call for where the first
                        # box is metric (depth) or coarse (search); see PIPELINE_DEFAULTS["refine"]
                        # hands: a right-hand network is fed left hands mirrored (no mirror average)
                        pipeline={"crop_margin": r.augment.crop_margin, "flip_average": r.hands == "both",
                                  "hands": r.hands, "refine": ["depth", "search"]},
                        provenance={"recipe": self.recipe_name, "command": self.command, "data": asdict(r.data),
                                    "augment": asdict(r.augment), "sigma_px": r.sigma_px,
                                    "cpu_bf16": r.cpu_bf16, "channels_last": r.channels_last,
                                    "fg_weight": r.fg_weight})


# -- evaluation on held-out crops ------------------------------------------------------------------
@torch.no_grad()
def predict_crops(model: torch.nn.Module, codec: BeliefMapCodec, spec: InputSpec, crops: np.ndarray,
                  device: torch.device, batch_size: int = 64, keep_maps: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]:
    """Network crops (N, S, S, 3) uint8 -> per-stage keypoints (T, N, K, 2) crop px, conf (T, N, K).

    With ``keep_maps`` also the stage maps of every crop, list over T of (N, K+1, m, m).
    """
    was_training = model.training
    model.eval()
    uv_all, conf_all, maps_all = [], [], []
    for b in range(0, len(crops), batch_size):
        x = torch.from_numpy(spec.normalize(crops[b : b + batch_size])).to(device)
        stages = [s.float().cpu().numpy() for s in model(x)]
        k = stages[0].shape[1] - 1
        uv = np.zeros((len(stages), len(x), k, 2), np.float32)
        conf = np.zeros((len(stages), len(x), k), np.float32)
        for t, maps in enumerate(stages):
            for n in range(len(x)):
                uv[t, n], conf[t, n] = codec.decode(maps[n])
        uv_all.append(uv)
        conf_all.append(conf)
        if keep_maps:
            maps_all.append(stages)
    model.train(was_training)
    maps = [np.concatenate([m[t] for m in maps_all]) for t in range(len(maps_all[0]))] if keep_maps else None
    return np.concatenate(uv_all, axis=1), np.concatenate(conf_all, axis=1), maps


def held_out_crops(data: CropSet, input_size: int, cache_margin: float = DataConfig.cache_margin,
                   mirror: np.ndarray | bool = False, indices: Sequence[int] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic evaluation crops (GT box, ``1.5`` margin): (N, S, S, 3), (N, K, 2) crop px, (N, 2, 3).

    ``mirror``: (N,) bool, or one bool for every crop: flip those crops left-right (labels too).
    ``indices``: only these items (default all), each cut as in the whole set.
    """
    rng = np.random.default_rng(0)
    flags = np.broadcast_to(np.asarray(mirror, bool), (len(data),))
    rows = [training_sample(data, i, rng, input_size, None, cache_margin, bool(flags[i]))
            for i in (range(len(data)) if indices is None else indices)]
    crops, uv, warps = zip(*rows, strict=True)
    return np.stack(crops), np.stack(uv), np.stack(warps)


CROP_HANDEDNESS = ("none", "known", "auto")  # evaluate_crop_set's ways to feed the crops


def evaluate_crop_set(model: torch.nn.Module, codec: BeliefMapCodec, spec: InputSpec, data: CropSet,
                      device: torch.device, handedness: str = "none", stage_results: list | None = None
                      ) -> dict[str, Any]:
    """PCK/AUC/EPE of the last stage and PCK@0.2 of every stage on GT-box crops of ``data``.

    EPE is reported in source-image pixels (crop errors mapped back through the crop warps).
    ``stage_results``: a list that gets each stage's whole :func:`evaluate_2d` result, PCK curve
    included (for a plot, without running the crops again).

    ``handedness`` (how a right-hand-only network, ``Recipe.hands == "right"``, is fed):
    ``none``: every crop as it is (a network that saw both hands); ``known``: left hands' crops
    mirrored (the hand told, as OpenPose's body detector tells its hand network); ``auto``: each
    crop run both ways, the way with the higher mean last-stage confidence kept (the RGB
    pipeline's ``handedness: auto``), and ``handedness_accuracy`` reports how often that way was
    the hand's.
    """
    if handedness not in CROP_HANDEDNESS:
        raise HandPoseError(f"handedness must be one of {CROP_HANDEDNESS}, got {handedness!r}")
    size = codec.input_size
    left = np.asarray(data.is_left, bool)
    crops, gt, warps = held_out_crops(data, size, mirror=left if handedness == "known" else False)
    uv, conf, _ = predict_crops(model, codec, spec, crops, device)
    result: dict[str, Any] = {}
    if handedness == "auto":
        m_crops, m_gt, m_warps = held_out_crops(data, size, mirror=True)
        m_uv, m_conf, _ = predict_crops(model, codec, spec, m_crops, device)
        pick = m_conf[-1].mean(axis=1) > conf[-1].mean(axis=1)  # (N,) the mirrored way won
        uv = np.where(pick[None, :, None, None], m_uv, uv)
        conf = np.where(pick[None, :, None], m_conf, conf)
        gt = np.where(pick[:, None, None], m_gt, gt)
        warps = np.where(pick[:, None, None], m_warps, warps)
        result["handedness_accuracy"] = float((pick == left).mean())
    # crop px -> source px: through the input warp, then the cache warp
    src_gt = np.stack([warp_points(warp_points(g, w, inverse=True), cw, inverse=True)
                       for g, w, cw in zip(gt, warps, data.warps, strict=True)])
    for t in range(len(uv)):
        src_pred = np.stack([warp_points(warp_points(p, w, inverse=True), cw, inverse=True)
                             for p, w, cw in zip(uv[t], warps, data.warps, strict=True)])
        r = evaluate_2d(src_pred, src_gt, data.valid, HAND21.joint_names)
        if stage_results is not None:
            stage_results.append(r)
        if t == len(uv) - 1:
            result.update(r)
            vis = evaluate_2d(src_pred, src_gt, data.valid, HAND21.joint_names, counted=data.visible)
            result["pck@0.2_visible"] = vis["pck@0.2"]
            result["mean_confidence"] = float(conf[t].mean())
        result.setdefault("per_stage", {})[f"stage{t + 1}"] = {"pck@0.2": r["pck@0.2"], "auc": r["auc"],
                                                               "epe_mean_px": r["epe_mean_px"]}
    result["handedness"] = handedness
    return result


def evaluate_hand_free(model: torch.nn.Module, codec: BeliefMapCodec, spec: InputSpec, data: CropSet,
                       device: torch.device, thresholds: tuple[float, ...] = (0.2, 0.3),
                       cache_margin: float = DataConfig.cache_margin) -> dict[str, Any]:
    """How often the network sees a hand where there is none, on hand-free crops of ``data``.

    Each crop's score is its mean joint confidence (last stage), the figure the RGB pipeline
    compares with ``min_confidence`` (0.2: a hand is reported) and ``track_min_confidence``
    (0.3: the box is tracked). Returns the crops' mean and median score and, per threshold, the
    fraction of crops at or above it (a false-positive rate).
    """
    crops = held_out_crops(data, codec.input_size, cache_margin)[0]
    _, conf, _ = predict_crops(model, codec, spec, crops, device)
    score = conf[-1].mean(axis=1)
    return {"crops": len(data), "mean_confidence": float(score.mean()), "median_confidence": float(np.median(score)),
            **{f"false_positive@{t:g}": float((score >= t).mean()) for t in thresholds}}


def make_evaluator(task: CPMTask, data: CropSet, hand_free: CropSet | None = None
                   ) -> Callable[[torch.nn.Module, torch.device], dict[str, float]]:
    """Harness callback: scalar held-out figures (the full result goes to the evaluation CLI).

    With ``hand_free`` crops also :func:`evaluate_hand_free`'s figures, prefixed ``hand_free_``.
    """

    def evaluate(model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        # a right-hand network is scored with the hand told (the headline protocol)
        r = evaluate_crop_set(model, task.codec, task.spec, data, device,
                              "known" if task.recipe.hands == "right" else "none")
        out = {"pck@0.2": r["pck@0.2"], "auc": r["auc"], "epe_mean_px": r["epe_mean_px"],
               "pck@0.2_visible": r["pck@0.2_visible"], "frames": float(r["frames"])}
        for name, s in r["per_stage"].items():
            out[f"{name}_pck@0.2"] = s["pck@0.2"]
        if hand_free is not None and len(hand_free):
            free = evaluate_hand_free(model, task.codec, task.spec, hand_free, device,
                                      cache_margin=task.recipe.data.cache_margin)
            out.update({f"hand_free_{k}": float(v) for k, v in free.items()})
        return out

    return evaluate
