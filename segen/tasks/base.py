"""What every segen task shares for reliability: a guard against non-finite losses and checks that a checkpoint fits.

Lightning has neither. Its ``terminate_on_nan`` is gone, so a run whose loss turns NaN keeps stepping and writes NaN
weights into every later checkpoint; and a checkpoint of another task or configuration fails inside
``__init__`` (``unexpected keyword argument``) or inside ``load_state_dict`` (a list of size mismatches) without
saying which file or which setting is the cause. :class:`SegenTask` closes both gaps for every task family:

- **Non-finite loss** (``nan_policy``): ``"raise"`` (default) stops with :class:`NonFiniteLossError` naming the
  step, the epoch and batch, and the loss parts that are not finite, before the optimizer steps, so the weights and
  every checkpoint stay finite; ``"skip"`` drops that optimizer step instead (no backward, no update) and counts it in
  ``train/skipped_steps``, and still raises after :attr:`SegenTask.max_consecutive_skips` skips in a row (a diverged
  run, not a bad batch); ``"off"`` checks nothing. Under ``"raise"`` the loss's flag is copied to the host without
  waiting and read in ``on_before_optimizer_step``, waiting for that copy only (a CUDA event), not for the backward
  pass queued after it, so the GPU keeps working while the host goes on; under ``"skip"`` it is read before
  backward (a skipped step runs none), one host-device sync. ``"off"`` reads nothing.
- **Checkpoint fit**: a checkpoint records the class that wrote it. Loading it into another task class, through
  ``load_from_checkpoint`` or the Trainer's ``ckpt_path``, raises :class:`CheckpointMismatchError` naming both
  classes; a checkpoint of the same class with other shapes (another ``num_classes``, another net) raises the same
  error listing the tensors that differ and the hyper-parameters that explain it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from torch import Tensor

from segen._distributed import distributed
from segen.registry import lookup


class _Check(NamedTuple):
    """One :meth:`SegenTask.loss_is_usable` call, until its flag is read."""

    name: str  # which loss, for the message
    values: dict[str, Tensor]  # its detached parts
    finite: Tensor  # () bool on the task's device: every part finite
    where: str  # the step, for the message
    host: Tensor | None = None  # "raise" only, on the host: () bool; under DDP (2,) (here, on every rank)
    event: Any = None  # CUDA event recorded after the copy into ``host``; None: the copy is complete

    def read(self) -> tuple[bool, bool | None]:
        """(finite on this rank, finite on every rank or None when not agreed yet); waits for this flag only."""
        if self.host is None:
            return bool(self.finite), None  # a host-device sync on a GPU
        if self.event is not None:
            self.event.synchronize()  # the copy, not the work queued after it
        flags = self.host.tolist()  # a bool, or [here, everywhere] under DDP
        here, everywhere = (flags, flags) if isinstance(flags, bool) else flags
        return bool(here), bool(everywhere)

    @staticmethod
    def start(name: str, values: dict[str, Tensor], finite: Tensor, where: str) -> _Check:
        """A check whose flag, agreed over the DDP ranks on the device, is on its way to the host."""
        flags = finite  # () bool: in one process, finite here is finite everywhere
        if distributed():  # queued like a kernel; every rank calls loss_is_usable at the same points
            agreed = finite.to(torch.int32)
            dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
            flags = torch.stack([finite, agreed.bool()])  # (2,) bool
        host, event = _copy_to_host(flags)
        return _Check(name, values, finite, where, host, event)


class _PendingChecks(list):
    """The ``"raise"`` checks of the current optimizer step, not read yet. A copied or pickled task (SWA's deepcopy,
    DDP spawn) starts with none: their CUDA events belong to this process's device queue and cannot be copied."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _PendingChecks:
        return _PendingChecks()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return _PendingChecks, ()


def _copy_to_host(value: Tensor) -> tuple[Tensor, Any]:
    """A copy of ``value`` on the host, started without waiting: on CUDA a ``non_blocking`` copy into pinned memory
    and the CUDA event recorded after it (``event.synchronize()`` waits for this copy only, not for work queued
    later); on another accelerator a complete copy and ``None``; on the CPU ``value`` itself (detached) and ``None``,
    since it is on the host already and the callers never write into it."""
    if value.device.type == "cpu":
        return value.detach(), None
    on_cuda = value.device.type == "cuda"
    host = torch.empty(value.shape, dtype=value.dtype, pin_memory=on_cuda)
    host.copy_(value, non_blocking=on_cuda)
    event = None
    if on_cuda:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(value.device))  # the stream the copy was queued on
    return host, event


def _all_finite(values: list[Tensor]) -> Tensor:
    """``()`` bool on the tensors' device: every element of every tensor finite.

    Why not ``torch.isfinite(v).all()`` per part: ``isfinite`` is a composite of four kernels (abs, ne, eq, mul), so a
    three-part loss cost 18 launches per step, which a host-bound step on a GPU pays in full. Here the single-number
    parts (usually all of them) are stacked and checked at once with ``x * 0 == 0`` (0 for every finite ``x``, NaN
    for NaN and +-inf): four kernels for any number of parts.
    """

    def check(x: Tensor) -> Tensor:
        return (x * 0).eq(0).all()

    scalars = [v.reshape(()) for v in values if v.numel() == 1]
    flags = [check(torch.stack(scalars))] if scalars else []
    flags += [check(v) for v in values if v.numel() != 1]
    if len(flags) <= 1:
        return flags[0] if flags else torch.ones((), dtype=torch.bool)
    return torch.stack(flags).all()


class _HostCopies:
    """Copies of the progress-bar scalars of recent steps on the host, made without waiting for the device.

    Why: after every batch Lightning turns each progress-bar value into a Python number (``.item()`` in
    ``_ResultCollection.metrics``), even with the progress bar off and even for a key not logged on that batch (its
    last value is converted again). On a GPU that is one host-device sync per step: the host waits for the step's last
    kernel and the GPU then idles while Python fetches the next batch and runs the hooks. A value already on the host
    costs nothing to convert, and Lightning has no option for it, so :meth:`SegenTask.log_train` logs these copies.

    :meth:`put` stacks a step's values on the device and starts a ``non_blocking`` copy into pinned host memory,
    with a CUDA event recorded after it; on the CPU the copy is complete at once. :meth:`take` gives the newest copy
    that has arrived and never waits; with ``wait=True`` (the steps whose values loggers and callbacks read) it
    gives the newest copy, waiting for that copy only.
    """

    max_in_flight = 16

    def __init__(self) -> None:
        self._queue: list[tuple[tuple[str, ...], Tensor, Any]] = []  # (keys, (K,) host values, event | None)

    def __getstate__(self) -> dict[str, Any]:
        # a copied or pickled task (SWA's deepcopy, DDP spawn) starts empty: copies in flight belong to this
        # process's device queue
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def put(self, values: Mapping[str, Tensor]) -> None:
        for key, value in values.items():
            if value.numel() != 1:
                raise ValueError(
                    f"log_train: the progress-bar value {key!r} has shape {tuple(value.shape)}; expected a single "
                    "number (reduce it first, e.g. .mean())"
                )
        stacked = torch.stack([value.detach().reshape(()).float() for value in values.values()])  # (K,)
        self._queue.append((tuple(values), *_copy_to_host(stacked)))

    def take(self, wait: bool = False) -> dict[str, Tensor]:
        """The newest copy that has arrived, as ``{key: () host tensor}``, and ``{}`` when none has (the bar then
        keeps its last value); ``wait=True``: the newest copy, waiting for it. The copies before it are dropped."""
        if wait and self._queue:
            event = self._queue[-1][2]
            if event is not None:
                event.synchronize()  # this copy only, not the work queued after it
        ready = [i for i, (_, _, event) in enumerate(self._queue) if event is None or event.query()]
        if not ready:
            del self._queue[: -self.max_in_flight]  # a device far behind: forget the oldest copies
            return {}
        keys, host, _ = self._queue[ready[-1]]
        del self._queue[: ready[-1] + 1]
        return dict(zip(keys, host.unbind(), strict=True))


__all__ = [
    "NAN_POLICIES",
    "CheckpointMismatchError",
    "NonFiniteLossError",
    "SegenTask",
    "check_checkpoint_class",
    "check_nan_policy",
    "checkpoint_record",
    "read_checkpoint_header",
    "read_checkpoint_record",
]

NAN_POLICIES: dict[str, str] = {
    "raise": "stop with an error naming the step and the loss part",
    "skip": "skip the optimizer step and count it in train/skipped_steps",
    "off": "no check (no host-device sync per step)",
}
_CHECKPOINT_KEY = "segen"  # the checkpoint entry written by SegenTask.on_save_checkpoint


class NonFiniteLossError(FloatingPointError):
    """A training loss was NaN or infinite (``nan_policy="raise"``, or too many skips in a row)."""


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by another task class, or by a configuration with other tensor shapes."""


def check_nan_policy(value: str) -> str:
    """``value`` if it is one of :data:`NAN_POLICIES`, else ``ValueError`` listing them (with the closest name)."""
    lookup("nan_policy", value, NAN_POLICIES)
    return value


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe(value: Tensor) -> str:
    value = value.detach().float()
    return f"{value.item():.4g}" if value.numel() == 1 else f"{tuple(value.shape)} tensor"


class SegenTask(LightningModule):
    """Base of every segen task: the non-finite-loss guard (``nan_policy``) and the checkpoint checks.

    A subclass stores ``nan_policy`` among its hyper-parameters and calls :meth:`loss_is_usable` with a step's loss
    parts before that step updates weights (automatic optimization: return ``None`` from ``training_step`` when it
    says ``False``; manual optimization: do not step).
    """

    max_consecutive_skips: int = 25  # "skip" still raises after this many non-finite steps in a row
    log_train_every_step: bool = False  # True: log_train logs every key on every step (see log_train)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skipped_steps = 0  # non-finite steps dropped under nan_policy="skip" (saved in checkpoints)
        self._consecutive_skips = 0
        self._buffers_before: list[tuple[Tensor, Tensor]] = []  # (buffer, copy) at the start of the step
        self._pending_checks = _PendingChecks()  # "raise" checks not read yet (see loss_is_usable)
        self._bar_copies = _HostCopies()  # progress-bar values on their way to the host (see log_train)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Under ``nan_policy="skip"``, copy the floating-point buffers (BatchNorm statistics, EMA codebooks): the
        forward pass of a NaN batch has already written NaN into them when the loss shows it, and a skipped step
        must leave the model as it was. A device-side copy of the buffers only (no parameters, no host sync)."""
        if self.nan_policy == "skip":
            self._buffers_before = [(b, b.detach().clone()) for b in self.buffers() if b.is_floating_point()]

    # ------------------------------------------------------------------ training logs
    def log_train(
        self, values: Mapping[str, Tensor], batch_size: int, prog_bar: Collection[str] = ()
    ) -> None:
        """Log a training step's scalars (``on_step``): the ``prog_bar`` keys on every step when the Trainer shows a
        progress bar, the others (and the ``prog_bar`` keys without a bar) only on the steps whose values can reach
        a logger or the end of the run.

        Why: Lightning's ``self.log`` costs host time per key and per call (each call walks its record of that key),
        and loggers write only every ``trainer.log_every_n_steps`` steps. With a GAN's eight keys that was 3-5 ms per
        step on an H200's host, as long as a small model's whole step on the GPU, for values no logger ever saw.
        The other keys are logged on the logger's steps, on the last batch of an epoch, on the run's last step and
        when it is stopping, so what loggers receive and the ``trainer.callback_metrics`` after an epoch or a fit are
        unchanged; between those steps ``callback_metrics`` keeps their last logged values. The ``prog_bar`` keys
        cost about 0.6 ms per key and step on 2 CPU cores (a DCGAN's two: 1.25 ms of a 9.8 ms tiny step), so they
        follow the same rule when nothing shows them (``enable_progress_bar=False``, usual in sweeps and batch
        jobs). Set the class attribute ``log_train_every_step = True`` to log every key on every step.

        The ``prog_bar`` keys reach Lightning as host copies (:class:`_HostCopies`): on a GPU the newest copy that
        has arrived, usually the previous step's, and on the steps above this step's own copy (waiting for it).
        Lightning's per-batch ``.item()`` of a bar value then never waits for the GPU.
        """
        if self._trainer is not None and self._trainer.barebones:
            return  # Lightning drops every self.log under barebones=True: skip the copies too
        read = self._train_logs_are_read()
        shown = {key: value for key, value in values.items() if key in prog_bar}
        if shown and (read or self._progress_bar_is_shown()):
            self._bar_copies.put(shown)
            shown = self._bar_copies.take(wait=read)  # host tensors: no sync when Lightning reads them
            if shown:
                self.log_dict(shown, prog_bar=True, batch_size=batch_size)
        if read:
            rest = {key: value for key, value in values.items() if key not in prog_bar}
            if rest:
                self.log_dict(rest, batch_size=batch_size)

    def _progress_bar_is_shown(self) -> bool:
        """Whether the Trainer has a progress bar (``enable_progress_bar=True``, the default) to show bar values on."""
        trainer = self._trainer
        return trainer is None or trainer.progress_bar_callback is not None

    def _train_logs_are_read(self) -> bool:
        """Whether this training step's logged values reach a logger or the end of an epoch or of the run."""
        trainer = self._trainer
        if trainer is None or self.log_train_every_step:
            return True
        connector = getattr(trainer, "_logger_connector", None)  # Lightning's own rule, not public API
        if connector is None:
            return True
        logger_step = connector.should_update_logs
        # automatic optimization steps after training_step returns; a manual step has stepped already
        steps_after = 1 if self.automatic_optimization else 0
        last_step = 0 < trainer.max_steps <= trainer.global_step + steps_after
        return bool(
            logger_step or last_step or trainer.is_last_batch or trainer.should_stop or trainer.fast_dev_run
        )

    # ------------------------------------------------------------------ random draws under DDP
    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self._trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def per_rank_randn(self, rng: torch.Generator, shape: tuple[int, ...]) -> Tensor:
        """``randn(shape)`` from the CPU generator ``rng`` on the task's device, different on every DDP rank.

        A task's noise stream must stay identical on all ranks (rank 0's state is the one checkpointed), yet the
        ranks must not draw the same noise: a generator would then see one batch of fakes ``world_size`` times and
        DDP would add nothing to its batch. So every rank draws the whole world's ``(world_size * B, ...)`` and keeps
        its own rows. In one process this is exactly ``torch.randn(shape, generator=rng)``."""
        rank, world = self._rank_and_world()
        n = shape[0]
        noise = torch.randn((world * n, *shape[1:]), generator=rng)[rank * n : (rank + 1) * n]  # shape
        return noise.to(self.device, non_blocking=True)

    def per_rank_generator(self, rng: torch.Generator) -> torch.Generator:
        """A CPU generator for this rank's draws of one step, seeded from the shared stream ``rng`` (which advances
        alike on all ranks, see :meth:`per_rank_randn`); in one process ``rng`` itself."""
        rank, world = self._rank_and_world()
        if world == 1:
            return rng
        seeds = torch.randint(0, 2**62, (world,), generator=rng)
        return torch.Generator().manual_seed(int(seeds[rank]))

    # ------------------------------------------------------------------ non-finite losses
    @property
    def nan_policy(self) -> str:
        return self.hparams.get("nan_policy", "raise")

    def loss_is_usable(self, parts: Mapping[str, Tensor], name: str = "loss") -> bool:
        """``True`` when every tensor in ``parts`` is finite on every rank, so the step may update weights.

        Otherwise, by ``nan_policy``: raise :class:`NonFiniteLossError`, or count a skip (logged as
        ``train/skipped_steps``) and return ``False``. ``name`` says which loss this is in the message (``loss_d``
        for a GAN's discriminator). Under DDP the ranks agree (one boolean all-reduce), so all of them skip or raise
        together and no rank waits in a gradient all-reduce that the others never join.

        Under ``"raise"`` inside a Trainer this returns ``True`` at once: the flag (agreed over the ranks on the
        device) starts a ``non_blocking`` copy to pinned host memory, and :meth:`on_before_optimizer_step` (after
        backward is queued, before the weights change) waits for that copy only. A plain read, here or there, would
        wait for every kernel queued so far, and the GPU would idle while Python queues the next ones. ``"skip"``
        must know now whether to run backward at all, so it reads here.
        """
        policy = self.nan_policy
        if policy == "off":
            return True
        values = {key: value.detach() for key, value in parts.items()}
        finite = _all_finite(list(values.values()))  # () bool on the device: no sync
        if policy == "raise" and self._trainer is not None:
            self._pending_checks.append(_Check.start(name, values, finite, self._where()))
            return True
        return self._settle([_Check(name, values, finite, self._where())])

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Read the ``"raise"`` checks of the losses behind this optimizer step: backward has been queued, the update
        not yet, so a non-finite loss never reaches the weights. The host waits until the device has computed the
        flags (the forward pass), not for the backward pass. A subclass that overrides this hook calls
        ``super().on_before_optimizer_step(optimizer)``."""
        self.settle_loss_checks()

    def on_train_epoch_end(self) -> None:
        self.settle_loss_checks()  # losses of an accumulation that no optimizer step followed

    def settle_loss_checks(self) -> None:
        """Read the pending ``"raise"`` checks now (see :meth:`loss_is_usable`); raise if one was not finite."""
        if self._pending_checks:
            pending, self._pending_checks = self._pending_checks, _PendingChecks()
            self._settle(pending)

    def _settle(self, checks: list[_Check]) -> bool:
        reads = [check.read() for check in checks]
        if all(everywhere is not None for _, everywhere in reads):
            finite = all(everywhere for _, everywhere in reads)  # agreed over the ranks already
        else:
            finite = all(here for here, _ in reads)
            if self._trainer is not None:
                finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            self._consecutive_skips = 0
            return True
        # the first check that failed on this rank (any one, if only another rank's failed)
        failed = next((check for check, (here, _) in zip(checks, reads, strict=True) if not here), checks[-1])
        name, values, where = failed.name, failed.values, failed.where
        bad = [f"{key}={_describe(v)}" for key, v in values.items() if not torch.isfinite(v).all()]
        policy = self.nan_policy
        if policy == "skip":  # the model as it was before this step, whether it is skipped or the run stops
            with torch.no_grad():
                for buffer, before in self._buffers_before:
                    buffer.copy_(before)
        if policy == "skip" and self._consecutive_skips < self.max_consecutive_skips:
            self._consecutive_skips += 1
            self.skipped_steps += 1
            self.log("train/skipped_steps", torch.tensor(float(self.skipped_steps)), reduce_fx="max")
            return False
        parts_text = ", ".join(bad) if bad else "finite on this rank; not finite on another rank"
        if policy == "skip":
            raise NonFiniteLossError(
                f"{type(self).__name__}: the {name} was not finite for {self._consecutive_skips + 1} steps in a row "
                f"(nan_policy='skip' allows {self.max_consecutive_skips}); last at {where}: {parts_text}. The run "
                "has diverged: lower the learning rate, clip gradients (--trainer.gradient_clip_val) or check the data."
            )
        raise NonFiniteLossError(
            f"{type(self).__name__}: non-finite {name} at {where}: {parts_text}. The weights were not updated with "
            "it. Lower the learning rate, clip gradients (--trainer.gradient_clip_val), check this batch's data, or "
            "pass nan_policy='skip' to skip such steps (counted in train/skipped_steps)."
        )

    def _where(self) -> str:
        if self._trainer is None:
            return "a step outside a Trainer"
        trainer = self.trainer
        batch = trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1
        return f"training step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch})"

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the writing class (and its bases) and the skip count; plain strings and ints, so the checkpoint
        stays loadable with ``torch.load(weights_only=True)``."""
        checkpoint[_CHECKPOINT_KEY] = {
            "task": _qualname(type(self)),
            "task_bases": [_qualname(c) for c in type(self).__mro__ if issubclass(c, SegenTask)],
            # as saved: load_from_checkpoint overwrites the checkpoint's own hyper_parameters with its arguments, and
            # a mismatch message must name the settings that differ from the writer's
            "hyper_parameters": dict(self.hparams),
            "skipped_steps": self.skipped_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another task class or of other tensor shapes, with a message that says which."""
        record = checkpoint.get(_CHECKPOINT_KEY) or {}
        check_checkpoint_class(record, type(self))
        self._check_checkpoint_shapes(checkpoint)
        self.skipped_steps = int(record.get("skipped_steps", 0))

    def _check_checkpoint_shapes(self, checkpoint: Mapping[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if not isinstance(state, Mapping):
            return
        own = self.state_dict()
        problems = [
            f"{key}: {tuple(value.shape)} in the checkpoint, {tuple(own[key].shape)} here"
            for key, value in state.items()
            if key in own
            and isinstance(value, Tensor)
            and isinstance(own[key], Tensor)
            and value.shape != own[key].shape
        ]
        if self.strict_loading:
            missing = sorted(set(own) - set(state))
            unexpected = sorted(set(state) - set(own))
            if missing:
                problems.append(f"missing from the checkpoint: {_some(missing)}")
            if unexpected:
                problems.append(f"not in this model: {_some(unexpected)}")
        if not problems:
            return
        record = checkpoint.get(_CHECKPOINT_KEY) or {}
        saved = record.get("hyper_parameters") or checkpoint.get("hyper_parameters") or {}
        differing = _differing_hparams(saved, dict(self.hparams))
        hint = (
            f"hyper-parameters that differ (checkpoint -> this model): {differing}"
            if differing
            else "the hyper-parameters agree, so the network itself differs (another net or a changed class)"
        )
        raise CheckpointMismatchError(
            f"this checkpoint does not fit this {type(self).__name__}: {'; '.join(problems[:5])}"
            f"{f' (and {len(problems) - 5} more)' if len(problems) > 5 else ''}. {hint}"
        )

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``, with an error naming the file and the class that wrote it when the
        checkpoint belongs to another task (whose hyper-parameters this class's ``__init__`` refuses). The file is
        read a second time only on that failure path."""
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except CheckpointMismatchError as err:
            raise CheckpointMismatchError(f"{checkpoint_path!s}: {err}") from err
        except (TypeError, ValueError) as err:  # __init__ refused the other task's hyper-parameters
            saved = (read_checkpoint_record(checkpoint_path) or {}).get("task")
            if saved is None or saved == _qualname(cls):
                raise
            raise CheckpointMismatchError(
                f"{checkpoint_path!s} was written by {saved}, not by {_qualname(cls)}: load it with "
                f"{saved.rsplit('.', 1)[-1]}.load_from_checkpoint ({cls.__name__}.__init__ said: {err})"
            ) from err


def _some(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _differing_hparams(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    keys = [k for k in sorted(set(saved) & set(current)) if saved[k] != current[k]]
    return ", ".join(f"{k}: {saved[k]!r} -> {current[k]!r}" for k in keys[:6])


def check_checkpoint_class(record: Mapping[str, Any], cls: type, source: str = "this checkpoint") -> None:
    """Raise :class:`CheckpointMismatchError` when ``record`` (a checkpoint's ``segen`` entry) was written by a task
    class unrelated to ``cls``; the same class, a subclass or a base of it pass (user subclasses load segen
    checkpoints). A checkpoint without the record passes: the shape check then decides."""
    saved = record.get("task")
    if saved is None:
        return
    if saved in [_qualname(c) for c in cls.__mro__] or _qualname(cls) in record.get("task_bases", []):
        return
    raise CheckpointMismatchError(
        f"{source} was written by {saved}, not by {_qualname(cls)} (or a class related to it); load it with "
        f"{saved.rsplit('.', 1)[-1]}.load_from_checkpoint, or give the matching model config"
    )


def read_checkpoint_header(path: str | Path) -> dict[str, Any]:
    """A checkpoint file with ``weights_only=True`` and its tensors memory-mapped rather than read, so looking at its
    metadata (hyper-parameters, the ``segen`` record) costs no tensor I/O before the real load reads it once."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint if isinstance(checkpoint, dict) else {}


def checkpoint_record(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``segen`` entry of a loaded checkpoint (the class that wrote it, its hyper-parameters), if any."""
    record = checkpoint.get(_CHECKPOINT_KEY)
    return record if isinstance(record, dict) else None


def read_checkpoint_record(path: Any) -> dict[str, Any] | None:
    """:func:`checkpoint_record` of a checkpoint file, or ``None`` when it cannot be read with ``weights_only=True``."""
    if not isinstance(path, (str, Path)):
        return None
    try:
        return checkpoint_record(read_checkpoint_header(path))
    except Exception:  # an unreadable file: the caller's own error says more
        return None
