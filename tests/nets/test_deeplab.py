"""DeepLabV3 / V3+: shapes, strides, gradients, local backbone weights, error messages, use inside a task.

Kept tiny (ResNet-18, narrow heads, 32–64 px, batch 2) so the file runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision

from segen.nets.deeplab import DeepLabV3, DeepLabV3Plus

NETS = {"v3": DeepLabV3, "v3plus": DeepLabV3Plus}
SMALL = {"aspp_channels": 16}  # narrow heads: the backbones are what is tested, not the width of the head


def small(kind: str, **kwargs):
    extra = {"decoder_channels": 16, "low_level_channels": 8} if kind == "v3plus" else {}
    return NETS[kind](**{"backbone": "resnet18", **SMALL, **extra, **kwargs})


@pytest.mark.parametrize(
    ("kind", "size", "output_stride", "in_channels"),
    [
        ("v3", (33, 47), 16, 1),
        ("v3plus", (33, 47), 16, 1),
        ("v3plus", (64, 64), 8, 3),
        ("v3", (5, 3), 8, 3),  # smaller than the output stride: every feature map is 1×1
    ],
)
def test_output_shape(kind, size, output_stride, in_channels):
    net = small(kind, in_channels=in_channels, num_classes=4, output_stride=output_stride)
    assert net(torch.randn(2, in_channels, *size)).shape == (2, 4, *size)


@pytest.mark.parametrize(("kind", "backbone"), [("v3", "resnet50"), ("v3plus", "mobilenet_v3_large")])
def test_other_backbones_forward(kind, backbone):
    net = NETS[kind](in_channels=3, num_classes=2, backbone=backbone, **SMALL).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


@pytest.mark.parametrize(("backbone", "output_stride"), [("resnet18", 8), ("resnet18", 16), ("resnet50", 8)])
def test_aspp_input_has_the_requested_stride(backbone, output_stride):
    """ResNet-18/34 are dilated by hand (torchvision refuses BasicBlock dilation): check they really are."""
    net = DeepLabV3(3, 2, backbone=backbone, output_stride=output_stride, **SMALL).eval()
    seen = []
    net.aspp.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    with torch.no_grad():
        net(torch.randn(1, 3, 32, 48))
    assert seen[0][-2:] == (32 // output_stride, 48 // output_stride)


def test_default_aspp_dilations_double_at_stride_8():
    def dilations(net):
        return [b[0].dilation[0] for b in net.aspp.branches[1:-1]]

    assert dilations(small("v3", in_channels=3, num_classes=2)) == [6, 12, 18]
    assert dilations(small("v3", in_channels=3, num_classes=2, output_stride=8)) == [12, 24, 36]


def test_every_parameter_receives_a_gradient_and_low_level_branch_is_used():
    net = small("v3plus", in_channels=3, num_classes=3)
    net(torch.randn(2, 3, 32, 32)).square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert net.low_level[0].weight.grad.abs().sum() > 0  # the stride-4 skip feeds the logits


def test_initial_logits_are_moderate_and_the_classifier_not_symmetric():
    # train mode: a fresh backbone's BatchNorm running statistics (mean 0, var 1) do not normalise anything yet
    net = small("v3plus", in_channels=3, num_classes=4).train()
    with torch.no_grad():
        probs = net(torch.randn(2, 3, 32, 32)).softmax(1)
    assert (probs - 0.25).abs().max() < 0.5  # not saturated
    # PyTorch's default init, not a tiny one whose classes start equal (init_classifier)
    classifier = net.classifier
    fan_in = classifier.weight[0].numel()
    assert 0.8 < float(classifier.weight.std()) * (3 * fan_in) ** 0.5 < 1.2
    assert torch.equal(classifier.bias, torch.zeros(4))


def test_train_mode_with_batch_of_one():
    """The image-pooling branch has no BatchNorm, so a single image trains (deepest features are 2×2 here)."""
    net = small("v3plus", in_channels=3, num_classes=2).train()
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


# ------------------------------------------------------------------------------------------- local weights
@pytest.fixture
def resnet18_file(tmp_path):
    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18-test.pth"
    torch.save(state, path)
    return path, state


def test_weights_path_loads_the_backbone(resnet18_file):
    path, saved = resnet18_file
    net = DeepLabV3Plus(3, 2, backbone="resnet18", weights_path=path, **SMALL)
    loaded = net.backbone.state_dict()
    assert set(loaded) == {k for k in saved if not k.startswith("fc.")}
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded)


def test_weights_with_one_input_channel_start_from_the_rgb_mean(resnet18_file):
    path, saved = resnet18_file
    net = DeepLabV3(1, 2, backbone="resnet18", weights_path=str(path), **SMALL)
    assert net.backbone.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(net.backbone.conv1.weight, saved["conv1.weight"].mean(dim=1, keepdim=True))
    assert torch.equal(net.backbone.layer4[1].conv2.weight, saved["layer4.1.conv2.weight"])


def test_mobilenet_weights_ignore_the_classifier(tmp_path):
    saved = torchvision.models.mobilenet_v3_large(weights=None).state_dict()
    torch.save(saved, tmp_path / "mnv3.pth")
    net = DeepLabV3(3, 2, backbone="mobilenet_v3_large", weights_path=tmp_path / "mnv3.pth", **SMALL)
    assert all(torch.equal(v, saved[k]) for k, v in net.backbone.state_dict().items())


def test_missing_weights_file_names_the_path_and_how_to_get_it(tmp_path):
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(FileNotFoundError) as info:
        DeepLabV3(3, 2, backbone="resnet18", weights_path=path)
    message = str(info.value)
    assert str(path) in message
    assert "never downloads" in message
    assert "ResNet18_Weights.DEFAULT.get_state_dict()" in message


def test_weights_with_wrong_keys_list_some_of_them(resnet18_file, tmp_path):
    _, saved = resnet18_file
    torch.save({f"module.{k}": v for k, v in saved.items()}, tmp_path / "prefixed.pth")
    with pytest.raises(
        ValueError, match=r"missing keys: conv1\.weight.*unexpected keys: module\.conv1.*prefix 'module\.'"
    ):
        DeepLabV3(3, 2, backbone="resnet18", weights_path=tmp_path / "prefixed.pth", **SMALL)


def test_weights_of_another_architecture_are_rejected(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"do not match backbone 'resnet34'.*missing keys: .*layer1\.2"):
        DeepLabV3(3, 2, backbone="resnet34", weights_path=tmp_path / "r18.pth", **SMALL)


# ------------------------------------------------------------------------------------------- bad arguments
def test_unknown_backbone_lists_valid_names():
    with pytest.raises(
        ValueError, match=r"unknown backbone 'resnet19'; valid: .*mobilenet_v3_large.*resnet18"
    ):
        DeepLabV3(3, 2, backbone="resnet19")


@pytest.mark.parametrize("output_stride", [4, 32])
def test_bad_output_stride_names_value_and_valid_ones(output_stride):
    with pytest.raises(ValueError, match=rf"output_stride must be one of 8, 16, got {output_stride}"):
        DeepLabV3Plus(3, 2, backbone="resnet18", output_stride=output_stride)


def test_mobilenet_says_it_supports_only_stride_16():
    with pytest.raises(
        ValueError, match=r"mobilenet_v3_large' supports only output_stride=16.*got output_stride=8"
    ):
        DeepLabV3(3, 2, backbone="mobilenet_v3_large", output_stride=8)


def test_wrong_channel_count_names_both_counts():
    net = small("v3", in_channels=1, num_classes=2)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\).*\(2, 3, 16, 16\)"):
        net(torch.randn(2, 3, 16, 16))


# ------------------------------------------------------------------------------------------- inside a task
def test_segmentation_task_training_step():
    from segen import SegmentationTask

    net = functools.partial(DeepLabV3Plus, backbone="resnet18", **SMALL, decoder_channels=16)
    task = SegmentationTask(num_classes=3, in_channels=3, net=net)
    images, masks = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    loss = task.training_step((images, masks), 0)
    assert torch.isfinite(loss)
    loss.backward()
