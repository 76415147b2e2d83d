"""Reading weight files safely, and comparing a state dict with a model before loading it."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class CheckpointError(ValueError):
    """A weight file that does not fit the model: missing weights, wrong shapes, or an unreadable file."""


def read_state_dict(source: str, how_to_get: str = "") -> dict[str, torch.Tensor]:
    """Tensors from a local file, an http(s) URL (cached by torch.hub) or `hf://<owner>/<repo>/<path in repo>`.

    `.safetensors` files are read with safetensors; anything else with `torch.load(weights_only=True)`, which
    refuses arbitrary pickled objects. A training checkpoint's weights under "model" or "state_dict" are unwrapped.
    """
    hint = f" {how_to_get}" if how_to_get else ""
    if source.startswith(("http://", "https://")):
        try:
            state = torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as error:  # no network, or a bad download
            raise CheckpointError(
                f"cannot download {source}: {error}. Download it where there is network access and "
                f"pass the local file instead.{hint}"
            ) from error
        return unwrap_state_dict(state, source)
    if source.startswith("hf://"):
        from huggingface_hub import hf_hub_download

        owner, repo, *path = source.removeprefix("hf://").split("/")
        if not path:
            raise CheckpointError(f"{source}: expected hf://<owner>/<repo>/<file in the repo>")
        try:
            source = hf_hub_download(f"{owner}/{repo}", "/".join(path))
        except Exception as error:  # huggingface_hub raises several unrelated types when offline or not found
            raise CheckpointError(f"cannot fetch {source} from the Hugging Face Hub: {error}.{hint}") from error
    path = Path(source).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}.{hint}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds Python objects besides tensors, which are not loaded from untrusted files. "
            "If you trust it, re-save only its weights: torch.save(torch.load(path, weights_only=False)"
            f"['model'], 'weights.pth'). Details: {error}"
        ) from error
    return unwrap_state_dict(state, str(path))


def unwrap_state_dict(state: dict, name: str) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    if not state or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(f"{name} is not a state dict of tensors (top-level keys: {list(state)[:8]})")
    return state


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], name: str, shown: int = 8) -> list[str]:
    """Raise CheckpointError naming the first wrong shapes or missing weights; return the unexpected keys."""
    expected = model.state_dict()
    mismatched = [
        f"{key}: file {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if mismatched:
        raise CheckpointError(
            f"{name} does not fit this model ({len(mismatched)} weights of another shape; "
            f"another architecture or size?): " + "; ".join(mismatched[:shown])
        )
    missing = [key for key in expected if key not in state_dict]
    if missing:
        raise CheckpointError(
            f"{name} lacks {len(missing)} of the model's {len(expected)} weights, e.g. " + ", ".join(missing[:shown])
        )
    return [key for key in state_dict if key not in expected]


def resize_position_embedding(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """[1, 1 + g*g, D] -> [1, 1 + grid*grid, D], patch positions resized bicubically, [CLS] kept (ALBEF's rule)."""
    old = math.isqrt(pos_embed.shape[1] - 1)
    if old == grid:
        return pos_embed
    patches = pos_embed[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([pos_embed[:, :1], patches.permute(0, 2, 3, 1).flatten(1, 2).to(pos_embed.dtype)], dim=1)
