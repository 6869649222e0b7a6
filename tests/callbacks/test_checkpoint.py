"""Checkpoints that survive a kill: atomic writes, last.ckpt on a schedule, on SIGTERM and on Ctrl+C (never after
another exception), and exact resume from a checkpoint written in the middle of an epoch."""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException
from task_helpers import RaiseAt, SigtermAt, assert_same_training_state, fit_interrupted_and_resumed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from segen import DigitsDataModule, GANTask, SegmentationTask, ShapesDataModule, UNet
from segen.callbacks.checkpoint import AtomicCheckpointIO, SegenCheckpoint
from segen.nets.dcgan import DCGANDiscriminator, DCGANGenerator


class Tiny(LightningModule):
    """A linear regression: checkpoints in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(
            TensorDataset(torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)), batch_size=4
        )


def tiny_trainer(tmp_path: Path, callbacks: list[Callback], **kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        **kwargs,
    )


def last_step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


# ---------------------------------------------------------------------------------------------------- atomic writes
def test_a_save_that_fails_part_way_leaves_the_old_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"global_step": 7, "weights": torch.arange(1000.0)}, target)
    before = target.read_bytes()
    real_save = torch.save

    def save_then_fail(obj, f, *args, **kwargs):
        f.write(before[: len(before) // 2])  # half a checkpoint reaches the file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 8, "weights": torch.zeros(1000)}, target)
    monkeypatch.setattr(torch, "save", real_save)

    assert target.read_bytes() == before
    assert torch.load(target, weights_only=True)["global_step"] == 7
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no .last.ckpt.*.tmp left behind


def test_a_successful_save_replaces_the_file_with_the_usual_permissions(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "new" / "folder" / "x.ckpt"  # folders are made
    io.save_checkpoint({"global_step": 1}, target)
    io.save_checkpoint({"global_step": 2}, target)
    assert torch.load(target, weights_only=True)["global_step"] == 2
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.ckpt"]
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({}, target, storage_options={"x": 1})


# ---------------------------------------------------------------------------------------------------- schedule
class LastStepProbe(Callback):
    """Before each training batch: the global step in last.ckpt (None while there is none)."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []

    def on_train_batch_start(self, trainer: Trainer, *args) -> None:
        self.seen.append((trainer.global_step, last_step(self.path) if self.path.exists() else None))


def test_last_is_written_every_n_steps_and_not_after_a_crash(tmp_path):
    probe = LastStepProbe(tmp_path / "last.ckpt")
    checkpoint = SegenCheckpoint(dirpath=tmp_path, last_every_n_steps=3, save_top_k=0)
    trainer = tiny_trainer(tmp_path, [checkpoint, probe, RaiseAt(8)], max_epochs=1)
    with pytest.raises(RuntimeError, match="crash at step 8"):
        trainer.fit(Tiny())
    assert probe.seen == [(j, 3 * (j // 3) if j >= 3 else None) for j in range(9)]
    # the crash (think: a NaN loss) at step 8 did not overwrite the step-6 checkpoint
    assert last_step(tmp_path / "last.ckpt") == 6


def test_last_every_n_steps_must_not_be_negative():
    with pytest.raises(ValueError, match=r"last_every_n_steps=-1.*>= 1, or 0"):
        SegenCheckpoint(last_every_n_steps=-1)


# ---------------------------------------------------------------------------------------------------- stop requests
def test_sigterm_writes_last_at_the_step_it_arrived(tmp_path):
    checkpoint = SegenCheckpoint(dirpath=tmp_path, last_every_n_steps=0, save_top_k=0)
    trainer = tiny_trainer(tmp_path, [checkpoint, SigtermAt(5)], max_epochs=1)
    with pytest.raises(SIGTERMException):  # a SystemExit, as Lightning ends a SIGTERM-stopped run
        trainer.fit(Tiny())
    assert last_step(tmp_path / "last.ckpt") == 5
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # Lightning gave the signal back

    # Lightning's own ckpt_path="last" finds it (it looks in the callback's dirpath) and resumes at step 5
    resumed = tiny_trainer(tmp_path, [SegenCheckpoint(dirpath=tmp_path, save_top_k=0)], max_steps=7)
    resumed.fit(Tiny(), ckpt_path="last")
    assert resumed.ckpt_path == str(tmp_path / "last.ckpt") and resumed.global_step == 7


@pytest.fixture
def python_sigint():
    """Python's own Ctrl+C handler for the test, as in a terminal: a shell that starts a job in the background (and
    so some CI runners) sets SIGINT to "ignore" for it, and the callback must not depend on who started pytest."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class SigintInsideStep(Callback):
    """Ctrl+C while a training step runs (at ``step``), as a user in a terminal would press it."""

    def __init__(self, step: int, times: int = 1) -> None:
        self.step, self.times = step, times

    def on_before_optimizer_step(self, trainer: Trainer, *args) -> None:
        if trainer.global_step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.usefixtures("python_sigint")
def test_ctrl_c_finishes_the_step_writes_last_and_gives_sigint_back(tmp_path, capsys):
    checkpoint = SegenCheckpoint(dirpath=tmp_path, last_every_n_steps=0, save_top_k=0)
    trainer = tiny_trainer(tmp_path, [checkpoint, SigintInsideStep(4)], max_epochs=1)
    with pytest.raises(SystemExit) as stopped:  # Lightning ends an interrupted run with sys.exit(1)
        trainer.fit(Tiny())
    assert stopped.value.code == 1
    assert last_step(tmp_path / "last.ckpt") == 5  # the step that was running when Ctrl+C came was finished
    assert "Ctrl+C: finishing this training step" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.usefixtures("python_sigint")
def test_a_second_ctrl_c_stops_at_once_and_leaves_last_as_it_was(tmp_path):
    checkpoint = SegenCheckpoint(dirpath=tmp_path, last_every_n_steps=2, save_top_k=0)
    trainer = tiny_trainer(tmp_path, [checkpoint, SigintInsideStep(5, times=2)], max_epochs=1)
    with pytest.raises(SystemExit):
        trainer.fit(Tiny())
    assert last_step(tmp_path / "last.ckpt") == 4  # the half-done step 5 was not saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---------------------------------------------------------------------------------------------------- exact resume
def tiny_segmentation() -> SegmentationTask:
    return SegmentationTask(
        num_classes=4, in_channels=3, net=functools.partial(UNet, base_channels=4, depth=2), warmup_steps=2
    )


def tiny_shapes(num_workers: int = 0) -> ShapesDataModule:
    # 6 training batches per epoch, one validation batch at the end of each epoch
    return ShapesDataModule(image_size=16, num_train=24, num_val=4, batch_size=4, num_workers=num_workers)


@pytest.mark.parametrize(
    ("stop_at", "crash", "num_workers"),
    [
        (3, False, 0),  # SIGTERM in the middle of the first epoch
        (6, False, 0),  # SIGTERM at the last batch of an epoch (validation ran before the stop)
        (
            8,
            True,
            0,
        ),  # a crash at step 8: resume from the scheduled step-6 checkpoint (written before validation)
        (4, False, 1),  # a worker process that fetches ahead of the trainer (persistent workers)
    ],
    ids=["sigterm-mid-epoch", "sigterm-epoch-end", "crash-after-scheduled", "sigterm-with-a-worker"],
)
def test_resume_from_a_mid_epoch_checkpoint_is_bit_identical(
    tmp_path, one_thread, recwarn, stop_at, crash, num_workers
):
    unbroken, resumed, a, b = fit_interrupted_and_resumed(
        tiny_segmentation,
        functools.partial(tiny_shapes, num_workers),
        tmp_path,
        stop_at,
        crash=crash,
        last_every_n_steps=3,
        max_epochs=2,
    )
    assert a.global_step == 12
    assert_same_training_state(unbroken, resumed, a, b)
    assert b.current_epoch == a.current_epoch == 2
    # the training loader is resumable for Lightning: no warning that the epoch restarts from its first batch
    assert not [w for w in recwarn if "dataloader is not resumable" in str(w.message)]


def tiny_gan() -> GANTask:
    """DiffAugment draws its translations and colours from torch's global random state."""
    return GANTask(
        channels=1,
        image_size=16,
        latent_dim=8,
        generator=functools.partial(DCGANGenerator, base_channels=8),
        discriminator=functools.partial(DCGANDiscriminator, base_channels=8),
        diffaugment="translation,color",
        fid_feature=None,
        lr=1e-3,
    )


@pytest.mark.parametrize(
    ("stop_at", "crash"),
    [(8, False), (10, True)],  # 4 batches = 8 optimizer steps per epoch
    ids=["sigterm-at-epoch-end", "crash-after-scheduled-at-epoch-end"],
)
def test_a_task_drawing_from_the_global_random_state_resumes_exactly(tmp_path, one_thread, stop_at, crash):
    """The random states are restored, and the loaders draw nothing from them: a resumed run makes its loader
    iterators at other times than the unbroken one (here: 4 batches per epoch, cut from the digits)."""
    unbroken, resumed, a, b = fit_interrupted_and_resumed(
        tiny_gan,
        functools.partial(DigitsDataModule, image_size=16, batch_size=4),
        tmp_path,
        stop_at,
        crash=crash,
        last_every_n_steps=8,
        max_epochs=3,
        limit_train_batches=4,
        limit_val_batches=0,
    )
    assert a.global_step == 24
    assert_same_training_state(unbroken, resumed, a, b)


def test_the_checkpoint_loads_with_weights_only_and_holds_the_random_states(tmp_path):
    checkpoint = SegenCheckpoint(dirpath=tmp_path, last_every_n_steps=2, save_top_k=0)
    tiny_trainer(tmp_path, [checkpoint], max_steps=2).fit(Tiny())
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    (saved,) = [v for k, v in state["callbacks"].items() if k.startswith("SegenCheckpoint")]
    assert set(saved["rng_states"]) >= {"torch", "numpy", "python"}
