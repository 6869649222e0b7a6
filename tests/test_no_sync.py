"""No host-device synchronisation inside ``training_step``, for every task family.

On a GPU, reading a device tensor on the host (``.item()``, ``float(t)``, ``if t:``, ``.tolist()``) waits for every
queued kernel, and so does ``torch.tensor(3.0, device="cuda")`` (a blocking copy from pageable memory; Lightning's
``self.log(name, <python number>)`` does exactly that). One such call per step keeps the GPU idle while Python
prepares the next step. These tests run a few real training steps on CPU and count the Python-level calls that
would synchronise on CUDA, made while ``training_step`` runs (Lightning's ``self.log`` included):

- ``Tensor.item / tolist / numpy / cpu / __bool__ / __float__ / __int__ / __index__`` (a device read);
- ``torch.tensor`` / ``torch.as_tensor`` of host data with a ``device`` (a blocking host-to-device copy);
- ``Tensor.nonzero`` and indexing with a boolean mask (an output size only the device knows).

A sync issued inside C++ without passing through these Python entry points is not seen here; on a GPU
``torch.cuda.set_sync_debug_mode("warn")`` sees those too. Each failure lists the calls by site.

The non-finite-loss guard (``nan_policy``, :mod:`segen.tasks.base`) reads one flag per optimizer step by design:
with ``nan_policy="off"`` a step reads nothing; with the default (``"raise"``) it reads a host copy of the flag in
``on_before_optimizer_step`` after backward has been queued (seen here as one ``tolist``; on CUDA the copy is
``non_blocking`` into pinned memory and the read waits on its CUDA event only, not on the backward pass, which
``test_cuda_raise_guard_waits_for_its_flag_not_for_later_kernels`` checks on a GPU); with ``"skip"`` it reads the
device flag before backward.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from tiny_tasks import gan, gan_r1, instance, mask_to_image, segmentation, vae, vqvae

READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")
THIS_FILE = str(Path(__file__).resolve())
ROOTS = {  # where a call site lives, for the report
    "segen": str(Path(__file__).resolve().parents[1] / "segen"),
    "lightning": str(Path(sys.modules["lightning"].__file__).parent),
    "torchvision": str(Path(torchvision.__file__).parent),
    "torch": str(Path(torch.__file__).parent),
}


class SyncCounter:
    """Counts the calls listed in the module docstring made while ``inside`` is true, by call site."""

    def __init__(self) -> None:
        self.inside = False
        self.calls: Counter[tuple[str, str, str]] = Counter()  # (what, innermost site, segen caller)
        self.hooks: list[str] = []  # the watched hooks running now, innermost last
        self.by_hook: Counter[str] = Counter()  # calls by the innermost watched hook they were made in

    def record(self, what: str) -> None:
        stack = [f for f in traceback.extract_stack()[:-2] if f.filename != THIS_FILE]
        innermost = stack[-1]
        if innermost.filename.startswith(ROOTS["torch"] + "/optim/"):
            # torch.optim keeps Adam's step count on the host on purpose (capturable=False, fused=False: "special
            # device hosting for step" in torch/optim/adam.py); reading it is not a device sync
            return
        segen_frames = [f for f in stack if f.filename.startswith(ROOTS["segen"])]
        via = self.where(segen_frames[-1]) if segen_frames and segen_frames[-1] is not innermost else ""
        self.calls[(what, self.where(innermost), via)] += 1
        self.by_hook[self.hooks[-1] if self.hooks else "?"] += 1

    @staticmethod
    def where(frame: traceback.FrameSummary) -> str:
        for name, root in ROOTS.items():
            if frame.filename.startswith(root + "/"):
                return f"{name}/{Path(frame.filename).relative_to(root)}:{frame.lineno} ({frame.name})"
        return f"{frame.filename}:{frame.lineno} ({frame.name})"

    @contextmanager
    def patched(self) -> Iterator[None]:
        originals: list[tuple[Any, str, Any]] = []

        def patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
            original = getattr(owner, name)
            originals.append((owner, name, original))
            setattr(owner, name, make(original))

        def read(name: str):
            def make(original):
                @functools.wraps(original)
                def wrapper(tensor, *args, **kwargs):
                    if self.inside:
                        self.record(f"Tensor.{name}")
                    return original(tensor, *args, **kwargs)

                return wrapper

            return make

        def host_to_device(name: str):
            def make(original):
                @functools.wraps(original)
                def wrapper(data, *args, **kwargs):
                    if (
                        self.inside
                        and kwargs.get("device") is not None
                        and not isinstance(data, torch.Tensor)
                    ):
                        self.record(f"torch.{name}(<host data>, device=...)")
                    return original(data, *args, **kwargs)

                return wrapper

            return make

        def nonzero(original):
            @functools.wraps(original)
            def wrapper(tensor, *args, **kwargs):
                if self.inside:
                    self.record("Tensor.nonzero")
                return original(tensor, *args, **kwargs)

            return wrapper

        def getitem(original):
            @functools.wraps(original)
            def wrapper(tensor, index):
                if self.inside:
                    parts = index if isinstance(index, tuple) else (index,)
                    if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
                        self.record("Tensor[boolean mask]")
                return original(tensor, index)

            return wrapper

        try:
            for name in READS:
                patch(torch.Tensor, name, read(name))
            for name in ("tensor", "as_tensor"):
                patch(torch, name, host_to_device(name))
            patch(torch.Tensor, "nonzero", nonzero)
            patch(torch.Tensor, "__getitem__", getitem)
            yield
        finally:
            for owner, name, original in reversed(originals):
                setattr(owner, name, original)

    def watch(self, task: LightningModule, hooks: tuple[str, ...] = ("training_step",)) -> None:
        """Count while one of ``hooks`` of ``task`` runs (instance attributes, so Lightning calls them)."""
        for name in hooks:
            setattr(task, name, self._watched(name, getattr(task, name)))

    def _watched(self, name: str, hook: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(hook)
        def watched(*args: Any, **kwargs: Any) -> Any:
            self.hooks.append(name)
            self.inside = True
            try:
                return hook(*args, **kwargs)
            finally:
                self.hooks.pop()
                self.inside = bool(self.hooks)

        return watched


def run_steps(
    build: Callable[[], tuple[LightningModule, Any]],
    tmp_path: Path,
    max_steps: int = 2,
    nan_policy: str = "off",
    hooks: tuple[str, ...] = ("training_step",),
) -> SyncCounter:
    torch.manual_seed(0)
    task, data = build()
    task.hparams["nan_policy"] = nan_policy
    counter = SyncCounter()
    counter.watch(task, hooks)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        limit_val_batches=0,
        log_every_n_steps=1,  # the logger is fed every step: its work must not land in training_step either
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    with counter.patched():
        trainer.fit(task, data)
    assert trainer.global_step == max_steps
    return counter


def report(counter: SyncCounter) -> str:
    return "host-device syncs in training_step:\n" + "\n".join(
        f"  {n} x {what} at {site}" + (f" via {via}" if via else "")
        for (what, site, via), n in sorted(counter.calls.items())
    )


# ---------------------------------------------------------------------------------------- tests
def test_the_counter_sees_each_kind_of_sync_and_restores_torch():
    counter = SyncCounter()
    original_item = torch.Tensor.item
    with counter.patched():
        x = torch.ones(3)
        float(x.sum())  # not inside: not counted
        counter.inside = True
        x.sum().item()
        bool(x.any())
        _ = x[x > 0]
        torch.tensor(1.0, device="cpu")
        torch.tensor(1.0)  # host to host: not a sync
        x.nonzero()
        counter.inside = False
    assert torch.Tensor.item is original_item
    kinds = sorted({what for what, _, _ in counter.calls})
    assert kinds == [
        "Tensor.__bool__",
        "Tensor.item",
        "Tensor.nonzero",
        "Tensor[boolean mask]",
        "torch.tensor(<host data>, device=...)",
    ], counter.calls


FAMILIES = {
    "segmentation": segmentation,
    "gan": gan,
    "gan_r1_diffaugment": gan_r1,
    "vae": vae,
    "vqvae": vqvae,
    "mask_to_image": mask_to_image,
}  # Mask R-CNN has its own test below


@pytest.mark.parametrize("family", list(FAMILIES))
def test_training_step_does_not_sync(family, tmp_path):
    # two optimizer steps: one step of each net for the GANs (one iteration), two iterations for the others
    counter = run_steps(FAMILIES[family], tmp_path, max_steps=2)
    assert not counter.calls, report(counter)


@pytest.mark.parametrize("family", ["segmentation", "gan", "vqvae"])
def test_the_default_nan_guard_reads_one_host_flag_per_optimizer_step_after_backward(family, tmp_path):
    hooks = ("training_step", "on_before_optimizer_step")
    counter = run_steps(FAMILIES[family], tmp_path, max_steps=2, nan_policy="raise", hooks=hooks)
    assert len(counter.calls) == 1, report(counter)
    (what, site, _), count = next(iter(counter.calls.items()))
    # the host copy's (finite here, finite on every rank), not the device flag's __bool__
    assert what == "Tensor.tolist" and site.startswith("segen/tasks/base.py"), report(counter)
    assert count == 2, report(counter)  # two optimizer steps (one D and one G step for the GAN)
    # read once backward has been queued, not between forward and backward (the GAN steps inside training_step)
    assert counter.by_hook == {"on_before_optimizer_step": 2}, (counter.by_hook, report(counter))


def test_raise_guard_reads_its_host_copy_after_its_own_event():
    """The ``"raise"`` check keeps (finite here, finite on every rank) on the host, copied when the loss was made, and
    its read waits for that copy's event only (a stand-in here: the CPU records none)."""
    from segen.tasks.base import _Check

    class Event:
        waited = False

        def synchronize(self) -> None:
            self.waited = True

    loss = torch.tensor(float("inf"))
    check = _Check.start("loss_d", {"loss": loss}, torch.isfinite(loss), "training step 3")
    assert check.event is None and check.host.tolist() is False  # no process group: one flag, agreed == here
    event = Event()
    assert check._replace(event=event).read() == (False, False) and event.waited
    assert _Check("loss", {}, torch.tensor(True), "step").read() == (True, None)  # "skip": not agreed yet


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA-only path: the guard's flag copy and its event"
)
def test_cuda_raise_guard_waits_for_its_flag_not_for_later_kernels():
    from segen.tasks.base import _Check

    loss = torch.tensor([0.5, float("nan")], device="cuda")
    checks = [_Check.start("loss", {"loss": v}, torch.isfinite(v).all(), "here") for v in loss.unbind()]
    a = torch.randn(4096, 4096, device="cuda")
    for _ in range(50):  # seconds of work queued after the flags' copies
        a = a @ a
        a = a / a.abs().amax().clamp_min(1.0)
    torch.cuda.set_sync_debug_mode("error")  # a device read (item, bool, a pageable copy) raises
    try:
        reads = [check.read() for check in checks]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert reads == [(True, True), (False, False)]
    assert all(check.host.is_pinned() for check in checks)
    assert not torch.cuda.current_stream().query(), "the read waited for the kernels queued after the flag"


def test_the_skip_policy_reads_its_boolean_before_backward(tmp_path):
    """``"skip"`` must decide whether backward runs at all, so its read stays inside ``training_step``."""
    hooks = ("training_step", "on_before_optimizer_step")
    counter = run_steps(FAMILIES["segmentation"], tmp_path, max_steps=2, nan_policy="skip", hooks=hooks)
    assert counter.by_hook == {"training_step": 2}, (counter.by_hook, report(counter))


def test_mask_rcnn_syncs_only_inside_torchvision(tmp_path):
    """torchvision's Mask R-CNN samples proposals and matches boxes with data-dependent shapes (unavoidable without
    rewriting it); segen's step around it, and Lightning's logging of its loss parts, add none."""
    counter = run_steps(instance, tmp_path, max_steps=1)
    assert counter.calls, "expected torchvision's own syncs; has the counter stopped seeing them?"
    assert all(site.startswith("torchvision/") for _, site, _ in counter.calls), report(counter)
