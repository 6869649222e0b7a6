"""Where a task step's extra time goes: the same steps of a task under the Trainer and of its plain loop, each under
``torch.profiler``, and the operators whose time differs most between the two.

    python experiments/benchmarks/profile_step.py --row seg --size large           # on a GPU: device and host time
    python experiments/benchmarks/profile_step.py --row gan --barebones --steps 20
    python experiments/benchmarks/profile_step.py --row vae --tiny --device cpu     # a smoke test

The step rows of ``benchmark.py`` say *how much* slower a task step is than the hand-written loop; this says *where*:
an operator that runs only on the segen side (a check, a copy, a logged value), one that runs more often, or host time
outside any operator (Lightning's loop, ``self.log``). Both sides run the same batches from the same weights, warm-up
included (the first ``--warmup`` steps are in both profiles alike), so the differences are the per-step ones. The
segen side is profiled from ``on_train_start`` (task on the device, optimizers built) to the end of the last step:
the Trainer's set-up and the default Trainer's end-of-fit checkpoint (a copy of every weight and optimizer state to
the host) are not per-step costs and stay out. The plain side is profiled whole (building and moving its small model).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _overhead import quiet, synchronize
from _steps import SIZE_NAMES, STEP_BENCHMARKS, size_name
from lightning.pytorch import Callback
from torch.profiler import ProfilerActivity, profile


class OpTime(NamedTuple):
    count: int
    host_us: float  # self CPU time, summed over calls
    device_us: float  # self device (CUDA) time, summed over calls; 0 on the CPU


def _activities(device: str) -> list[ProfilerActivity]:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])


def op_times(prof: profile) -> dict[str, OpTime]:
    """Per-operator call counts and self times of a finished profile."""
    return {
        event.key: OpTime(
            event.count, event.self_cpu_time_total, float(getattr(event, "self_device_time_total", 0.0))
        )
        for event in prof.key_averages()
    }


def profiled(run: Callable[[], object], device: str) -> tuple[dict[str, OpTime], float]:
    """Per-operator times of ``run()`` and its wall time in seconds."""
    with profile(activities=_activities(device)) as prof:
        start = time.perf_counter()
        run()
        synchronize(device)
        wall = time.perf_counter() - start
    return op_times(prof), wall


class StepProfiler(Callback):
    """Profiles a fit from ``on_train_start`` to the end of step ``total``: the steps, without the Trainer's set-up
    before them or what it does after the last one (the default Trainer's end-of-fit checkpoint)."""

    def __init__(self, total: int, device: str) -> None:
        self.total, self.device = total, device
        self.prof = profile(activities=_activities(device))
        self.start = self.wall = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        synchronize(self.device)
        self.prof.start()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == self.total:
            synchronize(self.device)
            self.wall = time.perf_counter() - self.start
            self.prof.stop()


def difference_table(segen: dict[str, OpTime], plain: dict[str, OpTime], steps: int, top: int) -> str:
    """Markdown: the ``top`` operators by |segen - plain| time per step (device time when there is any)."""
    on_device = any(op.device_us for op in segen.values())
    key = (lambda op: op.device_us) if on_device else (lambda op: op.host_us)
    zero = OpTime(0, 0.0, 0.0)
    names = sorted(
        set(segen) | set(plain),
        key=lambda n: -abs(key(segen.get(n, zero)) - key(plain.get(n, zero))),
    )[:top]
    unit = "device" if on_device else "host"
    lines = [
        f"| operator | calls/step segen | calls/step plain | segen {unit} µs/step | plain {unit} µs/step | Δ µs/step |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        s, p = segen.get(name, zero), plain.get(name, zero)
        lines.append(
            f"| `{name}` | {s.count / steps:.1f} | {p.count / steps:.1f} | {key(s) / steps:.1f} | "
            f"{key(p) / steps:.1f} | {(key(s) - key(p)) / steps:+.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--row", choices=tuple(STEP_BENCHMARKS), default="seg", help="which step row (default seg)"
    )
    parser.add_argument("--size", choices=SIZE_NAMES, help="default: gpu on cuda, else cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--steps", type=int, default=20, help="profiled steps after the warm-up (default 20)")
    parser.add_argument(
        "--warmup", type=int, default=5, help="steps before them, in both profiles (default 5)"
    )
    parser.add_argument(
        "--barebones", action="store_true", help="Trainer(barebones=True) instead of the default"
    )
    parser.add_argument("--top", type=int, default=15, help="operators listed (default 15)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        args.size = size_name(args.size, args.tiny, args.device)
    except ValueError as err:
        parser.error(str(err))
    if args.steps < 1 or args.warmup < 0 or args.top < 1:
        parser.error("--steps and --top must be >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Profile both sides, print the report and return it."""
    args = parse_args(argv)
    bench = STEP_BENCHMARKS[args.row](args.warmup + args.steps, args.size)
    total = args.warmup + args.steps
    with quiet():
        bench.run_plain(
            bench.batches, args.warmup, args.device
        )  # untimed: first-call costs (cuDNN, allocator)
        plain, plain_wall = profiled(
            lambda: bench.run_plain(bench.batches, args.warmup, args.device), args.device
        )
        steps = StepProfiler(total, args.device)
        bench.run_task(args.warmup, args.device, args.barebones, callbacks=[steps])
        segen, segen_wall = op_times(steps.prof), steps.wall
    trainer = "barebones=True" if args.barebones else "default Trainer"
    report = (
        f"{bench.name} ({bench.setting}), {trainer}, {args.device}: {total} steps each under the profiler, "
        f"{segen_wall * 1e3 / total:.2f} ms/step segen (its steps) against "
        f"{plain_wall * 1e3 / total:.2f} ms/step plain (whole loop).\n\n"
        f"{difference_table(segen, plain, total, args.top)}\n"
    )
    print(report)
    return report


if __name__ == "__main__":
    main()
