"""What ``SegenTask.log_train`` saves: each step row's task under the default Trainer with
``log_train_every_step`` True (every key logged every step, as before) and False (the default), alternating.

    python experiments/benchmarks/log_cost.py                 # tiny sizes, 150 timed steps, best of 3
    python experiments/benchmarks/log_cost.py --size cpu --steps 50
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _overhead import quiet
from _steps import SIZE_NAMES, STEP_BENCHMARKS

from segen.tasks.base import SegenTask


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=("tiny", *SIZE_NAMES), default="tiny")
    parser.add_argument("--steps", type=int, default=150, help="timed steps (default 150)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    lines = ["| task | every key every step | log_train | saved per step |", "| --- | --- | --- | --- |"]
    default = SegenTask.log_train_every_step
    try:
        with quiet():
            for make in STEP_BENCHMARKS.values():
                bench = make(args.warmup + args.steps, args.size)
                best = {True: float("inf"), False: float("inf")}
                for _ in range(args.repeats):
                    for every in (True, False):
                        SegenTask.log_train_every_step = every
                        run = bench.run_task(args.warmup, args.device, barebones=False)
                        best[every] = min(best[every], run.seconds)
                saved = best[True] - best[False]
                lines.append(
                    f"| {bench.name} ({bench.setting}) | {best[True] * 1e3:.2f} ms | {best[False] * 1e3:.2f} ms | "
                    f"{saved * 1e3:.2f} ms ({saved / best[True]:.0%}) |"
                )
    finally:
        SegenTask.log_train_every_step = default
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
