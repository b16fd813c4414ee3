"""HDF5 files in the seed notebook's layout, plus the raw frames and labels they were made from.

Layout written by :func:`write_hdf5` (N = frames of a split, S = crop size, J = joints)::

    image/{train,test}         (N, S, S, 1) float32  network input: depth crop normalized to [-1, 1]
    label/{train,test}         (N, 3J) float32       joints in the crop's normalized uvd cube
                                                     (u, v, d per joint, [-1, 1] inside the cube)
    pca/mean                   (3J,) float32         mean of label/train
    pca/eigenvectors           (k, 3J) float32       principal axes of label/train, one per row
    pca/eigenvalues            (k,) float32
    crop/{split}/com_xyz_mm    (N, 3) float64        cube centre, mm, camera optical frame
    crop/{split}/cube_mm       (N,) float64          cube edge length, mm
    crop/{split}/warp          (N, 2, 3) float64     affine image px -> crop px (decode labels with it)
    crop/{split}/com_from_labels (N,) bool           True where the depth search missed the hand and
                                                     the cube was centred on the labelled joints
    raw/{split}/depth_mm       (N, H, W) uint16      full frames, 0 = no return   (optional)
    raw/{split}/rgb            (N, H, W, 3) uint8                                 (optional)
    raw/{split}/xyz_m          (N, J, 3) float32     joints, metres, camera optical frame
    raw/{split}/uv_px          (N, J, 2) float32     joints, pixels
    raw/{split}/visible        (N, J) bool
    raw/{split}/is_left        (N,) bool
    raw/{split}/index          (N,) int64            generator index of each frame

Root attributes: ``format``, ``joint_names``, ``intrinsics`` (fx, fy, cx, cy, width, height),
``codec`` and ``generator`` (JSON strings). The seed notebook's own files have only image/*,
label/* and pca/*; :func:`read_hdf5` reads both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from handpose_core.camera import Intrinsics
from handpose_core.checkpoint import atomic_write
from handpose_core.codecs.depth_crop import DepthCrop, DepthCropCodec
from handpose_core.errors import HandPoseError
from handpose_core.keypoints import HAND21

if TYPE_CHECKING:
    from handpose_core.data.nyu import NYUFrame
    from handpose_core.data.synthetic import SynthSample

FORMAT = "handpose-hdf5/1"
SPLITS = ("train", "test")


# --------------------------------------------------------------------------------------------
# Encoding one frame (isolated so the crop codec can be swapped)
# --------------------------------------------------------------------------------------------


def encode_frame(codec: DepthCropCodec, sample: SynthSample | NYUFrame) -> tuple[DepthCrop, np.ndarray, bool]:
    """(crop, (3J,) float32 label, com_from_labels) for a :class:`SynthSample` with depth or an NYUFrame.

    The cube is centred the way inference centres it (the codec's nearest-object search on the
    depth frame) when that puts every joint inside the cube. Where the search fails or lands
    elsewhere (a table nearer than the hand, a forearm pulling the centre away) the cube is
    centred on the labelled joints instead, and ``com_from_labels`` says so.
    """
    if sample.depth_mm is None:
        raise HandPoseError("depth crops need depth frames: render with render_depth=True")
    xyz_mm = np.asarray(sample.xyz_m, dtype=np.float64) * 1000.0
    crop = None
    try:
        crop = codec.encode(sample.depth_mm, sample.intrinsics)
    except HandPoseError:
        pass
    from_labels = crop is None or np.abs(xyz_mm - crop.com_xyz_mm).max() > crop.cube_mm / 2.0
    if from_labels:
        centre = 0.5 * (xyz_mm.min(axis=0) + xyz_mm.max(axis=0))
        crop = codec.encode(sample.depth_mm, sample.intrinsics, com_xyz_mm=centre)
    label = codec.encode_joints(sample.xyz_m, crop).reshape(-1)
    return crop, label, bool(from_labels)


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


class _Appender:
    """Datasets of one split that grow by one frame at a time."""

    def __init__(self, group: h5py.Group, compression: str | None):
        self.group = group
        self.compression = compression
        self.count = 0

    def append(self, name: str, value: np.ndarray) -> None:
        value = np.asarray(value)
        if name not in self.group:
            self.group.create_dataset(
                name,
                shape=(0,) + value.shape,
                maxshape=(None,) + value.shape,
                dtype=value.dtype,
                chunks=(1,) + value.shape if value.size > 4096 else (256,) + value.shape,
                compression=self.compression if value.size > 4096 else None,  # frames, not labels
            )
        ds = self.group[name]
        if ds.shape[0] <= self.count:
            ds.resize(self.count + 1, axis=0)
        ds[self.count] = value


def write_hdf5(
    path: str | os.PathLike,
    splits: Mapping[str, Iterable],
    *,
    codec: DepthCropCodec | None = None,
    write_raw: bool = True,
    pca_components: int = 30,
    attrs: Mapping[str, Any] | None = None,
    compression: str | None = "lzf",
    progress: Callable[[], None] | None = None,
) -> dict[str, int]:
    """Write ``splits`` ({"train": samples, "test": samples}) to ``path``; returns frames per split.

    Samples are :class:`~handpose_core.data.synthetic.SynthSample` (an optional ``index``
    attribute is stored). Streams frame by frame; the file appears only when complete (written
    to a temporary file, then renamed). ``progress`` is called once per frame.
    """
    codec = codec if codec is not None else DepthCropCodec()
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise HandPoseError(f"unknown split(s) {sorted(unknown)}; expected {SPLITS}")
    counts: dict[str, int] = {}

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            meta = None
            for split in SPLITS:
                image = _Appender(f.require_group("image"), compression)
                label = _Appender(f.require_group("label"), None)
                crop = _Appender(f.require_group(f"crop/{split}"), None)
                raw = _Appender(f.require_group(f"raw/{split}"), compression)
                for sample in splits.get(split, ()):
                    meta = meta or _frame_meta(sample)
                    _check_same_camera(meta, sample)
                    enc, lab, from_labels = encode_frame(codec, sample)
                    image.append(split, enc.image[..., None].astype(np.float32))
                    label.append(split, lab.astype(np.float32))
                    crop.append("com_xyz_mm", enc.com_xyz_mm)
                    crop.append("cube_mm", np.float64(enc.cube_mm))
                    crop.append("warp", enc.warp)
                    crop.append("com_from_labels", np.bool_(from_labels))
                    raw.append("xyz_m", sample.xyz_m.astype(np.float32))
                    raw.append("uv_px", sample.uv_px.astype(np.float32))
                    raw.append("visible", sample.visible.astype(bool))
                    raw.append("is_left", np.bool_(sample.is_left))
                    raw.append("index", np.int64(getattr(sample, "index", -1)))
                    if write_raw:
                        raw.append("depth_mm", sample.depth_mm)
                        if sample.rgb is not None:
                            raw.append("rgb", sample.rgb)
                    for appender in (image, label, crop, raw):
                        appender.count += 1
                    if progress is not None:
                        progress()
                counts[split] = image.count
                if image.count == 0:  # keep the seed layout complete: empty splits are (0, S, S, 1)
                    f["image"].create_dataset(split, shape=(0, codec.size, codec.size, 1), dtype=np.float32)
                    f["label"].create_dataset(split, shape=(0, 3 * HAND21.num_joints), dtype=np.float32)
            if meta is None:
                raise HandPoseError("no frames to write")
            _write_pca(f, f["label/train"][()], pca_components)
            intr = meta["intrinsics"]
            f.attrs["joint_names"] = list(meta["joint_names"])
            f.attrs["intrinsics"] = np.array([*intr.as_tuple(), intr.width, intr.height], dtype=np.float64)
            f.attrs["codec"] = json.dumps(codec.to_config())
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
    atomic_write(path, write)  # also gives the file the usual mode
    return counts


def _frame_meta(sample) -> dict:
    if len(sample.xyz_m) != HAND21.num_joints:
        raise HandPoseError(f"expected {HAND21.num_joints} joints per frame, got {len(sample.xyz_m)}")
    shape = None if sample.depth_mm is None else sample.depth_mm.shape
    return {"joint_names": HAND21.joint_names, "intrinsics": sample.intrinsics, "shape": shape}


def _check_same_camera(meta: dict, sample) -> None:
    if sample.intrinsics != meta["intrinsics"] or (
        sample.depth_mm is not None and sample.depth_mm.shape != meta["shape"]
    ):
        raise HandPoseError("all frames of one file must share the camera (intrinsics and image size)")


def _write_pca(f: h5py.File, labels: np.ndarray, components: int) -> None:
    """pca/mean and pca/eigenvectors (rows) of the training labels, when there are enough of them."""
    labels = np.asarray(labels, dtype=np.float64)
    if components <= 0 or labels.ndim != 2 or labels.shape[0] < 2:
        return
    mean = labels.mean(axis=0)
    _, sing, vt = np.linalg.svd(labels - mean, full_matrices=False)
    k = min(components, vt.shape[0])
    f.create_dataset("pca/mean", data=mean.astype(np.float32))
    f.create_dataset("pca/eigenvectors", data=vt[:k].astype(np.float32))
    f.create_dataset("pca/eigenvalues", data=(sing[:k] ** 2 / (labels.shape[0] - 1)).astype(np.float32))


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------


def read_hdf5(path: str | os.PathLike, raw: bool = True) -> dict[str, Any]:
    """Read a file of the seed layout (ours or the notebook's) into numpy arrays.

    Returns a dict keyed by dataset path ("image/train", "label/test", "pca/mean",
    "raw/train/depth_mm", "crop/train/warp", ...; raw/* only when ``raw``), plus "attrs" (root
    attributes), "joint_names" (tuple or None) and "intrinsics" (:class:`Intrinsics` or None).
    image/* are returned as (N, S, S, 1) float32 and label/* as (N, D) float32 with D = 3J.
    Raises :class:`HandPoseError` naming the problem for a missing/unreadable file, a missing
    dataset or inconsistent shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise HandPoseError(f"HDF5 file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise HandPoseError(f"{path} is not a readable HDF5 file: {exc}") from exc
    with f:
        out: dict[str, Any] = {}
        for split in SPLITS:
            for group in ("image", "label"):
                key = f"{group}/{split}"
                if not isinstance(f.get(key), h5py.Dataset):
                    raise HandPoseError(f"{path}: dataset {key!r} is missing (seed layout needs image/* and label/*)")
            image = np.asarray(f[f"image/{split}"][()], dtype=np.float32)
            label = np.asarray(f[f"label/{split}"][()], dtype=np.float32)
            if image.ndim == 3:
                image = image[..., None]
            if image.ndim != 4 or image.shape[-1] != 1 or image.shape[1] != image.shape[2]:
                raise HandPoseError(f"{path}: image/{split} must be (N, S, S, 1), got {image.shape}")
            if label.ndim == 3:
                label = label.reshape(label.shape[0], -1)
            if label.ndim != 2 or label.shape[1] % 3 != 0:
                raise HandPoseError(f"{path}: label/{split} must be (N, 3J), got {label.shape}")
            if label.shape[0] != image.shape[0]:
                raise HandPoseError(
                    f"{path}: image/{split} has {image.shape[0]} frames but label/{split} has {label.shape[0]}"
                )
            out[f"image/{split}"], out[f"label/{split}"] = image, label
        dims = {out[f"label/{s}"].shape[1] for s in SPLITS if out[f"label/{s}"].shape[0]}
        if len(dims) > 1:
            raise HandPoseError(f"{path}: label/train and label/test have different widths {sorted(dims)}")
        dim = dims.pop() if dims else out["label/train"].shape[1]
        if "pca" in f:
            _read_pca(path, f, dim, out)
        for split in SPLITS:
            n = out[f"image/{split}"].shape[0]
            for group in ("crop", "raw") if raw else ("crop",):
                key = f"{group}/{split}"
                if key not in f:
                    continue
                for name, ds in f[key].items():
                    if ds.shape[:1] != (n,):
                        raise HandPoseError(f"{path}: {key}/{name} has shape {ds.shape}, expected {n} frames")
                    out[f"{key}/{name}"] = ds[()]
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
    out["attrs"] = attrs
    names = attrs.get("joint_names")
    out["joint_names"] = tuple(names) if names is not None else None
    if names is not None and 3 * len(names) != dim:
        raise HandPoseError(f"{path}: {len(names)} joint names but labels of width {dim}")
    intr = attrs.get("intrinsics")
    if intr is not None:
        values = np.asarray(intr, dtype=np.float64).reshape(-1)
        if values.size != 6:
            raise HandPoseError(f"{path}: attribute 'intrinsics' must be (fx, fy, cx, cy, width, height)")
        out["intrinsics"] = Intrinsics(*(float(v) for v in values[:4]), int(values[4]), int(values[5]))
    else:
        out["intrinsics"] = None
    return out


def _read_pca(path: Path, f: h5py.File, dim: int, out: dict) -> None:
    for key in ("pca/eigenvectors", "pca/mean"):
        if not isinstance(f.get(key), h5py.Dataset):
            raise HandPoseError(f"{path}: group 'pca' lacks dataset {key!r}")
    vecs = np.asarray(f["pca/eigenvectors"][()], dtype=np.float32)
    mean = np.asarray(f["pca/mean"][()], dtype=np.float32).reshape(-1)
    if mean.shape != (dim,):
        raise HandPoseError(f"{path}: pca/mean has shape {mean.shape}, labels have width {dim}")
    if vecs.ndim != 2 or dim not in vecs.shape:
        raise HandPoseError(f"{path}: pca/eigenvectors must be (k, {dim}), got {vecs.shape}")
    if vecs.shape[1] != dim:  # stored as columns (D, k): return rows
        vecs = vecs.T
    out["pca/eigenvectors"], out["pca/mean"] = vecs, mean
    if isinstance(f.get("pca/eigenvalues"), h5py.Dataset):
        out["pca/eigenvalues"] = np.asarray(f["pca/eigenvalues"][()], dtype=np.float32)


def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in value.tolist()]
    return value
