"""Speed options that every task gets from the config: channels-last memory format and ``torch.compile`` of its nets.

Why a callback and not task arguments: the tasks stay plain LightningModules (a researcher's subclass gets the options
without writing them), every task family works the same way, and a config turns them on in ``trainer.callbacks``::

    trainer:
      precision: bf16-mixed          # Lightning's own option: autocast (+ loss scaling for 16-mixed)
      callbacks:
        - class_path: segen.SpeedOptions
          init_args: {channels_last: true, compile: true}

or on the command line: ``--trainer.callbacks+=segen.SpeedOptions --trainer.callbacks.channels_last=true``.

What Lightning and torch already do, and what is left here:

- Precision is the Trainer's ``precision`` (``bf16-mixed``, ``16-mixed``); cuDNN autotuning is ``trainer.benchmark``.
- Lightning has no channels-last switch. ``pl_module.to(memory_format=torch.channels_last)`` converts only 4-D
  parameters and buffers (convolution weights); 1-D and 2-D ones (norms, linear layers) are unchanged. Inputs need no
  conversion: a convolution whose *weight* is channels-last returns a channels-last output (cuDNN and oneDNN pick
  the memory format from input or weight), so every activation after the first convolution is channels-last.
  The conversion happens in ``setup``, before the strategy moves the model to its device (``.to(device)`` keeps
  the memory format), before DDP wraps it and before the optimizers are built.
- Lightning's advice for ``torch.compile`` is ``trainer.fit(torch.compile(model))``, which compiles only the
  LightningModule's ``forward``; ``training_step`` does not call ``forward`` in every task (a GAN step calls the
  generator and the discriminator), and a YAML config cannot call ``torch.compile`` at all. This callback compiles
  each *network* in place with ``nn.Module.compile``: the task's direct child modules that own parameters (``net``,
  ``generator``, ``discriminator``, ``generator_ema``, ``encoder``, ``decoder``, ``model``), not torchmetrics
  metrics and not parameter-free modules (losses, a VQ-VAE's EMA codebook, whose data-dependent restarts would
  only break the graph). ``nn.Module.compile`` keeps ``state_dict`` keys unchanged (``torch.compile(module)``
  would prefix them with ``_orig_mod.``), so checkpoints load into compiled and uncompiled tasks alike.

Compilation happens on the first step of each net, and again when input shapes change (e.g. a smaller last batch
or validation images of another size; ``compile_kwargs={"dynamic": True}`` avoids that). On CPU inductor needs a C++
compiler; ``compile_kwargs={"backend": "aot_eager"}`` traces without generating code.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torchmetrics import Metric, MetricCollection

__all__ = ["SpeedOptions", "compiled_children"]


def compiled_children(pl_module: nn.Module) -> dict[str, nn.Module]:
    """The direct children of ``pl_module`` that :class:`SpeedOptions` compiles: modules with parameters, not
    torchmetrics metrics."""
    return {
        name: child
        for name, child in pl_module.named_children()
        if not isinstance(child, (Metric, MetricCollection)) and next(child.parameters(), None) is not None
    }


class SpeedOptions(Callback):
    """Channels-last memory format and ``torch.compile`` of the task's networks (see the module docstring).

    Args:
        channels_last: convert the task's 4-D parameters and buffers to ``torch.channels_last`` (faster
            convolutions with tensor cores under mixed precision, and on recent CPUs).
        compile: compile each network of the task in place with ``nn.Module.compile`` (checkpoints stay
            compatible).
        compile_kwargs: keyword arguments of ``torch.compile``, e.g. ``{"mode": "max-autotune"}``,
            ``{"dynamic": True}`` or ``{"backend": "aot_eager"}``; only with ``compile=True``.
    """

    def __init__(
        self, channels_last: bool = False, compile: bool = False, compile_kwargs: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        for name, value in (("channels_last", channels_last), ("compile", compile)):
            if not isinstance(value, bool):
                raise TypeError(f"SpeedOptions: {name} must be true or false, got {value!r}")
        if compile_kwargs is not None and not compile:
            raise ValueError(
                f"SpeedOptions: compile_kwargs={compile_kwargs!r} is given but compile=False; set compile=True to "
                "compile the task's networks with these options, or drop compile_kwargs"
            )
        if compile_kwargs is not None and not isinstance(compile_kwargs, dict):
            raise TypeError(
                f"SpeedOptions: compile_kwargs must be a dict of torch.compile options, got {compile_kwargs!r}"
            )
        self.channels_last = channels_last
        self.compile = compile
        self.compile_kwargs = dict(compile_kwargs or {})
        self.compiled: list[str] = []  # names of the compiled children, for logs and tests

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.channels_last:
            # only 4-D tensors change; a second call (fit, then test) is a no-op
            pl_module.to(memory_format=torch.channels_last)
        if self.compile:
            for name, child in compiled_children(pl_module).items():
                if getattr(child, "_compiled_call_impl", None) is None:  # not compiled by an earlier stage
                    child.compile(**self.compile_kwargs)
                    self.compiled.append(name)
