"""Why a shapes model stops near 80%: does it bind colour and shape, or ground the colour word alone?

    python benchmarks/shapes_diagnosis.py [--seeds 0 1 2] [--scenes 150]
    python benchmarks/shapes_diagnosis.py --checkpoint CKPT ... [--labels NAME ...] [--results PATH]

By default it diagnoses the runs benchmarks/shapes_grounding.py trained (run that first): the demo with and without
AMC and the demo from a random vision encoder, each seed's best checkpoint, and reports each measure's mean and 95%
t-interval over the seeds; --checkpoint diagnoses any checkpoints, one row each.

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
Writes benchmarks/results/shapes_diagnosis.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections import Counter
from pathlib import Path

import torch

import shapes_grounding
from synground import Grounder
from synground.files import write_atomic
from synground.models.gradcam import capture_attention
from synground.models.map_metrics import point_in_boxes, predicted_points
from synground.results import describe, mean_interval
from synground.shapes import ShapesGenerator
from synground.shapes.world import COLOURS, SHAPES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "shapes_diagnosis"
TEST_SEED = 3_000_000  # synground/conf/data/shapes.yaml's textured test split


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


MEASURES = {  # name in a row: column title
    "unique_colour_pointing_game": "colour unique: PG",
    "shared_colour_pointing_game": "colour shared: PG",
    "twin_pointing_game": "twins: PG",
    "itm_prefers_right_phrase": "ITM prefers right shape",
    "same_point_for_both_phrases": "same point",
    "colour_token_map_hits": "colour token map hits",
    "shape_token_map_hits": "shape token map hits",
    "colour_token_mass": "map mass: colour token",
    "shape_token_mass": "map mass: shape token",
    "probe_colour": "vision probe: colour",
    "probe_shape": "vision probe: kind",
}
DIAGNOSED = (  # shapes_grounding's methods diagnosed by default
    "tiny BLIP, random vision encoder, ITM + AMC (model.net.vision_weights=null)",
    "tiny BLIP, ITM + AMC (make demo)",
    "tiny BLIP, ITM only (model.amc_weight=0)",
)


def measures(row: dict) -> dict[str, float]:
    return {
        **{key: row[key] for key in MEASURES if key in row},
        "probe_colour": row["vision_probe"]["colour"],
        "probe_shape": row["vision_probe"]["shape"],
    }


def summary_table(rows: list[dict]) -> str:
    """Per method, each measure's mean [95% t-interval] over its seeds, in points."""
    lines = ["| method | seeds | " + " | ".join(MEASURES.values()) + " |", "|---" * (len(MEASURES) + 2) + "|"]
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for method in methods:
        mine = [measures(row) for row in rows if row["method"] == method]
        cells = [mean_interval(describe([100 * m[key] for m in mine]), "%") for key in MEASURES]
        lines.append(f"| {method} | {len(mine)} | " + " | ".join(cells) + " |")
    row = rows[0]
    lines += [
        "",
        f"Per seed: {row['scenes']} textured test scenes; phrases whose colour another shape shares: "
        + ", ".join(f"{r['shared_colour_items']}" for r in rows[: len(rows) // len(methods)])
        + f"; majority class of the probes: colour {row['vision_probe']['colour_majority']:.0%}, kind "
        f"{row['vision_probe']['shape_majority']:.0%}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", help="default: the seeds' runs of benchmarks/shapes_grounding.py")
    parser.add_argument("--labels", nargs="+", help="a name per checkpoint for the table (default: the paths)")
    parser.add_argument("--scenes", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", type=Path, default=shapes_grounding.RUNS, help="where shapes_grounding.py's runs are")
    parser.add_argument("--results", type=Path, default=RESULTS, help="writes <results>.json and .md")
    args = parser.parse_args()
    if args.checkpoint:
        if args.labels and len(args.labels) != len(args.checkpoint):
            parser.error(f"{len(args.labels)} labels for {len(args.checkpoint)} checkpoints")
        rows = [diagnose(checkpoint, args.scenes) for checkpoint in args.checkpoint]
        for row, label in zip(rows, args.labels or [row["checkpoint"] for row in rows]):
            row["method"] = label
    else:
        rows = []
        for method in DIAGNOSED:
            for seed in args.seeds:
                run = args.runs_dir / f"{shapes_grounding.METHODS[method][0]}-seed{seed}"
                rows.append({"method": method, "seed": seed, **diagnose(str(shapes_grounding.best_checkpoint(run)), args.scenes)})
    command = " ".join(["python benchmarks/shapes_diagnosis.py", *sys.argv[1:]])
    record = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": command,
        "rows": rows,
    }
    report = summary_table(rows)
    print(report)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.results.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    write_atomic(args.results.with_suffix(".md"), f"# Shapes diagnosis\n\n`{command}`; {record['machine']}.\n\n{report}\n")


if __name__ == "__main__":
    main()
