"""The one training loop shared by every model family (DeepPrior, CPM).

A model family supplies a :class:`TrainTask`: its model, a deterministic batch source keyed by
step (so a resumed run sees the same batches as an uninterrupted one), a loss, and the metadata
its checkpoint must carry. The harness owns everything else: device and mixed precision,
optimizer and LR policy, progress bar, TensorBoard scalars, periodic evaluation, checkpoints
(``last.pt`` with optimizer state for resume, ``model.pt`` for inference) and seeding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from handpose_core.atomic import write_json
from handpose_core.checkpoint import load_checkpoint, save_checkpoint
from handpose_core.estimator import resolve_device
from handpose_core.training.lr import lr_at

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings; every model family's named recipes are instances of this."""

    steps: int = 1000
    batch_size: int = 64
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    lr_policy: str = "cosine"  # cosine | inv | fixed
    lr_gamma: float = 1e-4  # inv only
    lr_power: float = 0.75  # inv only
    warmup_steps: int = 0
    grad_clip: float = 0.0  # 0 = off
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision, CUDA only
    seed: int = 0
    log_every: int = 20
    eval_every: int = 0  # 0 = only at the end
    ckpt_every: int = 500
    out_dir: str = "runs/train"
    resume: bool = False
    time_budget_s: float = 0.0  # > 0: stop at this wall-clock budget; the LR schedule runs on time
    tensorboard: bool = True
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # recipe-specific knobs, recorded verbatim


class TrainTask(Protocol):
    """What a model family plugs into :func:`train`."""

    model_name: str
    model_config: dict[str, Any]

    def build_model(self) -> torch.nn.Module: ...

    def batches(self, start_step: int, batch_size: int, seed: int) -> Iterator[Any]:
        """Infinite, deterministic batches: batch k of the iterator is the batch for step start_step + k."""

    def loss(self, model: torch.nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict]:
        """(scalar loss, {name: float} scalars to log)."""

    def checkpoint_meta(self) -> dict[str, Any]: ...


def use_cpu_bf16(wanted: bool) -> bool:
    """Whether a recipe that asks (``wanted``) for bfloat16 autocast on the CPU should get it.

    Only where the CPU runs bfloat16 convolutions natively (AVX512-BF16 or AMX, through oneDNN):
    elsewhere oneDNN emulates bfloat16 and a training step becomes several times *slower* (a
    deep_prior_res step at batch 64 on an AVX2-only EPYC: 0.20 s in float32, 1.5 s with bfloat16
    autocast). Says so in the log when it declines.
    """
    if not wanted:
        return False
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and bool(
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # a torch build without these probes: assume emulation
        native = False
    if not native:
        log.info("this CPU has no native bfloat16: training on the CPU runs in float32")
    return native


def _make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        # fused: one kernel for the whole update instead of a dozen ops per tensor; the same maths.
        # A DeepPrior step (64 tensors, 1.8M weights) on the 2-core Xeon: the update 8 -> 4 ms of ~80.
        params = list(params)
        fused = all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (adam, sgd)")


def _load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state, keeping the ``fused`` setting ``opt`` was built with: a saved
    param group's flag would otherwise replace it (a last.pt from before the fused AdamW would turn
    it off again, and under CUDA AMP leave the GradScaler expecting a fused step)."""
    if "fused" in opt.defaults:
        state = {**state, "param_groups": [{**g, "fused": opt.defaults["fused"]} for g in state["param_groups"]]}
    opt.load_state_dict(state)


def _lr(step: int, cfg: TrainConfig, elapsed_s: float = 0.0) -> float:
    """LR at ``step``; under a time budget the schedule advances by whichever is further along,
    steps or wall-clock time, so a cosine schedule has decayed when the budget runs out."""
    if cfg.time_budget_s > 0 and cfg.lr_policy == "cosine":
        step = max(step, int(cfg.steps * min(1.0, elapsed_s / cfg.time_budget_s)))
    return lr_at(step, cfg.lr, cfg.lr_policy, cfg.steps, cfg.warmup_steps, cfg.lr_gamma, cfg.lr_power)


def _step_seed(seed: int, step: int) -> int:
    """Torch seed for one step: dropout and other in-model randomness depend on (seed, step) only,
    so a resumed run draws what an uninterrupted one would."""
    return (seed * 1_000_003 + step) % (2**63 - 1)


def train(
    task: TrainTask,
    cfg: TrainConfig,
    evaluate: Callable[[torch.nn.Module, torch.device], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Run the loop; returns {"step", "final_loss", "eval": {...}, "checkpoint": path, "seconds"}."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = task.build_model().to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = _make_optimizer(trainable, cfg)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start, elapsed_before = 0, 0.0
    # Each earlier segment of a resumed run, oldest first: its step and time at the hand-over, and
    # the command and limits it ran under (the checkpoints' provenance names only the last command).
    segments: list[dict] = []
    last_path = out / "last.pt"
    if cfg.resume and last_path.is_file():
        blob = load_checkpoint(last_path, map_location=device)
        model.load_state_dict(blob["state_dict"])
        if "optimizer" in blob:
            _load_optimizer_state(opt, blob["optimizer"])
        start = int(blob["step"])
        before = blob["meta"].get("training", {})
        elapsed_before = float(before.get("elapsed_s", 0.0))
        segments = [*before.get("resumed_from", []),
                    {"step": start, "elapsed_s": round(elapsed_before, 1),
                     "command": blob["meta"].get("provenance", {}).get("command"),
                     "steps": before.get("config", {}).get("steps"),
                     "time_budget_s": before.get("config", {}).get("time_budget_s")}]
        log.info("resumed from %s at step %d", last_path, start)

    writer = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))

    def save(path: Path, step: int, with_optimizer: bool, metrics: dict | None = None) -> None:
        meta = dict(task.checkpoint_meta())
        meta["training"] = {"config": asdict(cfg), "step": step, "elapsed_s": elapsed(),
                            **({"metrics": metrics} if metrics else {}),
                            **({"resumed_from": segments} if segments else {})}
        save_checkpoint(path, task.model_name, task.model_config, model.state_dict(), meta,
                        optimizer=opt.state_dict() if with_optimizer else None, step=step)

    batches = task.batches(start, cfg.batch_size, cfg.seed)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not cfg.progress,
               desc=task.model_name, dynamic_ncols=True)
    loss_value, t0, metrics = float("nan"), time.perf_counter(), {}

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t0

    done = start
    model.train()
    for step in bar:
        if cfg.time_budget_s > 0 and elapsed() >= cfg.time_budget_s:
            log.info("time budget of %.0f s reached at step %d of %d", cfg.time_budget_s, step, cfg.steps)
            break
        lr = _lr(step, cfg, elapsed())
        for group in opt.param_groups:
            group["lr"] = lr
        batch = next(batches)
        torch.manual_seed(_step_seed(cfg.seed, step))
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            loss, scalars = task.loss(model, batch, device)
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"loss is {float(loss.detach())} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        loss_value = float(loss.detach())
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{loss_value:.4g}", lr=f"{lr:.2e}")
            if writer is not None:
                writer.add_scalar("train/loss", loss_value, step)
                writer.add_scalar("train/lr", lr, step)
                for name, value in scalars.items():
                    writer.add_scalar(f"train/{name}", value, step)
        done = step + 1
        if evaluate is not None and cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
            metrics = _run_eval(evaluate, model, device, writer, done)
            model.train()
        if cfg.ckpt_every and done % cfg.ckpt_every == 0:
            save(last_path, done, with_optimizer=True)
    bar.close()
    if evaluate is not None:
        metrics = _run_eval(evaluate, model, device, writer, done)
    save(last_path, done, with_optimizer=True, metrics=metrics)
    model_path = out / "model.pt"
    save(model_path, done, with_optimizer=False, metrics=metrics)
    result = {"step": done, "final_loss": loss_value, "eval": metrics, "checkpoint": str(model_path),
              "seconds": time.perf_counter() - t0, "elapsed_s": elapsed(), "device": str(device)}
    write_json(out / "result.json", result)
    if writer is not None:
        writer.close()
    return result


def _run_eval(evaluate, model, device, writer, step: int) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        metrics = evaluate(model, device)
    if writer is not None:
        for name, value in metrics.items():
            if isinstance(value, (int, float)):
                writer.add_scalar(f"eval/{name}", value, step)
    log.info("eval at step %d: %s", step, metrics)
    return metrics
