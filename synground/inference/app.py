"""The web demo: upload an image or pick an example, type phrases, and see each phrase's heat map, point and match
score, side by side for every chosen checkpoint (`python app.py`, see synground/conf/app.yaml).

    from synground.inference.app import build_app, load_models
    build_app(load_models(["logs/shapes/runs/<date>/checkpoints/epoch004.ckpt"])).launch()

Phrases are typed one per line, or several on one line separated by ';'. The maps, points and scores are the
Grounder's (synground.inference.grounder), drawn by synground.inference.overlays.render_overlay.
"""

from __future__ import annotations

import html
import logging
import math
import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

from omegaconf import DictConfig, ListConfig
from PIL import Image

from synground.extras import require
from synground.inference.grounder import (
    MAX_IMAGE_PIXELS,
    Grounder,
    Grounding,
    ImageTooLargeError,
    check_setting,
    open_image,
)
from synground.inference.overlays import render_overlay
from synground.runs import demo_checkpoint
from synground.shapes.world import ShapesGenerator

require("app", "the web demo (synground-app)")

import gradio as gr

log = logging.getLogger(__name__)

PHRASE_SEPARATOR = re.compile(r"[;\n]")
TABLE_HEADERS = ["phrase", "checkpoint", "x", "y", "match score"]
# the page's examples: scenes of the shapes test splits (their seeds, synground/conf/data/shapes.yaml; training draws random
# 62-bit seeds), both styles; in the last two a colour is shared by two shapes, which the offline demo model confuses
EXAMPLE_SCENES = [("textured", 3000002), ("clean", 2000001), ("textured", 3000000), ("clean", 2000005)]
# small images are enlarged (by a whole factor, nearest neighbour) to about this side, so that the browser shows the
# map and the cross sharp instead of blurring a 128 px picture
DISPLAY_SIDE = 384
# large images are drawn at most this large (longer side) on the page, which shows them smaller anyway: an overlay of
# a 40 megapixel photo takes seconds and gigabytes to draw at full size. The table's points stay in the image's pixels.
DISPLAY_MAX_SIDE = 1024
# phrases per request (max_phrases in synground/conf/app.yaml): each is a Grad-CAM pass per checkpoint
MAX_PHRASES = 32


def split_phrases(text: str | None) -> list[str]:
    """The phrases of the text box: one per line or separated by ';'. Blank pieces (an empty line, a trailing ';') are
    skipped, so only a box without any words is an error."""
    return [phrase.strip() for phrase in PHRASE_SEPARATOR.split(text or "") if phrase.strip()]


def load_models(sources: Sequence[str | Path], max_image_pixels: int = MAX_IMAGE_PIXELS) -> dict[str, Grounder]:
    """One Grounder per checkpoint or export directory, loaded once for the life of the app (on the GPU when there is
    one), keyed by the name the page shows: the Grounder's own (run/checkpoint or export directory), or the path
    as given when two sources share a name. Uploads of more than `max_image_pixels` pixels are refused."""
    models: dict[str, Grounder] = {}
    for source in dict.fromkeys(str(source) for source in sources):
        grounder = Grounder.load(source, max_image_pixels=max_image_pixels)
        models[source if grounder.name in models else grounder.name] = grounder
        log.info("loaded %s on %s", source, grounder.device)
    return models


def demo_model(log_dir: str | Path, train_command: Sequence[str]) -> Path:
    """The offline demo's checkpoint under `log_dir` (demo_checkpoint); when there is none yet it is trained first, by
    running `train_command experiment=shapes` (synground-train), as `make demo` does."""
    checkpoint = demo_checkpoint(log_dir)
    if checkpoint is not None:
        return checkpoint
    command = [*train_command, "experiment=shapes", f"paths.log_dir={log_dir}"]
    log.warning(
        "no offline demo model yet: training it first with python train.py experiment=shapes (about 5 minutes on 2 cores); "
        "give ckpt_path=... to serve another model"
    )
    if subprocess.run(command).returncode != 0:
        raise RuntimeError(f"training the offline demo model failed (its output is above): {shlex.join(command)}")
    checkpoint = demo_checkpoint(log_dir)
    if checkpoint is None:
        raise RuntimeError(f"{shlex.join(command)} finished but left no checkpoint in {Path(log_dir) / 'shapes' / 'runs'}")
    return checkpoint


def write_examples(directory: Path) -> list[tuple[Path, str]]:
    """The page's example images (`EXAMPLE_SCENES` as PNG files in `directory`), each with up to 3 of its phrases."""
    directory.mkdir(parents=True, exist_ok=True)
    examples = []
    for style, seed in EXAMPLE_SCENES:
        scene = ShapesGenerator(style=style).scene(f"example-{seed}", seed)
        path = directory / f"shapes-{style}-{seed}.png"
        scene.image.save(path)
        examples.append((path, "; ".join(region.phrase for region in scene.regions[:3])))
    return examples


def enlarged(picture: Image.Image) -> Image.Image:
    """`picture` scaled by the whole factor that brings its longer side nearest `DISPLAY_SIDE` (never below 1)."""
    factor = max(1, math.floor(DISPLAY_SIDE / max(picture.size) + 0.5))
    return picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST) if factor > 1 else picture


def shrunk(picture: Image.Image) -> Image.Image:
    """`picture` scaled down to at most `DISPLAY_MAX_SIDE` px on its longer side; a smaller one as it is."""
    scale = DISPLAY_MAX_SIDE / max(picture.size)
    if scale >= 1:
        return picture
    return picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.Resampling.BICUBIC)


def drawn_at(result: Grounding, size: tuple[int, int]) -> Grounding:
    """`result` to draw on its image scaled to `size`: the same raw map (upsampled to that size when drawn), the point
    scaled."""
    if tuple(size) == tuple(result.image_size):
        return result
    (x, y), (width, height) = result.point, result.image_size
    point = (min(int((x + 0.5) * size[0] / width), size[0] - 1), min(int((y + 0.5) * size[1] / height), size[1] - 1))
    return replace(result, image_size=size, point=point)


def input_error(message: str) -> gr.Error:
    """A message for the page about what the user gave (its traceback would only clutter the server's log)."""
    return gr.Error(html.escape(message), print_exception=False)


def ground(
    models: dict[str, Grounder],
    image: dict | None,
    text: str | None,
    chosen: Sequence[str] | None,
    max_phrases: int = MAX_PHRASES,
) -> tuple:
    """What the Ground button does: the overlays (one per phrase and checkpoint, checkpoints side by side) with their
    captions, and the table of points and scores. `image` is the upload as the page sends it (its file in gradio's
    upload folder); it is opened here rather than by gradio, so that a file that is not an image gets the message
    below instead of a failure inside gradio. Input problems raise gr.Error, which the page shows: among them more
    than `max_phrases` phrases, or an image larger than the chosen checkpoints' Grounders take."""
    if not image or not image.get("path"):
        raise input_error("No image: upload one, or pick one of the examples below.")
    phrases = split_phrases(text)
    if not phrases:
        raise input_error("No phrase: type one or more phrases, one per line or separated by ';', e.g. 'the red circle'.")
    if len(phrases) > max_phrases:
        raise input_error(
            f"{len(phrases)} phrases: this page grounds at most {max_phrases} at a time (max_phrases in the app's "
            "config): split them over several requests."
        )
    if not chosen:
        raise input_error("No checkpoint chosen: pick one or more under 'Checkpoints'.")
    name = image.get("orig_name") or Path(image["path"]).name
    try:
        picture = open_image(image["path"], name, min(models[checkpoint].max_image_pixels for checkpoint in chosen))
    except ImageTooLargeError as error:
        raise input_error(
            f"{name} is {error.size}, more than the {error.limit} pixels this page takes (max_image_pixels in the app's "
            "config): upload a smaller image."
        ) from error
    except ValueError as error:
        raise input_error(f"{name} is not an image that can be read: upload a PNG, JPEG or other image file.") from error
    results = {checkpoint: models[checkpoint](picture, phrases) for checkpoint in chosen}
    shown = shrunk(picture)
    overlays, rows = [], []
    for index, phrase in enumerate(phrases):
        for checkpoint in chosen:
            result = results[checkpoint][index]
            x, y = result.point
            caption = f"{phrase}: match {result.score:.2f} at ({x}, {y})" + (f" [{checkpoint}]" if len(chosen) > 1 else "")
            overlays.append((enlarged(render_overlay(shown, drawn_at(result, shown.size), caption=False)), caption))
            rows.append([phrase, checkpoint, x, y, round(result.score, 4)])
    columns = len(chosen) if len(chosen) > 1 else min(len(phrases), 3)
    return gr.Gallery(value=overlays, columns=columns), rows


def build_app(
    models: dict[str, Grounder], examples: Sequence[tuple[Path, str]] = (), max_phrases: int = MAX_PHRASES
) -> gr.Blocks:
    """The page: image, phrases and checkpoints on the left, the overlays and the table on the right, examples below;
    a request of more than `max_phrases` phrases is refused."""
    if not models:
        raise ValueError("build_app needs at least one model: load_models([checkpoint or export directory, ...])")
    check_setting("max_phrases", max_phrases, "phrases per request")
    names = list(models)
    with gr.Blocks(title="synground: visual grounding") as demo:
        gr.Markdown(
            "## synground: where is it in the picture?\n"
            "Upload an image (or pick an example below) and type phrases. Each phrase gets its Grad-CAM heat map "
            "(red is high), its point (the map's maximum, the white cross) and the image-text match score, for "
            "every chosen checkpoint."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"])
                phrases = gr.Textbox(
                    label="Phrases",
                    info="one per line, or separated by ';'",
                    lines=3,
                    placeholder="the red circle\nthe small blue square",
                )
                chosen = gr.Dropdown(
                    names,
                    value=names,
                    multiselect=True,
                    label="Checkpoints",
                    info="choose several to compare them side by side",
                )
                run = gr.Button("Ground", variant="primary")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Heat maps", format="png", columns=3, object_fit="contain", elem_id="overlays")
                table = gr.Dataframe(headers=TABLE_HEADERS, label="Points and match scores", interactive=False, elem_id="results")
        if examples:
            gr.Examples(
                [[str(path), text] for path, text in examples],
                inputs=[image, phrases],
                label="Examples: shapes scenes held out from training",
            )
        # preprocess=False: ground() opens the upload itself (see there); gradio still checks that the file is an upload
        run.click(
            partial(ground, models, max_phrases=max_phrases),
            inputs=[image, phrases, chosen],
            outputs=[gallery, table],
            preprocess=False,
        )
    return demo


def serve(cfg: DictConfig, train_command: Sequence[str]) -> None:
    """app.py: load the configured checkpoints (or the offline demo's model), write the examples into the run
    directory and serve the page until interrupted."""
    sources = cfg.ckpt_path
    if sources is None:
        sources = [demo_model(cfg.paths.log_dir, train_command)]
    elif not isinstance(sources, ListConfig):
        sources = [sources]
    models = load_models(sources, cfg.max_image_pixels)
    demo = build_app(models, write_examples(Path(cfg.paths.output_dir) / "examples"), max_phrases=cfg.max_phrases)
    demo.launch(server_name=cfg.server_name, server_port=cfg.server_port, share=cfg.share, show_error=True)
