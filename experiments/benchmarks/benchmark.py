"""segen's benchmarks in one table: every row is one ratio measured in one run (warm-up excluded), with its goal.

    python experiments/benchmarks/benchmark.py                       # everything, default sizes (several minutes)
    python experiments/benchmarks/benchmark.py --only seg dicece     # some rows
    python experiments/benchmarks/benchmark.py --tiny                # tiny sizes: a smoke test, not a measurement
    python experiments/benchmarks/benchmark.py --out bench.md        # also write the table to a file
    python experiments/benchmarks/benchmark.py --size large          # step and gpu rows with more work per step
    python experiments/benchmarks/benchmark.py --deterministic       # deterministic GPU kernels: Δ comparable on a GPU
    python experiments/benchmarks/benchmark.py --read-losses end     # no per-step loss read: the GPU is not drained

Rows (``--only`` names in brackets):
    [seg gan vae vqvae]  seconds per training step of SegmentationTask / GANTask / VAETask / VQVAETask under the
        Trainer divided by the same work in a hand-written loop, once with the default Trainer and once with
        ``Trainer(barebones=True)``. Goal <= 1.10 on CPU, <= 1.05 on a GPU. Both sides start from the same weights
        and must agree step by step: ``max abs Δ`` is the largest difference over the per-step losses and the final
        weights and buffers. Each side reads every step's loss on the host after the step (a sync on a GPU);
        ``--read-losses end`` keeps them on the device until the run ends. See ``_steps.py``.
    [lightning]  the same ratio for an empty step (one scalar weight, automatic optimization; two weights, manual
        optimization as in a GAN), no segen code in it: what Lightning's loop alone costs per step on this machine,
        the floor under the step rows. A step row's extra milliseconds minus these are segen's. No goal.
    [dicece]  segen's DiceCELoss against MONAI's configured to the same definition: forward + backward time ratio
        (goal <= 1.2), value and gradient difference (goal <= 1e-5). See ``_references.py``.
    [metrics]  segen's val/mIoU, val/IoU_<class> and val/dice against torchmetrics and MONAI set to the same
        (dataset-level) definition on the same predictions; the ratio is segen's value over the reference's
        (goal |Δ| <= 1e-6). See ``_references.py`` for the definitions.
    [data]  ShapesDataModule.train_dataloader() images/s over a bare DataLoader on the same data set (goal >= 0.95).
    [gpu]  on a GPU only: the speed-up that bf16-mixed, 16-mixed, channels_last and torch.compile give SegmentationTask,
        divided by the speed-up they give the plain loop (goal >= 0.95). See ``_gpu.py``.

Timings alternate segen and reference runs ``--repeats`` times and keep the best of each, so a drift in machine
load hits both sides; on a shared machine they are still approximate.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers below, also when imported by the tests

import lightning
import torch
from _gpu import OPTIONS, speed_benchmark
from _overhead import LOSS_READS, compare, quiet, set_loss_reads
from _references import (
    data_benchmark,
    dice_ce_benchmark,
    iou_delta,
    metric_data,
    monai_metrics,
    present_iou,
    segen_metrics,
    torchmetrics_metrics,
)
from _steps import FLOOR_BENCHMARKS, SIZE_NAMES, STEP_BENCHMARKS, StepBenchmark, size_name

CHOICES = ("seg", "gan", "vae", "vqvae", "lightning", "dicece", "metrics", "data", "gpu")

STEP_GOAL = {"cpu": 1.10, "cuda": 1.05}
STEP_TOLERANCE = {"cpu": 1e-5, "cuda": 1e-3}  # on a GPU atomics (index_add_, bincount) reorder sums
DICE_CE_GOAL, DICE_CE_TOLERANCE = 1.2, 1e-5
METRIC_TOLERANCE = 1e-6
DATA_GOAL = 0.95
GPU_GOAL = 0.95

HEADER = ("benchmark", "segen", "reference", "ratio", "goal", "max abs Δ", "pass")


@dataclass
class Row:
    benchmark: str
    segen: str
    reference: str
    ratio: float | None  # None: not measured here (the reason is in ``segen``)
    goal: str
    delta: float | None = None
    delta_note: str = ""
    passed: bool | None = None

    def cells(self) -> tuple[str, ...]:
        ratio = "n/a" if self.ratio is None else f"{self.ratio:.3f}"
        if self.delta is None:
            delta = "—"
        else:
            delta = f"{self.delta:.1e}" + (f" ({self.delta_note})" if self.delta_note else "")
        passed = "—" if self.passed is None else ("yes" if self.passed else "**no**")
        return (self.benchmark, self.segen, self.reference, ratio, self.goal, delta, passed)


def markdown(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    where = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"lightning {lightning.__version__}; {where}"
    )


# ---------------------------------------------------------------------------------------------------- rows


def step_rows(name: str, args: argparse.Namespace) -> list[Row]:
    return bench_rows(STEP_BENCHMARKS[name](args.warmup + args.steps, args.size), args)


def floor_rows(args: argparse.Namespace) -> list[Row]:
    """Lightning's loop alone (:class:`_steps.EmptyStep`): no goal, it is what the step rows' goals stand on."""
    return [
        row
        for make in FLOOR_BENCHMARKS.values()
        for row in bench_rows(make(args.warmup + args.steps, args.size), args)
    ]


def bench_rows(bench: StepBenchmark, args: argparse.Namespace) -> list[Row]:
    """The default-Trainer and barebones rows of one step benchmark."""
    device = args.device
    kind = torch.device(device).type
    goal, tolerance = STEP_GOAL[kind], STEP_TOLERANCE[kind]

    def build() -> Any:
        task = bench.build_task()
        if args.nan_policy is not None:
            task.hparams["nan_policy"] = args.nan_policy
        return task

    rows = []
    for barebones in (False, True):
        result = compare(
            lambda: bench.run_plain(bench.batches, args.warmup, device),
            lambda barebones=barebones: bench.run_task(args.warmup, device, barebones, build()),
            args.repeats,
        )
        unit = "iteration" if "iteration" in bench.name else "step"
        rows.append(
            Row(
                benchmark=f"{bench.name} / plain loop, {'barebones=True' if barebones else 'default Trainer'} "
                f"({bench.setting})",
                segen=f"{result.task * 1e3:.2f} ms/{unit}" + ("" if bench.segen else " (Lightning alone)"),
                reference=f"{result.plain * 1e3:.2f} ms/{unit}",
                ratio=result.ratio,
                goal=f"≤ {goal:.2f}; Δ ≤ {tolerance:.0e}"
                if bench.segen
                else "— (Lightning's own: the floor of the step rows)",
                delta=result.delta,
                delta_note=result.checked,
                passed=(result.ratio <= goal and result.delta <= tolerance) if bench.segen else None,
            )
        )
    return rows


def dice_ce_rows(args: argparse.Namespace) -> list[Row]:
    result = dice_ce_benchmark(args.tiny, args.repeats, args.device)
    ratio = result.segen / result.monai
    return [
        Row(
            benchmark="DiceCELoss forward + backward / MONAI DiceCELoss (same definition, value and gradient)",
            segen=f"{result.segen * 1e3:.2f} ms (loss {result.value:.6f})",
            reference=f"{result.monai * 1e3:.2f} ms",
            ratio=ratio,
            goal=f"≤ {DICE_CE_GOAL}; Δ ≤ {DICE_CE_TOLERANCE:.0e}",
            delta=result.delta,
            delta_note="value, gradient",
            passed=ratio <= DICE_CE_GOAL and result.delta <= DICE_CE_TOLERANCE,
        )
    ]


def metric_rows(args: argparse.Namespace) -> list[Row]:
    batches = metric_data(args.tiny)
    mine = segen_metrics(batches)
    rows = []
    for library, values in (
        ("torchmetrics", torchmetrics_metrics(batches)),
        ("MONAI", monai_metrics(batches)),
    ):
        iou_ref = (
            "MeanIoU on the split as one image"
            if library == "torchmetrics"
            else "ConfusionMatrixMetric(threat score)"
        )
        dice_ref = (
            "DiceScore(macro, global)" if library == "torchmetrics" else "ConfusionMatrixMetric(f1 score)"
        )
        d_iou = iou_delta(present_iou(mine, values), values)
        d_dice = abs(mine.dice - values.dice)
        rows += [
            Row(
                benchmark=f"val/mIoU and val/IoU_<class> / {library} {iou_ref}",
                segen=f"mIoU {mine.miou:.6f}",
                reference=f"{values.miou:.6f}",
                ratio=mine.miou / values.miou,
                goal=f"Δ ≤ {METRIC_TOLERANCE:.0e}",
                delta=d_iou,
                delta_note="mean, per class",
                passed=d_iou <= METRIC_TOLERANCE,
            ),
            Row(
                benchmark=f"val/dice / {library} {dice_ref}",
                segen=f"dice {mine.dice:.6f}",
                reference=f"{values.dice:.6f}",
                ratio=mine.dice / values.dice,
                goal=f"Δ ≤ {METRIC_TOLERANCE:.0e}",
                delta=d_dice,
                passed=d_dice <= METRIC_TOLERANCE,
            ),
        ]
    return rows


def data_rows(args: argparse.Namespace) -> list[Row]:
    result = data_benchmark(args.tiny, args.repeats, args.workers)
    ratio = result.segen / result.bare
    return [
        Row(
            benchmark=f"ShapesDataModule.train_dataloader() / bare DataLoader ({result.setting})",
            segen=f"{result.segen:.0f} images/s",
            reference=f"{result.bare:.0f} images/s",
            ratio=ratio,
            goal=f"≥ {DATA_GOAL}",
            passed=ratio >= DATA_GOAL,
        )
    ]


def gpu_rows(args: argparse.Namespace) -> list[Row]:
    if torch.device(args.device).type != "cuda":
        return [
            Row(
                benchmark=f"{name} speed-up in segen / in the plain loop (U-Net)",
                segen="n/a (no GPU)",
                reference="n/a (no GPU)",
                ratio=None,
                goal=f"≥ {GPU_GOAL}",
            )
            for name in OPTIONS
        ]
    rows = []
    for result in speed_benchmark(args.steps, args.warmup, args.repeats, args.size, args.device):
        rows.append(
            Row(
                benchmark=f"{result.option} speed-up in segen / in the plain loop (U-Net, default Trainer)",
                segen=f"{result.segen_speedup:.2f}x",
                reference=f"{result.plain_speedup:.2f}x",
                ratio=result.ratio,
                goal=f"≥ {GPU_GOAL}",
                delta=result.delta,
                delta_note="segen vs plain under the option, not a goal",
                passed=result.ratio >= GPU_GOAL,
            )
        )
    return rows


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=CHOICES, default=list(CHOICES), help="rows to run")
    parser.add_argument("--steps", type=int, help="timed training steps per run (default 50; --tiny: 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 5; --tiny: 1)")
    parser.add_argument(
        "--repeats", type=int, help="alternating runs of each side, best counts (default 3; --tiny: 1)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny sizes (16 px, 3 steps): checks, not timings"
    )
    parser.add_argument(
        "--size",
        choices=SIZE_NAMES,
        help="model and batch sizes of the step and gpu rows (default: gpu on cuda, else cpu; --tiny: tiny)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers of the data row (default 0)"
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda if any)",
    )
    parser.add_argument(
        "--nan-policy",
        choices=("off", "raise", "skip"),
        help="the tasks' nan_policy in the step rows (default: the tasks' own, 'raise'); 'off' shows the guard's cost",
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic GPU kernels, for the Δ columns on a GPU (atomics otherwise make the runs drift apart)",
    )
    parser.add_argument(
        "--read-losses",
        choices=tuple(LOSS_READS),
        default="step",
        help="when the step rows read each step's loss on the host: "
        + "; ".join(f"{k}: {v}" for k, v in LOSS_READS.items()),
    )
    parser.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    args = parser.parse_args(argv)
    set_loss_reads(args.read_losses)
    try:
        args.size = size_name(args.size, args.tiny, args.device)
    except ValueError as err:
        parser.error(str(err))
    defaults = (3, 1, 1) if args.tiny else (50, 5, 3)
    for name, default in zip(("steps", "warmup", "repeats"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1, --warmup >= 0")
    if args.deterministic:
        os.environ.setdefault(
            "CUBLAS_WORKSPACE_CONFIG", ":4096:8"
        )  # read when cuBLAS starts: before any GPU work
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Run the chosen rows, print the table (with the machine above it) and return it."""
    args = parse_args(argv)
    rows: list[Row] = []
    makers = {
        **dict.fromkeys(STEP_BENCHMARKS, step_rows),
        "lightning": floor_rows,
        "dicece": dice_ce_rows,
        "metrics": metric_rows,
        "data": data_rows,
        "gpu": gpu_rows,
    }
    with quiet():
        for name in args.only:
            start = time.perf_counter()
            made = makers[name](name, args) if name in STEP_BENCHMARKS else makers[name](args)
            rows += made
            ratios = ", ".join("n/a" if row.ratio is None else f"{row.ratio:.3f}" for row in made)
            print(
                f"[{name}] {time.perf_counter() - start:.0f} s, ratios {ratios}", file=sys.stderr, flush=True
            )
    notes = [f"{args.size} sizes"]
    notes += [f"nan_policy={args.nan_policy}"] if args.nan_policy else []
    notes += ["deterministic kernels"] if args.deterministic else []
    notes += ["losses read after the run"] if args.read_losses == "end" else []
    notes += ["--tiny: a smoke test, not a measurement"] if args.tiny else []
    caption = (
        f"Measured on {machine(args.device)}. {args.warmup} warm-up + {args.steps} timed steps, best of "
        f"{args.repeats} alternating runs ({'; '.join(notes)})."
    )
    table = f"{caption}\n\n{markdown(rows)}\n"
    print(table)
    if args.out is not None:
        args.out.write_text(table)
    failed = [row.benchmark for row in rows if row.passed is False]
    if failed:
        print(f"{len(failed)} row(s) miss their goal: " + "; ".join(failed), file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
