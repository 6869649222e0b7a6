"""Segmentation losses: hand-computed values, ignore_index semantics, empty-class policy, errors.

Expected values are written as literals computed by hand from chosen softmax probabilities: logits are
``log(p)``, so ``softmax(logits) == p`` exactly and every Dice / CE / focal term is simple arithmetic.
"""

from __future__ import annotations

import math

import pytest
import torch

from segen.losses import (
    LOSSES,
    CrossEntropyLoss,
    DiceCELoss,
    DiceCEParts,
    DiceLoss,
    FocalLoss,
    build_loss,
    check_target,
    cross_entropy_loss,
    dice_ce_loss,
    dice_loss,
    focal_loss,
)
from segen.registry import lookup

IGNORE = 255

# per-pixel class probabilities for a 1×2×1×2 batch: pixel 0 leans to class 1, pixel 1 to class 0
A = [[0.25, 0.75], [0.75, 0.25]]
# 1×2×1×2 batch: pixel 0 undecided, pixel 1 leans to class 0
B = [[0.5, 0.5], [0.75, 0.25]]


def logits_from_probs(*samples: list[list[float]]) -> torch.Tensor:
    """Samples of per-pixel probabilities (one row of W pixels each) -> logits (N, K, 1, W)."""
    probs = torch.tensor(samples, dtype=torch.float64)  # (N, W, K)
    return probs.log().permute(0, 2, 1).unsqueeze(2).float()  # (N, K, 1, W)


def target_of(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long).unsqueeze(1)  # (N, 1, W)


# ----------------------------------------------------------------------------------------------------------
# hand-computed tables
# ----------------------------------------------------------------------------------------------------------

# (id, samples, target rows, kwargs, expected)
DICE_CASES = [
    # class 0: I=.25 P=1 T=1 -> .25; class 1: I=.25 P=1 T=1 -> .25; loss 1 - .25
    ("mismatch", [A], [[0, 1]], {}, 0.75),
    # class 0: I=.75 -> 1.5/2 = .75; class 1 likewise; loss .25
    ("match", [A], [[1, 0]], {}, 0.25),
    # class 0: I=1 P=1 T=2 -> 2/3; class 1 absent from target but predicted (P=1): Dice≈0; loss 1 - 1/3
    ("absent_but_predicted", [A], [[0, 0]], {}, 2 / 3),
    # only class 1 counts, its Dice ≈ 0
    ("no_background", [A], [[0, 0]], {"include_background": False}, 1.0),
    # weighted mean (3·2/3 + 1·0) / 4
    ("class_weights", [A], [[0, 0]], {"class_weights": [3.0, 1.0]}, 0.5),
    # batch Dice over 2 samples: class 0 I=1.25 P=2 T=3 -> .5; class 1 I=.25 P=2 T=1 -> 1/6; loss 2/3
    ("batch", [A, A], [[0, 1], [0, 0]], {"batch": True}, 2 / 3),
    # per-sample Dice: mean(.75, 2/3)
    ("per_sample", [A, A], [[0, 1], [0, 0]], {"batch": False}, 0.7083333),
    # class 0: I=.5+.75 P=1.25 T=2 -> 2.5/3.25; class 1: I=0 P=.75 T=0 -> 0
    ("undecided", [B], [[0, 0]], {}, 1 - (2.5 / 3.25) / 2),
]

# -ln(.25) = 1.3862944, -ln(.75) = 0.2876821, -ln(.5) = 0.6931472
CE_CASES = [
    ("mismatch", [A], [[0, 1]], {}, 1.3862944),
    ("match", [A], [[1, 0]], {}, 0.2876821),
    ("mixed", [A], [[0, 0]], {}, (1.3862944 + 0.2876821) / 2),
    # weights: (3·0.6931472 + 1·1.3862944) / (3 + 1)
    ("class_weights", [B], [[0, 1]], {"class_weights": [3.0, 1.0]}, 0.8664340),
]

DICE_CE_CASES = [
    ("equal_weights", [A], [[0, 1]], {}, 0.75, 1.3862944, 0.75 + 1.3862944),
    ("custom_weights", [A], [[0, 1]], {"dice_weight": 0.5, "ce_weight": 2.0}, 0.75, 1.3862944, 3.1475888),
    ("match", [A], [[1, 0]], {}, 0.25, 0.2876821, 0.5376821),
]

FOCAL_CASES = [
    # p_t = .75 on both pixels: .25² · 0.2876821
    ("easy", [A], [[1, 0]], {"gamma": 2.0}, 0.0179801),
    # p_t = .25 on both pixels: .75² · 1.3862944
    ("hard", [A], [[0, 1]], {"gamma": 2.0}, 0.7797906),
    # alpha .25 and .75 on the two hard pixels: mean(.25, .75) · 0.7797906
    ("alpha", [A], [[0, 1]], {"gamma": 2.0, "alpha": [0.25, 0.75]}, 0.3898953),
    # gamma 1: mean(.75 · 1.3862944, .25 · 0.2876821)
    ("gamma_one", [A], [[0, 0]], {"gamma": 1.0}, 0.5558206),
]


@pytest.mark.parametrize(
    ("samples", "rows", "kwargs", "expected"), [c[1:] for c in DICE_CASES], ids=[c[0] for c in DICE_CASES]
)
def test_dice_table(samples, rows, kwargs, expected):
    logits, target = logits_from_probs(*samples), target_of(*rows)
    assert dice_loss(logits, target, **kwargs).item() == pytest.approx(expected, abs=1e-4)
    assert DiceLoss(**kwargs)(logits, target).item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("samples", "rows", "kwargs", "expected"), [c[1:] for c in CE_CASES], ids=[c[0] for c in CE_CASES]
)
def test_cross_entropy_table(samples, rows, kwargs, expected):
    logits, target = logits_from_probs(*samples), target_of(*rows)
    assert cross_entropy_loss(logits, target, **kwargs).item() == pytest.approx(expected, abs=1e-5)
    assert CrossEntropyLoss(**kwargs)(logits, target).item() == pytest.approx(expected, abs=1e-5)
    weight = torch.tensor(kwargs["class_weights"]) if "class_weights" in kwargs else None
    torch_ce = torch.nn.functional.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
    assert cross_entropy_loss(logits, target, **kwargs).item() == pytest.approx(torch_ce.item(), abs=1e-6)


@pytest.mark.parametrize(
    ("samples", "rows", "kwargs", "dice", "ce", "loss"),
    [c[1:] for c in DICE_CE_CASES],
    ids=[c[0] for c in DICE_CE_CASES],
)
def test_dice_ce_table(samples, rows, kwargs, dice, ce, loss):
    logits, target = logits_from_probs(*samples), target_of(*rows)
    parts = dice_ce_loss(logits, target, **kwargs)
    assert isinstance(parts, DiceCEParts)
    assert parts.dice.item() == pytest.approx(dice, abs=1e-4)
    assert parts.ce.item() == pytest.approx(ce, abs=1e-5)
    assert parts.loss.item() == pytest.approx(loss, abs=1e-4)
    module = DiceCELoss(**kwargs)
    assert module(logits, target).item() == pytest.approx(loss, abs=1e-4)
    assert module.parts(logits, target).ce.item() == pytest.approx(ce, abs=1e-5)


@pytest.mark.parametrize(
    ("samples", "rows", "kwargs", "expected"), [c[1:] for c in FOCAL_CASES], ids=[c[0] for c in FOCAL_CASES]
)
def test_focal_table(samples, rows, kwargs, expected):
    logits, target = logits_from_probs(*samples), target_of(*rows)
    assert focal_loss(logits, target, **kwargs).item() == pytest.approx(expected, abs=1e-5)
    assert FocalLoss(**kwargs)(logits, target).item() == pytest.approx(expected, abs=1e-5)


# ----------------------------------------------------------------------------------------------------------
# behaviour
# ----------------------------------------------------------------------------------------------------------


def random_batch(seed: int = 0, b: int = 2, k: int = 4, h: int = 5, w: int = 6, ignore_frac: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g) * 3
    target = torch.randint(0, k, (b, h, w), generator=g)
    ignored = torch.rand(b, h, w, generator=g) < ignore_frac
    return logits, target.masked_fill(ignored, IGNORE)


ALL_LOSSES = {
    "dice": lambda x, t: dice_loss(x, t),
    "dice_per_sample": lambda x, t: dice_loss(x, t, batch=False),
    "dice_no_bg_weighted": lambda x, t: dice_loss(x, t, include_background=False, class_weights=[1, 2, 3, 4]),
    "ce": lambda x, t: cross_entropy_loss(x, t),
    "ce_weighted": lambda x, t: cross_entropy_loss(x, t, class_weights=[1, 2, 3, 4]),
    "dice_ce": lambda x, t: dice_ce_loss(x, t).loss,
    "focal": lambda x, t: focal_loss(x, t, gamma=2.0, alpha=[0.1, 0.2, 0.3, 0.4]),
    "focal_gamma_half": lambda x, t: focal_loss(x, t, gamma=0.5),
}


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_perfect_logits_give_near_zero_for_overlap_losses(name):
    _, target = random_batch(ignore_frac=0.2)
    onehot = torch.nn.functional.one_hot(target.masked_fill(target == IGNORE, 0), 4).permute(0, 3, 1, 2)
    logits = onehot.float() * 20  # (B, K, H, W)
    value = ALL_LOSSES[name](logits, target).item()
    if name.startswith("dice"):
        assert value < 1e-4
    else:
        assert 0 <= value < 1e-4


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_ignored_pixels_change_neither_value_nor_gradient(name):
    loss_fn = ALL_LOSSES[name]
    logits, target = random_batch(seed=1)
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)  # (B, K, H, W)
    assert ignored.any()

    x = logits.clone().requires_grad_(True)
    base = loss_fn(x, target)
    base.backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[ignored] == 0).all(), "ignored pixels must receive exactly zero gradient"
    assert x.grad[~ignored].abs().sum() > 0

    scrambled = torch.where(ignored, torch.randn_like(logits) * 100, logits)
    assert loss_fn(scrambled, target).item() == pytest.approx(base.item(), abs=1e-6)

    # an extra all-ignored column leaves the value unchanged
    wider_logits = torch.cat([logits, torch.randn(2, 4, 5, 1) * 50], dim=3)  # (B, K, H, W + 1)
    wider_target = torch.cat([target, torch.full((2, 5, 1), IGNORE)], dim=2)  # (B, H, W + 1)
    assert loss_fn(wider_logits, wider_target).item() == pytest.approx(base.item(), abs=1e-6)


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_all_pixels_ignored_gives_connected_zero(name):
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    target = torch.full((2, 3, 3), IGNORE)
    value = ALL_LOSSES[name](logits, target)
    assert value.item() == 0.0
    assert value.requires_grad, "the zero must stay connected to the graph"
    value.backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad == 0).all()


def test_per_sample_dice_skips_samples_with_only_ignored_pixels():
    # sample 2 is fully ignored: it must not count as a perfect (zero-loss) sample in the mean
    logits = logits_from_probs(A, B)
    target = target_of([0, 1], [IGNORE, IGNORE])
    assert dice_loss(logits, target, batch=False).item() == pytest.approx(0.75, abs=1e-4)


def test_torch_cross_entropy_alone_is_nan_when_all_ignored():
    """Documents why the guard exists (if torch changes this, the guard is merely redundant)."""
    logits, target = torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), IGNORE)
    assert torch.isnan(torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE))
    assert cross_entropy_loss(logits, target).item() == 0.0


def test_empty_class_absent_from_target_and_prediction_contributes_zero_loss():
    # classes 0 and 1 present; class 2 neither in the target nor predicted (logit -30)
    logits2 = logits_from_probs(A, B)  # (2, 2, 1, 2)
    target = target_of([0, 1], [1, 0])
    logits3 = torch.cat([logits2, torch.full((2, 1, 1, 2), -30.0)], dim=1)  # (2, 3, 1, 2)
    loss2 = dice_loss(logits2, target)
    loss3 = dice_loss(logits3, target)
    # the absent class has Dice 1: the sum of per-class losses is unchanged, it only enters the mean
    assert (3 * loss3).item() == pytest.approx((2 * loss2).item(), abs=1e-5)
    # with that class weighted 0, the loss equals the loss computed without it
    assert dice_loss(logits3, target, class_weights=[1, 1, 0]).item() == pytest.approx(loss2.item(), abs=1e-5)
    for batch in (True, False):
        assert torch.isfinite(dice_loss(logits3, target, batch=batch, smooth=1e-12))


def test_class_absent_from_target_but_predicted_costs_about_one():
    logits = logits_from_probs(A)  # class 1 holds mass on both pixels
    target = target_of([0, 0])
    only_class_1 = dice_loss(logits, target, class_weights=[0, 1])
    assert only_class_1.item() == pytest.approx(1.0, abs=1e-4)
    x = logits.clone().requires_grad_(True)
    dice_loss(x, target, class_weights=[0, 1]).backward()
    assert (x.grad[:, 1] > 0).all(), "gradient descent must lower the absent class's logits"


@pytest.mark.parametrize("name", list(ALL_LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_finite_for_extreme_and_low_precision_logits(name, dtype):
    _, target = random_batch(seed=2)
    g = torch.Generator().manual_seed(3)
    logits = (torch.randint(0, 2, (2, 4, 5, 6), generator=g).float() * 2 - 1) * 1e4  # ±1e4
    # make some pixels exactly right (p_t == 1) and some exactly wrong (p_t == 0)
    logits[0, :, 0, 0] = torch.tensor([1e4, -1e4, -1e4, -1e4])
    target[0, 0, 0] = 0
    target[0, 0, 1] = 3
    logits[0, :, 0, 1] = torch.tensor([1e4, -1e4, -1e4, -1e4])
    x = logits.to(dtype).requires_grad_(True)
    value = ALL_LOSSES[name](x, target)
    assert value.dtype == torch.float32, "losses compute in float32"
    assert torch.isfinite(value)
    value.backward()
    assert x.grad.dtype == dtype
    assert torch.isfinite(x.grad.float()).all()


def test_bf16_logits_match_float32():
    logits, target = random_batch(seed=4)
    logits = logits.to(torch.bfloat16)
    for fn in ALL_LOSSES.values():
        assert fn(logits, target).item() == pytest.approx(fn(logits.float(), target).item(), abs=1e-6)


def test_focal_gamma_zero_equals_cross_entropy():
    logits, target = random_batch(seed=5)
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE)
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(ce.item(), abs=1e-6)
    assert FocalLoss(gamma=0)(logits, target).item() == pytest.approx(ce.item(), abs=1e-6)


def test_focal_below_cross_entropy_on_easy_example():
    logits = logits_from_probs([[0.1, 0.9], [0.95, 0.05]])
    target = target_of([1, 0])
    ce = cross_entropy_loss(logits, target)
    focal = focal_loss(logits, target, gamma=2.0)
    assert 0 < focal.item() < 0.05 * ce.item()


def test_dice_ce_module_weights_combine_parts():
    logits, target = random_batch(seed=6)
    a, b = 0.3, 1.7
    dice = dice_loss(logits, target)
    ce = cross_entropy_loss(logits, target)
    assert DiceCELoss(dice_weight=a, ce_weight=b)(logits, target).item() == pytest.approx(
        (a * dice + b * ce).item(), abs=1e-6
    )


def test_class_weights_are_buffers_that_follow_the_module():
    module = DiceCELoss(class_weights=[1, 2, 3, 4])
    assert "class_weights" in dict(module.named_buffers())
    assert module.class_weights.dtype == torch.float32
    assert "class_weights" not in module.state_dict(), "weights are config, not checkpoint state"
    assert FocalLoss(alpha=[0.5, 0.5]).alpha.tolist() == [0.5, 0.5]
    logits, target = random_batch(seed=7)
    assert module(logits.double(), target).dtype == torch.float32


def test_uint8_target_is_accepted():
    logits, target = random_batch(seed=8)
    assert dice_loss(logits, target.to(torch.uint8)).item() == pytest.approx(dice_loss(logits, target).item())


# ----------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------


def test_value_out_of_range_names_the_value_k_and_ignore_index():
    logits = torch.randn(1, 4, 2, 2)
    target = torch.tensor([[[0, 1], [7, 255]]])
    with pytest.raises(ValueError, match="7") as info:
        check_target(logits, target)
    message = str(info.value)
    assert "num_classes=4" in message and "255" in message and "0..3" in message
    for fn in (dice_loss, cross_entropy_loss, focal_loss, dice_ce_loss):
        with pytest.raises(ValueError, match="class 7"):
            fn(logits, target)


def test_negative_and_several_bad_values_are_reported():
    logits = torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match="-1"):
        check_target(logits, torch.tensor([[[0, -1], [1, 2]]]))
    with pytest.raises(ValueError, match=r"smallest -3, largest 9"):
        check_target(logits, torch.tensor([[[9, -3], [4, 2]]]))


def test_ignore_index_is_respected_by_the_check():
    logits = torch.randn(1, 4, 2, 2)
    check_target(logits, torch.tensor([[[0, -100], [3, 2]]]), ignore_index=-100)
    with pytest.raises(ValueError, match="255"):
        check_target(logits, torch.tensor([[[0, 255], [3, 2]]]), ignore_index=-100)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_non_integer_target_is_a_type_error(dtype):
    with pytest.raises(TypeError, match=r"mask\.long\(\)") as info:
        dice_loss(torch.randn(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=dtype))
    assert str(dtype) in str(info.value)


@pytest.mark.parametrize(
    ("logits_shape", "target_shape", "pattern"),
    [
        ((1, 4, 2, 2), (1, 3, 2), r"\(1, 4, 2, 2\).*\(1, 3, 2\)"),
        ((1, 4, 2, 2), (2, 2, 2), r"expected target shape \(1, 2, 2\)"),
        ((4, 2, 2), (1, 2, 2), "must be 4-D"),
        ((1, 4, 2, 2), (1, 1, 2, 2), r"3-D.*squeeze\(1\)"),
        ((1, 1, 2, 2), (1, 2, 2), "K=1"),
    ],
)
def test_shape_errors_name_both_shapes(logits_shape, target_shape, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_target(torch.randn(*logits_shape), torch.zeros(target_shape, dtype=torch.long))


@pytest.mark.parametrize(
    ("factory", "argument"),
    [
        (lambda: DiceCELoss(dice_weight=-1.0), "dice_weight"),
        (lambda: DiceCELoss(ce_weight=-0.1), "ce_weight"),
        (lambda: DiceCELoss(dice_weight=0.0, ce_weight=0.0), "both 0"),
        (lambda: FocalLoss(gamma=-1.0), "gamma"),
        (lambda: FocalLoss(alpha=[0.5, -0.5]), "alpha"),
        (lambda: DiceLoss(class_weights=[1.0, -2.0]), "class_weights"),
        (lambda: DiceLoss(smooth=0.0), "smooth"),
        (lambda: CrossEntropyLoss(class_weights=[[1.0, 2.0]]), "class_weights"),
    ],
)
def test_constructor_arguments_are_validated(factory, argument):
    with pytest.raises(ValueError, match=argument):
        factory()


def test_class_weights_length_must_match_classes():
    logits, target = random_batch(seed=9)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        dice_loss(logits, target, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="include_background=False"):
        dice_loss(logits, target, include_background=False, class_weights=[1.0, 0, 0, 0])


# ----------------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_build_loss_returns_the_registered_module(name):
    module = build_loss(name)
    assert isinstance(module, LOSSES[name])
    logits, target = random_batch(seed=10)
    assert torch.isfinite(module(logits, target))


def test_build_loss_passes_options():
    module = build_loss("dice_ce", dice_weight=0.5, ce_weight=2.0)
    logits, target = logits_from_probs(A), target_of([0, 1])
    assert module(logits, target).item() == pytest.approx(3.1475888, abs=1e-4)


def test_unknown_loss_name_lists_valid_names_and_suggests_closest():
    with pytest.raises(ValueError) as info:
        build_loss("dice_c")
    assert (
        str(info.value) == "unknown loss 'dice_c'; valid: ce, dice, dice_ce, focal; did you mean 'dice_ce'?"
    )
    with pytest.raises(ValueError, match="did you mean 'focal'"):
        build_loss("Focal")
    with pytest.raises(ValueError) as info:
        build_loss("zzzzzz")
    assert "did you mean" not in str(info.value) and "valid: ce, dice, dice_ce, focal" in str(info.value)


def test_unknown_loss_argument_names_the_accepted_ones():
    with pytest.raises(TypeError, match=r"gama.*gamma"):
        build_loss("focal", gama=2.0)


def test_lookup_is_generic():
    table = {"unet": 1, "deeplabv3": 2}
    assert lookup("net", "unet", table) == 1
    with pytest.raises(
        ValueError, match=r"unknown net 'unte'; valid: deeplabv3, unet; did you mean 'unet'\?"
    ):
        lookup("net", "unte", table)
    with pytest.raises(TypeError, match="string"):
        lookup("net", 3, table)  # type: ignore[arg-type]


def test_math_literals_used_above():
    """Guards the hand-computed constants themselves."""
    assert -math.log(0.25) == pytest.approx(1.3862944, abs=1e-7)
    assert -math.log(0.75) == pytest.approx(0.2876821, abs=1e-7)
