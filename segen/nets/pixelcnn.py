"""Gated PixelCNN (van den Oord et al., 2016, "Conditional Image Generation with PixelCNN Decoders"), used as the
autoregressive prior ``p(z) = prod_ij p(z_ij | z_<ij)`` over the ``(H, W)`` map of discrete codes of a VQ-VAE
(:mod:`segen.nets.vq`): train it with cross-entropy on the code maps of the training images, sample a code map
position by position, decode it with the VQ-VAE decoder.

**Why two stacks.** The original PixelCNN stacks 2-D convolutions whose kernels are masked to the pixels above and
to the left. Composed over layers, such masks never reach the region above and to the right beyond the diagonal:
the 3×3 mask lets a layer look one row up and one column right, but never right on the same row, so after any
number of layers position ``(i, j)`` still cannot see ``(i - 1, j + 2)`` — the *blind spot*, a wedge of context the
model ignores however deep it is. The gated PixelCNN splits each layer in two:

* a **vertical stack** of ``(k//2 + 1, k)`` convolutions padded on the top only: its output at row ``i`` sees the
  rows ``<= i``, all columns within reach — no blind spot. It sees its own row, so it is never used as is: it is
  shifted down by one row before it feeds the horizontal stack, which then sees only rows ``< i`` from it;
* a **horizontal stack** of ``(1, k//2 + 1)`` convolutions padded on the left only: the current row, columns
  ``<= j``. The first layer (mask type ``"A"``) excludes column ``j`` itself (its input is the code being
  predicted); the following ones (type ``"B"``) include it, since their input at ``(i, j)`` already excludes it.

Each stack's convolution produces ``2 * hidden`` channels, gated as ``tanh(a) * sigmoid(b)``. The horizontal
stack has a residual connection (from the second layer on: the first layer's input is the embedded code itself)
and a 1×1 skip connection; the skips of all layers are summed and go through the output head
``ReLU → 1×1 → ReLU → 1×1`` to ``num_embeddings`` logits per position. The last layer's stack outputs would feed
nothing, so it computes only its skip (no residual 1×1: every parameter is used).

**Receptive field** with ``L = num_layers`` and ``p = kernel_size // 2``: the logits at ``(i, j)`` depend on the
codes at ``(i, j - L·p) … (i, j - 1)`` on the current row and on the rectangle of rows ``i - 1 - L·p … i - 1`` ×
columns ``j - L·p … j + L·p`` above, clipped to the map, and on nothing else. With the defaults (``L = 12``,
``p = 1``) that is every earlier position of a map up to 13×13 (8×8 is the VQ-VAE's default for 32 px images).
Padding is only ever on the top and the left, so the logits of the first ``r`` rows do not change when the rows
below are cropped away: :meth:`GatedPixelCNN.sample` runs each step on the rows sampled so far.

**Conditioning** (``num_classes=K``): every layer adds a learned per-class bias to the pre-activations of both
stacks (the paper's ``V^T h`` with ``h`` a one-hot class), so ``labels`` ``(B,)`` are then required.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segen.nets.dcgan import check_labels, check_positive

__all__ = ["GatedPixelCNN"]


def _gate(x: Tensor) -> Tensor:
    """``(B, 2C, H, W) -> (B, C, H, W)``: ``tanh(a) * sigmoid(b)`` of the two channel halves."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def _shift_down(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` moved down one row (zero first row): row ``i`` of the output is row ``i - 1``."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


class GatedLayer(nn.Module):
    """One gated layer: ``(v, h)`` ``(B, C, H, W)`` each → ``(v', h', skip)``, all ``(B, C, H, W)``.

    Args:
        hidden: channels ``C`` of both stacks.
        kernel_size: odd ``k``; the vertical kernel is ``(k//2 + 1, k)``, the horizontal one ``(1, k//2 + 1)``
            (``(1, k//2)`` for type ``"A"``, which leaves out the current column).
        mask_type: ``"A"`` for the first layer (the horizontal convolution excludes the current position, no
            residual connection), ``"B"`` for the others.
        num_classes: adds a learned per-class bias to both stacks' pre-activations when set.
        last: the network's last layer: only its skip output is used, so it has no residual 1×1 convolution and
            returns its inputs ``v`` and ``h`` unchanged in place of ``v'`` and ``h'``.
    """

    def __init__(
        self,
        hidden: int,
        kernel_size: int,
        mask_type: str,
        num_classes: int | None = None,
        last: bool = False,
    ) -> None:
        super().__init__()
        if mask_type not in ("A", "B"):
            raise ValueError(f"{type(self).__name__}: mask_type must be 'A' or 'B', got {mask_type!r}")
        self.hidden, self.mask_type, self.pad = hidden, mask_type, kernel_size // 2
        p = self.pad
        self.vertical = nn.Conv2d(hidden, 2 * hidden, (p + 1, kernel_size))
        # Type A sees columns j-p .. j-1 (p taps), type B columns j-p .. j (p + 1 taps).
        self.horizontal = nn.Conv2d(hidden, 2 * hidden, (1, p if mask_type == "A" else p + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        self.residual = None if last else nn.Conv2d(hidden, hidden, 1)
        self.skip = nn.Conv2d(hidden, hidden, 1)
        self.class_bias = nn.Embedding(num_classes, 4 * hidden) if num_classes is not None else None

    def extra_repr(self) -> str:
        return f"mask_type={self.mask_type!r}, last={self.residual is None}"

    def forward(self, v: Tensor, h: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        p = self.pad
        v_pre = self.vertical(F.pad(v, (p, p, p, 0)))  # (B, 2C, H, W); row i sees rows i-p .. i of v
        if self.mask_type == "A":
            # Pad p on the left and drop the last column: column j of the padded input is column j-p, and the
            # p-tap kernel then covers columns j-p .. j-1.
            h_pre = self.horizontal(F.pad(h, (p, 0))[..., :-1])  # (B, 2C, H, W)
        else:
            h_pre = self.horizontal(F.pad(h, (p, 0)))  # (B, 2C, H, W); column j sees j-p .. j
        if self.class_bias is not None:
            bias_v, bias_h = self.class_bias(labels)[:, :, None, None].chunk(2, dim=1)  # (B, 2C, 1, 1) each
            v_pre, h_pre = v_pre + bias_v, h_pre + bias_h
        # The vertical features of row i-1 only (they see rows <= i-1) may enter the horizontal stack at row i.
        h_pre = h_pre + self.vertical_to_horizontal(_shift_down(v_pre))
        gated = _gate(h_pre)  # (B, C, H, W)
        if self.residual is None:  # last layer: nothing reads v' or h'
            return v, h, self.skip(gated)
        h_out = self.residual(gated)
        if self.mask_type == "B":  # a type-A layer's input is the code at (i, j) itself: no residual
            h_out = h_out + h
        return _gate(v_pre), h_out, self.skip(gated)


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN prior: ``(B, H, W)`` code indices (and ``(B,)`` labels) → ``(B, num_embeddings, H, W)`` logits.

    The logits at ``(i, j)`` predict the code at ``(i, j)`` from the codes before it in raster order (see the module
    docstring for the exact receptive field); train with ``F.cross_entropy(logits, indices)``.

    Args:
        num_embeddings: number of codes ``K`` (the VQ-VAE's codebook size).
        hidden: channels of both stacks, also the code embedding size.
        num_layers: gated layers: one of type ``"A"`` and ``num_layers - 1`` of type ``"B"``.
        kernel_size: odd ``k >= 3``; each layer widens the receptive field by ``k // 2`` in every direction.
        num_classes: class-conditional when set: ``labels`` ``(B,)`` in ``[0, num_classes)`` are then required.
    """

    def __init__(
        self,
        num_embeddings: int,
        hidden: int = 64,
        num_layers: int = 12,
        kernel_size: int = 3,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive(
            name,
            num_embeddings=num_embeddings,
            hidden=hidden,
            num_layers=num_layers,
            kernel_size=kernel_size,
            num_classes=num_classes,
        )
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(
                f"{name}: kernel_size must be an odd integer >= 3 (the causal kernels are built from its centre), "
                f"got {kernel_size!r}"
            )
        self.num_embeddings, self.hidden, self.num_layers = num_embeddings, hidden, num_layers
        self.kernel_size, self.num_classes = kernel_size, num_classes
        self.embedding = nn.Embedding(num_embeddings, hidden)
        self.layers = nn.ModuleList(
            GatedLayer(hidden, kernel_size, "A" if i == 0 else "B", num_classes, last=i == num_layers - 1)
            for i in range(num_layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, num_embeddings, 1)
        )

    def extra_repr(self) -> str:
        return (
            f"num_embeddings={self.num_embeddings}, hidden={self.hidden}, num_layers={self.num_layers}, "
            f"kernel_size={self.kernel_size}, num_classes={self.num_classes}"
        )

    # ------------------------------------------------------------------------------------------------ checks
    def _check_indices(self, indices: Tensor) -> None:
        name = type(self).__name__
        integer = not (
            indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool
        )
        if indices.ndim != 3 or not integer:
            raise ValueError(
                f"{name} expects indices: an integer tensor of shape (B, H, W) with code indices in "
                f"[0, {self.num_embeddings}), got {indices.dtype} of shape {tuple(indices.shape)}"
            )
        if indices.numel() > 0:
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= self.num_embeddings:
                raise ValueError(
                    f"{name}: indices must be in [0, {self.num_embeddings}) (num_embeddings="
                    f"{self.num_embeddings}), found values in [{lo}, {hi}]"
                )

    def _check_labels(self, labels: Tensor | None, batch: int) -> None:
        name = type(self).__name__
        check_labels(name, self.num_classes, labels, batch)
        if labels is not None and labels.numel() > 0:
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(
                    f"{name}: labels must be in [0, {self.num_classes}) (num_classes={self.num_classes}), "
                    f"found values in [{lo}, {hi}]"
                )

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, indices: Tensor, labels: Tensor | None = None) -> Tensor:
        self._check_indices(indices)
        x = self.embedding(indices).movedim(-1, 1)  # (B, H, W) -> (B, hidden, H, W)
        return self.forward_embedded(x, labels)

    def forward_embedded(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits from already embedded codes: ``(B, hidden, H, W)`` → ``(B, num_embeddings, H, W)``.

        :meth:`forward` is ``forward_embedded(embedding(indices))``; this entry point lets the embedded input be a
        leaf that requires grad, e.g. to measure which positions each output depends on.
        """
        if x.ndim != 4 or x.shape[1] != self.hidden:
            raise ValueError(
                f"{type(self).__name__}.forward_embedded expects embedded codes of shape (B, {self.hidden}, H, W) "
                f"(hidden={self.hidden}), got {tuple(x.shape)}"
            )
        self._check_labels(labels, x.shape[0])
        v, h = x, x
        skips = x.new_zeros(())
        for layer in self.layers:
            v, h, skip = layer(v, h, labels)  # (B, hidden, H, W) each
            skips = skips + skip
        return self.head(skips)  # (B, hidden, H, W) -> (B, num_embeddings, H, W)

    # ------------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        n: int,
        height: int,
        width: int,
        labels: Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw ``n`` code maps ``(n, height, width)`` long, position by position in raster order.

        Each step runs the network on the rows sampled so far (the logits of a row do not depend on the rows below
        it) and draws with the Gumbel-max trick, ``argmax(logits / temperature + Gumbel noise)``. The noise comes
        from ``generator`` on the CPU (a CPU generator, or the global CPU generator when ``None``) and is then moved
        to the module's device, so a seeded generator gives the same draws on every device (up to ties from
        floating-point differences in the logits). ``temperature -> 0`` approaches the argmax.
        """
        name = type(self).__name__
        check_positive(name, n=n, height=height, width=width)
        if not temperature > 0:
            raise ValueError(
                f"{name}.sample: temperature must be > 0 (1.0 samples the model), got {temperature!r}"
            )
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(
                f"{name}.sample: generator must be a CPU torch.Generator (the noise is drawn on the CPU so that "
                f"samples are reproducible on any device), got one on {generator.device}"
            )
        device = self.embedding.weight.device
        if labels is not None:
            labels = labels.to(device)
        self._check_labels(labels, n)
        k = self.num_embeddings
        indices = torch.zeros(n, height, width, dtype=torch.long, device=device)
        tiny = torch.finfo(torch.float32).tiny
        for i in range(height):
            for j in range(width):
                logits = self.forward(indices[:, : i + 1], labels)[:, :, i, j].float()  # (n, K)
                uniform = torch.rand(n, k, generator=generator).clamp_min(tiny)  # (n, K) on the CPU
                gumbel = -torch.log(-torch.log(uniform))
                indices[:, i, j] = (logits / temperature + gumbel.to(device)).argmax(dim=1)
        return indices
