"""The ``segen`` command: LightningCLI with segen's defaults.

``segen fit|validate|test|predict -c CONFIG [--key value ...]``. Models and data modules are chosen by ``class_path``
in the YAML; shape arguments (``num_classes``, ``in_channels``) are linked from the data module to the model, so they
are typed once. What LightningCLI does not do and segen adds:

- a default ``WandbLogger`` that logs offline when there are no W&B credentials, saying so in one line;
- a default checkpoint callback (:class:`~segen.callbacks.SegenCheckpoint`) that tracks the task's own ``monitor``
  metric (e.g. ``val/mIoU``) and keeps ``last.ckpt``: every ``--checkpoint.last_every_n_steps`` steps (500), at the
  end of epochs and when the run is stopped by SIGTERM or Ctrl+C; checkpoints are written atomically
  (:class:`~segen.callbacks.AtomicCheckpointIO`);
- ``--ckpt_path last`` resumes the newest ``last*.ckpt`` under ``trainer.default_root_dir`` from earlier runs
  (:func:`find_last_checkpoint`), or starts from scratch when there is none, so a preempted job is relaunched with
  the command it was first launched with;
- after ``fit``: the best checkpoint's path and a table of the final validation metrics;
- ``predict`` with a semantic task writes one colourised class-map PNG per image (:class:`~segen.callbacks.MaskWriter`),
  e.g. for a folder of new images: ``segen predict -c CONFIG --ckpt_path best.ckpt --data.predict_dir photos/``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import netrc
import os
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, _get_module_type, _InstantiatorFn
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from segen.callbacks.checkpoint import DEFAULT_LAST_EVERY_N_STEPS, AtomicCheckpointIO, SegenCheckpoint
from segen.callbacks.predictions import MaskWriter
from segen.tasks.base import check_checkpoint_class, checkpoint_record, read_checkpoint_header
from segen.tasks.segmentation import SegmentationTask

__all__ = [
    "SegenCLI",
    "find_last_checkpoint",
    "format_metrics_table",
    "has_wandb_credentials",
    "main",
    "wandb_mode",
]

# (data module attribute, task argument) pairs, linked when the classes are instantiated; a task without the
# argument ignores the link, and a data module without the attribute gives None (e.g. image_size of VOC).
SHAPE_LINKS: tuple[tuple[str, str], ...] = (
    ("num_classes", "num_classes"),
    ("in_channels", "in_channels"),
    ("in_channels", "channels"),
    ("image_size", "image_size"),
    ("mean", "mean"),  # the data's image normalisation, for tasks that undo it (MaskToImageTask)
    ("std", "std"),
)


def has_wandb_credentials() -> bool:
    """True when W&B could log online: ``WANDB_API_KEY`` is set or ``wandb login`` wrote a netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode() -> str:
    """``online``, ``offline`` or ``disabled``: ``WANDB_MODE`` when set, else online only with credentials."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("offline", "dryrun"):
        return "offline"
    if env == "disabled":
        return "disabled"
    if env in ("online", "run"):
        return "online"
    return "online" if has_wandb_credentials() else "offline"


def find_last_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The newest (by modification time) ``last*.ckpt`` anywhere under ``root``, or ``None``.

    This is what ``--ckpt_path last`` resumes: every ``segen fit`` writes its checkpoints into a new folder
    (``<root>/<project>/<run id>/checkpoints/`` with W&B, ``<root>/lightning_logs/version_N/checkpoints/`` with
    TensorBoard or CSV), where Lightning's own ``ckpt_path="last"`` would look only in the new, empty one. Hidden
    folders and ``wandb`` folders (run files, never checkpoints) are not searched.
    """
    newest: tuple[float, str] | None = None
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d != "wandb"]
        for name in files:
            if name.startswith("last") and name.endswith(".ckpt"):
                path = os.path.join(folder, name)
                try:
                    key = (os.path.getmtime(path), path)
                except OSError:  # removed meanwhile, or a broken link
                    continue
                newest = key if newest is None or key > newest else newest
    return Path(newest[1]) if newest is not None else None


def format_metrics_table(metrics: dict[str, Any], prefix: str = "val/") -> str:
    """A two-column text table of the metrics whose name starts with ``prefix``, sorted by name."""
    rows = [(k, float(v)) for k, v in sorted(metrics.items()) if k.startswith(prefix)]
    if not rows:
        return f"(no {prefix}* metrics were logged)"
    width = max(len("metric"), *(len(k) for k, _ in rows))
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ----------"]
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in rows]
    return "\n".join(lines)


class SegenCLI(LightningCLI):
    """LightningCLI for any segen task and data module (both chosen by ``class_path``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        # tasks own their optimizers: one place to configure them, not two
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(LightningModule, LightningDataModule, *args, **kwargs)

    def _add_instantiators(self) -> None:
        # Lightning's instantiators record every applied link in the task's hparams, also links to arguments the
        # task does not have (image_size for a SegmentationTask); reloading such a checkpoint then fails. Ours drop
        # the links the class cannot take. (Overrides a private LightningCLI hook, pinned by tests/test_cli.py.)
        for key, base, subclasses in (
            ("model", self._model_class, self.subclass_mode_model),
            ("data", self._datamodule_class, self.subclass_mode_data),
        ):
            self.parser.add_instantiator(
                _AcceptedLinksInstantiator(cli=self, key=key), _get_module_type(base), subclasses=subclasses
            )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--checkpoint.last_every_n_steps",
            type=int,
            default=DEFAULT_LAST_EVERY_N_STEPS,
            help="Write last.ckpt every N optimizer steps (0: only at epoch ends, on SIGTERM and on Ctrl+C). "
            "Applies to segen's default checkpoint callback, not to a ModelCheckpoint in trainer.callbacks.",
        )
        for source, target in SHAPE_LINKS:
            parser.link_arguments(
                "data",
                f"model.init_args.{target}",
                compute_fn=_attribute_getter(source),
                apply_on="instantiate",
            )

    def _parse_ckpt_path(self) -> None:
        """Before LightningCLI merges a ``--ckpt_path`` checkpoint's hyper-parameters into the model config:

        - refuse a checkpoint written by a task class unrelated to the config's model, naming both (the merge would
          fail with a parser error about some option, or silently switch the model to the checkpoint's class);
        - skip the merge for a checkpoint written from Python (no ``_class_path`` among its hyper-parameters), which
          LightningCLI cannot merge (a parser error); the config's model is used, and the task's checkpoint checks
          name any setting that does not fit;
        - merge only the hyper-parameters the checkpoint's class takes as ``__init__`` arguments. A task may record
          more (``MaskToImageTask`` keeps its fixed GAN settings, ``loss="hinge"`` and others, for the GAN code that
          reads them); LightningCLI would pass those to ``__init__`` too, which refuses them, and a run could then
          be resumed only with ``--ckpt_path last``, never with the checkpoint's path.

        (Overrides a private LightningCLI hook, pinned by tests/test_bad_input.py and tests/test_interrupted_runs.py.)"""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return super()._parse_ckpt_path()
        checkpoint = read_checkpoint_header(
            ckpt_path
        )  # tensors memory-mapped: LightningCLI reads the file next
        record = checkpoint_record(checkpoint)
        model = self.config[subcommand].get("model")
        class_path = model.get("class_path") if model is not None and hasattr(model, "get") else None
        if record is not None and class_path:
            check_checkpoint_class(record, _import_class(class_path), f"--ckpt_path {ckpt_path}")
        hparams = checkpoint.get("hyper_parameters")
        if not isinstance(hparams, dict) or "_class_path" not in hparams:
            return None
        hparams = {key: value for key, value in hparams.items() if key != "_instantiator"}
        saved_class = hparams.pop("_class_path")
        taken = init_arguments(_import_class(saved_class))
        if taken is not None:
            hparams = {key: value for key, value in hparams.items() if key in taken}
        merged = {subcommand: {"model": {"class_path": saved_class, "dict_kwargs": hparams}}}
        try:
            self.config = self.parser.parse_object(merged, self.config)
        except SystemExit:
            sys.stderr.write(f"Parsing of the hyper-parameters of --ckpt_path {ckpt_path} failed\n")
            raise
        return None

    # ------------------------------------------------------------------ trainer defaults
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        self._resume_dir = self._resolve_last_checkpoint(config)
        if config.get("logger") in (None, True):
            kwargs["logger"] = self._default_logger(config)
        plugins = self._plugins_with_atomic_io(config)
        if plugins is not None:
            kwargs["plugins"] = plugins
        configured = config.get("callbacks") or []
        configured = configured if isinstance(configured, (list, tuple)) else [configured]
        # checked before the Trainer adds its own default ModelCheckpoint to the same list
        user_checkpoint = any(isinstance(c, ModelCheckpoint) for c in configured)
        trainer = super().instantiate_trainer(**kwargs)
        if not user_checkpoint:
            self._add_default_checkpoint(trainer)
        return trainer

    def _resolve_last_checkpoint(self, trainer_config: dict[str, Any]) -> Path | None:
        """``--ckpt_path last``: the newest ``last*.ckpt`` under ``trainer.default_root_dir`` (else the working
        folder) from earlier runs (:func:`find_last_checkpoint`). ``fit`` resumes it and keeps writing into its
        folder; with none, ``fit`` starts from scratch (a preempted job's first launch runs the same command), and
        ``validate``/``test``/``predict`` fail. Returns the folder to keep writing checkpoints into."""
        if self.subcommand is None or self.config_init[self.subcommand].get("ckpt_path") != "last":
            return None
        root = Path(trainer_config.get("default_root_dir") or os.getcwd())
        found = find_last_checkpoint(root) if root.is_dir() else None
        key = f"{self.subcommand}.ckpt_path"
        if found is None:
            if self.subcommand != "fit":
                raise FileNotFoundError(
                    f"--ckpt_path last: no last*.ckpt under {root} (trainer.default_root_dir, else the working "
                    f"folder); expected a checkpoint from an earlier 'segen fit' there, or give its path"
                )
            self.config_init[key] = None  # Lightning would look in this run's new, empty folder and warn
            if rank_zero_only.rank == 0:
                print(f"--ckpt_path last: no last*.ckpt under {root}, starting from scratch", flush=True)
            return None
        self.config_init[key] = str(found)
        if rank_zero_only.rank == 0:
            print(f"--ckpt_path last: resuming from {found} (the newest last*.ckpt under {root})", flush=True)
        if self.subcommand != "fit":
            return None
        # the folder is reused on purpose: Lightning need not warn that it is not empty
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        return found.parent

    def _plugins_with_atomic_io(self, trainer_config: dict[str, Any]) -> list[Any] | None:
        """The configured plugins plus :class:`AtomicCheckpointIO`, unless a ``CheckpointIO`` is configured (as a
        plugin or inside a strategy object) or the run is on TPUs (which need Lightning's XLA checkpoint IO).
        ``None``: leave the plugins as configured."""
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        strategy = trainer_config.get("strategy")
        names = f"{trainer_config.get('accelerator')} {strategy if isinstance(strategy, str) else ''}".lower()
        if (
            any(isinstance(p, CheckpointIO) for p in plugins)
            or (isinstance(strategy, Strategy) and strategy._checkpoint_io is not None)
            or "tpu" in names
            or "xla" in names
        ):
            return None
        return [*plugins, AtomicCheckpointIO()]

    def _default_logger(self, trainer_config: dict[str, Any]) -> WandbLogger:
        mode = wandb_mode()
        if mode == "offline":
            os.environ.setdefault("WANDB_SILENT", "true")  # our one line replaces wandb's several
            # decided before WandbLogger sets WANDB_MODE itself
            self._offline_reason = (
                "WANDB_MODE=offline" if os.environ.get("WANDB_MODE") else "no credentials found"
            )
        save_dir = trainer_config.get("default_root_dir") or os.getcwd()
        os.makedirs(save_dir, exist_ok=True)
        project = os.environ.get("WANDB_PROJECT", "segen")
        resume: dict[str, Any] = {}
        run_id = _wandb_run_id(getattr(self, "_resume_dir", None), project)
        if run_id is not None and mode != "disabled":
            resume = {"id": run_id, "resume": "allow"}  # a resumed fit goes on logging into the same W&B run
        logger = WandbLogger(
            project=project,
            save_dir=str(save_dir),
            offline=mode == "offline",
            mode=mode,
            **resume,
        )
        # Lightning always passes `anonymous`, which recent wandb versions warn about on every run.
        logger._wandb_init.pop("anonymous", None)
        return logger

    def _add_default_checkpoint(self, trainer: Trainer) -> None:
        """A :class:`SegenCheckpoint` that tracks the task's ``monitor`` metric (the latest epoch without one) and
        keeps ``last.ckpt``, unless the config set a ModelCheckpoint. A fit resumed with ``--ckpt_path last``
        writes into the folder of the checkpoint it resumed."""
        if trainer.fast_dev_run:
            return
        settings = self._get(self.config_init, "checkpoint")
        every = getattr(settings, "last_every_n_steps", None)
        options: dict[str, Any] = {
            "dirpath": str(self._resume_dir) if self._resume_dir is not None else None,
            "auto_insert_metric_name": False,
        }
        if every is not None:
            options["last_every_n_steps"] = every
        monitor = getattr(self.model, "monitor", None)
        if monitor is not None:
            metric, mode = monitor
            checkpoint = SegenCheckpoint(
                monitor=metric, mode=mode, filename="best-epoch{epoch:03d}-step{step:06d}", **options
            )
        else:
            checkpoint = SegenCheckpoint(filename="epoch{epoch:03d}-step{step:06d}", **options)
        # replaces the Trainer's plain default (which tracks nothing)
        others = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
        trainer.callbacks = [*others, checkpoint]

    # ------------------------------------------------------------------ subcommand hooks
    def _announce_wandb(self) -> None:
        logger, reason = self.trainer.logger, getattr(self, "_offline_reason", None)
        if isinstance(logger, WandbLogger) and reason is not None and not getattr(self, "_announced", False):
            run = logger.experiment  # creates the run (rank zero only; other ranks get a no-op object)
            if rank_zero_only.rank == 0 and getattr(run, "dir", None):
                run_path = Path(run.dir).parent
                print(
                    f"W&B: {reason}, logging offline to {run_path}; upload it later with: wandb sync {run_path}",
                    flush=True,
                )
                self._announced = True

    def before_fit(self) -> None:
        self._announce_wandb()

    def before_validate(self) -> None:
        self._announce_wandb()

    def before_test(self) -> None:
        self._announce_wandb()

    def before_predict(self) -> None:
        """Semantic tasks write a colourised PNG per image unless the config has its own prediction writer."""
        if isinstance(self.model, SegmentationTask) and not any(
            isinstance(c, BasePredictionWriter) for c in self.trainer.callbacks
        ):
            self.trainer.callbacks.append(MaskWriter())

    @rank_zero_only
    def after_predict(self) -> None:
        writers = [c for c in self.trainer.callbacks if isinstance(c, MaskWriter)]
        for writer in writers:
            print(f"Wrote {len(writer.written)} predicted masks to {writer.output_dir}", flush=True)

    @rank_zero_only
    def after_fit(self) -> None:
        checkpoint = self.trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
        last = getattr(checkpoint, "last_model_path", "") if checkpoint is not None else ""
        print()
        print(f"Best checkpoint: {best or '(none saved)'}")
        if last:
            print(f"Last checkpoint: {last}")
        print("Final validation metrics:")
        print(format_metrics_table(self.trainer.callback_metrics, "val/"), flush=True)


def init_arguments(cls: type) -> set[str] | None:
    """The keyword arguments ``cls.__init__`` takes, with its bases' while it passes ``**kwargs`` on to them
    (``LightningModule`` and torch's classes add none); ``None`` if that cannot be told (no base stops the chain)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        if klass in (object, LightningModule) or klass.__module__.startswith("torch."):
            return names
        parameters = inspect.signature(init).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {
            "self"
        }
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return None


def _import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _wandb_run_id(checkpoint_dir: Path | None, project: str) -> str | None:
    """The W&B run id in ``<save_dir>/<project>/<run id>/checkpoints``, where a WandbLogger keeps checkpoints."""
    if checkpoint_dir is None or checkpoint_dir.name != "checkpoints" or len(checkpoint_dir.parents) < 2:
        return None
    run, folder = checkpoint_dir.parent.name, checkpoint_dir.parent.parent.name
    return run if folder == project and re.fullmatch(r"[A-Za-z0-9_-]+", run) else None


class _AcceptedLinksInstantiator(_InstantiatorFn):
    """Lightning's instantiator, given only the linked shape arguments that ``class_type.__init__`` accepts."""

    def __call__(self, class_type: type, *args: Any, applied_instantiation_links: dict, **kwargs: Any) -> Any:
        taken = init_arguments(class_type)
        accepted = {
            key: value
            for key, value in applied_instantiation_links.items()
            if taken is None or not key.startswith(f"{self.key}.") or key.rsplit(".", 1)[-1] in taken
        }
        return super().__call__(class_type, *args, applied_instantiation_links=accepted, **kwargs)


def _attribute_getter(name: str):
    """``data.<name>``; ``num_classes`` of a data module with ``conditional=False`` (generation data) is ``None``, so
    a GAN or VAE is class-conditional only when the data module is asked for it."""

    def get(datamodule: LightningDataModule) -> Any:
        if name == "num_classes" and getattr(datamodule, "conditional", True) is False:
            return None
        if name == "num_classes" and not hasattr(datamodule, name):
            raise AttributeError(
                f"the data module {type(datamodule).__name__} has no attribute 'num_classes', which the CLI links "
                "to the model's 'num_classes' argument; add the attribute or give a data module that defines it"
            )
        return getattr(datamodule, name, None)

    return get


def _quiet_third_party_noise() -> None:
    """Hide two messages that every run would print and that say nothing about the run."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning internals
    # advertisements for other products, on every run
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip:")
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``segen`` console script. A run stopped by SIGTERM (after writing ``last.ckpt``) exits
    with status 143 (128 + SIGTERM), not Lightning's 0, so a job script can tell it from a finished run."""
    _quiet_third_party_noise()
    try:
        SegenCLI(args=args)
    except SIGTERMException:
        if rank_zero_only.rank == 0:
            print("Stopped by SIGTERM: run the same command with --ckpt_path last to resume", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
    main()
