"""``SegenTask.log_train``: training scalars reach loggers, the progress bar and the end of a run as before, while
the keys no logger reads on a step are not logged on that step (Lightning's ``self.log`` costs host time per key)."""

from __future__ import annotations

import csv
import functools
from collections import defaultdict
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger
from task_helpers import quiet_trainer

from segen import SegmentationTask, ShapesDataModule, UNet

STEPS, EVERY = 7, 3  # 10 batches per epoch, so no epoch ends inside the run


def _run(tmp_path: Path, every_step: bool) -> tuple[list[dict[str, float]], dict[int, set[str]], dict, Path]:
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
        tmp_path, max_steps=STEPS, limit_val_batches=0, log_every_n_steps=EVERY, logger=CSVLogger(tmp_path)
    )
    trainer.fit(task, data)
    return computed, logged, trainer.callback_metrics, Path(trainer.logger.log_dir) / "metrics.csv"


@pytest.mark.parametrize("every_step", [False, True])
def test_train_scalars_reach_the_logger_the_progress_bar_and_the_end_of_the_run(every_step, tmp_path):
    computed, logged, final, csv_path = _run(tmp_path, every_step)
    assert len(computed) == STEPS
    everything = {"train/loss", "train/dice", "train/ce"}
    read = {s for s in range(STEPS) if (s + 1) % EVERY == 0} | {STEPS - 1}  # the logger's steps and the last
    for step in range(STEPS):
        expected = everything if every_step or step in read else {"train/loss"}  # the progress bar's key
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
