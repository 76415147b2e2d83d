"""A vision encoder that knows shapes before it learns grounding: the offline analogue of the ImageNet-pretrained ViT
that ALBEF (DeiT) and BLIP start from.

Trained from random weights by ITM and AMC alone, the tiny model's ViT learns colour in a hundred steps but not shape
in thousands (benchmarks/shapes_diagnosis.py: a linear probe reads a shape's kind off its features 34% of the time),
so it grounds "the red circle" on any red shape. A ViT learns what a circle is only slowly even when told directly:
shape is a configuration of several 8 px patches, not a property of one. This module teaches it once, on one of two
pretraining worlds, and saves the encoder alone: no phrase, box-to-text pairing or grounding loss is involved.

- `--world disjoint` (the ImageNet analogue): the sketch world (generation.shapes.sketch_scene), whose style neither
  study domain shares (gradient backgrounds with speckles, hatched shapes of random colours, wider sizes), with a
  kind label per patch (`--labels dense`) or image-level labels (`--labels image`: which kinds the image holds, read
  off the highest of the patches' logits). It names no colour. Image-level labels learn their own task (97% of
  held-out presence calls right) but transfer little to the study's textured style (docs/mixing_study_plan.md).
- `--world both` (the labelled upper bound): scenes of both study styles, clean and textured, with each patch's
  kind and colour (`--labels dense`): the study's "real" domain is then partly learnt before the study starts.

    synground-pretrain-encoder --world disjoint --labels dense [model=albef_tiny] [--seed S]

The run is deterministic: seeded before the model is built, deterministic kernels, one thread by default, and no
clock in the file, so one command gives one file byte for byte (synground/assets/manifest.json records the shipped
files' commands and digests; `python tools/assets.py` checks them). The file keeps the encoder's weights and, as
metadata, the architecture it fits and how it was made, with linear probes of what it knows of the study domains
(`probe_transfer`); `load_vision_weights` refuses a file made for another architecture, naming both.
"""

from __future__ import annotations

from synground.extras import require

require("train", "synground.shapes.pretraining (synground-pretrain-encoder)")

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from synground.conf import CONFIG_DIR
from synground.data.schema import GroundingSample
from synground.data.transforms import normalize_images
from synground.models.base import GroundingModel
from synground.models.encoders import PACKAGED, save_vision_weights, vision_weights_path
from synground.shapes.world import COLOURS, SHAPES, STYLES, ShapesGenerator, scene_shapes, shape_mask, sketch_scene

log = logging.getLogger(__name__)


WORLDS = ("disjoint", "both")
LABELS = ("image", "dense")
SEED_BASE = 1 << 40  # scenes 2^40 + i: far from the held-out splits (1e6..3e6) and the mixing study's pool (1e7)
MIN_COVER = 0.3  # a patch is labelled with a shape that covers at least this fraction of it


def dense_targets(
    scenes: list[list[tuple[str, Sequence[float], str | None]]], image_size: int, grid: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch of a [grid, grid] map: the kind (1 + SHAPES index) and colour (1 + COLOURS index, 0 where the world
    names none) of the shape covering at least MIN_COVER of it, 0 for background; [B, grid * grid] each. `scenes`
    holds each scene's (kind, xyxy box, colour name or None) per shape."""
    cell = image_size // grid
    kinds = torch.zeros(len(scenes), grid, grid, dtype=torch.long)
    colours = torch.zeros_like(kinds)
    for index, shapes in enumerate(scenes):
        for kind, box, colour in shapes:
            cover = shape_mask(kind, box, image_size)[: grid * cell, : grid * cell]
            cover = torch.from_numpy(cover.reshape(grid, cell, grid, cell).mean(axis=(1, 3)))
            kinds[index][cover >= MIN_COVER] = SHAPES.index(kind) + 1
            colours[index][cover >= MIN_COVER] = 0 if colour is None else list(COLOURS).index(colour) + 1
    return kinds.flatten(1), colours.flatten(1)


class PretrainingBatch(NamedTuple):
    images: torch.Tensor  # [B, 3, H, W], normalised
    kinds: torch.Tensor  # [B, patches]: 1 + SHAPES index of the shape covering each patch, 0 for background
    colours: torch.Tensor  # [B, patches]: 1 + COLOURS index likewise; all 0 in a world without named colours
    present: torch.Tensor  # [B, len(SHAPES)] float: which kinds the image holds (its image-level labels)


class PretrainingBatches:
    """Batches of a pretraining world; scene i has seed SEED_BASE + i.

    "disjoint": the sketch world (generation.shapes.sketch_scene), in neither study domain's style, no colour names.
    "both": half clean and half textured scenes of the study's own generator (the labelled upper bound)."""

    def __init__(self, world: str, image_size: int, grid: int, batch_size: int):
        if world not in WORLDS:
            raise ValueError(f"unknown pretraining world {world!r}; choose one of {WORLDS}")
        self.world = world
        self.generators = [ShapesGenerator(style, image_size=image_size) for style in STYLES]
        self.image_size, self.grid, self.batch_size = image_size, grid, batch_size

    def scene(self, index: int) -> tuple[Image.Image, list[tuple[str, Sequence[float], str | None]]]:
        if self.world == "disjoint":
            image, shapes = sketch_scene(SEED_BASE + index, self.image_size)
            return image, [(kind, box, None) for kind, box in shapes]
        sample = self.generators[index % 2].scene(f"pretrain-{index}", SEED_BASE + index)
        return sample.image, labelled_shapes(sample)

    def batch(self, first: int) -> PretrainingBatch:
        scenes = [self.scene(first + i) for i in range(self.batch_size)]
        images = image_batch([image for image, _ in scenes])
        present = torch.zeros(len(scenes), len(SHAPES))
        for index, (_, shapes) in enumerate(scenes):
            for kind, _, _ in shapes:
                present[index, SHAPES.index(kind)] = 1
        kinds, colours = dense_targets([shapes for _, shapes in scenes], self.image_size, self.grid)
        return PretrainingBatch(images, kinds, colours, present)


def labelled_shapes(sample: GroundingSample) -> list[tuple[str, Sequence[float], str | None]]:
    """(kind, box, colour) of each shape of a study scene, as `dense_targets` takes them."""
    return [(kind, box, colour) for colour, kind, box in scene_shapes(sample)]


def image_batch(images: list[Image.Image]) -> torch.Tensor:
    """[B, 3, H, W]: the images as one normalised batch."""
    return normalize_images(
        torch.stack([torch.from_numpy(np.array(image.convert("RGB"))) for image in images]).permute(0, 3, 1, 2)
    )


def patch_features(net: GroundingModel, images: torch.Tensor) -> torch.Tensor:
    """[B, patches, width]: the encoder's output without its [CLS] token."""
    return net.encode_images(images)[:, 1:]


@torch.no_grad()
def patch_grid(net: GroundingModel) -> tuple[int, int]:
    """(side of the square patch grid, feature width) of `net`'s vision encoder."""
    patches, width = patch_features(net, torch.zeros(1, 3, net.image_size, net.image_size)).shape[1:]
    return math.isqrt(patches), width


def pretraining_heads(width: int, world: str, labels: str) -> torch.nn.ModuleDict:
    """Linear heads on the patch features: per patch kind (and colour, in the world that names colours) for dense
    labels; for image-level labels one multi-label kind head on every patch, max-pooled over the image (`image_logits`)."""
    if labels not in LABELS:
        raise ValueError(f"unknown pretraining labels {labels!r}; choose one of {LABELS}")
    if labels == "image":
        return torch.nn.ModuleDict({"present": torch.nn.Linear(width, len(SHAPES))})
    heads = {"kind": torch.nn.Linear(width, len(SHAPES) + 1)}
    if world == "both":
        heads["colour"] = torch.nn.Linear(width, len(COLOURS) + 1)
    return torch.nn.ModuleDict(heads)


def image_logits(heads: torch.nn.ModuleDict, features: torch.Tensor) -> torch.Tensor:
    """[B, len(SHAPES)]: per kind, the highest of the patches' logits (multiple-instance learning: an image holds a
    kind when one of its patches does), so the labels of the image teach the patches where the kinds are."""
    return heads["present"](features).amax(dim=1)


def pretraining_loss(heads: torch.nn.ModuleDict, features: torch.Tensor, batch: PretrainingBatch) -> torch.Tensor:
    if "present" in heads:
        return F.binary_cross_entropy_with_logits(image_logits(heads, features), batch.present)
    loss = F.cross_entropy(heads["kind"](features).flatten(0, 1), batch.kinds.flatten())
    if "colour" in heads:
        loss = loss + F.cross_entropy(heads["colour"](features).flatten(0, 1), batch.colours.flatten())
    return loss


def pretrain_vision(
    net: GroundingModel,
    world: str = "both",
    labels: str = "dense",
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    eval_every: int = 100,
) -> list[dict[str, float]]:
    """Train `net`'s vision encoder (in place) on a pretraining world's labels; returns the held-out history (per
    evaluation: step, loss and the accuracies `evaluate` gives). Deterministic for a given seed and initial `net`."""
    torch.manual_seed(seed)
    grid, width = patch_grid(net)
    heads = pretraining_heads(width, world, labels)
    parameters = list(net.vision_encoder.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.02)
    data = PretrainingBatches(world, net.image_size, grid, batch_size)
    # held-out scenes: seeds below the training ones
    held_out = PretrainingBatches(world, net.image_size, grid, 4 * batch_size).batch(first=-(4 * batch_size))
    net.train()
    history = []
    progress = tqdm(range(1, steps + 1), desc=f"pretraining the vision encoder ({world} world, {labels} labels)", unit="step")
    for step in progress:
        batch = data.batch(first=(seed << 32) + step * batch_size)
        loss = pretraining_loss(heads, patch_features(net, batch.images), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            history.append({"step": step, "loss": loss.item(), **evaluate(net, heads, held_out)})
            progress.set_postfix({name: f"{value:.1%}" for name, value in history[-1].items() if name.endswith("accuracy")})
    return history


@torch.no_grad()
def evaluate(net: GroundingModel, heads: torch.nn.ModuleDict, batch: PretrainingBatch) -> dict[str, float]:
    """Held-out accuracy of the heads: kind (and colour) on the patches a shape covers (background patches, most of
    them, left out) for dense labels; for image-level labels, the share of (image, kind) presence calls right."""
    was_training = net.training
    net.eval()
    features = patch_features(net, batch.images)
    covered = batch.kinds > 0
    result = {}
    if "present" in heads:
        calls = image_logits(heads, features) > 0
        result["present_accuracy"] = float((calls == batch.present.bool()).float().mean())
    for name, target in (("kind", batch.kinds), ("colour", batch.colours)):
        if name in heads:
            result[f"{name}_accuracy"] = float((heads[name](features).argmax(-1) == target)[covered].float().mean())
    net.train(was_training)
    return result


@torch.no_grad()
def probe_transfer(net: GroundingModel, scenes: int = 48, steps: int = 300) -> dict[str, float]:
    """How much an encoder knows of the study domains: per study style, a linear probe trained on the patch features of
    `scenes` scenes (covered patches only) and scored on as many others, reading the covering shape's kind and colour.
    Scenes are drawn from seeds no pretraining world and no study split uses (SEED_BASE - 2^32 and below)."""
    was_training = net.training
    net.eval()
    grid, _ = patch_grid(net)
    generator = torch.Generator().manual_seed(0)
    result = {}
    for offset, style in enumerate(STYLES):
        scene_generator = ShapesGenerator(style, image_size=net.image_size)
        split = []
        for part in range(2):
            first = SEED_BASE - (2 + 2 * offset + part) * (1 << 32)
            samples = [scene_generator.scene("probe", first + i) for i in range(scenes)]
            kinds, colours = dense_targets([labelled_shapes(s) for s in samples], net.image_size, grid)
            covered = kinds.flatten() > 0
            features = patch_features(net, image_batch([s.image for s in samples])).flatten(0, 1)[covered]
            split.append((features, kinds.flatten()[covered] - 1, colours.flatten()[covered] - 1))
        (train_x, train_kind, train_colour), (test_x, test_kind, test_colour) = split
        for name, train_y, test_y, classes in (
            ("kind", train_kind, test_kind, len(SHAPES)),
            ("colour", train_colour, test_colour, len(COLOURS)),
        ):
            probe = torch.nn.Linear(train_x.shape[1], classes)
            with torch.no_grad():
                probe.weight.copy_(torch.randn(probe.weight.shape, generator=generator) * 0.01)
                probe.bias.zero_()
            optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
            with torch.enable_grad():
                for _ in range(steps):
                    optimizer.zero_grad()
                    F.cross_entropy(probe(train_x), train_y).backward()
                    optimizer.step()
            result[f"{style}/{name}"] = float((probe(test_x).argmax(1) == test_y).float().mean())
    net.train(was_training)
    return result


def pretrain(argv: list[str] | None = None) -> Path:
    """What synground-pretrain-encoder does, given its arguments; returns the file written."""
    parser = argparse.ArgumentParser(
        description="Pretrain a tiny model's vision encoder on a pretraining world, deterministically (CPU, fixed seed)."
    )
    parser.add_argument("overrides", nargs="*", help="train.py overrides that pick the model, e.g. model=albef_tiny")
    parser.add_argument("--experiment", default="shapes", help="the experiment whose model is built (default shapes)")
    parser.add_argument("--world", choices=WORLDS, default="disjoint", help="disjoint: the sketch world; both: the study's")
    parser.add_argument("--labels", choices=LABELS, default="dense", help="each patch's kind (and colour), or image-level kinds")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0, help="seeds the encoder's initialisation, its data and its heads")
    parser.add_argument("--output", type=Path, help="default: the packaged file synground:<world>_<labels>")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: a float sum's order, so the file, is then the same on any machine)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = [f"experiment={args.experiment}", *args.overrides]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        config = compose("train", overrides=overrides)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)  # before the model is built: its random initialisation is part of the result
    net = instantiate(config.model.net, vision_weights=None)  # the encoder being made starts from random weights
    output = args.output or vision_weights_path(f"{PACKAGED}{args.world}_{args.labels}", net.architecture)
    start = time.perf_counter()
    history = pretrain_vision(net, args.world, args.labels, args.steps, args.batch_size, args.lr, args.seed)
    transfer = probe_transfer(net)
    # no wall-clock time or host name: the same command gives the same file, byte for byte
    about = {
        "command": "python -m synground.shapes.pretraining " + " ".join(argv if argv is not None else sys.argv[1:]),
        "overrides": overrides,
        "world": args.world,
        "labels": args.labels,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "history": history,
        "transfer": transfer,
    }
    save_vision_weights(net, output, about)
    final = ", ".join(f"{name} {value:.1%}" for name, value in history[-1].items() if name.endswith("accuracy"))
    probes = ", ".join(f"{name} {value:.1%}" for name, value in transfer.items())
    log.info(
        f"{output}: after {args.steps} steps, held out: {final}; linear probes on the study domains: {probes} "
        f"({(time.perf_counter() - start) / 60:.1f} min)"
    )
    return output


def main(argv: list[str] | None = None) -> None:
    pretrain(argv)


if __name__ == "__main__":
    main()
