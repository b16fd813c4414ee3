"""Atomic file writes: a reader never sees a half-written file, and a failed write leaves none.

Every writer in the project (checkpoints, HDF5 files, JSON results, pictures) goes through
:func:`atomic_write`: write to a temporary file in the target's folder, then rename over it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], object]) -> None:
    """Call ``write_fn(tmp_path)`` then rename onto ``path``: readers never see a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        # mkstemp makes the file owner-only; give it the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data: Any, indent: int = 2) -> None:
    """Write ``data`` as JSON (newline-terminated), atomically."""
    text = json.dumps(data, indent=indent) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_png(path: str | os.PathLike, image_bgr: np.ndarray) -> None:
    """Write a (H, W, 3) BGR or (H, W) grey uint8 image as PNG, atomically."""
    ok, buf = cv2.imencode(".png", image_bgr)
    if not ok:
        raise ValueError(f"could not encode a PNG of shape {image_bgr.shape}")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.tobytes()))
