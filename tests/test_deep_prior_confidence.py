"""DeepPrior's confidence head: model output, training loss, post-hoc fit, pipeline, evaluation figures."""

import json

import numpy as np
import pytest
import torch

from handpose_core import HandPoseEstimator
from handpose_core.checkpoint import load_checkpoint, save_checkpoint
from handpose_core.codecs.depth_crop import DepthCropCodec
from handpose_core.data.synthetic import SynthConfig, SyntheticHands
from handpose_core.models import create_model
from handpose_core.pipelines.depth import joint_confidence, save_untrained
from handpose_core.training.deep_prior_task import (
    DeepPriorTask,
    confidence_loss,
    fit_confidence,
    recipe,
    synthetic_crops,
)
from handpose_core.training.metrics import auroc, confidence_figures


def test_head_adds_a_probability_column_and_never_trains_the_pose():
    torch.manual_seed(0)
    model = create_model("deep_prior_res", num_joints=21, bottleneck=30, confidence=True)
    plain = create_model("deep_prior_res", num_joints=21, bottleneck=30)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("confidence.")})
    model.eval(), plain.eval()
    x = torch.rand(3, 1, 128, 128) * 2 - 1
    out = model(x)
    assert out.shape == (3, 21, 4)
    assert torch.all((out[..., 3] > 0) & (out[..., 3] < 1))
    torch.testing.assert_close(out[..., :3], plain(x))  # the joints are the headless network's
    # its loss reaches the head only
    joints, logits = model.forward_pose(model.forward_features(x))
    confidence_loss(logits, joints, torch.zeros_like(joints), 150.0, 20.0).backward()
    for name, p in model.named_parameters():
        has_grad = p.grad is not None and p.grad.abs().sum() > 0
        assert has_grad == name.startswith("confidence."), name


def test_confidence_loss_targets_the_joints_within_the_distance():
    pred = torch.zeros(1, 3, 3)
    labels = torch.tensor([[[0.1, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 0.05]]])  # 15, 30, 7.5 mm at 150 mm/unit
    big = torch.tensor([[20.0, -20.0, 20.0]])  # confident exactly where the joints are within 20 mm
    assert confidence_loss(big, pred, labels, 150.0, 20.0) < 1e-6
    assert confidence_loss(-big, pred, labels, 150.0, 20.0) > 10.0


@pytest.fixture(scope="module")
def small_task(tmp_path_factory):
    codec = DepthCropCodec()
    data = synthetic_crops(24, 5, codec, tmp_path_factory.mktemp("cache"), workers=1, progress=False)
    return DeepPriorTask(recipe("default"), data, codec=codec, pca_samples=40)


def test_default_recipe_trains_the_head_beside_the_pose(small_task):
    model = small_task.build_model()
    assert model.confidence is not None
    assert small_task.checkpoint_meta()["inference"]["confidence_mm"] == 20.0
    loss, logs = small_task.loss(model, next(small_task.batches(0, 4, 0)), torch.device("cpu"))
    assert "confidence_bce" in logs and 0 < logs["confidence_bce"] < loss.item()


def test_fit_confidence_changes_the_head_alone(small_task):
    rcp = recipe("default")
    rcp.confidence = False
    headless = DeepPriorTask(rcp, small_task.data, codec=DepthCropCodec(), pca_samples=40).build_model()
    model = create_model("deep_prior_res", **{**small_task.model_config})
    model.load_state_dict(headless.state_dict(), strict=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = small_task.loss(model.eval(), next(small_task.batches(0, 16, 3)), torch.device("cpu"))[1]
    fit = fit_confidence(model, small_task, steps=30, batch_size=16, lr=3e-3, seed=3, progress=False)
    after = model.state_dict()
    for name, value in before.items():  # BatchNorm's running statistics included
        assert torch.equal(value, after[name]) != name.startswith("confidence."), name
    assert fit["steps"] == 30 and fit["final_bce"] < first["confidence_bce"]


def test_pipeline_publishes_the_geometric_times_the_learned_confidence(tmp_path):
    path = save_untrained(tmp_path / "dp.pt")
    blob = load_checkpoint(path)
    config = {**blob["model"]["config"], "confidence": True}
    model = create_model(blob["model"]["name"], **config)
    model.load_state_dict(blob["state_dict"], strict=False)
    with torch.no_grad():  # a head that says 0.25 everywhere: sigmoid(-ln 3)
        model.confidence[-1].weight.zero_()
        model.confidence[-1].bias.fill_(-np.log(3.0))
    meta = {**blob["meta"], "inference": {"passes": 2, "confidence_mm": 20.0}}
    save_checkpoint(tmp_path / "conf.pt", blob["model"]["name"], config, model.state_dict(), meta)
    sample = SyntheticHands(SynthConfig(render_rgb=False), seed=4)[0]
    for backend in ("torch", "onnxruntime"):
        try:
            est = HandPoseEstimator.from_checkpoint(tmp_path / "conf.pt", device="cpu", backend=backend,
                                                    tracking=False)
        except Exception as exc:  # onnxruntime is optional
            if backend == "onnxruntime":
                pytest.skip(f"onnxruntime: {exc}")
            raise
        pose = est.predict(sample.depth_mm, sample.intrinsics)[0]
        expected = joint_confidence(pose.extras["uvd_norm"]) * 0.25
        np.testing.assert_allclose(pose.confidence, expected, atol=1e-5)
        assert pose.confidence.shape == (21,) and pose.xyz_m.shape == (21, 3)


def test_auroc_and_confidence_figures():
    assert auroc(np.array([True, True, False, False]), np.array([0.9, 0.8, 0.2, 0.1])) == 1.0
    assert auroc(np.array([True, False]), np.array([0.5, 0.5])) == 0.5
    assert np.isnan(auroc(np.array([True, True]), np.array([0.1, 0.2])))
    rng = np.random.default_rng(0)
    errors = rng.uniform(0, 60, (400, 5))
    conf = np.clip(1.0 - errors / 40.0, 0.0, 1.0)  # a confidence that knows the error exactly
    fig = confidence_figures(conf, errors, 20.0)
    assert fig["joint_auroc"] == pytest.approx(1.0) and fig["frame_auroc"] == pytest.approx(1.0)
    assert sum(b["joints"] for b in fig["calibration"]) == 2000
    kept = [r["frames_within_40mm"] for r in fig["coverage"]]
    assert fig["coverage"][0]["kept"] == 1.0 and kept == sorted(kept)  # fewer frames, surer ones
    noise = confidence_figures(rng.uniform(size=(400, 5)), errors, 20.0)
    assert abs(noise["joint_auroc"] - 0.5) < 0.06


def test_fit_confidence_command_and_evaluation(tmp_path):
    from training.evaluate_deep_prior import main as evaluate_main
    from training.train_deep_prior import main as train_main

    path = save_untrained(tmp_path / "dp.pt")
    blob = load_checkpoint(path)
    blob["meta"]["recipe"] = {"hands": "both", "passes": 1}
    save_checkpoint(path, blob["model"]["name"], blob["model"]["config"], blob["state_dict"], blob["meta"])
    args = ["--fit-confidence", str(path), "--n-train", "20", "--cache-dir", str(tmp_path / "cache"), "--workers", "1",
            "--steps", "5", "--batch-size", "8", "--confidence-mm", "25", "--out", str(tmp_path / "fit"),
            "--no-progress"]
    assert train_main(args) == 0
    fitted = load_checkpoint(tmp_path / "fit" / "model.pt")
    assert fitted["model"]["config"]["confidence"] is True
    assert fitted["meta"]["inference"]["confidence_mm"] == 25.0 and fitted["meta"]["confidence"]["steps"] == 5
    assert all(torch.equal(fitted["state_dict"][k], v) for k, v in blob["state_dict"].items())
    assert evaluate_main(["--checkpoint", str(tmp_path / "fit" / "model.pt"), "--n-test", "4", "--out",
                          str(tmp_path / "ev"), "--no-progress"]) == 0
    figures = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert figures["confidence"]["within_mm"] == 25.0 and len(figures["confidence"]["coverage"]) > 1
    assert (tmp_path / "ev" / "eval_confidence.png").stat().st_size > 1000
    # a checkpoint that is not DeepPrior's is refused before any data is made
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, "cpm", {}, {}, {"modality": "rgb"})
    assert train_main(["--fit-confidence", str(bad), "--out", str(tmp_path / "x")]) == 2


def test_debug_crop_draws_the_unsure_joints_red():
    from handpose_core.keypoints import HAND21
    from handpose_core.pipelines.depth import draw_crop

    crop = np.ones((64, 64), np.float32)  # empty: black background
    uv = np.stack([np.linspace(8, 56, 21), np.full(21, 32.0)], axis=1)
    conf = np.ones(21, np.float32)
    conf[4] = 0.2  # the thumb tip
    img = draw_crop(crop, uv, HAND21, 3, conf)

    def at(j: int) -> tuple:  # the image pixel at joint j's centre
        x, y = ((uv[j] + 0.5) * 3 - 0.5).round().astype(int)
        return tuple(img[y, x])

    assert at(4) == (255, 40, 40) and at(0) == (255, 255, 255)
    np.testing.assert_array_equal(draw_crop(crop, uv, HAND21, 3), draw_crop(crop, uv, HAND21, 3, np.ones(21)))
