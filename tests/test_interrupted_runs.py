"""Runs survive being killed, through the real `segen fit`, for every task family.

For each family's config (shrunk to tiny networks and data, as in test_configs.py): fit N steps unbroken; fit again
in a fresh folder and stop it with a real SIGTERM at step k, after a scheduled last.ckpt; then run the same command
with ``--ckpt_path last`` in that folder. The final weights (every tensor of the final last.ckpt) and the final
``val/*`` metrics must equal the unbroken run's. One more case kills a real ``python -m segen.cli fit`` process from
outside once it has written last.ckpt, then resumes it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from test_configs import segmenter_checkpoint

from segen.cli import SegenCLI, find_last_checkpoint, main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
QUIET = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.limit_val_batches=1",
]
# scikit-learn's digits: 1437 training images, so every run below stays inside the first epoch; validate once, at N
DIGITS = ["--data.batch_size=8", "--data.num_workers=0", "--trainer.check_val_every_n_epoch=1"]
UNET = ["--model.net.init_args.base_channels=4", "--model.net.init_args.depth=2"]


@dataclass(frozen=True)
class Family:
    config: str
    overrides: tuple[str, ...]
    steps: int  # optimizer steps of the whole run (trainer.global_step: a GAN's G and D steps both count)
    stop: int  # SIGTERM at this step ...
    every: int  # ... after the scheduled last.ckpt of every `every` steps (stop is not a multiple: SIGTERM writes)

    def args(self, root: Path, *more: str) -> list[str]:
        return [
            "fit",
            "-c",
            str(CONFIGS / f"{self.config}.yaml"),
            *QUIET,
            *self.overrides,
            f"--trainer.max_steps={self.steps}",
            f"--checkpoint.last_every_n_steps={self.every}",
            f"--trainer.default_root_dir={root}",
            *more,
        ]


def shapes(batches: int, batch_size: int, image_size: int = 16) -> tuple[str, ...]:
    """Shapes data with exactly ``batches`` training batches: the epoch, and its validation, end at the last step."""
    return (
        f"--data.image_size={image_size}",
        f"--data.num_train={batches * batch_size}",
        f"--data.num_val={batch_size}",
        f"--data.batch_size={batch_size}",
        "--trainer.check_val_every_n_epoch=1",
    )


FAMILIES = {
    "segmentation": Family("unet_shapes", (*UNET, *shapes(5, 4)), steps=5, stop=3, every=2),
    "instance": Family(
        "maskrcnn_shapes",
        (
            "--model.input_min_size=32",
            "--model.input_max_size=32",
            "--model.rois_per_image=16",
            "--model.warmup_steps=1",
            *shapes(4, 2, image_size=32),
            "--data.num_val=1",  # the mask head runs on every detection of an untrained model: one image is enough
        ),
        steps=4,
        stop=3,
        every=2,
    ),
    "gan": Family(  # 2 optimizer steps per batch: 5 batches, SIGTERM after batch 3, last.ckpt after batch 2
        "dcgan_digits",
        (
            "--model.latent_dim=8",
            "--model.generator.init_args.base_channels=8",
            "--model.discriminator.init_args.base_channels=8",
            "--model.fid_feature=null",  # FID's feature network is trained on first use: seconds
            *DIGITS,
            "--trainer.val_check_interval=5",
        ),
        steps=10,
        stop=6,
        every=4,
    ),
    "vae": Family(
        "vae_digits",
        (
            "--model.latent_dim=4",
            "--model.iwae_samples=2",
            "--model.encoder=segen.nets.VAEEncoder",
            "--model.encoder.base_channels=8",
            "--model.decoder=segen.nets.VAEDecoder",
            "--model.decoder.base_channels=8",
            "--model.fid_feature=null",
            *DIGITS,
            "--trainer.val_check_interval=5",
        ),
        steps=5,
        stop=3,
        every=2,
    ),
    "vqvae": Family(
        "vqvae_digits",
        (
            "--model.num_embeddings=16",
            "--model.embedding_dim=4",
            "--model.hidden=8",
            "--model.num_res_blocks=1",
            *DIGITS,
            "--trainer.val_check_interval=5",
        ),
        steps=5,
        stop=3,
        every=2,
    ),
    "mask_to_image": Family(  # segmenter: added per test (a checkpoint file); 2 optimizer steps per batch
        "spade_shapes",
        (
            "--model.generator.init_args.base_channels=8",
            "--model.generator.init_args.max_channels=16",
            "--model.generator.init_args.hidden=8",
            *shapes(4, 2),
        ),
        steps=8,
        stop=6,
        every=4,
    ),
}


def fit(args: list[str]) -> SegenCLI:
    try:
        return SegenCLI(args=args)
    finally:
        finish_wandb()


def finish_wandb() -> None:
    """End this process's W&B run: a second WandbLogger in one process would log into the first one's run (each
    `segen fit` of a user is a process of its own)."""
    import wandb

    if wandb.run is not None:
        wandb.finish()


def final_state(root: Path) -> dict[str, Any]:
    last = find_last_checkpoint(root)
    assert last is not None, f"no last*.ckpt under {root}"
    return torch.load(last, weights_only=True)


def assert_same_tensors(a: dict[str, Any], b: dict[str, Any], where: str = "") -> None:
    assert a.keys() == b.keys(), where
    for name, value in a.items():
        if isinstance(value, dict):  # a module's extra state
            assert_same_tensors(value, b[name], f"{where}{name}.")
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, b[name]), f"{where}{name} differs"
        else:
            assert value == b[name], f"{where}{name} differs"


def val_metrics(cli: SegenCLI) -> dict[str, float]:
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_run_stopped_by_sigterm_resumes_to_the_unbroken_result(
    family, tmp_path, capsys, caplog, one_thread
):
    spec = FAMILIES[family]
    extra = [f"--model.segmenter={segmenter_checkpoint(tmp_path)}"] if family == "mask_to_image" else []

    unbroken = fit(spec.args(tmp_path / "unbroken", *extra))

    stopped = tmp_path / "stopped"
    stop = ["--trainer.callbacks+=task_helpers.SigtermAt", f"--trainer.callbacks.step={spec.stop}"]
    with pytest.raises(SystemExit) as exit_info:
        main(spec.args(stopped, *extra, *stop))
    finish_wandb()
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert re.search(rf"SIGTERM: wrote \S+last\.ckpt at step {spec.stop}\b", caplog.text)
    assert "--ckpt_path last to resume" in capsys.readouterr().err
    assert final_state(stopped)["global_step"] == spec.stop

    last = find_last_checkpoint(stopped)
    resumed = fit(spec.args(stopped, *extra, "--ckpt_path=last"))
    assert f"--ckpt_path last: resuming from {last}" in capsys.readouterr().out
    # it went on in the same W&B run (offline here) and the same checkpoint folder
    assert resumed.trainer.logger.version == last.parent.parent.name
    assert {p.parent for p in stopped.rglob("*.ckpt")} == {last.parent}
    assert resumed.trainer.global_step == unbroken.trainer.global_step == spec.steps
    a, b = final_state(tmp_path / "unbroken"), final_state(stopped)
    assert a["global_step"] == b["global_step"] == spec.steps
    assert_same_tensors(a["state_dict"], b["state_dict"])
    metrics = val_metrics(unbroken)
    assert metrics and metrics == val_metrics(resumed)


def test_a_real_process_killed_with_sigterm_resumes_where_it_stopped(tmp_path, one_thread):
    """`python -m segen.cli fit` in its own process, killed from outside with SIGTERM once last.ckpt exists."""
    spec = Family("unet_shapes", (*UNET, *shapes(50, 4)), steps=1000, stop=0, every=2)
    root = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    process = subprocess.Popen(
        [sys.executable, "-m", "segen.cli", *spec.args(root)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while find_last_checkpoint(root) is None:
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no last.ckpt after 120 s"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    step, last = final_state(root)["global_step"], re.escape(str(find_last_checkpoint(root)))
    # written now, or by the schedule at the very step the signal came
    assert re.search(rf"SIGTERM: (wrote {last} at|{last} already holds) step {step}\b", out + err), err[
        -3000:
    ]
    assert 2 <= step < 50

    # resumed for two more steps, it ends where a run of that many steps unbroken ends (both stop early with the
    # configuration, and so the learning-rate schedule, of the killed run)
    stop_early = ["--trainer.callbacks+=task_helpers.StopAt", f"--trainer.callbacks.step={step + 2}"]
    resumed = fit(spec.args(root, "--ckpt_path=last", *stop_early))
    unbroken = fit(spec.args(tmp_path / "unbroken", *stop_early))
    assert resumed.trainer.global_step == unbroken.trainer.global_step == step + 2
    assert_same_tensors(final_state(root)["state_dict"], final_state(tmp_path / "unbroken")["state_dict"])


def test_a_run_resumes_from_its_checkpoint_file_too(tmp_path, one_thread):
    """``--ckpt_path <file>`` (not ``last``) makes LightningCLI merge the checkpoint's hyper-parameters into the
    config. MaskToImageTask records GAN settings that are not its arguments (``loss="hinge"``, ...); merged as they
    were, ``__init__`` refused them (``unexpected keyword argument 'loss'``) and the run could not be resumed."""
    spec = FAMILIES["mask_to_image"]
    extra = [f"--model.segmenter={segmenter_checkpoint(tmp_path)}"]
    root = tmp_path / "run"
    first = fit(spec.args(root, *extra, f"--trainer.max_steps={spec.every}"))
    assert first.trainer.global_step == spec.every
    last = find_last_checkpoint(root)
    assert (
        torch.load(last, weights_only=True)["hyper_parameters"]["loss"] == "hinge"
    )  # recorded, not an argument
    resumed = fit(spec.args(root, *extra, f"--ckpt_path={last}"))
    assert resumed.trainer.ckpt_path == str(last)
    assert resumed.trainer.global_step == spec.steps
    assert (
        resumed.model.hparams.loss == "hinge"
        and resumed.model.hparams.latent_dim == first.model.hparams.latent_dim
    )
    unbroken = fit(spec.args(tmp_path / "unbroken", *extra))
    assert unbroken.trainer.global_step == spec.steps
    assert_same_tensors(final_state(tmp_path / "unbroken")["state_dict"], final_state(root)["state_dict"])
