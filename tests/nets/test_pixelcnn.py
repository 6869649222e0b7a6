"""Gated PixelCNN prior over VQ-VAE code maps.

What these tests protect: causality measured exactly (the gradient of each position's logits with respect to the
embedded input is nonzero on precisely the earlier positions of the documented receptive field — never the position
itself or a later one, and no blind spot above-right), that cropping the rows below leaves the logits above unchanged
(what ``sample`` relies on), a gradient for every parameter, class conditioning, the error messages, and — end to
end — that a tiny conditional net learns two deterministic raster rules (one needs the left neighbour, the other the
code one row up and two columns right, inside the original PixelCNN's blind spot) and that its samples follow them.

Kept tiny (hidden <= 32, maps <= 9×9, K = 4–5) so the file runs in a few seconds on 2 CPU cores.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from segen.nets.pixelcnn import GatedPixelCNN

K = 4  # codebook size of the learning tests
SIDE = 4  # side of their code maps


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these are many tiny ops, and on a shared 2-core machine two threads waiting on each
    other made the causality test ~50× slower (4 s instead of 0.08 s); the results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def receptive_field(
    h: int, w: int, i: int, j: int, num_layers: int, kernel_size: int
) -> set[tuple[int, int]]:
    """The documented dependency set of position (i, j): the row's ``L*p`` left neighbours, and the rows
    ``i-1-L*p .. i-1`` × columns ``j-L*p .. j+L*p`` above, clipped to the map."""
    reach = num_layers * (kernel_size // 2)
    same_row = {(i, c) for c in range(max(0, j - reach), j)}
    above = {
        (r, c)
        for r in range(max(0, i - 1 - reach), i)
        for c in range(max(0, j - reach), min(w, j + reach + 1))
    }
    return same_row | above


def dependencies(net: GatedPixelCNN, h: int, w: int, labels: torch.Tensor | None) -> dict:
    """Positions whose embedded input has a nonzero gradient for the logits at each (i, j), in float64."""
    batch = 4
    x = torch.randn(batch, net.hidden, h, w, dtype=torch.float64, requires_grad=True)
    logits = net.forward_embedded(x, labels)  # (B, K, H, W)
    projection = torch.randn(net.num_embeddings, dtype=torch.float64)  # generic mix of the K logits
    found = {}
    for i in range(h):
        for j in range(w):
            (grad,) = torch.autograd.grad((logits[:, :, i, j] * projection).sum(), x, retain_graph=True)
            nonzero = grad.abs().sum(dim=(0, 1)) > 0  # (H, W)
            found[i, j] = {(r, c) for r, c in nonzero.nonzero().tolist()}
    return found


# ------------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("num_classes", [None, 3])
def test_output_shape_and_dtype(num_classes):
    net = GatedPixelCNN(5, hidden=8, num_layers=3, num_classes=num_classes)
    indices = torch.randint(5, (2, 6, 7))
    labels = None if num_classes is None else torch.tensor([0, 2])
    logits = net(indices, labels)
    assert logits.shape == (2, 5, 6, 7) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


# ------------------------------------------------------------------------------------------------ causality
@pytest.mark.parametrize(("kernel_size", "num_layers", "h", "w"), [(3, 6, 8, 8), (5, 2, 7, 9)])
def test_each_position_depends_exactly_on_the_earlier_positions_of_its_receptive_field(
    kernel_size, num_layers, h, w
):
    torch.manual_seed(0)
    net = GatedPixelCNN(5, hidden=8, num_layers=num_layers, kernel_size=kernel_size, num_classes=2).double()
    found = dependencies(net, h, w, torch.tensor([0, 1, 1, 0]))
    for (i, j), deps in found.items():
        assert deps == receptive_field(h, w, i, j, num_layers, kernel_size), (i, j)
        # Spelled out: nothing at or after (i, j) in raster order ...
        assert all(r < i or (r == i and c < j) for r, c in deps), (i, j)
        # ... and the immediate context, including above-right where the masked PixelCNN is blind.
        for r, c in [(i, j - 1), (i - 1, j - 1), (i - 1, j), (i - 1, j + 1), (i - 1, j + 2)]:
            if 0 <= r < h and 0 <= c < w:
                assert (r, c) in deps, ((i, j), (r, c))
    assert found[0, 0] == set()  # the first position is predicted from the class alone
    reach = num_layers * (kernel_size // 2)  # the edge of the receptive field, well inside these maps
    assert (0, reach) in found[1, 0] and (0, reach + 1) not in found[1, 0]


def test_rows_below_do_not_change_the_logits_above():
    """``sample`` runs each step on the rows sampled so far; that is exact because padding is top/left only."""
    torch.manual_seed(0)
    net = GatedPixelCNN(5, hidden=8, num_layers=4)
    indices = torch.randint(5, (2, 6, 5))
    logits = net(indices)
    for rows in range(1, 6):
        torch.testing.assert_close(net(indices[:, :rows]), logits[:, :, :rows], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ gradients
def test_every_parameter_gets_a_nonzero_gradient_from_cross_entropy():
    torch.manual_seed(0)
    net = GatedPixelCNN(5, hidden=8, num_layers=3, num_classes=3)
    indices = torch.randint(5, (4, 5, 5))
    F.cross_entropy(net(indices, torch.tensor([0, 1, 2, 1])), indices).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------------ conditioning
def test_labels_change_the_logits_everywhere():
    torch.manual_seed(0)
    net = GatedPixelCNN(5, hidden=8, num_layers=3, num_classes=3)
    indices = torch.randint(5, (1, 4, 4)).expand(3, -1, -1)
    logits = net(indices, torch.tensor([0, 1, 2]))
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        assert ((logits[a] - logits[b]).abs().amax(dim=0) > 1e-4).all()  # every position, incl. (0, 0)


@pytest.mark.parametrize(
    ("num_classes", "labels", "pattern"),
    [
        (3, None, r"class-conditional \(num_classes=3\) and needs labels.*got labels=None"),
        (None, torch.tensor([0, 1]), r"unconditional \(num_classes=None\) but got labels of shape \(2,\)"),
        (
            3,
            torch.tensor([0, 1, 2]),
            r"labels must be an integer tensor of shape \(2,\).*got torch.int64 of shape \(3,\)",
        ),
        (3, torch.tensor([0.0, 1.0]), r"labels must be an integer tensor.*got torch.float32"),
        (3, torch.tensor([0, 3]), r"labels must be in \[0, 3\) \(num_classes=3\), found values in \[0, 3\]"),
        (3, torch.tensor([-1, 2]), r"labels must be in \[0, 3\).*found values in \[-1, 2\]"),
    ],
)
def test_bad_labels_are_named(num_classes, labels, pattern):
    net = GatedPixelCNN(5, hidden=8, num_layers=2, num_classes=num_classes)
    with pytest.raises(ValueError, match=pattern):
        net(torch.zeros(2, 3, 3, dtype=torch.long), labels)


# ------------------------------------------------------------------------------------------------ input errors
@pytest.mark.parametrize(
    ("indices", "pattern"),
    [
        (
            torch.zeros(2, 3, 3),
            r"integer tensor of shape \(B, H, W\).*\[0, 5\), got torch.float32 of shape \(2, 3, 3\)",
        ),
        (torch.zeros(2, 3, 3, dtype=torch.bool), r"integer tensor of shape \(B, H, W\).*got torch.bool"),
        (
            torch.zeros(2, 1, 3, 3, dtype=torch.long),
            r"shape \(B, H, W\).*got torch.int64 of shape \(2, 1, 3, 3\)",
        ),
        (torch.zeros(3, 3, dtype=torch.long), r"shape \(B, H, W\).*of shape \(3, 3\)"),
        (
            torch.tensor([[[0, 5]]]),
            r"indices must be in \[0, 5\) \(num_embeddings=5\), found values in \[0, 5\]",
        ),
        (torch.tensor([[[-2, 1]]]), r"indices must be in \[0, 5\).*found values in \[-2, 1\]"),
    ],
)
def test_bad_indices_are_named(indices, pattern):
    net = GatedPixelCNN(5, hidden=8, num_layers=2)
    with pytest.raises(ValueError, match=pattern):
        net(indices)


def test_bad_embedded_input_is_named():
    net = GatedPixelCNN(5, hidden=8, num_layers=2)
    with pytest.raises(ValueError, match=r"shape \(B, 8, H, W\) \(hidden=8\), got \(1, 4, 3, 3\)"):
        net.forward_embedded(torch.zeros(1, 4, 3, 3))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"num_embeddings": 0}, r"num_embeddings must be an integer >= 1, got 0"),
        ({"hidden": -4}, r"hidden must be an integer >= 1, got -4"),
        ({"num_layers": 0}, r"num_layers must be an integer >= 1, got 0"),
        ({"num_layers": 2.0}, r"num_layers must be an integer >= 1, got 2.0"),
        ({"num_classes": 0}, r"num_classes must be an integer >= 1, got 0"),
        ({"kernel_size": 4}, r"kernel_size must be an odd integer >= 3.*got 4"),
        ({"kernel_size": 1}, r"kernel_size must be an odd integer >= 3.*got 1"),
    ],
)
def test_bad_constructor_arguments_are_named(kwargs, pattern):
    args = {"num_embeddings": 5, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        GatedPixelCNN(**args)


# ------------------------------------------------------------------------------------------------ learning
def make_maps(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(B,)`` labels → ``(B, SIDE, SIDE)`` code maps following the label's rule.

    * label 0, left context: each row starts with a random code and counts up, ``x[i, j] = x[i, j-1] + 1 mod K``;
    * label 1, above-right context: a random first row, then each row is the one above rotated left by two,
      ``x[i, j] = x[i-1, (j+2) mod SIDE]`` — for ``j < SIDE - 2`` that is position ``(i-1, j+2)``, in the blind
      spot of a masked (single-stack) PixelCNN.
    """
    n = labels.shape[0]
    start = torch.randint(K, (n, SIDE, 1), generator=generator)
    counting = (start + torch.arange(SIDE)) % K  # (n, SIDE, SIDE)
    rows = [torch.randint(K, (n, 1, SIDE), generator=generator)]
    for _ in range(SIDE - 1):
        rows.append(rows[-1].roll(-2, dims=2))
    rotating = torch.cat(rows, dim=1)  # (n, SIDE, SIDE)
    return torch.where(labels[:, None, None] == 0, counting, rotating)


def predictable(labels: torch.Tensor) -> torch.Tensor:
    """``(B, SIDE, SIDE)`` bool: the positions each rule determines (label 0: j >= 1; label 1: i >= 1)."""
    rows = torch.arange(SIDE)[:, None].expand(SIDE, SIDE)
    cols = torch.arange(SIDE)[None, :].expand(SIDE, SIDE)
    return torch.where(labels[:, None, None] == 0, cols >= 1, rows >= 1)


def rule_holds(maps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B, SIDE, SIDE)`` bool: whether each position equals what its label's rule predicts from the context."""
    from_left = (maps.roll(1, dims=2) + 1) % K  # x[i, j-1] + 1
    from_above = maps.roll(1, dims=1).roll(-2, dims=2)  # x[i-1, (j+2) mod SIDE]
    return maps == torch.where(labels[:, None, None] == 0, from_left, from_above)


@functools.cache
def trained_net() -> GatedPixelCNN:
    """A tiny conditional net trained on both rules (the label picks the rule): a few seconds on 2 CPU cores."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    net = GatedPixelCNN(K, hidden=32, num_layers=3, num_classes=2)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(200):
        labels = torch.randint(2, (32,), generator=generator)
        maps = make_maps(labels, generator)
        loss = F.cross_entropy(net(maps, labels), maps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def test_rules_are_consistent():
    """The helpers agree with each other: generated maps satisfy their rule exactly on the predictable positions."""
    labels = torch.tensor([0, 1] * 8)
    maps = make_maps(labels, torch.Generator().manual_seed(3))
    assert rule_holds(maps, labels)[predictable(labels)].all()


def test_learns_the_left_and_the_above_right_rules():
    net = trained_net()
    generator = torch.Generator().manual_seed(1)  # fresh maps, not the training ones
    labels = torch.tensor([0, 1] * 128)
    maps = make_maps(labels, generator)
    with torch.no_grad():
        loss = F.cross_entropy(net(maps, labels), maps, reduction="none")  # (B, SIDE, SIDE) nats
    mask = predictable(labels)
    for label in (0, 1):
        on_rule = loss[mask & (labels[:, None, None] == label)].mean()
        assert on_rule < 0.02, (label, float(on_rule))  # near 0 nats: the context the rule needs gets through
    assert loss[~mask].mean() > 0.5 * torch.log(torch.tensor(float(K)))  # the random codes stay uncertain


# ------------------------------------------------------------------------------------------------ sampling
def test_sample_shape_range_and_reproducibility():
    torch.manual_seed(0)
    net = GatedPixelCNN(5, hidden=8, num_layers=3, num_classes=2)
    labels = torch.tensor([0, 1, 1])
    a = net.sample(3, 4, 5, labels, generator=torch.Generator().manual_seed(7))
    assert a.shape == (3, 4, 5) and a.dtype == torch.long
    assert a.min() >= 0 and a.max() < 5
    b = net.sample(3, 4, 5, labels, generator=torch.Generator().manual_seed(7))
    c = net.sample(3, 4, 5, labels, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_samples_follow_the_learned_rules():
    net = trained_net()
    labels = torch.tensor([0, 1] * 32)
    generator = torch.Generator().manual_seed(2)
    for temperature in (0.5, 1.0):
        maps = net.sample(64, SIDE, SIDE, labels, temperature=temperature, generator=generator)
        holds = rule_holds(maps, labels)
        for label in (0, 1):
            rate = holds[predictable(labels) & (labels[:, None, None] == label)].float().mean()
            assert rate >= 0.9, (temperature, label, float(rate))
    # At temperature 1 the undetermined codes are really sampled: all K values appear at the random positions.
    assert set(maps[~predictable(labels)].tolist()) == set(range(K))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"temperature": 0.0}, r"temperature must be > 0.*got 0.0"),
        ({"n": 0}, r"n must be an integer >= 1, got 0"),
        ({"labels": None}, r"class-conditional \(num_classes=2\) and needs labels"),
        ({"labels": torch.tensor([0, 1, 1])}, r"labels must be an integer tensor of shape \(2,\)"),
    ],
)
def test_bad_sample_arguments_are_named(kwargs, pattern):
    net = GatedPixelCNN(5, hidden=8, num_layers=2, num_classes=2)
    args = {"n": 2, "height": 3, "width": 3, "labels": torch.tensor([0, 1]), **kwargs}
    with pytest.raises(ValueError, match=pattern):
        net.sample(**args)
