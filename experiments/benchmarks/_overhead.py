"""What the step-overhead benchmarks share: a step timer, the timed Lightning run and the alternating comparison.

Each benchmark (``seg_``, ``gan_``, ``vae_step_overhead.py``) supplies only its task, its batches, its plain loop
and how to read a step's loss; the timing and the report are the same for all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

LossReader = Callable[[Trainer, Any], Any]  # (trainer, training_step output) -> the step's loss(es), or None


def output_loss(trainer: Trainer, outputs: Any) -> float:
    """The loss a training_step returned (automatic optimization)."""
    return outputs["loss"].item() if isinstance(outputs, dict) else outputs.item()


class StepTimer(Callback):
    """Records each step's loss and the time from the first timed step to the end of training."""

    def __init__(self, warmup: int, read_loss: LossReader = output_loss) -> None:
        self.warmup, self.read_loss = warmup, read_loss
        self.losses: list[Any] = []
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = self.read_loss(trainer, outputs)
        if loss is not None:
            self.losses.append(loss)
        self.end = time.perf_counter()


def timed_fit(
    task: LightningModule,
    batches: list[Any],
    total: int,
    warmup: int,
    barebones: bool,
    max_steps: int | None = None,
    read_loss: LossReader = output_loss,
) -> tuple[float, list[Any]]:
    """Train ``task`` on ``batches[:total]`` under a bare-bones-configured Trainer; seconds per timed step, losses."""
    timer = StepTimer(warmup, read_loss)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=max_steps if max_steps is not None else total,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
        barebones=barebones,
        **({} if barebones else {"log_every_n_steps": 50}),
    )
    trainer.fit(task, DataLoader(batches[:total], batch_size=None, shuffle=False))
    return (timer.end - timer.start) / (total - warmup), timer.losses


def compare(
    run_plain: Callable[[], tuple[float, list[Any]]],
    run_lightning: Callable[[], tuple[float, list[Any]]],
    repeats: int,
) -> tuple[float, float, str]:
    """Alternate the two runs ``repeats`` times (so drifts in machine load hit both); the best time of each and the
    largest step-by-step loss difference of the last pair (``n/a`` when one side logged no loss)."""
    plain_times, lightning_times = [], []
    plain_losses: list[Any] = []
    lightning_losses: list[Any] = []
    for _ in range(repeats):
        t, plain_losses = run_plain()
        plain_times.append(t)
        t, lightning_losses = run_lightning()
        lightning_times.append(t)

    def flat(values: list[Any]) -> list[float]:
        return [v for item in values for v in (item if isinstance(item, (tuple, list)) else (item,))]

    diffs = [abs(a - b) for a, b in zip(flat(plain_losses), flat(lightning_losses))]
    diff = f"{max(diffs):.2e}" if diffs else "n/a (no logging)"
    return min(plain_times), min(lightning_times), diff
