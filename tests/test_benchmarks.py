"""experiments/benchmarks/benchmark.py at a tiny size, and the reference comparisons it relies on.

The tiny run checks the table (every row, numbers where numbers belong, n/a GPU rows without a GPU) and the parts of
it that are correctness, not speed: each task and its hand-written loop agree step by step (losses, final weights),
segen's DiceCELoss equals MONAI's and its validation metrics equal torchmetrics' and MONAI's. Timing goals are not
asserted: the test machines are shared. The focused tests below compare the loss and the metrics over more options.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from monai.losses import DiceLoss as MonaiDiceLoss
from monai.metrics import DiceMetric, MeanIoU

from segen.losses import dice_ce_loss

BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"

STEP_ROWS = ("U-Net step", "DCGAN iteration (D + G step)", "VAE step", "VQ-VAE step")
FLOOR_ROWS = (
    "Empty step (one weight, automatic optimization)",
    "Empty step (2 weights, manual optimization)",
)
GPU_OPTIONS = ("bf16-mixed", "16-mixed", "channels_last", "torch.compile")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(
        0, str(BENCHMARKS)
    )  # benchmark.py imports its helpers (_steps, _overhead, ...) from there
    spec = importlib.util.spec_from_file_location("segen_benchmark", BENCHMARKS / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def references(bench) -> ModuleType:
    import _references

    return _references


def table_rows(text: str) -> dict[str, list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["benchmark", "segen", "reference", "ratio", "goal", "max abs Δ", "pass"]
    assert set(lines[1]) <= set("|- ")
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == len(header), line
        assert cells[0] not in rows, f"duplicate row {cells[0]}"
        rows[cells[0]] = cells
    return rows


def delta_of(cells: list[str]) -> float:
    value = float(cells[5].split()[0])
    assert math.isfinite(value) and value >= 0
    return value


def test_tiny_run_prints_every_row_and_its_exactness_checks(bench, one_thread, tmp_path):
    out = tmp_path / "bench.md"
    table = bench.main(["--tiny", "--device", "cpu", "--out", str(out)])
    assert out.read_text() == table
    assert table.startswith("Measured on ") and "no GPU" in table.splitlines()[0]
    rows = table_rows(table)

    def find(prefix: str) -> list[str]:
        (match,) = [cells for name, cells in rows.items() if name.startswith(prefix)]
        return match

    expected = [
        f"{name} / plain loop, {trainer}"
        for name in STEP_ROWS
        for trainer in ("default Trainer", "barebones=True")
    ]
    floors = [
        f"{name} / plain loop, {trainer}"
        for name in FLOOR_ROWS
        for trainer in ("default Trainer", "barebones=True")
    ]
    expected += floors
    expected += [
        "DiceCELoss forward + backward / MONAI DiceCELoss",
        "val/mIoU and val/IoU_<class> / torchmetrics",
        "val/dice / torchmetrics",
        "val/mIoU and val/IoU_<class> / MONAI",
        "val/dice / MONAI",
        "ShapesDataModule.train_dataloader() / bare DataLoader",
    ]
    expected += [f"{option} speed-up in segen / in the plain loop" for option in GPU_OPTIONS]
    assert len(rows) == len(expected)
    for prefix in expected:
        cells = find(prefix)
        if "speed-up" in prefix:  # no GPU on the test machines
            assert cells[1] == cells[2] == "n/a (no GPU)" and cells[3] == "n/a" and cells[6] == "—"
            continue
        ratio = float(cells[3])
        assert math.isfinite(ratio) and ratio > 0, cells
        if prefix in floors:  # Lightning's loop alone: no segen code, so no goal
            assert cells[1].endswith("ms/step (Lightning alone)") and cells[6] == "—", cells
            continue
        assert cells[6] in ("yes", "**no**")  # timing goals are reported, not asserted

    # correctness: the same training, step by step and in the final weights (exact on the CPU)
    for name in STEP_ROWS + FLOOR_ROWS:
        for trainer in ("default Trainer", "barebones=True"):
            cells = find(f"{name} / plain loop, {trainer}")
            assert delta_of(cells) <= 1e-6, cells
            assert cells[5].endswith("(losses, weights)"), cells
    assert delta_of(find("DiceCELoss forward + backward")) <= 1e-5
    for prefix in ("val/mIoU", "val/dice"):
        for library in ("torchmetrics", "MONAI"):
            cells = find(f"{prefix}{' and val/IoU_<class>' if prefix == 'val/mIoU' else ''} / {library}")
            assert delta_of(cells) <= 1e-6 and float(cells[3]) == pytest.approx(1.0, abs=1e-5), cells


def test_gpu_rows_code_path_runs_on_the_cpu(bench, one_thread):
    """The GPU rows' runs (segen with Trainer precision / channels_last vs the plain loop) work and agree; on the
    CPU with bf16 autocast, which is what a GPU machine runs with bf16-mixed (compile is too slow to test here)."""
    import _gpu
    from _overhead import quiet

    with quiet():
        results = _gpu.speed_benchmark(2, 1, 1, "tiny", "cpu", options=("bf16-mixed", "channels_last"))
    assert [r.option for r in results] == ["bf16-mixed", "channels_last"]
    for result in results:
        assert math.isfinite(result.ratio) and result.ratio > 0
        assert result.delta <= 1e-6, result  # same autocast, same memory format: same numbers


# ---------------------------------------------------------------------------------------------------- DiceCE


def _logits_and_target(b: int, k: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(b, k, size, size, generator=gen, dtype=torch.float64).float()
    target = torch.randint(0, k, (b, size, size), generator=gen)
    return logits, target


def _grad(fn, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = logits.clone().requires_grad_(True)
    value = fn(x)
    value.backward()
    return value.detach(), x.grad


DICE_CE_CASES = [
    # (segen options, MONAI options beyond the defaults of references.monai_dice_ce)
    ({}, {}),
    ({"batch": False}, {"batch": False}),
    ({"include_background": False}, {"include_background": False}),
    ({"smooth": 1.0}, {"smooth_nr": 1.0, "smooth_dr": 1.0}),
    ({"dice_weight": 0.3, "ce_weight": 1.7}, {"lambda_dice": 0.3, "lambda_ce": 1.7}),
    (
        {"batch": False, "include_background": False, "ce_weight": 0.5},
        {"batch": False, "include_background": False, "lambda_ce": 0.5},
    ),
]


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize(("segen_options", "monai_options"), DICE_CE_CASES)
def test_dice_ce_equals_monai_value_and_gradient(references, k, segen_options, monai_options):
    logits, target = _logits_and_target(3, k, 12, seed=k)
    monai = references.monai_dice_ce(**monai_options)
    value_m, grad_m = _grad(lambda x: monai(x, target[:, None]), logits)
    value_s, grad_s = _grad(lambda x: dice_ce_loss(x, target, **segen_options).loss, logits)
    assert float((value_s - value_m).abs()) <= 1e-5
    assert float((grad_s - grad_m).abs().max()) <= 1e-5
    assert grad_s.abs().sum() > 0


@pytest.mark.parametrize("include_background", [True, False])
def test_dice_ce_with_class_weights_equals_monai(references, include_background):
    """segen: weighted mean over classes (Σ w·d / Σ w); MONAI: mean of w·d. Equal when the weights of the classes
    used sum to their number; the CE part is scale-free (torch's weighted mean) on both sides."""
    k = 4
    logits, target = _logits_and_target(2, k, 10, seed=7)
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0])
    used = weights if include_background else weights[1:]
    weights = weights * (len(used) / used.sum())
    monai = references.monai_dice_ce(include_background=include_background, weight=weights)
    value_m, grad_m = _grad(lambda x: monai(x, target[:, None]), logits)
    value_s, grad_s = _grad(
        lambda x: dice_ce_loss(x, target, class_weights=weights, include_background=include_background).loss,
        logits,
    )
    assert float((value_s - value_m).abs()) <= 1e-5
    assert float((grad_s - grad_m).abs().max()) <= 1e-5


@pytest.mark.parametrize("batch", [True, False])
def test_dice_ce_ignore_index_equals_monai_dice_loss_plus_torch_ce(batch):
    """MONAI's DiceCELoss has no ignore_index; its DiceLoss has, and with torch's CE (ignore_index=255) the sum is
    segen's loss: ignored pixels change neither value nor gradient (each sample keeps some valid pixels)."""
    k = 4
    logits, target = _logits_and_target(3, k, 12, seed=3)
    target[torch.rand(target.shape, generator=torch.Generator().manual_seed(1)) < 0.2] = 255
    dice = MonaiDiceLoss(
        to_onehot_y=True, softmax=True, batch=batch, smooth_nr=1e-5, smooth_dr=1e-5, ignore_index=255
    )
    ce = torch.nn.CrossEntropyLoss(ignore_index=255)
    value_m, grad_m = _grad(lambda x: dice(x, target[:, None]) + ce(x, target), logits)
    value_s, grad_s = _grad(lambda x: dice_ce_loss(x, target, batch=batch).loss, logits)
    assert float((value_s - value_m).abs()) <= 1e-5
    assert float((grad_s - grad_m).abs().max()) <= 1e-5
    assert (grad_s.permute(0, 2, 3, 1)[target == 255] == 0).all()


# ---------------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_segen_validation_metrics_equal_torchmetrics_and_monai(references, seed):
    batches = references.metric_data(tiny=True, seed=seed)
    mine = references.segen_metrics(batches)
    for values in (references.torchmetrics_metrics(batches), references.monai_metrics(batches)):
        # the data holds a class predicted but never in the target (IoU 0, counted) and one in neither (left out)
        assert values.iou[3] == 0 and values.iou[4].isnan()
        assert references.iou_delta(references.present_iou(mine, values), values) <= 1e-6
        assert abs(mine.dice - values.dice) <= 1e-6
    assert mine.iou[4] == 0  # segen logs 0 for a class absent from both; the mean leaves it out
    present = mine.iou[:4]
    assert mine.miou == pytest.approx(float(present.mean()), abs=1e-6)


def test_monai_per_image_metrics_match_on_the_split_as_one_image_when_every_class_is_in_the_target(
    references,
):
    """MONAI's DiceMetric / MeanIoU on the split laid out as one image are segen's dataset-level metrics when every
    class occurs in the target; with a class predicted but absent from the target they drop it (ignore_empty)."""
    batches = references.metric_data(tiny=True)
    k = batches[0][0].shape[1]
    # every class in some target: relabel the first pixels of each batch
    full = []
    for logits, masks in batches:
        masks = masks.clone()
        masks[0, 0, :k] = torch.arange(k)
        full.append((logits, masks))
    mine = references.segen_metrics(full)
    pairs = [references.onehot_pair(logits, masks) for logits, masks in full]
    preds = references.one_image(torch.cat([p for p, _ in pairs]))
    target = references.one_image(torch.cat([t for _, t in pairs]))
    assert float(MeanIoU(include_background=True)(preds, target).mean()) == pytest.approx(mine.miou, abs=1e-6)
    assert float(DiceMetric(include_background=True)(preds, target).mean()) == pytest.approx(
        mine.dice, abs=1e-6
    )

    # the benchmark's data has class 3 predicted only: MONAI's per-image metric leaves it out, segen counts it as 0
    mine = references.segen_metrics(batches)
    pairs = [references.onehot_pair(logits, masks) for logits, masks in batches]
    preds = references.one_image(torch.cat([p for p, _ in pairs]))
    target = references.one_image(torch.cat([t for _, t in pairs]))
    assert float(MeanIoU(include_background=True)(preds, target).nanmean()) > mine.miou + 1e-3


def test_size_and_guard_options(bench):
    assert bench.parse_args(["--device", "cpu"]).size == "cpu"
    assert bench.parse_args(["--device", "cuda"]).size == "gpu"  # parsing only: no GPU is touched
    assert bench.parse_args(["--tiny"]).size == "tiny"
    assert bench.parse_args(["--size", "large", "--nan-policy", "off"]).nan_policy == "off"
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiny", "--size", "gpu"])


def test_nan_policy_option_is_reported_and_the_rows_stay_exact(bench, one_thread):
    """--nan-policy off: the caption says so, and the step rows still match the plain loop exactly."""
    table = bench.main(["--tiny", "--device", "cpu", "--only", "vae", "--nan-policy", "off"])
    assert "nan_policy=off" in table.splitlines()[0]
    for cells in table_rows(table).values():
        assert delta_of(cells) <= 1e-6, cells


def test_losses_read_after_the_run_are_the_same_losses(bench, one_thread):
    """--read-losses end: no per-step read on either side (losses kept on the device, read once the clock stops);
    the caption says so and every row still agrees with its plain loop loss by loss (DCGAN, VAE)."""
    import _overhead

    try:
        table = bench.main(["--tiny", "--device", "cpu", "--only", "gan", "vae", "--read-losses", "end"])
        assert _overhead._loss_reads == "end"
    finally:
        _overhead.set_loss_reads("step")
    assert "losses read after the run" in table.splitlines()[0]
    rows = table_rows(table)
    assert len(rows) == 4
    for cells in rows.values():
        assert delta_of(cells) <= 1e-6 and cells[5].endswith("(losses, weights)"), cells
    with pytest.raises(ValueError, match="loss reads 'later': expected one of \\['end', 'step'\\]"):
        _overhead.set_loss_reads("later")


def test_profile_step_lists_the_operators_only_segen_runs(one_thread):
    """profile_step.py on the CPU: the same network on both sides (equal convolution counts), and segen's own work
    (the host mask check's aminmax) shown with no plain-loop counterpart."""
    sys.path.insert(0, str(BENCHMARKS))
    import profile_step

    report = profile_step.main(
        ["--row", "seg", "--tiny", "--device", "cpu", "--steps", "3", "--warmup", "1", "--top", "500"]
    )
    assert report.startswith("U-Net step (4ch depth 2, 16 px, batch 4), default Trainer, cpu: 4 steps each")
    rows = {
        line.split("|")[1].strip().strip("`"): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in report.splitlines()
        if line.startswith("| `")
    }
    segen_calls, plain_calls = (
        float(rows["aten::convolution_backward"][0]),
        float(rows["aten::convolution_backward"][1]),
    )
    assert segen_calls == plain_calls > 0
    assert float(rows["aten::aminmax"][0]) > 0 and float(rows["aten::aminmax"][1]) == 0


def test_sync_check_names_where_a_sync_comes_from_and_refuses_without_cuda():
    sys.path.insert(0, str(BENCHMARKS))
    import traceback

    import sync_check

    segen_file = str(sync_check.ROOTS["segen"] / "tasks" / "base.py")
    torch_file = str(sync_check.ROOTS["torch"] / "_tensor.py")
    stack = [
        traceback.FrameSummary("/elsewhere/script.py", 1, "main"),
        traceback.FrameSummary(segen_file, 42, "_settle"),
        traceback.FrameSummary(torch_file, 7, "__bool__"),
    ]
    assert (
        sync_check.origin(stack) == "segen/tasks/base.py:42 (_settle)"
    )  # segen first, even if not innermost
    assert sync_check.origin(stack[2:]) == "torch/_tensor.py:7 (__bool__)"
    assert sync_check.origin(stack[:1]) == "elsewhere"
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            sync_check.main(["--row", "seg"])


def test_log_cost_runs_every_task_and_restores_the_default(one_thread):
    sys.path.insert(0, str(BENCHMARKS))
    import log_cost

    from segen.tasks.base import SegenTask

    table = log_cost.main(["--steps", "2", "--warmup", "1", "--repeats", "1", "--device", "cpu"])
    rows = [line for line in table.splitlines()[2:] if line.startswith("| ")]
    assert [row.split(" (")[0] for row in rows] == [
        "| U-Net step",
        "| DCGAN iteration",
        "| VAE step",
        "| VQ-VAE step",
    ]
    assert SegenTask.log_train_every_step is False
