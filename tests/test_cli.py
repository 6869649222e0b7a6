"""The `segen` command end to end: links, logging (W&B offline, TensorBoard, CSV), checkpoints, DDP."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.plugins.io import TorchCheckpointIO
from PIL import Image

from segen import SegmentationTask
from segen.callbacks.checkpoint import AtomicCheckpointIO, SegenCheckpoint
from segen.cli import (
    SegenCLI,
    find_last_checkpoint,
    format_metrics_table,
    has_wandb_credentials,
    main,
    wandb_mode,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "configs" / "unet_shapes.yaml"
# a short real run: 3 optimizer steps, one validation at the end, tiny data
SHORT = [
    "--trainer.max_steps=3",
    "--trainer.val_check_interval=3",
    "--trainer.limit_val_batches=2",
    "--data.num_train=48",
    "--data.num_val=16",
    "--data.image_size=32",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=1",
]


def run_segen(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 240):
    """The installed console script, in a fresh process, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "segen.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_console_script_is_installed():
    out = subprocess.run(["segen", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in out.stdout


def test_shape_arguments_are_linked_from_the_data_module(tmp_path):
    cli = SegenCLI(
        args=[
            "-c",
            str(CONFIG),
            "--data.num_classes=6",
            "--data.image_size=32",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    assert cli.model.num_classes == 6 and cli.model.in_channels == 3
    assert cli.model.net.num_classes == 6 and cli.model.net.in_channels == 3  # the net factory got them too
    assert cli.model.net.depth == 4  # and kept its own config


def test_fit_without_credentials_logs_offline_in_one_line_and_prints_results(tmp_path):
    env = {"HOME": str(tmp_path), "WANDB_API_KEY": "", "WANDB_DIR": str(tmp_path)}
    env.pop("WANDB_MODE", None)
    result = run_segen(
        ["fit", "-c", str(CONFIG), *SHORT, f"--trainer.default_root_dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env={k: v for k, v in env.items() if v},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    wandb_lines = [line for line in out.splitlines() if "offline" in line.lower() and "w&b" in line.lower()]
    assert len(wandb_lines) == 1, out[-3000:]
    line = wandb_lines[0]
    assert "no credentials found" in line and "wandb sync" in line
    run_dir = Path(tmp_path, re.search(r"wandb sync (\S+)", line).group(1))
    assert run_dir.is_dir() and any(run_dir.glob("*.wandb"))
    # the end-of-fit report: best checkpoint path and the final validation metrics
    best = Path(tmp_path, re.search(r"Best checkpoint: (\S+)", result.stdout).group(1))
    assert best.is_file() and best.suffix == ".ckpt"
    assert (best.parent / "last.ckpt").is_file()
    table = result.stdout.split("Final validation metrics:")[1]
    for name in ("val/mIoU", "val/dice", "val/loss"):
        assert re.search(rf"{re.escape(name)}\s+\d\.\d{{4}}", table), table
    # image grids as PNG in the run's folder, and as W&B media
    assert list(best.parent.parent.glob("images/val_predictions_*.png"))
    assert list(run_dir.glob("files/media/images/**/*.png"))
    # a checkpoint written by the CLI loads with no other argument, net included
    model = SegmentationTask.load_from_checkpoint(best)
    assert model.net.depth == 4 and model.num_classes == 4


def test_wandb_mode_is_respected(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode() == "offline"
    monkeypatch.delenv("WANDB_MODE")
    assert not has_wandb_credentials() and wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert has_wandb_credentials() and wandb_mode() == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "y" * 40 + "\n")
    os.chmod(tmp_path / ".netrc", 0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert has_wandb_credentials()


@pytest.mark.parametrize(
    ("logger", "pattern"),
    [("TensorBoardLogger", "**/events.out.tfevents.*"), ("CSVLogger", "**/metrics.csv")],
)
def test_trainer_logger_switches_backend(logger, pattern, tmp_path, capsys):
    main(
        [
            "fit",
            "-c",
            str(CONFIG),
            *SHORT,
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger={logger}",
            f"--trainer.logger.save_dir={tmp_path / 'logs'}",
        ]
    )
    out = capsys.readouterr().out
    assert "W&B" not in out
    assert list((tmp_path / "logs").glob(pattern))
    assert list((tmp_path / "logs").glob("**/images/val_predictions_*.png"))
    if logger == "CSVLogger":
        text = next((tmp_path / "logs").glob(pattern)).read_text()
        assert "val/mIoU" in text and "train/loss" in text


def test_validate_test_and_predict_subcommands_use_a_checkpoint(tmp_path, capsys):
    args = [
        "-c",
        str(CONFIG),
        *SHORT,
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=CSVLogger",
        f"--trainer.logger.save_dir={tmp_path}",
    ]
    main(["fit", *args])
    best = re.search(r"Best checkpoint: (\S+)", capsys.readouterr().out).group(1)
    main(["validate", *args, f"--ckpt_path={best}"])
    main(["test", *args, f"--ckpt_path={best}"])
    out = capsys.readouterr().out
    assert "val/mIoU" in out and "test/mIoU" in out
    cli = SegenCLI(args=["predict", *args, f"--ckpt_path={best}", "--data.num_test=8"])
    predictions = cli.trainer.predict_loop.predictions
    assert predictions and predictions[0].dtype == torch.long and predictions[0].shape[1:] == (32, 32)
    # without predict_dir the test split is written, one palette PNG per item, named by index, in the run folder
    run_predictions = Path(re.search(r"Wrote 8 predicted masks to (\S+)", capsys.readouterr().out).group(1))
    assert run_predictions.parent.parent == tmp_path / "lightning_logs"  # <run>/predictions of this CSV run
    written = sorted(p.name for p in run_predictions.glob("*.png"))
    assert written == [f"{i:06d}.png" for i in range(8)]

    # a folder of new images of different sizes and modes -> colourised class maps with the same names and sizes
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a_street.png": (40, 56), "b_scan.jpg": (32, 32), "c_grey.png": (48, 24)}
    for name, (h, w) in sizes.items():
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        (image.convert("L") if name.startswith("c_") else image).save(folder / name)
    out_dir = tmp_path / "masks"
    main(
        [
            "predict",
            *args,
            f"--ckpt_path={best}",
            f"--data.predict_dir={folder}",
            "--trainer.callbacks+=segen.MaskWriter",
            f"--trainer.callbacks.output_dir={out_dir}",
        ]
    )
    assert f"Wrote 3 predicted masks to {out_dir}" in capsys.readouterr().out
    task = SegmentationTask.load_from_checkpoint(best, map_location="cpu").eval()
    for name, (h, w) in sizes.items():
        written_mask = Image.open(out_dir / (Path(name).stem + ".png"))
        assert written_mask.mode == "P" and written_mask.size == (w, h)
        palette = np.array(written_mask.getpalette()[: 3 * 4]).reshape(4, 3)
        assert palette.tolist() == [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25]]
        with Image.open(folder / name) as source:
            rgb = torch.from_numpy(np.array(source.convert("RGB"))).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            expected = task(((rgb - 0.5) / 0.25)[None]).argmax(1)[0]
        assert np.array_equal(np.array(written_mask), expected.numpy()), name


def test_ddp_two_processes_on_cpu(tmp_path):
    """2-process DDP (gloo) through the real CLI: both ranks train, rank 0 writes the checkpoint."""
    result = run_segen(
        [
            "fit",
            "-c",
            str(CONFIG),
            *SHORT,
            "--trainer.accelerator=cpu",
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
            "--data.num_train=96",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=CSVLogger",
            f"--trainer.logger.save_dir={tmp_path}",
        ],
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "GLOBAL_RANK: 1" in result.stderr
        or "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in result.stderr
    )
    best = Path(re.search(r"Best checkpoint: (\S+)", result.stdout).group(1))
    best = best if best.is_absolute() else tmp_path / best
    state = torch.load(best, weights_only=True)
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert result.stdout.count("Final validation metrics:") == 1  # printed by rank zero only


def test_config_is_saved_next_to_the_run(tmp_path):
    main(
        [
            "fit",
            "-c",
            str(CONFIG),
            *SHORT,
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=CSVLogger",
            f"--trainer.logger.save_dir={tmp_path}",
        ]
    )
    saved = list(tmp_path.glob("**/config.yaml"))
    assert saved
    config = yaml.safe_load(saved[0].read_text())
    assert config["data"]["init_args"]["num_classes"] == 4
    assert "num_classes" not in config["model"]["init_args"]  # linked at instantiation: typed once, in data
    assert config["model"]["init_args"]["net"]["class_path"] == "segen.UNet"
    hparams = yaml.safe_load(next(tmp_path.glob("**/hparams.yaml")).read_text())
    assert hparams["num_classes"] == 4  # the model's record holds the linked value


def test_metrics_table_format():
    table = format_metrics_table({"val/mIoU": torch.tensor(0.91234), "train/loss": 1.0, "val/dice": 0.5})
    assert table.splitlines()[2:] == ["val/dice  0.5000", "val/mIoU  0.9123"]
    assert format_metrics_table({}) == "(no val/* metrics were logged)"


# ---------------------------------------------------------------------------------------------------- reliability
TINY = [
    *SHORT,
    "--model.net.init_args.base_channels=4",
    "--model.net.init_args.depth=2",
    "--data.image_size=16",
]


def test_default_trainer_writes_checkpoints_atomically_and_keeps_last_on_a_schedule(tmp_path):
    base = ["-c", str(CONFIG), "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    cli = SegenCLI(args=[*base, "--checkpoint.last_every_n_steps=7"], run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    checkpoint = cli.trainer.checkpoint_callback
    assert isinstance(checkpoint, SegenCheckpoint)
    assert (checkpoint.monitor, checkpoint.mode, checkpoint.last_every_n_steps) == ("val/mIoU", "max", 7)
    assert SegenCLI(args=base, run=False).trainer.checkpoint_callback.last_every_n_steps == 500

    # a CheckpointIO of the user's is kept; so is a checkpoint callback of the user's, configured in the callbacks
    cli = SegenCLI(
        args=[
            *base,
            "--trainer.plugins=lightning.pytorch.plugins.io.TorchCheckpointIO",
            "--trainer.callbacks+=segen.SegenCheckpoint",
            "--trainer.callbacks.last_every_n_steps=3",
        ],
        run=False,
    )
    assert type(cli.trainer.strategy.checkpoint_io) is TorchCheckpointIO
    (checkpoint,) = cli.trainer.checkpoint_callbacks
    assert isinstance(checkpoint, SegenCheckpoint) and checkpoint.last_every_n_steps == 3


def test_find_last_checkpoint_takes_the_newest_and_skips_wandb_hidden_and_temporary_files(tmp_path):
    assert find_last_checkpoint(tmp_path) is None
    old = tmp_path / "segen" / "a1" / "checkpoints" / "last.ckpt"
    new = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last-v1.ckpt"
    for path, mtime in ((old, 1_000), (new, 2_000)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))
    for path in (
        tmp_path / "wandb" / "last.ckpt",  # W&B's run files, never checkpoints
        tmp_path / ".cache" / "last.ckpt",
        old.parent / ".last.ckpt.123.abcd.tmp",  # an atomic write in progress
        old.parent / "best-epoch000.ckpt",
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (3_000, 3_000))
    assert find_last_checkpoint(tmp_path) == new
    os.utime(old, (4_000, 4_000))
    assert find_last_checkpoint(tmp_path) == old


def test_ckpt_path_last_without_an_earlier_run_starts_from_scratch_in_one_line(
    tmp_path, capsys, recwarn, one_thread
):
    args = ["-c", str(CONFIG), *TINY, f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=CSVLogger"]
    main(["fit", *args, f"--trainer.logger.save_dir={tmp_path}", "--ckpt_path=last"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "--ckpt_path last" in line]
    assert lines == [f"--ckpt_path last: no last*.ckpt under {tmp_path}, starting from scratch"]
    assert not [
        w for w in recwarn if "no last checkpoint available" in str(w.message)
    ]  # Lightning's is not shown
    assert torch.load(find_last_checkpoint(tmp_path), weights_only=True)["global_step"] == 3
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path last: no last\*\.ckpt under .*empty"):
        SegenCLI(
            args=[
                "validate",
                *args[:-1],
                f"--trainer.default_root_dir={tmp_path / 'empty'}",
                "--ckpt_path=last",
            ]
        )


def test_ckpt_path_last_resumes_the_newest_of_two_earlier_runs(tmp_path, capsys, one_thread):
    args = ["-c", str(CONFIG), *TINY, f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=CSVLogger"]
    args += [f"--trainer.logger.save_dir={tmp_path}"]
    main(["fit", *args, "--trainer.max_steps=2", "--trainer.val_check_interval=2"])  # version_0: step 2
    main(["fit", *args])  # version_1: step 3
    first, second = (
        tmp_path / "lightning_logs" / f"version_{v}" / "checkpoints" / "last.ckpt" for v in (0, 1)
    )
    os.utime(first, (time.time() + 60,) * 2)  # the older run's last.ckpt was written last: it is the newest
    capsys.readouterr()
    cli = SegenCLI(args=["fit", *args, "--trainer.max_steps=4", "--ckpt_path=last"])
    assert (
        f"--ckpt_path last: resuming from {first} (the newest last*.ckpt under {tmp_path})"
        in capsys.readouterr().out
    )
    assert cli.trainer.ckpt_path == str(first)
    assert (
        torch.load(first, weights_only=True)["global_step"] == 4
    )  # continued from 2, in the folder it came from
    assert torch.load(second, weights_only=True)["global_step"] == 3
