"""Import OpenPose's published hand weights into a ``cpm_openpose`` checkpoint.

Two sources are understood:

- Caffe ``pose_iter_102000.caffemodel`` (binary protobuf ``NetParameter``). It is parsed here with
  a small hand-written protobuf wire-format reader (varints and length-delimited fields) that
  knows just the messages it needs, so neither Caffe nor generated protobuf code is required::

      NetParameter      layer = 100 (LayerParameter)    layers = 2 (V1LayerParameter, legacy)
      LayerParameter    name = 1, type = 2, blobs = 7 (BlobProto)
      V1LayerParameter  name = 4, blobs = 6 (BlobProto)
      BlobProto         shape = 7 (BlobShape: dim = 1, int64), data = 5 (float),
                        double_data = 8, legacy num/channels/height/width = 1..4

- the common PyTorch conversion (a state dict saved with ``torch.save``) keyed by OpenPose's layer
  names, ``conv1_1.weight``, ``Mconv1_stage2.bias``, ...; prefixes such as ``model1_0.`` (the
  pytorch-openpose module layout) are stripped.

Every conv layer of the target model must be present with the right shape; otherwise
:class:`HandPoseError` names the layer. The checkpoint records OpenPose's input convention
(BGR, x / 256 - 0.5, 368 px box, grey padding) in ``meta['input']``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handpose_core.checkpoint import save_checkpoint
from handpose_core.codecs.belief_maps import BeliefMapCodec, InputSpec
from handpose_core.errors import HandPoseError

OPENPOSE_INPUT = InputSpec(size=368, channel_order="bgr", scale=1.0 / 256.0, offset=-0.5, border_value=128.0)
OPENPOSE_SIGMA_PX = 7.0  # OpenPose's hand training sigma at the 368 box


# -- protobuf wire format ------------------------------------------------------------------------
class WireError(HandPoseError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


def iter_fields(buf: memoryview):
    """Yield (field_number, wire_type, value) of one message; value is int or a memoryview slice.

    Wire types: 0 varint (int), 1 fixed64 (8 bytes), 2 length-delimited (bytes), 5 fixed32 (4 bytes).
    """
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise WireError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise WireError(f"unsupported wire type {wire} (field {field})")
        if pos > end:
            raise WireError(f"field {field} runs past the end of its message")
        yield field, wire, value


def _packed_varints(buf: memoryview) -> list[int]:
    out, pos = [], 0
    while pos < len(buf):
        v, pos = _varint(buf, pos)
        out.append(v)
    return out


def parse_blob(buf: memoryview) -> np.ndarray:
    """BlobProto -> float32 array with its shape (BlobShape, else legacy num/channels/height/width)."""
    dims: list[int] = []
    legacy = {}
    chunks: list[np.ndarray] = []
    for field, wire, value in iter_fields(buf):
        if field == 7 and wire == 2:  # BlobShape
            for f2, w2, v2 in iter_fields(value):
                if f2 == 1:
                    dims += _packed_varints(v2) if w2 == 2 else [v2]
        elif field == 5:  # data: packed floats, or one float per field
            chunks.append(np.frombuffer(value, dtype="<f4") if wire in (2, 5) else np.zeros(0, np.float32))
        elif field == 8 and wire in (1, 2):  # double_data
            chunks.append(np.frombuffer(value, dtype="<f8").astype(np.float32))
        elif field in (1, 2, 3, 4) and wire == 0:
            legacy[field] = value
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if not dims and legacy:
        dims = [legacy.get(i, 1) for i in (1, 2, 3, 4)]
    shape = tuple(int(d) for d in dims) if dims else (data.size,)
    if int(np.prod(shape)) != data.size:
        raise WireError(f"blob holds {data.size} values but its shape is {shape}")
    return data.astype(np.float32).reshape(shape)


def _layer_fields(buf: memoryview, name_field: int, blobs_field: int, type_field: int | None):
    name, ltype, blobs = None, None, []
    for field, wire, value in iter_fields(buf):
        if field == name_field and wire == 2:
            name = bytes(value).decode("utf-8", "replace")
        elif type_field is not None and field == type_field and wire == 2:
            ltype = bytes(value).decode("utf-8", "replace")
        elif field == blobs_field and wire == 2:
            blobs.append(parse_blob(value))
    return name, ltype, blobs


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Caffe NetParameter file -> {layer name: [blob arrays]} for layers that carry blobs.

    Reads both the current ``layer`` (field 100) and the legacy V1 ``layers`` (field 2) lists.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HandPoseError(f"cannot read caffemodel {path}: {exc}") from exc
    layers: dict[str, list[np.ndarray]] = {}
    try:
        for field, wire, value in iter_fields(memoryview(data)):
            if wire != 2 or field not in (2, 100):
                continue
            if field == 100:
                name, _, blobs = _layer_fields(value, 1, 7, 2)
            else:
                name, _, blobs = _layer_fields(value, 4, 6, None)
            if name and blobs:
                layers[name] = blobs
    except WireError as exc:
        raise HandPoseError(f"{path} is not a Caffe model (protobuf NetParameter): {exc}") from exc
    if not layers:
        raise HandPoseError(f"{path} holds no layer with weights; is it a .caffemodel (not a .prototxt)?")
    return layers


def caffe_to_state_dict(layers: dict[str, list[np.ndarray]]) -> dict[str, torch.Tensor]:
    """{layer: [weight, bias]} -> {"<layer>.weight": tensor, "<layer>.bias": tensor}."""
    out = {}
    for name, blobs in layers.items():
        out[f"{name}.weight"] = torch.from_numpy(np.array(blobs[0], dtype=np.float32))
        if len(blobs) > 1:
            out[f"{name}.bias"] = torch.from_numpy(np.array(blobs[1], dtype=np.float32))
    return out


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A ``torch.save``-d OpenPose state dict -> {"conv1_1.weight": tensor, ...} (prefixes stripped)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HandPoseError(f"cannot read PyTorch weights {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(blob, dict) and "state_dict" in blob and isinstance(blob["state_dict"], dict):
        blob = blob["state_dict"]
    if not isinstance(blob, dict):
        raise HandPoseError(f"{path} is not a state dict (got {type(blob).__name__})")
    out = {}
    for key, value in blob.items():
        if not isinstance(value, torch.Tensor):
            continue
        parts = str(key).split(".")
        out[".".join(parts[-2:]) if len(parts) >= 2 else str(key)] = value.float()
    return out


def match_state_dict(weights: dict[str, torch.Tensor], model: torch.nn.Module, source: str = "weights"
                     ) -> dict[str, torch.Tensor]:
    """Map OpenPose-named tensors onto ``model``'s conv parameters; HandPoseError names any bad layer.

    Shapes may differ only by leading singleton dimensions (Caffe's legacy 4-D biases).
    """
    state = model.state_dict()
    out = dict(state)
    for key, target in state.items():
        layer = key.rsplit(".", 1)[0]
        if key not in weights:
            raise HandPoseError(f"layer {layer!r} ({key}) is missing from {source}")
        value = weights[key]
        if tuple(value.shape) != tuple(target.shape):
            if value.numel() == target.numel() and _squeeze_lead(value.shape) == _squeeze_lead(target.shape):
                value = value.reshape(target.shape)
            else:
                raise HandPoseError(
                    f"layer {layer!r}: {key} has shape {tuple(value.shape)} in {source} but "
                    f"the model expects {tuple(target.shape)}"
                )
        out[key] = value.to(target.dtype).clone()
    return out


def _squeeze_lead(shape) -> tuple[int, ...]:
    s = tuple(int(d) for d in shape)
    while len(s) > 1 and s[0] == 1:
        s = s[1:]
    return s


def load_openpose_weights(path: str | os.PathLike, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Read a .caffemodel or a PyTorch state dict and return ``model``'s state dict filled from it."""
    path = Path(path)
    if not path.is_file():
        raise HandPoseError(f"weights file not found: {path}")
    with path.open("rb") as f:
        head = f.read(2)
    if path.suffix == ".caffemodel" or head[:1] not in (b"P", b"\x80"):  # zip / legacy pickle magic
        weights = caffe_to_state_dict(read_caffemodel(path))
    else:
        weights = read_torch_state_dict(path)
    return match_state_dict(weights, model, source=path.name)


def import_openpose(source: str | os.PathLike, out_path: str | os.PathLike, model_name: str = "cpm_openpose",
                    model_config: dict[str, Any] | None = None) -> Path:
    """Convert OpenPose hand weights (caffemodel or state dict) to a handpose checkpoint at ``out_path``."""
    from handpose_core.models import create_model
    from handpose_core.pipelines.rgb import rgb_meta

    config = dict(model_config or {})
    model = create_model(model_name, **config)
    state = load_openpose_weights(source, model)
    size = int(getattr(model, "input_size", OPENPOSE_INPUT.size))
    spec = InputSpec(**{**OPENPOSE_INPUT.to_config(), "size": size})
    codec = BeliefMapCodec(input_size=size, stride=8, sigma_px=OPENPOSE_SIGMA_PX * size / 368.0)
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    # OpenPose's hand network is fed right hands (its body detector mirrors the left ones): the RGB
    # pipeline mirrors a left hand's crop for it (handedness), and never mirror-averages
    provenance = {"imported_from": str(source), "sha256": digest,
                  "note": "OpenPose hand (Simon et al. 2017); input BGR, x/256 - 0.5, 368 px box, padded with 128"}
    meta = rgb_meta(model_name, config, codec, spec, pipeline={"hands": "right", "flip_average": False},
                    provenance=provenance)
    save_checkpoint(out_path, model_name, config, state, meta)
    return Path(out_path)
