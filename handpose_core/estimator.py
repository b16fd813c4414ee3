"""HandPoseEstimator: checkpoint -> ``predict(image, intrinsics) -> list[HandPose]``.

The estimator is the one inference entry point used by the ROS node, the bag tools, the demo and
users' own scripts. It reads the checkpoint's metadata to pick the pipeline for its modality:

- ``depth`` (DeepPrior): (H, W) uint16 depth in mm or float32 depth in metres -> 3D joints.
- ``rgb`` (CPM): (H, W, 3) uint8 RGB -> 2D keypoints (3D where an aligned depth image is given).

Each pipeline (``handpose_core.pipelines.depth`` / ``.rgb``) owns its preprocessing codec, its
model and its decode step; this module only dispatches, resolves ``default:*`` names and devices.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from handpose_core.camera import Intrinsics
from handpose_core.checkpoint import load_checkpoint
from handpose_core.errors import HandPoseError

if TYPE_CHECKING:
    from handpose_core.pipelines.depth import DepthPipeline
    from handpose_core.pipelines.rgb import RGBPipeline

DEFAULT_CHECKPOINTS = {"default:depth": "deep_prior_synth.pt", "default:rgb": "cpm_light_synth.pt"}


@dataclass
class HandPose:
    """One detected hand.

    uv_px:       (J, 2) float32 pixels in the input image.
    xyz_m:       (J, 3) float32 metres, camera optical frame; NaN where unknown.
    confidence:  (J,) float32 in [0, 1].
    joint_names: names of the J joints, in order.
    box_px:      (x0, y0, x1, y1) float pixels of the crop the model saw, in the input image.
    extras:      pipeline-specific arrays for debugging (the normalized crop, belief maps).
    """

    uv_px: np.ndarray
    xyz_m: np.ndarray
    confidence: np.ndarray
    joint_names: tuple[str, ...]
    box_px: tuple[float, float, float, float] = (np.nan, np.nan, np.nan, np.nan)
    extras: dict[str, Any] = field(default_factory=dict, repr=False)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when present else CPU; ``cpu``, ``cuda``, ``cuda:N`` as given (validated)."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise HandPoseError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HandPoseError(f"device {name!r} asked for but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise HandPoseError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return dev


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """``default:depth`` / ``default:rgb`` -> the packaged weights; anything else is a path."""
    name = str(name_or_path)
    if name in ("default", "default:depth", "default:rgb"):
        key = "default:depth" if name == "default" else name
        path = Path(str(resources.files("handpose_core") / "weights" / DEFAULT_CHECKPOINTS[key]))
        if not path.is_file():
            raise HandPoseError(
                f"{key} weights are not installed ({path}); train them with `python -m training."
                f"{'train_deep_prior' if key == 'default:depth' else 'train_cpm'} --export {path}` "
                "or pass a checkpoint path"
            )
        return path
    return Path(name)


class HandPoseEstimator:
    """Checkpoint -> hand poses. Build with :meth:`from_checkpoint`."""

    def __init__(
        self, pipeline: DepthPipeline | RGBPipeline, checkpoint: dict[str, Any], device: torch.device
    ) -> None:
        self._pipeline = pipeline
        self.checkpoint_meta: dict[str, Any] = checkpoint["meta"]
        self.model_name: str = checkpoint["model"]["name"]
        self.device = device

    @classmethod
    def from_checkpoint(
        cls, name_or_path: str | os.PathLike, device: str | torch.device = "auto", precision: str = "fp32",
        threads: int = 0, optimize: bool = True, backend: str = "auto", tracking: bool = True,
        handedness: str = "auto",
    ) -> HandPoseEstimator:
        """Load ``default:depth``, ``default:rgb`` or a checkpoint path onto ``device``.

        precision: fp32, fp16 or bf16 (half precisions only on CUDA).
        threads:   > 0 sets torch's CPU thread count (process-wide: ``torch.set_num_threads``);
                   0 keeps torch's default (one per core). On a small CPU shared with a ROS
                   executor, fewer threads than cores often gives lower latency.
        optimize:  fold BatchNorm into the convolutions etc. (:mod:`handpose_core.models.inference`);
                   False runs the network exactly as trained in torch (for comparisons).
        backend:   auto (onnxruntime on a CPU where installed, else torch), torch, or onnxruntime.
        tracking:  follow the hand from one :meth:`predict` to the next (a stream): the previous
                   frame's keypoints place the next crop, and the hand search runs only when the
                   track is lost (see the pipelines). False: every frame on its own. Between
                   unrelated frames call :meth:`reset`.
        handedness: auto, right or left: which hand is in view (see :attr:`handedness`).
        """
        if precision not in ("fp32", "fp16", "bf16"):
            raise HandPoseError(f"unknown precision {precision!r}; use fp32, fp16 or bf16")
        if int(threads) < 0:
            raise HandPoseError(f"threads must be >= 0 (0 = torch's default), got {threads}")
        if threads:
            torch.set_num_threads(int(threads))
        dev = resolve_device(device)
        blob = load_checkpoint(resolve_checkpoint(name_or_path))
        modality = blob["meta"].get("modality")
        if modality == "depth":
            from handpose_core.pipelines.depth import DepthPipeline as Pipeline
        elif modality == "rgb":
            from handpose_core.pipelines.rgb import RGBPipeline as Pipeline
        else:
            raise HandPoseError(f"checkpoint meta has unknown modality {modality!r} (depth or rgb expected)")
        if not optimize and backend == "auto":
            backend = "torch"
        pipeline = Pipeline(blob, dev, precision, optimize=optimize, backend=backend, threads=int(threads),
                            track=bool(tracking), handedness=handedness)
        return cls(pipeline, blob, dev)

    @property
    def backend(self) -> str:
        """``onnxruntime`` or ``torch``: what runs the network."""
        from handpose_core.models.cpm import MirrorAveraged
        from handpose_core.models.onnx_backend import OrtModule

        model = self._pipeline.model
        if isinstance(model, MirrorAveraged):  # a wrapper around the network that runs
            model = model.model
        return "onnxruntime" if isinstance(model, OrtModule) else "torch"

    @property
    def hands(self) -> str:
        """Which hands the checkpoint's network saw: ``both``, or ``right`` (left hands are mirrored
        before it, as OpenPose feeds its hand network; then :attr:`handedness` matters)."""
        return self._pipeline.hands

    @property
    def handedness(self) -> str:
        """Which hand is in view: ``right``, ``left`` or ``auto`` (a right-hand network runs frames as
        each hand and takes the better fit, weighed over a track's first frames; then the track keeps
        that hand: :class:`~handpose_core.pipelines.hands.HandVote`).
        Ignored by a network that saw both hands. ``HandPose.extras["handedness"]`` says which hand a
        right-hand network took. Setting it forgets the track."""
        return self._pipeline.handedness

    @handedness.setter
    def handedness(self, value: str) -> None:
        self._pipeline.handedness = value

    @property
    def modality(self) -> str:
        """'depth' or 'rgb': the kind of image the checkpoint's model takes."""
        return self.checkpoint_meta["modality"]

    @property
    def joint_names(self) -> tuple[str, ...]:
        """Names of the J joints each :class:`HandPose` holds, in order."""
        return tuple(self.checkpoint_meta["joint_names"])

    def predict(
        self,
        image: np.ndarray,
        intrinsics: Intrinsics | tuple[float, float, float, float] | None = None,
        depth: np.ndarray | None = None,
    ) -> list[HandPose]:
        """Estimate the hands in one image; empty list when there is no hand.

        image:      (H, W) uint16 depth mm / float32 depth m (depth models) or (H, W, 3) uint8 RGB.
        intrinsics: (fx, fy, cx, cy) pixels; required for depth models, optional for RGB (3D).
        depth:      optional (H, W) depth aligned with an RGB image, for 3D by depth lookup.
        Raises :class:`HandPoseError` on invalid input.
        """
        if not isinstance(image, np.ndarray):
            raise HandPoseError(f"image must be a numpy array, got {type(image).__name__}")
        if image.size == 0:
            raise HandPoseError(f"image is empty (shape {image.shape})")
        intr = None
        if intrinsics is not None:
            intr = Intrinsics.from_tuple(intrinsics, width=image.shape[1], height=image.shape[0])
        return self._pipeline.predict(image, intr, depth)

    def reset(self) -> None:
        """Forget the tracked hand: the next frame is searched as an unrelated one."""
        self._pipeline.reset()

    def debug_image(self, image: np.ndarray, poses: list[HandPose]) -> np.ndarray:
        """uint8 RGB picture for ``~/debug_image``: CPM, the (H, W, 3) input with the belief maps and
        skeleton drawn in; DeepPrior, the first hand's crop with its skeleton, (3 S, 3 S, 3) for the
        model's S x S crop (384 x 384 for the packaged weights)."""
        return self._pipeline.debug_image(image, poses)

    def close(self) -> None:
        """Free the model (and the CUDA cache when on a GPU)."""
        self._pipeline = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
