"""A vision encoder that knows the shapes world's objects before it learns grounding: the offline analogue of the
ImageNet-pretrained ViT that ALBEF (DeiT) and BLIP start from.

Trained from random weights by ITM and AMC alone, the tiny model's ViT learns colour in a hundred steps but not shape
in thousands (benchmarks/shapes_diagnosis.py: a linear probe reads a shape's kind off its features 34% of the time),
so it grounds "the red circle" on any red shape. A ViT learns what a circle is only slowly even when told directly:
shape is a configuration of several 8 px patches, not a property of one. This module teaches it once, with dense
labels (each patch's shape kind and colour, or background) on scenes of both styles drawn from their own seed range,
and saves the encoder alone: no phrase, box-to-text pairing or grounding loss is involved.

    python -m synground.models.pretraining                    # the packaged BLIP encoder (about 8 min on 2 cores)
    python -m synground.models.pretraining model=albef_tiny   # the packaged ALBEF one

The file keeps the encoder's weights and, as metadata, the architecture it fits and how it was made;
`load_vision_weights` refuses a file made for another architecture, naming both.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from synground.data.transforms import normalize_images
from synground.generation.shapes import COLOURS, SHAPES, STYLES, ShapesGenerator, scene_shapes, shape_mask
from synground.models.base import GroundingModel
from synground.models.checkpoints import resize_position_embedding

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PACKAGED = "synground:"  # vision_weights="synground:<name>": ASSETS/<name>_<architecture>.safetensors
FORMAT = "synground-vision-1"
SEED_BASE = 1 << 40  # scenes 2^40 + i: far from the held-out splits (1e6..3e6) and the mixing study's pool (1e7)
MIN_COVER = 0.3  # a patch is labelled with a shape that covers at least this fraction of it


def vision_weights_path(vision_weights: str, architecture: str) -> Path:
    """The file a model's `vision_weights` names: a path, or "synground:<name>" for the one shipped in the package."""
    if vision_weights.startswith(PACKAGED):
        return ASSETS / f"{vision_weights.removeprefix(PACKAGED)}_{architecture}.safetensors"
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
    command = f"python -m synground.models.pretraining model=... --output {path}"
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


def dense_targets(samples: list, image_size: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch of a [grid, grid] map: the kind (1 + SHAPES index) and colour (1 + COLOURS index) of the shape
    covering at least MIN_COVER of it, 0 for background; [B, grid * grid] each."""
    cell = image_size // grid
    kinds = torch.zeros(len(samples), grid, grid, dtype=torch.long)
    colours = torch.zeros_like(kinds)
    for index, sample in enumerate(samples):
        for colour, kind, box in scene_shapes(sample):
            cover = shape_mask(kind, box, image_size)[: grid * cell, : grid * cell]
            cover = torch.from_numpy(cover.reshape(grid, cell, grid, cell).mean(axis=(1, 3)))
            kinds[index][cover >= MIN_COVER] = SHAPES.index(kind) + 1
            colours[index][cover >= MIN_COVER] = list(COLOURS).index(colour) + 1
    return kinds.flatten(1), colours.flatten(1)


class ShapesBatches:
    """Batches of scenes, half clean and half textured, with their dense targets; scene i has seed SEED_BASE + i."""

    def __init__(self, image_size: int, grid: int, batch_size: int):
        self.generators = [ShapesGenerator(style, image_size=image_size) for style in STYLES]
        self.image_size, self.grid, self.batch_size = image_size, grid, batch_size

    def batch(self, first: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        samples = [self.generators[i % 2].scene(f"pretrain-{first + i}", SEED_BASE + first + i) for i in range(self.batch_size)]
        images = torch.stack([torch.from_numpy(np.array(s.image.convert("RGB"))) for s in samples]).permute(0, 3, 1, 2)
        return (normalize_images(images), *dense_targets(samples, self.image_size, self.grid))


def patch_features(net: GroundingModel, images: torch.Tensor) -> torch.Tensor:
    """[B, patches, width]: the encoder's output without its [CLS] token."""
    return net.encode_images(images)[:, 1:]


def pretrain_vision(
    net: GroundingModel, steps: int = 1500, batch_size: int = 32, lr: float = 2e-3, seed: int = 0, eval_every: int = 100
) -> list[dict[str, float]]:
    """Train `net`'s vision encoder (in place) to name each patch's shape kind and colour; returns the held-out history
    (per evaluation: step, kind accuracy and colour accuracy on the patches shapes cover, loss)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        patches, width = patch_features(net, torch.zeros(1, 3, net.image_size, net.image_size)).shape[1:]
    grid = math.isqrt(patches)
    heads = torch.nn.ModuleDict(
        {"kind": torch.nn.Linear(width, len(SHAPES) + 1), "colour": torch.nn.Linear(width, len(COLOURS) + 1)}
    )
    parameters = list(net.vision_encoder.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.02)
    data = ShapesBatches(net.image_size, grid, batch_size)
    held_out = ShapesBatches(net.image_size, grid, 4 * batch_size).batch(first=-(4 * batch_size))  # seeds below the training ones
    net.train()
    history = []
    progress = tqdm(range(1, steps + 1), desc="pretraining the vision encoder", unit="step")
    for step in progress:
        images, kinds, colours = data.batch(first=(seed << 32) + step * batch_size)
        features = patch_features(net, images)
        loss = F.cross_entropy(heads["kind"](features).flatten(0, 1), kinds.flatten()) + F.cross_entropy(
            heads["colour"](features).flatten(0, 1), colours.flatten()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            history.append({"step": step, "loss": loss.item(), **evaluate(net, heads, held_out)})
            progress.set_postfix(kind=f"{history[-1]['kind_accuracy']:.1%}", colour=f"{history[-1]['colour_accuracy']:.1%}")
    return history


@torch.no_grad()
def evaluate(net: GroundingModel, heads: torch.nn.ModuleDict, batch: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Kind and colour accuracy on the patches a shape covers (background patches, most of them, left out)."""
    was_training = net.training
    net.eval()
    images, kinds, colours = batch
    features = patch_features(net, images)
    covered = kinds > 0
    result = {
        "kind_accuracy": float((heads["kind"](features).argmax(-1) == kinds)[covered].float().mean()),
        "colour_accuracy": float((heads["colour"](features).argmax(-1) == colours)[covered].float().mean()),
    }
    net.train(was_training)
    return result


def save_vision_weights(net: GroundingModel, path: Path, about: dict[str, Any]) -> None:
    """The encoder's weights with its signature and `about` (how it was made) as metadata; written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    weights = {name: value.detach().cpu().contiguous() for name, value in net.vision_encoder.state_dict().items()}
    metadata = {"format": FORMAT, "signature": json.dumps(vision_signature(net)), "about": json.dumps(about)}
    save_file(weights, str(partial), metadata=metadata)
    partial.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pretrain a tiny model's vision encoder on the shapes world.")
    parser.add_argument("overrides", nargs="*", help="train.py overrides that pick the model, e.g. model=albef_tiny")
    parser.add_argument("--experiment", default="shapes", help="the experiment whose model is built (default shapes)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="default: the packaged file the experiment's vision_weights names")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = [f"experiment={args.experiment}", *args.overrides]
    with initialize_config_dir(config_dir=str(ASSETS.parents[1] / "conf"), version_base="1.3"):
        config = compose("train", overrides=overrides)
    target = config.model.net.get("vision_weights")
    net = instantiate(config.model.net, vision_weights=None)  # the encoder being made starts from random weights
    if args.output is None and not target:
        raise ValueError(f"{' '.join(overrides)} names no vision_weights: give --output")
    output = args.output or vision_weights_path(target, net.architecture)
    start = time.perf_counter()
    history = pretrain_vision(net, args.steps, args.batch_size, args.lr, args.seed)
    about = {
        "command": "python -m synground.models.pretraining " + " ".join(argv if argv is not None else sys.argv[1:]),
        "overrides": overrides,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "minutes": round((time.perf_counter() - start) / 60, 1),
        "history": history,
    }
    save_vision_weights(net, output, about)
    final = history[-1]
    log.info(
        f"{output}: after {args.steps} steps a linear head names held-out patches' shape kind {final['kind_accuracy']:.1%}"
        f" and colour {final['colour_accuracy']:.1%} of the time ({about['minutes']} min)"
    )


if __name__ == "__main__":
    main()
