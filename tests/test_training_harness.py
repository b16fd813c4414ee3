"""The shared training harness: resume reproduces an uninterrupted run; LR policies are the documented ones."""

import copy
import json

import numpy as np
import pytest
import torch

from handpose_core.checkpoint import load_checkpoint
from handpose_core.codecs.depth_crop import DepthCropCodec
from handpose_core.training.deep_prior_task import DeepPriorTask, recipe
from handpose_core.training.harness import TrainConfig, _load_optimizer_state, _make_optimizer, train
from handpose_core.training.lr import lr_at


def _task():
    rng = np.random.default_rng(0)
    crops = rng.uniform(-1, 1, (40, 128, 128)).astype(np.float16)
    labels = (rng.normal(size=(40, 63)) * 0.3).astype(np.float32)
    rcp = recipe("default")
    rcp.model_config = {"fc": (32, 32), "dropout": 0.0}
    return DeepPriorTask(rcp, crops, labels, DepthCropCodec())


def _cfg(out, steps, resume=False):
    # A fixed LR: with cosine the 2-step run's schedule would differ from the 4-step one's by design.
    return TrainConfig(steps=steps, batch_size=4, lr=1e-3, lr_policy="fixed", out_dir=str(out), resume=resume,
                       ckpt_every=2,
                       tensorboard=False, progress=False, device="cpu")


def test_resume_equals_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    train(_task(), _cfg(tmp_path / "a", 4))
    train(_task(), _cfg(tmp_path / "b", 2))
    result = train(_task(), _cfg(tmp_path / "b", 4, resume=True))
    a = load_checkpoint(tmp_path / "a" / "model.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "b" / "model.pt")["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    assert result["step"] == 4
    assert json.loads((tmp_path / "b" / "result.json").read_text())["step"] == 4
    # the checkpoint says how it was made: the first segment's hand-over step and limits
    training = load_checkpoint(tmp_path / "b" / "model.pt")["meta"]["training"]
    assert [(s["step"], s["steps"]) for s in training["resumed_from"]] == [(2, 2)]
    assert training["resumed_from"][0]["elapsed_s"] <= training["elapsed_s"]
    assert "resumed_from" not in load_checkpoint(tmp_path / "a" / "model.pt")["meta"]["training"]


def test_checkpoint_meta_records_recipe_and_training(tmp_path):
    train(_task(), _cfg(tmp_path / "c", 2))
    blob = torch.load(tmp_path / "c" / "model.pt", weights_only=True)
    assert blob["meta"]["modality"] == "depth"
    assert blob["meta"]["training"]["config"]["steps"] == 2
    assert "optimizer" not in blob
    assert "optimizer" in torch.load(tmp_path / "c" / "last.pt", weights_only=True)


def test_adam_is_fused_and_takes_the_plain_optimizers_state():
    """The fused AdamW makes the plain one's updates, and resumes from its state (a last.pt of before)."""
    torch.manual_seed(0)
    start = torch.randn(6, 4)
    grads = [torch.randn(6, 4) for _ in range(4)]
    cfg = TrainConfig(optimizer="adam", lr=1e-2, weight_decay=1e-2)
    fused_w, plain_w = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    fused, plain = _make_optimizer([fused_w], cfg), torch.optim.AdamW([plain_w], lr=1e-2, weight_decay=1e-2)
    assert fused.defaults["fused"] is True
    for g in grads[:2]:
        for w, opt in ((fused_w, fused), (plain_w, plain)):
            w.grad = g.clone()
            opt.step()
    torch.testing.assert_close(fused_w.detach(), plain_w.detach())
    assert not torch.equal(fused_w.detach(), start)
    # the plain optimizer's state (as older checkpoints hold it) continues in a fused one
    resumed_w = torch.nn.Parameter(plain_w.detach().clone())
    resumed = _make_optimizer([resumed_w], cfg)
    _load_optimizer_state(resumed, copy.deepcopy(plain.state_dict()))  # a copy, as from a file
    assert resumed.param_groups[0]["fused"] is True
    for g in grads[2:]:
        for w, opt in ((resumed_w, resumed), (plain_w, plain)):
            w.grad = g.clone()
            opt.step()
    torch.testing.assert_close(resumed_w.detach(), plain_w.detach())


def test_caffe_inv_policy_matches_the_formula():
    for step in (0, 1, 100, 40000):
        expected = 5e-6 * (1 + 1e-4 * step) ** -0.75
        assert lr_at(step, 5e-6, "inv", gamma=1e-4, power=0.75) == pytest.approx(expected, rel=1e-12)


def test_cosine_policy_warms_up_and_decays():
    lrs = [lr_at(s, 1e-3, "cosine", total_steps=100, warmup_steps=10) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] < 1e-4
    with pytest.raises(ValueError, match="unknown lr policy"):
        lr_at(0, 1.0, "bogus")


def test_seed_recipe_is_the_notebooks():
    rcp = recipe("seed")
    assert rcp.model == "deep_prior_seed" and rcp.loss == "caffe_euclidean" and not rcp.augment
    cfg = rcp.train
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.lr_policy, cfg.lr_gamma, cfg.lr_power, cfg.batch_size) == (
        "sgd", 5e-6, 0.9, "inv", 1e-4, 0.75, 64)


def test_cpu_bf16_only_where_the_cpu_has_it(monkeypatch):
    from handpose_core.training import harness

    assert harness.use_cpu_bf16(False) is False
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert harness.use_cpu_bf16(True) is False  # oneDNN would emulate it: slower than float32
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert harness.use_cpu_bf16(True) is True
