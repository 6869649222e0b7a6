"""The ELBO's parts against torch.distributions and hand-computed values; bits per dimension; the IWAE bound."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from segen.losses.vae import (
    MIN_LOG_SCALE,
    bits_per_dim,
    elbo,
    gaussian_kl,
    gaussian_log_scale,
    iwae_nll,
    log_normal,
    negative_log_likelihood,
)


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(gaussian_kl(mu, logvar), expected, atol=1e-5)
    assert gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0  # q = p


def test_log_normal_matches_torch_distributions():
    torch.manual_seed(1)
    z, mu, logvar = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    expected = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1)
    assert torch.allclose(log_normal(z, mu, logvar), expected, atol=1e-5)


def test_bernoulli_and_gaussian_likelihoods_match_torch_distributions():
    torch.manual_seed(2)
    logits = torch.randn(2, 1, 4, 4)
    binary = torch.randint(0, 2, (2, 1, 4, 4)).float()
    x = binary * 2 - 1  # segen's data range
    expected = -Bernoulli(logits=logits).log_prob(binary).flatten(1).sum(1)
    assert torch.allclose(negative_log_likelihood(x, logits, "bernoulli"), expected, atol=1e-5)
    mean, x = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4) * 2 - 1
    expected = -Normal(mean, math.exp(-1.5)).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(negative_log_likelihood(x, mean, "gaussian", log_scale=-1.5), expected, atol=1e-4)


def test_gaussian_log_scale_is_the_maximum_likelihood_scale_floored_at_rounding_noise():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    mean = x + 0.1 * torch.randn(x.shape, generator=g)
    mse = (x - mean).square().mean().requires_grad_()
    fitted = gaussian_log_scale(mse)
    assert torch.isclose(fitted, 0.5 * mse.detach().log()) and not fitted.requires_grad

    def nll(log_scale: torch.Tensor) -> float:
        return float(negative_log_likelihood(x, mean, "gaussian", log_scale).mean())

    assert nll(fitted) < nll(fitted + 0.05) and nll(fitted) < nll(fitted - 0.05)  # the minimum over log sigma
    # the standard deviation of 8-bit rounding on [-1, 1]
    assert math.log(2 / 255 / math.sqrt(12)) == pytest.approx(MIN_LOG_SCALE)
    # a perfect fit gives a finite scale
    assert float(gaussian_log_scale(torch.tensor(0.0))) == pytest.approx(MIN_LOG_SCALE)


def test_discretised_logistic_is_a_distribution_over_256_bins():
    values = torch.arange(256).float() * 2 / 255 - 1  # the 256 pixel values on [-1, 1]
    x = values.view(256, 1, 1, 1)
    for mean, log_s in ((0.1, -2.0), (-0.9, -4.0), (0.95, 0.5)):
        output = torch.tensor([mean, log_s]).view(1, 2, 1, 1).expand(256, 2, 1, 1)
        total = torch.exp(-negative_log_likelihood(x, output, "logistic")).sum()
        assert total.item() == pytest.approx(1.0, abs=1e-4)


def test_logistic_needs_two_outputs_per_channel():
    with pytest.raises(ValueError, match="2C = 2 channels"):
        negative_log_likelihood(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), "logistic")


def test_elbo_parts_by_hand():
    # one image of 2 pixels, gaussian likelihood with unit scale, a 1-d latent
    x = torch.tensor([[[[0.5, -0.5]]]])
    mean = torch.tensor([[[[0.0, 0.0]]]])
    mu, logvar = torch.tensor([[1.0]]), torch.tensor([[0.0]])
    parts = elbo(x, mean, mu, logvar, "gaussian", beta=2.0)
    recon = 2 * 0.5 * math.log(2 * math.pi) + 0.5 * (0.25 + 0.25)
    kl = 0.5 * (1.0 + 1.0 - 1.0 - 0.0)
    assert parts.recon.item() == pytest.approx(recon, rel=1e-6)
    assert parts.kl.item() == pytest.approx(kl, rel=1e-6)
    assert parts.loss.item() == pytest.approx(recon + 2.0 * kl, rel=1e-6)


def test_bits_per_dim_conversion():
    d = 784
    assert bits_per_dim(torch.tensor(d * math.log(2.0)), d, "bernoulli").item() == pytest.approx(1.0)
    # gaussian: + D log(127.5) nats for the bin width, then / (D ln 2)
    nll = torch.tensor(100.0)
    expected = (100.0 + d * math.log(127.5)) / (d * math.log(2.0))
    assert bits_per_dim(nll, d, "gaussian").item() == pytest.approx(expected)
    # a uniform density on [-1, 1] (log p = -log 2 per dim) gives each of the 8-bit values k / 127.5 - 1 the
    # probability 1/255 (bins of width 2/255 centred on them): log2(255) bits per dimension
    assert bits_per_dim(torch.tensor(d * math.log(2.0)), d, "gaussian").item() == pytest.approx(
        math.log2(255)
    )


def test_iwae_bound_tightens_towards_the_true_likelihood():
    """p(z) = N(0, 1), p(x|z) = N(z, 1), so p(x) = N(0, 2); a deliberately poor q(z|x) = N(0.2, 0.5^2)."""
    torch.manual_seed(3)
    x = torch.tensor(1.3)
    true_nll = -Normal(0.0, math.sqrt(2.0)).log_prob(x).item()
    q = Normal(0.2, 0.5)

    def log_weights(k: int, batch: int) -> torch.Tensor:
        z = q.sample((k, batch))
        return Normal(z, 1.0).log_prob(x) + Normal(0.0, 1.0).log_prob(z) - q.log_prob(z)

    elbo_nll = (-log_weights(1, 400000)).mean().item()  # k = 1: a one-sample negative ELBO
    analytic = -(
        Normal(0.2, 1.0).log_prob(x).item() - 0.5 * 0.25 - kl_divergence(q, Normal(0.0, 1.0)).item()
    )  # E_q[log N(x; z, 1)] = log N(x; 0.2, 1) - Var_q / 2
    assert elbo_nll == pytest.approx(analytic, abs=0.02)
    k5, k100 = iwae_nll(log_weights(5, 4000)).mean().item(), iwae_nll(log_weights(100, 400)).mean().item()
    assert true_nll < k100 < k5 < elbo_nll
    assert k100 == pytest.approx(true_nll, abs=0.02)


def test_iwae_with_one_sample_is_the_negative_log_weight():
    log_w = torch.tensor([[-3.0, -1.5]])
    assert torch.equal(iwae_nll(log_w), torch.tensor([3.0, 1.5]))
    assert iwae_nll(torch.tensor([[0.0], [math.log(3.0)]])).item() == pytest.approx(-math.log(2.0))


def test_unknown_likelihood_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'bernoulli'"):
        negative_log_likelihood(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), "bernouli")
