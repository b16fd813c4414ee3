"""NYU Hand Pose dataset (Tompson et al. 2014, https://jonathantompson.github.io/NYU_Hand_Pose_Dataset.htm).

Layout of one split folder (``train/`` or ``test/``)::

    joint_data.mat                 joint_xyz, joint_uvd: (3 kinects, N frames, 36 joints, 3) float,
                                   joint_names: 36 names (optional here)
    depth_<k>_<frame:07d>.png      k = kinect 1..3, frame 1-based: depth_1_0000001.png
    rgb_<k>_<frame:07d>.png        (not used)

Depth PNGs pack millimetres into two 8-bit channels: ``depth_mm = (G << 8) | B`` (R is unused;
OpenCV reads BGR, so B is channel 0 and G channel 1). 0 means no return.

Coordinates. NYU's ``joint_xyz`` is in millimetres with x right, **y up**, z forward, and
``joint_uvd`` is its projection with the NYU camera (fx 588.03, fy 587.07, cx 320, cy 240)::

    u = fx * x / z + cx        v = cy - fy * y / z        d = z

:class:`NYUDataset` returns joints in the project's optical frame (REP 103: x right, y **down**,
z forward, metres): ``xyz_m = (x, -y, z) / 1000``, so that ``NYU_INTRINSICS.project(xyz_m)``
reproduces ``joint_uvd``'s u, v. The raw ``joint_uvd`` is passed through unchanged.

Joints: ``joints="eval14"`` (default) selects the 14 evaluation joints with
:data:`~handpose_core.keypoints.NYU36_TO_14` (names :data:`~handpose_core.keypoints.NYU14`);
``joints="all36"`` keeps all 36, named as in the .mat file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from handpose_core.camera import NYU_INTRINSICS, Intrinsics
from handpose_core.codecs.depth_crop import DepthCropCodec
from handpose_core.errors import HandPoseError
from handpose_core.keypoints import NYU14, NYU36_TO_14

log = logging.getLogger(__name__)

NUM_KINECTS = 3
NUM_JOINTS = 36
JOINT_SETS = ("eval14", "all36")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # chunk type + CRC of the (empty) last chunk


@dataclass
class NYUFrame:
    """One frame of one kinect.

    depth_mm:   (480, 640) uint16 millimetres, 0 = no return.
    xyz_m:      (J, 3) float32 joints, metres, camera optical frame (x right, y down, z forward).
    uvd:        (J, 3) float32 NYU's joint_uvd as stored: u, v pixels, d millimetres.
    intrinsics: the camera (:data:`~handpose_core.camera.NYU_INTRINSICS`).
    index:      0-based frame index within the split (the file name holds ``index + 1``).
    path:       the depth PNG.
    """

    depth_mm: np.ndarray
    xyz_m: np.ndarray
    uvd: np.ndarray
    intrinsics: Intrinsics
    index: int
    path: Path


def depth_path(root: str | os.PathLike, kinect: int, index: int) -> Path:
    """Depth PNG of 0-based frame ``index`` of ``kinect`` (1..3): ``root/depth_<k>_<index+1:07d>.png``."""
    return Path(root) / f"depth_{kinect}_{index + 1:07d}.png"


def read_nyu_depth(path: str | os.PathLike) -> np.ndarray:
    """NYU depth PNG -> (H, W) uint16 millimetres, ``(G << 8) | B``.

    Raises :class:`HandPoseError` naming the file when it is missing, not a PNG, truncated
    (no IEND chunk, or undecodable), or not a 3-channel 8-bit image (e.g. a 16-bit single-channel
    depth PNG, which is a different convention from NYU's RGB packing).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HandPoseError(f"NYU depth image not found: {path}") from None
    except OSError as exc:
        raise HandPoseError(f"cannot read NYU depth image {path}: {exc}") from exc
    if not data.startswith(_PNG_SIGNATURE):
        raise HandPoseError(f"{path} is not a PNG file (NYU depth images are PNGs)")
    if _PNG_IEND not in data[-64:]:
        raise HandPoseError(f"{path} is truncated: the PNG has no IEND chunk ({len(data)} bytes)")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise HandPoseError(f"{path} is truncated or corrupt: OpenCV cannot decode it")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        bits = 16 if img.dtype == np.uint16 else 8 * img.dtype.itemsize
        raise HandPoseError(
            f"{path} is a {bits}-bit single-channel PNG; NYU depth is a 3-channel 8-bit PNG "
            "with depth_mm = (G << 8) | B"
        )
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise HandPoseError(
            f"{path} is a {img.shape[2] if img.ndim == 3 else '?'}-channel {img.dtype} PNG; NYU depth is "
            "a 3-channel 8-bit PNG with depth_mm = (G << 8) | B"
        )
    # BGR: channel 0 = B (low byte), channel 1 = G (high byte)
    return (img[:, :, 1].astype(np.uint16) << 8) | img[:, :, 0].astype(np.uint16)


def _load_mat(path: Path) -> dict:
    import scipy.io

    if not path.is_file():
        raise HandPoseError(f"NYU joint file not found: {path}")
    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5) files
        raise HandPoseError(f"{path} is a MATLAB v7.3 file; save it as v7 or older: {exc}") from exc
    except (ValueError, TypeError, OSError) as exc:
        raise HandPoseError(f"{path} is not a readable MATLAB .mat file: {exc}") from exc


def _mat_joint_names(mat: dict) -> tuple[str, ...]:
    """The 36 names of ``joint_names`` (a cell array) where present and well-formed, else J00..J35."""
    raw = mat.get("joint_names")
    try:
        names = tuple(str(np.asarray(v).reshape(-1)[0]) for v in np.asarray(raw, dtype=object).reshape(-1))
    except (TypeError, ValueError, IndexError):
        names = ()
    return names if len(names) == NUM_JOINTS else tuple(f"J{j:02d}" for j in range(NUM_JOINTS))


class NYUDataset:
    """Frames of one kinect of an NYU split folder; see the module docstring for units and frames.

    ``kinect`` is 1-based (1 = the frontal camera, the one used for evaluation). Only
    ``joint_data.mat`` is read up front; depth PNGs are read by ``__getitem__``.
    """

    def __init__(self, root: str | os.PathLike, kinect: int = 1, joints: str = "eval14"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise HandPoseError(f"NYU folder not found: {self.root}")
        if joints not in JOINT_SETS:
            raise HandPoseError(f"joints must be one of {JOINT_SETS}, got {joints!r}")
        if isinstance(kinect, bool) or not isinstance(kinect, (int, np.integer)) or not 1 <= kinect <= NUM_KINECTS:
            raise HandPoseError(f"kinect must be 1, 2 or 3, got {kinect!r}")
        self.kinect = int(kinect)
        self.joints = joints
        mat_path = self.root / "joint_data.mat"
        mat = _load_mat(mat_path)
        arrays = {}
        for key in ("joint_xyz", "joint_uvd"):
            if key not in mat:
                present = sorted(k for k in mat if not k.startswith("__"))
                raise HandPoseError(f"{mat_path} lacks {key!r} (has {present})")
            try:
                value = np.asarray(mat[key], dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise HandPoseError(f"{mat_path}: {key!r} is not numeric: {exc}") from exc
            if value.ndim != 4 or value.shape[2:] != (NUM_JOINTS, 3) or value.shape[1] == 0:
                raise HandPoseError(
                    f"{mat_path}: {key!r} must be (kinects, frames, {NUM_JOINTS}, 3), got {value.shape}"
                )
            if value.shape[0] < self.kinect:
                raise HandPoseError(f"{mat_path}: {key!r} has {value.shape[0]} kinect(s), kinect={self.kinect} asked")
            arrays[key] = value
        if arrays["joint_xyz"].shape != arrays["joint_uvd"].shape:
            raise HandPoseError(
                f"{mat_path}: joint_xyz {arrays['joint_xyz'].shape} and joint_uvd "
                f"{arrays['joint_uvd'].shape} differ in shape"
            )
        select = list(NYU36_TO_14) if joints == "eval14" else list(range(NUM_JOINTS))
        xyz_mm = arrays["joint_xyz"][self.kinect - 1][:, select]
        # NYU: y up, mm -> optical frame: y down, metres
        self._xyz_m = (xyz_mm * np.array([1.0, -1.0, 1.0]) / 1000.0).astype(np.float32)
        self._uvd = arrays["joint_uvd"][self.kinect - 1][:, select].astype(np.float32)
        self.joint_names: tuple[str, ...] = (
            NYU14.joint_names if joints == "eval14" else _mat_joint_names(mat)
        )
        self.intrinsics: Intrinsics = NYU_INTRINSICS
        first = depth_path(self.root, self.kinect, 0)
        if not first.is_file():
            raise HandPoseError(f"NYU depth image not found: {first} (is {self.root} an NYU train/ or test/ folder?)")

    def __len__(self) -> int:
        return len(self._xyz_m)

    def __getitem__(self, i) -> NYUFrame:
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"NYUDataset indices must be integers, got {type(i).__name__}")
        index = int(i) + n if i < 0 else int(i)
        if not 0 <= index < n:
            raise IndexError(f"frame {i} out of range for {n} frames")
        path = depth_path(self.root, self.kinect, index)
        depth = read_nyu_depth(path)
        shape = (self.intrinsics.height, self.intrinsics.width)
        if depth.shape != shape:
            raise HandPoseError(f"{path} is {depth.shape[1]}x{depth.shape[0]}, NYU frames are {shape[1]}x{shape[0]}")
        return NYUFrame(depth, self._xyz_m[index].copy(), self._uvd[index].copy(), self.intrinsics, index, path)


def encode_dataset(dataset: NYUDataset, codec: DepthCropCodec, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Encode every frame: (crops (N, S, S) float16, labels (N, 3J) float32 normalized uvd).

    Each frame is cropped as inference would (the codec's search on the depth frame); where the
    search finds no hand, or a cube that misses a labelled joint, the cube is centred on the
    labelled joints instead (:func:`~handpose_core.data.hdf5_io.encode_frame`); those frames are
    counted in one log line.
    """
    from tqdm import tqdm

    from handpose_core.data.hdf5_io import encode_frame

    n = len(dataset)
    crops = np.empty((n, codec.size, codec.size), dtype=np.float16)
    labels = None
    from_labels = 0
    for i in tqdm(range(n), total=n, unit="frame", desc="encode NYU", disable=not progress):
        frame = dataset[i]
        try:
            crop, label, centred = encode_frame(codec, frame)
        except HandPoseError as exc:
            raise HandPoseError(f"{getattr(frame, 'path', f'frame {i}')}: cannot encode: {exc}") from exc
        if labels is None:
            labels = np.empty((n, label.size), dtype=np.float32)
        crops[i] = crop.image
        labels[i] = label
        from_labels += bool(centred)
    if labels is None:
        labels = np.empty((0, 3 * len(getattr(dataset, "joint_names", ()))), dtype=np.float32)
    if n:
        log.info("%d of %d frames: the depth search missed the hand, cube centred on the labelled joints",
                 from_labels, n)
    return crops, labels
