import pytest
import torch

from segen.nets import UNet


@pytest.mark.parametrize(
    ("size", "depth", "norm"),
    [
        ((32, 32), 3, "batch"),
        ((37, 53), 3, "group"),
        ((1, 1), 2, "batch"),
        ((3, 5), 1, "instance"),
        ((64, 48), 4, "none"),
    ],
)
def test_output_shape_for_any_input_size(size, depth, norm):
    net = UNet(in_channels=2, num_classes=5, base_channels=4, depth=depth, norm=norm)
    x = torch.randn(2, 2, *size)
    assert net(x).shape == (2, 5, *size)


def test_every_parameter_receives_a_gradient():
    net = UNet(in_channels=3, num_classes=3, base_channels=4, depth=3, dropout=0.1)
    x = torch.randn(2, 3, 24, 40)
    net(x).square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_padding_does_not_leak_into_valid_region_shape_and_is_deterministic():
    net = UNet(in_channels=1, num_classes=2, base_channels=4, depth=2).eval()
    x = torch.randn(1, 1, 13, 13)
    out1, out2 = net(x), net(x)
    assert torch.equal(out1, out2)
    assert out1.shape == (1, 2, 13, 13)


def test_initial_classifier_is_not_symmetric_and_its_logits_are_moderate():
    # a tiny (std 0.01) classifier starts with near-equal class vectors: the symmetry that kept digits-on-canvas
    # at "every digit is the same class" (see init_classifier); PyTorch's default init breaks it
    net = UNet(in_channels=3, num_classes=4, base_channels=8, depth=2).eval()
    weight = net.head.weight.flatten(1)  # (K, C)
    assert torch.equal(net.head.bias, torch.zeros(4))
    # std 1/sqrt(3 fan_in), fan_in 8
    assert 0.8 / 8**0.5 / 3**0.5 < float(weight.std()) < 1.2 / 8**0.5 / 3**0.5
    unit = torch.nn.functional.normalize(weight, dim=1)  # (K, C) class vectors of length 1
    cosine = unit @ unit.T  # (K, K)
    assert float((cosine - torch.eye(4)).abs().max()) < 0.99  # no two class vectors point the same way
    with torch.no_grad():
        logits = net(torch.randn(2, 3, 32, 32))  # (2, 4, 32, 32)
    assert 0.05 < float(logits.std()) < 2.0  # neither saturated softmax nor near-equal logits


def test_wrong_channel_count_names_both_counts():
    net = UNet(in_channels=3, num_classes=2, base_channels=4, depth=2)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(2, 1, 16, 16\)"):
        net(torch.randn(2, 1, 16, 16))


def test_unknown_norm_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown norm 'batchnorm'.*batch, group, instance, none"):
        UNet(3, 2, norm="batchnorm")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"depth": 0}, "depth"), ({"base_channels": 0}, "base_channels"), ({"dropout": 1.5}, "dropout")],
)
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        UNet(3, 2, **kwargs)
