"""``SegenTask.log_train``: training scalars reach loggers, the progress bar and the end of a run as before, while
the keys no logger reads on a step are not logged on that step (Lightning's ``self.log`` costs host time per key), and
the progress bar's values reach Lightning as host copies (its per-batch ``.item()`` then never waits for a GPU)."""

from __future__ import annotations

import copy
import csv
import functools
import pickle
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger
from task_helpers import quiet_trainer
from tiny_tasks import gan as tiny_gan
from tiny_tasks import image_dataset
from torch.utils.data import DataLoader

from segen import SegmentationTask, ShapesDataModule, UNet
from segen.tasks.base import _Check, _HostCopies

STEPS, EVERY = 7, 3  # 10 batches per epoch, so no epoch ends inside the run


def _run(
    tmp_path: Path, every_step: bool, bar: bool
) -> tuple[list[dict[str, float]], dict[int, set[str]], dict, Path]:
    task = SegmentationTask(
        num_classes=4, in_channels=3, net=functools.partial(UNet, base_channels=4, depth=2), warmup_steps=0
    )
    task.log_train_every_step = every_step
    data = ShapesDataModule(image_size=32, num_train=40, num_val=4, batch_size=4)
    computed: list[dict[str, float]] = []  # each step's loss parts, as computed
    compute_loss = task.compute_loss

    def recording_compute_loss(logits, masks):
        parts = compute_loss(logits, masks)
        computed.append({k: float(v.detach()) for k, v in parts.items()})
        return parts

    task.compute_loss = recording_compute_loss
    logged: dict[int, set[str]] = defaultdict(set)  # keys passed to self.log, by step
    log = task.log

    def recording_log(name, value, *args, **kwargs):
        logged[task.trainer.global_step].add(name)
        return log(name, value, *args, **kwargs)

    task.log = recording_log
    trainer = quiet_trainer(
        tmp_path,
        max_steps=STEPS,
        limit_val_batches=0,
        log_every_n_steps=EVERY,
        logger=CSVLogger(tmp_path),
        enable_progress_bar=bar,
    )
    trainer.fit(task, data)
    return computed, logged, trainer.callback_metrics, Path(trainer.logger.log_dir) / "metrics.csv"


@pytest.mark.parametrize("every_step, bar", [(False, True), (False, False), (True, False)])
def test_train_scalars_reach_the_logger_the_progress_bar_and_the_end_of_the_run(every_step, bar, tmp_path):
    computed, logged, final, csv_path = _run(tmp_path, every_step, bar)
    assert len(computed) == STEPS
    everything = {"train/loss", "train/dice", "train/ce"}
    read = {s for s in range(STEPS) if (s + 1) % EVERY == 0} | {STEPS - 1}  # the logger's steps and the last
    for step in range(STEPS):
        # between those steps only the progress bar's key, and only when a bar shows it
        expected = everything if every_step or step in read else ({"train/loss"} if bar else set())
        assert logged[step] == expected, (step, logged[step])

    # the logger received every part of its steps, with the values of those steps
    with open(csv_path) as f:
        rows = [row for row in csv.DictReader(f) if row.get("train/ce")]
    assert [int(row["step"]) for row in rows] == [s for s in range(STEPS) if (s + 1) % EVERY == 0]
    for row in rows:
        step = int(row["step"])
        for part in ("loss", "dice", "ce"):
            assert float(row[f"train/{part}"]) == pytest.approx(computed[step][part], rel=1e-6)
    # and the run ends with the last step's values
    for part in ("loss", "dice", "ce"):
        assert float(final[f"train/{part}"]) == pytest.approx(computed[-1][part], rel=1e-6)


# ---------------------------------------------------------------------------------------- progress-bar values
def test_progress_bar_values_are_host_copies_with_each_steps_values(tmp_path):
    """The bar's values go through ``_HostCopies`` (a host tensor, so Lightning's per-batch ``.item()`` never waits
    for a GPU); on the CPU a copy arrives at once, so every step shows its own values, for both losses of a GAN."""
    task, _ = tiny_gan()  # with more batches than its own data: steps no logger reads, inside one epoch
    computed: list[dict[str, float]] = []  # the values each step handed to log_train
    log_train = task.log_train

    def recording_log_train(values, batch_size, prog_bar=()):
        computed.append({k: float(values[k]) for k in prog_bar})
        stored = task._bar_copies._queue
        log_train(values, batch_size, prog_bar)
        assert stored == [], "the copy this step logged is still queued"

    task.log_train = recording_log_train
    bar: list[dict[str, float]] = []
    seen_tensors: list[torch.Tensor] = []

    class Bar(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            bar.append(dict(trainer.progress_bar_metrics))
            seen_tensors.append(trainer.callback_metrics["train/loss_d"])

    data = DataLoader(image_dataset(24, 1, 16), batch_size=4)
    trainer = quiet_trainer(
        tmp_path, max_steps=10, log_every_n_steps=4, callbacks=[Bar()], enable_progress_bar=True
    )
    trainer.fit(task, data)
    assert len(computed) == len(bar) == 5  # five iterations, two optimizer steps each
    for step_values, shown in zip(computed, bar, strict=True):
        assert set(step_values) == {"train/loss_d", "train/loss_g"}
        for key, value in step_values.items():
            assert isinstance(shown[key], float)
            assert shown[key] == pytest.approx(value, rel=1e-6)
    assert all(t.device.type == "cpu" for t in seen_tensors)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-only path: copies that arrive after the step")
def test_cuda_progress_bar_shows_this_or_the_previous_steps_loss_from_host_memory(tmp_path):
    """On a GPU the bar's value is a host tensor holding this iteration's loss or the previous one's (a copy that
    has not arrived is not waited for; the default nan_policy's read lets the previous one arrive), and on the
    iterations a logger reads, this iteration's own loss."""
    task, _ = tiny_gan()
    # loss_d of each iteration, read after the fit (no extra sync during it)
    on_device: list[torch.Tensor] = []
    read: list[bool] = []  # whether log_train treated the iteration as one a logger reads
    log_train = task.log_train

    def recording_log_train(values, batch_size, prog_bar=()):
        on_device.append(values["train/loss_d"].detach().clone())
        read.append(task._train_logs_are_read())
        log_train(values, batch_size, prog_bar)

    task.log_train = recording_log_train
    bar: list[tuple[float, str] | None] = []

    class Bar(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            record = trainer._results.get("training_step.train/loss_d")  # Lightning's own record of the value
            if record is None:  # no copy had arrived yet: nothing logged
                bar.append(None)
            else:
                bar.append((trainer.progress_bar_metrics["train/loss_d"], record._forward_cache.device.type))

    loader = DataLoader(image_dataset(48, 1, 16), batch_size=4)
    trainer = quiet_trainer(
        tmp_path,
        accelerator="gpu",
        devices=1,
        max_steps=20,
        log_every_n_steps=4,
        callbacks=[Bar()],
        enable_progress_bar=True,  # without a bar, the bar's keys are logged on the logger's steps only
    )
    trainer.fit(task, loader)
    computed = [float(v) for v in on_device]
    assert len(computed) == len(bar) == 10  # 12 batches per epoch: one epoch, no epoch end
    # the logger's iterations (every 4th) and the last
    assert [i for i, r in enumerate(read) if r] == [3, 7, 9]
    assert bar[0] is not None or not read[0]
    for i, entry in enumerate(bar[1:], start=1):
        assert entry is not None, i
        shown, device = entry
        assert device == "cpu", i
        allowed = [computed[i]] if read[i] else computed[i - 1 : i + 1]
        assert any(shown == pytest.approx(v, rel=1e-6) for v in allowed), (i, shown, allowed)


class _Event:
    """A stand-in for ``torch.cuda.Event`` (only ``query`` and ``synchronize`` are used): the device has reached
    it when ``done``; ``synchronize`` marks it reached, as waiting for it would."""

    def __init__(self) -> None:
        self.done = False
        self.waited = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited = self.done = True


def _queued(copies: _HostCopies, value: float) -> _Event:
    """Put ``{"loss": value}`` and give its copy an event the test controls (put() records one only on CUDA)."""
    copies.put({"loss": torch.tensor(value)})
    event = _Event()
    keys, host, _ = copies._queue[-1]
    copies._queue[-1] = (keys, host, event)
    return event


def test_host_copies_give_the_newest_arrived_copy_and_wait_only_when_asked():
    copies = _HostCopies()
    first, second, third = (_queued(copies, v) for v in (1.0, 2.0, 3.0))
    assert copies.take() == {}  # none arrived: nothing to show, and no waiting
    assert not any(e.waited for e in (first, second, third)) and len(copies._queue) == 3
    first.done = second.done = True
    assert copies.take() == {"loss": torch.tensor(2.0)}  # the newest that arrived; older ones are dropped
    assert len(copies._queue) == 1
    assert copies.take(wait=True) == {"loss": torch.tensor(3.0)}  # a step loggers read: its own value
    assert third.waited and copies._queue == []
    assert copies.take() == {} and copies.take(wait=True) == {}


def test_host_copies_forget_the_oldest_when_the_device_falls_far_behind():
    copies = _HostCopies()
    events = [_queued(copies, float(i)) for i in range(_HostCopies.max_in_flight + 5)]
    assert copies.take() == {}
    assert len(copies._queue) == _HostCopies.max_in_flight
    events[-1].done = True
    assert copies.take() == {"loss": torch.tensor(float(len(events) - 1))}


def test_host_copies_start_empty_in_a_copied_or_pickled_task():
    """SWA's deepcopy of the module and DDP spawn's pickling must not carry another process's copies in flight,
    nor the non-finite-loss guard's unread checks (whose CUDA events cannot be copied: a stand-in here)."""

    class Uncopyable:
        def __reduce__(self):
            raise TypeError("a CUDA event cannot be pickled")

    task = SegmentationTask(num_classes=2, in_channels=1)
    task._bar_copies.put({"train/loss": torch.tensor(0.5)})
    check = _Check("loss", {}, torch.tensor(True), "step", torch.tensor([True, True]), Uncopyable())
    task._pending_checks.append(check)
    for again in (copy.deepcopy(task), pickle.loads(pickle.dumps(task))):
        assert again._bar_copies._queue == [] and len(again._pending_checks) == 0
        again._pending_checks.append(check)  # still the guard's list
    assert len(task._bar_copies._queue) == 1 and task._pending_checks == [check]


def test_a_progress_bar_value_must_be_one_number():
    task = SegmentationTask(num_classes=2, in_channels=1)
    with pytest.raises(ValueError, match=r"'train/loss' has shape \(2,\); expected a single number"):
        task.log_train({"train/loss": torch.ones(2)}, batch_size=1, prog_bar=("train/loss",))
