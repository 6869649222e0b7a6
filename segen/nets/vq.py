"""VQ-VAE parts (van den Oord et al., 2017, "Neural Discrete Representation Learning"): an EMA vector quantiser and
small convolutional encoder / decoder for 32 px images.

:class:`VectorQuantizer` learns its codebook by exponential moving averages of the encoder outputs assigned to each
code (the paper's appendix A.1), not by gradients, so the only loss it returns is the commitment term. The codebook
lives in buffers: no optimizer touches it, and it is saved in every checkpoint.

Three things that are easy to get wrong and are handled here:

* **Mixed precision.** Squared distances ``|z|² - 2 z·e + |e|²`` subtract large, nearly equal numbers; in bf16/fp16
  that picks the wrong code. They are computed in float32 with autocast disabled.
* **DDP.** The per-batch statistics (counts and sums per code) are all-reduced before the EMA update, so every rank
  applies the update of the global batch. Without it, DDP's default ``broadcast_buffers=True`` would silently
  overwrite every rank's codebook with rank 0's, i.e. train the codebook on ``1 / world_size`` of the data.
* **Dead codes.** Codes that no encoder output is assigned to never move. Every ``restart_every`` training steps the
  codes whose EMA cluster size fell below ``dead_threshold`` are moved onto random encoder outputs of the batch,
  chosen on rank 0 and broadcast so ranks stay identical.

:class:`VQEncoder` / :class:`VQDecoder` follow the paper's architecture: stride-2 4×4 convolutions, then residual
blocks ``x + conv1x1(relu(conv3x3(relu(x))))``; the decoder mirrors the encoder with transposed convolutions.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from segen._distributed import distributed
from segen.nets.dcgan import check_positive

__all__ = ["VQDecoder", "VQEncoder", "VQOutput", "VectorQuantizer"]


class VQOutput(NamedTuple):
    quantized: Tensor  # (B, D, H, W), z's dtype; straight-through: forward is the code, gradient goes to z
    indices: Tensor  # (B, H, W) long, the chosen code per position
    commitment_loss: Tensor  # scalar fp32: commitment * mse(z, sg[q]); the quantiser's only loss term
    perplexity: Tensor  # scalar fp32: exp(entropy of the batch's code usage), in [1, K]
    usage: Tensor  # scalar fp32: fraction of the K codes used at least once in the batch


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantiser with an EMA codebook: ``(B, D, H, W)`` → :class:`VQOutput`.

    Args:
        num_embeddings: codebook size ``K``.
        embedding_dim: code dimension ``D`` (the encoder's output channels).
        commitment: weight ``beta`` of the commitment loss (the paper's 0.25).
        decay: EMA decay ``gamma`` of the cluster sizes and sums (the paper's 0.99).
        eps: Laplace smoothing of the cluster sizes, so that no code divides by zero.
        dead_threshold: a code whose EMA cluster size (expected assignments per batch) is below this is dead.
        restart_every: restart dead codes every this many training forward passes; ``0`` never restarts.
        seed: seed of the generator that picks restart vectors (its state is in the state dict, so a resumed run
            restarts the same codes as an unbroken one).

    Initialisation: codes are drawn from N(0, 1), and each starts with one pseudo-observation at its own position
    (``cluster_size = 1``, ``embed_sum = embedding``), so ``embedding == embed_sum / cluster_size`` holds from the
    start. Why not the first batch: initialising from data makes the module's state depend on when and where it
    first ran (rank, device, a sanity-check batch), and it must be synchronised separately under DDP; a seeded
    random codebook is identical on every rank by construction, and the dead-code restarts move codes onto the data
    within ``restart_every`` steps anyway. Why one pseudo-observation rather than zero (as in some
    implementations): with a zero cluster size an unused code's ``embed_sum / cluster_size`` blows up on the first
    update; with one, an unused code keeps its position while its cluster size decays until it is restarted.

    Buffers (all in the state dict): ``embedding`` (K, D), ``cluster_size`` (K,) and ``embed_sum`` (K, D) — the raw
    EMAs, the Laplace smoothing is applied when dividing — and ``steps``, the count of training forward passes; the
    restart generator's state is the module's extra state (``_extra_state`` in the state dict). The restart schedule
    reads a host-side copy of ``steps`` (not in the state dict; re-read from the buffer once after a state-dict load),
    so a training forward never waits for the device to learn the step count; write ``steps`` through
    ``load_state_dict``, not in place, or the copy goes stale.
    """

    embedding: Tensor
    cluster_size: Tensor
    embed_sum: Tensor
    steps: Tensor

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        commitment: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_threshold: float = 1.0,
        restart_every: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive(name, num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"{name}: decay must be in [0, 1) (the paper uses 0.99), got {decay!r}")
        if not eps > 0.0:
            raise ValueError(
                f"{name}: eps must be > 0 (Laplace smoothing of cluster sizes, e.g. 1e-5), got {eps!r}"
            )
        if not commitment >= 0.0:
            raise ValueError(f"{name}: commitment must be >= 0 (the paper uses 0.25), got {commitment!r}")
        if not dead_threshold >= 0.0:
            raise ValueError(
                f"{name}: dead_threshold must be >= 0 (0 disables restarts), got {dead_threshold!r}"
            )
        if not isinstance(restart_every, int) or isinstance(restart_every, bool) or restart_every < 0:
            raise ValueError(
                f"{name}: restart_every must be an integer >= 0 (training steps between dead-code restarts; "
                f"0 never restarts), got {restart_every!r}"
            )
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.commitment, self.decay, self.eps = commitment, decay, eps
        self.dead_threshold, self.restart_every = dead_threshold, restart_every

        embedding = torch.randn(num_embeddings, embedding_dim)
        self.register_buffer("embedding", embedding)
        self.register_buffer("cluster_size", torch.ones(num_embeddings))
        self.register_buffer("embed_sum", embedding.clone())
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        # ``steps`` mirrored on the host, so the restart schedule reads no device value each step; None: unknown
        # (after a state-dict load), read from the buffer once at the next training forward
        self._host_steps: int | None = 0
        # restarts draw from the module's own generator, saved in the state dict (get_extra_state): exact resume
        self.rng = torch.Generator().manual_seed(seed)

    def extra_repr(self) -> str:
        return (
            f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, "
            f"commitment={self.commitment}, decay={self.decay}, restart_every={self.restart_every}"
        )

    def get_extra_state(self) -> dict[str, Tensor]:
        return {"rng": self.rng.get_state()}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.rng.set_state(state["rng"])

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._host_steps = None  # ``steps`` may have changed: re-read it (once) at the next training forward

    # ------------------------------------------------------------------------------------------------ lookups
    def distances(self, flat: Tensor) -> Tensor:
        """Squared Euclidean distances from each row of ``flat`` to each code, in float32 whatever the autocast.

        ``(N, D) -> (N, K)``.
        """
        with torch.autocast(device_type=flat.device.type, enabled=False):
            flat = flat.float()
            codes = self.embedding.float()
            # |z|² - 2 z·e + |e|², one fused matmul; cdist is slower and has no better precision here.
            return torch.addmm(
                flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1)[None, :], flat, codes.t(), alpha=-2.0
            )

    @torch.no_grad()
    def nearest(self, z: Tensor) -> Tensor:
        """The nearest code's index per position, without any update: ``(B, D, H, W) -> (B, H, W)`` long."""
        self._check(z)
        b, d, h, w = z.shape
        return self.distances(z.movedim(1, -1).reshape(-1, d)).argmin(dim=1).view(b, h, w)

    def _check(self, z: Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.embedding_dim:
            raise ValueError(
                f"{type(self).__name__} expects encoder outputs of shape (B, {self.embedding_dim}, H, W) "
                f"(embedding_dim={self.embedding_dim}), got {tuple(z.shape)}"
            )

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes for given indices, e.g. from a prior over the latent grid: ``(B, H, W) -> (B, D, H, W)`` fp32."""
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(f"{type(self).__name__}.lookup expects integer indices, got {indices.dtype}")
        return F.embedding(indices, self.embedding.float()).movedim(-1, 1)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, z: Tensor) -> VQOutput:
        self._check(z)
        b, d, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            z32 = z.float()
            flat = z32.movedim(1, -1).reshape(-1, d)  # (B, D, H, W) -> (B*H*W, D)
            indices = self.distances(flat.detach()).argmin(dim=1)  # (N,)
            q = F.embedding(indices, self.embedding.float())  # (N, D), no gradient: buffers
            q = q.view(b, h, w, d).movedim(-1, 1)  # -> (B, D, H, W)

            # (K,) this rank's batch. Not torch.bincount: on CUDA it reads the largest index back to size its
            # output (two host-device syncs per step, seen with torch.cuda.set_sync_debug_mode); K is known. Whole
            # numbers below 2**24 add exactly in float32, in any order.
            counts = torch.zeros(self.num_embeddings, dtype=torch.float32, device=indices.device).index_add_(
                0, indices, torch.ones_like(indices, dtype=torch.float32)
            )
            probs = counts / counts.sum()
            perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
            usage = (counts > 0).float().mean()
            commitment_loss = self.commitment * F.mse_loss(z32, q)  # q has no graph: sg[q]

            if self.training:
                with torch.no_grad():
                    self._ema_update(flat.detach(), indices, counts)
                    if self._host_steps is None:  # first training forward after a load: one read, then never
                        self._host_steps = int(self.steps)
                    self.steps += 1
                    self._host_steps += 1
                    if self.restart_every and self._host_steps % self.restart_every == 0:
                        self._restart_dead_codes(flat.detach())

        quantized = z + (q.to(z.dtype) - z).detach()  # straight-through estimator
        return VQOutput(quantized, indices.view(b, h, w), commitment_loss, perplexity, usage)

    # ------------------------------------------------------------------------------------------------ training
    def _ema_update(self, flat: Tensor, indices: Tensor, counts: Tensor) -> None:
        """``N ← γN + (1-γ)n``, ``m ← γm + (1-γ)Σz``, ``e = m / laplace(N)``, with n, Σz summed over all ranks."""
        sums = torch.zeros(self.num_embeddings, self.embedding_dim, device=flat.device, dtype=torch.float32)
        sums.index_add_(0, indices, flat)  # (K, D): sum of the vectors assigned to each code
        if distributed():
            stats = torch.cat([counts[:, None], sums], dim=1)  # one all-reduce for both: (K, 1 + D)
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
            counts, sums = stats[:, 0], stats[:, 1:]
        # A batch with NaN/inf encodings (a diverging step that the task's nan_policy will stop or skip) must not
        # poison the codebook, which no optimizer step can repair: keep the old statistics then. Decided on the
        # device (no host read), identically on every rank (the statistics were all-reduced).
        keep = ~torch.isfinite(sums).all()
        cluster_size = self.cluster_size.float() * self.decay + counts * (1.0 - self.decay)
        embed_sum = self.embed_sum.float() * self.decay + sums * (1.0 - self.decay)
        cluster_size = torch.where(keep, self.cluster_size.float(), cluster_size)
        embed_sum = torch.where(keep, self.embed_sum.float(), embed_sum)
        total = cluster_size.sum()
        smoothed = (cluster_size + self.eps) / (total + self.num_embeddings * self.eps) * total
        self.cluster_size.copy_(cluster_size)
        self.embed_sum.copy_(embed_sum)
        self.embedding.copy_(embed_sum / smoothed[:, None])

    def _restart_dead_codes(self, flat: Tensor) -> None:
        """Move codes with ``cluster_size < dead_threshold`` onto random batch vectors (rank 0's, broadcast)."""
        dead = self.cluster_size < self.dead_threshold  # identical on every rank after the all-reduced update
        # A host read, but only every restart_every steps (not every step): the number of dead codes sets how many
        # vectors are drawn, which keeps the restart generator's stream (and so exact resume) as it always was.
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        n = flat.shape[0]
        # Every rank draws from its own (identically seeded) generator; only rank 0's draw is used.
        if n >= num_dead:
            pick = torch.randperm(n, generator=self.rng)[:num_dead]
        else:  # fewer vectors than dead codes: sample with replacement
            pick = torch.randint(n, (num_dead,), generator=self.rng)
        new = flat[pick.to(flat.device)].float().contiguous()  # (num_dead, D)
        # non-finite vectors (a diverging batch) leave those codes where they are
        new = torch.where(torch.isfinite(new).all(1, keepdim=True), new, self.embedding[dead].float())
        if distributed():
            dist.broadcast(new, src=0)
        self.embedding[dead] = new.to(self.embedding.dtype)
        self.embed_sum[dead] = new.to(self.embed_sum.dtype)  # one pseudo-observation, as at initialisation
        self.cluster_size[dead] = 1.0


# ------------------------------------------------------------------------------------------------ encoder/decoder
class ResidualBlock(nn.Module):
    """The paper's residual block: ``x + conv1x1(relu(conv3x3(relu(x))))``; ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _widths(hidden: int, num_scales: int) -> list[int]:
    """Widths from the finest to the coarsest scale, halving per finer scale: 2 scales, 64 -> [32, 64]."""
    return [max(hidden // 2 ** (num_scales - 1 - i), 1) for i in range(num_scales)]


class VQEncoder(nn.Module):
    """VQ-VAE encoder: ``(B, C, S, S)`` → ``(B, embedding_dim, S / 2**num_downsamples, ...)`` (32 px → 8×8).

    ``num_downsamples`` stride-2 4×4 convolutions with ReLU (widths ``hidden/2, hidden``), a 3×3 convolution,
    ``num_res_blocks`` residual blocks, ReLU and a 1×1 projection to ``embedding_dim`` (no activation: the
    quantiser needs unbounded outputs to match an N(0, 1)-initialised codebook).
    """

    def __init__(
        self,
        channels: int,
        embedding_dim: int,
        hidden: int = 64,
        num_downsamples: int = 2,
        num_res_blocks: int = 2,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive(
            name,
            channels=channels,
            embedding_dim=embedding_dim,
            hidden=hidden,
            num_downsamples=num_downsamples,
        )
        if not isinstance(num_res_blocks, int) or num_res_blocks < 0:
            raise ValueError(f"{name}: num_res_blocks must be an integer >= 0, got {num_res_blocks!r}")
        self.channels, self.embedding_dim, self.num_downsamples = channels, embedding_dim, num_downsamples
        layers: list[nn.Module] = []
        c_in = channels
        for width in _widths(hidden, num_downsamples):
            layers += [nn.Conv2d(c_in, width, 4, stride=2, padding=1), nn.ReLU()]
            c_in = width
        layers.append(nn.Conv2d(c_in, hidden, 3, padding=1))
        layers += [ResidualBlock(hidden, hidden) for _ in range(num_res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(hidden, embedding_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        factor = 2**self.num_downsamples
        if x.ndim != 4 or x.shape[1] != self.channels or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(
                f"{type(self).__name__} expects images of shape (B, {self.channels}, H, W) with H and W divisible "
                f"by {factor} (num_downsamples={self.num_downsamples}), got {tuple(x.shape)}"
            )
        return self.net(x)  # (B, C, S, S) -> (B, D, S/4, S/4) with the defaults


class VQDecoder(nn.Module):
    """VQ-VAE decoder: ``(B, embedding_dim, h, w)`` → ``(B, C, h * 2**num_upsamples, ...)`` (8×8 → 32 px).

    Mirrors :class:`VQEncoder`: a 3×3 convolution to ``hidden``, residual blocks, ReLU, then ``num_upsamples``
    stride-2 4×4 transposed convolutions (ReLU between them). No output activation: reconstructions are compared
    with images in ``[-1, 1]`` by MSE directly (a tanh would flatten the gradient near the saturated black/white
    pixels that dominate small datasets), and samples are clamped to ``[-1, 1]`` when they are shown or saved.
    """

    def __init__(
        self,
        channels: int,
        embedding_dim: int,
        hidden: int = 64,
        num_upsamples: int = 2,
        num_res_blocks: int = 2,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive(
            name, channels=channels, embedding_dim=embedding_dim, hidden=hidden, num_upsamples=num_upsamples
        )
        if not isinstance(num_res_blocks, int) or num_res_blocks < 0:
            raise ValueError(f"{name}: num_res_blocks must be an integer >= 0, got {num_res_blocks!r}")
        self.channels, self.embedding_dim = channels, embedding_dim
        layers: list[nn.Module] = [nn.Conv2d(embedding_dim, hidden, 3, padding=1)]
        layers += [ResidualBlock(hidden, hidden) for _ in range(num_res_blocks)]
        layers.append(nn.ReLU())
        widths = [
            *reversed(_widths(hidden, num_upsamples)),
            channels,
        ]  # hidden, ..., hidden/2, then the image
        for i in range(num_upsamples):
            layers.append(nn.ConvTranspose2d(widths[i], widths[i + 1], 4, stride=2, padding=1))
            if i < num_upsamples - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim != 4 or z.shape[1] != self.embedding_dim:
            raise ValueError(
                f"{type(self).__name__} expects codes of shape (B, {self.embedding_dim}, h, w) "
                f"(embedding_dim={self.embedding_dim}), got {tuple(z.shape)}"
            )
        return self.net(z)  # (B, D, S/4, S/4) -> (B, C, S, S) with the defaults, unbounded
