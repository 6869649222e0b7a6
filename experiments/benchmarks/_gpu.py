"""GPU speed options in segen against the same options in the plain loop (the U-Net pair of ``_steps.py``).

For each option (``bf16-mixed``, ``16-mixed``, ``channels_last``, ``torch.compile``) the segen speed-up is
``t(SegmentationTask, fp32) / t(SegmentationTask, option)`` under the default Trainer, the plain speed-up the same for
the hand-written loop, and the row's ratio is segen's speed-up divided by the plain loop's (goal >= 0.95: segen keeps
at least 95% of what the option gives by hand). All runs alternate, best time of each.

segen side: ``Trainer(precision=...)`` and the ``segen.SpeedOptions(channels_last=..., compile=...)`` callback (which
converts the task's 4-D weights to channels-last and compiles its networks in place with ``nn.Module.compile``).
Plain side: ``torch.autocast`` (+ ``GradScaler`` for 16-mixed), ``net.to(memory_format=torch.channels_last)`` with
channels-last inputs (the PyTorch tutorial's recipe), ``net.compile()``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from _overhead import Run, accelerator_of, run_delta, timed_fit
from _steps import SEG_SIZES, Speed, build_seg_task, run_plain_seg, shapes_batches
from lightning.pytorch import Callback

from segen import SpeedOptions

OPTIONS: dict[str, Speed] = {
    "bf16-mixed": Speed(precision="bf16-mixed"),
    "16-mixed": Speed(precision="16-mixed"),
    "channels_last": Speed(channels_last=True),
    "torch.compile": Speed(compile=True),
}


def run_segen(
    build: Callable[[], Any], batches: Sequence[Any], warmup: int, device: str, speed: Speed
) -> Run:
    if speed.compile:
        torch._dynamo.reset()  # a fresh compile per run: new modules would otherwise pile up towards the recompile limit
    callbacks: list[Callback] = []
    if speed.channels_last or speed.compile:
        callbacks.append(SpeedOptions(channels_last=speed.channels_last, compile=speed.compile))
    return timed_fit(
        build(),
        batches,
        warmup,
        barebones=False,
        accelerator=accelerator_of(device),
        precision=speed.precision,
        callbacks=callbacks,
    )


class SpeedResult(NamedTuple):
    option: str
    segen_speedup: float
    plain_speedup: float
    delta: float  # segen vs plain loop under the option: losses step by step, final weights

    @property
    def ratio(self) -> float:
        return self.segen_speedup / self.plain_speedup


def speed_benchmark(
    steps: int,
    warmup: int,
    repeats: int,
    sizes: str,
    device: str,
    options: Sequence[str] = tuple(OPTIONS),
) -> list[SpeedResult]:
    size = SEG_SIZES[sizes]
    build = functools.partial(build_seg_task, size["base_channels"], size["depth"])
    batches = shapes_batches(warmup + steps, size["batch_size"], size["image_size"])

    # every configuration, plain and segen, once per round: load drifts hit all of them alike
    speeds = {"fp32": Speed(), **{name: OPTIONS[name] for name in options}}
    plain = dict.fromkeys(speeds, float("inf"))
    segen = dict.fromkeys(speeds, float("inf"))
    delta = dict.fromkeys(speeds, 0.0)
    for _ in range(repeats):
        for name, speed in speeds.items():
            plain_run = run_plain_seg(build, batches, warmup, device, speed)
            segen_run = run_segen(build, batches, warmup, device, speed)
            plain[name] = min(plain[name], plain_run.seconds)
            segen[name] = min(segen[name], segen_run.seconds)
            delta[name] = max(delta[name], run_delta(plain_run, segen_run)[0])
    return [
        SpeedResult(name, segen["fp32"] / segen[name], plain["fp32"] / plain[name], delta[name])
        for name in options
    ]
