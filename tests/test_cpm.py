"""CPM models, training task and RGB pipeline: shapes, gradients, checkpoints, bad inputs."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from handpose_core import HandPoseError, HandPoseEstimator
from handpose_core.checkpoint import load_checkpoint
from handpose_core.models import create_model, list_models
from handpose_core.models.cpm import CPM, MirrorAveraged
from handpose_core.pipelines.rgb import RGBPipeline, as_rgb, save_untrained

CPM_VARIANTS = [name for name in list_models() if name.startswith("cpm_")]


def test_variants_registered():
    assert {"cpm_openpose", "cpm_light", "cpm_tiny"} <= set(CPM_VARIANTS)


@pytest.mark.parametrize("name", CPM_VARIANTS)
def test_every_variant_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name)
    assert isinstance(model, CPM)
    size = 32 if name == "cpm_openpose" else 64  # the full VGG-19 model: keep the test fast
    x = torch.randn(2, 3, size, size)
    outs = model(x)
    assert len(outs) == model.num_stages
    for out in outs:
        assert out.shape == (2, 22, size // 8, size // 8)
        assert torch.isfinite(out).all()
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"
    zero = [n for n, p in model.named_parameters() if float(p.grad.abs().sum()) == 0.0]
    assert not zero, f"parameters with an all-zero gradient: {zero}"


def test_openpose_layout_exact():
    model = create_model("cpm_openpose")
    sd = model.state_dict()
    assert len(model(torch.zeros(1, 3, 16, 16))) == 6
    # VGG-19 through conv4_4, then conv5_1, conv5_2, conv5_3_CPM
    assert sd["conv1_1.weight"].shape == (64, 3, 3, 3)
    assert sd["conv3_4.weight"].shape == (256, 256, 3, 3)
    assert sd["conv4_4.weight"].shape == (512, 512, 3, 3)
    assert sd["conv5_2.weight"].shape == (512, 512, 3, 3)
    assert sd["conv5_3_CPM.weight"].shape == (128, 512, 3, 3)
    assert sd["conv6_1_CPM.weight"].shape == (512, 128, 1, 1)
    assert sd["conv6_2_CPM.weight"].shape == (22, 512, 1, 1)
    for t in range(2, 7):
        assert sd[f"Mconv1_stage{t}.weight"].shape == (128, 150, 7, 7)
        for i in range(2, 6):
            assert sd[f"Mconv{i}_stage{t}.weight"].shape == (128, 128, 7, 7)
        assert sd[f"Mconv6_stage{t}.weight"].shape == (128, 128, 1, 1)
        assert sd[f"Mconv7_stage{t}.weight"].shape == (22, 128, 1, 1)
    convs = [k for k in sd if k.endswith(".weight")]
    assert len(convs) == 14 + 1 + 2 + 5 * 7  # conv1_1..conv5_2, conv5_3_CPM, stage 1, 5 stages of 7
    assert all(k.rsplit(".", 1)[0] in model.layer_names() for k in sd)
    n_params = sum(p.numel() for p in model.parameters())
    assert 36e6 < n_params < 38e6


def test_light_and_full_share_output_contract():
    x = torch.randn(1, 3, 128, 128)
    light, full = create_model("cpm_light").eval(), create_model("cpm_openpose").eval()
    with torch.no_grad():
        a, b = light(x), full(x)
    assert a[-1].shape == b[-1].shape == (1, 22, 16, 16)
    assert light.stride == full.stride == 8


def test_light_recipe_and_packaged_weights_record_their_full_layout():
    """A checkpoint with config {} would silently take whatever the variant's defaults are today."""
    from handpose_core.estimator import resolve_checkpoint
    from handpose_core.models.cpm import LIGHT_CONFIG
    from handpose_core.training.cpm_task import RECIPES

    assert RECIPES["cpm_light"].model_config == LIGHT_CONFIG
    blob = load_checkpoint(resolve_checkpoint("default:rgb"))
    config = blob["model"]["config"]
    assert set(config) >= {"stages", "width", "stage_kernel", "light_base", "input_size"}
    assert config["input_size"] == blob["meta"]["input"]["size"] == blob["meta"]["codec"]["input_size"]
    model = create_model(blob["model"]["name"], **config)
    model.load_state_dict(blob["state_dict"])  # strict: every tensor's name and shape match


def test_checkpoint_round_trip_weights_only(tmp_path):
    path = save_untrained(tmp_path / "cpm.pt")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["meta"]["modality"] == "rgb"
    assert blob["meta"]["joint_names"][0] == "wrist" and len(blob["meta"]["joint_names"]) == 21
    model = create_model(blob["model"]["name"], **blob["model"]["config"])
    model.load_state_dict(blob["state_dict"])
    ref = create_model("cpm_light")
    torch.manual_seed(0)
    ref = create_model("cpm_light")
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(model.eval()(x)[-1], ref.eval()(x)[-1])
    assert path.stat().st_size < 15e6


def test_mirror_averaged_maps_are_the_mean_of_the_image_and_its_mirror(tmp_path):
    """``pipeline.flip_average``: every network call returns the mean of the maps of the image and of
    its mirror (mirrored back); CPMs trained on both hands (--hands both) set it; right-hand networks
    (the default recipe, the packaged weights, imported OpenPose weights) do not."""
    torch.manual_seed(0)
    model = create_model("cpm_tiny").eval()
    x = torch.randn(2, 3, 64, 72)  # width 72: a stride multiple, not square
    with torch.no_grad():
        plain, of_mirror = model(x), model(x.flip(-1))
        averaged = MirrorAveraged(model)(x)
    assert len(averaged) == len(plain)
    for a, p, m in zip(averaged, plain, of_mirror, strict=True):
        assert (p - m.flip(-1)).abs().max() > 1e-4  # the network is not mirror-symmetric by itself
        torch.testing.assert_close(a, (p + m.flip(-1)) / 2)
    path = save_untrained(tmp_path / "cpm.pt")
    assert not RGBPipeline(load_checkpoint(path), torch.device("cpu")).cfg["flip_average"]
    blob = load_checkpoint(path)
    blob["meta"]["pipeline"]["flip_average"] = True
    pipe = RGBPipeline(blob, torch.device("cpu"), optimize=False)
    assert isinstance(pipe.model, MirrorAveraged)  # every call: the crop pass and the scale search
    crop = np.random.default_rng(1).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = MirrorAveraged(pipe.model.model)(torch.from_numpy(pipe.spec.normalize(crop)))
    np.testing.assert_allclose(pipe._run(crop)[-1], expected[-1].numpy(), atol=1e-5)
    # the packaged network learnt right hands: its mirror is the other hand, so it is not averaged
    packaged = load_checkpoint("handpose_core/weights/cpm_light_synth.pt")["meta"]["pipeline"]
    assert packaged["hands"] == "right" and not packaged["flip_average"]
    assert packaged["refine"] == ["depth", "search"]


@pytest.fixture(scope="module")
def estimator(tmp_path_factory):
    path = save_untrained(tmp_path_factory.mktemp("ckpt") / "cpm_light.pt")
    est = HandPoseEstimator.from_checkpoint(path, device="cpu")
    # random weights: report whatever the maps say
    est._pipeline.cfg.update(min_confidence=0.0, keypoint_min_confidence=0.0)
    return est


def _frame(h=120, w=160):
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_pipeline_returns_pose_in_image_pixels(estimator):
    img = _frame()
    pipe = estimator._pipeline
    pipe.roi = (40, 20, 120, 100)
    try:
        poses = estimator.predict(img)
    finally:
        pipe.roi = None
    assert len(poses) == 1
    p = poses[0]
    assert p.uv_px.shape == (21, 2) and p.uv_px.dtype == np.float32
    assert p.confidence.shape == (21,) and np.all((p.confidence >= 0) & (p.confidence <= 1))
    assert np.all(np.isnan(p.xyz_m))  # no depth given
    x0, y0, x1, y1 = p.box_px
    assert (x0, y0, x1, y1) == pytest.approx((40, 20, 120, 100))
    assert np.all((p.uv_px >= [x0 - 1, y0 - 1]) & (p.uv_px <= [x1 + 1, y1 + 1]))
    assert p.extras["box_source"] == "roi"
    dbg = estimator.debug_image(img, poses)
    assert dbg.shape == img.shape and dbg.dtype == np.uint8
    assert not np.array_equal(dbg, img)


def test_pipeline_depth_lookup_with_holes(estimator):
    img = _frame(96, 128)
    depth = np.full((96, 128), 500, np.uint16)
    depth[1::2, :] = 0  # every other row is a hole: the median of the valid ones is still 500 mm
    intr = (100.0, 100.0, 64.0, 48.0)
    poses = estimator.predict(img, intr, depth=depth)
    assert len(poses) == 1
    xyz = poses[0].xyz_m
    assert np.allclose(xyz[:, 2], 0.5, atol=1e-6)
    uv = poses[0].uv_px
    assert np.allclose(xyz[:, 0], (uv[:, 0] - 64.0) * 0.5 / 100.0, atol=1e-5)
    # no valid depth anywhere: NaN, not 0
    estimator.reset()
    poses = estimator.predict(img, intr, depth=np.zeros((96, 128), np.float32))
    assert len(poses) == 1 and np.all(np.isnan(poses[0].xyz_m))


def test_pipeline_tracking_box_follows_keypoints(estimator):
    pipe = estimator._pipeline
    pipe.reset()
    old = dict(pipe.cfg)
    pipe.cfg["track_min_confidence"] = 0.0
    try:
        img = _frame()
        first = estimator.predict(img)
        second = estimator.predict(img)
    finally:
        pipe.cfg.update(old)
        pipe.reset()
    assert first[0].extras["box_source"] == "search"
    assert second[0].extras["box_source"] == "track"


def test_pipeline_refine_reruns_the_crop_on_the_box_its_keypoints_call_for(estimator):
    """A listed source's crop runs twice: the second on the first pass's fitted box, which is the
    box the pose reports; an unlisted source runs once; unknown sources are a clear error."""
    pipe = estimator._pipeline
    old = dict(pipe.cfg)
    calls = []
    real = pipe._predict_box

    def spy(rgb, box, hand=None):
        calls.append((box, real(rgb, box, hand)))
        return calls[-1][1]

    pipe._predict_box = spy
    try:
        img = _frame()
        pipe.cfg.update(refine=["search"], track_min_confidence=2.0)  # never tracks: every frame searches
        poses = estimator.predict(img)
        assert len(calls) == 2
        fitted = pipe._fitted_box(calls[0][1][0]).clipped(img.shape[1], img.shape[0])
        assert calls[1][0] == fitted
        assert poses[0].box_px == pytest.approx(fitted.xyxy)
        np.testing.assert_array_equal(poses[0].uv_px, calls[1][1][0]["uv"].astype(np.float32))
        calls.clear()
        pipe.cfg.update(refine=["depth"])
        estimator.predict(img)
        assert len(calls) == 1
    finally:
        pipe._predict_box = real
        pipe.cfg.clear()
        pipe.cfg.update(old)
        pipe.reset()
    with pytest.raises(HandPoseError, match="refine: unknown box sources"):
        RGBPipeline(_packaged_blob_with(refine=["roi"]), torch.device("cpu"))


def _packaged_blob_with(**pipeline):
    blob = load_checkpoint("handpose_core/weights/cpm_light_synth.pt")
    blob["meta"]["pipeline"] = {**blob["meta"]["pipeline"], **pipeline}
    return blob


@pytest.mark.parametrize("shape,dtype", [((60, 80), np.uint8), ((60, 80, 1), np.uint8), ((60, 80, 4), np.uint8),
                                         ((5, 7, 3), np.uint8), ((1, 1, 3), np.uint8)])
def test_pipeline_accepts_grey_rgba_and_tiny_images(estimator, shape, dtype):
    img = np.full(shape, 90, dtype)
    poses = estimator.predict(img)
    estimator.reset()
    assert isinstance(poses, list)
    for p in poses:
        assert p.uv_px.shape == (21, 2) and np.all(np.isfinite(p.uv_px))


@pytest.mark.parametrize("image,match", [
    (np.zeros((60, 80), np.uint16), "uint8"),
    (np.zeros((60, 80, 3), np.float32), "uint8"),
    (np.zeros((60, 80, 2), np.uint8), r"\(H, W, 3\)"),
    (np.zeros((2, 60, 80, 3), np.uint8), r"\(H, W, 3\)"),
])
def test_pipeline_rejects_bad_images(estimator, image, match):
    with pytest.raises(HandPoseError, match=match):
        estimator.predict(image)


def test_pipeline_rejects_misaligned_depth(estimator):
    with pytest.raises(HandPoseError, match="aligned"):
        estimator.predict(_frame(), (100, 100, 80, 60), depth=np.zeros((10, 10), np.uint16))


def test_roi_outside_image_gives_no_hand(estimator):
    pipe = estimator._pipeline
    pipe.roi = (1000, 1000, 1100, 1100)
    try:
        assert estimator.predict(_frame()) == []
        pipe.roi = (-50, -50, 30, 30)  # partly inside: clipped, still a pose
        poses = estimator.predict(_frame())
        assert len(poses) == 1
        x0, y0, x1, y1 = poses[0].box_px
        assert x0 >= -0.5 and y0 >= -0.5
    finally:
        pipe.roi = None


def test_as_rgb_conversions():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(as_rgb(grey)[..., 1], grey)
    rgba = np.dstack([np.full((3, 4), c, np.uint8) for c in (1, 2, 3, 4)])
    assert np.array_equal(as_rgb(rgba)[0, 0], [1, 2, 3])


def test_fp16_on_cpu_is_a_clear_error(tmp_path):
    blob = load_checkpoint(save_untrained(tmp_path / "c.pt"))
    with pytest.raises(HandPoseError, match="CUDA"):
        RGBPipeline(blob, torch.device("cpu"), "fp16")


def test_training_task_batches_loss_and_determinism(tmp_path):
    from handpose_core.training.cpm_task import RECIPES, CPMTask, build_crop_set

    data = build_crop_set("synthetic", seed=5, frames=6, size=96, margin=2.2)
    assert data.crops.shape == (6, 96, 96, 3) and data.uv.shape == (6, 21, 2)
    task = CPMTask(RECIPES["cpm_tiny"], train_data=data)
    x1, y1 = next(task.batches(7, 4, seed=3))
    x2, y2 = next(task.batches(7, 4, seed=3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)  # batch of a step depends on (seed, step) only
    assert x1.shape == (4, 3, 64, 64) and y1.shape == (4, 22, 8, 8)
    assert float(y1[:, :21].amax()) > 0.5  # the peaks are inside the crop
    model = task.build_model()
    loss, scalars = task.loss(model, (x1, y1), torch.device("cpu"))
    assert set(scalars) == {"loss_stage1", "loss_stage2"}
    assert float(loss.detach()) == pytest.approx(sum(scalars.values()), rel=1e-5)
    meta = task.checkpoint_meta()
    assert meta["modality"] == "rgb" and meta["input"]["size"] == 64
    assert meta["pipeline"]["refine"] == ["depth", "search"]  # trained on label-fitted boxes
    # foreground weighting: each pixel's squared error weighs 1 + fg_weight * (target peak height)
    weighted = CPMTask(dataclasses.replace(RECIPES["cpm_tiny"], fg_weight=4.0), train_data=data)
    stages = model(x1)
    expected = sum(float(((1 + 4.0 * y1[:, :21].amax(1, keepdim=True)) * (s.detach() - y1) ** 2).mean())
                   for s in stages)
    w_loss, _ = weighted.loss(model, (x1, y1), torch.device("cpu"))
    assert float(w_loss.detach()) == pytest.approx(expected, rel=1e-4)
    assert float(w_loss.detach()) > float(loss.detach())


def test_colour_jitter_draws_per_crop_and_stays_in_range():
    from handpose_core.training.cpm_task import AugmentConfig, colour_jitter

    crops = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), np.uint8).repeat(8, axis=0)
    out = colour_jitter(crops, np.random.default_rng(1), AugmentConfig())
    assert out.shape == crops.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    means = out.mean(axis=(1, 2, 3))
    assert np.ptp(means) > 5.0  # eight copies of one crop, eight different brightnesses
    again = colour_jitter(crops, np.random.default_rng(1), AugmentConfig())
    np.testing.assert_array_equal(out, again)
    # no jitter at all: the crops come back unchanged (as float)
    still = AugmentConfig(brightness=0.0, contrast=0.0, gain=0.0, saturation=0.0, noise_std=0.0, blur_prob=0.0,
                          grey_prob=0.0)
    np.testing.assert_allclose(colour_jitter(crops, np.random.default_rng(2), still), crops, atol=1e-3)
    # greyscale always: every pixel's channels equal
    grey = colour_jitter(crops, np.random.default_rng(3), dataclasses.replace(still, grey_prob=1.0))
    np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-3)


def test_tiny_training_run_writes_loadable_checkpoint(tmp_path):
    from training.train_cpm import main

    out = tmp_path / "run"
    result = main(["--recipe", "cpm_tiny", "--steps", "3", "--frames", "8", "--eval-frames", "4", "--out", str(out),
                   "--cache-dir", str(tmp_path / "cache"), "--workers", "1", "--no-progress",
                   "--export", str(tmp_path / "exported.pt")])
    assert result["step"] == 3 and np.isfinite(result["final_loss"])
    blob = load_checkpoint(tmp_path / "exported.pt")
    assert "--recipe cpm_tiny" in blob["meta"]["provenance"]["command"]
    assert blob["meta"]["held_out"]["frames"] == 4 and 0.0 <= blob["meta"]["held_out"]["pck@0.2"] <= 1.0
    est = HandPoseEstimator.from_checkpoint(tmp_path / "exported.pt", device="cpu")
    assert est.modality == "rgb"


def test_hand_free_crops_keep_every_joint_out_of_the_box():
    from handpose_core.codecs.belief_maps import warp_points
    from handpose_core.training.cpm_task import NEGATIVE_CLEARANCE, negative_crop

    rgb = np.zeros((480, 640, 3), np.uint8)
    uv = np.array([[100.0, 100.0], [140.0, 160.0], [120.0, 130.0]])  # a 60 px hand, top left
    valid = np.ones(3, bool)
    for seed in range(20):
        crop, warp = negative_crop(rgb, uv, valid, 64, 2.2, np.random.default_rng(seed))
        assert crop.shape == (64, 64, 3)
        side = 64 / np.hypot(*warp[0, :2])  # frame pixels across the crop
        centre = warp_points(np.array([[31.5, 31.5]]), warp, inverse=True)[0]
        extent = side / 2.2
        assert 0.7 * 60 - 1e-6 <= extent <= 3.0 * 60 + 1e-6
        assert np.abs(uv - centre).max(axis=1).min() > NEGATIVE_CLEARANCE * extent
    # a hand that fills the frame leaves no room for a hand-free box
    assert negative_crop(rgb[:100, :100], uv - 80, valid, 64, 2.2, np.random.default_rng(0)) is None


def test_hand_free_share_of_batches_has_all_background_targets():
    from handpose_core.training.cpm_task import RECIPES, CPMTask, build_crop_set

    data = build_crop_set("synthetic", seed=5, frames=6, size=96, margin=2.2)
    free = build_crop_set("synthetic", seed=5, frames=6, size=96, margin=2.2, negative=True)
    assert len(free) >= 1 and not free.valid.any() and np.isnan(free.uv).all()
    base = RECIPES["cpm_tiny"]
    with pytest.raises(HandPoseError, match="negatives"):
        CPMTask(dataclasses.replace(base, data=dataclasses.replace(base.data, negative_share=0.5)), train_data=data)
    recipe = dataclasses.replace(base, data=dataclasses.replace(base.data, negatives=6, negative_share=0.5))
    task = CPMTask(recipe, train_data=data, negatives=free)
    x, y = next(task.batches(0, 64, seed=1))
    x2, y2 = next(task.batches(0, 64, seed=1))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    peak = y[:, :21].amax(dim=(1, 2, 3))
    empty = peak == 0
    assert 16 <= int(empty.sum()) <= 48  # about half, drawn per item
    assert torch.all(y[empty, 21] == 1.0) and torch.all(peak[~empty] > 0.5)
    # without hand-free crops a recipe's batches are what they were: the extra draws are skipped
    plain = CPMTask(base, train_data=data)
    rng = np.random.default_rng([1, 0])
    xp, yp = plain.make_batch(rng.integers(0, len(data), 8), rng)
    xq, yq = next(plain.batches(0, 8, seed=1))
    assert torch.equal(xp, xq) and torch.equal(yp, yq)


class _FlatMaps(torch.nn.Module):
    """Every keypoint map constant at ``level`` (one stage): mean joint confidence = level."""

    def __init__(self, level: float, k: int = 21, m: int = 8) -> None:
        super().__init__()
        self.level, self.k, self.m = level, k, m

    def forward(self, x):
        maps = torch.full((len(x), self.k + 1, self.m, self.m), self.level)
        maps[:, -1] = 1.0 - self.level
        return [maps]


@pytest.mark.parametrize("level, fp02, fp03", [(0.1, 0.0, 0.0), (0.25, 1.0, 0.0), (0.5, 1.0, 1.0)])
def test_hand_free_false_positive_rate_counts_confident_crops(level, fp02, fp03):
    from handpose_core.codecs.belief_maps import BeliefMapCodec, InputSpec
    from handpose_core.training.cpm_task import build_crop_set, evaluate_hand_free

    free = build_crop_set("synthetic", seed=5, frames=4, size=96, margin=2.2, negative=True)
    r = evaluate_hand_free(_FlatMaps(level), BeliefMapCodec(input_size=64, stride=8, sigma_px=4.0),
                           InputSpec(size=64), free, torch.device("cpu"))
    assert r["crops"] == len(free)
    assert r["mean_confidence"] == pytest.approx(level, abs=1e-4)
    assert r["false_positive@0.2"] == fp02 and r["false_positive@0.3"] == fp03


def test_evaluate_cpm_writes_every_protocol(tmp_path):
    import json

    from training.evaluate_cpm import main

    ckpt = save_untrained(tmp_path / "tiny.pt", variant="cpm_tiny")
    shutil.copyfile(ckpt, ckpt.with_name("untouched.pt"))
    out = tmp_path / "eval"
    main([str(ckpt), "--frames", "4", "--pipeline-frames", "2", "--sequences", "2", "--sequence-frames", "3",
          "--hand-free", "4", "--cache-dir", str(tmp_path / "cache"), "--json", str(out / "e.json"),
          "--plot", str(out / "pck.png"), "--stages-png", str(out / "stages.png"), "--record"])
    result = json.loads((out / "e.json").read_text())
    # --record: the headline figures go into the checkpoint's meta, the weights stay as they were
    before, after = load_checkpoint(ckpt.with_name("untouched.pt")), load_checkpoint(ckpt)
    held_out = after["meta"]["held_out"]
    assert held_out["frames"] == 4 and held_out["pck@0.2"] == pytest.approx(result["crops"]["pck@0.2"], abs=1e-4)
    assert held_out["tracking_pck@0.2"] == pytest.approx(result["tracking"]["pck@0.2"], abs=1e-4)
    assert held_out["command"].startswith("python -m training.evaluate_cpm " + str(ckpt))
    assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    assert result["crops"]["frames"] == 4 and 0.0 <= result["crops"]["pck@0.2"] <= 1.0
    assert set(result) >= {"pipeline_depth", "pipeline_search", "tracking", "hand_free"}
    # full frames also scored per prior of the fingers; the two frames' priors, as the generator drew them
    from handpose_core.data.synthetic import SyntheticHands

    arts = [SyntheticHands(seed=result["held_out"]["seed"]).sample_params(i).articulation for i in range(2)]
    expected = {g for g, hit in (("gestures", any(a != "random" for a in arts)), ("random", "random" in arts)) if hit}
    assert set(result["pipeline_depth"]["by_articulation"]) == expected
    assert all(0.0 <= v <= 1.0 for v in result["pipeline_search"]["by_articulation"].values())
    track = result["tracking"]
    assert track["frames"] == 6 and len(track["per_sequence_epe_px"]) == 2
    assert 0.0 <= track["detected"] <= 1.0 and 0.0 <= track["off_hand"] <= 1.0
    free = result["hand_free"]
    assert 1 <= free["crops"] <= 4 and 0.0 <= free["false_positive@0.3"] <= free["false_positive@0.2"] <= 1.0
    assert (out / "pck.png").stat().st_size > 0 and (out / "stages.png").stat().st_size > 0
