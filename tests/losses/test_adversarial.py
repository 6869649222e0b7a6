"""Adversarial losses against hand-computed values; R1 and the gradient penalty against autograd; DiffAugment."""

from __future__ import annotations

import math

import pytest
import torch

from segen.losses.adversarial import discriminator_loss, generator_loss, gradient_penalty, r1_penalty
from segen.nets.diffaugment import diff_augment, parse_policy

REAL = torch.tensor([2.0, -1.0])
FAKE = torch.tensor([0.5, -3.0])


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# (kind, expected D loss, expected D real term, expected D fake term, expected G loss), by hand
CASES = [
    (
        "ns",
        (_softplus(-2.0) + _softplus(1.0)) / 2 + (_softplus(0.5) + _softplus(-3.0)) / 2,
        (_softplus(-2.0) + _softplus(1.0)) / 2,
        (_softplus(0.5) + _softplus(-3.0)) / 2,
        (_softplus(-0.5) + _softplus(3.0)) / 2,
    ),
    ("hinge", (0.0 + 2.0) / 2 + (1.5 + 0.0) / 2, 1.0, 0.75, -(0.5 - 3.0) / 2),
    ("wgan-gp", -(2.0 - 1.0) / 2 + (0.5 - 3.0) / 2, -0.5, -1.25, 1.25),
]


@pytest.mark.parametrize("kind, d_loss, d_real, d_fake, g_loss", CASES, ids=[c[0] for c in CASES])
def test_losses_match_hand_computed_values(kind, d_loss, d_real, d_fake, g_loss):
    parts = discriminator_loss(REAL, FAKE, kind)
    assert parts.loss.item() == pytest.approx(d_loss, abs=1e-6)
    assert parts.real.item() == pytest.approx(d_real, abs=1e-6)
    assert parts.fake.item() == pytest.approx(d_fake, abs=1e-6)
    assert generator_loss(FAKE, kind).item() == pytest.approx(g_loss, abs=1e-6)


def test_unknown_loss_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'hinge'"):
        generator_loss(FAKE, "hing")


def test_r1_equals_the_squared_input_gradient_norm():
    # D(x) = sum(w * x^2) per sample: dD/dx = 2 w x, so R1 = mean_i sum (2 w x_i)^2
    w = torch.tensor([[[[0.5, -1.0]]]])
    x = torch.tensor([[[[1.0, 2.0]]], [[[-1.0, 0.5]]]], requires_grad=True)  # (2, 1, 1, 2)
    logits = (w * x.square()).flatten(1).sum(1)
    expected = ((2 * w * x.detach()).square().flatten(1).sum(1)).mean()
    assert r1_penalty(logits, x).item() == pytest.approx(expected.item())
    assert expected.item() == pytest.approx(((1.0 + 16.0) + (1.0 + 1.0)) / 2)


def test_r1_is_differentiable_for_the_discriminator_parameters():
    w = torch.tensor(0.7, requires_grad=True)
    x = torch.randn(3, 1, 2, 2, requires_grad=True)
    penalty = r1_penalty((w * x.square()).flatten(1).sum(1), x)
    penalty.backward()
    # R1 = mean sum (2 w x)^2 = 4 w^2 mean sum x^2, so dR1/dw = 8 w mean sum x^2
    assert w.grad.item() == pytest.approx(
        8 * 0.7 * x.detach().square().flatten(1).sum(1).mean().item(), rel=1e-5
    )


def test_r1_needs_inputs_that_require_grad():
    with pytest.raises(ValueError, match="must require grad"):
        r1_penalty(torch.zeros(2), torch.zeros(2, 1, 2, 2))


def test_gradient_penalty_of_a_linear_critic():
    # critic(x) = sum(a * x): gradient a everywhere, so GP = (||a|| - 1)^2 whatever the interpolation
    a = torch.tensor([3.0, 4.0]).view(1, 1, 1, 2)
    real, fake = torch.randn(4, 1, 1, 2), torch.randn(4, 1, 1, 2)
    gp = gradient_penalty(lambda x: (a * x).flatten(1).sum(1), real, fake)
    assert gp.item() == pytest.approx((5.0 - 1.0) ** 2)


def test_gradient_penalty_is_zero_for_a_unit_norm_critic():
    a = torch.tensor([0.6, 0.8]).view(1, 1, 1, 2)
    gp = gradient_penalty(
        lambda x: (a * x).flatten(1).sum(1), torch.randn(3, 1, 1, 2), torch.randn(3, 1, 1, 2)
    )
    assert gp.item() == pytest.approx(0.0, abs=1e-10)


def test_diffaugment_keeps_shape_and_passes_gradients():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    out = diff_augment(x, "color,translation,cutout")
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_diffaugment_draws_from_a_given_generator_and_leaves_the_global_rng_alone():
    x = torch.randn(6, 3, 16, 16)
    policy = "color,translation,cutout"
    global_state = torch.get_rng_state()
    first = diff_augment(x, policy, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), global_state)  # data loading and dropout draw from it
    assert torch.equal(
        first, diff_augment(x, policy, torch.Generator().manual_seed(5))
    )  # a resume repeats it
    assert not torch.equal(first, diff_augment(x, policy, torch.Generator().manual_seed(6)))
    assert not torch.equal(first, x)
    # one shared stream gives each call new parameters
    rng = torch.Generator().manual_seed(5)
    assert not torch.equal(diff_augment(x, policy, rng), diff_augment(x, policy, rng))


def test_translation_shifts_content_with_zero_fill():
    torch.manual_seed(1)
    x = torch.ones(8, 1, 16, 16)
    out = diff_augment(x, "translation")
    # every image is a shifted copy of ones: a block of ones and zero borders of at most 2 pixels
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert (out.sum(dim=(1, 2, 3)) >= 14 * 14).all()


def test_cutout_zeroes_one_square_of_half_the_size():
    torch.manual_seed(2)
    x = torch.ones(16, 1, 16, 16)
    zeros = (diff_augment(x, "cutout") == 0).sum(dim=(1, 2, 3))
    assert (zeros <= 64).all() and (zeros > 0).all()  # 8x8 at most, clipped at the borders


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match=r"unknown DiffAugment op\(s\) \['flip'\]"):
        parse_policy("color,flip")
    assert parse_policy(None) == () and parse_policy("") == ()
