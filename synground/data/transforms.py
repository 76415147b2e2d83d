"""From a stored sample to model inputs: box cleaning, resize, flip with left/right swap, normalise, masks."""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from typing import Any, TypedDict

import numpy as np
import torch
from PIL import Image

from synground.data.schema import GroundingSample, Region, box_problem, count_skip

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """'the cup on the Left' -> 'the cup on the Right': a flipped image must keep its text true."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return other.upper()
        return other.capitalize() if word[0].isupper() else other

    return _LEFT_RIGHT.sub(swap, text)


def clean_regions(sample: GroundingSample, issues: Counter[str], min_box_size: float = 1.0) -> list[Region]:
    """Clip boxes to the image, drop malformed (not 4 finite numbers) and degenerate boxes and regions left without
    boxes; count each."""
    width, height = sample.image.size
    regions = []
    for index, region in enumerate(sample.regions):
        boxes = []
        for number, box in enumerate(region.boxes):
            if box_problem(box):  # NaN or inf would pass every bound check below
                count_skip(issues, "box_malformed", sample.key, index, number)
                continue
            x0, y0, x1, y1 = box
            clipped = [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height)]
            if clipped != list(box):
                count_skip(issues, "box_clipped", sample.key, index, number)
            if clipped[2] - clipped[0] < min_box_size or clipped[3] - clipped[1] < min_box_size:
                count_skip(issues, "box_degenerate", sample.key, index, number)
                continue
            boxes.append(clipped)
        if boxes and region.phrase.strip():
            regions.append(Region(region.phrase, boxes, region.score, region.paraphrase))
        else:
            count_skip(issues, "region_dropped", sample.key, index)
    return regions


def boxes_to_mask(boxes: list[list[float]], image_size: int, mask_size: int) -> torch.Tensor:
    """Union of xyxy boxes (in model-input pixels) as a [mask_size, mask_size] uint8 0/1 mask; a pixel counts if touched."""
    mask = torch.zeros(mask_size, mask_size, dtype=torch.uint8)
    scale = mask_size / image_size
    for x0, y0, x1, y1 in ([value * scale for value in box] for box in boxes):
        top, left = int(y0), int(x0)
        mask[top : max(top + 1, math.ceil(y1)), left : max(left + 1, math.ceil(x1))] = 1
    return mask


class GroundingTransform:
    """Turns (sample, region) into one model input item.

    Training: square resize (no crop, as the AMC reference), optional horizontal flip that mirrors boxes and swaps
    left/right in the text, and a box mask at the loss resolution. Evaluation: the same without the flip, plus the
    original size and boxes the pointing game needs. Images and masks stay uint8 here, images as [H, W, 3] (a
    quarter of the float bytes to copy, batch and transfer, and batching is a plain copy);
    `GroundingDataModule.on_after_batch_transfer` makes model input of a batch, on the GPU when there is one.
    """

    def __init__(self, image_size: int, mask_size: int | None = None, flip_prob: float = 0.5):
        self.image_size = image_size
        self.mask_size = mask_size or image_size
        self.flip_prob = flip_prob

    def __call__(self, image: Image.Image, region: Region, key: str, rng: random.Random | None = None) -> dict[str, Any]:
        return self.region_item(self.pixels(image), image.size, region, key, rng)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """[size, size, 3] uint8 of the resized image: computed once and shared by all the regions of an evaluation sample."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        return torch.from_numpy(np.array(image.resize((self.image_size, self.image_size), Image.BICUBIC)))

    def region_item(
        self,
        pixels: torch.Tensor,
        original_size: tuple[int, int],
        region: Region,
        key: str,
        rng: random.Random | None = None,
        with_mask: bool = True,
    ) -> dict[str, Any]:
        """One item from the image's `pixels`, its original (width, height) and one region; the box mask (what the
        AMC loss trains towards) only `with_mask`: evaluation scores the original boxes and never reads it."""
        width, height = original_size
        size, scale_x, scale_y = self.image_size, self.image_size / width, self.image_size / height
        boxes = [[x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y] for x0, y0, x1, y1 in region.boxes]
        text, paraphrase = region.phrase, region.paraphrase
        if rng is not None and rng.random() < self.flip_prob:
            pixels = pixels.flip(1)  # the width axis of [H, W, 3]
            boxes = [[size - x1, y0, size - x0, y1] for x0, y0, x1, y1 in boxes]
            text, paraphrase = swap_left_right(text), paraphrase and swap_left_right(paraphrase)
        item = {
            "image": pixels,
            "text": text,
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "original_size": torch.tensor([height, width]),
            "original_boxes": torch.tensor(region.boxes, dtype=torch.float32).reshape(-1, 4),
            "key": key,
        }
        if with_mask:
            item["mask"] = boxes_to_mask(boxes, self.image_size, self.mask_size)
        if paraphrase:
            item["paraphrase"] = paraphrase
        return item


def normalize_images(
    images: torch.Tensor, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD
) -> torch.Tensor:
    """[B, 3, H, W] uint8 -> float, scaled to [0, 1] and normalised per channel (CLIP's statistics by default)."""
    mean_ = torch.tensor(mean, device=images.device).view(1, 3, 1, 1) * 255
    std_ = torch.tensor(std, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean_) / std_


class GroundingBatch(TypedDict, total=False):
    """A batch as `collate` makes it (the training stream and the evaluation splits yield these). B items (one phrase
    each), U distinct images (U = B in training; in evaluation the phrases of one image share its row), S the input
    size, M the mask size, n_i the number of boxes of item i. Boxes are xyxy float32 pixels."""

    images: torch.Tensor  # [U, 3, S, S] uint8, not normalised (normalize_images does it on the device)
    image_index: torch.Tensor  # [B] int64: each item's row of `images`
    texts: list[str]  # the B phrases ("left" and "right" swapped where a training image was flipped)
    paraphrases: list[str | None]  # each phrase's paraphrase (SelfEQ), None where it has none: only when one has
    boxes: list[torch.Tensor]  # B tensors [n_i, 4]: each item's boxes in the S x S input (after a training flip)
    original_sizes: torch.Tensor  # [B, 2] int64: (height, width) of the stored image
    original_boxes: list[torch.Tensor]  # B tensors [n_i, 4]: each item's boxes in the stored image's pixels
    keys: list[str]  # the B sample keys; an evaluation item's is "<sample key>-<region index>"
    image_keys: list[str]  # the key of each item's image (its sample's key)
    masks: torch.Tensor  # [B, M, M] uint8, 1 on the pixels the item's boxes touch: training batches only
    candidate_boxes: list[torch.Tensor]  # B tensors [c_i, 4] in the stored image's pixels: splits with proposals
    synthetic: torch.Tensor  # [B] bool: which items came from a synthetic source (training batches)
    data_issues: dict[str, int]  # what was skipped before these items, by reason
    data_faults: list[str]  # training: each skip named, "<reason> <shard> <key> ..." (counted once by DataIssueCounts)


def collate(items: list[dict[str, Any]]) -> GroundingBatch:
    """Stack tensors of equal shape; boxes stay lists (each item has its own number of boxes).

    Items with the same `image_key` (the phrases of one evaluation image) share one row of `images`: the batch
    holds each image once and `image_index` [B] gives each item's row, so no image is copied, moved to the device or
    encoded once per phrase. Training items, which carry no image_key, each have their own row.

    Evaluation items carry `data_issues` (what was skipped before each): the batch carries their sum. An item with
    nothing else (what a worker skipped after its last item) adds its counts only; a batch of such items is
    `{"data_issues": ...}` alone, which `EvalLoader` keeps from the model.
    """
    issues = [item["data_issues"] for item in items if "data_issues" in item]
    items = [item for item in items if "image" in item]
    if not items:
        return {"data_issues": dict(sum((Counter(counts) for counts in issues), Counter()))}
    rows: dict[Any, int] = {}
    images, image_index = [], []
    for item in items:
        key = item.get("image_key", id(item))  # without one, an item is its own image (training flips differ)
        if key not in rows:
            rows[key] = len(images)
            images.append(item["image"])
        image_index.append(rows[key])
    batch = {
        "images": torch.stack(images).permute(0, 3, 1, 2),  # [U, 3, H, W] uint8 (channels last)
        "image_index": torch.tensor(image_index),
        "texts": [item["text"] for item in items],
        "boxes": [item["boxes"] for item in items],
        "original_sizes": torch.stack([item["original_size"] for item in items]),
        "original_boxes": [item["original_boxes"] for item in items],
        "keys": [item["key"] for item in items],
        "image_keys": [item.get("image_key", item["key"]) for item in items],
    }
    if all("candidate_boxes" in item for item in items):  # evaluation splits with proposals (data.proposals)
        batch["candidate_boxes"] = [item["candidate_boxes"] for item in items]
    if any("paraphrase" in item for item in items):  # SelfEQ's pairs: None for the items without one
        batch["paraphrases"] = [item.get("paraphrase") for item in items]
    if all("mask" in item for item in items):  # training batches; evaluation items carry none
        batch["masks"] = torch.stack([item["mask"] for item in items])
    if issues:  # evaluation items: what was skipped before each
        batch["data_issues"] = dict(sum((Counter(counts) for counts in issues), Counter()))
    return batch
