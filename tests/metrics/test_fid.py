"""FID / KID through torchmetrics with segen's feature networks: real values, no mocks, no downloads.

The digits classifier is trained once per module into a temporary cache (the only expensive step, a few seconds);
every metric test reuses it. Reference points: the same images on both sides give FID ≈ 0 and KID ≈ 0, two halves
of the digits give a small value, uniform noise against digits a value hundreds of times larger.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import segen.metrics.features as features_module
from segen.metrics import (
    DigitClassifier,
    FeatureNet,
    InceptionFeatures,
    build_fid,
    build_kid,
    digits_feature_network,
    load_digits_images,
    real_sample_count,
)

N = 400  # images per side in most tests: enough for stable statistics, cheap on 2 cores


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two threads waiting on each other made KID's small matrix
    products ~100× slower (9 s instead of 0.05 s); the values do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("segen_cache")
    digits_feature_network(cache_dir=directory)  # trains and caches
    return directory


@pytest.fixture(scope="module")
def digits_net(digits_cache: Path) -> FeatureNet:
    return digits_feature_network(cache_dir=digits_cache)  # loads the cache


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_digits_images(32)[0]  # (1797, 1, 32, 32) in [-1, 1]


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    return torch.rand(N, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def fid_of(net: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    metric = build_fid(net)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return metric.compute().item()


def kid_of(net: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    metric = build_kid(net)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return metric.compute()[0].item()


# ----------------------------------------------------------------------------------------------------------
# the digits feature network
# ----------------------------------------------------------------------------------------------------------


def test_digits_classifier_is_accurate_and_cached_once(digits_cache: Path, digits: torch.Tensor) -> None:
    path = digits_cache / "digits_classifier_v1.pt"
    assert sorted(os.listdir(digits_cache)) == [path.name]  # the atomic write left no temporary file
    saved = torch.load(path, weights_only=True)
    assert saved["held_out_accuracy"] >= 0.95
    # The cached weights really classify: accuracy over all 1797 digits (80% seen in training, 20% held out).
    classifier = DigitClassifier()
    classifier.load_state_dict(saved["state_dict"])
    labels = load_digits_images(32)[1]
    with torch.no_grad():
        accuracy = (classifier.eval()(digits).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.95


def test_second_call_loads_the_cache_without_training(
    digits_cache: Path, monkeypatch: pytest.MonkeyPatch, digits: torch.Tensor, digits_net: FeatureNet
) -> None:
    path = digits_cache / "digits_classifier_v1.pt"
    mtime = path.stat().st_mtime_ns

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("retrained although the cache exists")

    monkeypatch.setattr(features_module, "train_digit_classifier", no_training)
    monkeypatch.setenv("SEGEN_CACHE", str(digits_cache))
    net = digits_feature_network()  # cache folder from $SEGEN_CACHE
    assert path.stat().st_mtime_ns == mtime
    assert net.info["weights"] == str(path) and net.info["held_out_accuracy"] >= 0.95
    assert net.info["train_seconds"] == 0.0
    assert torch.equal(net(digits[:8]), digits_net(digits[:8]))


def test_corrupt_cache_says_what_to_do(tmp_path: Path) -> None:
    torch.save({"something": torch.zeros(1)}, tmp_path / "digits_classifier_v1.pt")
    with pytest.raises(RuntimeError, match="delete it"):
        digits_feature_network(cache_dir=tmp_path)
    (tmp_path / "digits_classifier_v1.pt").write_bytes(b"half a file")
    with pytest.raises(RuntimeError, match="delete it"):
        digits_feature_network(cache_dir=tmp_path)


def test_digits_net_contract(digits_net: FeatureNet, digits: torch.Tensor) -> None:
    assert digits_net.num_features == 128
    assert not digits_net.training and not any(p.requires_grad for p in digits_net.parameters())
    assert digits_net(digits[:5]).shape == (5, 128)
    # other sizes are resized to 32×32; features stay finite
    for size in (8, 28, 64):
        out = digits_net(torch.rand(3, 1, size, size) * 2 - 1)
        assert out.shape == (3, 128) and torch.isfinite(out).all()


@pytest.mark.parametrize("channels", [3, 2])
def test_digits_net_rejects_other_channel_counts(digits_net: FeatureNet, channels: int) -> None:
    with pytest.raises(ValueError, match=f"1-channel images, got {channels} channels"):
        digits_net(torch.zeros(2, channels, 32, 32))


def test_feature_net_stays_frozen_fp32_and_out_of_checkpoints(
    digits_net: FeatureNet, digits: torch.Tensor
) -> None:
    owner = nn.ModuleDict({"fid": build_fid(digits_net)})
    owner.train()  # what Lightning does at the start of every training epoch
    assert not digits_net.training and not any(m.training for m in digits_net.modules())

    reference = digits_net(digits[:16])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16-mixed training must not round the features
        mixed = digits_net(digits[:16])
    assert mixed.dtype == torch.float32 and torch.equal(mixed, reference)

    state = owner.state_dict()
    assert not any("inception" in key for key in state)  # no feature weights in a task's checkpoint
    before = [p.clone() for p in digits_net.parameters()]
    owner.load_state_dict(state, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(before, digits_net.parameters()))


# ----------------------------------------------------------------------------------------------------------
# FID and KID values
# ----------------------------------------------------------------------------------------------------------


def test_fid_self_split_and_noise(digits_net: FeatureNet, digits: torch.Tensor, noise: torch.Tensor) -> None:
    real = digits[:N]
    same = fid_of(digits_net, real, real)
    split = fid_of(digits_net, digits[: N // 2], digits[N // 2 : N])
    away = fid_of(digits_net, real, noise)
    assert abs(same) < 1e-6
    assert away > 50.0
    assert 0 < split < away / 20


def test_kid_self_split_and_noise(digits_net: FeatureNet, digits: torch.Tensor, noise: torch.Tensor) -> None:
    real = digits[:N]
    same = kid_of(digits_net, real, real)
    split = kid_of(digits_net, digits[: N // 2], digits[N // 2 : N])
    away = kid_of(digits_net, real, noise)
    assert away > 10.0
    assert abs(same) < away / 100  # unbiased estimator: ≈ 0, either sign
    assert abs(split) < away / 100


def test_real_once_fake_reset_equals_from_scratch(digits_net: FeatureNet, digits: torch.Tensor) -> None:
    real, fakes = digits[:300], [digits[300:500], digits[1000:1200] * 0.5]  # the second "generator" is worse
    for build, value in (
        (build_fid, lambda m: m.compute().reshape(1)),
        (build_kid, lambda m: torch.stack(m.compute())),
    ):
        flow = build(digits_net)
        for chunk in real.split(128):  # real statistics once, in batches
            flow.update(chunk, real=True)
        values = []
        for fake in fakes:
            for chunk in fake.split(64):
                flow.update(chunk, real=False)
            values.append(value(flow))
            flow.reset()
            assert real_sample_count(flow) == 300
        for fake, got in zip(fakes, values):
            scratch = build(digits_net)
            for chunk in real.split(128):
                scratch.update(chunk, real=True)
            scratch.update(fake, real=False)
            torch.testing.assert_close(got, value(scratch), rtol=1e-5, atol=1e-6)
        assert values[1][0] > values[0][0]


def test_kid_is_repeatable_and_leaves_global_rng_alone(digits_net: FeatureNet, digits: torch.Tensor) -> None:
    kids = [build_kid(digits_net, subsets=10) for _ in range(2)]
    for kid in kids:
        kid.update(digits[:200], real=True)
        kid.update(digits[200:400], real=False)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = torch.stack(kids[0].compute())
    assert torch.equal(torch.rand(1), expected_next)  # compute() drew its subsets from a forked RNG
    assert torch.equal(first, torch.stack(kids[1].compute()))  # same features, same subsets, same value


def test_kid_with_too_few_samples_gives_the_counts(digits_net: FeatureNet, digits: torch.Tensor) -> None:
    kid = build_kid(digits_net)  # subset_size=100
    kid.update(digits[:150], real=True)
    kid.update(digits[150:210], real=False)
    with pytest.raises(ValueError, match="got 150 real and 60 fake"):
        kid.compute()


# ----------------------------------------------------------------------------------------------------------
# custom feature networks and errors
# ----------------------------------------------------------------------------------------------------------


def test_custom_feature_net(digits: torch.Tensor) -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net = FeatureNet(conv, num_features=16)
    rgb = digits[:N].expand(-1, 3, -1, -1)
    colour_noise = torch.rand(N, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    assert abs(fid_of(net, rgb, rgb)) < 1e-6
    assert fid_of(net, rgb, colour_noise) > 1e-3
    assert fid_of(net, rgb[: N // 2], rgb[N // 2 :]) < fid_of(net, rgb, colour_noise) / 5

    conv.num_features = 16  # a module with an integer num_features is wrapped (frozen) automatically
    wrapped = build_fid(conv).inception
    assert isinstance(wrapped, FeatureNet) and not any(p.requires_grad for p in conv.parameters())


def test_module_without_num_features_and_wrong_output_shape() -> None:
    with pytest.raises(TypeError, match=r"FeatureNet\(module, num_features=d\)"):
        build_fid(nn.Flatten())
    net = FeatureNet(nn.Flatten(), num_features=7)
    with pytest.raises(ValueError, match=r"images.float\(\) / 127.5 - 1"):
        net(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"expected \(2, 7\)"):
        net(torch.zeros(2, 1, 4, 4))


def test_unknown_feature_name_and_misplaced_weights_path() -> None:
    with pytest.raises(ValueError, match="did you mean 'inception'"):
        build_fid("inceptoin")
    with pytest.raises(ValueError, match="weights_path is for feature='inception'"):
        build_kid("digits", weights_path="/some/file.pt")


def test_inception_missing_weights_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    missing = tmp_path / "nowhere" / "inception.pth"
    with pytest.raises(FileNotFoundError, match="never downloads") as error:
        InceptionFeatures(missing)
    assert str(missing) in str(error.value) and "weights-inception-2015-12-05-6726825d.pth" in str(
        error.value
    )

    monkeypatch.setenv("SEGEN_CACHE", str(tmp_path))  # default location: $SEGEN_CACHE/<file name>
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "weights-inception-2015-12-05-6726825d.pth")):
        build_fid("inception")


def test_inception_without_torch_fidelity_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m.startswith("torch_fidelity")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(
        sys.modules, "torch_fidelity", None
    )  # an import of it now fails as if it were not installed
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")
    with pytest.raises(ModuleNotFoundError, match="pip install torch-fidelity"):
        InceptionFeatures(weights)


def test_inception_loads_local_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With torch-fidelity installed: weights come from the local file only and features are (B, 2048)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity  # a dev dependency

    # Make a weights file with the right keys and shapes (random values): build once with loading disabled.
    monkeypatch.setattr(fidelity, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    weights = tmp_path / "weights-inception.pth"
    torch.save(fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict(), weights)
    monkeypatch.undo()

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr(fidelity, "load_state_dict_from_url", no_download)
    net = InceptionFeatures(weights)
    assert net.num_features == 2048 and not net.training
    out = net(torch.rand(2, 1, 32, 32) * 2 - 1)
    assert out.shape == (2, 2048) and out.dtype == torch.float32 and torch.isfinite(out).all()
