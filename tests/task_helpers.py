"""What the task tests share: a quiet CPU Trainer, and the exact-resume checks (N epochs unbroken == 1 epoch,
checkpoint, resume for the rest; and the same from a checkpoint written in the middle of an epoch by SIGTERM)."""

from __future__ import annotations

import importlib.util
import os
import signal
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from segen.callbacks.checkpoint import AtomicCheckpointIO, SegenCheckpoint


def experiment_script(name: str) -> ModuleType:
    """Import ``experiments/scripts/<name>.py`` (not a package) as a module, for the tests of that script."""
    path = Path(__file__).resolve().parents[1] / "experiments" / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quiet_trainer(tmp_path: Path, **kwargs) -> Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar, summary or sanity check; ``kwargs`` override."""
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    return Trainer(**{**defaults, **kwargs})


def save_untrained_checkpoint(task: LightningModule, path: Path) -> Path:
    """Write ``task`` as a Lightning checkpoint (hyper-parameters and weights) without training it."""
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(task)
    trainer.save_checkpoint(path)
    return path


def fit_and_resume(
    make_task: Callable[[], LightningModule],
    make_data: Callable[[], LightningDataModule],
    tmp_path: Path,
    max_epochs: int = 2,
    **trainer_kwargs,
) -> tuple[LightningModule, LightningModule, Trainer, Trainer]:
    """Fit ``max_epochs`` epochs unbroken, then again from the first epoch's checkpoint; returns both tasks and
    trainers. The resumed task is built under another seed: the checkpoint, not the initialisation, must decide."""

    def run(ckpt: str | None) -> tuple[LightningModule, Trainer]:
        torch.manual_seed(123 if ckpt is None else 456)
        task = make_task()
        trainer = Trainer(
            accelerator="cpu",
            max_epochs=max_epochs,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=tmp_path,
            callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)],
            **trainer_kwargs,
        )
        trainer.fit(task, make_data(), ckpt_path=ckpt)
        return task, trainer

    unbroken, first = run(None)
    resumed, second = run(str(tmp_path / "ckpt" / "epoch=0.ckpt"))
    return unbroken, resumed, first, second


class SigtermAt(Callback):
    """Sends SIGTERM to this very process at the end of the first training batch that reaches ``step`` optimizer
    steps, as a cluster's preemption notice would: Lightning notes it and stops after that batch. Usable from the
    CLI: ``--trainer.callbacks+=task_helpers.SigtermAt --trainer.callbacks.step=3``."""

    def __init__(self, step: int = 1) -> None:
        self.step = step
        self.sent = False

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if not self.sent and trainer.global_step >= self.step:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


class StopAt(Callback):
    """Ends training (``trainer.should_stop``) after the first batch that reaches ``step`` optimizer steps: a shorter
    run with the configuration, and so the learning-rate schedule, of a longer one."""

    def __init__(self, step: int = 1) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


class RaiseAt(Callback):
    """Raises ``RuntimeError`` at the start of the first training batch at ``step`` optimizer steps or more: a crash
    that is not a stop request (e.g. a NaN loss), after which ``last.ckpt`` must be left as it was."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"RaiseAt: crash at step {trainer.global_step}")


def fit_interrupted_and_resumed(
    make_task: Callable[[], LightningModule],
    make_data: Callable[[], LightningDataModule],
    tmp_path: Path,
    stop_at: int,
    *,
    crash: bool = False,
    last_every_n_steps: int = 0,
    **trainer_kwargs: Any,
) -> tuple[LightningModule, LightningModule, Trainer, Trainer]:
    """The mid-epoch variant of :func:`fit_and_resume`: fit unbroken; fit again and stop at ``stop_at`` optimizer
    steps, by a real SIGTERM (``last.ckpt`` is written at that step) or, with ``crash=True``, by an exception (the
    scheduled ``last.ckpt`` of ``last_every_n_steps`` stays); resume from ``last.ckpt`` for the rest. Returns both
    tasks and the unbroken and resumed trainers. The resumed task is built under another seed: the checkpoint, not
    the initialisation, must decide. ``trainer_kwargs`` set the length (``max_epochs``/``max_steps``)."""

    def run(
        folder: str, ckpt: str | None = None, stop: Callback | None = None
    ) -> tuple[LightningModule, Trainer]:
        torch.manual_seed(123 if ckpt is None else 456)
        task = make_task()
        callbacks: list[Callback] = [
            SegenCheckpoint(dirpath=tmp_path / folder, save_top_k=0, last_every_n_steps=last_every_n_steps)
        ]
        trainer = Trainer(
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=tmp_path,
            callbacks=[*callbacks, *([stop] if stop else [])],
            plugins=[AtomicCheckpointIO()],
            **trainer_kwargs,
        )
        try:
            trainer.fit(task, make_data(), ckpt_path=ckpt)
        except (SystemExit, RuntimeError):
            if stop is None:
                raise
        return task, trainer

    unbroken, first = run("unbroken")
    run("broken", stop=RaiseAt(stop_at) if crash else SigtermAt(stop_at))
    resumed, second = run("broken", ckpt=str(tmp_path / "broken" / "last.ckpt"))
    return unbroken, resumed, first, second


def assert_same_training_state(
    unbroken: LightningModule, resumed: LightningModule, a: Trainer, b: Trainer
) -> None:
    """Weights and buffers, optimizer moments, scheduler positions and the step count are bit-identical."""
    assert a.global_step == b.global_step
    state_a, state_b = unbroken.state_dict(), resumed.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        a_value, b_value = state_a[name], state_b[name]
        if isinstance(a_value, dict):  # a module's extra state, e.g. a generator's state
            assert a_value.keys() == b_value.keys(), name
            assert all(torch.equal(a_value[k], b_value[k]) for k in a_value), name
        else:
            assert torch.equal(a_value, b_value), name
    for opt_a, opt_b in zip(a.optimizers, b.optimizers, strict=True):
        sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for key in sa:
            for field, value in sa[key].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb[key][field])), (key, field)
    for sched_a, sched_b in zip(a.lr_scheduler_configs, b.lr_scheduler_configs, strict=True):
        assert sched_a.scheduler.state_dict() == sched_b.scheduler.state_dict()
