"""Networks trained on right hands: left hands mirrored in training, evaluation and both pipelines."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from handpose_core import HandPoseError, HandPoseEstimator
from handpose_core.camera import Intrinsics
from handpose_core.checkpoint import load_checkpoint, save_checkpoint
from handpose_core.codecs.belief_maps import CropBox, crop_image, warp_points
from handpose_core.data.synthetic import SynthConfig, SyntheticHands
from handpose_core.keypoints import HAND21
from handpose_core.pipelines import depth as depth_pipeline
from handpose_core.pipelines.depth import save_untrained as save_untrained_depth
from handpose_core.pipelines.hands import HandVote
from handpose_core.pipelines.rgb import save_untrained as save_untrained_rgb
from tests.depth_util import plain_and_mirrored, weighted_untrained
from training import hand_of


def test_mirrored_crop_warp_flips_the_crop_and_maps_points_back():
    img = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    box = CropBox(40.3, 30.2, 36.0)
    plain, mirrored = box.warp(32, 20.0), box.warp(32, 20.0, mirrored=True)
    a, m = crop_image(img, plain, 32), crop_image(img, mirrored, 32)
    assert np.abs(a[:, ::-1].astype(int) - m).max() <= 1  # bilinear rounding only
    assert np.abs(a.astype(int) - m).max() > 50  # and not the same crop
    pts = np.array([[35.0, 28.0], [44.0, 33.5]])
    np.testing.assert_allclose(warp_points(pts, mirrored)[:, 0], 31.0 - warp_points(pts, plain)[:, 0], atol=1e-4)
    np.testing.assert_allclose(warp_points(pts, mirrored)[:, 1], warp_points(pts, plain)[:, 1], atol=1e-4)
    np.testing.assert_allclose(warp_points(warp_points(pts, mirrored), mirrored, inverse=True), pts, atol=1e-4)


def test_hand_of_tells_each_frames_hand_or_auto():
    assert (hand_of(True, "known"), hand_of(False, "known"), hand_of(True, "auto")) == ("left", "right", "auto")
    with pytest.raises(ValueError, match="known"):
        hand_of(True, "both")


# -- CPM --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpm_crops():
    from handpose_core.training.cpm_task import build_crop_set

    data = build_crop_set("synthetic", seed=5, frames=6, size=96, margin=2.2)
    data.is_left[:] = [True, False, True, False, False, True]
    return data


def test_cpm_right_hand_recipe_mirrors_left_hands_only(cpm_crops):
    from handpose_core.training.cpm_task import RECIPES, CPMTask

    both = CPMTask(replace(RECIPES["cpm_tiny"], hands="both"), train_data=cpm_crops)
    right = CPMTask(replace(RECIPES["cpm_tiny"], hands="right"), train_data=cpm_crops)
    idx = np.arange(6)
    xb, yb = both.make_batch(idx, np.random.default_rng(1), augment=False)
    xr, yr = right.make_batch(idx, np.random.default_rng(1), augment=False)
    for i, left in enumerate(cpm_crops.is_left):
        if left:  # the crop and its target maps are the both-hands batch's, mirrored
            assert (xr[i] - xb[i].flip(-1)).abs().max() < 0.02
            assert (yr[i] - yb[i].flip(-1)).abs().max() < 0.02
            assert (xr[i] - xb[i]).abs().max() > 0.3
        else:
            assert torch.equal(xr[i], xb[i]) and torch.equal(yr[i], yb[i])
    pipeline = right.checkpoint_meta()["pipeline"]
    assert pipeline["hands"] == "right" and not pipeline["flip_average"]  # the mirror is another hand
    assert both.checkpoint_meta()["pipeline"]["flip_average"]


def test_cpm_crop_protocols_known_and_auto(cpm_crops):
    from handpose_core.codecs.belief_maps import BeliefMapCodec, InputSpec
    from handpose_core.models import create_model
    from handpose_core.training.cpm_task import evaluate_crop_set, held_out_crops

    torch.manual_seed(0)
    model = create_model("cpm_tiny").eval()
    codec, spec = BeliefMapCodec(input_size=64, stride=8, sigma_px=4.0), InputSpec(size=64)
    cpu = torch.device("cpu")
    none = evaluate_crop_set(model, codec, spec, cpm_crops, cpu, "none")
    stages: list = []
    known = evaluate_crop_set(model, codec, spec, cpm_crops, cpu, "known", stages)
    # each stage's whole result, the figures per_stage reports and the PCK curve
    assert len(stages) == len(known["per_stage"]) == 2 and stages[-1]["pck@0.2"] == known["pck@0.2"]
    assert stages[0]["pck@0.2"] == known["per_stage"]["stage1"]["pck@0.2"] and "curve" in stages[0]
    # one item of the held-out crops, cut as in the whole set
    every = held_out_crops(cpm_crops, 64, mirror=cpm_crops.is_left)
    one = held_out_crops(cpm_crops, 64, mirror=cpm_crops.is_left, indices=[3])
    for a, b in zip(every, one, strict=True):
        np.testing.assert_array_equal(a[3:4], b)
    auto = evaluate_crop_set(model, codec, spec, cpm_crops, cpu, "auto")
    assert none["mean_confidence"] != pytest.approx(known["mean_confidence"])  # left crops were mirrored
    # auto keeps each crop's more confident way: at least as confident as either way alone
    assert auto["mean_confidence"] >= max(none["mean_confidence"], known["mean_confidence"]) - 1e-6
    assert 0.0 <= auto["handedness_accuracy"] <= 1.0 and "handedness_accuracy" not in known
    with pytest.raises(HandPoseError, match="handedness"):
        evaluate_crop_set(model, codec, spec, cpm_crops, cpu, "left")


@pytest.fixture()
def rgb_right(tmp_path):
    path = save_untrained_rgb(tmp_path / "cpm.pt", variant="cpm_tiny")
    blob = load_checkpoint(path)
    blob["meta"]["pipeline"].update(hands="right", flip_average=False, handedness_frames=2)
    save_checkpoint(path, blob["model"]["name"], blob["model"]["config"], blob["state_dict"], blob["meta"])
    est = HandPoseEstimator.from_checkpoint(path, device="cpu", backend="torch")
    est._pipeline.cfg.update(min_confidence=0.0, keypoint_min_confidence=0.0, track_min_confidence=0.0)
    return est


def test_rgb_left_hand_is_the_mirrored_image_seen_as_a_right_hand(rgb_right):
    est, pipe = rgb_right, rgb_right._pipeline
    img = np.random.default_rng(2).integers(0, 255, (72, 96, 3), dtype=np.uint8)
    w = img.shape[1]
    pipe.roi = (20.0, 10.0, 60.0, 50.0)
    est.handedness = "left"
    left = est.predict(img)[0]
    est.handedness = "right"
    pipe.roi = (w - 1 - 60.0, 10.0, w - 1 - 20.0, 50.0)  # the same box in the mirror image (u -> w - 1 - u)
    of_mirror = est.predict(np.ascontiguousarray(img[:, ::-1]))[0]
    assert left.extras["handedness"] == "left" and of_mirror.extras["handedness"] == "right"
    np.testing.assert_allclose(left.uv_px[:, 0], w - 1 - of_mirror.uv_px[:, 0], atol=0.05)
    np.testing.assert_allclose(left.uv_px[:, 1], of_mirror.uv_px[:, 1], atol=0.05)
    np.testing.assert_allclose(left.confidence, of_mirror.confidence, atol=2e-3)
    with pytest.raises(HandPoseError, match="handedness must be one of"):
        est.handedness = "both"


def test_hand_vote_sums_a_tracks_margins_then_settles():
    vote = HandVote(2)
    assert vote.weigh(0.0) == ("right", 0.0)  # a tie is a right hand
    hand, total = vote.weigh(0.3)
    assert hand == "left" and total == pytest.approx(0.3) and vote.total == 0.0  # weighed, not kept
    vote.keep(total)
    assert not vote.settled and vote.hand == "left"
    hand, total = vote.weigh(-0.5)  # one frame the other way outweighs the first
    assert hand == "right" and total == pytest.approx(-0.2)
    vote.keep(total)
    assert vote.settled and vote.frames == 2 and vote.hand == "right"  # the hand the kept sum calls
    vote.reset()
    assert not vote.settled and vote.total == 0.0
    for bad in (0, 1.5, "3"):
        with pytest.raises(HandPoseError, match="handedness_frames must be an integer >= 1"):
            HandVote(bad)


def test_rgb_auto_runs_both_hands_then_the_track_keeps_one(rgb_right):
    est, pipe = rgb_right, rgb_right._pipeline
    img = np.random.default_rng(3).integers(0, 255, (72, 96, 3), dtype=np.uint8)
    batches = []
    run = pipe._run
    pipe._run = lambda crops: batches.append(len(crops)) or run(crops)
    pipe.roi = (20.0, 10.0, 60.0, 50.0)
    by_hand = {}
    for hand in ("right", "left"):
        est.handedness = hand
        by_hand[hand] = est.predict(img)[0]
    est.handedness = "auto"
    batches.clear()
    auto = est.predict(img)[0]
    assert batches == [2]  # the crop and its mirror in one network call
    best = max(by_hand, key=lambda h: float(by_hand[h].confidence.mean()))
    assert auto.extras["handedness"] == best
    np.testing.assert_allclose(auto.uv_px, by_hand[best].uv_px, atol=1e-3)  # batch of 2 vs 1: float noise
    # a tracked stream: the track's first handedness_frames (2) frames run both ways and sum their
    # confidence margins, then the track keeps the hand the sum called and runs it only
    pipe.roi = None
    pipe.cfg["refine"] = []
    est.reset()
    margins = []  # each frame's left-minus-right confidence margin
    choose = pipe._choose

    def spy(outs):
        if len(outs) == 2:
            margins.append(float(outs[1]["conf"].mean() - outs[0]["conf"].mean()))
        return choose(outs)

    pipe._choose = spy
    batches.clear()
    first = est.predict(img)[0]
    assert first.extras["box_source"] == "search" and batches[-1] == 2
    batches.clear()
    second = est.predict(img)[0]
    assert second.extras["box_source"] == "track" and batches == [2]
    assert second.extras["handedness"] == ("left" if sum(margins) > 0 else "right") and len(margins) == 2
    batches.clear()
    third = est.predict(img)[0]
    assert third.extras["box_source"] == "track" and batches == [1] and len(margins) == 2
    assert third.extras["handedness"] == second.extras["handedness"]
    est.handedness = "auto"  # setting it forgets the track and its vote
    assert pipe._vote.frames == 0 and pipe._track is None


def test_rgb_right_hand_network_refuses_mirror_averaging(tmp_path):
    from handpose_core.pipelines.rgb import RGBPipeline

    blob = load_checkpoint(save_untrained_rgb(tmp_path / "cpm.pt", variant="cpm_tiny"))
    blob["meta"]["pipeline"].update(hands="right", flip_average=True)
    with pytest.raises(HandPoseError, match="flip_average needs a network that saw both hands"):
        RGBPipeline(blob, torch.device("cpu"))
    blob["meta"]["pipeline"].update(hands="left", flip_average=False)
    with pytest.raises(HandPoseError, match="hands must be one of"):
        RGBPipeline(blob, torch.device("cpu"))


# -- DeepPrior --------------------------------------------------------------------------------------


def _depth_right(tmp_path, weight_std: float = 0.5, **inference) -> HandPoseEstimator:
    path = tmp_path / "dp.pt"
    weighted_untrained(path, {"passes": 2, "hands": "right", **inference}, weight_std)
    return HandPoseEstimator.from_checkpoint(path, device="cpu", backend="torch", tracking=False)


def test_depth_left_hand_runs_the_network_on_mirrored_crops(tmp_path):
    est = _depth_right(tmp_path)
    pipe = est._pipeline
    sample = SyntheticHands(SynthConfig(render_rgb=False), seed=3)[0]
    crop = pipe.codec.encode(sample.depth_mm, sample.intrinsics)
    plain, of_mirror = plain_and_mirrored(pipe, crop)
    assert np.abs(plain - of_mirror).max() > 1e-3  # the two differ, so the test can tell them apart
    est.handedness = "right"
    np.testing.assert_allclose(pipe._run(crop), plain, atol=1e-5)
    est.handedness = "left"
    pipe._hand = "left"
    np.testing.assert_allclose(pipe._run(crop), of_mirror, atol=1e-5)
    # through predict: every network call of a left-hand frame runs mirrored
    hands = []
    run = pipe._run_batch
    pipe._run_batch = lambda crops, mirror=False: hands.append((pipe._hand, mirror)) or run(crops, mirror)
    pose = est.predict(sample.depth_mm, sample.intrinsics)[0]
    assert pose.extras["handedness"] == "left" and hands and set(hands) == {("left", False)}


def test_depth_left_hand_equals_the_mirrored_frame_as_a_right_hand(tmp_path):
    """A left hand told is the mirror image (u -> W-1-u, cx -> W-1-cx) seen as a right hand, with X
    negated: the same crops, mirrored, through the same network."""
    # a gentler random head than elsewhere: joints near the hand, where resampling moves them little
    est = _depth_right(tmp_path, weight_std=0.05, rotation_average=[-15.0, 15.0])
    s = SyntheticHands(SynthConfig(render_rgb=False), seed=4)[1]
    intr = s.intrinsics
    est.handedness = "left"
    left = est.predict(s.depth_mm, intr)[0]
    est.handedness = "right"
    mirrored = Intrinsics(intr.fx, intr.fy, intr.width - 1 - intr.cx, intr.cy, intr.width, intr.height)
    right = est.predict(np.ascontiguousarray(s.depth_mm[:, ::-1]), mirrored)[0]
    gap_mm = np.linalg.norm(left.xyz_m * [-1.0, 1.0, 1.0] - right.xyz_m, axis=1) * 1000
    est.handedness = "right"
    as_right = est.predict(s.depth_mm, intr)[0]  # the wrong hand told: another answer
    wrong_mm = np.linalg.norm(left.xyz_m - as_right.xyz_m, axis=1) * 1000
    # resampling the mirror image moves crops by a fraction of a pixel, which two passes and turned
    # crops carry on: a few mm, against tens of mm for the hand told wrong
    assert gap_mm.max() < 10.0 and wrong_mm.mean() > 5 * gap_mm.mean(), (gap_mm, wrong_mm)


@pytest.mark.parametrize("index", [2, 5])
def test_depth_auto_keeps_the_hand_farther_from_the_mean_pose(tmp_path, index):
    est = _depth_right(tmp_path)
    s = SyntheticHands(SynthConfig(render_rgb=False), seed=3)[index]
    mean = load_checkpoint(tmp_path / "dp.pt")["state_dict"]["pca.bias"].numpy().reshape(-1, 3)
    told = {}
    for hand in ("right", "left"):
        est.handedness = hand
        pose = est.predict(s.depth_mm, s.intrinsics)[0]
        told[hand] = (float(np.linalg.norm(pose.extras["uvd_norm"] - mean, axis=1).mean()), pose)
    assert abs(told["left"][0] - told["right"][0]) > 1e-3  # the two ways differ
    est.handedness = "auto"
    auto = est.predict(s.depth_mm, s.intrinsics)[0]
    best = "left" if told["left"][0] > told["right"][0] else "right"
    assert auto.extras["handedness"] == best
    np.testing.assert_allclose(auto.xyz_m, told[best][1].xyz_m, atol=1e-6)
    # a track runs both hands over its first handedness_frames (2) frames, then the hand their summed
    # margins call only, re-searches (redetect_every) included: the vote outlives a redetection
    weighted_untrained(tmp_path / "dp2.pt", {"passes": 2, "hands": "right", "track": {"handedness_frames": 2}}, 0.5)
    tracked = HandPoseEstimator.from_checkpoint(tmp_path / "dp2.pt", device="cpu", backend="torch")
    pipe = tracked._pipeline
    pipe.track_cfg.update(min_confidence=0.0, min_fill=0.0)
    hands = []
    run = pipe._run_batch
    pipe._run_batch = lambda crops, mirror=False: hands.append(pipe._hand) or run(crops, mirror)
    first = tracked.predict(s.depth_mm, s.intrinsics)[0]
    assert first.extras["box_source"] == "search" and set(hands) == {"right", "left"}
    hands.clear()
    second = tracked.predict(s.depth_mm, s.intrinsics)[0]
    assert second.extras["box_source"] == "track" and set(hands) == {"right", "left"}
    assert pipe._vote.settled and second.extras["handedness"] == ("left" if pipe._vote.total > 0 else "right")
    for _ in range(2):
        hands.clear()
        pose = tracked.predict(s.depth_mm, s.intrinsics)[0]
        assert set(hands) == {second.extras["handedness"]} == {pose.extras["handedness"]}
    pipe.track_cfg["redetect_every"] = 1  # every frame searched again
    hands.clear()
    redetected = tracked.predict(s.depth_mm, s.intrinsics)[0]
    assert redetected.extras["box_source"] == "search" and set(hands) == {second.extras["handedness"]}
    # a track that is lost (here: the hand "left" its cube) takes its vote with it: the frame that
    # searches afresh weighs both hands again
    pipe.track_cfg.update(redetect_every=0, min_fill=2.0)
    hands.clear()
    lost = tracked.predict(s.depth_mm, s.intrinsics)[0]
    assert lost.extras["box_source"] == "search" and set(hands) == {"right", "left"}


def test_depth_checkpoint_hands_are_checked(tmp_path):
    path = save_untrained_depth(tmp_path / "dp.pt")
    blob = load_checkpoint(path)
    for inference, match in (({"hands": "left"}, "inference.hands must be one of"),
                             ({"hands": "right", "flip_average": True}, "needs a network that saw both hands")):
        blob["meta"]["inference"] = inference
        with pytest.raises(HandPoseError, match=match):
            depth_pipeline.DepthPipeline(blob, torch.device("cpu"))


def test_deep_prior_right_hand_recipe_mirrors_left_hands_in_training():
    from handpose_core.training.deep_prior_task import CropSet, DeepPriorTask, recipe

    gen = SyntheticHands(SynthConfig(render_rgb=False), seed=5)
    from handpose_core.codecs.depth_crop import DepthCropCodec

    codec = DepthCropCodec()
    crops, labels = [], []
    for s in (gen[i] for i in range(8)):
        crop = codec.encode(s.depth_mm, s.intrinsics, com_xyz_mm=s.xyz_m.mean(0) * 1000)
        crops.append(crop.image.astype(np.float16))
        labels.append(codec.encode_joints(s.xyz_m, crop).reshape(-1))
    data = CropSet.plain(np.stack(crops), np.stack(labels))
    data.is_left = np.arange(8) % 2 == 1
    both = DeepPriorTask(replace(recipe("default"), hands="both", flip_prob=0.0), data, codec=codec, pca_samples=8)
    right = DeepPriorTask(recipe("default"), data, codec=codec, pca_samples=8)
    idx_rng = np.random.default_rng([0, 4])
    idx = np.sort(idx_rng.integers(0, 8, 32))
    _, yb = next(both.batches(4, 32, seed=0))
    _, yr = next(right.batches(4, 32, seed=0))
    left = data.is_left[idx]
    assert left.any() and (~left).any()
    # the same draws, but a left hand's crop mirrored: u negated, v and d as they were
    torch.testing.assert_close(yr[~left], yb[~left])
    torch.testing.assert_close(yr[left][..., 0], -yb[left][..., 0])
    torch.testing.assert_close(yr[left][..., 1:], yb[left][..., 1:])
    assert right.checkpoint_meta()["inference"]["hands"] == "right"
    unknown = DeepPriorTask(recipe("default"), CropSet.plain(np.stack(crops), np.stack(labels)), codec=codec,
                            pca_samples=8)
    assert not unknown.is_left.any()  # handedness unknown (NYU, seed HDF5): taken as right hands


def test_synthetic_crop_cache_gains_handedness_and_finger_priors(tmp_path):
    from handpose_core.codecs.depth_crop import DepthCropCodec
    from handpose_core.training.deep_prior_task import synthetic_crops

    codec = DepthCropCodec()
    data = synthetic_crops(6, 11, codec, tmp_path, workers=1, progress=False)
    gen = SyntheticHands(SynthConfig(render_rgb=False), seed=11)
    expected = [gen.sample_params(i).is_left for i in range(6)]
    random_fingers = [gen.sample_params(i).articulation == "random" for i in range(6)]
    assert data.is_left.tolist() == expected and data.random_fingers.tolist() == random_fingers
    (cache,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (cache / "is_left.npy").unlink()  # a cache written before handedness was kept
    (cache / "random_fingers.npy").unlink()
    again = synthetic_crops(6, 11, codec, tmp_path, workers=1, progress=False)
    assert again.is_left.tolist() == expected and again.random_fingers.tolist() == random_fingers
    assert (cache / "is_left.npy").is_file() and (cache / "random_fingers.npy").is_file()


def test_training_commands_choose_the_hands():
    from training.train_cpm import build_parser, recipe_from_args

    assert recipe_from_args(build_parser().parse_args([])).hands == "right"  # cpm_light's default
    assert recipe_from_args(build_parser().parse_args(["--hands", "both"])).hands == "both"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--hands", "left"])
    from training.train_deep_prior import build_parser as dp_parser

    assert dp_parser().parse_args(["--hands", "both"]).hands == "both"
    from handpose_core.training.deep_prior_task import recipe

    assert recipe("default").hands == "right" and recipe("seed").hands == "both"


def test_hand_tally_counts_the_frames_that_took_their_own_hand():
    from handpose_core.estimator import HandPose
    from training import HandTally

    def pose(hand):
        return [HandPose(np.zeros((21, 2), np.float32), np.zeros((21, 3), np.float32), np.ones(21, np.float32),
                         HAND21.joint_names, (0.0, 0.0, 1.0, 1.0), {"handedness": hand})]

    tally = HandTally("auto")
    for poses, is_left in ((pose("left"), True), (pose("right"), True), (pose("right"), False), ([], True),
                           (pose(None), False)):  # no hand found / a both-hands network: not counted
        tally.add(poses, is_left)
    assert tally.figures() == {"handedness_accuracy": pytest.approx(2 / 3)}
    told = HandTally("known")
    told.add(pose("right"), True)
    assert told.figures() == {} and HandTally("auto").figures() == {}


def test_evaluators_tell_the_hand_or_not(tmp_path):
    """A right-hand checkpoint: the evaluators' headline tells each frame's hand (``known``), report
    how ``auto`` picks the hand, and say which protocol ran."""
    import json

    from training.evaluate_cpm import main as evaluate_cpm
    from training.evaluate_deep_prior import main as evaluate_deep_prior

    _depth_right(tmp_path)
    out = tmp_path / "ev"
    for protocol in ("known", "auto"):
        assert evaluate_deep_prior(["--checkpoint", str(tmp_path / "dp.pt"), "--n-test", "3", "--out", str(out),
                                    "--name", protocol, "--handedness", protocol, "--no-progress",
                                    "--sequences", "1", "--sequence-frames", "2"]) == 0
    known, auto = (json.loads((out / f"{p}.json").read_text()) for p in ("known", "auto"))
    assert known["hands"] == "right" and known["handedness"] == "known" and "handedness_accuracy" not in known
    assert auto["handedness"] == "auto" and 0.0 <= auto["handedness_accuracy"] <= 1.0
    for mode in ("tracked", "per_frame"):  # the streams say how often auto took the hand too
        assert 0.0 <= auto["tracking"][mode]["handedness_accuracy"] <= 1.0
        assert "handedness_accuracy" not in known["tracking"][mode]
    path = save_untrained_rgb(tmp_path / "cpm.pt", variant="cpm_tiny")
    blob = load_checkpoint(path)
    blob["meta"]["pipeline"].update(hands="right", flip_average=False)
    save_checkpoint(path, blob["model"]["name"], blob["model"]["config"], blob["state_dict"], blob["meta"])
    result = evaluate_cpm([str(path), "--frames", "4", "--pipeline-frames", "2", "--sequences", "1",
                           "--sequence-frames", "3", "--hand-free", "0", "--cache-dir", str(tmp_path / "cache"),
                           "--json", str(out / "cpm.json"), "--plot", str(out / "pck.png"),
                           "--stages-png", str(out / "stages.png"), "--handedness", "auto", "--record"])
    assert result["hands"] == "right" and result["handedness"] == "auto"
    assert 0.0 <= result["crops_auto"]["handedness_accuracy"] <= 1.0 and result["crops"]["handedness"] == "known"
    held_out = load_checkpoint(path)["meta"]["held_out"]
    assert "left hands mirrored" in held_out["protocol"] and held_out["handedness"] == "auto"
    assert held_out["crops_auto_pck@0.2"] == pytest.approx(result["crops_auto"]["pck@0.2"], abs=1e-4)


@pytest.mark.parametrize("weight, called", [(0.2, "left"), (0.0, "right")])
def test_depth_auto_weighs_how_sure_the_network_is_each_way(tmp_path, weight, called):
    """A network with a confidence head adds weight x (left run's mean confidence - right run's) to
    the spread margin; here the spreads tie, so the confidence decides (a tie calls right)."""
    est = _depth_right(tmp_path, track={"handedness_confidence_weight": weight})
    pipe = est._pipeline
    uvd = np.zeros((21, 3), np.float32)
    learned = {"right": np.full(21, 0.3, np.float32), "left": np.full(21, 0.9, np.float32)}
    result, total = pipe._as_hand(None, lambda: (uvd, None, None, 0.0, learned[pipe._hand]))
    assert pipe._hand == called and total == pytest.approx(weight * 0.6)
    # without the head (no learned confidence) the spread alone decides, as before
    result, total = pipe._as_hand(None, lambda: (uvd, None, None, 0.0, None))
    assert pipe._hand == "right" and total == 0.0
