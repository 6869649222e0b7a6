"""The ``segen`` command: LightningCLI with segen's defaults.

``segen fit|validate|test|predict -c CONFIG [--key value ...]``. Models and data modules are chosen by ``class_path``
in the YAML; shape arguments (``num_classes``, ``in_channels``) are linked from the data module to the model, so they
are typed once. What LightningCLI does not do and segen adds:

- a default ``WandbLogger`` that logs offline when there are no W&B credentials, saying so in one line;
- a default checkpoint callback that tracks the task's own ``monitor`` metric (e.g. ``val/mIoU``) and keeps ``last``;
- after ``fit``: the best checkpoint's path and a table of the final validation metrics;
- ``predict`` with a semantic task writes one colourised class-map PNG per image (:class:`~segen.callbacks.MaskWriter`),
  e.g. for a folder of new images: ``segen predict -c CONFIG --ckpt_path best.ckpt --data.predict_dir photos/``.
"""

from __future__ import annotations

import inspect
import logging
import netrc
import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, _get_module_type, _InstantiatorFn
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from segen.callbacks.predictions import MaskWriter
from segen.tasks.segmentation import SegmentationTask

__all__ = ["SegenCLI", "format_metrics_table", "has_wandb_credentials", "main", "wandb_mode"]

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
        for source, target in SHAPE_LINKS:
            parser.link_arguments(
                "data",
                f"model.init_args.{target}",
                compute_fn=_attribute_getter(source),
                apply_on="instantiate",
            )

    # ------------------------------------------------------------------ trainer defaults
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        if config.get("logger") in (None, True):
            kwargs["logger"] = self._default_logger(config)
        configured = config.get("callbacks") or []
        configured = configured if isinstance(configured, (list, tuple)) else [configured]
        # checked before the Trainer adds its own default ModelCheckpoint to the same list
        user_checkpoint = any(isinstance(c, ModelCheckpoint) for c in configured)
        trainer = super().instantiate_trainer(**kwargs)
        if not user_checkpoint:
            self._add_default_checkpoint(trainer)
        return trainer

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
        logger = WandbLogger(
            project=os.environ.get("WANDB_PROJECT", "segen"),
            save_dir=str(save_dir),
            offline=mode == "offline",
            mode=mode,
        )
        # Lightning always passes `anonymous`, which recent wandb versions warn about on every run.
        logger._wandb_init.pop("anonymous", None)
        return logger

    def _add_default_checkpoint(self, trainer: Trainer) -> None:
        """Track the task's ``monitor`` metric and keep ``last.ckpt``, unless the config set a ModelCheckpoint."""
        monitor = getattr(self.model, "monitor", None)
        if monitor is None or trainer.fast_dev_run:
            return
        metric, mode = monitor
        checkpoint = ModelCheckpoint(
            monitor=metric,
            mode=mode,
            save_last=True,
            auto_insert_metric_name=False,
            filename="best-epoch{epoch:03d}-step{step:06d}",
        )
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


class _AcceptedLinksInstantiator(_InstantiatorFn):
    """Lightning's instantiator, given only the linked shape arguments that ``class_type.__init__`` accepts."""

    def __call__(self, class_type: type, *args: Any, applied_instantiation_links: dict, **kwargs: Any) -> Any:
        parameters = inspect.signature(class_type.__init__).parameters
        accepted = {
            key: value
            for key, value in applied_instantiation_links.items()
            if not key.startswith(f"{self.key}.") or key.rsplit(".", 1)[-1] in parameters
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
    """Entry point of the ``segen`` console script."""
    _quiet_third_party_noise()
    SegenCLI(args=args)


if __name__ == "__main__":
    main()
