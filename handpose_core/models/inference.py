"""Checkpoint blob -> a model ready for inference: weights loaded, BatchNorm folded, on its device.

Both pipelines (depth and RGB) load their network here, so precision checks, error messages and
the inference-time graph rewrites are the same for every model family.

Rewrites (``optimize=True``, the default; each is exact up to float rounding):

- eval mode, then every Conv2d followed by a BatchNorm2d is folded into one Conv2d
  (``torch.fx.experimental.optimization.fuse``): one pass over the activations instead of two.
  Measured on the 2-core development CPU: see ``bench/results/models.json`` (``optimized`` rows).
  A model that torch.fx cannot trace is kept as it is (logged once), never rejected.
- channels_last memory format on CUDA (cuDNN's fast NHWC convolutions); on the CPU the default
  layout measured as fast or faster for these small inputs, so it is left alone.

Backends: ``torch``, or ``onnxruntime`` (CPU, fp32 only; :mod:`handpose_core.models.onnx_backend`),
which runs these small networks several times faster than torch on a CPU. ``auto`` takes
onnxruntime on a CPU where it is installed and the export works, torch otherwise.

``tests/test_inference_opt.py`` checks that the rewritten model gives the same outputs (and the
pipelines the same joints within 0.1 mm / 0.5 px) as the plain one.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from handpose_core.errors import HandPoseError
from handpose_core.models import create_model

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BACKENDS = ("auto", "torch", "onnxruntime")


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each Conv2d -> BatchNorm2d pair folded into the conv.

    Puts ``model`` itself in eval mode too, and returns it (not a copy) when it holds no BatchNorm
    or cannot be traced.
    """
    model.eval()
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model
    from torch.fx.experimental.optimization import fuse

    try:
        fused = fuse(model)
    except Exception as exc:  # torch.fx tracing fails on data-dependent control flow; keep the model
        log.info("BatchNorm folding skipped for %s: %s", type(model).__name__, exc)
        return model
    return fused.eval()


def example_input(blob: dict[str, Any]) -> torch.Tensor:
    """A (1, C, S, S) zero input of the size the checkpoint's model was trained on."""
    meta = blob.get("meta", {})
    channels = 1 if meta.get("modality") == "depth" else 3
    size = blob["model"]["config"].get("input_size") or meta.get("input", {}).get("size") or 128
    return torch.zeros(1, channels, int(size), int(size))


def load_for_inference(blob: dict[str, Any], device: torch.device, precision: str = "fp32",
                       optimize: bool = True, backend: str = "torch", threads: int = 0) -> tuple[Any, torch.dtype]:
    """(model ready to call, its input dtype) from a checkpoint blob (see :mod:`handpose_core.checkpoint`).

    precision: fp32 | fp16 | bf16; half precisions need a CUDA device.
    backend:   torch | onnxruntime (CPU fp32) | auto (onnxruntime where it applies and works).
    threads:   onnxruntime's intra-op threads (0 = its default); torch's are process-wide and set
               by the caller (``HandPoseEstimator.from_checkpoint``).
    The model is called like a torch module on a (N, C, H, W) tensor of that dtype on ``device``.
    Raises :class:`HandPoseError` for an unknown precision or backend, a half precision off CUDA,
    onnxruntime asked for where it cannot run, or weights that do not fit the model named in the
    checkpoint.
    """
    if precision not in DTYPES:
        raise HandPoseError(f"unknown precision {precision!r}; use fp32, fp16 or bf16")
    if precision != "fp32" and device.type != "cuda":
        raise HandPoseError(f"precision {precision} needs a CUDA device, got {device}; use fp32")
    if backend not in BACKENDS:
        raise HandPoseError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
    name = blob.get("model", {}).get("name")
    try:
        model = create_model(name, **blob["model"]["config"])
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, TypeError, KeyError, ValueError) as exc:
        raise HandPoseError(f"checkpoint weights do not fit model {name!r}: {exc}") from exc
    model.eval()
    dtype = DTYPES[precision]

    from handpose_core.models import onnx_backend

    if backend == "onnxruntime":
        if device.type != "cpu" or precision != "fp32":
            raise HandPoseError(f"backend onnxruntime runs on the CPU in fp32, not {device} {precision}")
        if not onnx_backend.available():
            raise HandPoseError("backend onnxruntime needs the onnxruntime and onnx packages (pip install them)")
    if backend == "onnxruntime" or (backend == "auto" and device.type == "cpu" and precision == "fp32"
                                    and onnx_backend.available()):
        dynamic_hw = blob.get("meta", {}).get("modality") == "rgb"  # CPMs are fully convolutional
        try:
            return onnx_backend.OrtModule(model, example_input(blob), threads, dynamic_hw), dtype
        except Exception as exc:  # an export the exporter cannot do: torch still can
            if backend == "onnxruntime":
                raise HandPoseError(f"cannot run {name!r} in onnxruntime: {exc}") from exc
            log.warning("onnxruntime export of %s failed (%s); using torch", name, exc)
    if optimize:
        model = fold_batch_norm(model)
    model = model.to(device=device, dtype=dtype)
    if optimize and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, dtype
