"""Shared fixtures: keep every test offline, deterministic and free of environment leaks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def _segen_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole session: the digits FID feature network is trained once, not once per test."""
    return tmp_path_factory.mktemp("segen_cache")


@pytest.fixture(autouse=True)
def _isolated_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, _segen_cache: Path
):
    """Restore os.environ after each test (WandbLogger writes WANDB_MODE into it) and hide real W&B credentials."""
    saved = dict(os.environ)
    home = tmp_path_factory.mktemp("home")
    os.environ["HOME"] = str(home)  # no ~/.netrc: W&B has no credentials
    os.environ["WANDB_DIR"] = str(home)
    os.environ["SEGEN_CACHE"] = str(_segen_cache)
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SILENT", "NETRC"):
        os.environ.pop(key, None)
    monkeypatch.setattr(sys, "argv", ["segen"])  # in-process CLI runs must not see pytest's own arguments
    torch.manual_seed(0)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny nets run faster, and the other core stays free for the rest."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
