"""Why a shapes model stops near 80%: does it bind colour and shape, or ground the colour word alone?

    python benchmarks/shapes_diagnosis.py [--checkpoint CKPT ... [--labels NAME ...]] [--scenes 150] [--append]
    (default: the newest make demo model)

On held-out textured scenes (the test split's seeds), for every phrase whose colour another shape of another kind in
the scene shares (the cases a colour-only model gets right half the time) it measures:
- the pointing game, next to the phrases whose colour is unique and those of twins (same colour and shape, told
  apart by size or side);
- the ITM head's sensitivity to the shape word: how often it scores the phrase above the same-colour other shape's
  phrase on the same image, and how often the two phrases get the same point;
- per-token Grad-CAM (the map before its mean over text tokens): where the colour token's and the shape token's own
  maps point, and how much map mass each carries;
- a linear probe of the vision encoder: can a shape's colour, and its kind, be read off the patch feature at its
  centre (trained on 70% of the shapes of other scenes, scored on the rest)?
Writes benchmarks/results/shapes_diagnosis.{json,md} (one row per checkpoint).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections import Counter
from pathlib import Path

import torch

from synground import Grounder
from synground.files import write_atomic
from synground.generation import ShapesGenerator
from synground.generation.shapes import COLOURS, SHAPES
from synground.grounding import demo_checkpoint
from synground.models.gradcam import capture_attention
from synground.models.map_metrics import point_in_boxes, predicted_points

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "shapes_diagnosis"
TEST_SEED = 3_000_000  # conf/data/shapes.yaml's textured test split


def colour_and_shape(phrase: str) -> tuple[str, str]:
    words = phrase.split()
    return next(w for w in words if w in COLOURS), next(w for w in words if w in SHAPES)


def token_maps(grounder: Grounder, image, phrase: str) -> dict[str, torch.Tensor]:
    """Each text token's own Grad-CAM map [g, g] (attention x relu(gradient), mean over heads), keyed by token."""
    net = grounder.net
    with torch.no_grad():
        image_embeds = net.encode_images(grounder.model_input([image]))
        texts = net.encode_texts(net.tokenize([phrase]))
    with torch.enable_grad(), capture_attention(net.gradcam_attention) as captured:
        logits = net.itm_logits(image_embeds, texts)
        (grad,) = torch.autograd.grad(logits[:, 1].sum(), captured.value)
    cam = (captured.value[..., 1:] * grad[..., 1:].clamp(min=0)).mean(dim=1)[0].detach()  # [L, patches]
    side = int(cam.shape[1] ** 0.5)
    tokens = net.tokenizer.convert_ids_to_tokens(texts["input_ids"][0].tolist())
    return {token: cam[index].reshape(side, side).cpu() for index, token in enumerate(tokens)}


def vision_probe(grounder: Grounder, scenes: int = 400, seed: int = 5_000_000) -> dict[str, float]:
    """Held-out accuracy of a linear classifier of colour and of shape kind on each shape's centre patch feature."""
    generator = ShapesGenerator("textured", image_size=grounder.image_size)
    features, labels = [], {"colour": [], "shape": []}
    for index in range(scenes):
        scene = generator.scene(f"probe-{index}", seed + index)
        with torch.no_grad():
            patches = grounder.net.encode_images(grounder.model_input([scene.image]))[0, 1:].cpu()
        side = int(patches.shape[0] ** 0.5)
        patch = grounder.image_size / side
        for region in scene.regions:
            x0, y0, x1, y1 = region.boxes[0]
            features.append(patches[int((y0 + y1) / 2 // patch) * side + int((x0 + x1) / 2 // patch)])
            colour, shape = colour_and_shape(region.phrase)
            labels["colour"].append(list(COLOURS).index(colour))
            labels["shape"].append(SHAPES.index(shape))
    x = torch.stack(features)
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-6)
    train = int(0.7 * len(x))
    accuracy = {}
    torch.manual_seed(0)
    for name, values in labels.items():
        y = torch.tensor(values)
        probe = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
        optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(500):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(probe(x[:train]), y[:train]).backward()
            optimizer.step()
        accuracy[name] = float((probe(x[train:]).argmax(1) == y[train:]).float().mean())
        accuracy[f"{name}_majority"] = float(torch.bincount(y[train:]).max() / len(y[train:]))
    return accuracy


def diagnose(checkpoint: str, scenes: int) -> dict:
    grounder = Grounder.load(checkpoint, device="cpu")
    generator = ShapesGenerator("textured", image_size=grounder.image_size)
    counts = Counter()
    for index in range(scenes):
        scene = generator.scene(f"test-textured-{index:08d}", TEST_SEED + index)
        size = torch.tensor([[scene.image.height, scene.image.width]])
        described = [(region, *colour_and_shape(region.phrase)) for region in scene.regions]
        for region, colour, shape in described:
            twins = [o for o, c, s in described if o is not region and (c, s) == (colour, shape)]
            others = [o for o, c, s in described if c == colour and s != shape]
            kind = "twin" if twins else "shared" if others else "unique"  # twins are told apart by size or side
            result = grounder(scene.image, region.phrase)[0]
            counts[f"{kind}_items"] += 1
            counts[f"{kind}_hits"] += point_in_boxes(result.point, region.boxes)
            if kind != "shared":
                continue
            right, wrong = grounder(scene.image, [region.phrase, others[0].phrase])
            counts["itm_prefers_right"] += right.score > wrong.score
            counts["same_point"] += right.point == wrong.point
            maps = token_maps(grounder, scene.image, region.phrase)
            total = sum(float(m.sum()) for m in maps.values())
            for role, token in (("colour", colour), ("shape", shape)):
                point = predicted_points(maps[token][None], size)[0].tolist()
                counts[f"{role}_token_hits"] += point_in_boxes(point, region.boxes)
                counts[f"{role}_token_mass"] += float(maps[token].sum()) / total
    shared = counts["shared_items"]
    path = Path(checkpoint).resolve()
    return {
        "checkpoint": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        "scenes": scenes,
        "unique_colour_pointing_game": counts["unique_hits"] / counts["unique_items"],
        "unique_colour_items": counts["unique_items"],
        "shared_colour_pointing_game": counts["shared_hits"] / shared,
        "shared_colour_items": shared,
        "twin_pointing_game": counts["twin_hits"] / max(counts["twin_items"], 1),
        "twin_items": counts["twin_items"],
        "itm_prefers_right_phrase": counts["itm_prefers_right"] / shared,
        "same_point_for_both_phrases": counts["same_point"] / shared,
        "colour_token_map_hits": counts["colour_token_hits"] / shared,
        "shape_token_map_hits": counts["shape_token_hits"] / shared,
        "colour_token_mass": counts["colour_token_mass"] / shared,
        "shape_token_mass": counts["shape_token_mass"] / shared,
        "vision_probe": vision_probe(grounder),
    }


def table(rows: list[dict]) -> str:
    lines = [
        (
            "| checkpoint | colour unique: PG | colour shared: PG | twins: PG | ITM prefers right shape | same point | "
            "colour token map hits | shape token map hits | map mass colour / shape token | vision probe colour / shape |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['checkpoint']} | {r['unique_colour_pointing_game']:.1%} of {r['unique_colour_items']} | "
            f"{r['shared_colour_pointing_game']:.1%} of {r['shared_colour_items']} | "
            f"{r['twin_pointing_game']:.1%} of {r['twin_items']} | {r['itm_prefers_right_phrase']:.1%} | "
            f"{r['same_point_for_both_phrases']:.1%} | {r['colour_token_map_hits']:.1%} | {r['shape_token_map_hits']:.1%} | "
            f"{r['colour_token_mass']:.1%} / {r['shape_token_mass']:.1%} | "
            f"{r['vision_probe']['colour']:.1%} / {r['vision_probe']['shape']:.1%} "
            f"(majority {r['vision_probe']['colour_majority']:.0%} / {r['vision_probe']['shape_majority']:.0%}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", help="default: the newest make demo model")
    parser.add_argument("--labels", nargs="+", help="a name per checkpoint for the table (default: the paths)")
    parser.add_argument("--scenes", type=int, default=150)
    parser.add_argument("--results", type=Path, default=RESULTS, help="writes <results>.json and .md")
    parser.add_argument("--append", action="store_true", help="keep the rows already in <results>.json (same name: replaced)")
    args = parser.parse_args()
    checkpoints = args.checkpoint or [str(demo_checkpoint(ROOT / "logs"))]
    if args.labels and len(args.labels) != len(checkpoints):
        parser.error(f"{len(args.labels)} labels for {len(checkpoints)} checkpoints")
    rows = [diagnose(checkpoint, args.scenes) for checkpoint in checkpoints]
    for row, label in zip(rows, args.labels or []):
        row["checkpoint"] = f"{label} ({row['checkpoint']})"
    earlier = json.loads(args.results.with_suffix(".json").read_text()) if args.results.with_suffix(".json").is_file() else {}
    if args.append and isinstance(earlier, dict):  # a list: the former format, rows of checkpoints no longer kept
        names = {row["checkpoint"] for row in rows}
        rows = [row for row in earlier["rows"] if row["checkpoint"] not in names] + rows
    command = " ".join(["python benchmarks/shapes_diagnosis.py", *sys.argv[1:]])
    record = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": command,
        "rows": rows,
    }
    report = table(rows)
    print(report)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.results.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    write_atomic(args.results.with_suffix(".md"), f"# Shapes diagnosis\n\n`{command}`; {record['machine']}.\n\n{report}\n")


if __name__ == "__main__":
    main()
