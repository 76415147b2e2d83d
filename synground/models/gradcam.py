"""Grad-CAM on one cross-attention layer (docs/protocol.md, Grad-CAM conventions): capture, combine, normalise."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class _Captured:
    value: torch.Tensor | None = None


@contextmanager
def capture_attention(attention_module: nn.Module) -> Iterator[_Captured]:
    """Keep the attention probabilities (after softmax, before dropout) that `attention_module` returns second."""
    captured = _Captured()

    def hook(module, args, output):
        captured.value = output[1]

    handle = attention_module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def attention_gradcam(attention: torch.Tensor, grad: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """cam = attention * relu(grad) * text_mask, image [CLS] dropped, mean over heads then text tokens -> [B, g, g].

    attention and grad are [B, heads, L_text, 1 + g*g] for a square g x g patch grid; text_mask [B, L_text] marks the
    tokens averaged (`GroundingModel.gradcam_tokens`). The mean divides by the number of tokens marked, as LAVIS's
    BLIP recipe does; AMC's ALBEF recipe divides by the padded length, which only rescales each map by a positive
    factor (same argmax, same min-max normalised map): dividing by the real tokens makes a batch give the same maps
    as its samples one at a time. A row with no token marked gets an all-zero map.
    """
    mask = text_mask.to(attention.dtype)
    cam = attention[..., 1:] * grad[..., 1:].clamp(min=0) * mask[:, None, :, None]
    cam = cam.mean(dim=1).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1)
    side = math.isqrt(cam.shape[1])
    if side * side != cam.shape[1]:
        raise ValueError(f"{cam.shape[1]} image patches do not form a square grid: give square images")
    return cam.reshape(attention.shape[0], side, side)


def normalise_cam(cam: torch.Tensor, size: int, eps: float = 1e-7) -> torch.Tensor:
    """Training map: ReLU, per-sample min-max to [0, 1], bilinear upsample to [B, size, size]."""
    cam = cam.clamp(min=0)
    flat = cam.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    cam = (cam - low[:, None, None]) / (high - low + eps)[:, None, None]
    return F.interpolate(cam[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
