"""3D pose metrics: the worst-joint curve and the Procrustes-aligned errors (PA-MPJPE)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from handpose_core.keypoints import HAND21
from handpose_core.training.metrics import pose_metrics, pose_metrics_by_group, procrustes_align, visibility_figures


def _hands(n: int = 5, joints: int = 21, seed: int = 0) -> np.ndarray:
    """(n, joints, 3) mm, hand-sized point sets about 0.5 m in front of the camera."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 40.0, (n, joints, 3)) + np.array([0.0, 0.0, 500.0])


def test_procrustes_undoes_a_similarity_transform_but_not_a_mirror():
    gt = _hands()
    rotations = Rotation.random(len(gt), random_state=1).as_matrix()
    moved = np.stack([1.3 * g @ r.T + np.array([30.0, -20.0, 15.0]) for g, r in zip(gt, rotations, strict=True)])
    np.testing.assert_allclose(procrustes_align(moved, gt), gt, atol=1e-6)
    # without the scale the size error stays
    assert np.abs(procrustes_align(moved, gt, scale=False) - gt).max() > 1.0
    # a mirror image is no rigid motion: a proper rotation cannot fit it
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    assert np.linalg.norm(procrustes_align(mirrored, gt) - gt, axis=-1).mean() > 10.0


def test_procrustes_ignores_unknown_joints():
    gt = _hands(n=1)
    moved = gt + np.array([5.0, 0.0, 0.0])
    moved[0, 3] += 100.0  # a wild prediction where the ground truth is unknown must not pull the fit
    gt_unknown = gt.copy()
    gt_unknown[0, 3] = np.nan
    aligned = procrustes_align(moved, gt_unknown)
    known = np.arange(gt.shape[1]) != 3
    np.testing.assert_allclose(aligned[0, known], gt[0, known], atol=1e-6)


def test_pose_metrics_reports_aligned_errors_beside_the_raw_ones():
    gt = _hands(n=4)
    rng = np.random.default_rng(2)
    noise = rng.normal(0.0, 2.0, gt.shape)
    pred = gt + noise + np.array([0.0, 0.0, 60.0])  # right articulation, 60 mm too far
    m = pose_metrics(pred, gt)
    assert m["mean_error_mm"] == pytest.approx(60.0, abs=2.0)
    assert m["frames_within_40mm"] == 0.0
    assert m["pa_mean_error_mm"] < np.linalg.norm(noise, axis=-1).mean()  # the fit absorbs some noise too
    assert m["pa_frames_within_40mm"] == 1.0
    assert len(m["pa_fraction_within"]) == len(m["thresholds_mm"])
    assert m["pa_fraction_within"][-1] == 1.0 and m["fraction_within"][-1] == 1.0


def test_procrustes_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="both be"):
        procrustes_align(np.zeros((2, 21, 3)), np.zeros((2, 14, 3)))


def test_missed_frames_fail_every_threshold_of_both_curves():
    gt = _hands(n=3)
    m = pose_metrics(gt + 1.0, gt, missed=1)  # three near-perfect frames and one without a hand
    assert m["n_frames"] == 4
    assert m["mean_error_mm"] == pytest.approx(np.sqrt(3.0))  # the means are over the predicted frames
    assert m["frames_within_40mm"] == m["pa_frames_within_40mm"] == pytest.approx(0.75)
    assert m["fraction_within"][-1] == m["pa_fraction_within"][-1] == pytest.approx(0.75)
    assert m["fraction_within"][0] == 0.0


def test_figures_per_group_count_each_groups_own_misses():
    gt = _hands(n=6)
    pred = gt.copy()
    pred[3:] += np.array([0.0, 0.0, 50.0])  # frames 3-5: every joint 50 mm off
    found = np.array([True, True, True, True, True, False])
    groups = {"good": np.arange(6) < 3, "bad": np.arange(6) >= 3, "none": np.zeros(6, bool)}
    by = pose_metrics_by_group(pred, gt, found, groups)
    assert set(by) == {"good", "bad"}  # an empty group is left out
    assert by["good"]["mean_error_mm"] == pytest.approx(0.0) and by["good"]["frames_within_40mm"] == 1.0
    assert by["bad"]["n_frames"] == 3 and by["bad"]["detection_rate"] == pytest.approx(2 / 3)
    assert by["bad"]["mean_error_mm"] == pytest.approx(50.0) and by["bad"]["frames_within_40mm"] == 0.0
    assert by["bad"]["pa_mean_error_mm"] == pytest.approx(0.0, abs=1e-6)  # a shift: alignment takes it out
    assert by["bad"]["pa_frames_within_40mm"] == pytest.approx(2 / 3)  # the missed frame still fails
    lost = pose_metrics_by_group(pred, gt, np.zeros(6, bool), {"all": np.ones(6, bool)})
    assert lost == {"all": {"n_frames": 6, "detection_rate": 0.0}}


def test_visibility_figures_split_seen_and_hidden_misses():
    names = HAND21.joint_names
    tip, middle_tip, little_mcp = names.index("index_tip"), names.index("middle_tip"), names.index("little_mcp")
    # a spread hand: every joint at least 30 mm from the others
    gt = np.tile((np.arange(21)[:, None] * np.array([30.0, 0.0, 0.0]))[None], (2, 1, 1)) + [0.0, 0.0, 500.0]
    pred = gt.copy()
    visible = np.ones((2, 21), bool)
    pred[0, tip] = gt[0, middle_tip] + [5.0, 0.0, 0.0]  # frame 0: a seen index tip put on the middle tip
    visible[1, little_mcp] = False
    pred[1, little_mcp] += [0.0, 0.0, 50.0]  # frame 1: a hidden joint 50 mm off
    v = visibility_figures(pred, gt, visible, names)
    miss = np.linalg.norm(pred[0, tip] - gt[0, tip])
    assert v["visible_mean_mm"] == pytest.approx(miss / 41)
    assert v["hidden_mean_mm"] == pytest.approx(50.0)
    assert v["hidden_share"] == pytest.approx(1 / 42)
    # either kind exact fixes one of the two frames
    assert v["frames_within_40mm_visible_exact"] == 0.5
    assert v["frames_within_40mm_hidden_exact"] == 0.5
    assert v["visible_misses"] == 1
    assert v["visible_misses_near_other_finger"] == 1.0 and v["visible_misses_near_own_finger"] == 0.0
    # the same miss landing on its own finger's PIP
    pred[0, tip] = gt[0, names.index("index_pip")]
    v = visibility_figures(pred, gt, visible, names)
    assert v["visible_misses_near_other_finger"] == 0.0 and v["visible_misses_near_own_finger"] == 1.0
    with pytest.raises(ValueError, match="visible"):
        visibility_figures(pred, gt, visible[:, :20], names)
