"""Pretrained vision encoders for the models: the `vision_weights` a model config names, found, checked and loaded.

A file is a safetensors file of the vision encoder's weights with metadata: its format, the architecture it fits
(`vision_signature`) and how it was made (`about`). `vision_weights="synground:<name>"` names one shipped in the
package (synground/assets); the shapes world's pretraining (synground.shapes.pretraining) makes them. This module
knows nothing of any world: it reads and writes the files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from synground.files import write_atomic
from synground.models.base import GroundingModel
from synground.models.checkpoints import resize_position_embedding

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PACKAGED = "synground:"  # vision_weights="synground:<name>": ASSETS/<name>_<architecture>.safetensors
FORMER_NAMES = {"shapes": "both_dense"}  # what configs and checkpoints from before the disjoint world call an encoder
FORMAT = "synground-vision-1"


def vision_weights_path(vision_weights: str, architecture: str) -> Path:
    """The file a model's `vision_weights` names: a path, or "synground:<name>" for the one shipped in the package."""
    if vision_weights.startswith(PACKAGED):
        name = vision_weights.removeprefix(PACKAGED)
        name = FORMER_NAMES.get(name, name)
        return ASSETS / f"{name}_{architecture}.safetensors"
    return Path(vision_weights)


def vision_signature(net: GroundingModel) -> dict[str, Any]:
    """What a vision encoder file was made for (kept as metadata): the model class and the input size."""
    return {"model": type(net).__name__, "image_size": net.image_size}


def load_vision_weights(net: GroundingModel, vision_weights: str) -> Path:
    """Replace `net`'s vision encoder with pretrained weights; an error names the file and what does not fit.

    As for the released checkpoints, a file pretrained at another image size loads with its position embeddings
    resized (bicubic); every other weight must match in name and shape.
    """
    path = vision_weights_path(vision_weights, net.architecture)
    command = f"synground-pretrain-encoder model=... --output {path}"
    if path.is_dir():
        raise IsADirectoryError(
            f"vision_weights={vision_weights!r}: {path} is a folder, not a weights file; give the .safetensors file "
            f"made by `{command}`"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"vision_weights={vision_weights!r}: {path} does not exist; make it with `{command}`, or set "
            "model.net.vision_weights=null to start from random weights"
        )
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            weights = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"vision_weights={vision_weights!r}: {path} is not a whole safetensors file ({error}); make it again with `{command}`"
        ) from error
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a synground vision encoder (metadata format {metadata.get('format')!r})")
    made_for = json.loads(metadata["signature"])
    if made_for["model"] != type(net).__name__:
        raise ValueError(f"{path} holds a {made_for['model']} vision encoder, not a {type(net).__name__} one")
    expected = net.vision_encoder.state_dict()
    for name, value in weights.items():
        target = expected.get(name)
        if target is not None and value.ndim == 3 and target.ndim == 3 and value.shape[::2] == target.shape[::2]:
            weights[name] = resize_position_embedding(value, math.isqrt(target.shape[1] - 1))
    misfits = [
        f"{name}: file {list(weights[name].shape) if name in weights else 'none'}, model "
        f"{list(expected[name].shape) if name in expected else 'none'}"
        for name in sorted(set(weights) | set(expected))
        if name not in weights or name not in expected or weights[name].shape != expected[name].shape
    ]
    if misfits:
        raise ValueError(
            f"{path} was pretrained for another vision encoder ({len(misfits)} weights differ, e.g. "
            f"{'; '.join(misfits[:3])}): set model.net.vision_weights=null, or pretrain one for this model with "
            f"`{command}`"
        )
    net.vision_encoder.load_state_dict(weights)
    return path


def save_vision_weights(net: GroundingModel, path: Path, about: dict[str, Any]) -> None:
    """The encoder's weights with its signature and `about` (how it was made) as metadata; written whole or not at all,
    and the same bytes for the same weights and metadata (see `canonical_safetensors`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {name: value.detach().cpu().contiguous() for name, value in net.vision_encoder.state_dict().items()}
    metadata = {"format": FORMAT, "signature": json.dumps(vision_signature(net)), "about": json.dumps(about)}
    write_atomic(path, canonical_safetensors(save(weights, metadata=metadata)))


def canonical_safetensors(data: bytes) -> bytes:
    """`data` (a safetensors file) with its JSON header's keys sorted. safetensors writes the header's maps in hash
    order, which changes from process to process, so one set of weights and metadata gives files whose sha256
    differs; sorted, the file is a function of its content. The header keeps its length (the same keys and values,
    reordered), so the tensor data and its offsets are untouched."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if len(canonical) > size:
        raise AssertionError(f"a sorted safetensors header grew from {size} to {len(canonical)} bytes")
    return data[:8] + canonical.ljust(size, b" ") + data[8 + size :]
