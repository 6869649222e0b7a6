"""The default optimisation recipe shared by segen's tasks: AdamW without decay on norms and biases, linear
warm-up then cosine decay to zero at the end of training."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn

__all__ = ["configure_optimizers", "param_groups", "total_steps", "warmup_cosine"]


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups: weight decay on weight matrices and kernels only, never on norms or biases."""
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | None
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then a cosine decay to 0 at ``total_steps`` (constant if ``None``)."""
    warmup_steps = max(0, int(warmup_steps))
    if total_steps is not None:
        warmup_steps = min(warmup_steps, total_steps // 10)  # short runs (fast_dev_run, tests) still decay

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if total_steps is None or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def total_steps(module: LightningModule) -> int | None:
    """The run's optimizer steps as the Trainer estimates them; ``None`` without a trainer or a set end."""
    try:
        total = module.trainer.estimated_stepping_batches
    except Exception:  # no trainer attached, or a loader without length
        return None
    return int(total) if math.isfinite(total) else None


def configure_optimizers(
    module: LightningModule,
    optimizer_fn: Callable[..., torch.optim.Optimizer] | None,
    scheduler_fn: Callable[..., Any] | None,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
) -> dict[str, Any]:
    """A task's ``configure_optimizers``: the user's callables when given, else AdamW with warm-up and cosine."""
    if optimizer_fn is not None:
        optimizer = optimizer_fn([p for p in module.parameters() if p.requires_grad])  # frozen parts excluded
    else:
        optimizer = torch.optim.AdamW(param_groups(module, weight_decay), lr=lr)
    if scheduler_fn is not None:
        scheduler = scheduler_fn(optimizer)
    else:
        scheduler = warmup_cosine(optimizer, warmup_steps, total_steps(module))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
