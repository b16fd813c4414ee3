"""Learning-rate policies as pure functions of the step (nanoGPT style): easy to test and plot."""

from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, policy: str = "cosine", total_steps: int = 1, warmup_steps: int = 0,
          gamma: float = 1e-4, power: float = 0.75, min_lr_ratio: float = 0.01) -> float:
    """Learning rate at ``step`` (0-based).

    policies:
      ``inv``    Caffe's: base_lr * (1 + gamma * step) ** -power (the seed recipe: 5e-6, 1e-4, 0.75)
      ``cosine`` linear warm-up, then cosine decay to ``min_lr_ratio * base_lr`` at ``total_steps``
      ``fixed``  base_lr
    """
    if policy == "inv":
        return base_lr * (1.0 + gamma * step) ** (-power)
    if policy == "fixed":
        return base_lr
    if policy == "cosine":
        if warmup_steps > 0 and step < warmup_steps:
            return base_lr * (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        min_lr = base_lr * min_lr_ratio
        return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr policy {policy!r} (inv, cosine, fixed)")
