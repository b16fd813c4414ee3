"""DeepPrior on the shared harness: data cache, batch augmentation, loss, named recipes.

Data: synthetic depth frames are rendered once, cut by the same :class:`DepthCropCodec` the
estimator uses (``hdf5_io.encode_frame``: the inference-time hand search, or the labelled centre
where that search misses), and cached as an ``.npz`` of crops (float16) + normalized uvd labels,
keyed by everything that changes them. Batches are drawn by ``default_rng([seed, step])`` so a
resumed run sees the batches an uninterrupted one would.

Augmentation (default recipe), vectorized on the batch in torch: in-plane rotation, scale (the
cube grows or shrinks: uv and d both scale), centre jitter in u, v and d. Labels go through the
same transform, so they stay exact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from handpose_core.checkpoint import atomic_write
from handpose_core.codecs.depth_crop import DepthCropCodec
from handpose_core.keypoints import HAND21
from handpose_core.models import create_model
from handpose_core.models.deep_prior import fit_pca, load_pca
from handpose_core.training.harness import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class DeepPriorRecipe:
    """Model + loss + augmentation + optimisation of one named DeepPrior training recipe."""

    model: str = "deep_prior_res"
    model_config: dict[str, Any] = field(default_factory=dict)
    bottleneck: int = 30
    loss: str = "euclidean_joint"  # euclidean_joint: mean per-joint distance | caffe_euclidean
    augment: bool = True
    rot_deg: float = 180.0  # in-plane rotation, uniform in +-rot_deg
    scale: float = 0.15  # cube scale factor uniform in 1 +- scale
    shift: float = 0.08  # centre jitter, normalized units (1 = half the cube)
    train: TrainConfig = field(default_factory=TrainConfig)


def recipe(name: str) -> DeepPriorRecipe:
    """Named recipes: ``default`` (DeepPrior++-style) and ``seed`` (the seed notebook's Caffe recipe)."""
    if name == "default":
        return DeepPriorRecipe(train=TrainConfig(steps=30000, batch_size=64, optimizer="adam", lr=1e-3,
                                                 weight_decay=1e-4, lr_policy="cosine", warmup_steps=200))
    if name == "seed":
        # Euclidean loss, SGD momentum 0.9, Caffe 'inv' policy base 5e-6 gamma 1e-4 power 0.75, batch 64.
        return DeepPriorRecipe(model="deep_prior_seed", loss="caffe_euclidean", augment=False,
                               train=TrainConfig(steps=40000, batch_size=64, optimizer="sgd", lr=5e-6, momentum=0.9,
                                                 lr_policy="inv", lr_gamma=1e-4, lr_power=0.75))
    raise ValueError(f"unknown DeepPrior recipe {name!r} (default, seed)")


# -- data ----------------------------------------------------------------------------------------


def _render_range(args: tuple[int, int, int, dict]) -> tuple[np.ndarray, np.ndarray]:
    """Worker: crops (n, S, S) float16 and labels (n, J*3) float32 for sample indices [start, stop)."""
    from handpose_core.data.hdf5_io import encode_frame
    from handpose_core.data.synthetic import SynthConfig, SyntheticHands

    seed, start, stop, codec_cfg = args
    torch.set_num_threads(1)
    gen = SyntheticHands(SynthConfig(render_rgb=False), seed=seed)
    codec = DepthCropCodec(**codec_cfg)
    crops = np.empty((stop - start, codec.size, codec.size), np.float16)
    labels = np.empty((stop - start, 3 * len(HAND21.joint_names)), np.float32)
    for k, i in enumerate(range(start, stop)):
        crop, label, _ = encode_frame(codec, gen[i])
        crops[k] = crop.image
        labels[k] = label
    return crops, labels


def synthetic_crops(n: int, seed: int, codec: DepthCropCodec, cache_dir: str | os.PathLike = "runs/cache",
                    workers: int = 2, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(n, S, S) float16 crops and (n, J*3) float32 labels of synthetic frames [0, n) of ``seed``, cached."""
    key = hashlib.sha1(json.dumps([n, seed, codec.to_config(), "v1"], sort_keys=True).encode()).hexdigest()[:10]
    path = Path(cache_dir) / f"deep_prior_synth_s{seed}_n{n}_{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["crops"], z["labels"]
    chunk = 250
    jobs = [(seed, s, min(n, s + chunk), codec.to_config()) for s in range(0, n, chunk)]
    crops, labels = [], []
    with get_context("spawn").Pool(workers) as pool, tqdm(total=n, desc=f"render seed {seed}",
                                                          disable=not progress, unit="frame") as bar:
        for c, lab in pool.imap(_render_range, jobs):
            crops.append(c)
            labels.append(lab)
            bar.update(len(c))
    out = (np.concatenate(crops), np.concatenate(labels))
    atomic_write(path, lambda tmp: np.savez(open(tmp, "wb"), crops=out[0], labels=out[1]))
    return out


def augment(crops: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator, rot_deg: float,
            scale: float, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Random in-plane rotation, cube scale and centre jitter of a batch, labels transformed alike.

    crops: (N, 1, S, S) normalized depth (+1 = background); labels: (N, J, 3) normalized uvd.
    The output pixel at normalized position p samples the input at ``s R p + t``; so a label x
    moves to ``R^T (x - t) / s`` and depths become ``(d - t_d) / s`` (the cube is s times larger).
    """
    n = crops.shape[0]
    theta = torch.from_numpy(rng.uniform(-math.radians(rot_deg), math.radians(rot_deg), n)).float()
    s = torch.from_numpy(rng.uniform(1 - scale, 1 + scale, n)).float()
    t = torch.from_numpy(rng.uniform(-shift, shift, (n, 3))).float()
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (N, 2, 2)
    affine = torch.cat([s[:, None, None] * rot, t[:, :2, None]], dim=2)
    grid = F.affine_grid(affine, list(crops.shape), align_corners=False)
    # Sample (crop - 1) so the zero padding outside the crop reads as background (+1); nearest keeps
    # silhouettes sharp, as the codec's own warp does.
    sampled = F.grid_sample(crops - 1.0, grid, mode="nearest", padding_mode="zeros", align_corners=False) + 1.0
    background = sampled >= 0.999
    depth = (sampled - t[:, 2, None, None, None]) / s[:, None, None, None]
    out = torch.where(background, torch.ones_like(depth), depth.clamp(-1.0, 1.0))
    uv = torch.einsum("nik,nji->njk", rot, labels[..., :2] - t[:, None, :2]) / s[:, None, None]
    d = (labels[..., 2] - t[:, None, 2]) / s[:, None]
    return out, torch.cat([uv, d[..., None]], dim=-1)


class DeepPriorTask:
    """:class:`~handpose_core.training.harness.TrainTask` for DeepPrior on cached crops."""

    def __init__(self, rcp: DeepPriorRecipe, crops: np.ndarray, labels: np.ndarray, codec: DepthCropCodec,
                 joint_names: tuple[str, ...] = HAND21.joint_names, provenance: dict | None = None) -> None:
        self.recipe = rcp
        self.crops = crops
        self.labels = labels.reshape(len(labels), -1, 3)
        self.codec = codec
        self.joint_names = tuple(joint_names)
        self.provenance = dict(provenance or {})
        self.model_name = rcp.model
        self.model_config = {"num_joints": len(self.joint_names), "bottleneck": rcp.bottleneck,
                             "input_size": codec.size, **rcp.model_config}
        self.pca_mean, self.pca_basis = fit_pca(self.labels, rcp.bottleneck)

    def build_model(self) -> torch.nn.Module:
        model = create_model(self.model_name, **self.model_config)
        load_pca(model, self.pca_mean, self.pca_basis)
        return model

    def batches(self, start_step: int, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        step = start_step
        while True:
            rng = np.random.default_rng([seed, step])
            idx = rng.integers(0, len(self.crops), batch_size)
            x = torch.from_numpy(self.crops[idx].astype(np.float32))[:, None]
            y = torch.from_numpy(self.labels[idx])
            if self.recipe.augment:
                x, y = augment(x, y, rng, self.recipe.rot_deg, self.recipe.scale, self.recipe.shift)
            yield x, y
            step += 1

    def loss(self, model, batch, device) -> tuple[torch.Tensor, dict]:
        x, y = (t.to(device, non_blocking=True) for t in batch)
        pred = model(x)
        if self.recipe.loss == "caffe_euclidean":
            # Caffe's EuclideanLoss: sum of squares over the batch / (2N)
            loss = ((pred - y) ** 2).sum() / (2 * x.shape[0])
        else:
            loss = torch.sqrt(((pred - y) ** 2).sum(-1) + 1e-8).mean()
        # One normalized unit is half the cube: report an approximate mm figure while training.
        mm = torch.linalg.vector_norm(pred.detach() - y, dim=-1).mean() * (self.codec.cube_mm / 2)
        return loss, {"approx_error_mm": float(mm)}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "modality": "depth",
            "joint_names": list(self.joint_names),
            "codec": self.codec.to_config(),
            "pca": {"k": self.recipe.bottleneck, "fitted_on": int(len(self.labels))},
            "recipe": {k: v for k, v in asdict(self.recipe).items() if k != "train"},
            "provenance": self.provenance,
        }
