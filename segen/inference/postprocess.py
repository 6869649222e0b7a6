"""Post-processing of segmentation outputs: connected components, small-region removal, instances, NMS.

Everything here is a pure function on tensors, vectorised in torch (no Python loop over pixels), and runs on
whatever device its input lives on.

What comes from torchvision and what segen adds
    * :func:`nms` is a thin, validated wrapper over ``torchvision.ops.nms`` / ``torchvision.ops.batched_nms``.
    * :func:`semantic_to_instances` computes boxes with ``torchvision.ops.masks_to_boxes`` and shifts ``x2, y2``
      by one pixel to the exclusive (pixel-edge) convention that makes ``(x2 − x1) · (y2 − y1)`` the pixel area.
    * torchvision has no connected-component labelling, no small-region removal, no mask IoU and no mask NMS:
      :func:`connected_components`, :func:`remove_small_regions`, :func:`mask_iou` and :func:`mask_nms` are segen's.

Connected components by label propagation
    Each foreground pixel starts pointing at itself (its raster index). Every iteration, over all links between
    neighbouring pixels of one region (4- or 8-connected) whose pointers still differ, in one ``scatter_reduce``:
    each linked pixel takes the smaller of the two pointers (propagation), and so do the pixels they point at
    (hooking, as in Shiloach–Vishkin); then pointers are followed to their end (pointer jumping, ``p ← p[p]``).
    A pointer always names a pixel of the same region with a smaller or equal raster index, so when no link
    disagrees every region points at its first pixel; relabelling the sorted unique values gives ids ``1..n``
    in raster order of the first pixel. Each iteration costs ``O(H·W)``; the number of iterations is at most
    the longest geodesic path inside a region, and hooking with pointer jumping makes it small in practice
    (1 on a straight line, 2 on a 101×101 serpentine of geodesic length ~5,000, 6 on a random 512×512 mask).
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor

__all__ = [
    "boxes_from_masks",
    "connected_components",
    "mask_iou",
    "mask_nms",
    "nms",
    "remove_small_regions",
    "semantic_to_instances",
]

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

# Neighbour offsets (dy, dx), each followed by its opposite, so ``[::2]`` holds one direction per axis.
_OFFSETS = {
    4: ((-1, 0), (1, 0), (0, -1), (0, 1)),
    8: ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1), (-1, 1), (1, -1)),
}


def _check_connectivity(connectivity: int) -> None:
    if connectivity not in _OFFSETS:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")


def _shift(x: Tensor, dy: int, dx: int, fill: int) -> Tensor:
    """``out[y, x] = x[y + dy, x + dx]``, ``fill`` where that falls outside: ``(H, W) -> (H, W)``."""
    h, w = x.shape
    out = torch.full_like(x, fill)
    out[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = x[
        max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)
    ]
    return out


def _label_regions(values: Tensor, valid: Tensor, connectivity: int) -> tuple[Tensor, int]:
    """Label the connected regions of equal ``values`` inside ``valid``: ``(H, W) -> (H, W)`` long, ids 1..n.

    Two valid neighbouring pixels belong to the same region when their ``values`` are equal; invalid pixels
    get 0. Ids follow the raster order of each region's first pixel.
    """
    h, w = values.shape
    pixel = torch.arange(h * w, device=values.device).view(h, w)  # raster index
    # Undirected edges (src, dst) between linked neighbours, each once: one offset of every +/- pair.
    src, dst = [], []
    for dy, dx in _OFFSETS[connectivity][::2]:
        link = valid & _shift(valid, dy, dx, False) & (values == _shift(values, dy, dx, 0))  # (H, W)
        src.append(pixel[link])
        dst.append(_shift(pixel, dy, dx, 0)[link])
    src, dst = torch.cat(src), torch.cat(dst)  # (E,), (E,)
    # parent[p]: a pixel of p's region with a raster index <= p's; the roots (parent[p] == p) are the minima.
    parent = pixel.reshape(-1).clone()  # (H·W,)
    while True:
        a, b = parent[src], parent[dst]  # (E,)
        differ = a != b
        if not bool(differ.any()):
            break  # every link joins equal pointers: each region points at one root, its first pixel
        a, b = a[differ], b[differ]  # only the links that still disagree (fewer every iteration)
        low = torch.minimum(a, b)
        # Propagation (the linked pixels) and hooking (the pixels they point at), in one scatter.
        targets = torch.cat([src[differ], dst[differ], a, b])
        parent = parent.scatter_reduce(0, targets, low.repeat(4), "amin")
        while True:  # pointer jumping until every pixel points at a root
            jumped = parent[parent]
            if torch.equal(jumped, parent):
                break
            parent = jumped
    labels = torch.where(
        valid, parent.view(h, w) + 1, torch.zeros_like(pixel)
    )  # 1 + raster index of the root
    ids, relabelled = torch.unique(labels, sorted=True, return_inverse=True)  # ids[0] == 0 if any background
    if ids.numel() and ids[0] != 0:
        relabelled = relabelled + 1  # no background pixel: shift so that ids start at 1
        n = ids.numel()
    else:
        n = ids.numel() - 1
    return relabelled.view(h, w).long(), int(n)


def connected_components(mask: Tensor, connectivity: int = 4) -> tuple[Tensor, int]:
    """Label the connected components of a binary mask: ``(H, W) -> ((H, W) long, n)``.

    Args:
        mask: ``(H, W)`` bool tensor, or numeric with values in ``{0, 1}``. Only 2-D masks are accepted; loop
            over a batch (components never cross images anyway).
        connectivity: 4 (edge neighbours) or 8 (edge and corner neighbours).

    Returns:
        ``labels`` long ``(H, W)`` with 0 = background and components numbered ``1..n`` in raster order of their
        first pixel (same numbering as ``scipy.ndimage.label``), and ``n``.
    """
    _check_connectivity(connectivity)
    if not isinstance(mask, Tensor) or mask.ndim != 2:
        found = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a 2-D (H, W) tensor, got {found}; loop over a batch")
    if mask.dtype != torch.bool:
        if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
            bad = mask[(mask != 0) & (mask != 1)].unique()[:5].tolist()
            raise ValueError(f"mask must be bool or hold only 0 and 1, found values {bad}")
        mask = mask != 0
    if mask.numel() == 0:
        return torch.zeros(mask.shape, dtype=torch.long, device=mask.device), 0
    return _label_regions(torch.zeros(mask.shape, dtype=torch.long, device=mask.device), mask, connectivity)


def _check_class_map(class_map: Tensor, name: str = "class_map") -> None:
    if not isinstance(class_map, Tensor) or class_map.ndim != 2 or class_map.dtype not in _INTEGER_DTYPES:
        found = (
            f"{tuple(class_map.shape)} {class_map.dtype}"
            if isinstance(class_map, Tensor)
            else type(class_map).__name__
        )
        raise ValueError(f"{name} must be a 2-D (H, W) integer tensor of class ids, got {found}")


def remove_small_regions(
    class_map: Tensor, min_size: int, connectivity: int = 4, fill: str | int = "neighbor"
) -> Tensor:
    """Replace the connected regions of each class that have fewer than ``min_size`` pixels.

    Every value of ``class_map`` is a class here, ``255`` (ignore) included. A region is a connected component
    of one class value.

    Args:
        class_map: ``(H, W)`` integer class ids.
        min_size: regions with ``< min_size`` pixels are replaced; ``0`` or ``1`` keeps everything.
        connectivity: 4 or 8, for the regions and for what "bordering" means.
        fill: an int writes that value (e.g. 0 or 255) into small regions; ``"neighbor"`` writes the most
            frequent class among the pixels that border the region (each bordering pixel counted once) and that
            are not themselves in a small region; ties go to the smallest class id; a region with no such
            neighbour gets 0.

    Returns:
        A new ``(H, W)`` map of the same dtype.
    """
    _check_class_map(class_map)
    _check_connectivity(connectivity)
    if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 0:
        raise ValueError(f"min_size must be an integer >= 0, got {min_size!r}")
    if not (fill == "neighbor" or (isinstance(fill, int) and not isinstance(fill, bool))):
        raise ValueError(f"fill must be 'neighbor' or an int class id, got {fill!r}")
    if class_map.numel() == 0:
        return class_map.clone()

    values = class_map.long()
    regions, n = _label_regions(
        values, torch.ones_like(values, dtype=torch.bool), connectivity
    )  # (H, W), 1..n
    sizes = torch.bincount(regions.view(-1), minlength=n + 1)  # (n + 1,), sizes[0] unused
    small = sizes < min_size  # (n + 1,)
    small[0] = False
    in_small = small[regions]  # (H, W) bool
    if not bool(in_small.any()):
        return class_map.clone()
    if fill != "neighbor":
        return torch.where(in_small, torch.full_like(class_map, fill), class_map)

    h, w = values.shape
    pixel = torch.arange(h * w, device=values.device).view(h, w)
    # (region of a small-region pixel, raster index of a kept neighbour) pairs, for every offset.
    pairs = []
    for dy, dx in _OFFSETS[connectivity]:
        neighbour_region = _shift(regions, dy, dx, 0)  # 0 outside the image
        neighbour_kept = (neighbour_region > 0) & ~small[neighbour_region]
        hit = in_small & neighbour_kept
        pairs.append(torch.stack([regions[hit], _shift(pixel, dy, dx, 0)[hit]], dim=1))  # (m, 2)
    pairs = torch.unique(torch.cat(pairs), dim=0)  # each bordering pixel once per region
    out = values.clone()
    region_fill = torch.zeros(n + 1, dtype=torch.long, device=values.device)  # fallback 0
    if pairs.numel():
        border_class = values.view(-1)[pairs[:, 1]]  # (m,)
        classes, class_idx = torch.unique(border_class, return_inverse=True)  # sorted: ties -> smallest id
        counts = torch.zeros(
            n + 1, classes.numel(), dtype=torch.long, device=values.device
        )  # (regions, classes)
        counts.index_put_((pairs[:, 0], class_idx), torch.ones_like(class_idx), accumulate=True)
        has_border = counts.sum(1) > 0
        region_fill = torch.where(has_border, classes[counts.argmax(1)], region_fill)  # argmax: first max
    out = torch.where(in_small, region_fill[regions], out)
    return out.to(class_map.dtype)


def semantic_to_instances(
    class_map: Tensor,
    ignore_index: int | None = 255,
    background: int | None = 0,
    min_size: int = 1,
    connectivity: int = 8,
) -> dict[str, Tensor]:
    """Split a semantic map into instances: one per connected region of each non-background, non-ignore class.

    Args:
        class_map: ``(H, W)`` integer class ids.
        ignore_index: value that yields no instance (``None``: none ignored).
        background: class that yields no instance (``None``: every class does).
        min_size: regions with fewer pixels yield no instance.
        connectivity: 4 or 8.

    Returns:
        torchvision's detection-target format, instances in raster order of their first pixel:
        ``masks`` uint8 ``(N, H, W)``, ``labels`` int64 ``(N,)`` (the class), ``boxes`` float32 ``(N, 4)``
        ``x1, y1, x2, y2`` with ``x2 = max x + 1`` and ``y2 = max y + 1`` (exclusive pixel edges).
    """
    _check_class_map(class_map)
    _check_connectivity(connectivity)
    if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 1:
        raise ValueError(f"min_size must be an integer >= 1, got {min_size!r}")
    h, w = class_map.shape
    values = class_map.long()
    valid = torch.ones_like(values, dtype=torch.bool)
    for excluded in (ignore_index, background):
        if excluded is not None:
            valid &= values != excluded
    device = class_map.device
    if values.numel() == 0 or not bool(valid.any()):
        return {
            "masks": torch.zeros(0, h, w, dtype=torch.uint8, device=device),
            "labels": torch.zeros(0, dtype=torch.int64, device=device),
            "boxes": torch.zeros(0, 4, dtype=torch.float32, device=device),
        }
    regions, n = _label_regions(values, valid, connectivity)  # (H, W), 0 = no instance
    sizes = torch.bincount(regions.view(-1), minlength=n + 1)  # (n + 1,)
    keep = torch.nonzero(sizes[1:] >= min_size).squeeze(1) + 1  # (N,) region ids, ascending = raster order
    masks = regions[None] == keep[:, None, None]  # (N, H, W) bool
    region_class = torch.zeros(n + 1, dtype=torch.long, device=device)
    region_class[regions.view(-1)] = values.view(-1)  # every pixel of a region holds the same class
    return {"masks": masks.to(torch.uint8), "labels": region_class[keep], "boxes": boxes_from_masks(masks)}


def boxes_from_masks(masks: Tensor) -> Tensor:
    """``(N, H, W)`` non-empty masks -> float boxes ``(N, 4)`` ``x1, y1, x2, y2`` with exclusive ``x2, y2``
    (``torchvision.ops.masks_to_boxes`` gives the inclusive maximum; segen's detection targets use pixel edges)."""
    boxes = torchvision.ops.masks_to_boxes(masks).float()  # (N, 4), inclusive max
    boxes[:, 2:] += 1  # exclusive pixel edges
    return boxes


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, labels: Tensor | None = None) -> Tensor:
    """Box non-maximum suppression: ``torchvision.ops.nms``, class-aware ``batched_nms`` when ``labels`` is given.

    Args:
        boxes: ``(N, 4)`` float ``x1, y1, x2, y2``.
        scores: ``(N,)``.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scoring box is ``> iou_threshold``.
        labels: optional ``(N,)`` integer classes; boxes of different classes never suppress each other.

    Returns:
        Indices of the kept boxes, int64, by descending score.

    segen adds only the shape checks with readable messages.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) x1, y1, x2, y2, got {tuple(boxes.shape)}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(
            f"scores must be (N,) = ({boxes.shape[0]},) to match boxes, got {tuple(scores.shape)}"
        )
    if labels is None:
        return torchvision.ops.nms(boxes, scores, float(iou_threshold))
    if labels.shape != (boxes.shape[0],):
        raise ValueError(
            f"labels must be (N,) = ({boxes.shape[0]},) to match boxes, got {tuple(labels.shape)}"
        )
    return torchvision.ops.batched_nms(boxes, scores, labels, float(iou_threshold))


def _flat_masks(masks: Tensor, name: str) -> Tensor:
    """``(N, H, W)`` bool/integer (non-zero = in) or float (``> 0.5`` = in) -> ``(N, H·W)`` float."""
    if not isinstance(masks, Tensor) or masks.ndim != 3:
        found = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"{name} must be (N, H, W) masks, got {found}")
    binary = masks > 0.5 if masks.is_floating_point() else masks != 0
    # Counts up to 2**24 are exact in float32; use float64 beyond.
    dtype = torch.float32 if masks.shape[1] * masks.shape[2] <= 2**24 else torch.float64
    return binary.flatten(1).to(dtype)


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of two sets of masks: ``(N, H, W), (M, H, W) -> (N, M)`` float.

    Masks are bool/integer (non-zero = inside) or float probabilities thresholded at 0.5. Intersections come
    from one matrix product of the flattened masks. Two empty masks have IoU 0. (No torchvision counterpart.)
    """
    fa, fb = _flat_masks(a, "a"), _flat_masks(b, "b")  # (N, P), (M, P)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"a and b must have the same mask size, got {tuple(a.shape[1:])} and {tuple(b.shape[1:])}"
        )
    inter = fa @ fb.T  # (N, M)
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter  # (N, M)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter)).float()


def mask_nms(masks: Tensor, scores: Tensor, iou_threshold: float, labels: Tensor | None = None) -> Tensor:
    """Greedy non-maximum suppression on mask IoU (torchvision has only box NMS).

    Masks are visited by descending score; a mask is kept unless its IoU with an already kept mask (of the same
    class, when ``labels`` is given) is ``> iou_threshold`` — the same rule as ``torchvision.ops.nms``.

    Args:
        masks: ``(N, H, W)`` bool/uint8, or float probabilities (thresholded at 0.5).
        scores: ``(N,)``.
        iou_threshold: suppression threshold.
        labels: optional ``(N,)`` integer classes for class-aware suppression.

    Returns:
        Indices of the kept masks, int64, by descending score.

    Cost: one ``(N, N)`` IoU matrix (a matrix product over ``H·W``), then a loop over the ``N`` masks.
    """
    if not isinstance(masks, Tensor) or masks.ndim != 3:
        found = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"masks must be (N, H, W), got {found}")
    n = masks.shape[0]
    if scores.shape != (n,):
        raise ValueError(f"scores must be (N,) = ({n},) to match masks, got {tuple(scores.shape)}")
    if labels is not None and labels.shape != (n,):
        raise ValueError(f"labels must be (N,) = ({n},) to match masks, got {tuple(labels.shape)}")
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=masks.device)
    order = torch.argsort(scores, descending=True, stable=True)  # (N,)
    # float32 IoU compared with the threshold in float64, as torchvision's nms kernel does, so that ties at the
    # threshold (e.g. IoU 3/20 vs 0.15) are decided the same way as box NMS.
    over = mask_iou(masks[order], masks[order]).double() > float(iou_threshold)  # (N, N), in score order
    if labels is not None:
        sorted_labels = labels[order]
        over &= sorted_labels[:, None] == sorted_labels[None, :]
    over = over.cpu()  # one transfer, then a cheap loop
    suppressed = torch.zeros(n, dtype=torch.bool)
    kept = []
    for i in range(n):
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed |= over[i]
    return order[torch.tensor(kept, dtype=torch.long, device=order.device)]
