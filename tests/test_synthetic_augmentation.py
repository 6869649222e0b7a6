"""experiments/scripts/synthetic_augmentation.py end to end at a tiny size: table, JSON, PNGs, subsets, config."""

from __future__ import annotations

import json
import math
from types import ModuleType

import pytest
import yaml
from PIL import Image
from task_helpers import experiment_script

TINY = [
    "--image-size=16",
    "--num-test=16",
    "--unet-base-channels=4",
    "--unet-depth=2",
    "--unet-warmup-steps=1",
    "--unet-lr=0.01",
    "--gan-base-channels=8",
    "--gan-max-channels=16",
    "--gan-hidden=8",
    "--d-base-channels=8",
    "--latent-dim=4",
    "--batch-size=8",
    "--grid-examples=4",
    "--accelerator=cpu",
]


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return experiment_script("synthetic_augmentation")


def table_rows(table: str) -> list[list[str]]:
    lines = table.strip().splitlines()
    assert lines[0].startswith("| fraction | labelled images |") and set(lines[1]) <= set("|- ")
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def mean_of(cell: str) -> float:
    mean, spread = (float(x) for x in cell.split("±"))
    assert math.isfinite(mean) and math.isfinite(spread) and spread >= 0
    return mean


def test_end_to_end_tiny_run_with_a_config_overridden_by_flags(script, one_thread, tmp_path):
    config = tmp_path / "config.yaml"
    # the file sets steps and the output; the flags below override two of them
    config.write_text(
        yaml.safe_dump(
            {
                "fractions": [0.25, 0.5],
                "seeds": [0, 1],
                "num_train": 48,
                "unet_steps": 500,
                "gan_steps": 500,
                "synthetic_ratio": 1.0,
                "out": str(tmp_path / "from_config"),
            }
        )
    )
    out = tmp_path / "out"
    result = script.main(["--config", str(config), *TINY, "--unet-steps=6", "--gan-steps=3", f"--out={out}"])

    # flags won over the file, the file over the defaults
    saved = json.loads((out / "runs.json").read_text())
    assert saved["config"]["unet_steps"] == 6 and saved["config"]["gan_steps"] == 3
    assert saved["config"]["fractions"] == [0.25, 0.5] and saved["config"]["num_train"] == 48
    assert not (tmp_path / "from_config").exists()

    # the table: one row per fraction, mIoUs in [0, 1], the gain is (c) - (a)
    rows = table_rows(result["table"])
    assert (out / "results.md").read_text().strip() == result["table"]
    assert [(r[0], r[1]) for r in rows] == [("0.25", "12"), ("0.5", "24")]
    for row in rows:
        real, synthetic, gain = mean_of(row[2]), mean_of(row[3]), mean_of(row[4])
        assert 0 <= real <= 1 and 0 <= synthetic <= 1
        assert gain == pytest.approx(synthetic - real, abs=2e-3)
        wins, seeds = row[5].split("/")
        assert seeds == "2" and 0 <= int(wins) <= 2

    # the JSON: fractions x seeds runs, both arms scored, the GAN trained for the flag's steps
    runs = saved["runs"]
    assert sorted((r["fraction"], r["seed"]) for r in runs) == [(0.25, 0), (0.25, 1), (0.5, 0), (0.5, 1)]
    for run in runs:
        for arm in ("real_only", "with_synthetic"):
            assert 0 <= run[arm]["test/mIoU"] <= 1 and math.isfinite(run[arm]["test/mIoU"])
        assert run["gan"]["generator_steps"] == 3
        assert all(math.isfinite(run["gan"][k]) for k in ("train/loss_g", "train/loss_d"))
        # (c) trained on other batches than (a): the synthetic pairs were used
        assert run["real_only"]["train/loss"] != run["with_synthetic"]["train/loss"]
        labelled, masks = set(run["labelled_indices"]), set(run["mask_indices"])
        assert len(labelled) == run["num_labelled"] == round(48 * run["fraction"])
        assert len(masks) == run["num_synthetic"] == run["num_labelled"]  # --synthetic-ratio 1
        assert all(0 <= i < 48 for i in labelled)  # labels come from the pool ...
        assert all(i >= 48 for i in masks) and not labelled & masks  # ... new masks from beyond it
    by_key = {(r["fraction"], r["seed"]): r for r in runs}
    for fraction in (0.25, 0.5):
        a, b = (by_key[fraction, seed] for seed in (0, 1))
        assert a["labelled_indices"] != b["labelled_indices"]
        assert a["mask_indices"] != b["mask_indices"]
    for seed in (0, 1):  # one permutation per seed: the smaller labelled set is inside the larger one
        assert set(by_key[0.25, seed]["labelled_indices"]) <= set(by_key[0.5, seed]["labelled_indices"])

    # one (mask | generated) grid per fraction
    for fraction in ("0.25", "0.5"):
        with Image.open(out / f"samples_fraction{fraction}.png") as grid:
            assert grid.width > 4 * 16 and grid.height > 16

    # the seed decides everything: one run again alone gives the same numbers (the last training losses are
    # sensitive to the subset, the initial weights, the shuffling and, for (c), every synthetic image)
    again_argv = ["--config", str(config), *TINY, "--unet-steps=6", "--gan-steps=3", "--fractions=0.5"]
    again = script.main([*again_argv, "--seeds=1", f"--out={tmp_path / 'again'}"])
    (rerun,) = again["runs"]
    for arm in ("real_only", "with_synthetic"):
        for key in ("test/mIoU", "train/loss"):
            assert rerun[arm][key] == by_key[0.5, 1][arm][key]
    assert rerun["gan"]["train/loss_g"] == by_key[0.5, 1]["gan"]["train/loss_g"]
    assert rerun["labelled_indices"] == by_key[0.5, 1]["labelled_indices"]


def test_pretrain_mode_trains_on_synthetic_then_fine_tunes_on_the_labelled_pairs(
    script, one_thread, tmp_path
):
    argv = [*TINY, "--fractions=0.5", "--seeds=0", "--num-train=24", "--unet-steps=5", "--gan-steps=2"]
    args = [
        "--synthetic-use=pretrain",
        "--pretrain-steps=3",
        "--synthetic-ratio=2",
        "--oracle",
        f"--out={tmp_path}",
    ]
    result = script.main([*argv, *args])
    (run,) = result["runs"]
    assert run["num_labelled"] == 12 and run["num_synthetic"] == 24  # --synthetic-ratio 2
    with_synthetic, oracle = run["with_synthetic"], run["oracle"]
    for arm in (with_synthetic, oracle):
        assert arm["pretrain/steps"] == 3 and arm["train/steps"] == 5
    # (o) pretrained on the real images of the same masks, (c) on the generated ones
    assert oracle["pretrain/loss"] != with_synthetic["pretrain/loss"]
    assert run["real_only"]["train/steps"] == 5 and "pretrain/loss" not in run["real_only"]
    assert math.isfinite(with_synthetic["pretrain/loss"]) and 0 <= with_synthetic["test/mIoU"] <= 1
    # the same seed, labelled pairs and initial weights: only the pretraining differs, and it changed the net
    assert with_synthetic["train/loss"] != run["real_only"]["train/loss"]
    assert "(c) real + synthetic mIoU (pretrain, ratio 2)" in result["table"]
    (row,) = table_rows(result["table"])
    assert len(row) == 8 and mean_of(row[6]) == pytest.approx(oracle["test/mIoU"], abs=1e-3)
    assert mean_of(row[7]) == pytest.approx(oracle["test/mIoU"] - run["real_only"]["test/mIoU"], abs=2e-3)
    # the default: one mixed training, no pretraining
    assert script.parse_args([]).pretrain_steps == 0
    assert script.parse_args(["--synthetic-use", "pretrain", "--unet-steps", "7"]).pretrain_steps == 7


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fractions", "0", "0.5"], r"--fractions must lie in \(0, 1\]"),
        (["--fractions", "1.5"], r"--fractions must lie in \(0, 1\]"),
        (["--num-train", "10", "--fractions", "0.1"], r"labels 1 image\(s\); .* at least 2"),
        (["--image-size", "24"], r"--image-size must be a power of two >= 16"),
        (["--synthetic-ratio", "0"], r"--synthetic-ratio must be > 0"),
        (["--seeds", "1", "1"], r"must not repeat"),
        (
            ["--pretrain-steps", "5"],
            r"--pretrain-steps 5 needs --synthetic-use pretrain, got --synthetic-use mix",
        ),
        (["--synthetic-use", "pretrain", "--pretrain-steps", "0"], r"--pretrain-steps must be >= 1, got 0"),
    ],
)
def test_bad_arguments_are_named(script, argv, message):
    with pytest.raises(ValueError, match=message):
        script.parse_args(argv)


def test_config_file_errors_are_named(script, tmp_path):
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("fractoins: [0.1]\n")
    with pytest.raises(ValueError, match=r"unknown options \['fractoins'\]"):
        script.parse_args(["--config", str(bad_key)])
    bad_value = tmp_path / "bad_value.yaml"
    bad_value.write_text("unet_steps: many\n")
    with pytest.raises(ValueError, match="bad value for unet_steps"):
        script.parse_args(["--config", str(bad_value)])
    with pytest.raises(ValueError, match="no such file"):
        script.parse_args(["--config", str(tmp_path / "missing.yaml")])
    # a scalar where a list is expected is read as a one-item list; flags still win
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("fractions: 0.5\nseeds: [3, 4]\n")
    args = script.parse_args(["--config", str(scalar), "--seeds", "7"])
    assert args.fractions == [0.5] and args.seeds == [7]
