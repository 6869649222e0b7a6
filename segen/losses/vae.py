"""The VAE objective as pure functions, in **nats per image** (sums over pixels and latent dimensions, means over the
batch), so numbers are comparable across image sizes only through :func:`bits_per_dim`.

Data ``x`` lives in ``[-1, 1]`` (segen's generation batches). Decoder outputs and likelihoods:

- ``"bernoulli"``: ``logits [B, C, H, W]``; the target is ``(x + 1) / 2``, which must be binary (binarised MNIST,
  the standard setting for NLL comparisons). ``-log p(x|z)`` is the summed binary cross-entropy.
- ``"gaussian"``: ``mean [B, C, H, W]`` with one global scale ``exp(log_scale)`` (in the task: fitted to each training
  batch, :func:`gaussian_log_scale`). A density on
  continuous ``x``: to report bits per dimension of 8-bit data it is corrected by ``D * log(127.5)`` (the width of
  one of 256 bins on ``[-1, 1]`` is ``1 / 127.5``), which is exact for uniformly dequantised data and an
  approximation otherwise.
- ``"logistic"``: ``(mean, log_scale) [B, 2C, H, W]``, the discretised logistic of PixelCNN++ (one component): exact
  probabilities of the 256 bins, so no correction is needed.

``ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z))`` with ``q = N(mu, exp(logvar))``, ``p = N(0, I)`` and the KL in closed
form. What is minimised is ``recon + beta * kl`` (beta-VAE; ``beta`` ramps from 0 during a KL warm-up).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from segen.registry import lookup

__all__ = [
    "ELBO",
    "LIKELIHOODS",
    "bits_per_dim",
    "elbo",
    "gaussian_kl",
    "gaussian_log_scale",
    "iwae_nll",
    "log_normal",
    "negative_log_likelihood",
]

LIKELIHOODS = {name: name for name in ("bernoulli", "gaussian", "logistic")}
_LOG_2PI = math.log(2 * math.pi)
_HALF_BIN = 1.0 / 255.0  # half the width of one of 256 bins on [-1, 1]
# log of the standard deviation of 8-bit rounding noise on [-1, 1] (bins of width 2/255): the smallest scale that
# means anything for 8-bit images, and a floor that keeps log(0) away from a perfect reconstruction
MIN_LOG_SCALE = math.log(2.0 / 255.0 / math.sqrt(12.0))


class ELBO(NamedTuple):
    loss: Tensor  # what is minimised: recon + beta * kl, nats per image
    recon: Tensor  # -log p(x|z) for one z ~ q(z|x), nats per image
    kl: Tensor  # KL(q(z|x) || p(z)), nats per image


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` per item: ``(B, Z) -> (B,)`` nats (closed form)."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def gaussian_log_scale(mse: Tensor) -> Tensor:
    """The maximum-likelihood ``log sigma`` of a Gaussian likelihood with one global scale, given the mean squared
    error of its mean: ``0.5 * log(mse)``, floored at 8-bit rounding noise (:data:`MIN_LOG_SCALE`) and detached.

    Why not a learned scalar: Adam moves a scalar ``log_scale`` by about ``lr`` per step, so from ``sigma = 1`` a
    VAE at lr 1e-3 needs thousands of steps to reach the ``sigma`` of a good reconstruction (``log sigma`` about
    -2.5), and meanwhile the too-wide likelihood lets the KL win (posterior collapse). The optimum in closed form
    is the "calibrated decoder" of Rybkin et al. 2021 (sigma-VAE).
    """
    return (0.5 * mse.detach().float().clamp(min=1e-30).log()).clamp(min=MIN_LOG_SCALE)


def log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """``log N(z; mu, exp(logvar))`` summed over all but the first dimension: ``(B, ...) -> (B,)``."""
    return (-0.5 * (_LOG_2PI + logvar + (z - mu).square() / logvar.exp())).flatten(1).sum(1)


def negative_log_likelihood(
    x: Tensor, output: Tensor, likelihood: str = "gaussian", log_scale: Tensor | float = 0.0
) -> Tensor:
    """``-log p(x | decoder output)`` per image, ``(B, C, H, W) -> (B,)`` nats; see the module docstring."""
    kind = lookup("likelihood", likelihood, LIKELIHOODS)
    x, output = x.float(), output.float()
    if kind == "bernoulli":
        target = (x + 1) / 2
        return F.binary_cross_entropy_with_logits(output, target, reduction="none").flatten(1).sum(1)
    if kind == "gaussian":
        log_scale = torch.as_tensor(log_scale, dtype=output.dtype, device=output.device)
        nll = 0.5 * _LOG_2PI + log_scale + 0.5 * ((x - output) / log_scale.exp()).square()
        return nll.flatten(1).sum(1)
    if output.shape[1] != 2 * x.shape[1]:
        raise ValueError(
            f"the logistic likelihood needs decoder outputs with 2C = {2 * x.shape[1]} channels (mean, log_scale), "
            f"got {output.shape[1]}"
        )
    mean, log_s = output.chunk(2, dim=1)
    log_s = log_s.clamp(min=-7.0)
    centred, inv_s = x - mean, torch.exp(-log_s)
    upper, lower = inv_s * (centred + _HALF_BIN), inv_s * (centred - _HALF_BIN)
    # log(sigmoid(upper) - sigmoid(lower)) for inner bins; the edge bins take the whole tail
    log_cdf_upper = F.logsigmoid(upper)  # bin 0: log P(X <= -1 + half bin)
    log_one_minus_cdf_lower = -F.softplus(lower)  # bin 255: log P(X > 1 - half bin)
    mid = torch.log((torch.sigmoid(upper) - torch.sigmoid(lower)).clamp(min=1e-12))
    log_p = torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_one_minus_cdf_lower, mid))
    return -log_p.flatten(1).sum(1)


def elbo(
    x: Tensor,
    output: Tensor,
    mu: Tensor,
    logvar: Tensor,
    likelihood: str = "gaussian",
    beta: float = 1.0,
    log_scale: Tensor | float = 0.0,
) -> ELBO:
    """The ELBO's parts for a batch, each the mean over images of per-image nats; ``-(recon + kl)`` is the ELBO."""
    recon = negative_log_likelihood(x, output, likelihood, log_scale).mean()
    kl = gaussian_kl(mu.float(), logvar.float()).mean()
    return ELBO(recon + beta * kl, recon, kl)


def bits_per_dim(nll: Tensor, num_dims: int, likelihood: str = "gaussian") -> Tensor:
    """Nats per image -> bits per dimension of 8-bit (or binary) data. For the continuous ``gaussian`` density the
    discretisation correction ``num_dims * log(127.5)`` is added (see the module docstring)."""
    kind = lookup("likelihood", likelihood, LIKELIHOODS)
    if kind == "gaussian":
        nll = nll + num_dims * math.log(127.5)
    return nll / (num_dims * math.log(2.0))


def iwae_nll(log_weights: Tensor) -> Tensor:
    """Importance-weighted bound (Burda et al. 2016) from ``log w_i = log p(x, z_i) - log q(z_i|x)``, ``(k, B)`` ->
    ``-log (1/k sum_i w_i)`` per image ``(B,)``. An upper bound on ``-log p(x)`` that tightens as ``k`` grows; at
    ``k = 1`` it is a one-sample estimate of the negative ELBO."""
    k = log_weights.shape[0]
    return -(torch.logsumexp(log_weights.float(), dim=0) - math.log(k))
