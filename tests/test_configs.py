"""Every YAML in experiments/configs/ runs through the real CLI (fast_dev_run), so no config rots."""

from __future__ import annotations

from pathlib import Path

import pytest

from segen.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "experiments" / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert any(c.name == "unet_shapes.yaml" for c in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_runs_with_fast_dev_run(config: Path, tmp_path: Path, capsys):
    main(["fit", "-c", str(config), "--trainer.fast_dev_run=1", f"--trainer.default_root_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "Final validation metrics:" in out
    assert "val/loss" in out
