"""The README's picture of ground.py: held-out textured scenes grounded by the offline demo's model.

    python tools/ground_example.py [--checkpoint <.ckpt or export dir>]   (default: the newest `make demo` model)

Draws 3 textured scenes (seeds of no training or test split), runs `python ground.py ... boxes=true` on them with two
of each scene's phrases, and puts the overlays side by side in docs/images/ground.png.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from synground.runs import demo_checkpoint
from synground.shapes import ShapesGenerator

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="default: the newest offline demo model under logs/")
    parser.add_argument("--output", default=str(ROOT / "docs" / "images" / "ground.png"))
    args = parser.parse_args()
    checkpoint = args.checkpoint or demo_checkpoint(ROOT / "logs")
    if checkpoint is None:
        sys.exit("no offline demo model under logs/: run make demo first, or pass --checkpoint")
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "images").mkdir()
        lines = []
        for index, seed in enumerate((9_000_001, 9_000_002, 9_000_003)):
            scene = ShapesGenerator("textured", image_size=256).scene(f"example{index}", seed)
            scene.image.save(work / "images" / f"scene{index}.png")
            lines += [f"scene{index}.png\t{region.phrase}" for region in scene.regions[:2]]
        (work / "phrases.txt").write_text("\n".join(lines) + "\n")
        command = [
            sys.executable,
            str(ROOT / "ground.py"),
            f"ckpt_path={checkpoint}",
            f"images={work / 'images'}",
            f"phrases={work / 'phrases.txt'}",
            "boxes=true",
            f"hydra.run.dir={work / 'out'}",
        ]
        subprocess.run(command, check=True, cwd=ROOT)
        records = [json.loads(line) for line in (work / "out" / "results.jsonl").read_text().splitlines()]
        overlays = [Image.open(work / "out" / record["overlay"]).convert("RGB") for record in records]
        width, height = max(o.width for o in overlays), max(o.height for o in overlays)
        columns = 2  # a row per scene
        sheet = Image.new("RGB", (columns * width, -(-len(overlays) // columns) * height), "white")
        for index, overlay in enumerate(overlays):
            sheet.paste(overlay, ((index % columns) * width, (index // columns) * height))
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.output)
    print(f"{len(overlays)} overlays of {checkpoint}: {args.output}")


if __name__ == "__main__":
    main()
