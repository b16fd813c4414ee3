"""OpenPose weight import: a caffemodel and a PyTorch state dict that the test builds itself.

The fake caffemodel is written by a small protobuf *encoder* defined here (independent of the
library's reader), with OpenPose's layer names and full shapes and random weights; our forward
must equal a reference forward written below as a plain ``torch.nn.functional`` conv chain.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from handpose_core import HandPoseError
from handpose_core.checkpoint import load_checkpoint
from handpose_core.models import create_model
from handpose_core.openpose_import import import_openpose, load_openpose_weights, read_caffemodel

# -- OpenPose hand layout, written out independently of handpose_core.models.cpm ---------------------
VGG = [("conv1_1", 3, 64), ("conv1_2", 64, 64), "pool", ("conv2_1", 64, 128), ("conv2_2", 128, 128), "pool",
       ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256), "pool",
       ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512),
       ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3_CPM", 512, 128)]


def openpose_shapes() -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    shapes = {}
    for layer in VGG:
        if layer != "pool":
            name, cin, cout = layer
            shapes[name] = ((cout, cin, 3, 3), (cout,))
    shapes["conv6_1_CPM"] = ((512, 128, 1, 1), (512,))
    shapes["conv6_2_CPM"] = ((22, 512, 1, 1), (22,))
    for t in range(2, 7):
        shapes[f"Mconv1_stage{t}"] = ((128, 150, 7, 7), (128,))
        for i in range(2, 6):
            shapes[f"Mconv{i}_stage{t}"] = ((128, 128, 7, 7), (128,))
        shapes[f"Mconv6_stage{t}"] = ((128, 128, 1, 1), (128,))
        shapes[f"Mconv7_stage{t}"] = ((22, 128, 1, 1), (22,))
    return shapes


def random_weights(seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, (ws, bs) in openpose_shapes().items():
        fan_in = ws[1] * ws[2] * ws[3]
        w = rng.standard_normal(ws, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        out[name] = [w, rng.uniform(-0.1, 0.1, bs).astype(np.float32)]
    return out


def reference_forward(layers: dict[str, list[np.ndarray]], x: torch.Tensor) -> list[torch.Tensor]:
    """OpenPose hand network as a plain functional chain (belief maps concatenated before features)."""

    def conv(name, h, relu=True):
        w, b = (torch.from_numpy(a) for a in layers[name])
        h = F.conv2d(h, w, b, padding=w.shape[-1] // 2)
        return F.relu(h) if relu else h

    h = x
    for layer in VGG:
        h = F.max_pool2d(h, 2, 2) if layer == "pool" else conv(layer[0], h)
    feats = h
    outs = [conv("conv6_2_CPM", conv("conv6_1_CPM", feats), relu=False)]
    for t in range(2, 7):
        h = torch.cat([outs[-1], feats], 1)
        for i in range(1, 7):
            h = conv(f"Mconv{i}_stage{t}", h)
        outs.append(conv(f"Mconv7_stage{t}", h, relu=False))
    return outs


# -- a minimal protobuf encoder ------------------------------------------------------------------------
def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def ld(field: int, payload: bytes) -> bytes:  # length-delimited field
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def blob_bytes(a: np.ndarray, legacy: bool = False, unpacked: bool = False) -> bytes:
    if legacy:  # num/channels/height/width (fields 1..4, varint)
        dims = (1,) * (4 - a.ndim) + a.shape
        head = b"".join(varint(f << 3 | 0) + varint(d) for f, d in zip((1, 2, 3, 4), dims, strict=True))
    else:  # BlobShape (field 7) with packed int64 dims (field 1)
        head = ld(7, ld(1, b"".join(varint(d) for d in a.shape)))
    if unpacked:  # one fixed32 per value (field 5, wire type 5)
        data = b"".join(varint(5 << 3 | 5) + v.tobytes() for v in a.astype("<f4").reshape(-1))
    else:
        data = ld(5, a.astype("<f4").tobytes())
    return head + data


def caffemodel_bytes(layers: dict[str, list[np.ndarray]], v1: bool = False, unpacked: bool = False) -> bytes:
    out = [ld(1, b"hand_pose")]
    for name, blobs in layers.items():
        if v1:  # legacy V1LayerParameter in NetParameter.layers (2): name = 4, type enum = 5, blobs = 6
            body = ld(4, name.encode()) + varint(5 << 3 | 0) + varint(4)
            body += b"".join(ld(6, blob_bytes(b, legacy=True, unpacked=unpacked)) for b in blobs)
            out.append(ld(2, body))
        else:  # LayerParameter in NetParameter.layer (100): name = 1, type = 2, blobs = 7
            body = ld(1, name.encode()) + ld(2, b"Convolution") + ld(3, b"bottom_blob")
            body += b"".join(ld(7, blob_bytes(b, unpacked=unpacked)) for b in blobs)
            out.append(ld(100, body))
    out.append(ld(100, ld(1, b"relu1") + ld(2, b"ReLU")))  # a layer without blobs is skipped
    return b"".join(out)


@pytest.fixture(scope="module")
def weights():
    return random_weights()


@pytest.fixture(scope="module")
def caffemodel(tmp_path_factory, weights):
    path = tmp_path_factory.mktemp("op") / "pose_iter_102000.caffemodel"
    path.write_bytes(caffemodel_bytes(weights))
    return path


def _outputs_equal(model, weights, size=48):
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.eval()(x)
        ref = reference_forward(weights, x)
    assert len(ours) == len(ref) == 6
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape == (1, 22, size // 8, size // 8)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert float(ref[-1].abs().mean()) > 1e-3  # the comparison is not between two zero tensors


def test_caffemodel_import_matches_reference_forward(caffemodel, weights, tmp_path):
    out = import_openpose(caffemodel, tmp_path / "cpm_openpose.pt")
    blob = load_checkpoint(out)  # weights_only=True
    meta = blob["meta"]
    assert meta["modality"] == "rgb"
    assert meta["input"] == {"size": 368, "channel_order": "bgr", "scale": 1 / 256, "offset": -0.5,
                             "border_value": 128.0}
    assert len(meta["provenance"]["sha256"]) == 64
    assert meta["pipeline"]["flip_average"] is False  # OpenPose's network is fed right hands: no mirror averaging
    assert meta["pipeline"]["hands"] == "right"  # ... and a left hand's crop mirrored
    model = create_model(blob["model"]["name"], **blob["model"]["config"])
    model.load_state_dict(blob["state_dict"])
    _outputs_equal(model, weights)


def test_reader_parses_shapes_and_values(caffemodel, weights):
    layers = read_caffemodel(caffemodel)
    assert set(layers) == set(weights)
    np.testing.assert_array_equal(layers["Mconv3_stage4"][0], weights["Mconv3_stage4"][0])
    np.testing.assert_array_equal(layers["conv6_2_CPM"][1], weights["conv6_2_CPM"][1])


def test_legacy_v1_unpacked_caffemodel(tmp_path):
    small = {"conv1_1": [np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1), np.array([0.5, -1.0], np.float32)]}
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(caffemodel_bytes(small, v1=True, unpacked=True))
    layers = read_caffemodel(path)
    assert layers["conv1_1"][0].shape == (2, 3, 1, 1)
    assert layers["conv1_1"][1].shape == (1, 1, 1, 2)  # legacy 4-D bias, reshaped on import
    np.testing.assert_array_equal(layers["conv1_1"][0].reshape(-1), np.arange(6))


def test_legacy_v1_full_model_imports(tmp_path, weights):
    path = tmp_path / "v1_full.caffemodel"
    path.write_bytes(caffemodel_bytes(weights, v1=True))
    model = create_model("cpm_openpose")
    model.load_state_dict(load_openpose_weights(path, model))
    _outputs_equal(model, weights, size=32)


def test_pytorch_state_dict_import(tmp_path, weights):
    # the common conversion: keys like conv1_1.weight; also with a module prefix (pytorch-openpose)
    sd = {f"{n}.weight": torch.from_numpy(w) for n, (w, b) in weights.items()}
    sd.update({f"model1_0.{n}.bias" if n.startswith("conv") else f"{n}.bias": torch.from_numpy(b)
               for n, (w, b) in weights.items()})
    path = tmp_path / "hand_pose_model.pth"
    torch.save(sd, path)
    out = import_openpose(path, tmp_path / "from_pth.pt")
    blob = load_checkpoint(out)
    model = create_model("cpm_openpose")
    model.load_state_dict(blob["state_dict"])
    _outputs_equal(model, weights, size=32)


def test_missing_layer_is_named(tmp_path, weights):
    broken = {k: v for k, v in weights.items() if k != "Mconv4_stage5"}
    path = tmp_path / "missing.caffemodel"
    path.write_bytes(caffemodel_bytes(broken))
    with pytest.raises(HandPoseError, match="Mconv4_stage5"):
        import_openpose(path, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_wrong_shape_is_named(tmp_path, weights):
    broken = dict(weights)
    broken["conv3_2"] = [np.zeros((256, 256, 5, 5), np.float32), np.zeros(256, np.float32)]
    path = tmp_path / "shape.caffemodel"
    path.write_bytes(caffemodel_bytes(broken))
    with pytest.raises(HandPoseError, match=r"conv3_2.*\(256, 256, 5, 5\).*\(256, 256, 3, 3\)"):
        import_openpose(path, tmp_path / "x.pt")


def test_state_dict_wrong_shape_is_named(tmp_path, weights):
    sd = {f"{n}.{p}": torch.from_numpy(a) for n, (w, b) in weights.items() for p, a in (("weight", w), ("bias", b))}
    sd["Mconv7_stage6.weight"] = torch.zeros(21, 128, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(HandPoseError, match="Mconv7_stage6"):
        import_openpose(path, tmp_path / "x.pt")


@pytest.mark.parametrize("payload", [b"", b"\x0a\xff\xff\xff", b"not a protobuf at all \xff\xff\xff\xff\xff"])
def test_garbage_is_a_clear_error(tmp_path, payload):
    path = tmp_path / "junk.caffemodel"
    path.write_bytes(payload)
    with pytest.raises(HandPoseError, match="junk.caffemodel"):
        read_caffemodel(path)


def test_import_cli(tmp_path, caffemodel):
    from training.import_openpose import main

    out = tmp_path / "cli.pt"
    assert main([str(caffemodel), "--out", str(out)]) == 0
    assert load_checkpoint(out)["model"]["name"] == "cpm_openpose"
    assert main([str(tmp_path / "nope.caffemodel"), "--out", str(out)]) == 2
