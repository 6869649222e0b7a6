"""Checkpoints that survive the process being killed: atomic writes, ``last.ckpt`` on a schedule and on SIGTERM.

- :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file next to the target, syncs it to disk
  and renames it over the target, so a process killed while writing leaves the previous file intact.
- :class:`SegenCheckpoint` is Lightning's ``ModelCheckpoint`` (best by a metric, ``save_last``) that also writes
  ``last.ckpt`` every ``last_every_n_steps`` optimizer steps and when the run is stopped by SIGTERM (a cluster's
  preemption notice, ``scancel``, ``kill``) or Ctrl+C, and never after another exception: a run that died of a NaN
  keeps its previous, good ``last.ckpt``.

``segen fit`` uses both by default. From Python::

    trainer = Trainer(
        callbacks=[SegenCheckpoint(monitor="val/mIoU", mode="max", last_every_n_steps=200)],
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(task, data, ckpt_path="last")  # Lightning finds the callback's last.ckpt, if there is one
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import sys
import threading
from typing import Any, Literal

import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

__all__ = ["DEFAULT_LAST_EVERY_N_STEPS", "AtomicCheckpointIO", "SegenCheckpoint"]

DEFAULT_LAST_EVERY_N_STEPS = 500  # about a minute of a small model on a GPU; a few minutes on CPUs


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose local writes are atomic and durable.

    Lightning serialises a checkpoint in memory and moves it from the system's temporary folder: when that folder is
    on another file system than the checkpoints (usual on clusters), the move is a copy straight into the target, and
    a process killed during it leaves a truncated ``last.ckpt`` in place of the good one. Here the checkpoint is
    written to ``.<name>.<random>.tmp`` in the target's own folder, flushed and ``fsync``-ed, then ``os.replace``-d
    over the target (atomic on POSIX and Windows within one file system), and the folder is synced so the rename
    survives a crash of the machine. On any failure the temporary file is removed and the old target is untouched.
    Remote paths (``s3://``, ...) are left to Lightning: object stores replace objects atomically.

    ``segen fit`` adds it unless the trainer config names a ``CheckpointIO`` plugin of its own. With the Python API
    pass it yourself: ``Trainer(plugins=[AtomicCheckpointIO()])``.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"AtomicCheckpointIO.save_checkpoint got storage_options={storage_options!r}; it takes none "
                "(local files only): drop the argument or use a CheckpointIO that understands it"
            )
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path)
            return
        target = os.path.abspath(os.fspath(path).removeprefix("file://"))
        folder = os.path.dirname(target)
        os.makedirs(folder, exist_ok=True)
        temporary = os.path.join(
            folder, f".{os.path.basename(target)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        )
        # mode 0o666 less the umask, as for any new file (mkstemp would make it private)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(descriptor, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            raise
        _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Persist a rename in ``folder`` (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class SegenCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also keeps ``last.ckpt`` fresh enough to lose little when the run is killed.

    Besides what ``ModelCheckpoint`` does with the same arguments (``save_last`` defaults to ``True`` here),
    ``last.ckpt`` is written

    - every ``last_every_n_steps`` optimizer steps (``trainer.global_step``, so a GAN's generator and discriminator
      steps both count; ``0`` turns the schedule off), for kills that give no notice (``SIGKILL``, a lost node);
    - at the end of training (``ModelCheckpoint`` alone keeps an earlier one when the run ends mid-epoch);
    - when the run is stopped by SIGTERM: Lightning notes the signal and stops at the end of the current training
      batch, and the checkpoint is written then, in the same state an uninterrupted run has there. Under DDP rank 0
      writes it without waiting for the other ranks (Lightning's SIGTERM handling can leave them out of step);
    - on Ctrl+C in a single-process run: the first Ctrl+C during a training step lets the step finish, writes
      ``last.ckpt`` and stops (a second Ctrl+C stops at once, without writing); a Ctrl+C outside a training step
      (e.g. during validation) writes it straight away. A ``KeyboardInterrupt`` that lands inside a step (DDP, or
      another handler owns SIGINT) leaves ``last.ckpt`` as it was: the weights may be half-updated.

    It is *not* written after any other exception: a run that died of a NaN loss or an out-of-memory error keeps
    the ``last.ckpt`` of its last good step.

    The global random states (torch, CUDA, NumPy, Python) at the time of writing are saved with the callback's
    state and restored when training resumes, so random augmentation and noise drawn from them continue as in the
    unbroken run.

    Lightning's ``fit(ckpt_path="last")`` finds this callback's ``last.ckpt`` (it looks in ``dirpath``). ``segen
    fit`` uses this callback by default; ``--checkpoint.last_every_n_steps N`` sets the schedule there.
    """

    def __init__(
        self,
        dirpath: _PATH | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        *,
        last_every_n_steps: int = DEFAULT_LAST_EVERY_N_STEPS,
        save_last: bool | Literal["link"] | None = True,
        **kwargs: Any,
    ) -> None:
        if last_every_n_steps < 0:
            raise ValueError(
                f"SegenCheckpoint(last_every_n_steps={last_every_n_steps}): expected a number of optimizer steps "
                ">= 1, or 0 to write last.ckpt only at the end of epochs, on SIGTERM and on Ctrl+C"
            )
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor, save_last=save_last, **kwargs)
        self.last_every_n_steps = last_every_n_steps
        self._next_last_step = last_every_n_steps
        self._start_step: int | None = None  # global step when this fit's training began (None: not yet)
        self._last_written_step: int | None = None  # global step of this callback's latest last.ckpt
        self._in_batch = False
        self._stop_requested = False
        self._previous_sigint: Any = None
        self._rng_to_restore: dict[str, Any] | None = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rng_states": _rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores the best-k bookkeeping only when the folder is the same string; the same folder
        # spelt another way (relative vs absolute, as a resumed `segen fit` may give it) is the same folder.
        saved = state_dict.get("dirpath")
        if saved is not None and self.dirpath is not None and _same_folder(saved, self.dirpath):
            state_dict = {**state_dict, "dirpath": self.dirpath}
        super().load_state_dict(state_dict)
        self._rng_to_restore = state_dict.get("rng_states")

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self._rng_to_restore is not None:
            # here, after Lightning made the loader's iterator (which draws a seed) and before the first batch
            _set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        self._start_step = trainer.global_step
        self._last_written_step = None
        n = self.last_every_n_steps
        self._next_last_step = (trainer.global_step // n + 1) * n if n else 0
        self._stop_requested = False
        self._install_sigint_handler(trainer)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._in_batch = True

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._in_batch = False
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._stop_requested:
            self._write_last(trainer, "Ctrl+C")
            self._restore_sigint_handler()
            raise KeyboardInterrupt
        if self.last_every_n_steps and trainer.global_step >= self._next_last_step:
            n = self.last_every_n_steps
            self._next_last_step = (trainer.global_step // n + 1) * n
            if not (trainer.fast_dev_run or trainer.sanity_checking):
                self._write_last(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_sigint_handler()
        super().on_train_end(trainer, pl_module)
        # ModelCheckpoint writes last.ckpt at the end only when it never saved before; a run that ends between
        # epochs (max_steps) would keep the last.ckpt of its latest epoch end instead of its final state
        if self.save_last and self._last_written_step != trainer.global_step and not trainer.fast_dev_run:
            self._write_last(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_sigint_handler()
        # ModelCheckpoint(save_on_exception=True) still does what it does
        super().on_exception(trainer, pl_module, exception)
        sigterm = isinstance(exception, SIGTERMException)
        if not (sigterm or isinstance(exception, KeyboardInterrupt)):
            return  # e.g. a NaN loss: the weights may be bad, keep the last good last.ckpt
        reason = "SIGTERM" if sigterm else "Ctrl+C"
        if (
            not self.save_last
            or trainer.fast_dev_run
            or trainer.sanity_checking
            or self._start_step is None  # training never began: nothing new to save
            or trainer.global_step == self._start_step  # no step since the start (or since the resume)
        ):
            return
        if trainer.global_step == self._last_written_step:
            rank_zero_info(f"{reason}: {self.last_model_path} already holds step {trainer.global_step}")
            return
        if not sigterm and (self._in_batch or trainer.world_size > 1):
            rank_zero_info(
                f"KeyboardInterrupt inside training step {trainer.global_step}: last.ckpt is left as it was "
                f"(step {self._last_written_step}), since the weights may be half-updated. Stop a run with SIGTERM "
                "(kill -TERM <pid>) to have last.ckpt written at the end of the current step."
            )
            return
        self._write_last(trainer, reason)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_sigint_handler()
        super().teardown(trainer, pl_module, stage)

    # ------------------------------------------------------------------ writing
    def _write_last(self, trainer: Trainer, reason: str | None = None) -> None:
        """Write ``last.ckpt`` now (a real file, also with ``save_last="link"``) without touching the best-k
        bookkeeping (``ModelCheckpoint`` skips its own saves at a step where it already saved).

        On a stop request (``reason``) nothing here talks to the other processes: under DDP Lightning's SIGTERM
        handling can leave the ranks out of step (its signal handler broadcasts, and the launcher forwards the signal
        to ranks that got it already), and a barrier or broadcast would then hang instead of letting the job end.
        Rank 0 writes its state, which after a finished step is every rank's. On the schedule all ranks are in step,
        and Lightning's own ``save_checkpoint`` (which waits for every rank) is used.
        """
        candidates = self._monitor_candidates(trainer)
        filepath = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST)
        if self._enable_version_counter:
            version = self.STARTING_VERSION
            while self._exists(filepath, trainer, agree=reason is None) and filepath != self.last_model_path:
                # another run's last.ckpt in this folder: keep it (Lightning's own rule)
                filepath = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST, ver=version)
                version += 1
        previous, self.last_model_path = self.last_model_path, filepath
        if reason is None:
            trainer.save_checkpoint(filepath, self.save_weights_only)
        else:
            # trainer.save_checkpoint without its closing barrier (see above); only rank 0 writes
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)
            trainer.strategy.save_checkpoint(checkpoint, filepath)
        self._last_written_step = trainer.global_step
        if previous and previous != filepath and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)
        if reason is not None:
            rank_zero_info(f"{reason}: wrote {filepath} at step {trainer.global_step}")

    def _exists(self, filepath: str, trainer: Trainer, agree: bool) -> bool:
        """Whether ``filepath`` exists: as rank 0 sees it (a broadcast) when the ranks are in step, else locally."""
        return self.file_exists(filepath, trainer) if agree else self._fs.exists(filepath)

    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_written_step = trainer.global_step

    # ------------------------------------------------------------------ Ctrl+C
    def _install_sigint_handler(self, trainer: Trainer) -> None:
        """Let a first Ctrl+C finish the current step (single process, main thread, SIGINT not taken over by
        someone else); under DDP the ranks could stop at different steps, so Lightning's handling stays."""
        if (
            trainer.world_size > 1
            or not self.save_last
            or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            return
        self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _restore_sigint_handler(self) -> None:
        if self._previous_sigint is None:
            return
        with contextlib.suppress(ValueError):  # not in the main thread any more: nothing to restore there
            if signal.getsignal(signal.SIGINT) == self._on_sigint:
                signal.signal(signal.SIGINT, self._previous_sigint)
        self._previous_sigint = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if not self._in_batch or self._stop_requested:
            self._restore_sigint_handler()
            raise KeyboardInterrupt
        self._stop_requested = True
        print(
            "Ctrl+C: finishing this training step, then writing last.ckpt and stopping (Ctrl+C again stops at once)",
            file=sys.stderr,
            flush=True,
        )


def _same_folder(a: _PATH, b: _PATH) -> bool:
    try:
        return os.path.realpath(os.fspath(a)) == os.path.realpath(os.fspath(b))
    except (TypeError, ValueError):
        return False


def _rng_states() -> dict[str, Any]:
    """The global random states, as tensors and plain Python values (checkpoints load with ``weights_only=True``).
    CUDA's is the current device's only: asking for every device's would start a context on each of them."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": [version, list(python_state), python_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    version, python_state, python_gauss = states["python"]
    random.setstate((version, tuple(python_state), python_gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
