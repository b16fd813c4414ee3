"""CMU hand-label loaders on small files in the real layouts, written by the tests."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from handpose_core import HandPoseError
from handpose_core.data.cmu_hands import CMUHands


def _hand_pts(rng, cx=120.0, cy=90.0, flags=None):
    pts = np.column_stack([rng.uniform(cx - 40, cx + 40, 21), rng.uniform(cy - 40, cy + 40, 21), np.ones(21)])
    if flags is not None:
        pts[:, 2] = flags
    return pts


def _image(h=180, w=240, colour=(10, 200, 30)):
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = colour  # RGB
    return img


def _write_jpg(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])


def test_hand_labels_manual_layout(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "hand_labels" / "manual_train"
    folder.mkdir(parents=True)
    flags = np.ones(21)
    flags[[3, 7]] = 0  # not annotated
    pts = _hand_pts(rng, flags=flags)
    pts[3, :2] = 0.0  # CMU writes placeholders for unannotated points
    _write_jpg(folder / "000015774_01_l.jpg", _image())
    (folder / "000015774_01_l.json").write_text(json.dumps(
        {"hand_pts": pts.tolist(), "is_left": 1, "head_size": 40.0, "hand_box_center": [120, 90],
         "mpii_image": "000015774.jpg", "mpii_annorect_idx": 1}))
    _write_jpg(folder / "000015774_01_r.jpg", _image())
    (folder / "000015774_01_r.json").write_text(json.dumps({"hand_pts": _hand_pts(rng).tolist(), "is_left": 0}))
    data = CMUHands(tmp_path / "hand_labels")  # dataset root: sub-folders are searched
    assert len(data) == 2
    s = data[0]
    assert s.is_left and s.rgb.shape == (180, 240, 3) and s.rgb.dtype == np.uint8
    assert abs(int(s.rgb[5, 5, 1]) - 200) < 4 and int(s.rgb[5, 5, 0]) < 20  # RGB order, not BGR
    assert s.uv_px.shape == (21, 2) and s.uv_px.dtype == np.float32
    assert np.isnan(s.uv_px[[3, 7]]).all() and not s.valid[3] and s.valid.sum() == 19
    np.testing.assert_allclose(s.uv_px[0], pts[0, :2], atol=1e-4)
    assert not data[1].is_left


def test_hand_labels_synth_layout_and_crop(tmp_path):
    rng = np.random.default_rng(1)
    for sub in ("synth2", "synth3"):
        folder = tmp_path / "hand_labels_synth" / sub
        folder.mkdir(parents=True)
        for k in range(2):
            img = _image(368, 368, colour=(90, 60, 30))
            pts = _hand_pts(rng, 184, 184)
            img[int(pts[0, 1]), int(pts[0, 0])] = 255
            cv2.imwrite(str(folder / f"{k:08d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            (folder / f"{k:08d}.json").write_text(json.dumps({"hand_pts": pts.tolist(), "is_left": 0}))
    # a synth1-style file without 21 points is skipped, not fatal
    (tmp_path / "hand_labels_synth" / "synth2" / "bad.json").write_text(json.dumps({"hand_pts": [[1, 2, 1]]}))
    cv2.imwrite(str(tmp_path / "hand_labels_synth" / "synth2" / "bad.jpg"), np.zeros((8, 8, 3), np.uint8))
    data = CMUHands(tmp_path / "hand_labels_synth")
    assert len(data) == 4 and data.skipped == 1
    crop, uv, warp = data.crop(0, size=128, margin=2.2)
    assert crop.shape == (128, 128, 3)
    # the labels' bounding box is centred in the crop and spans 1 / 2.2 of it
    extent = (uv.max(axis=0) - uv.min(axis=0)).max()
    assert extent == pytest.approx(128 / 2.2, rel=1e-3)
    np.testing.assert_allclose((uv.max(axis=0) + uv.min(axis=0)) / 2, [63.5, 63.5], atol=1e-3)
    u, v = np.rint(uv[0]).astype(int)
    assert crop[v - 1 : v + 2, u - 1 : u + 2].max() > 150  # the marked wrist pixel lands on its label


def test_panopticdb_layout(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "hand143_panopticdb"
    (root / "imgs").mkdir(parents=True)
    items = []
    for k in range(3):
        _write_jpg(root / "imgs" / f"{k:08d}.jpg", _image(200, 300))
        items.append({"img_paths": f"imgs/{k:08d}.jpg", "img_width": 300, "img_height": 200,
                      "joint_self": _hand_pts(rng, 150, 100).tolist(), "objpos": [150, 100], "scale_provided": 1.0})
    items.append({"img_paths": "imgs/broken.jpg", "joint_self": [[0, 0, 0]]})  # skipped
    (root / "hands_v143_14817.json").write_text(json.dumps({"root": items}))
    data = CMUHands(root)
    assert len(data) == 3 and data.skipped == 1
    s = data[2]
    assert s.rgb.shape == (200, 300, 3) and s.valid.all() and not s.is_left
    np.testing.assert_allclose(s.uv_px, np.asarray(items[2]["joint_self"])[:, :2], atol=1e-4)
    assert len(CMUHands(root / "hands_v143_14817.json")) == 3  # the JSON file itself works too


def test_training_crops_from_cmu_folder(tmp_path):
    from handpose_core.training.cpm_task import build_crop_set

    rng = np.random.default_rng(3)
    folder = tmp_path / "manual_test"
    folder.mkdir()
    for k in range(3):
        _write_jpg(folder / f"{k}.jpg", _image())
        flags = np.ones(21)
        flags[k] = 0
        (folder / f"{k}.json").write_text(json.dumps({"hand_pts": _hand_pts(rng, flags=flags).tolist(),
                                                      "is_left": k % 2}))
    data = build_crop_set(f"cmu:{folder}", seed=0, frames=0, size=96, margin=2.2)
    assert data.crops.shape == (3, 96, 96, 3)
    assert (~data.valid).sum() == 3 and np.isnan(data.uv[~data.valid]).all()


@pytest.mark.parametrize("content", ["", "   \n", "{not json"])
def test_empty_or_corrupt_json_is_a_clear_error(tmp_path, content):
    folder = tmp_path / "manual_train"
    folder.mkdir()
    _write_jpg(folder / "a.jpg", _image())
    (folder / "a.json").write_text(content)
    with pytest.raises(HandPoseError, match="a.json"):
        CMUHands(folder)


def test_empty_panoptic_json_and_missing_data(tmp_path):
    root = tmp_path / "hand143_panopticdb"
    root.mkdir()
    (root / "hands_v143_14817.json").write_text("")
    with pytest.raises(HandPoseError, match="hands_v143_14817.json is empty"):
        CMUHands(root)
    (root / "hands_v143_14817.json").write_text(json.dumps({"root": []}))
    with pytest.raises(HandPoseError, match="no labelled hands"):
        CMUHands(root)
    (root / "hands_v143_14817.json").write_text(json.dumps([1, 2]))
    with pytest.raises(HandPoseError, match="'root'"):
        CMUHands(root)
    with pytest.raises(HandPoseError, match="not found"):
        CMUHands(tmp_path / "nowhere")


def test_missing_image_is_a_clear_error(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    pts = _hand_pts(np.random.default_rng(0)).tolist()
    (root / "hands_v143_14817.json").write_text(json.dumps({"root": [{"img_paths": "imgs/x.jpg", "joint_self": pts}]}))
    data = CMUHands(root)
    with pytest.raises(HandPoseError, match="x.jpg"):
        data[0]
