"""Every host-device synchronisation of a few training steps on a GPU, counted by where it comes from.

    python experiments/benchmarks/sync_check.py --row seg --steps 10
    python experiments/benchmarks/sync_check.py --row seg gan vae vqvae --nan-policy off

``tests/test_no_sync.py`` counts the Python-level reads inside ``training_step`` on the CPU. This runs the same task
on CUDA under ``torch.cuda.set_sync_debug_mode("warn")``, which reports every synchronising CUDA call (C++ ones too),
from the first step after the warm-up to the end of the last step (its ``on_train_batch_end`` hooks included), and
groups them by the innermost frame in segen, Lightning or torch. What follows the last step (the default Trainer's
end-of-fit checkpoint, which copies every tensor to the host) is not a per-step cost and is left out.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tempfile

import lightning
import torch
from _overhead import quiet, trainer
from _steps import STEP_BENCHMARKS
from lightning.pytorch import Callback
from torch.utils.data import DataLoader

ROOTS = {
    "segen": Path(__file__).resolve().parents[2] / "segen",
    "lightning": Path(lightning.__file__).resolve().parent,
    "torch": Path(torch.__file__).resolve().parent,
}


def origin(stack: list[traceback.FrameSummary]) -> str:
    """The innermost frame of the stack that lies in segen, then Lightning, then torch."""
    for name, root in ROOTS.items():
        for frame in reversed(stack):
            path = Path(frame.filename).resolve()
            if path.is_relative_to(root):
                return f"{name}/{path.relative_to(root)}:{frame.lineno} ({frame.name})"
    return "elsewhere"


class SyncCounter(Callback):
    """Turns CUDA's sync debug mode on from step ``warmup`` to the end of step ``total`` and counts its warnings."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total
        self.counts: Counter[str] = Counter()
        self.steps = 0
        self._catcher: warnings.catch_warnings | None = None

    def _record(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" in str(message).lower():
            self.counts[origin(traceback.extract_stack()[:-1])] += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self._catcher = warnings.catch_warnings()
            self._catcher.__enter__()
            warnings.simplefilter("always")
            warnings.showwarning = self._record
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.steps += 1
        if batch_idx + 1 == self.total:
            self.stop()

    def on_train_end(self, trainer, pl_module) -> None:
        self.stop()

    def stop(self) -> None:
        torch.cuda.set_sync_debug_mode("default")
        if self._catcher is not None:
            self._catcher.__exit__(None, None, None)
            self._catcher = None


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--row",
        nargs="+",
        choices=tuple(STEP_BENCHMARKS),
        default=["seg"],
        help="which tasks, one fit each (default seg)",
    )
    parser.add_argument("--steps", type=int, default=10, help="steps counted after the warm-up (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="steps before counting (default 3)")
    parser.add_argument(
        "--nan-policy", choices=("off", "raise", "skip"), help="default: the task's own ('raise')"
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU: torch.cuda.set_sync_debug_mode only watches CUDA")
    return "\n".join(count_syncs(row, args.warmup, args.steps, args.nan_policy) for row in args.row)


def count_syncs(row: str, warmup: int, steps: int, nan_policy: str | None) -> str:
    """One default-Trainer fit of a step row's task on CUDA; its syncs per counted step, by origin (printed too)."""
    total = warmup + steps
    bench = STEP_BENCHMARKS[row](total, "gpu")
    task = bench.build_task()
    if nan_policy is not None:
        task.hparams["nan_policy"] = nan_policy
    counter = SyncCounter(warmup, total)
    with quiet(), tempfile.TemporaryDirectory(prefix="segen-sync-") as root:
        # not the benchmarks' timed_fit: its step timer synchronises on purpose after every step
        fit = trainer(False, bench.max_steps or total, [counter], root, "gpu")
        fit.fit(task, DataLoader(list(bench.batches), batch_size=None, shuffle=False))
    lines = [
        f"{bench.name} ({bench.setting}, nan_policy={task.nan_policy}): host-device syncs in {counter.steps} steps "
        f"after {warmup} warm-up"
    ]
    lines += [
        f"  {n / max(counter.steps, 1):.2f} per step  {where}" for where, n in counter.counts.most_common()
    ]
    lines += ["  (none)"] if not counter.counts else []
    report = "\n".join(lines)
    print(report, flush=True)
    return report


if __name__ == "__main__":
    main()
