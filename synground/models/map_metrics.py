"""The map metrics of grounding papers, all read off the evaluation Grad-CAM map upsampled bicubically to the original
image size (no ReLU, no normalisation; docs/protocol.md, the pointing game). Boxes are xyxy in the original image's pixels.

- pointing game: the map's first maximum (row-major) lies strictly inside a ground-truth box (AMC's point_in_box).
- pointing game with a tolerance (TorchRay's PointingGame, 15 px): some pixel of the ground-truth region lies at a
  distance strictly below the tolerance from the point; the region is the union of the boxes' pixels, ends included
  (TorchRay's voc_as_mask), so every strict hit is a tolerant hit.
- mass in box: the share of the map's positive mass (ReLU) on the pixels of that region; 0 for an all-zero map.
- box accuracy from proposals (AMC's box evaluation, GroundVLP): each candidate box scores the map's sum over its
  pixels (rows int(y0):int(y1), columns int(x0):int(x1)) over its area ** 0.5; the first candidate with the highest
  positive score is the prediction, a hit when its IoU with a ground-truth box is at least 0.5 (the refer toolkit's
  IoU that AMC uses). Where AMC's code crashes or reuses the previous item's box (no candidate, every score <= 0, as
  on an all-zero map) the item is a miss; a zero-area candidate is skipped (its score is 0/0).
- box accuracy from the map alone: `heatmap_box` (ReLU, min-max, threshold, largest 8-connected region, bounding
  rectangle), a hit at IoU 0.5 as above.
With several ground-truth boxes (Flickr30k Entities) an item hits when it hits any of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Box = Sequence[float]

TOLERANCE = 15  # pixels, TorchRay's default
PROPOSAL_ALPHA = 0.5  # AMC: a candidate's score is its mass over area ** alpha
IOU_HIT = 0.5
BOX_THRESHOLD = 0.5  # heatmap_box: the share of the normalised map's range a region's pixels reach


def upsampled(maps: torch.Tensor, sizes: torch.Tensor) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(indices, [n, H, W] float maps) per original size: `maps` [B, h, w] upsampled bicubically to `sizes` [B, 2]
    (H, W); items of one size are upsampled together (COCO and Flickr30k repeat a few sizes often)."""
    size_list = [tuple(size) for size in sizes.tolist()]
    for height, width in dict.fromkeys(size_list):
        group = [index for index, size in enumerate(size_list) if size == (height, width)]
        yield group, F.interpolate(maps[group][:, None].float(), size=(height, width), mode="bicubic", align_corners=False)[:, 0]


def first_maxima(heat: torch.Tensor) -> torch.Tensor:
    """[n, 2] long (x, y) of the first maximum in row-major order of each [n, H, W] map."""
    flat_index = heat.flatten(1).argmax(dim=1).cpu()  # torch returns the first maximum in row-major order
    width = heat.shape[-1]
    return torch.stack([flat_index % width, flat_index // width], dim=1)


def predicted_points(maps: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """[B, 2] long (x, y): the pointing game's point of each map in its original image's pixel coordinates."""
    points = torch.zeros(len(maps), 2, dtype=torch.long)
    for group, heat in upsampled(maps, sizes):
        points[group] = first_maxima(heat)
    return points


def point_in_boxes(point: Sequence[float], boxes: Iterable[Box]) -> bool:
    """The pointing game's hit: does (x, y) lie strictly inside any of the xyxy boxes?"""
    x, y = point
    return any(x0 < x < x1 and y0 < y < y1 for x0, y0, x1, y1 in boxes)


def pointing_game_hits(maps: torch.Tensor, boxes: list[torch.Tensor], sizes: torch.Tensor) -> torch.Tensor:
    """[B] bool: does each map's predicted point lie strictly inside any of that item's boxes?"""
    points = predicted_points(maps, sizes).tolist()
    return torch.tensor([point_in_boxes(p, b.tolist()) for p, b in zip(points, boxes)], dtype=torch.bool)


def box_pixels(box: Box, height: int, width: int) -> tuple[int, int, int, int] | None:
    """(x_first, y_first, x_last, y_last): the integer pixels x0 <= x <= x1, y0 <= y <= y1 inside the image, or None."""
    x0, y0, x1, y1 = box
    left, top = max(math.ceil(x0), 0), max(math.ceil(y0), 0)
    right, bottom = min(math.floor(x1), width - 1), min(math.floor(y1), height - 1)
    return (left, top, right, bottom) if left <= right and top <= bottom else None


def box_mask(boxes: Iterable[Box], height: int, width: int) -> torch.Tensor:
    """[H, W] bool: the union of the boxes' pixels (`box_pixels`)."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for box in boxes:
        pixels = box_pixels(box, height, width)
        if pixels is not None:
            left, top, right, bottom = pixels
            mask[top : bottom + 1, left : right + 1] = True
    return mask


def tolerant_hit(point: Sequence[int], boxes: Iterable[Box], height: int, width: int, tolerance: float = TOLERANCE) -> bool:
    """TorchRay's test: is some pixel of the boxes' region at a distance strictly below `tolerance` from (x, y)?

    The nearest pixel of a box's pixel rectangle is the point clamped to it, so no [H, W] mask is built.
    """
    x, y = point
    for box in boxes:
        pixels = box_pixels(box, height, width)
        if pixels is not None:
            left, top, right, bottom = pixels
            dx, dy = x - min(max(x, left), right), y - min(max(y, top), bottom)
            if dx * dx + dy * dy < tolerance * tolerance:
                return True
    return False


def mass_in_boxes(heat: torch.Tensor, boxes: Iterable[Box]) -> float:
    """Share of the positive mass of `heat` [H, W] on the boxes' pixels; 0.0 when the map has no positive mass."""
    positive = heat.clamp(min=0)
    total = float(positive.sum())
    if total <= 0:
        return 0.0
    return float(positive[box_mask(boxes, *heat.shape)].sum()) / total


def refer_iou(a: Box, b: Box) -> float:
    """IoU as the refer toolkit computes it (AMC's computeIoU) for xyxy boxes: on the xywh form, the intersection counts
    pixels x..x+w-1 and is empty unless it spans more than one pixel each way; the union uses w * h. 0 for an empty
    union (where that code divides by zero)."""
    ax, ay, aw, ah = a[0], a[1], a[2] - a[0], a[3] - a[1]
    bx, by, bw, bh = b[0], b[1], b[2] - b[0], b[3] - b[1]
    left, top = max(ax, bx), max(ay, by)
    right, bottom = min(ax + aw - 1, bx + bw - 1), min(ay + ah - 1, by + bh - 1)
    inter = (right - left + 1) * (bottom - top + 1) if left < right and top < bottom else 0
    union = aw * ah + bw * bh - inter
    return float(inter) / union if union > 0 else 0.0


def best_candidate(heat: torch.Tensor, candidates: Sequence[Box], alpha: float = PROPOSAL_ALPHA) -> int | None:
    """AMC's ranking: the index of the first candidate with the highest score sum(heat[box]) / area ** alpha, if that
    score is positive (AMC starts from a best score of 0 and replaces it only by a higher one); None otherwise."""
    best, best_score = None, 0.0
    for index, (x0, y0, x1, y1) in enumerate(candidates):
        area = (x1 - x0) * (y1 - y0)
        if area <= 0:
            continue
        score = float(heat[int(y0) : int(y1), int(x0) : int(x1)].sum()) / area**alpha
        if score > best_score:
            best, best_score = index, score
    return best


def normalise_heatmap(heat: torch.Tensor) -> torch.Tensor:
    """[..., H, W] -> ReLU, then min-max to [0, 1] per map (an all-zero map stays zero)."""
    heat = heat.clamp(min=0)
    low = heat.flatten(-2).min(-1).values[..., None, None]
    high = heat.flatten(-2).max(-1).values[..., None, None]
    return (heat - low) / (high - low).clamp(min=1e-7)


def heatmap_box(heat: torch.Tensor, threshold: float = BOX_THRESHOLD) -> tuple[float, float, float, float] | None:
    """A box read off the map alone: the pixels where the normalised map (`normalise_heatmap`) is at least
    `threshold`, their largest 8-connected region (ties: the one whose first pixel comes first in row-major order),
    and its bounding rectangle as xyxy with exclusive ends (pixels x0..x1-1), the xywh convention of the IoU. None
    when no pixel reaches the threshold (an all-zero or constant map)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"the map-box threshold must be in (0, 1], got {threshold}")
    region = (normalise_heatmap(heat) >= threshold).cpu().numpy()
    if not region.any():
        return None
    # runs of consecutive pixels per row, joined across rows where they touch (diagonals included) by union-find
    runs: list[tuple[int, int, int]] = []  # (row, first column, last column)
    parent: list[int] = []

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(a: int, b: int) -> None:  # the smaller index stays the root: a component's root is its first run
        a, b = root(a), root(b)
        parent[max(a, b)] = min(a, b)

    previous: list[int] = []
    for row in np.flatnonzero(region.any(axis=1)):
        edges = np.diff(np.concatenate([[0], region[row].astype(np.int8), [0]]))
        current = []
        for first, last in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1):
            index = len(runs)
            runs.append((int(row), int(first), int(last)))
            parent.append(index)
            for other in previous:
                other_row, other_first, other_last = runs[other]
                if other_row == row - 1 and other_first <= last + 1 and first <= other_last + 1:
                    join(index, other)
            current.append(index)
        previous = current
    components: dict[int, list[float]] = {}  # root -> [area, x_min, y_min, x_max, y_max]
    for index, (row, first, last) in enumerate(runs):
        stats = components.setdefault(root(index), [0, first, row, last, row])
        stats[0] += last - first + 1
        stats[1], stats[3] = min(stats[1], first), max(stats[3], last)
        stats[2], stats[4] = min(stats[2], row), max(stats[4], row)
    _, x_min, y_min, x_max, y_max = max(components.items(), key=lambda item: (item[1][0], -item[0]))[1]
    return (float(x_min), float(y_min), float(x_max + 1), float(y_max + 1))


def box_hit(box: Box | None, boxes: Iterable[Box], iou: float = IOU_HIT) -> bool:
    """Does `box` overlap any ground-truth box with IoU (`refer_iou`) at least `iou`? None (no box) is a miss."""
    return box is not None and any(refer_iou(box, truth) >= iou for truth in boxes)


def map_scores(
    maps: torch.Tensor,
    boxes: list[torch.Tensor],
    sizes: torch.Tensor,
    candidates: list[torch.Tensor] | None = None,
    tolerance: float = TOLERANCE,
    box_threshold: float = BOX_THRESHOLD,
) -> dict[str, torch.Tensor]:
    """Every metric per item ([B] float, 1.0 for a hit) for raw maps [B, h, w], each item's ground-truth boxes and
    original size (H, W); `box_accuracy_proposals` only with candidate boxes per item."""
    names = ["pointing_game", "pointing_game_tolerant", "mass_in_box", "box_accuracy_map"]
    names += ["box_accuracy_proposals"] if candidates is not None else []
    scores = {name: torch.zeros(len(maps)) for name in names}
    for group, heat in upsampled(maps, sizes):
        points = first_maxima(heat).tolist()
        for row, index in enumerate(group):
            truth, (height, width) = boxes[index].tolist(), heat.shape[-2:]
            scores["pointing_game"][index] = point_in_boxes(points[row], truth)
            scores["pointing_game_tolerant"][index] = tolerant_hit(points[row], truth, height, width, tolerance)
            scores["mass_in_box"][index] = mass_in_boxes(heat[row], truth)
            scores["box_accuracy_map"][index] = box_hit(heatmap_box(heat[row], box_threshold), truth)
            if candidates is not None:
                options = candidates[index].tolist()
                chosen = best_candidate(heat[row], options)
                scores["box_accuracy_proposals"][index] = box_hit(None if chosen is None else options[chosen], truth)
    return scores
