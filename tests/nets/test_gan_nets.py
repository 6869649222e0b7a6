"""GAN networks (DCGAN, StyleGAN2-style): one shared tester for both families, then family-specific checks.

The shared tester protects the interface that ``GANTask`` relies on: ``G(z, labels) -> [B, C, S, S]`` in ``[-1, 1]``,
``D(images, labels) -> [B]``, labels exactly when conditional, a gradient for every parameter (which also guards
DDP's unused-parameter failure). The StyleGAN2 checks protect the parts that are easy to get subtly wrong:
demodulation, the grouped-convolution batching, style indices, mixing, truncation and the minibatch-std layer.

Kept tiny (widths 8–16, batch 2–4, 32–64 px) so the file runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from segen.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from segen.nets.stylegan2 import (
    EqualConv2d,
    EqualLinear,
    MinibatchStd,
    ModulatedConv2d,
    StyleGAN2Discriminator,
    StyleGAN2Generator,
)

LATENT = 16
K = 5  # classes of the conditional cases
FAMILIES = {
    "dcgan": (DCGANGenerator, DCGANDiscriminator, {"base_channels": 8}, {"base_channels": 8}),
    "stylegan2": (
        StyleGAN2Generator,
        StyleGAN2Discriminator,
        {"base_channels": 8, "max_channels": 16, "w_dim": 16},
        {"base_channels": 8, "max_channels": 16},
    ),
}


def make_pair(family: str, size: int = 32, num_classes: int | None = None, channels: int = 3, **g_kwargs):
    g_cls, d_cls, g_small, d_small = FAMILIES[family]
    g = g_cls(channels, size, latent_dim=LATENT, num_classes=num_classes, **{**g_small, **g_kwargs})
    d = d_cls(channels, size, num_classes=num_classes, **d_small)
    return g, d


def inputs(num_classes: int | None, batch: int):
    labels = torch.arange(batch) % num_classes if num_classes is not None else None
    return torch.randn(batch, LATENT), labels


def without_grad(module: torch.nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


# ------------------------------------------------------------------------------------------------ shared tester
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("num_classes", [None, K], ids=["uncond", "cond"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_shapes_and_output_range(family, num_classes, size):
    channels = 1 if num_classes else 3
    g, d = make_pair(family, size, num_classes, channels)
    z, labels = inputs(num_classes, 3)  # odd batch: BatchNorm and the minibatch-std grouping must cope
    images = g(z, labels)
    assert images.shape == (3, channels, size, size)
    assert images.abs().max() <= 1.0
    assert g.latent_dim == LATENT and g.num_classes == num_classes
    logits = d(images, labels)
    assert logits.shape == (3,) and logits.dtype == torch.float32


@pytest.mark.parametrize(
    ("family", "num_classes", "mode", "kwargs"),
    [
        ("dcgan", None, "train", {}),
        ("dcgan", K, "train", {}),
        ("stylegan2", None, "train", {"mixing_prob": 1.0}),  # style mixing on every batch
        ("stylegan2", K, "train", {"mixing_prob": 1.0}),
        ("stylegan2", None, "train", {"mixing_prob": 0.0}),  # mixing off
        ("stylegan2", K, "eval", {}),  # eval: no mixing, no w_avg update
    ],
)
def test_every_generator_parameter_receives_a_gradient(family, num_classes, mode, kwargs):
    g, d = make_pair(family, 32, num_classes, **kwargs)
    g.train(mode == "train")
    z, labels = inputs(num_classes, 4)
    F.softplus(-d(g(z, labels), labels)).mean().backward()  # the non-saturating generator loss
    assert without_grad(g) == []


@pytest.mark.parametrize(
    ("family", "num_classes", "norm"),
    [
        ("dcgan", None, "spectral"),
        ("dcgan", K, "spectral"),
        ("dcgan", K, "batch"),
        ("dcgan", None, "none"),
        ("stylegan2", None, None),
        ("stylegan2", K, None),
    ],
)
def test_every_discriminator_parameter_receives_a_gradient(family, num_classes, norm):
    g, _ = make_pair(family, 32, num_classes)
    d_kwargs = {"norm": norm} if norm else {}
    d = FAMILIES[family][1](3, 32, num_classes=num_classes, **{**FAMILIES[family][3], **d_kwargs})
    z, labels = inputs(num_classes, 4)
    with torch.no_grad():
        fake = g(z, labels)
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    (F.softplus(-d(real, labels)).mean() + F.softplus(d(fake, labels)).mean()).backward()
    assert without_grad(d) == []


@pytest.mark.parametrize("family", list(FAMILIES))
def test_labels_change_the_image(family):
    g, _ = make_pair(family, 32, K)
    g.eval()
    z = torch.randn(1, LATENT).expand(K, -1)  # the same latent for every class
    with torch.no_grad():
        images = g(z, torch.arange(K))  # StyleGAN2 in eval: fixed noise maps
    scale = images.abs().max()  # an untrained DCGAN in eval mode has tiny outputs: compare relative to them
    for i in range(1, K):
        assert (images[i] - images[0]).abs().max() > 1e-2 * scale, (
            f"class {i} gives the same image as class 0"
        )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_projection_discriminator_depends_on_the_label(family):
    _, d = make_pair(family, 32, K)
    d.eval()  # spectral norm's power iteration only runs in training mode
    x = torch.randn(1, 3, 32, 32).expand(K, -1, -1, -1)
    with torch.no_grad():
        logits = d(x, torch.arange(K))
        again = d(x, torch.arange(K))
    assert torch.equal(logits, again)
    assert logits.unique().numel() == K  # one distinct score per class for the same image


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("net", ["G", "D"])
def test_missing_extra_or_malformed_labels_raise(family, net):
    def call(num_classes, labels):
        g, d = make_pair(family, 32, num_classes)
        if net == "G":
            return g(torch.randn(2, LATENT), labels)
        return d(torch.randn(2, 3, 32, 32), labels)

    with pytest.raises(ValueError, match=r"unconditional \(num_classes=None\) but got labels.*labels=None"):
        call(None, torch.tensor([0, 1]))
    with pytest.raises(
        ValueError, match=r"class-conditional \(num_classes=5\) and needs labels.*got labels=None"
    ):
        call(K, None)
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of shape \(2,\).*\(3,\)"):
        call(K, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must be an integer tensor.*torch.float32"):
        call(K, torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_same_seed_same_networks_and_samples(family):
    def run():
        torch.manual_seed(123)
        g, d = make_pair(family, 32, K)  # training mode: StyleGAN2 draws noise and mixes styles
        z, labels = inputs(K, 4)
        images = g(z, labels)
        return images, d(images, labels)

    (images1, logits1), (images2, logits2) = run(), run()
    assert torch.equal(images1, images2) and torch.equal(logits1, logits2)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"image_size": 7}, r"image_size must be .*>= 8.*got 7"),
        ({"image_size": 4}, r"image_size must be .*>= 8.*got 4"),
        ({"channels": 0}, r"channels must be an integer >= 1, got 0"),
        ({"num_classes": 0}, r"num_classes must be an integer >= 1, got 0"),
    ],
)
def test_bad_sizes_are_named(family, kwargs, pattern):
    g_cls, d_cls, g_small, d_small = FAMILIES[family]
    args = {"channels": 3, "image_size": 32, **kwargs}
    for cls, small in ((g_cls, g_small), (d_cls, d_small)):
        with pytest.raises(ValueError, match=pattern):
            cls(**args, **small)


def test_stylegan2_needs_a_power_of_two():
    for cls, small in (
        (StyleGAN2Generator, FAMILIES["stylegan2"][2]),
        (StyleGAN2Discriminator, FAMILIES["stylegan2"][3]),
    ):
        with pytest.raises(ValueError, match=r"StyleGAN2\w+: image_size must be a power of two >= 8.*got 48"):
            cls(channels=3, image_size=48, **small)


@pytest.mark.parametrize(
    ("size", "sides"),
    [
        (28, [4, 7, 14, 28]),
        (48, [3, 6, 12, 24, 48]),
        (20, [3, 5, 10, 20]),
        (9, [3, 5, 9]),
        (32, [4, 8, 16, 32]),
    ],
)
@pytest.mark.parametrize("num_classes", [None, K])
def test_dcgan_takes_any_side_from_8(size, sides, num_classes):
    """An odd side is reached by a 3x3 stride-2 layer (2x - 1), an even one by the paper's 4x4 (2x)."""
    g, d = make_pair("dcgan", size, num_classes, channels=1)
    kernels = [m.kernel_size[0] for m in g.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert kernels == [sides[0]] + [4 if b == 2 * a else 3 for a, b in itertools.pairwise(sides)]
    d_kernels = [m.kernel_size[0] for m in d.features if isinstance(m, torch.nn.Conv2d)]
    assert d_kernels == kernels[:0:-1]  # the discriminator mirrors the generator
    last_conv = [m for m in d.features if isinstance(m, torch.nn.Conv2d)][-1]
    assert d.linear.in_features == last_conv.out_channels * sides[0] ** 2
    z, labels = inputs(num_classes, 3)
    images = g(z, labels)
    assert images.shape == (3, 1, size, size)
    logits = d(images, labels)
    assert logits.shape == (3,)
    logits.sum().backward()
    assert without_grad(g) == [] and without_grad(d) == []


def test_dcgan_power_of_two_sizes_keep_the_papers_layout():
    g, d = make_pair("dcgan", 64)  # 4x4 -> 8 -> 16 -> 32 -> 64: one 4x4 projection and 4 doublings
    kernels = [m.kernel_size for m in g.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert kernels == [(4, 4)] * 5
    assert [m.stride for m in g.net if isinstance(m, torch.nn.ConvTranspose2d)] == [(1, 1)] + [(2, 2)] * 4
    assert d.linear.in_features == 8 * 2**3 * 16  # base 8, 4 halvings, 4x4 features


@pytest.mark.parametrize("family", list(FAMILIES))
def test_wrong_input_shapes_are_named(family):
    g, d = make_pair(family, 32)
    with pytest.raises(ValueError, match=r"latents z of shape \(B, 16\).*got \(2, 8\)"):
        g(torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"images of shape \(B, 3, 32, 32\).*got \(2, 3, 64, 64\)"):
        d(torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("size", [8, 16, 128])
def test_other_powers_of_two_work(family, size):
    g, d = make_pair(family, size)
    g.eval()
    with torch.no_grad():
        images = g(torch.randn(2, LATENT))
        assert images.shape == (2, 3, size, size) and d(images).shape == (2,)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bf16_autocast_forward_and_backward(family):
    """``bf16-mixed`` runs on CPU: buffers (w_avg) and float32 parameters must mix with bfloat16 activations."""
    g, d = make_pair(family, 32, K)
    z, labels = inputs(K, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = g(z, labels, truncation_psi=0.7) if family == "stylegan2" else g(z, labels)
        loss = F.softplus(-d(images, labels)).mean()
    loss.backward()
    assert torch.isfinite(loss) and without_grad(g) == []


# ---------------------------------------------------------------------------------------------------- DCGAN
def test_dcgan_paper_initialisation_and_widths():
    g = DCGANGenerator(3, 64)  # the paper's 64 px generator: 512 → 256 → 128 → 64 → 3
    convs = [m for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [c.out_channels for c in convs] == [512, 256, 128, 64, 3]
    assert abs(convs[1].weight.std().item() - 0.02) < 2e-3
    bn = torch.cat([m.weight.detach() for m in g.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(bn.mean().item() - 1.0) < 5e-3 and abs(bn.std().item() - 0.02) < 5e-3
    d = DCGANDiscriminator(3, 64, norm="batch")
    d_convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in d_convs] == [64, 128, 256, 512]
    first_block = list(d.features)[:2]  # the first layer has no normalisation
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in first_block)


def test_dcgan_default_discriminator_is_spectrally_normalised():
    d = DCGANDiscriminator(3, 32, base_channels=8)
    assert d.norm == "spectral"
    names = [n for n, _ in d.named_parameters()]
    assert all(".parametrizations.weight.original" in n for n in names if n.endswith("original"))
    assert sum(n.endswith("weight.original") for n in names) == 3 + 1  # 3 convs + the linear layer
    d.eval()
    w = d.features[2].weight  # the spectrally normalised weight of the second conv
    assert abs(torch.linalg.matrix_norm(w.flatten(1), ord=2).item() - 1.0) < 0.05


def test_dcgan_unknown_norm_suggests_the_closest():
    with pytest.raises(
        ValueError, match=r"unknown norm 'batchnorm'; valid: batch, none, spectral; did you mean 'batch'"
    ):
        DCGANDiscriminator(3, 32, norm="batchnorm")


# ------------------------------------------------------------------------------------------------- StyleGAN2
def test_equalized_layers_store_unit_weights_and_scale_at_run_time():
    torch.manual_seed(0)
    lin = EqualLinear(256, 64, lr_mul=0.01)
    assert abs(lin.weight.std().item() - 100.0) < 5.0  # N(0, 1) / lr_mul
    conv = EqualConv2d(32, 64, 3)
    assert abs(conv.weight.std().item() - 1.0) < 0.05
    x = torch.randn(8, 32, 16, 16)
    assert abs(conv(x)[..., 1:-1, 1:-1].var().item() - 1.0) < 0.1  # 1/sqrt(fan_in) keeps unit variance
    assert abs(lin(torch.randn(512, 256)).var().item() - 1.0) < 0.1


def test_demodulated_conv_has_unit_output_variance():
    torch.manual_seed(0)
    conv = ModulatedConv2d(32, 16, 3, w_dim=8, demodulate=True)
    with torch.no_grad():
        conv.affine.bias.fill_(3.0)  # large styles: without demodulation the variance would be ~9
    x = torch.randn(4, 32, 64, 64)
    w = torch.randn(4, 8)
    with torch.no_grad():
        out = conv(x, w)[..., 1:-1, 1:-1]  # borders see zero padding
    var = out.var(dim=(2, 3))  # (B, C_out): one value per sample and output channel
    assert (var - 1.0).abs().max() < 0.15, var
    conv.demodulate = False
    with torch.no_grad():
        assert conv(x, w)[..., 1:-1, 1:-1].var().item() > 4.0  # the test can tell the difference


@pytest.mark.parametrize(
    ("kernel_size", "up", "demodulate"), [(3, False, True), (3, True, True), (1, False, False)]
)
def test_grouped_modulated_conv_equals_a_per_sample_loop(kernel_size, up, demodulate):
    torch.manual_seed(0)
    conv = ModulatedConv2d(4, 5, kernel_size, w_dim=6, demodulate=demodulate, up=up)
    x, w = torch.randn(3, 4, 5, 5), torch.randn(3, 6)
    expected = []
    for b in range(3):  # reference: build sample b's weight by hand, ordinary convolution
        style = conv.affine(w[b : b + 1])[0]  # (C_in,)
        weight = conv.weight / (4 * kernel_size**2) ** 0.5 * style[None, :, None, None]  # (C_out, C_in, k, k)
        if demodulate:
            weight = weight / (weight.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8).sqrt()
        xb = x[b : b + 1]
        if up:
            xb = F.interpolate(xb, scale_factor=2, mode="bilinear", align_corners=False)
        expected.append(F.conv2d(xb, weight, padding=kernel_size // 2))
    torch.testing.assert_close(conv(x, w), torch.cat(expected), rtol=1e-5, atol=1e-5)


def test_every_style_index_is_used_by_the_synthesis_network():
    g = StyleGAN2Generator(3, 32, latent_dim=LATENT, base_channels=8, max_channels=16, w_dim=16)
    assert g.num_ws == 2 * 5 - 2  # 2 log2(S) - 2
    ws = torch.randn(2, g.num_ws, 16, requires_grad=True)
    g.synthesis(ws).square().mean().backward()
    per_index = ws.grad.abs().sum(dim=(0, 2))
    assert (per_index > 0).all(), per_index


def test_style_mixing_in_training_mode_only():
    g = StyleGAN2Generator(
        3, 32, latent_dim=LATENT, base_channels=8, max_channels=16, w_dim=16, mixing_prob=1.0
    )
    z = torch.randn(2, LATENT)
    ws = g.train().styles(z)
    same_as_first = (ws - ws[:, :1]).abs().amax(dim=(0, 2)) == 0  # (num_ws,)
    cutoff = int(same_as_first.long().cumprod(0).sum())
    assert 1 <= cutoff < g.num_ws  # a crossover: the first styles from one latent ...
    assert not same_as_first[cutoff:].any()  # ... all the later ones from another
    assert (ws[:, cutoff:] - ws[:, -1:]).abs().max() == 0
    ws_eval = g.eval().styles(z)
    assert (ws_eval - ws_eval[:, :1]).abs().max() == 0  # no mixing in eval mode


def test_w_avg_tracks_w_in_training_only():
    g = StyleGAN2Generator(
        3, 32, latent_dim=LATENT, base_channels=8, max_channels=16, w_dim=16, mixing_prob=0.0
    )
    z = torch.randn(4, LATENT)
    g.train()(z)
    expected = (1 - g.w_avg_beta) * g.mapping(z).mean(dim=0)  # one lerp from zero
    torch.testing.assert_close(g.w_avg, expected.detach())
    before = g.w_avg.clone()
    g.eval()(z)
    assert torch.equal(g.w_avg, before)


@pytest.mark.parametrize("num_classes", [None, K], ids=["uncond", "cond"])
@pytest.mark.parametrize("noise_mode", ["const", "none"])
def test_truncation_psi_zero_gives_one_image(num_classes, noise_mode):
    g = StyleGAN2Generator(
        3, 32, latent_dim=LATENT, num_classes=num_classes, base_channels=8, max_channels=16, w_dim=16
    )
    z, labels = inputs(num_classes, 4)
    for _ in range(3):
        g.train()(z, labels)  # a non-trivial w_avg
    g.eval()
    with torch.no_grad():
        images = g(torch.randn(4, LATENT), labels, truncation_psi=0.0, noise_mode=noise_mode)
        varied = g(torch.randn(4, LATENT), labels, truncation_psi=1.0, noise_mode=noise_mode)
    torch.testing.assert_close(images, images[:1].expand_as(images), rtol=0, atol=1e-6)
    assert (varied - varied[:1]).abs().amax() > 1e-3


def test_eval_mode_uses_the_stored_noise_by_default():
    """A fixed z must give the same sample grid at every epoch (GANTask's fixed sampling noise relies on it)."""
    g = StyleGAN2Generator(3, 32, latent_dim=LATENT, base_channels=8, max_channels=16, w_dim=16)
    for layer in g.synthesis.layers:
        torch.nn.init.ones_(layer.noise.strength)  # make the noise visible
    z = torch.randn(2, LATENT)
    with torch.no_grad():
        assert torch.equal(g.eval()(z), g(z))
        assert not torch.equal(g(z, noise_mode="random"), g(z, noise_mode="random"))
        g.train()
        torch.manual_seed(1)
        first = g(z)
        torch.manual_seed(2)
        assert not torch.equal(first, g(z))  # fresh noise (and mixing) in training


def test_unknown_noise_mode_is_named():
    g = StyleGAN2Generator(3, 32, latent_dim=LATENT, base_channels=8, max_channels=16, w_dim=16)
    with pytest.raises(ValueError, match=r"unknown noise_mode 'constant'.*did you mean 'const'"):
        g(torch.randn(2, LATENT), noise_mode="constant")


def test_minibatch_std_adds_one_channel():
    x = torch.randn(4, 6, 3, 3)
    out = MinibatchStd()(x)
    assert out.shape == (4, 7, 3, 3)
    assert torch.equal(out[:, :6], x)


# (input values (B, C, H, W), group_size, expected std channel per sample); biased std, averaged over C, H, W.
MBSTD_CASES = [
    # two samples 1 and 3: std 1
    ([[[[1.0]]], [[[3.0]]]], 4, [1.0, 1.0]),
    # groups are samples {0, 2} and {1, 3}: values {0, 10} -> std 5, {2, 14} -> std 6
    ([[[[0.0]]], [[[2.0]]], [[[10.0]]], [[[14.0]]]], 2, [5.0, 6.0, 5.0, 6.0]),
    # per-position stds 1, 2, 3, 4 (half the differences) averaged over channels and positions: 2.5
    ([[[[0.0, 0.0]], [[0.0, 0.0]]], [[[2.0, 4.0]], [[6.0, 8.0]]]], 4, [2.5, 2.5]),
    # batch 3, group size 4: the group is the largest divisor of 3 that is <= 4 -> 3; std of {0, 3, 6} = sqrt(6)
    ([[[[0.0]]], [[[3.0]]], [[[6.0]]]], 4, [6.0**0.5] * 3),
]


@pytest.mark.parametrize(("values", "group_size", "expected"), MBSTD_CASES)
def test_minibatch_std_matches_hand_computed_values(values, group_size, expected):
    x = torch.tensor(values)
    out = MinibatchStd(group_size=group_size)(x)
    std = out[:, -1]  # (B, H, W)
    for b, value in enumerate(expected):
        torch.testing.assert_close(std[b], torch.full_like(std[b], value), rtol=1e-5, atol=1e-4)


def test_stylegan2_default_sizes():
    """Defaults are sized to train a step on a CPU quickly at 32 px; a change in size should be deliberate."""
    g, d = StyleGAN2Generator(3, 32), StyleGAN2Discriminator(3, 32)
    n_g = sum(p.numel() for p in g.parameters())
    n_d = sum(p.numel() for p in d.parameters())
    assert 250_000 < n_g < 450_000, n_g
    assert 200_000 < n_d < 400_000, n_d
