"""Grounding any image and phrase with a trained model: `Grounder(images, phrases)` gives each pair's Grad-CAM map,
the pointing game's point, the ITM match score and, on request, a box read off the map.

    from synground import Grounder
    grounder = Grounder.load("logs/shapes/runs/<date>/checkpoints/last.ckpt")  # or an export directory
    [result] = grounder("photo.jpg", "the red circle")
    result.point, result.score, result.heatmap  # (x, y) in the photo's pixels, P(match), [H, W] in [0, 1]

The maps are the evaluation maps of training (docs/protocol.md, Grad-CAM conventions): the same preprocessing (square bicubic resize to
the training size, the training normalisation), the same Grad-CAM layer, dropout off.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError

from synground.data.transforms import CLIP_MEAN, CLIP_STD, GroundingTransform, normalize_images
from synground.inference.export_format import check_input_settings, load_export
from synground.models.base import GroundingModel
from synground.models.builders import build_net
from synground.models.checkpoints import CheckpointError, check_state_dict
from synground.models.map_metrics import normalise_heatmap, predicted_points
from synground.runs import CHECKPOINT_CONFIG, run_config_path, run_dir_of

log = logging.getLogger(__name__)

ImageInput = str | Path | Image.Image | np.ndarray
BOX_RULE = (
    "the bounding box of the 8-connected region around the predicted point where the normalised heat map is at least "
    "box_threshold (computed on the map resized so its longer side is at most 256 px, then scaled to the image)"
)


@dataclass
class Grounding:
    """One (image, phrase) pair's result. Coordinates are pixels of the image as given (x right, y down)."""

    phrase: str
    image_size: tuple[int, int]  # (width, height)
    cam: torch.Tensor = field(repr=False)  # [g, g] raw Grad-CAM on the model's patch grid (no ReLU, no normalisation)
    point: tuple[int, int]  # (x, y): the first maximum of the map upsampled bicubically to the image (pointing game)
    score: float  # the ITM head's match probability
    box: tuple[float, float, float, float] | None = None  # xyxy, when asked for (`BOX_RULE`)
    source: str | None = field(default=None, repr=False)  # the image's path, when it was given one

    @cached_property
    def heatmap(self) -> torch.Tensor:
        """[H, W] float in [0, 1]: the map upsampled bicubically to the image, negatives cut, min-max normalised."""
        width, height = self.image_size
        return normalised_heatmap(self.cam[None], (height, width))[0]

    def to_dict(self) -> dict[str, Any]:
        """What ground.py writes per pair (JSON-ready; the map itself is left out)."""
        return {
            "image": self.source,
            "phrase": self.phrase,
            "image_size": list(self.image_size),
            "point": list(self.point),
            "score": round(self.score, 6),
            "box": None if self.box is None else [round(value, 2) for value in self.box],
        }


def normalised_heatmap(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, g, g] raw maps -> [B, H, W] in [0, 1]: bicubic upsampling (as the pointing game), ReLU, min-max per map."""
    return normalise_heatmap(F.interpolate(cams[:, None].float(), size=size, mode="bicubic", align_corners=False)[:, 0])


def box_from_heatmap(heatmap: torch.Tensor, point: tuple[int, int], threshold: float = 0.5, max_side: int = 256) -> tuple:
    """`BOX_RULE`: xyxy in the pixels of `heatmap` [H, W] (normalised to [0, 1]); `point` is (x, y) in those pixels."""
    if not 0 < threshold <= 1:
        raise ValueError(f"box_threshold must be in (0, 1], got {threshold}")
    height, width = heatmap.shape
    scale = min(1.0, max_side / max(height, width))
    small = (round(height * scale), round(width * scale))
    region_of = F.interpolate(heatmap[None, None].float(), size=small, mode="bilinear", align_corners=False)[0, 0] >= threshold
    x, y = min(int(point[0] * scale), small[1] - 1), min(int(point[1] * scale), small[0] - 1)
    region = torch.zeros_like(region_of)
    region[y, x] = True
    region_of[y, x] = True  # the maximum's own pixel, even where resizing smoothed it below the threshold
    while True:  # grow the region by its 8 neighbours inside the thresholded map until it stops changing
        grown = F.max_pool2d(region[None, None].float(), 3, stride=1, padding=1)[0, 0].bool() & region_of
        if torch.equal(grown, region):
            break
        region = grown
    ys, xs = torch.nonzero(region, as_tuple=True)
    return (
        float(xs.min()) / scale,
        float(ys.min()) / scale,
        min((float(xs.max()) + 1) / scale, width),
        min((float(ys.max()) + 1) / scale, height),
    )


# the default of the Grounder's max_image_pixels: photos of up to 40 megapixels open (phones take 12, most cameras 24
# to 36); every pair's map is upsampled to the image, 4 bytes a pixel, so a batch of 16 pairs of one 40 MP image
# holds 2.6 GB of maps, and ground.py's full-size overlay of it takes about 90 bytes a pixel while it is drawn
MAX_IMAGE_PIXELS = 40_000_000


class ImageTooLargeError(ValueError):
    """An image refused for its size; `size` says how large it is, `limit` is max_image_pixels."""

    def __init__(self, where: str, size: str, limit: int, advice: str = "downsize it, or raise max_image_pixels"):
        super().__init__(f"{where} is {size}, more than max_image_pixels={limit}: {advice}")
        self.size, self.limit = size, limit


def open_image(image: ImageInput, name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an [H, W, 3] uint8 array; errors name the input. An image of more
    than `max_pixels` pixels is refused (a file before it is decoded); 16-bit greyscale is scaled to 8 bits."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{name}: expected an [H, W, 3] uint8 array, got {image.dtype} of shape {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, (str, Path, Image.Image)):
        raise TypeError(f"{name} is {type(image).__name__}: give an image file's path, a PIL image or an [H, W, 3] uint8 array")
    if isinstance(image, Image.Image):
        _check_pixels(image, name, max_pixels)
        return _rgb(image, name)
    path = Path(image).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{name}: {path} is a folder, not an image file (ground.py's images= takes a folder)")
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such image file: {path}")
    try:
        with Image.open(path) as opened:
            _check_pixels(opened, f"{name}: {path}", max_pixels)
            return _rgb(opened, f"{name}: {path}")
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"{name}: {path}", f"over PIL's own limit ({error})", max_pixels, "downsize it") from error
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{name}: {path} is not an image PIL can read ({error})") from error


def _check_pixels(image: Image.Image, where: str, max_pixels: int) -> None:
    if image.width * image.height > max_pixels:
        raise ImageTooLargeError(where, f"{image.width} x {image.height} pixels", max_pixels)


def _rgb(image: Image.Image, where: str) -> Image.Image:
    """`image` as 8-bit RGB. 16-bit greyscale (mode I;16, or I as Pillow before 11 opens a 16-bit PNG) is scaled to 8
    bits, where PIL's conversion would clip it to white; other integer ranges and floats (mode F) have no agreed
    scale, so they are refused."""
    if image.mode == "F":
        raise ValueError(f"{where}: a floating-point image (mode F) has no agreed range of values: convert it to 8 bits")
    if image.mode != "I" and not image.mode.startswith("I;16"):
        return image.convert("RGB")
    values = np.asarray(image).astype(np.int32)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0 or high > 65535:
        raise ValueError(f"{where}: mode {image.mode} with values from {low} to {high}, not 16-bit: convert it to 8 bits")
    return Image.fromarray(((values + 128) // 257).astype(np.uint8)).convert("RGB")  # 0..65535 -> 0..255, rounded


def check_setting(key: str, value: Any, meaning: str) -> None:
    """Refuse a count setting that is not a whole number of at least 1, naming its key."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{key}={value!r}: {meaning}, must be a whole number, 1 or more")


class Grounder:
    """A grounding model ready for inference: eval mode (dropout off), on the GPU when there is one.

    `grounder(images, phrases)` pairs them up: one image with several phrases, several images with one phrase, or
    equally long lists (pair i is images[i] with phrases[i]). Work is done in batches of `batch_size` pairs, each
    image encoded once for all its phrases in a batch.
    """

    def __init__(
        self,
        net: GroundingModel,
        image_size: int | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        name: str = "model",
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ):
        check_setting("batch_size", batch_size, "pairs per forward pass")
        check_setting("max_image_pixels", max_image_pixels, "the most pixels an image may have")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = net.eval().to(self.device)
        self.image_size = image_size or net.image_size
        self.transform = GroundingTransform(self.image_size, flip_prob=0.0)
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size, self.name, self.max_image_pixels = batch_size, name, max_image_pixels
        self.global_step: int | None = None  # of the training checkpoint it was loaded from, if any

    @classmethod
    def load(cls, source: str | Path, **kwargs: Any) -> Grounder:
        """From a training checkpoint (.ckpt) or an export directory (synground.inference.export)."""
        path = Path(source).expanduser()
        if path.is_dir():
            return cls.from_export(path, **kwargs)
        if path.suffix == ".ckpt":
            return cls.from_checkpoint(path, **kwargs)
        raise FileNotFoundError(
            f"{source}: expected a training checkpoint (.ckpt, e.g. logs/<task>/runs/<date>/checkpoints/last.ckpt) or "
            "an export directory (from synground-export)"
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: str | Path | DictConfig | None = None, **kwargs: Any) -> Grounder:
        """The model of a train.py checkpoint, built from the config it was trained with: by default the one the
        checkpoint carries (runs.CHECKPOINT_CONFIG), for older checkpoints the run's `.hydra/config.yaml` beside the
        checkpoints folder. Full-size models are built from their pretrained weights first (the hub id or file the
        config names), then take the checkpoint's; an export needs neither."""
        path = Path(path).expanduser()
        if path.is_dir():
            raise IsADirectoryError(
                f"{path} is a directory, not a checkpoint file: give one of a run's checkpoints, "
                "<run dir>/checkpoints/<name>.ckpt (an export directory loads with Grounder.load)"
            )
        if not path.is_file():
            raise FileNotFoundError(f"no such checkpoint file: {path}")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            problem = None if isinstance(checkpoint, dict) else f"it holds a {type(checkpoint).__name__}"
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:  # an empty, cut or foreign file
            problem = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'the file ends early'}"
        if problem:
            raise CheckpointError(
                f"{path} is not a whole train.py checkpoint ({problem}): it was cut short or damaged, or is another "
                "kind of file; give another checkpoint of the run (e.g. last.ckpt)"
            )
        if isinstance(config, DictConfig):
            cfg, where = config, "the given config"
        elif config is None and isinstance(checkpoint.get(CHECKPOINT_CONFIG), dict):  # the run's own, saved with it
            cfg, where = OmegaConf.create(checkpoint[CHECKPOINT_CONFIG]), f"the config saved in {path}"
        else:
            where = str(run_config_path(path) if config is None else Path(config).expanduser())
            cfg = OmegaConf.load(where)
        grounder = cls.from_config(cfg, name=kwargs.pop("name", _checkpoint_name(path)), where=where, **kwargs)
        state = {
            key.removeprefix("net."): value for key, value in checkpoint.get("state_dict", {}).items() if key.startswith("net.")
        }
        if not state:
            raise CheckpointError(f"{path} has no model weights (state_dict with net.* keys): is it a train.py checkpoint?")
        unexpected = check_state_dict(grounder.net, state, str(path))
        if unexpected:
            raise CheckpointError(f"{path} has {len(unexpected)} weights the configured model lacks, e.g. {unexpected[:8]}")
        grounder.net.load_state_dict(state)
        grounder.global_step = checkpoint.get("global_step")
        log.info("%s: weights of %s (step %s)", grounder.name, path, grounder.global_step)
        return grounder

    @classmethod
    def from_config(cls, cfg: DictConfig, where: str = "config", **kwargs: Any) -> Grounder:
        """A model as a run config (train.yaml's `model` and `data` keys) builds it, with its own weights (pretrained
        or random); the input size and normalisation come from `data`. Only the project's model builders are called
        (synground.models.builders): a config that came with a shared run names nothing else. `where` names the
        config in errors."""
        if "model" not in cfg or "net" not in cfg.model:
            raise ValueError(f"{where} has no model.net: give a train.py run config (.hydra/config.yaml) or model=<name>")
        net = build_net(cfg.model.net, where)
        data = cfg.get("data") or {}
        image_size, mean, std = data.get("image_size"), data.get("mean") or CLIP_MEAN, data.get("std") or CLIP_STD
        check_input_settings(image_size, mean, std, where, prefix="data.")
        return cls(net, image_size=image_size, mean=mean, std=std, **kwargs)

    @classmethod
    def from_export(cls, directory: str | Path, **kwargs: Any) -> Grounder:
        """The model of an export directory (synground.inference.export): BLIP in the transformers format or ALBEF's layout."""
        directory = Path(directory).expanduser()
        net, settings = load_export(directory)
        return cls(
            net,
            image_size=settings["image_size"],
            mean=settings["mean"],
            std=settings["std"],
            **{"name": directory.name, **kwargs},
        )

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        phrases: str | Sequence[str],
        boxes: bool = False,
        box_threshold: float = 0.5,
    ) -> list[Grounding]:
        single = isinstance(images, (str, Path, Image.Image, np.ndarray)) or not isinstance(images, Sequence)
        images = [images] if single else list(images)  # anything else is one image, refused by open_image if not one
        phrases = [phrases] if isinstance(phrases, str) else list(phrases)
        for index, phrase in enumerate(phrases):
            if not isinstance(phrase, str):
                raise ValueError(f"phrase {index} is {phrase!r} ({type(phrase).__name__}), not text: give the words to ground")
            if not phrase.strip():
                raise ValueError(f"phrase {index} is empty: give the words to ground, e.g. 'the red circle'")
        if not images or not phrases:
            raise ValueError("give at least one image and one phrase")
        if len(images) == 1:
            images = images * len(phrases)
        elif len(phrases) == 1:
            phrases = phrases * len(images)
        elif len(images) != len(phrases):
            raise ValueError(
                f"{len(images)} images and {len(phrases)} phrases: give one image, one phrase, or as many of each (pairs)"
            )
        results = []
        for start in range(0, len(images), self.batch_size):
            results += self._batch(images[start : start + self.batch_size], phrases[start : start + self.batch_size], start)
        if boxes:
            for result in results:
                result.box = box_from_heatmap(result.heatmap, result.point, box_threshold)
        return results

    def model_input(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, 3, size, size] on the Grounder's device: training's evaluation preprocessing (square bicubic resize,
        the training normalisation)."""
        pixels = torch.stack([self.transform.pixels(image) for image in images])
        return normalize_images(pixels.permute(0, 3, 1, 2).to(self.device), self.mean, self.std)

    def _batch(self, images: list[ImageInput], phrases: list[str], offset: int) -> list[Grounding]:
        rows: dict[Any, int] = {}  # an image given for several phrases (one path or one object) is opened and encoded once
        opened, sources, image_rows = [], [], []
        for index, image in enumerate(images):
            key = str(image) if isinstance(image, (str, Path)) else id(image)
            if key not in rows:
                rows[key] = len(opened)
                opened.append(open_image(image, f"image {offset + index}", self.max_image_pixels))
                sources.append(str(image) if isinstance(image, (str, Path)) else None)
            image_rows.append(rows[key])
        image_index = torch.tensor(image_rows, device=self.device)
        batch = self.model_input(opened)
        cam = self.net.evaluation_gradcam(batch, phrases, image_index)
        sizes = torch.tensor([[opened[row].height, opened[row].width] for row in image_index.tolist()])
        points = predicted_points(cam.maps, sizes).tolist()
        scores = cam.itm_logits.float().softmax(dim=1)[:, 1].tolist()
        return [
            Grounding(
                phrase=phrase,
                image_size=opened[row].size,
                cam=cam.maps[i].float().cpu(),
                point=tuple(points[i]),
                score=scores[i],
                source=sources[row],
            )
            for i, (phrase, row) in enumerate(zip(phrases, image_index.tolist()))
        ]


def _checkpoint_name(path: Path) -> str:
    return f"{run_dir_of(path).name}/{path.name}"
