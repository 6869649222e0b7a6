"""Timing shared by every benchmark: the step timer, the timed Lightning run, the timed plain loop, the alternating
comparison and the exactness check (losses step by step, final weights and buffers).

A family of step benchmarks (``_steps.py``) supplies only its task, its batches, its plain loop and how to read a
step's loss; everything else is here, so no benchmark repeats the timing skeleton.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader

# (trainer, training_step output) -> the step's loss tensor(s), or None
LossReader = Callable[[Trainer, Any], Any]

LOSS_READS: dict[str, str] = {
    "step": "each step's loss is read on the host after the step (.item(), both sides): every step ends with the "
    "GPU drained, so a row compares host time per step",
    "end": "the losses stay on the device until the run ends, as in a run that logs every few steps: the host may "
    "run ahead of the GPU, and only syncs inside a step (the nan guard's, Lightning's) drain it",
}
_loss_reads = "step"


def set_loss_reads(mode: str) -> None:
    """When both sides of a step row read their losses: one of :data:`LOSS_READS` (a no-op difference on the CPU)."""
    global _loss_reads
    if mode not in LOSS_READS:
        raise ValueError(f"loss reads {mode!r}: expected one of {sorted(LOSS_READS)}")
    _loss_reads = mode


def keep_loss(losses: list[Any], value: Tensor | tuple[Tensor, ...]) -> None:
    """Append a step's loss (a tensor, or a tuple for a GAN iteration): read at once under "step" (a sync),
    detached on the device under "end" (read by :func:`as_floats` once the clock has stopped)."""
    values = value if isinstance(value, tuple) else (value,)
    kept = tuple(v.item() if _loss_reads == "step" else v.detach() for v in values)
    losses.append(kept if isinstance(value, tuple) else kept[0])


def as_floats(losses: list[Any]) -> list[Any]:
    """``losses`` with every tensor read as a float (tuples stay tuples)."""

    def read(v: Any) -> Any:
        return v.item() if isinstance(v, Tensor) else v

    return [tuple(map(read, v)) if isinstance(v, tuple) else read(v) for v in losses]


class Run(NamedTuple):
    """One timed training run."""

    seconds: float  # per timed step (warm-up excluded)
    losses: list[
        Any
    ]  # one entry per step (a float, or a tuple for a GAN iteration); empty if nothing was logged
    state: dict[str, Tensor]  # the floating-point weights and buffers at the end, on the CPU


class Comparison(NamedTuple):
    """A plain loop against a segen task, alternated ``repeats`` times."""

    plain: float  # best seconds per step of the plain loop
    task: float  # best seconds per step of the task
    delta: float  # largest |difference| over the per-step losses and the final weights and buffers
    checked: str  # what ``delta`` covers: "losses, weights" or "weights" (a Trainer that logs nothing)

    @property
    def ratio(self) -> float:
        return self.task / self.plain


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a clock read means the work is done (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def output_loss(trainer: Trainer, outputs: Any) -> Tensor:
    """The loss a training_step returned (automatic optimization)."""
    return outputs["loss"] if isinstance(outputs, dict) else outputs


def float_state(module: nn.Module) -> dict[str, Tensor]:
    """The module's floating-point parameters and buffers, detached copies on the CPU."""
    return {
        name: value.detach().float().cpu().clone()
        for name, value in module.state_dict().items()
        if isinstance(value, Tensor) and value.is_floating_point()
    }


class StepTimer(Callback):
    """Records each step's loss and the time from the first timed step to the end of the last (``total``) one."""

    def __init__(self, warmup: int, total: int, read_loss: LossReader = output_loss) -> None:
        self.warmup, self.total, self.read_loss = warmup, total, read_loss
        self.losses: list[Any] = []
        self.start = self.end = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = self.read_loss(trainer, outputs)
        if loss is not None:
            keep_loss(self.losses, loss)  # as the plain loops keep theirs
        self.steps = batch_idx + 1
        if _loss_reads == "step" or self.steps == self.total:
            synchronize(pl_module.device)
            self.end = time.perf_counter()


def trainer(
    barebones: bool,
    max_steps: int,
    callbacks: Sequence[Callback],
    root_dir: str,
    accelerator: str = "cpu",
    precision: str = "32-true",
) -> Trainer:
    """The Trainer a benchmark runs under.

    ``barebones=False``: Lightning's defaults (logger, ``self.log`` every step, ``log_every_n_steps=50``, checkpointing
    at the end, everything written under ``root_dir``), except the progress bar and the model summary, which only print.
    ``barebones=True``: ``Trainer(barebones=True)``, which turns logging, checkpointing and printing off.
    """
    common: dict[str, Any] = dict(
        accelerator=accelerator,
        devices=1,
        max_steps=max_steps,
        precision=precision,
        callbacks=list(callbacks),
        default_root_dir=root_dir,
        num_sanity_val_steps=0,
    )
    if barebones:
        return Trainer(barebones=True, **common)
    return Trainer(enable_progress_bar=False, enable_model_summary=False, **common)


def accelerator_of(device: torch.device | str) -> str:
    """The Trainer's ``accelerator`` for a torch device name: "gpu" for CUDA, else "cpu"."""
    return "gpu" if torch.device(device).type == "cuda" else "cpu"


def timed_fit(
    task: LightningModule,
    batches: Sequence[Any],
    warmup: int,
    *,
    barebones: bool,
    max_steps: int | None = None,
    read_loss: LossReader = output_loss,
    accelerator: str = "cpu",
    precision: str = "32-true",
    callbacks: Sequence[Callback] = (),
) -> Run:
    """Train ``task`` on ``batches`` (one pass, in order) and time every step after the first ``warmup``."""
    timer = StepTimer(warmup, len(batches), read_loss)
    with tempfile.TemporaryDirectory(prefix="segen-bench-") as root:
        fit = trainer(
            barebones,
            max_steps if max_steps is not None else len(batches),
            [timer, *callbacks],
            root,
            accelerator,
            precision,
        )
        fit.fit(task, DataLoader(list(batches), batch_size=None, shuffle=False))
    if timer.steps != len(batches):
        raise RuntimeError(f"the Trainer ran {timer.steps} of {len(batches)} steps; check max_steps")
    return Run(
        (timer.end - timer.start) / (len(batches) - warmup), as_floats(timer.losses), float_state(task)
    )


class LoopClock:
    """The plain loops' clock: ``tick(step)`` at the top of each step starts it at step ``warmup``;
    ``seconds()`` after the loop gives seconds per timed step."""

    def __init__(self, warmup: int, total: int, device: torch.device | str = "cpu") -> None:
        self.warmup, self.total, self.device = warmup, total, device
        self.start = 0.0

    def tick(self, step: int) -> None:
        if step == self.warmup:
            synchronize(self.device)
            self.start = time.perf_counter()

    def seconds(self) -> float:
        synchronize(self.device)
        return (time.perf_counter() - self.start) / (self.total - self.warmup)


def _flat(values: list[Any]) -> list[float]:
    return [v for item in values for v in (item if isinstance(item, (tuple, list)) else (item,))]


def run_delta(a: Run, b: Run) -> tuple[float, str]:
    """Largest |difference| of two runs' per-step losses (when both logged them) and final weights and buffers."""
    if a.state.keys() != b.state.keys():
        raise ValueError(f"the runs hold different tensors: {sorted(a.state.keys() ^ b.state.keys())}")
    delta = max(
        (float((a.state[k] - b.state[k]).abs().max()) for k in a.state if a.state[k].numel()), default=0.0
    )
    checked = "weights"
    if a.losses and b.losses:
        la, lb = _flat(a.losses), _flat(b.losses)
        if len(la) != len(lb):
            raise ValueError(f"the runs logged {len(la)} and {len(lb)} losses")
        delta = max(delta, *(abs(x - y) for x, y in zip(la, lb)))
        checked = "losses, weights"
    return delta, checked


def compare(run_plain: Callable[[], Run], run_task: Callable[[], Run], repeats: int) -> Comparison:
    """Alternate the two runs ``repeats`` times (so drifts in machine load hit both); the best time of each, and
    the largest difference between the two runs of every pair."""
    plain_times, task_times, deltas = [], [], []
    checked = ""
    for _ in range(repeats):
        plain = run_plain()
        task = run_task()
        plain_times.append(plain.seconds)
        task_times.append(task.seconds)
        delta, checked = run_delta(plain, task)
        deltas.append(delta)
    return Comparison(min(plain_times), min(task_times), max(deltas), checked)


def best_time(fn: Callable[[], Any], iterations: int, device: torch.device | str = "cpu") -> float:
    """Seconds per call of ``fn`` over ``iterations`` calls (after the caller's warm-up)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iterations


def alternate(fns: Sequence[Callable[[], float]], repeats: int) -> list[float]:
    """Call each timing function in turn, ``repeats`` rounds; the best (smallest) value of each."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], fn())
    return best


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Lightning's info lines and the warnings a short benchmark run triggers by design."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", ".*GPU available but not used.*")
        warnings.filterwarnings("ignore", ".*barebones.*")
        warnings.filterwarnings("ignore", ".*but have no `val_dataloader`.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
