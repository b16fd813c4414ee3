"""DeepPrior on the shared harness: data cache, batch re-cropping/augmentation, loss, named recipes.

Data: synthetic depth frames are rendered once and cut by the same :class:`DepthCropCodec` the
estimator uses, into a *big* crop: ``big_factor`` times the codec's cube and size (so the same mm
per pixel), centred where the inference-time hand search puts it (or on the labelled joints where
that search misses the hand). Crops (float16) and labels (normalized uvd of the big crop) are
cached under ``cache_dir`` in a folder of ``.npy`` files (memory-mapped), keyed by everything that
changes them. Batches are drawn by ``default_rng([seed, step])``, so a resumed run sees the batches
an uninterrupted one would.

Each batch item is then cut out of its big crop by :func:`recrop` (one ``affine_grid`` /
``grid_sample`` for the batch) at a drawn centre, in-plane rotation, cube scale and mirror flip.
This is the codec's own geometry, not an approximation: the big crop and the model's crop are
both affine images of the same image pixels, so one is an affine map of the other, and the depth
renormalization is exact (``tests/test_deep_prior.py`` checks it against ``DepthCropCodec.encode``
at the same centre). Labels go through the same transform.

Crop centres: with probability ``p_gt_centre`` the joint centroid (plus ``gt_jitter_mm``), else the
searched centre (plus ``jitter_mm``). The first kind trains the estimator's second pass (see
:mod:`handpose_core.pipelines.depth`: re-crop on the first pass's joint centroid), which recovers
fingers that a cube centred on a forearm cut off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from handpose_core.codecs.depth_crop import DepthCropCodec, NoHandError, depth_to_mm
from handpose_core.data.synth_hand import RANDOM_ARTICULATION
from handpose_core.errors import HandPoseError
from handpose_core.keypoints import HAND21, layout_for
from handpose_core.models import create_model
from handpose_core.models.deep_prior import fit_pca, load_pca
from handpose_core.pipelines.hands import check_hands
from handpose_core.training.harness import TrainConfig, use_cpu_bf16

if TYPE_CHECKING:
    from handpose_core.camera import Intrinsics

log = logging.getLogger(__name__)

CACHE_VERSION = "v3"


@dataclass
class DeepPriorRecipe:
    """Model + loss + augmentation + optimisation of one named DeepPrior training recipe.

    Augmentation (when ``augment``): rotation uniform in +-``rot_deg``; cube scale uniform in
    1 +- ``scale``; crop centre = joint centroid with probability ``p_gt_centre`` (Gaussian jitter
    ``gt_jitter_mm``), else the searched centre (jitter ``jitter_mm``); mirror with ``flip_prob``.
    ``passes`` is written to the checkpoint for the estimator (2 = re-crop on the first pass, 3 =
    once more on the second's), and so is ``flip_average`` (where crops were mirrored in training:
    the estimator averages its final crop's prediction with its mirror image's).

    ``align`` (a pair of joint names, e.g. ``("wrist", "middle_mcp")``, or ``"auto"``: the joint
    layout's ``axis``, none for a layout without one): the crops centred on the
    joints (the second pass's) are also turned so that this pair points up, give or take
    ``align_jitter_deg`` (normal std) for the first pass's error, and the estimator turns its
    second crop by the first pass's prediction of the pair. That pass then no longer has to learn
    every in-plane rotation. The searched-centre crops (the first pass's) keep ``rot_deg``.
    """

    model: str = "deep_prior_res"
    model_config: dict[str, Any] = field(default_factory=dict)
    bottleneck: int = 30
    loss: str = "smooth_l1"  # smooth_l1 (per coordinate) | euclidean_joint (mean joint distance) | caffe_euclidean
    smooth_l1_beta: float = 0.01  # normalized units: 1.5 mm
    augment: bool = True
    rot_deg: float = 180.0
    scale: float = 0.1
    jitter_mm: float = 8.0
    gt_jitter_mm: float = 15.0
    p_gt_centre: float = 0.5
    flip_prob: float = 0.5
    # cached crops: this many times the cube (room to re-centre). 2.0 leaves room for the frames
    # the hand search centres on a forearm pointing at the camera (see max_search_offset_mm).
    big_factor: float = 2.0
    # a cached frame keeps its searched centre (and so trains the first pass) while the joint
    # centroid lies at most this far from it on each axis; farther ones are centred on the joints.
    # 1.5 x / 101 mm (before): the first pass never saw the 2 % of held-out frames whose search
    # lands 150+ mm off the hand, mostly on a forearm reaching towards the camera, and they
    # averaged 150 mm of error.
    max_search_offset_mm: float = 180.0
    # side of the model's crop, px (0 = the codec's, 128). The cache stays at the codec's size x
    # big_factor; recrop resamples it to this size, so one cache serves every input size.
    input_size: int = 0
    # 2,000 held-out frames, 24-min model (8,112 steps): 2 passes 22.27 mm, 3 passes 21.55 mm,
    # 3 passes + flip_average 20.94 mm. A pass costs ~1.5 ms on the searched path only (a tracked
    # frame runs TRACK_DEFAULTS["passes"]); flip_average ~0.55 ms, on the final pass only.
    passes: int = 3
    flip_average: bool = True
    # the final mirror-averaged pass also runs its crop turned by these angles (deg) and averages the
    # joints in the camera frame (DepthPipeline._final); written only where training turned crops
    # (augment). 2026-12-06 packaged weights, 500 held-out frames, one run: none 19.73 mm, +-10
    # 19.42, +-15 19.33, +-20 19.45, +-30 19.90, +-15/30 19.56, +-90/180 27.13 (the aligned pass
    # trains on crops within ~15 deg of hand-up: align_jitter_deg). Searched frames only. Those 500
    # are the first of the 2,000 held-out frames (18.16 -> 17.83 mm); on 2,000 frames of seed 7000,
    # not used to pick the angle: 17.31 -> 17.06 mm, within 40 mm 55.4 -> 56.2 %.
    # Also tried (2026-12-08, a 24-min right-hand network, 2,000 frames, hand told): crops with the centre moved by
    # +-8 or +-12 mm along x and y averaged in as well, 13.03 -> 12.91 / 12.89 mm, within 40 mm 68.5 -> 68.9 / 69.2 %,
    # at 3.7-4.4 ms more a searched frame (10.6 -> 14.3-15.0 ms); +-7.5 deg added to the +-15: 12.99 mm; a fourth pass:
    # 13.11 mm. Not taken.
    rotation_average: tuple[float, ...] = (-15.0, 15.0)
    # a searched frame whose first hand-search candidate fits its crop badly runs up to this many of
    # the search's candidates through every pass and keeps a later one only where it fits far better
    # (DepthPipeline._searched; SEARCH_DEFAULTS' fit_score weights, accept 1.0, margin 2.0). 2026-12-06
    # packaged weights, 2,000 frames each: seed 3000 (where the score was fitted and the margin picked:
    # 1.0-2.5 scored the same there) 17.50 -> 16.88 mm; held-out seed 1000 17.83 -> 16.89 mm and seed
    # 7000 17.06 -> 16.46 mm, 3 frames each better by > 5 mm (ball, box or floor taken for the hand),
    # none worse. 9-10 % of searched frames go on past their first candidate. Margins 1.0-1.5 made the
    # held-out seeds worse (18.1-18.3 mm): the score alone does not tell a hand from a near miss.
    search_candidates: int = 4
    # "right": left hands' crops are mirrored (training: from the generator's handedness; data of
    # unknown handedness is taken as right hands) instead of mirroring at random, so the network
    # learns right hands only; the estimator is told which hand it sees (DepthPipeline.handedness),
    # the way DeepPrior's benchmarks (NYU, ICVL, MSRA) are one hand. "both": random mirroring.
    hands: str = "both"
    # share of each batch drawn from the frames whose fingers the generator drew uniformly within their
    # limits (CropSet.random_fingers; about half of all frames); 0 = every frame equally likely. Those
    # frames hold most of the error (evaluate_deep_prior's by_articulation). 24-min runs of the default
    # recipe (AVX-512 machine), 2,000 held-out frames, hand told: 0 (22,119 steps) 14.57 mm, within
    # 40 mm 64.1 % (gestures 9.62 mm / 94.9 %, random fingers 19.34 mm / 34.5 %); 0.75, two seeds
    # (19,772 / 20,565 steps) 14.24 / 14.19 mm, 66.6 / 65.8 % (gestures 10.86 / 10.90 mm, 93.2 / 91.8 %;
    # random 17.50 / 17.36 mm, 41.0 / 40.7 %). Not the default: it buys the whole set 0.3-0.4 mm with 1.3 mm
    # on the gesture hands, the half nearer to real hands.
    random_fingers_share: float = 0.0
    align: tuple[str, str] | str | None = None
    align_jitter_deg: float = 15.0
    # the model's confidence head (models.deep_prior): trained beside the pose, on its detached
    # features, to give each joint's probability of lying within confidence_mm of the truth
    confidence: bool = False
    confidence_mm: float = 20.0
    # on a CPU with native bfloat16 (harness.use_cpu_bf16), run the conv features in bfloat16
    # (about 1.7x faster there); the head stays fp32. Ignored on other CPUs, where it is slower.
    bf16_cpu: bool = True
    # channels-last tensors for training (memory layout only, same maths): oneDNN's convolutions
    # are faster in NHWC; a batch-64 step on the 2-core AVX2 machine: deep_prior_res 0.21 -> 0.14 s,
    # deep_prior_seed 0.18 -> 0.11 s.
    channels_last: bool = True
    train: TrainConfig = field(default_factory=TrainConfig)


def recipe(name: str) -> DeepPriorRecipe:
    """Named recipes: ``default`` (DeepPrior++-style) and ``seed`` (the seed notebook's Caffe recipe)."""
    if name == "default":
        # align: the second pass sees its crop turned hand-up. 10-min test through the estimator
        # on 500 held-out frames: 33.6 -> 28.9 mm, worst joint within 40 mm 15.8 -> 33.8 %.
        # p_gt_centre 0.75: three in four crops train the joint-centred pass, the one that sets the
        # accuracy (with the true centre and angle it alone is at ~20 mm; the searched-centre pass
        # only places its crop) and the only one a tracked frame runs. Same 10-min test: 28.9 ->
        # 27.9 mm, within 40 mm 33.8 -> 36.4 %.
        # No dropout, a trained PCA layer and k = 40 (was dropout 0.1, a frozen PCA, k = 30). Training
        # here is compute-bound (the loss still falls when the budget ends), so dropout only slowed
        # it. 10-min test on 500 held-out frames: 27.1 -> 25.5 mm (dropout off + trained PCA),
        # within 40 mm 37.4 -> 40.4 %; 24-min runs on 2,000 frames: 20.94 -> 19.82 mm. Tried and
        # not taken: batch 32 (25.7 mm in the 10-min test), Adam lr 2e-3 (25.7 mm), FC 1024-1024
        # (24 min: 19.74 mm, but 0.6 ms more per tracked frame: its FC weights leave the cache).
        # stem_pool_first: the stem pools before its BN and ReLU (models.deep_prior), with the cache's
        # crops cut by one gather (sample_nearest): 10-min runs, 500 held-out frames: 2,976-3,307
        # steps and 25.3-25.5 mm in earlier runs of nearly this recipe; 4,412 steps and 24.20 mm with
        # the gather; 5,630 steps and 23.43 mm (within 40 mm 47.2 %) with both. 24 min: 8,593 ->
        # 14,619 steps, 2,000 held-out frames 19.82 -> 18.16 mm.
        # The packaged weights until the evening of 2026-12-07 were that 24-min run resumed to a 134-min budget
        # (--time-budget-min 134 --steps 70000 --resume; 55,825 steps): 2,000 held-out frames
        # 16.89 -> 14.29 mm, within 40 mm 55.3 -> 64.1 %, tracked sequences 13.93 -> 10.91 mm.
        # hands "right" (left hands' crops mirrored instead of random mirroring; the estimator is told
        # the hand): 10-min runs, 1 thread each, two at a time (2,211 / 2,263 steps), 500 held-out
        # frames through the estimator: 26.45 mm, within 40 mm 36.8 % (both hands, mirror-averaged,
        # candidates judged) -> 24.02 mm, 45.2 % (right hands, the hand told, not mirror-averaged). The
        # 24-min run (2026-12-07, a slower day: 8,671 steps where the both-hands run of 2026-12-06 made
        # 14,619), 2,000 held-out frames, the hand told: 16.89 -> 16.24 mm, within 40 mm 55.3 -> 57.2 %;
        # tracked sequences 13.93 -> 12.51 mm. The hand not told (auto): on the first 500 frames 21.6 mm
        # (the hand's own way taken on 84.6 %) against 17.5 mm told.
        # The same 24-min run on a faster machine (a later session of 2026-12-07, AVX-512 with BF16,
        # 65 ms a step): 22,119 steps, 14.57 mm, within 40 mm 64.1 %, tracked sequences 10.55 mm.
        # Tried there and not taken (24 min, 2,000 held-out frames): two residual blocks a stage (13,338
        # steps) 16.06 mm, 59.8 %; Caffe's squared Euclidean loss instead of smooth L1 (21,175 steps)
        # 15.82 mm, 62.5 %.
        # confidence: the head is trained beside the pose (detached: the joints are unchanged by it).
        # 24-min run with it (same machine, 20,836 steps), 2,000 held-out frames, hand told: 14.14 mm,
        # within 40 mm 63.3 % (without: 14.57 mm, 64.1 %); joint AUROC 0.903, the more confident half
        # of the frames 91.8 % within 40 mm at 9.32 mm.
        # head "dense" (models.deep_prior.DenseHead: A2J-style voting from a 16x16 feature pyramid; the
        # PCA head trains beside it and feeds the confidence head). 24-min run (same machine, 16,676
        # steps: a step costs ~25 % more), 2,000 held-out frames, hand told: 14.14 -> 13.22 mm, within
        # 40 mm 63.3 -> 66.6 %; random fingers 18.35 -> 16.21 mm, 33.0 -> 42.4 %; gesture hands 9.77 -> 10.11 mm,
        # 94.8 -> 91.6 %. The same run's PCA head alone: 14.37 mm, 62.4 %. --seed 1 (16,109 steps):
        # 13.32 mm, 67.0 %; random fingers 16.38 mm, 43.3 %. An 8x8 grid (dense_size 8, 15,677 steps)
        # gained nothing: 14.14 mm, 63.4 %; a 32x32 one makes a step ~2x dearer (8,620 steps): 16.00 mm, 56.4 %.
        # The packaged weights since the evening of 2026-12-07: this recipe with --hands both (a 2-core Xeon with
        # AMX, 80-88 ms a step), 24 min (16,499 steps; 15.48 mm, 57.9 %, no hand told) resumed to 70,000 steps
        # (--time-budget-min 120 --steps 70000 --resume; 99.5 min): 11.99 mm, within 40 mm 70.3 %, tracked
        # sequences 9.62 mm (the PCA-head 134-min weights before them: 14.29 mm, 64.1 %, 10.94 mm).
        # With the dense head, random_fingers_share 0.75 (24 min on that Xeon, 15,887 steps, hand told): 13.35 mm,
        # within 40 mm 69.3 % (gestures 11.35 mm, 88.1 %; random fingers 15.28 mm, 51.3 %): the same trade as above.
        # channels (16, 64, 128, 192) for the residual stages (was the class's 16, 32, 64, 128): the 16x16 stage the
        # dense head votes from and the two after it wider; the stem and the 32x32 stage, the dear ones on a CPU,
        # as they were. 24-min runs on that Xeon, hand told, 2,000 held-out frames: 13,613 / 12,304 steps (seeds 0 /
        # 1; a step ~1/5 dearer, and the machine slower in the second run): 12.28 / 12.63 mm, within 40 mm 71.0 /
        # 69.7 % (gestures 9.25 / 9.35 mm, 93.6 / 93.0 %; random fingers 15.21 / 15.79 mm, 49.1 / 47.2 %), against
        # 13.22 / 13.32 mm, 66.6 / 67.0 % before. Tried beside it: (16, 32, 96, 192) 15,329 steps, 12.84 mm, 68.1 %;
        # (16, 48, 96, 192) 14,774 steps, 12.30 mm, 69.3 %. A tracked frame 1.40 -> 1.83 ms, a searched one
        # 5.95 -> 7.92 ms (onnxruntime, one thread, hand told; medians of 180 in one run).
        # Tried on a slower day of that Xeon (2026-12-08; a batch-64 step 95-105 ms where it was 82) and not taken:
        # a "patch" stem (one 8x8 stride-4 conv in place of the 5x5 stride-2 conv and its max-pool; a step ~6 %
        # cheaper): 24 min, 11,852 steps, 13.03 mm, within 40 mm 68.5 %, against this recipe's 13.02 mm, 67.9 % in
        # 27 min (11,524 steps; both before the hand search's later candidates), and its first-pass validation error
        # at step 3,000 was 54.0 mm against 33.8 mm. The dense head's 1x1 vote conv as an einsum over cells-first
        # votes: a step 2-3 ms cheaper, but the head 0.5 -> 1.25 ms in onnxruntime (6 crops, one thread).
        return DeepPriorRecipe(model_config={"dropout": 0.0, "finetune_pca": True, "stem_pool_first": True,
                                             "head": "dense", "dense_size": 16, "channels": (16, 64, 128, 192)},
                               bottleneck=40, align="auto", p_gt_centre=0.75, hands="right", confidence=True,
                               train=TrainConfig(steps=30000, batch_size=64, optimizer="adam", lr=1e-3,
                                                 weight_decay=1e-4, lr_policy="cosine", warmup_steps=200,
                                                 grad_clip=5.0))
    if name == "seed":
        # The notebook: its network, Euclidean loss, SGD momentum 0.9, Caffe 'inv' policy base 5e-6
        # gamma 1e-4 power 0.75, batch 64, no augmentation, crops at the searched centre, one pass.
        return DeepPriorRecipe(model="deep_prior_seed", loss="caffe_euclidean", augment=False, passes=1, bf16_cpu=False,
                               train=TrainConfig(steps=40000, batch_size=64, optimizer="sgd", lr=5e-6, momentum=0.9,
                                                 lr_policy="inv", lr_gamma=1e-4, lr_power=0.75))
    raise ValueError(f"unknown DeepPrior recipe {name!r} (default, seed)")


# -- geometry ------------------------------------------------------------------------------------


def recrop(crops: torch.Tensor, labels: torch.Tensor | None, t: torch.Tensor, theta: torch.Tensor,
           scale: torch.Tensor, flip: torch.Tensor, cube_ratio_big: float, size: int,
           z_ratio: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cut crops out of (bigger) crops: the crop the codec would cut at a new centre.

    crops:  (N, 1, Sb, Sb) normalized depth (+1 = background) of cubes ``cube_ratio_big`` x the
            model's cube (1.0: the same cube); float16 (the cache's) or float32. Only the pixels
            the new crops read are converted: the output is float32 for float16 input.
    labels: (N, J, 3) normalized uvd of those crops, or None.
    t:      (N, 3) the new centre in the input crops' normalized uvd (0 = their centre).
    theta:  (N,) in-plane rotation, rad (the codec's ``rotation_deg`` sense). scale: (N,) new cube
            = scale x model cube. flip: (N,) bool, mirror u.
    z_ratio: (N,) z_new / z_old of the centres (the projected cube shrinks with depth); None = 1.
    Returns ((N, 1, size, size) crops, (N, J, 3) labels or None).

    With R the rotation, F the flip and r = (cube / cube_in) / z_ratio, a point at normalized n
    of the new crop is at ``r R^T F n + t`` in the input crop; depths become
    ``(d - t_d) * cube_in / cube``; a label x moves to ``F R (x - t) / r``.
    """
    dtype = torch.float32 if crops.dtype == torch.float16 else crops.dtype
    ratio = scale / cube_ratio_big  # cube / cube_in
    r = ratio if z_ratio is None else ratio / z_ratio
    c, s = torch.cos(theta), torch.sin(theta)
    f = torch.where(flip, -torch.ones_like(c), torch.ones_like(c))
    # R = [[c, s], [-s, c]] (codec.warp_for); R^T F = [[c f, -s], [s f, c]]
    a = torch.stack([torch.stack([c * f, -s], -1), torch.stack([s * f, c], -1)], -2) * r[:, None, None]
    sampled = sample_nearest(crops, torch.cat([a, t[:, :2, None]], dim=2).to(dtype), size)
    background = sampled >= 0.9999
    depth = (sampled - t[:, 2, None, None, None].to(dtype)) / ratio[:, None, None, None].to(dtype)
    depth = torch.where(background | (depth > 1.0), torch.ones_like(depth), depth.clamp(min=-1.0))
    if labels is None:
        return depth, None
    rel = labels[..., :2] - t[:, None, :2]
    u = (c[:, None] * rel[..., 0] + s[:, None] * rel[..., 1]) / r[:, None]
    v = (-s[:, None] * rel[..., 0] + c[:, None] * rel[..., 1]) / r[:, None]
    d = (labels[..., 2] - t[:, None, 2]) / ratio[:, None]
    return depth, torch.stack([u * f[:, None], v, d], dim=-1)


def sample_nearest(images: torch.Tensor, affine: torch.Tensor, size: int) -> torch.Tensor:
    """``F.grid_sample(images - 1, F.affine_grid(affine, ...), "nearest", align_corners=False) + 1``,
    computed as one gather.

    images: (N, 1, H, W) float16 or float32; affine: (N, 2, 3) float32, output normalized
    coordinates -> input normalized coordinates (``F.affine_grid``'s convention). Returns
    (N, 1, size, size) in affine's dtype, +1 (background) where a pixel falls outside the input.
    Why not grid_sample: on a CPU it needs the whole float16 batch converted to float32 and an
    (N, size, size, 2) grid built first; here only the size x size picked pixels are converted. A
    training batch (64 crops of 256 px -> 128 px) took 27 ms to draw with grid_sample, 10-13 ms
    with this, on the 2-core development CPU. Nearest keeps silhouettes sharp, as the
    codec's own warp does; the pick is grid_sample's (round half to even, ``torch.round``).
    """
    n, _, h, w = images.shape
    dtype = affine.dtype
    centres = (2.0 * torch.arange(size, dtype=dtype) + 1.0) / size - 1.0  # output pixel centres
    xs, ys = centres[None, None, :], centres[None, :, None]
    # input pixel = ((g + 1) * side - 1) / 2 of normalized g, folded into the affine map
    px = affine * torch.tensor([w / 2.0, h / 2.0], dtype=dtype)[None, :, None]
    px[:, :, 2] += torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=dtype)
    ix = torch.round(px[:, 0, 0, None, None] * xs + (px[:, 0, 1, None, None] * ys + px[:, 0, 2, None, None]))
    iy = torch.round(px[:, 1, 0, None, None] * xs + (px[:, 1, 1, None, None] * ys + px[:, 1, 2, None, None]))
    inside = (ix >= 0) & (ix <= w - 1) & (iy >= 0) & (iy <= h - 1)
    flat = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).long().view(n, -1)
    picked = torch.gather(images.reshape(n, h * w), 1, flat).view(n, 1, size, size).to(dtype)
    return torch.where(inside[:, None], picked, torch.ones((), dtype=dtype))


# -- data ----------------------------------------------------------------------------------------


@dataclass
class CropSet:
    """Cached training crops.

    crops:       (N, Sb, Sb) float16 normalized depth of cubes ``big_factor`` x the codec's.
    labels:      (N, J*3) float32 normalized uvd of those crops.
    z_mm:        (N,) float32 depth of each crop's centre, mm (NaN: unknown, e.g. seed HDF5 crops).
    located:     (N,) bool: centred by the hand search (False: on the labelled joints).
    big_factor:  cube and size of the crops over the codec's.
    is_left:     (N,) bool, the frame shows a left hand; None: unknown (taken as right hands).
    random_fingers: (N,) bool, the synthetic hand's finger angles were drawn uniformly within their
                 limits (``HandParams.articulation == "random"``, not a gesture); None: unknown.
    """

    crops: np.ndarray
    labels: np.ndarray
    z_mm: np.ndarray
    located: np.ndarray
    big_factor: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)
    is_left: np.ndarray | None = None
    random_fingers: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.crops)

    @classmethod
    def plain(cls, crops: np.ndarray, labels: np.ndarray) -> CropSet:
        """Crops already at the codec's cube (e.g. the seed HDF5): depths of the centres unknown."""
        n = len(crops)
        return cls(np.asarray(crops), np.asarray(labels, np.float32).reshape(n, -1), np.full(n, np.nan, np.float32),
                   np.ones(n, bool), 1.0)


def encode_big(codec: DepthCropCodec, depth: np.ndarray, xyz_m: np.ndarray, intrinsics: Intrinsics, big_factor: float,
               max_offset_mm: float = DeepPriorRecipe.max_search_offset_mm
               ) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """One frame -> (big crop (Sb, Sb), labels (J*3,), centre depth mm, located).

    The centre is the hand search's; where the search finds nothing, or the joint centroid lies
    more than ``max_offset_mm`` from it on some axis (another object was found, or a forearm
    pulled the centre so far that re-centring would leave the big crop), it is the centroid of the
    labelled joints instead. Keep ``max_offset_mm`` + the codec's half cube within about the big
    crop's half cube: a joint-centred training crop cut from a frame that far off reads the part
    outside the big crop as background.
    """
    big = replace(codec, cube_mm=codec.cube_mm * big_factor, size=int(round(codec.size * big_factor)))
    centroid_mm = np.asarray(xyz_m, np.float64).mean(axis=0) * 1000.0
    try:
        com = codec.locate(depth_to_mm(depth), intrinsics)
        crop = big.encode(depth, intrinsics, com_xyz_mm=com)
        labels = big.encode_joints(xyz_m, crop)
        # normalized uvd: one unit is half the big cube, in mm at the centre's depth
        located = bool(np.all(np.abs(labels.mean(axis=0)) * big.cube_mm / 2.0 <= max_offset_mm))
    except NoHandError:
        located = False
    if not located:
        com = centroid_mm
        crop = big.encode(depth, intrinsics, com_xyz_mm=com)
        labels = big.encode_joints(xyz_m, crop)
    return crop.image.astype(np.float16), labels.reshape(-1), float(com[2]), located


def _render_range(args: tuple[int, int, int, dict, float, float]) -> tuple[np.ndarray, ...]:
    """Worker: big crops, labels, centre depths, located flags of synthetic frames [start, stop)."""
    from handpose_core.data.synthetic import SynthConfig, SyntheticHands

    seed, start, stop, codec_cfg, big_factor, max_offset_mm = args
    torch.set_num_threads(1)
    gen = SyntheticHands(SynthConfig(render_rgb=False), seed=seed)
    codec = DepthCropCodec(**codec_cfg)
    out = [encode_big(codec, s.depth_mm, s.xyz_m, s.intrinsics, big_factor, max_offset_mm)
           for s in (gen[i] for i in range(start, stop))]
    return (np.stack([o[0] for o in out]), np.stack([o[1] for o in out]).astype(np.float32),
            np.array([o[2] for o in out], np.float32), np.array([o[3] for o in out], bool))


def synthetic_crops(n: int, seed: int, codec: DepthCropCodec, cache_dir: str | os.PathLike = "runs/cache",
                    workers: int = 2, progress: bool = True, big_factor: float = DeepPriorRecipe.big_factor,
                    max_offset_mm: float = DeepPriorRecipe.max_search_offset_mm) -> CropSet:
    """Big crops of synthetic frames [0, n) of generator ``seed`` (see :func:`encode_big`), rendered once and cached."""
    key = hashlib.sha1(json.dumps([n, seed, codec.to_config(), big_factor, max_offset_mm, CACHE_VERSION],
                                  sort_keys=True,
                                  default=str).encode()).hexdigest()[:10]
    path = Path(cache_dir) / f"deep_prior_synth_s{seed}_n{n}_x{big_factor:g}_{key}"
    if not (path / "done").is_file():
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        size = int(round(codec.size * big_factor))
        crops = np.lib.format.open_memmap(tmp / "crops.npy", mode="w+", dtype=np.float16, shape=(n, size, size))
        labels, z_mm, located = [], [], []
        chunk = 200
        jobs = [(seed, s, min(n, s + chunk), codec.to_config(), big_factor, max_offset_mm)
                for s in range(0, n, chunk)]
        ctx = get_context("spawn")
        with ctx.Pool(workers) as pool, tqdm(total=n, desc=f"render seed {seed}", disable=not progress,
                                             unit="frame") as bar:
            at = 0
            for c, lab, z, loc in pool.imap(_render_range, jobs):
                crops[at : at + len(c)] = c
                labels.append(lab)
                z_mm.append(z)
                located.append(loc)
                at += len(c)
                bar.update(len(c))
        crops.flush()
        del crops
        np.save(tmp / "labels.npy", np.concatenate(labels))
        np.save(tmp / "z_mm.npy", np.concatenate(z_mm))
        np.save(tmp / "located.npy", np.concatenate(located))
        (tmp / "done").write_text(json.dumps({"n": n, "seed": seed, "big_factor": big_factor,
                                              "max_offset_mm": max_offset_mm}))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    located = np.load(path / "located.npy")
    if not all((path / f"{name}.npy").is_file() for name in PARAM_COLUMNS):
        # drawn with the hands' parameters (no rendering): added to caches made without them
        for name, column in synthetic_param_columns(seed, n).items():
            tmp = path / f"{name}.tmp.npy"
            np.save(tmp, column)
            os.replace(tmp, path / f"{name}.npy")
    is_left = np.load(path / "is_left.npy")
    random_fingers = np.load(path / "random_fingers.npy")
    meta = {"located_fraction": float(located.mean()), "left_fraction": float(is_left.mean()),
            "random_fingers_fraction": float(random_fingers.mean())}
    return CropSet(np.load(path / "crops.npy", mmap_mode="r"), np.load(path / "labels.npy"),
                   np.load(path / "z_mm.npy"), located, big_factor, meta, is_left, random_fingers)


# per-frame facts of a synthetic hand that training uses beside its crop: {cache file stem: fact}
PARAM_COLUMNS = {"is_left": lambda p: p.is_left,
                 "random_fingers": lambda p: p.articulation == RANDOM_ARTICULATION}


def synthetic_param_columns(seed: int, n: int) -> dict[str, np.ndarray]:
    """{name: (n,) bool} of :data:`PARAM_COLUMNS` for frames [0, n) of the depth generator ``seed``."""
    from handpose_core.data.synthetic import SynthConfig, SyntheticHands

    gen = SyntheticHands(SynthConfig(render_rgb=False), seed=seed)
    params = [gen.sample_params(i) for i in range(n)]
    return {name: np.array([fact(p) for p in params], bool) for name, fact in PARAM_COLUMNS.items()}


# -- task ----------------------------------------------------------------------------------------


def confidence_loss(logits: torch.Tensor, pred: torch.Tensor, labels: torch.Tensor, mm_per_unit: float,
                    within_mm: float) -> torch.Tensor:
    """Binary cross-entropy of the confidence head: is each joint of ``pred`` within ``within_mm`` of its label?

    logits: (N, J) the head's; pred, labels: (N, J, 3) normalized uvd (pred is detached here: the
    target is the network's own error, not something to train the joints on); mm_per_unit: mm per
    normalized unit (half the cube).
    """
    error_mm = torch.linalg.vector_norm(pred.detach().float() - labels, dim=-1) * mm_per_unit
    return F.binary_cross_entropy_with_logits(logits.float(), (error_mm <= within_mm).float())


class DeepPriorTask:
    """:class:`~handpose_core.training.harness.TrainTask` for DeepPrior on cached crops.

    ``data`` is a :class:`CropSet` (or ``crops``/``labels`` arrays at the codec's cube, wrapped by
    :meth:`CropSet.plain`). The PCA is fitted on labels drawn the way training draws them.
    """

    def __init__(self, rcp: DeepPriorRecipe, crops: CropSet | np.ndarray, labels: np.ndarray | None = None,
                 codec: DepthCropCodec | None = None, joint_names: tuple[str, ...] = HAND21.joint_names,
                 provenance: dict | None = None, pca_samples: int = 20000) -> None:
        self.recipe = rcp
        self._cpu_bf16 = use_cpu_bf16(rcp.bf16_cpu)
        self.data = crops if isinstance(crops, CropSet) else CropSet.plain(crops, labels)
        codec = codec or DepthCropCodec()
        # the model's crops (and the checkpoint's codec) at the recipe's input size
        self.codec = replace(codec, size=rcp.input_size) if rcp.input_size else codec
        self.joint_names = tuple(joint_names)
        self.provenance = dict(provenance or {})
        self.model_name = rcp.model
        self.model_config = {"num_joints": len(self.joint_names), "bottleneck": rcp.bottleneck,
                             "input_size": self.codec.size, **rcp.model_config}
        if rcp.confidence:
            self.model_config["confidence"] = True
        self.labels = self.data.labels.reshape(len(self.data), -1, 3)
        check_hands(rcp.hands, False, "recipe ")
        # a frame of unknown handedness (NYU, a seed HDF5) is taken as a right hand
        self.is_left = (np.zeros(len(self.data), bool) if self.data.is_left is None
                        else np.asarray(self.data.is_left, bool))
        if not 0.0 <= rcp.random_fingers_share <= 1.0:
            raise HandPoseError(f"random_fingers_share must be within [0, 1], got {rcp.random_fingers_share}")
        # (random-finger frames, the others), for random_fingers_share; None where unknown or one-sided
        rf = self.data.random_fingers
        self._finger_groups = None
        if rf is not None and 0 < int(np.sum(rf)) < len(rf):
            self._finger_groups = (np.flatnonzero(rf), np.flatnonzero(~np.asarray(rf, bool)))
        self.align_idx = None
        if rcp.align == "auto":
            axis = layout_for(self.joint_names).axis
            self.align_idx = tuple(axis) if axis and rcp.passes >= 2 else None
        elif rcp.align is not None:
            missing = [name for name in rcp.align if name not in self.joint_names]
            if missing or len(rcp.align) != 2 or rcp.passes < 2:
                raise HandPoseError(f"align needs two of the joints {self.joint_names} and passes >= 2, "
                                    f"got align={rcp.align} passes={rcp.passes}")
            self.align_idx = tuple(self.joint_names.index(name) for name in rcp.align)
        if self.labels.shape[1] != len(self.joint_names):
            raise HandPoseError(f"labels have {self.labels.shape[1]} joints, joint_names {len(self.joint_names)}")
        # PCA of the labels as training sees them (after re-cropping and augmentation)
        rng = np.random.default_rng(12345)
        idx = rng.integers(0, len(self.data), min(pca_samples, max(pca_samples // 4, len(self.data))))
        pca_labels = self._draw(rng, idx, labels_only=True)[1].reshape(len(idx), -1).numpy()
        self.pca_mean, self.pca_basis = fit_pca(pca_labels, rcp.bottleneck)
        self.pca_fitted_on = len(idx)
        proj = (pca_labels - self.pca_mean) @ self.pca_basis @ self.pca_basis.T + self.pca_mean
        self.pca_residual_mm = float(np.linalg.norm((pca_labels - proj).reshape(len(idx), -1, 3), axis=-1).mean()
                                     * self.codec.cube_mm / 2)

    def _draw(self, rng: np.random.Generator, idx: np.ndarray, labels_only: bool = False):
        """Crops (B, 1, S, S) and labels (B, J, 3) of items ``idx`` with this recipe's re-crop draw."""
        r = self.recipe
        n = len(idx)
        big = self.data.big_factor
        labels = torch.from_numpy(self.labels[idx])
        half_in = self.codec.cube_mm * big / 2  # mm per normalized unit of the cached crops
        if r.augment:
            gt = rng.random(n) < r.p_gt_centre
            centroid = self.labels[idx].mean(axis=1)
            jitter = np.where(gt, r.gt_jitter_mm, r.jitter_mm)[:, None] / half_in
            t = np.where(gt[:, None], centroid, 0.0) + rng.normal(size=(n, 3)) * jitter
            theta = rng.uniform(-np.radians(r.rot_deg), np.radians(r.rot_deg), n)
            if self.align_idx is not None:
                # turn the pair up: a direction at angle phi lands at phi - theta (recrop), so
                # theta = phi + 90 deg puts it at -90 deg, up in image coordinates
                a, b = self.align_idx
                axis = self.labels[idx, b, :2] - self.labels[idx, a, :2]
                up = np.arctan2(axis[:, 1], axis[:, 0]) + np.pi / 2
                up += rng.normal(size=n) * np.radians(r.align_jitter_deg)
                theta = np.where(gt, up, theta)
            scale = rng.uniform(1 - r.scale, 1 + r.scale, n)
            flip = rng.random(n) < r.flip_prob  # drawn for "right" hands too, so the other draws stay
        else:
            t, theta, scale, flip = np.zeros((n, 3)), np.zeros(n), np.ones(n), np.zeros(n, bool)
        if r.hands == "right":  # a left hand's crop mirrored, augmented or not
            flip = self.is_left[idx]
        z = self.data.z_mm[idx].astype(np.float64)
        z_ratio = np.where(np.isfinite(z), 1.0 + t[:, 2] * half_in / np.where(np.isfinite(z), z, 1.0), 1.0)
        tt = [torch.from_numpy(np.asarray(a, np.float32)) for a in (t, theta, scale, z_ratio)]
        flip_t = torch.from_numpy(flip)
        if labels_only:
            crops = torch.ones(n, 1, 2, 2)
            size = 2
        else:
            # float16 as cached: recrop converts only the pixels it picks
            crops = torch.from_numpy(np.asarray(self.data.crops[idx]))[:, None]
            size = self.codec.size
        return recrop(crops, labels, tt[0], tt[1], tt[2], flip_t, big, size, z_ratio=tt[3])

    def _batch_items(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """(batch_size,) sorted frame indices (sorted: kinder to the memory map), ``random_fingers_share``
        of them (binomially) from the random-finger frames where the recipe sets a share."""
        share, groups = self.recipe.random_fingers_share, self._finger_groups
        if share <= 0 or groups is None:
            return np.sort(rng.integers(0, len(self.data), batch_size))
        n_random = rng.binomial(batch_size, share)
        return np.sort(np.concatenate([rng.choice(groups[0], n_random), rng.choice(groups[1], batch_size - n_random)]))

    def build_model(self) -> torch.nn.Module:
        """Fresh model for the harness to train, its PCA layer loaded with the fitted prior."""
        model = create_model(self.model_name, **self.model_config)
        load_pca(model, self.pca_mean, self.pca_basis)
        return model.to(memory_format=torch.channels_last) if self.recipe.channels_last else model

    def batches(self, start_step: int, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Harness batch source: endless (crops (B, 1, S, S), labels (B, J, 3) normalized uvd), by (seed, step)."""
        step = start_step
        while True:
            rng = np.random.default_rng([seed, step])
            yield self._draw(rng, self._batch_items(rng, batch_size))
            step += 1

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device
             ) -> tuple[torch.Tensor, dict]:
        """Harness training loss of one batch (the recipe's ``loss``); logs an approximate error in mm."""
        x, y = (t.to(device, non_blocking=True) for t in batch)
        if self.recipe.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = surround = global_pred = None
        if hasattr(model, "forward_pose"):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=device.type == "cpu" and self._cpu_bf16):
                features = model.forward_features(x)
            if getattr(model, "head", "pca") == "dense":
                pred, surround, global_pred, logits = model.forward_dense(features.float())
            else:
                pred, logits = model.forward_pose(features.float())
            pred = pred.float()
        else:
            pred = model(x).float()
        loss = self._pose_loss(pred, y)
        if surround is not None:
            # the PCA head trains beside the dense one (it feeds the confidence head), and A2J's anchor
            # surrounding loss pulls each joint's weighted cell centres onto it (x 2: summed over u and v,
            # as the smooth L1 pose loss is over u, v and d)
            loss = loss + self._pose_loss(global_pred.float(), y) + F.smooth_l1_loss(
                surround.float(), y[..., :2], beta=self.recipe.smooth_l1_beta, reduction="mean") * 2
        # One normalized unit is half the cube: report an approximate mm figure while training.
        mm = torch.linalg.vector_norm(pred.detach() - y, dim=-1).mean() * (self.codec.cube_mm / 2)
        logs = {"approx_error_mm": float(mm)}
        if logits is not None:
            conf = confidence_loss(logits, pred, y, self.codec.cube_mm / 2, self.recipe.confidence_mm)
            loss = loss + conf
            logs["confidence_bce"] = float(conf.detach())
        return loss, logs

    def _pose_loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The recipe's ``loss`` between (B, J, 3) predictions and labels, normalized uvd."""
        if self.recipe.loss == "caffe_euclidean":
            # Caffe's EuclideanLoss: sum of squares over the batch / (2N)
            return ((pred - y) ** 2).sum() / (2 * pred.shape[0])
        if self.recipe.loss == "smooth_l1":
            return F.smooth_l1_loss(pred, y, beta=self.recipe.smooth_l1_beta, reduction="mean") * 3
        if self.recipe.loss == "euclidean_joint":
            return torch.sqrt(((pred - y) ** 2).sum(-1) + 1e-8).mean()
        raise HandPoseError(f"unknown loss {self.recipe.loss!r} (smooth_l1, euclidean_joint, caffe_euclidean)")

    def checkpoint_meta(self) -> dict[str, Any]:
        """Depth checkpoint metadata the harness saves with the weights: codec, inference, PCA, recipe."""
        return {
            "modality": "depth",
            "joint_names": list(self.joint_names),
            "codec": self.codec.to_config(),
            "inference": {"passes": int(self.recipe.passes),
                          "flip_average": bool(self.recipe.flip_average and self.recipe.augment
                                               and self.recipe.flip_prob > 0 and self.recipe.hands == "both"),
                          "hands": self.recipe.hands,
                          "rotation_average": [float(a) for a in self.recipe.rotation_average]
                          if self.recipe.augment else [],
                          # the pipeline judges candidates where the final pass is averaged: flip_average
                          # on, or a right-hand network (DepthPipeline.average_final)
                          "search": {"candidates": int(self.recipe.search_candidates)},
                          **({"align": list(self.align_idx)} if self.align_idx is not None else {}),
                          **({"confidence_mm": float(self.recipe.confidence_mm)} if self.recipe.confidence else {})},
            # residual_mm is the fitted PCA's; with finetune_pca training moves the layer on from it
            "pca": {"k": self.recipe.bottleneck, "fitted_on": int(self.pca_fitted_on),
                    "residual_mm": round(self.pca_residual_mm, 3),
                    "finetuned": bool(self.model_config.get("finetune_pca", False))},
            "recipe": {k: v for k, v in asdict(self.recipe).items() if k != "train"},
            "provenance": self.provenance,
        }


def fit_confidence(model: torch.nn.Module, task: DeepPriorTask, steps: int = 2000, batch_size: int = 256,
                   lr: float = 1e-3, seed: int = 0, progress: bool = True) -> dict[str, float]:
    """Fit ``model.confidence`` on a trained, frozen network (from the head's current weights: fresh
    ones for a checkpoint without a head); returns figures of the fit.

    Everything but the head stays as it is: the model runs in eval mode (BatchNorm on its running
    statistics, as at inference) and only the head's parameters are optimised, with the task's own
    batches and :func:`confidence_loss`. Not the shared harness: that trains a whole network in train
    mode, which would move BatchNorm's running statistics and so the joints. 2,000 steps of 256 crops
    take ~5 min on 2 CPU cores (the frozen network runs forward only).
    """
    if getattr(model, "confidence", None) is None:
        raise HandPoseError("the model has no confidence head: build it with confidence=True")
    model.eval()
    head = list(model.confidence.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head:
        p.requires_grad_(True)
    opt = torch.optim.Adam(head, lr=lr)
    device = torch.device("cpu")
    batches = task.batches(0, batch_size, seed)
    recent: list[float] = []
    for step in tqdm(range(steps), desc="confidence head", disable=not progress, unit="step"):
        for group in opt.param_groups:  # cosine decay: the last steps settle the head
            group["lr"] = lr * 0.5 * (1.0 + np.cos(np.pi * step / steps))
        # the pose part of the task's loss is a constant here (no parameter of it is trained)
        loss, logs = task.loss(model, next(batches), device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent = (recent + [logs["confidence_bce"]])[-100:]
    return {"steps": steps, "batch_size": batch_size, "final_bce": float(np.mean(recent))}
