"""Post-processing: components agree with independent references, regions and instances on hand-made maps,
NMS agrees with torchvision, mask NMS agrees with box NMS on filled rectangles."""

from __future__ import annotations

import importlib.util
from collections import deque

import pytest
import torch
import torchvision

from segen.inference import (
    connected_components,
    mask_iou,
    mask_nms,
    nms,
    remove_small_regions,
    semantic_to_instances,
)

HAS_SCIPY = importlib.util.find_spec("scipy") is not None


def bfs_label(mask: list[list[bool]], connectivity: int) -> tuple[list[list[int]], int]:
    """Reference labelling: scan in raster order, flood-fill each new component with a BFS."""
    h, w = len(mask), len(mask[0])
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    labels = [[0] * w for _ in range(h)]
    n = 0
    for y in range(h):
        for x in range(w):
            if mask[y][x] and not labels[y][x]:
                n += 1
                labels[y][x] = n
                queue = deque([(y, x)])
                while queue:
                    cy, cx = queue.popleft()
                    for dy, dx in steps:
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and mask[ny][nx] and not labels[ny][nx]:
                            labels[ny][nx] = n
                            queue.append((ny, nx))
    return labels, n


def random_masks():
    g = torch.Generator().manual_seed(1)
    for density in (0.2, 0.45, 0.6, 0.8):
        for _ in range(3):
            yield torch.rand(12, 15, generator=g) < density


@pytest.mark.parametrize("connectivity", [4, 8])
def test_connected_components_match_bfs_reference(connectivity):
    for mask in random_masks():
        labels, n = connected_components(mask, connectivity)
        ref, ref_n = bfs_label(mask.tolist(), connectivity)
        assert labels.dtype == torch.long and labels.shape == mask.shape
        assert n == ref_n
        assert labels.tolist() == ref  # same partition AND same raster-order numbering


@pytest.mark.skipif(not HAS_SCIPY, reason="scipy not installed (optional reference)")
@pytest.mark.parametrize("connectivity", [4, 8])
def test_connected_components_match_scipy(connectivity):
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    g = torch.Generator().manual_seed(2)
    for density in (0.3, 0.55, 0.7):
        mask = torch.rand(40, 33, generator=g) < density
        labels, n = connected_components(mask, connectivity)
        ref, ref_n = ndimage.label(mask.numpy(), structure=structure)
        assert n == ref_n
        assert torch.equal(labels, torch.from_numpy(ref).long())


def test_connected_components_long_snake_and_edge_cases():
    # A serpentine path: the geodesic length is ~ H·W/2, the worst case for propagation.
    mask = torch.zeros(15, 15, dtype=torch.bool)
    mask[::2] = True
    for i, y in enumerate(range(1, 15, 2)):
        mask[y, 14 if i % 2 == 0 else 0] = True
    labels, n = connected_components(mask.to(torch.uint8))
    assert n == 1 and torch.equal(labels, mask.long())
    assert connected_components(torch.zeros(3, 4))[1] == 0
    full, n = connected_components(torch.ones(3, 4, dtype=torch.bool))
    assert n == 1 and torch.equal(full, torch.ones(3, 4, dtype=torch.long))
    diagonal = torch.eye(4, dtype=torch.bool)
    assert connected_components(diagonal, 4)[1] == 4 and connected_components(diagonal, 8)[1] == 1


def test_connected_components_errors():
    with pytest.raises(ValueError, match="connectivity must be 4 or 8, got 6"):
        connected_components(torch.ones(3, 3), 6)
    with pytest.raises(ValueError, match=r"2-D .* got \(2, 3, 3\)"):
        connected_components(torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match=r"0 and 1, found values \[2\]"):
        connected_components(torch.tensor([[0, 2], [1, 1]]))


def island_map() -> torch.Tensor:
    m = torch.ones(6, 8, dtype=torch.long)
    m[:, 5:] = 3  # a large region of class 3
    m[2, 1:3] = 2  # 2-pixel island of class 2 inside class 1
    return m


def test_remove_small_regions_neighbor_fill():
    m = island_map()
    out = remove_small_regions(m, min_size=3)
    expected = m.clone()
    expected[2, 1:3] = 1
    assert torch.equal(out, expected) and out.dtype == m.dtype
    assert torch.equal(m, island_map())  # input untouched


def test_remove_small_regions_int_fill_and_large_regions_untouched():
    m = island_map()
    out = remove_small_regions(m, min_size=3, fill=255)
    assert torch.equal(out[2, 1:3], torch.tensor([255, 255]))
    keep = torch.ones_like(m, dtype=torch.bool)
    keep[2, 1:3] = False
    assert torch.equal(out[keep], m[keep])
    assert torch.equal(remove_small_regions(m, min_size=2), m)  # island has exactly 2 px: kept
    assert torch.equal(remove_small_regions(m, min_size=0), m)


def test_remove_small_regions_majority_neighbour_and_connectivity():
    # Single pixel of class 5 bordered (4-conn) by three 1s and one 2: becomes 1.
    m = torch.tensor(
        [
            [1, 1, 1, 2, 2],
            [1, 1, 5, 2, 2],
            [1, 1, 1, 2, 2],
        ]
    )
    assert remove_small_regions(m, min_size=2)[1, 2] == 1
    # Two diagonal pixels of class 4: one region with 8-connectivity (size 2, kept at min_size=2), two with 4.
    d = torch.zeros(4, 4, dtype=torch.long)
    d[1, 1] = d[2, 2] = 4
    assert torch.equal(remove_small_regions(d, 2, connectivity=8), d)
    assert torch.equal(remove_small_regions(d, 2, connectivity=4), torch.zeros_like(d))


def test_remove_small_regions_errors():
    with pytest.raises(ValueError, match="fill must be 'neighbor' or an int"):
        remove_small_regions(island_map(), 3, fill="nearest")
    with pytest.raises(ValueError, match="min_size"):
        remove_small_regions(island_map(), -1)
    with pytest.raises(ValueError, match="integer tensor"):
        remove_small_regions(island_map().float(), 3)


def test_semantic_to_instances_two_blobs_same_class():
    m = torch.zeros(7, 9, dtype=torch.long)
    m[1:3, 1:4] = 2  # blob A: rows 1-2, cols 1-3
    m[4:7, 6:8] = 2  # blob B: rows 4-6, cols 6-7
    m[5, 1] = 1  # a single pixel of class 1
    m[0, 8] = 255  # ignore
    out = semantic_to_instances(m)
    assert out["masks"].dtype == torch.uint8 and out["masks"].shape == (3, 7, 9)
    assert out["labels"].dtype == torch.int64 and out["labels"].tolist() == [2, 2, 1]  # raster order
    torch.testing.assert_close(out["boxes"], torch.tensor([[1.0, 1, 4, 3], [6, 4, 8, 7], [1, 5, 2, 6]]))
    # boxes follow the exclusive convention: width * height == pixel count for rectangles
    boxes = out["boxes"]
    assert ((boxes[:2, 2] - boxes[:2, 0]) * (boxes[:2, 3] - boxes[:2, 1])).tolist() == [6.0, 6.0]
    masks = out["masks"].bool()
    assert int(masks.sum(0).max()) == 1  # disjoint
    assert torch.equal(masks.any(0), (m != 0) & (m != 255))  # union == foreground
    for mask, label in zip(masks, out["labels"]):
        assert torch.all(m[mask] == label)
    # the boxes are what torchvision would compute, shifted to exclusive edges
    tv = torchvision.ops.masks_to_boxes(masks)
    torch.testing.assert_close(boxes, tv + torch.tensor([0.0, 0, 1, 1]))

    big = semantic_to_instances(m, min_size=2)
    assert big["labels"].tolist() == [2, 2]


def test_semantic_to_instances_background_and_ignore_only():
    m = torch.zeros(4, 5, dtype=torch.long)
    m[1:3, 1:3] = 255
    out = semantic_to_instances(m)
    assert out["masks"].shape == (0, 4, 5) and out["labels"].shape == (0,) and out["boxes"].shape == (0, 4)
    # With background=None, class 0 becomes an instance too.
    assert semantic_to_instances(m, background=None)["labels"].tolist() == [0]


def test_semantic_to_instances_connectivity():
    m = torch.zeros(3, 3, dtype=torch.long)
    m[0, 0] = m[1, 1] = 1
    assert len(semantic_to_instances(m, connectivity=8)["labels"]) == 1
    assert len(semantic_to_instances(m, connectivity=4)["labels"]) == 2


def random_int_boxes(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    xy1 = torch.randint(0, size - 1, (n, 2), generator=g)
    wh = torch.randint(1, size // 2, (n, 2), generator=g)
    xy2 = torch.minimum(xy1 + wh, torch.tensor(size))
    return torch.cat([xy1, xy2], 1).float()  # (n, 4), x2/y2 exclusive


def test_nms_equals_torchvision():
    g = torch.Generator().manual_seed(3)
    boxes = random_int_boxes(60, 32, g) + torch.rand(60, 4, generator=g) * 0.5
    scores = torch.rand(60, generator=g)
    labels = torch.randint(0, 3, (60,), generator=g)
    for thr in (0.1, 0.3, 0.6):
        assert torch.equal(nms(boxes, scores, thr), torchvision.ops.nms(boxes, scores, thr))
        assert torch.equal(
            nms(boxes, scores, thr, labels=labels), torchvision.ops.batched_nms(boxes, scores, labels, thr)
        )
    with pytest.raises(ValueError, match=r"scores must be \(N,\)"):
        nms(boxes, scores[:5], 0.5)


def rect_masks(boxes: torch.Tensor, size: int) -> torch.Tensor:
    masks = torch.zeros(len(boxes), size, size, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
        mask[y1:y2, x1:x2] = 1  # exclusive x2/y2: area == (x2 - x1) * (y2 - y1)
    return masks


def test_mask_iou_equals_box_iou_for_filled_rectangles():
    g = torch.Generator().manual_seed(4)
    boxes = random_int_boxes(20, 24, g)
    masks = rect_masks(boxes, 24)
    torch.testing.assert_close(mask_iou(masks, masks[:7]), torchvision.ops.box_iou(boxes, boxes[:7]))
    probs = masks.float() * 0.9 + 0.05  # probabilities: thresholded at 0.5 give the same masks
    torch.testing.assert_close(mask_iou(probs, masks.bool()), mask_iou(masks, masks))
    empty = torch.zeros(2, 24, 24, dtype=torch.bool)
    assert torch.equal(mask_iou(empty, empty), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="same mask size"):
        mask_iou(masks, masks[:, :10])


def test_mask_nms_equals_box_nms_on_rectangles():
    g = torch.Generator().manual_seed(5)
    boxes = random_int_boxes(50, 24, g)
    masks = rect_masks(boxes, 24)
    scores = torch.rand(50, generator=g)
    labels = torch.randint(0, 3, (50,), generator=g)
    for thr in (0.15, 0.35, 0.55):
        keep = mask_nms(masks, scores, thr)
        assert keep.dtype == torch.int64
        assert torch.equal(keep, torchvision.ops.nms(boxes, scores, thr))  # same set, same (score) order
        assert torch.all(scores[keep][:-1] >= scores[keep][1:])
        keep_cls = mask_nms(masks, scores, thr, labels=labels)
        assert torch.equal(keep_cls, torchvision.ops.batched_nms(boxes, scores, labels, thr))


def test_mask_nms_class_aware():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True  # three identical masks
    scores = torch.tensor([0.5, 0.9, 0.7])
    assert mask_nms(masks, scores, 0.5).tolist() == [1]
    assert mask_nms(masks, scores, 0.5, labels=torch.tensor([0, 0, 1])).tolist() == [1, 2]
    assert mask_nms(masks[:0], scores[:0], 0.5).shape == (0,)
