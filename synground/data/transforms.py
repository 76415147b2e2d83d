"""From a stored sample to model inputs: box cleaning, resize, flip with left/right swap, normalise, masks."""

from __future__ import annotations

from collections import Counter
import math
import random
import re
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image

from synground.data.schema import GroundingSample, Region

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
    """Clip boxes to the image, drop degenerate boxes and regions left without boxes; count each."""
    width, height = sample.image.size
    regions = []
    for region in sample.regions:
        boxes = []
        for box in region.boxes:
            if len(box) != 4:
                issues["box_malformed"] += 1
                continue
            x0, y0, x1, y1 = box
            clipped = [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height)]
            if clipped != list(box):
                issues["box_clipped"] += 1
            if clipped[2] - clipped[0] < min_box_size or clipped[3] - clipped[1] < min_box_size:
                issues["box_degenerate"] += 1
                continue
            boxes.append(clipped)
        if boxes and region.phrase.strip():
            regions.append(Region(region.phrase, boxes, region.score))
        else:
            issues["region_dropped"] += 1
    return regions


def boxes_to_mask(boxes: torch.Tensor, image_size: int, mask_size: int) -> torch.Tensor:
    """Union of xyxy boxes (in model-input pixels) as a [mask_size, mask_size] float mask; a pixel counts if touched."""
    mask = torch.zeros(mask_size, mask_size)
    scale = mask_size / image_size
    for x0, y0, x1, y1 in (boxes * scale).tolist():
        top, left = int(y0), int(x0)
        mask[top : max(top + 1, math.ceil(y1)), left : max(left + 1, math.ceil(x1))] = 1.0
    return mask


class GroundingTransform:
    """Turns (sample, region) into one model input item.

    Training: square resize (no crop, as the AMC reference), optional horizontal flip that mirrors boxes and swaps
    left/right in the text, CLIP normalisation, and a box mask at the loss resolution. Evaluation: the same without
    the flip, plus the original size and boxes the pointing game needs.
    """

    def __init__(self, image_size: int, mask_size: int | None = None, flip_prob: float = 0.5,
                 mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD):
        self.image_size = image_size
        self.mask_size = mask_size or image_size
        self.flip_prob = flip_prob
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image: Image.Image, region: Region, key: str, rng: random.Random | None = None) -> dict[str, Any]:
        width, height = image.size
        pixels = TF.to_tensor(image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC))
        original_boxes = torch.tensor(region.boxes, dtype=torch.float32).reshape(-1, 4)
        scale = torch.tensor([self.image_size / width, self.image_size / height] * 2)
        boxes = original_boxes * scale
        text = region.phrase
        if rng is not None and rng.random() < self.flip_prob:
            pixels = pixels.flip(-1)
            boxes = torch.stack([self.image_size - boxes[:, 2], boxes[:, 1], self.image_size - boxes[:, 0], boxes[:, 3]], 1)
            text = swap_left_right(text)
        return {
            "image": TF.normalize(pixels, self.mean, self.std),
            "text": text,
            "boxes": boxes,
            "mask": boxes_to_mask(boxes, self.image_size, self.mask_size),
            "original_size": torch.tensor([height, width]),
            "original_boxes": original_boxes,
            "key": key,
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of equal shape; boxes stay lists (each item has its own number of boxes)."""
    return {
        "images": torch.stack([item["image"] for item in items]),
        "texts": [item["text"] for item in items],
        "boxes": [item["boxes"] for item in items],
        "masks": torch.stack([item["mask"] for item in items]),
        "original_sizes": torch.stack([item["original_size"] for item in items]),
        "original_boxes": [item["original_boxes"] for item in items],
        "keys": [item["key"] for item in items],
        "image_keys": [item.get("image_key", item["key"]) for item in items],  # equal keys: identical images
    }
