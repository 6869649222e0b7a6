"""Every W&B sweep in experiments/sweeps/ runs its first trial: the test draws the agent's ``--key=value`` arguments
from each parameter's distribution and runs the real CLI with them (fast_dev_run), so a sweep never fails on a
typo, a value the CLI cannot parse (``None``, a tuple), or a metric the task does not log.

The agent's behaviour copied here (wandb/wandb_agent.py, wandb/sdk/launch/sweeps/utils.py): each parameter becomes
``f"--{name}={value}"`` (Python's ``str`` of the value, so a YAML list becomes ``[0.5, 0.999]``), and the sweep's
``command`` is expanded chunk by chunk: ``${env}`` -> ``/usr/bin/env``, ``${program}`` -> the ``program`` key,
``${interpreter}`` -> ``python``, ``${args}`` -> the arguments.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

import segen.cli
from segen.cli import SegenCLI, main

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))

# the sweep configuration keys W&B knows (docs.wandb.ai/models/sweeps/sweep-config-keys)
TOP_LEVEL_KEYS = {
    "program",
    "entity",
    "project",
    "description",
    "name",
    "method",
    "metric",
    "parameters",
    "early_terminate",
    "command",
    "run_cap",
}
METHODS = {"grid", "random", "bayes"}
RANGE_DISTRIBUTIONS = {"int_uniform", "uniform", "q_uniform", "log_uniform_values", "q_log_uniform_values"}

# Small data and a short run, as tests/test_configs.py shrinks the same configs (left out for a key the sweep
# sweeps itself).
SMALL = {
    "unet_shapes": ["--data.num_train=4", "--data.num_val=4", "--data.batch_size=2", "--data.image_size=32"],
    "dcgan_digits": ["--data.batch_size=4", "--model.fid_samples=16"],
    "vae_digits": ["--data.batch_size=4", "--model.fid_samples=16", "--model.iwae_samples=2"],
}


# ---------------------------------------------------------------------------------------- the agent's side
def distribution(spec: dict[str, Any]) -> str:
    """W&B's default when ``distribution`` is not given: categorical for ``values``, constant for ``value``,
    int_uniform for integer ``min``/``max``, uniform for float ones."""
    if "distribution" in spec:
        return spec["distribution"]
    if "values" in spec:
        return "categorical"
    if "value" in spec:
        return "constant"
    if isinstance(spec.get("min"), int) and isinstance(spec.get("max"), int):
        return "int_uniform"
    if "min" in spec and "max" in spec:
        return "uniform"
    raise ValueError(f"parameter spec {spec} has none of value, values, distribution, min/max")


def draw(spec: dict[str, Any], rng: random.Random | None, extreme: str | None = None) -> Any:
    """One value of a parameter: drawn with ``rng``, or its ``"low"``/``"high"`` end (first/last for a list)."""
    kind = distribution(spec)
    if kind == "constant":
        return spec["value"]
    if kind == "categorical":
        values = spec["values"]
        if extreme is not None:
            return values[0] if extreme == "low" else values[-1]
        return rng.choices(values, weights=spec.get("probabilities"))[0]
    if kind not in RANGE_DISTRIBUTIONS:
        raise ValueError(
            f"unknown or unsupported distribution {kind!r}; this test samples constant, categorical and "
            f"{sorted(RANGE_DISTRIBUTIONS)} (add the sampling here before using another)"
        )
    low, high = spec["min"], spec["max"]
    assert low < high, f"min {low} must be below max {high}"
    if kind == "int_uniform":
        assert isinstance(low, int) and isinstance(high, int), "int_uniform needs integer min and max"
        if extreme is not None:
            return low if extreme == "low" else high
        return rng.randint(low, high)
    log = kind.endswith("log_uniform_values")
    if log:
        assert low > 0, f"{kind} needs min > 0, got {low}"
    if extreme is not None:
        value = float(low if extreme == "low" else high)
    elif log:
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        value = rng.uniform(low, high)
    if kind.startswith("q_"):
        q = spec.get("q", 1)
        value = round(value / q) * q
    return value


def agent_args(sweep: dict[str, Any], rng: random.Random | None, extreme: str | None = None) -> list[str]:
    """The arguments the agent passes for one trial (``${args}``)."""
    return [f"--{name}={draw(spec, rng, extreme)}" for name, spec in sweep["parameters"].items()]


def agent_command(sweep: dict[str, Any], args: list[str]) -> list[str]:
    """The sweep's ``command`` with its macros expanded as the agent does (on Linux)."""
    macros = {
        "env": ["/usr/bin/env"],
        "interpreter": ["python"],
        "program": [sweep.get("program")],
        "args": args,
    }
    command: list[str] = []
    for chunk in map(str, sweep["command"]):
        if chunk.startswith("${") and chunk.endswith("}"):
            assert chunk[2:-1] in macros, f"unknown macro {chunk}"
            command += macros[chunk[2:-1]]
        else:
            command.append(chunk)
    return command


def run_trial(
    sweep: dict[str, Any], args: list[str], stem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> SegenCLI:
    """Run the trial's command in-process through ``segen.cli.main`` (what the ``segen`` script calls)."""
    command = agent_command(sweep, args)
    if command[0] == "/usr/bin/env":
        command = command[1:]
    assert command[0] == "segen", f"the sweep must run the segen command, got {command}"
    argv = command[1:]
    # the agent runs in the repository root; the test runs in tmp_path with the config path made absolute
    config = argv.index("-c") + 1
    assert (REPO / argv[config]).is_file(), f"{argv[config]} is not a file under the repository root"
    argv[config] = str(REPO / argv[config])
    monkeypatch.chdir(tmp_path)
    swept = {a.split("=")[0] for a in args}
    clis: list[SegenCLI] = []

    class RecordingCLI(SegenCLI):
        def __init__(self, *a: Any, **k: Any) -> None:
            clis.append(self)
            super().__init__(*a, **k)

    monkeypatch.setattr(segen.cli, "SegenCLI", RecordingCLI)
    main(
        [
            *argv,
            "--trainer.fast_dev_run=1",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            *(a for a in SMALL.get(stem, []) if a.split("=")[0] not in swept),
        ]
    )
    return clis[0]


def lookup(node: Any, keys: list[str]) -> Any:
    """``keys`` of a parsed config, stepping through the ``init_args`` of class entries."""
    for key in keys:
        node = node[key] if key in node else node["init_args"][key]
    return node


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------- tests
def test_there_are_sweeps_for_the_unet_dcgan_and_vae():
    assert {"unet_shapes", "dcgan_digits", "vae_digits"} <= {p.stem for p in SWEEPS}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_has_the_fields_wandb_requires(path: Path):
    sweep = load(path)
    assert set(sweep) <= TOP_LEVEL_KEYS, f"unknown top-level keys {set(sweep) - TOP_LEVEL_KEYS}"
    assert sweep["method"] in METHODS
    assert set(sweep["metric"]) >= {"name", "goal"} and sweep["metric"]["goal"] in ("minimize", "maximize")
    assert "/" in sweep["metric"]["name"], "segen logs stage/name metrics"
    assert sweep["parameters"] and all(isinstance(s, dict) for s in sweep["parameters"].values())
    assert "${args}" in sweep["command"], "the agent's arguments reach the command only through ${args}"
    if "${program}" in sweep["command"]:
        assert sweep.get("program"), "${program} needs a program key"
    if sweep["method"] == "grid":
        assert all(distribution(s) in ("categorical", "constant") for s in sweep["parameters"].values())
    for spec in sweep["parameters"].values():
        for extreme in ("low", "high"):
            draw(spec, None, extreme)  # raises for an unknown distribution


def test_agent_args_format_values_like_wandb():
    sweep = {"parameters": {"a.b": {"values": [[0.5, 0.999]]}, "c": {"value": True}, "d": {"value": "ns"}}}
    assert agent_args(sweep, random.Random(0)) == ["--a.b=[0.5, 0.999]", "--c=True", "--d=ns"]
    try:  # the agent's own formatting, where wandb is installed
        from wandb.sdk.launch.sweeps.utils import create_sweep_command_args
    except ImportError:
        return
    run = {"args": {name: {"value": draw(s, random.Random(0))} for name, s in sweep["parameters"].items()}}
    assert create_sweep_command_args(run)["args"] == agent_args(sweep, random.Random(0))


def test_an_unknown_distribution_fails():
    with pytest.raises(ValueError, match="unknown or unsupported distribution 'normal'"):
        draw({"distribution": "normal", "mu": 0, "sigma": 1}, random.Random(0))


# Two seeded draws of every sweep (seeds 0 and 1 give both GAN losses with R1 on, U-Net widths 16 and 32, VAE
# latents 32 and 64), and the low end of every range: R1 off, the narrowest U-Net, the smallest VAE latent. The
# high ends add only larger numbers to parse and a 32-wide U-Net that seed 1 runs already.
TRIALS = [(p, seed, None) for p in SWEEPS for seed in (0, 1)] + [(p, None, "low") for p in SWEEPS]


@pytest.mark.parametrize(
    ("path", "seed", "extreme"), TRIALS, ids=[f"{p.stem}-{s if e is None else e}" for p, s, e in TRIALS]
)
def test_first_trial_runs_and_logs_the_sweep_metric(path, seed, extreme, tmp_path, monkeypatch):
    sweep = load(path)
    args = agent_args(sweep, random.Random(seed), extreme)
    cli = run_trial(sweep, args, path.stem, tmp_path, monkeypatch)
    metric = sweep["metric"]["name"]
    metrics = cli.trainer.callback_metrics
    assert metric in metrics, f"{path.name} optimises {metric}, but the run logged only {sorted(metrics)}"
    assert math.isfinite(float(metrics[metric]))
    # the swept values reached the model: each --model.x.y=v is in the parsed config (x.init_args.y for classes)
    config = cli.config[cli.subcommand]
    for arg in args:
        name, value = arg[2:].split("=", 1)
        expected = yaml.safe_load(value)
        if isinstance(expected, str) and value.replace("-", "").replace("e", "").replace(".", "").isdigit():
            expected = float(value)  # PyYAML reads "5e-05" (no dot) as a string; the CLI reads a float
        actual = lookup(config, name.split("."))
        actual = list(actual) if isinstance(actual, tuple) else actual
        assert actual == (expected if isinstance(expected, str) else pytest.approx(expected)), name


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        (
            "model.learning_rate",
            {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        ),  # no such option
        ("model.weight_decay", {"value": None}),  # the agent passes "None", which is not YAML's null
    ],
)
def test_a_parameter_the_cli_rejects_fails_the_trial(name, spec, tmp_path, monkeypatch):
    """The trials above are not vacuous: the real CLI rejects what a sweep must not contain."""
    sweep = load(REPO / "experiments" / "sweeps" / "unet_shapes.yaml")
    sweep["parameters"][name] = spec
    with pytest.raises(SystemExit) as raised:
        run_trial(sweep, agent_args(sweep, random.Random(0)), "unet_shapes", tmp_path, monkeypatch)
    assert raised.value.code != 0
