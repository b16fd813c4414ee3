"""Test checkpoints for the depth (DeepPrior) pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from handpose_core.checkpoint import load_checkpoint, save_checkpoint
from handpose_core.pipelines.depth import save_untrained


def weighted_untrained(path: Path, inference: dict[str, Any], weight_std: float = 0.5) -> dict[str, Any]:
    """Write an untrained DeepPrior checkpoint at ``path`` with ``meta['inference']`` = ``inference`` and
    its bottleneck weights drawn N(0, weight_std) (seed 0); returns its blob.

    An untrained bottleneck outputs about the mean pose for any crop; with weight, different crops
    (mirrored, turned, another hand's) predict differently, so tests can tell them apart.
    """
    save_untrained(path)
    blob = load_checkpoint(path)
    torch.manual_seed(0)
    with torch.no_grad():
        blob["state_dict"]["bottleneck.weight"].normal_(0.0, weight_std)
    blob["meta"]["inference"] = dict(inference)
    save_checkpoint(path, blob["model"]["name"], blob["model"]["config"], blob["state_dict"], blob["meta"])
    return blob


def plain_and_mirrored(pipeline, crop) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's network on ``crop`` and on its mirror image (u negated back): two (J, 3)
    normalized uvd, computed directly from the model, for tests of the pipeline's mirroring."""
    x = torch.from_numpy(crop.image)[None, None]
    with torch.inference_mode():
        plain = pipeline.model(x)[0].numpy()
        mirrored = pipeline.model(x.flip(-1))[0].numpy() * np.array([-1.0, 1.0, 1.0], np.float32)
    return plain, mirrored
