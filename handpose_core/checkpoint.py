"""Checkpoint files: tensors plus plain-Python metadata, loadable with ``weights_only=True``.

Layout of the dict saved with :func:`torch.save`::

    {
      "format": "handpose-checkpoint/1",
      "model": {"name": <registry name>, "config": {...}},   # create_model(name, **config)
      "state_dict": {param name: tensor},
      "meta": {...},        # joint_names, input/crop spec, codec config, provenance, metrics
      "optimizer": {...},   # optional: optimizer state for resume
      "step": int,
    }

No pickled classes, so a checkpoint from an untrusted source cannot run code on load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from handpose_core.atomic import atomic_write  # noqa: F401  (re-exported: older imports)
from handpose_core.errors import HandPoseError

FORMAT = "handpose-checkpoint/1"


def save_checkpoint(
    path: str | os.PathLike,
    model_name: str,
    model_config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    meta: dict[str, Any],
    optimizer: dict[str, Any] | None = None,
    step: int = 0,
) -> None:
    """Write a checkpoint atomically (temporary file + rename)."""
    blob = {
        "format": FORMAT,
        "model": {"name": model_name, "config": dict(model_config)},
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "meta": dict(meta),
        "step": int(step),
    }
    if optimizer is not None:
        blob["optimizer"] = optimizer
    atomic_write(path, lambda tmp: torch.save(blob, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; raises :class:`HandPoseError`."""
    path = Path(path)
    if not path.is_file():
        raise HandPoseError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise HandPoseError(f"checkpoint {path} is not readable: {type(exc).__name__}: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise HandPoseError(f"checkpoint {path} is not a handpose checkpoint (format {FORMAT!r} expected)")
    for key in ("model", "state_dict", "meta"):
        if key not in blob:
            raise HandPoseError(f"checkpoint {path} lacks the {key!r} entry")
    return blob


def update_meta(path: str | os.PathLike, **entries: Any) -> dict[str, Any]:
    """Set top-level ``meta`` entries of the checkpoint at ``path`` in place; returns the new meta.

    Everything else (model, tensors, step, optimizer state) is written back unchanged, through the
    same temporary file and rename as :func:`save_checkpoint`, so an interrupted update leaves the
    old file whole. Used to store held-out figures measured after training (``--record`` of the
    evaluation tools).
    """
    blob = load_checkpoint(path)
    meta = {**blob["meta"], **entries}
    save_checkpoint(path, blob["model"]["name"], blob["model"]["config"], blob["state_dict"], meta,
                    optimizer=blob.get("optimizer"), step=blob.get("step", 0))
    return meta
