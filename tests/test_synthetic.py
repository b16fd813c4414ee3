"""Synthetic hand generator, its HDF5 files and the ``handpose-synth`` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from handpose_core.camera import Intrinsics
from handpose_core.codecs.depth_crop import DepthCrop, DepthCropCodec
from handpose_core.data import synthetic_cli
from handpose_core.data.hdf5_io import read_hdf5, write_hdf5
from handpose_core.data.synthetic import (
    ANGLE_LIMITS_DEG,
    ANGLE_NAMES,
    GESTURES,
    JOINT_LIMITS_DEG,
    JOINT_RADIUS_M,
    NOMINAL_BONE_LENGTHS_M,
    HandParams,
    SynthConfig,
    SyntheticHands,
    forward_kinematics,
    matrix_to_quat,
    quat_to_matrix,
    raycast_capsules,
)
from handpose_core.data.synthetic_viz import contact_sheet
from handpose_core.errors import HandPoseError
from handpose_core.keypoints import HAND21

REPO = Path(__file__).resolve().parents[1]
CLEAN = SynthConfig(depth_noise=False, edge_dropout=False)
SMALL = Intrinsics(118.75, 118.75, 79.5, 59.5, 160, 120)  # 640x480 default camera at 1/4 size


@pytest.fixture(scope="module")
def clean_samples():
    gen = SyntheticHands(CLEAN, seed=11)
    return [gen[i] for i in range(60)]


@pytest.fixture(scope="module")
def many_params():
    gen = SyntheticHands(seed=5)
    return [gen.sample_params(i) for i in range(600)]


# -- reproducibility --------------------------------------------------------------------------


def test_same_seed_and_index_give_identical_bytes_in_any_order():
    a, b = SyntheticHands(seed=3), SyntheticHands(seed=3)
    first = [a[i] for i in (0, 1, 2, 7)]
    later = [b[i] for i in (7, 2, 1, 0)][::-1]  # other instance, other order
    for x, y in zip(first, later, strict=True):
        assert x.depth_mm.tobytes() == y.depth_mm.tobytes()
        assert x.rgb.tobytes() == y.rgb.tobytes()
        assert x.xyz_m.tobytes() == y.xyz_m.tobytes()
        assert np.array_equal(x.visible, y.visible)
    assert not np.array_equal(first[0].depth_mm, first[1].depth_mm)
    assert not np.array_equal(first[0].rgb, first[1].rgb)
    assert not np.array_equal(SyntheticHands(seed=4)[0].xyz_m, first[0].xyz_m)


def test_outputs_have_the_documented_types(clean_samples):
    s = clean_samples[0]
    assert s.depth_mm.shape == (480, 640) and s.depth_mm.dtype == np.uint16
    assert s.rgb.shape == (480, 640, 3) and s.rgb.dtype == np.uint8
    assert s.xyz_m.shape == (21, 3) and s.xyz_m.dtype == np.float32
    assert s.uv_px.shape == (21, 2) and s.uv_px.dtype == np.float32
    assert s.visible.shape == (21,) and s.visible.dtype == bool
    assert s.index == 0 and isinstance(s.is_left, bool)
    off = SyntheticHands(SynthConfig(render_rgb=False, render_depth=False), seed=1)[0]
    assert off.rgb is None and off.depth_mm is None


# -- labels agree with the rendering ----------------------------------------------------------


def test_uv_is_the_exact_projection_of_xyz(clean_samples):
    for s in clean_samples:
        np.testing.assert_allclose(s.intrinsics.project(s.xyz_m), s.uv_px, atol=1e-3)
        assert np.all(s.xyz_m[:, 2] > 0.1)


def _surface_at_joints(s):
    px = np.rint(s.uv_px).astype(int)
    inside = (px[:, 0] >= 0) & (px[:, 0] < s.depth_mm.shape[1]) & (px[:, 1] >= 0) & (px[:, 1] < s.depth_mm.shape[0])
    depth = np.zeros(21)
    depth[inside] = s.depth_mm[px[inside, 1], px[inside, 0]] / 1000.0
    return inside, depth


def test_joints_lie_on_or_just_behind_the_rendered_surface(clean_samples):
    # Joints are bone centres. Where a joint is visible, the skin in front of it is at most the
    # flesh around it: a finger radius (<= 10.5 mm, x1.15 for the largest hands) plus the 6 mm
    # visibility margin for PIP/DIP/IP/tips; up to 4 cm for the wrist, CMC and MCPs, which sit
    # inside the palm (a wrist seen across the width of the forearm). Never behind the joint (a
    # joint is inside the body). Noise-free frames.
    finger_front = 0.0105 * 1.15 + CLEAN.visibility_margin_m + 0.0005
    front = np.full(21, finger_front)
    front[[0, 1, 2, 5, 9, 13, 17]] = 0.04
    n_visible = n_checked = 0
    for s in clean_samples:
        inside, depth = _surface_at_joints(s)
        z = s.xyz_m[:, 2]
        valid = inside & (depth > 0)
        assert np.all(depth[valid] <= z[valid] + 0.0015), "a joint is in front of the rendered surface"
        vis = s.visible
        assert not np.any(vis & ~inside), "joints outside the image cannot be visible"
        n_visible += vis.sum()
        n_checked += (vis & valid).sum()
        assert np.all(depth[vis & valid] >= (z - front)[vis & valid])
        occluded = inside & valid & ~vis
        assert np.all(depth[occluded] < z[occluded] - JOINT_RADIUS_M[occluded] * s.params.scale)
    assert n_checked >= 0.99 * n_visible
    share = n_visible / (21 * len(clean_samples))
    assert 0.35 < share < 0.95, f"implausible share of visible joints {share:.2f}"


def test_visible_joints_agree_with_noisy_depth_within_sensor_noise():
    gen = SyntheticHands(seed=12)
    n_visible = n_valid = 0
    for i in range(40):
        s = gen[i]
        inside, depth = _surface_at_joints(s)
        z = s.xyz_m[:, 2].astype(float)
        sigma = 0.0015 * (z / 0.5) ** 2
        vis = s.visible
        valid = vis & (depth > 0)  # edge dropout may remove a joint's pixel
        n_visible += vis.sum()
        n_valid += valid.sum()
        lo = z - 0.04 - 4 * sigma  # flesh in front of a visible joint: see the noise-free test
        hi = z + 0.0015 + 4 * sigma
        assert np.all((depth[valid] >= lo[valid]) & (depth[valid] <= hi[valid]))
    assert n_valid >= 0.9 * n_visible


def test_raycaster_matches_analytic_sphere_and_capsule():
    intr = Intrinsics(475.0, 475.0, 319.5, 239.5, 640, 480)
    # a sphere: closed form
    c, r = np.array([0.03, -0.02, 0.5]), 0.04
    u0, v0, z, _ = raycast_capsules(c[None], c[None], np.array([r]), intr)
    vv, uu = np.mgrid[v0 : v0 + z.shape[0], u0 : u0 + z.shape[1]]
    d = np.stack([(uu - intr.cx) / intr.fx, (vv - intr.cy) / intr.fy, np.ones_like(uu, float)], -1)
    dc, dd = d @ c, (d * d).sum(-1)
    disc = dc**2 - dd * (c @ c - r * r)
    want = np.where(disc > 0, (dc - np.sqrt(np.maximum(disc, 0))) / dd, np.inf)
    hit = z < 100
    margin = np.abs(disc) > 1e-6  # ignore rays grazing the silhouette
    assert np.array_equal(hit[margin], np.isfinite(want)[margin])
    assert np.abs(z[hit & margin] - want[hit & margin]).max() < 2e-5
    # a tilted capsule: the union of dense spheres along its axis
    a, b, r = np.array([-0.04, 0.01, 0.45]), np.array([0.05, -0.03, 0.52]), 0.012
    u0, v0, z, _ = raycast_capsules(a[None], b[None], np.array([r]), intr)
    vv, uu = np.mgrid[v0 : v0 + z.shape[0], u0 : u0 + z.shape[1]]
    d = np.stack([(uu - intr.cx) / intr.fx, (vv - intr.cy) / intr.fy, np.ones_like(uu, float)], -1).reshape(-1, 3)
    centres = a + np.linspace(0, 1, 1500)[:, None] * (b - a)
    dc, dd = d @ centres.T, (d * d).sum(-1)[:, None]
    disc = dc**2 - dd * ((centres**2).sum(-1) - r * r)
    want = np.where(disc > 0, (dc - np.sqrt(np.maximum(disc, 0))) / dd, np.inf).min(1).reshape(z.shape)
    hit = z < 100
    both = hit & np.isfinite(want)
    assert hit.sum() > 500
    assert (hit != np.isfinite(want)).sum() <= 0.01 * hit.sum()  # only grazing edge pixels may differ
    assert np.abs(z[both] - want[both]).max() < 5e-5


# -- anatomy ----------------------------------------------------------------------------------


def test_limits_table_is_complete_and_anatomical():
    assert len(ANGLE_NAMES) == len(ANGLE_LIMITS_DEG) == len(JOINT_LIMITS_DEG) == 22
    assert JOINT_LIMITS_DEG["index_mcp_flex"] == (-20.0, 90.0)
    assert JOINT_LIMITS_DEG["middle_mcp_abd"] == (-20.0, 20.0)
    assert JOINT_LIMITS_DEG["ring_pip_flex"] == (0.0, 110.0)
    assert JOINT_LIMITS_DEG["little_dip_flex"] == (0.0, 80.0)
    assert all(lo < hi for lo, hi in ANGLE_LIMITS_DEG)


def test_sampled_angles_respect_limits_and_cover_the_range(many_params):
    angles = np.rad2deg(np.array([p.joint_angles for p in many_params]))
    assert np.all(angles >= ANGLE_LIMITS_DEG[:, 0] - 1e-9)
    assert np.all(angles <= ANGLE_LIMITS_DEG[:, 1] + 1e-9)
    pip = angles[:, [ANGLE_NAMES.index(f"{f}_pip_flex") for f in ("index", "middle", "ring", "little")]]
    dip = angles[:, [ANGLE_NAMES.index(f"{f}_dip_flex") for f in ("index", "middle", "ring", "little")]]
    assert pip.min() < 5 and pip.max() > 100, "poses should span open to fully curled"
    # DIP follows 2/3 of PIP (tendon coupling), plus noise
    assert np.corrcoef(pip.ravel(), dip.ravel())[0, 1] > 0.85
    assert np.median(np.abs(dip - np.clip(pip * 2 / 3, 0, 80))) < 8


def test_each_hand_says_which_prior_drew_its_fingers(many_params):
    arts = [p.articulation for p in many_params]
    assert set(arts) == {"random", *GESTURES}
    assert 0.4 < arts.count("random") / len(arts) < 0.6  # gesture_prob 0.5
    # a gesture's fingers lie near its template: a fist curls every finger, an open hand curls none
    pip = np.rad2deg(np.array([p.joint_angles for p in many_params]))[
        :, [ANGLE_NAMES.index(f"{f}_pip_flex") for f in ("index", "middle", "ring", "little")]]
    fist = np.array([a == "fist" for a in arts])
    opened = np.array([a == "open" for a in arts])
    assert pip[fist].mean() > 80 and pip[opened].mean() < 20
    # interpolated hands take the nearer key's; hands made by hand have none
    a, b = many_params[0], many_params[1]
    assert HandParams.interpolate(a, b, 0.4).articulation == a.articulation
    assert HandParams.interpolate(a, b, 0.6).articulation == b.articulation
    made = HandParams(joint_angles=a.joint_angles, rotation=a.rotation, translation_m=a.translation_m)
    assert made.articulation == ""


def _bone_angle(xyz, i, j, k):
    u, v = xyz[j] - xyz[i], xyz[k] - xyz[j]
    return np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1)))


def test_joint_angles_measured_on_the_skeleton_match_the_parameters(many_params):
    for p in many_params[:200]:
        xyz = forward_kinematics(p).astype(np.float64)
        a = np.rad2deg(p.joint_angles)
        for f, name in enumerate(("index", "middle", "ring", "little")):
            mcp = 5 + 4 * f
            pip = _bone_angle(xyz, mcp, mcp + 1, mcp + 2)
            dip = _bone_angle(xyz, mcp + 1, mcp + 2, mcp + 3)
            assert abs(pip - a[ANGLE_NAMES.index(f"{name}_pip_flex")]) < 0.05
            assert abs(dip - a[ANGLE_NAMES.index(f"{name}_dip_flex")]) < 0.05
            assert pip <= 110.05 and dip <= 80.05


def test_bone_lengths_are_adult_and_consistent(many_params):
    edges = np.array(HAND21.edges)
    for p in many_params[:300]:
        xyz = forward_kinematics(p).astype(np.float64)
        lengths = np.linalg.norm(xyz[edges[:, 1]] - xyz[edges[:, 0]], axis=1)
        np.testing.assert_allclose(lengths, p.scale * p.bone_lengths_m, rtol=1e-4)
        assert 0.85 <= p.scale <= 1.15
        assert np.all(np.abs(p.bone_lengths_m / NOMINAL_BONE_LENGTHS_M - 1) <= 0.1 + 1e-9)
        palm = np.linalg.norm(xyz[9] - xyz[0])  # wrist -> middle MCP ~ 9 cm
        assert 0.065 < palm < 0.115
        np.testing.assert_allclose((xyz[0] + xyz[9]) / 2, p.translation_m, atol=1e-6)
    assert 0.085 < NOMINAL_BONE_LENGTHS_M[8] < 0.095  # wrist -> middle MCP, nominal
    proximal, middle, distal = NOMINAL_BONE_LENGTHS_M[9:12]
    assert proximal > middle > distal and 0.04 < proximal < 0.05 and 0.015 < distal < 0.025


def test_left_hand_is_the_mirror_image_of_the_right_hand(many_params):
    for p in many_params[:100]:
        right = HandParams(**{**p.__dict__, "is_left": False})
        left = HandParams(**{**p.__dict__, "is_left": True})
        xr, xl = forward_kinematics(right).astype(float), forward_kinematics(left).astype(float)
        rot, t = quat_to_matrix(p.rotation), p.translation_m
        mirror = rot @ np.diag([-1.0, 1.0, 1.0]) @ rot.T  # reflection through the hand's y-z plane
        np.testing.assert_allclose((xr - t) @ mirror.T + t, xl, atol=1e-6)
        palm_normal = rot @ np.array([0.0, 0.0, 1.0])  # out of the palm, same for both hands
        for xyz, sign in ((xr, 1), (xl, -1)):
            triple = np.cross(xyz[5] - xyz[0], xyz[17] - xyz[0]) @ palm_normal
            assert np.sign(triple) == sign


def test_left_hand_renders_as_a_flipped_image_on_the_optical_axis():
    cfg = SynthConfig(depth_noise=False, edge_dropout=False, background_prob=0, clutter_prob=0, render_rgb=False)
    gen = SyntheticHands(cfg, seed=2)
    base = gen.sample_params(4)
    base = HandParams(
        **{**base.__dict__, "rotation": np.array([0.0, 1.0, 0.0, 0.0]), "translation_m": np.array([0.0, 0.0, 0.5])}
    )
    right = gen.render(HandParams(**{**base.__dict__, "is_left": False}))
    left = gen.render(HandParams(**{**base.__dict__, "is_left": True}))
    flipped = right.depth_mm[:, ::-1]  # cx = (W - 1) / 2, so x -> -x is a column flip
    same = left.depth_mm == flipped
    assert same.mean() > 0.998
    assert np.abs(left.depth_mm.astype(int) - flipped).max() <= 1 or (~same).sum() < 30
    assert (left.depth_mm > 0).sum() > 1000


# -- pose distribution ------------------------------------------------------------------------


def test_rotations_cover_the_full_sphere(many_params):
    normals = np.array([quat_to_matrix(p.rotation) @ [0.0, 0.0, 1.0] for p in many_params])
    to_camera = -np.array([p.translation_m / np.linalg.norm(p.translation_m) for p in many_params])
    facing = np.einsum("ij,ij->i", normals, to_camera)
    assert (facing > 0.3).mean() > 0.25 and (facing < -0.3).mean() > 0.25  # palm towards / away
    octants = {tuple(v) for v in (normals > 0).astype(int)}
    assert len(octants) == 8
    assert np.linalg.norm(normals.mean(0)) < 0.12  # uniform: no preferred direction
    z = np.array([p.translation_m[2] for p in many_params])
    assert z.min() >= 0.3 and z.max() <= 1.0 and z.max() - z.min() > 0.6
    assert 0.35 < np.mean([p.is_left for p in many_params]) < 0.65


def test_trajectory_is_smooth_and_keeps_the_hand(tmp_path):
    gen = SyntheticHands(SynthConfig(render_rgb=False), seed=8)
    frames = list(gen.trajectory(45, fps=30.0))
    again = list(SyntheticHands(SynthConfig(render_rgb=False), seed=8).trajectory(45, fps=30.0))
    assert len(frames) == 45
    assert all(a.depth_mm.tobytes() == b.depth_mm.tobytes() for a, b in zip(frames, again, strict=True))
    xyz = np.array([f.xyz_m for f in frames])
    step = np.linalg.norm(np.diff(xyz, axis=0), axis=-1).max()
    assert step < 0.03, f"a joint jumped {step * 100:.1f} cm between frames"
    assert np.linalg.norm(xyz[-1] - xyz[0], axis=-1).max() > 0.01  # it does move
    edges = np.array(HAND21.edges)
    lengths = np.linalg.norm(xyz[:, edges[:, 1]] - xyz[:, edges[:, 0]], axis=-1)
    np.testing.assert_allclose(lengths, lengths[:1].repeat(45, 0), rtol=1e-4)
    assert len({f.is_left for f in frames}) == 1
    assert all(f.params.articulation in ("random", *GESTURES) for f in frames)


def test_config_and_index_validation():
    with pytest.raises(HandPoseError):
        SynthConfig(z_range_m=(0.5, 0.2))
    with pytest.raises(HandPoseError):
        SynthConfig(left_prob=1.5)
    with pytest.raises(HandPoseError):
        SyntheticHands(seed=-1)
    with pytest.raises(HandPoseError):
        SyntheticHands()[-1]


def test_interpolation_hits_both_ends_and_matrices_are_accepted(many_params):
    a, b = many_params[0], many_params[1]
    for w, ref in ((0.0, a), (1.0, b)):
        p = HandParams.interpolate(a, b, w)
        np.testing.assert_allclose(p.joint_angles, ref.joint_angles)
        np.testing.assert_allclose(quat_to_matrix(p.rotation), quat_to_matrix(ref.rotation), atol=1e-9)
    mid = HandParams.interpolate(a, b, 0.5)
    assert np.isclose(np.linalg.norm(mid.rotation), 1.0)
    as_matrix = HandParams(**{**a.__dict__, "rotation": quat_to_matrix(a.rotation)})
    np.testing.assert_allclose(forward_kinematics(as_matrix), forward_kinematics(a), atol=1e-6)
    with pytest.raises(HandPoseError):
        HandParams(**{**a.__dict__, "rotation": np.zeros(4)})


def test_matrix_to_quat_inverts_quat_to_matrix_in_wxyz_order():
    """Random rotations and the half-turns (w = 0), where a sign taken from a near-zero difference
    would flip; the result is (w, x, y, z) with w >= 0, unlike geometry's ROS order."""
    rng = np.random.default_rng(0)
    quats = rng.normal(size=(500, 4))
    quats = np.concatenate([quats, [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0.6, 0.8, 0]]])
    for q in quats:
        q = q / np.linalg.norm(q) * (1 if q[0] >= 0 else -1)
        back = matrix_to_quat(quat_to_matrix(q))
        assert back[0] >= 0
        # q and -q are one rotation; at w = 0 both signs are valid
        assert min(np.abs(back - q).max(), np.abs(back + q).max()) < 1e-9
    np.testing.assert_allclose(matrix_to_quat(np.diag([1.0, -1.0, -1.0])), [0, 1, 0, 0], atol=1e-12)


# -- HDF5 -------------------------------------------------------------------------------------


def _small_samples(n, seed=0, rgb=True):
    gen = SyntheticHands(SynthConfig(intrinsics=SMALL, z_range_m=(0.4, 0.8), render_rgb=rgb), seed=seed)
    return [gen[i] for i in range(n)]


def test_hdf5_round_trip(tmp_path):
    train, test = _small_samples(7), _small_samples(3, seed=1)
    path = tmp_path / "synth.h5"
    codec = DepthCropCodec(cube_mm=300.0, size=32, min_hand_px=20)
    counts = write_hdf5(
        path, {"train": iter(train), "test": iter(test)}, codec=codec, pca_components=5, attrs={"seed": 0}
    )
    assert counts == {"train": 7, "test": 3}
    assert sorted(os.listdir(tmp_path)) == ["synth.h5"]  # no temporary left behind
    d = read_hdf5(path)
    assert d["image/train"].shape == (7, 32, 32, 1) and d["label/test"].shape == (3, 63)
    assert d["image/train"].min() >= -1 and d["image/train"].max() <= 1
    assert d["joint_names"] == HAND21.joint_names
    assert d["intrinsics"] == SMALL and d["attrs"]["seed"] == 0
    assert d["pca/eigenvectors"].shape == (5, 63) and d["pca/mean"].shape == (63,)
    for split, samples in (("train", train), ("test", test)):
        raw = f"raw/{split}/"
        np.testing.assert_array_equal(d[raw + "depth_mm"], [s.depth_mm for s in samples])
        np.testing.assert_array_equal(d[raw + "rgb"], [s.rgb for s in samples])
        np.testing.assert_array_equal(d[raw + "xyz_m"], [s.xyz_m for s in samples])
        np.testing.assert_array_equal(d[raw + "uv_px"], [s.uv_px for s in samples])
        np.testing.assert_array_equal(d[raw + "visible"], [s.visible for s in samples])
        np.testing.assert_array_equal(d[raw + "is_left"], [s.is_left for s in samples])
        np.testing.assert_array_equal(d[raw + "index"], [s.index for s in samples])
        # labels decode back to the joints through the stored crops
        for k, s in enumerate(samples):
            crop = DepthCrop(
                d[f"image/{split}"][k, ..., 0],
                d[f"crop/{split}/com_xyz_mm"][k],
                float(d[f"crop/{split}/cube_mm"][k]),
                d[f"crop/{split}/warp"][k],
                SMALL,
            )
            xyz = codec.decode_joints(d[f"label/{split}"][k].reshape(21, 3), crop)
            np.testing.assert_allclose(xyz, s.xyz_m, atol=2e-4)
    lean = read_hdf5(path, raw=False)
    assert not any(k.startswith("raw/") for k in lean)


def test_read_bare_seed_notebook_file(tmp_path):
    path = tmp_path / "seed.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["image/train"] = rng.uniform(-1, 1, (4, 128, 128, 1)).astype(np.float32)
        f["image/test"] = rng.uniform(-1, 1, (2, 128, 128, 1)).astype(np.float32)
        f["label/train"] = rng.normal(size=(4, 42)).astype(np.float32)  # 14 NYU joints
        f["label/test"] = rng.normal(size=(2, 42)).astype(np.float32)
        f["pca/eigenvectors"] = rng.normal(size=(42, 30)).astype(np.float32)  # stored as columns
        f["pca/mean"] = rng.normal(size=(42,)).astype(np.float32)
    d = read_hdf5(path)
    assert d["image/train"].shape == (4, 128, 128, 1) and d["label/test"].shape == (2, 42)
    assert d["pca/eigenvectors"].shape == (30, 42)
    assert d["joint_names"] is None and d["intrinsics"] is None


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f.__delitem__("label/test"), "label/test"),
        (lambda f: (f.__delitem__("image/train"), f.create_dataset("image/train", data=np.zeros((4, 9)))), "image"),
        (lambda f: (f.__delitem__("label/train"), f.create_dataset("label/train", data=np.zeros((3, 63)))), "frames"),
        (lambda f: (f.__delitem__("label/train"), f.create_dataset("label/train", data=np.zeros((4, 62)))), "3J"),
        (lambda f: (f.__delitem__("pca/mean"), f.create_dataset("pca/mean", data=np.zeros(10))), "pca/mean"),
    ],
)
def test_reader_rejects_broken_files(tmp_path, mutate, message):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["image/train"] = np.zeros((4, 16, 16, 1), np.float32)
        f["image/test"] = np.zeros((1, 16, 16, 1), np.float32)
        f["label/train"] = np.zeros((4, 63), np.float32)
        f["label/test"] = np.zeros((1, 63), np.float32)
        f["pca/eigenvectors"] = np.zeros((3, 63), np.float32)
        f["pca/mean"] = np.zeros(63, np.float32)
        mutate(f)
    with pytest.raises(HandPoseError, match=message.replace("/", ".")):
        read_hdf5(path)


def test_reader_rejects_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(HandPoseError, match="not found"):
        read_hdf5(tmp_path / "none.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file")
    with pytest.raises(HandPoseError, match="not a readable HDF5"):
        read_hdf5(junk)


# -- CLI --------------------------------------------------------------------------------------


def test_cli_writes_a_readable_file(tmp_path, capsys):
    out = tmp_path / "d.h5"
    args = [
        "--n",
        "5",
        "--out",
        str(out),
        "--width",
        "160",
        "--height",
        "120",
        "--test-fraction",
        "0.4",
        "--no-rgb",
        "--quiet",
        "--crop-size",
        "32",
        "--seed",
        "3",
    ]
    assert synthetic_cli.main(args) == 0
    d = read_hdf5(out)
    assert d["image/train"].shape == (3, 32, 32, 1) and d["image/test"].shape == (2, 32, 32, 1)
    assert "raw/train/rgb" not in d and d["raw/train/depth_mm"].shape == (3, 120, 160)
    assert d["raw/test/index"][0] == synthetic_cli.TEST_INDEX_OFFSET
    assert d["intrinsics"].width == 160
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "args",
    [
        ["--n", "0"],
        ["--n", "-3"],
        ["--n", "ten"],
        ["--n", "5", "--intrinsics", "-475,475,319.5,239.5"],
        ["--n", "5", "--intrinsics", "475,abc,319.5,239.5"],
        ["--n", "5", "--intrinsics", "475,475,319.5"],
        ["--n", "5", "--test-fraction", "1.0"],
        ["--n", "5", "--left-prob", "2"],
    ],
)
def test_cli_rejects_bad_arguments_in_one_line(tmp_path, capsys, args):
    out = tmp_path / "x.h5"
    assert synthetic_cli.main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("handpose-synth: error:")
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_cli_rejects_unwritable_paths(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out in (tmp_path / "missing" / "x.h5", a_file / "x.h5", tmp_path):
        assert synthetic_cli.main(["--n", "3", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--out" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_cli_as_a_process_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args in (["--n", "0"], ["--n", "2", "--intrinsics", "fx,fy,cx,cy"]):
        proc = subprocess.run(
            [sys.executable, "-m", "handpose_core.data.synthetic_cli", *args, "--out", str(tmp_path / "o.h5")],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
    help_text = subprocess.run(
        [sys.executable, "-m", "handpose_core.data.synthetic_cli", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert help_text.returncode == 0 and "--test-fraction" in help_text.stdout


# -- pictures ---------------------------------------------------------------------------------


def test_contact_sheet_is_written(tmp_path):
    path = tmp_path / "sheet.png"
    sheet = contact_sheet(_small_samples(3), path, cols=2, scale=1.0)
    assert path.is_file() and path.stat().st_size > 1000
    assert sheet.shape[0] == 2 * (120 + 4)


def test_a_capsule_seen_end_on_is_hit_on_its_near_cap_not_behind_the_camera():
    """Rays almost parallel to a capsule's axis meet its infinite cylinder behind the camera; that
    entry is off the body and must be dropped, not kept as a hit at -inf (which the shading then
    turned into NaN colours: ~1 frame in 1,000 of the synthetic data had such pixels)."""
    intr = Intrinsics(475.0, 475.0, 319.5, 239.5, 640, 480)
    a, b, r = np.array([0.0, 0.0, 0.3]), np.array([0.0, 0.0, 0.6]), 0.02
    u0, v0, z, _ = raycast_capsules(a[None], b[None], np.array([r]), intr)
    hit = z < 100
    assert hit.sum() > 500
    assert np.all(z[hit] > 0), f"{np.count_nonzero(~(z[hit] > 0))} hits at z <= 0"
    centre = z[int(round(intr.cy)) - v0, int(round(intr.cx)) - u0]
    assert abs(centre - (0.3 - r)) < 1e-4  # the near end sphere's front
    assert z[hit].max() < 0.3 + 1e-4  # nothing seen farther than the near sphere's equator
