"""SpeedOptions: channels-last and torch.compile of a task's networks, in real CPU fits, through the CLI, and with
checkpoints that load into compiled and uncompiled tasks alike.

torch.compile runs with ``backend="eager"`` here: TorchDynamo captures the graphs (what breaks when a net is not
compilable) but no code is generated. Inductor works on these machines (g++ is installed) but takes over a minute to
compile even the tiny U-Net on 2 CPU cores; it is what ``compile=True`` uses by default.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from task_helpers import quiet_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import segen.cli
from segen import SegmentationTask, ShapesDataModule, SpeedOptions, UNet, VAETask
from segen.callbacks.speed import compiled_children
from segen.cli import SegenCLI, main

REPO = Path(__file__).resolve().parents[2]
CHANNELS_LAST = torch.channels_last
EAGER = {"backend": "eager"}


def tiny_task() -> SegmentationTask:
    torch.manual_seed(0)
    return SegmentationTask(
        num_classes=4, in_channels=3, net=functools.partial(UNet, base_channels=4, depth=2), warmup_steps=0
    )


def tiny_data() -> ShapesDataModule:
    return ShapesDataModule(image_size=32, num_train=8, num_val=4, num_test=4, batch_size=4)


class LossRecorder(Callback):
    """The loss of every training step, as returned by ``training_step``."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def fit(tmp_path: Path, task, data, *callbacks, max_steps: int = 1, **kwargs):
    trainer = quiet_trainer(
        tmp_path,
        max_steps=max_steps,
        limit_val_batches=0,
        log_every_n_steps=1,
        callbacks=list(callbacks),
        **kwargs,
    )
    torch.manual_seed(1)  # the same shuffling in every run
    trainer.fit(task, data)
    return trainer


def four_d(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [(name, t) for name, t in tensors if t.ndim == 4]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"compile_kwargs=.*compile=False"):
        SpeedOptions(compile_kwargs={"mode": "max-autotune"})
    with pytest.raises(TypeError, match="channels_last must be true or false"):
        SpeedOptions(channels_last="yes")
    with pytest.raises(TypeError, match="compile_kwargs must be a dict"):
        SpeedOptions(compile=True, compile_kwargs=["eager"])


def test_channels_last_fit_gives_the_same_first_loss_and_channels_last_activations(tmp_path):
    plain = fit(tmp_path / "plain", tiny_task(), tiny_data())
    task = tiny_task()
    seen: dict[str, bool] = {}

    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(f"{name} input", inputs[0].is_contiguous(memory_format=CHANNELS_LAST))
            seen.setdefault(f"{name} output", output.is_contiguous(memory_format=CHANNELS_LAST))

        return hook

    task.net.stem[0].register_forward_hook(record("first conv"))
    task.net.stem[2].register_forward_hook(record("first activation"))
    task.net.up[-1].register_forward_hook(record("last up block"))
    fast = fit(tmp_path / "fast", task, tiny_data(), SpeedOptions(channels_last=True))

    loss, reference = fast.callback_metrics["train/loss"], plain.callback_metrics["train/loss"]
    assert torch.isfinite(loss)
    assert float(loss) == pytest.approx(float(reference), abs=1e-5)
    tensors = four_d(task)
    assert tensors and all(t.is_contiguous(memory_format=CHANNELS_LAST) for _, t in tensors)
    # the batch is not converted (plain NCHW images reach the first convolution) ...
    assert seen["first conv input"] is False
    # ... and still every activation after the first convolution is channels-last
    assert seen["first conv output"] and seen["first activation output"] and seen["last up block output"]


def test_channels_last_on_a_generative_task(tmp_path):
    def vae() -> VAETask:
        torch.manual_seed(0)
        return VAETask(channels=1, image_size=16, latent_dim=4, fid_feature=None, warmup_steps=0)

    images = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    data = TensorDataset(images, torch.zeros(16).long())
    plain, fast = LossRecorder(), LossRecorder()
    fit(tmp_path / "plain", vae(), DataLoader(data, batch_size=8), plain, max_steps=2)
    task = vae()
    fit(
        tmp_path / "fast",
        task,
        DataLoader(data, batch_size=8),
        fast,
        SpeedOptions(channels_last=True),
        max_steps=2,
    )
    assert all(torch.isfinite(torch.tensor(fast.losses)))
    assert fast.losses == pytest.approx(plain.losses, rel=1e-5)
    tensors = four_d(task)
    assert tensors and all(t.is_contiguous(memory_format=CHANNELS_LAST) for _, t in tensors)


def test_the_networks_are_compiled_and_metrics_and_losses_are_not():
    assert list(compiled_children(tiny_task())) == ["net"]  # not criterion (no parameters), not val_metrics
    vae = VAETask(channels=1, image_size=16, latent_dim=4, fid_feature=None)
    assert list(compiled_children(vae)) == ["encoder", "decoder"]


def test_compiled_fit_and_checkpoints_load_into_compiled_and_uncompiled_tasks(tmp_path):
    net = functools.partial(UNet, base_channels=4, depth=2)
    speed = SpeedOptions(channels_last=True, compile=True, compile_kwargs=EAGER)
    compiled_task, losses = tiny_task(), LossRecorder()
    trainer = fit(tmp_path / "compiled", compiled_task, tiny_data(), speed, losses)
    assert speed.compiled == ["net"] and compiled_task.net._compiled_call_impl is not None
    assert all(torch.isfinite(torch.tensor(losses.losses)))
    path = tmp_path / "compiled.ckpt"
    trainer.save_checkpoint(path)

    # compiled -> uncompiled: nn.Module.compile leaves the state_dict keys alone (no "_orig_mod.")
    loaded = SegmentationTask.load_from_checkpoint(path, net=net)
    assert loaded.state_dict().keys() == tiny_task().state_dict().keys()
    for name, value in compiled_task.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(compiled_task.eval()(images), loaded.eval()(images), atol=1e-5)

    # uncompiled -> compiled: resume the uncompiled run's checkpoint in a compiled fit
    plain_trainer = fit(tmp_path / "plain", tiny_task(), tiny_data())
    plain_path = tmp_path / "plain.ckpt"
    plain_trainer.save_checkpoint(plain_path)
    resumed = tiny_task()
    trainer = quiet_trainer(
        tmp_path / "resumed",
        max_steps=2,
        limit_val_batches=0,
        callbacks=[SpeedOptions(compile=True, compile_kwargs=EAGER)],
    )
    trainer.fit(resumed, tiny_data(), ckpt_path=plain_path)
    assert trainer.global_step == 2 and resumed.net._compiled_call_impl is not None


def test_cli_appends_the_callback_and_the_precision(tmp_path, monkeypatch):
    """The README's command line: --trainer.callbacks+=segen.SpeedOptions --trainer.callbacks.channels_last=true."""
    clis: list[SegenCLI] = []

    class RecordingCLI(SegenCLI):
        def __init__(self, *args, **kwargs) -> None:
            clis.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(segen.cli, "SegenCLI", RecordingCLI)
    main(
        [
            "fit",
            "-c",
            str(REPO / "experiments" / "configs" / "unet_shapes.yaml"),
            "--trainer.precision=bf16-mixed",
            "--trainer.callbacks+=segen.SpeedOptions",
            "--trainer.callbacks.channels_last=true",
            "--trainer.fast_dev_run=1",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--data.num_train=4",
            "--data.num_val=4",
            "--data.batch_size=2",
            "--data.image_size=32",
        ]
    )
    trainer, task = clis[0].trainer, clis[0].model
    speed = [c for c in trainer.callbacks if isinstance(c, SpeedOptions)]
    assert len(speed) == 1 and speed[0].channels_last and not speed[0].compile
    assert any(
        type(c).__name__ == "SegmentationImageLogger" for c in trainer.callbacks
    )  # appended, not replaced
    assert trainer.precision == "bf16-mixed"
    assert all(t.is_contiguous(memory_format=CHANNELS_LAST) for _, t in four_d(task))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
