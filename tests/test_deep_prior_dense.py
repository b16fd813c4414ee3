"""DeepPrior's dense head: anchor voting, training through the task's loss, inference rewrites."""

import numpy as np
import pytest
import torch
from torch import nn

from handpose_core import HandPoseError
from handpose_core.codecs.depth_crop import DepthCropCodec
from handpose_core.models import create_model
from handpose_core.models.deep_prior import DenseHead
from handpose_core.models.inference import load_for_inference
from handpose_core.training.deep_prior_task import DeepPriorTask, recipe, synthetic_crops


def test_a_joint_is_the_weighted_mean_of_its_cells_votes():
    head = DenseHead((16, 32, 64, 128), num_joints=2, size=8, width=32, input_size=128)
    head.vote = nn.Identity()  # feed the (N, 4J, S, S) votes by hand
    votes = torch.zeros(1, 4, 2, 8, 8)
    votes[0, 0, 0] = -1e4  # joint 0: all weight on cell (row 2, column 5)
    votes[0, 0, 0, 2, 5] = 0.0
    votes[0, 1:3, 0, 2, 5] = torch.tensor([0.05, -0.02])  # its offset
    votes[0, 3, 0, 2, 5] = 0.3  # its depth
    votes[0, 3, 1] = -0.4  # joint 1: even weights over every cell, no offsets
    joints, surround = head(votes.reshape(1, 8, 8, 8))
    centre = lambda i: (i + 0.5) / 8 * 2 - 1  # noqa: E731
    torch.testing.assert_close(surround[0, 0], torch.tensor([centre(5), centre(2)]))
    torch.testing.assert_close(joints[0, 0], torch.tensor([centre(5) + 0.05, centre(2) - 0.02, 0.3]))
    torch.testing.assert_close(joints[0, 1], torch.tensor([0.0, 0.0, -0.4]), atol=1e-6, rtol=0)


def test_dense_size_must_match_a_stage_of_the_backbone():
    with pytest.raises(HandPoseError, match="dense_size must be one of"):
        create_model("deep_prior_res", head="dense", dense_size=12)
    with pytest.raises(HandPoseError, match="128 px"):
        create_model("deep_prior_res", head="dense", dense_size=16, input_size=96)
    with pytest.raises(HandPoseError, match="unknown DeepPrior head"):
        create_model("deep_prior_res", head="heatmap")
    # the decoder reads each stage's last block, however many blocks a stage has
    for size, blocks in ((8, (1, 1, 1, 1)), (32, (2, 1, 2, 1))):
        model = create_model("deep_prior_res", head="dense", dense_size=size, blocks=blocks).eval()
        with torch.no_grad():
            assert model(torch.zeros(1, 1, 128, 128)).shape == (1, 21, 3)


@pytest.fixture(scope="module")
def small_task(tmp_path_factory):
    codec = DepthCropCodec()
    data = synthetic_crops(16, 3, codec, tmp_path_factory.mktemp("cache"), workers=1, progress=False)
    rcp = recipe("default")
    rcp.model_config = {**rcp.model_config, "head": "dense", "dense_size": 16}
    return DeepPriorTask(rcp, data, codec=codec, pca_samples=16)


def test_task_loss_trains_every_parameter_of_the_dense_model(small_task):
    torch.manual_seed(0)
    model = small_task.build_model()
    assert model.head == "dense"
    model.train()
    batch = next(small_task.batches(0, 8, seed=0))
    loss, logs = small_task.loss(model, batch, torch.device("cpu"))
    assert torch.isfinite(loss) and "confidence_bce" in logs
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the pose it outputs is the dense head's, with the confidence column after it
    model.eval()
    x = batch[0][:2]
    with torch.no_grad():
        dense, _, global_joints, _ = model.forward_dense(model.forward_features(x))
        out = model(x)
    assert out.shape == (2, 21, 4)
    torch.testing.assert_close(out[..., :3], dense)
    assert not torch.allclose(dense, global_joints)


def test_folded_and_onnx_models_give_the_dense_heads_joints():
    torch.manual_seed(0)
    model = create_model("deep_prior_res", head="dense", dense_size=16, confidence=True, bottleneck=30)
    with torch.no_grad():  # non-trivial BatchNorm statistics and votes, so folding has work to do
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        model.dense.vote.weight.normal_(0.0, 0.1)
    blob = {"model": {"name": "deep_prior_res", "config": {"head": "dense", "dense_size": 16, "confidence": True,
                                                           "bottleneck": 30}},
            "state_dict": model.state_dict(), "meta": {"modality": "depth"}}
    x = torch.rand(3, 1, 128, 128) * 2 - 1
    model.eval()
    with torch.no_grad():
        expected = model(x)
        for backend in ("torch", "onnxruntime"):
            run, _ = load_for_inference(blob, torch.device("cpu"), backend=backend, threads=1)
            got = torch.as_tensor(np.asarray(run(x)))
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_dense_votes_draws_a_row_per_frame_and_refuses_a_pca_checkpoint(tmp_path, capsys):
    import cv2

    from handpose_core.pipelines.depth import save_untrained
    from training import dense_votes

    dense = save_untrained(tmp_path / "dense.pt", model_config={"head": "dense"})
    out = tmp_path / "votes.png"
    assert dense_votes.main(["--checkpoint", str(dense), "--out", str(out), "--frames", "2",
                             "--articulation", "any"]) == 0
    image = cv2.imread(str(out))
    side = 128 * dense_votes.SCALE
    assert image.shape == (2 * side, 3 * side, 3)
    assert "2 frames of seed 1000" in capsys.readouterr().out
    plain = save_untrained(tmp_path / "pca.pt")
    assert dense_votes.main(["--checkpoint", str(plain), "--out", str(tmp_path / "no.png")]) == 2
    assert "has no dense head" in capsys.readouterr().err and not (tmp_path / "no.png").exists()
    with pytest.raises(SystemExit) as exc:
        dense_votes.main(["--checkpoint", str(dense), "--frames", "0"])
    assert exc.value.code == 2 and "--frames must be at least 1" in capsys.readouterr().err
