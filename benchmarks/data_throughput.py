"""Shard reading throughput of GroundingDataModule against a bare decode-and-resize loop, and conversion memory.

    python benchmarks/data_throughput.py [--images 400] [--image-size 384]

1. Throughput. Shards of photo-like 640x480 JPEGs (3 phrases each) are read
   - bare: the tar members read in order, each JPEG decoded and resized (bicubic) to the model size, nothing else;
   - train: `GroundingDataModule.train_dataloader()` (decode, resize, flip, boxes to masks, batches of 32; images stay
     uint8 until `on_after_batch_transfer` normalises them on the model's device, which is not timed here);
   - eval: `test_dataloader()` (the same without flip, one item per phrase, the image prepared once per sample).
   All three run in this one process, single-threaded data loading (num_workers=0, so "the same cores"), in turn,
   best of 5 passes; images per second are compared.
2. Conversion memory. `convert.py`'s conversion (streaming records into shards) of Visual Genome fixtures of 1,000 and
   of 10,000 images, each in its own process; the peak resident memory sampled during the conversion, and its
   growth over the memory before it.
Writes benchmarks/results/data_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import torch
from PIL import Image, ImageFilter

from synground.files import write_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests"))


def photo_like(seed: int, size=(640, 480)) -> Image.Image:
    """Noise, shapes and blur: JPEG work closer to a photo than flat colours."""
    noise = Image.effect_noise(size, 40 + seed % 20).convert("RGB")
    base = Image.effect_mandelbrot(size, (-2 + seed % 7 * 0.1, -1.2, 1, 1.2), 40).convert("RGB")
    return Image.blend(base, noise, 0.35).filter(ImageFilter.GaussianBlur(1))


def write_shards(directory: Path, images: int) -> None:
    from synground.data.schema import GroundingSample, Region
    from synground.data.shards import Manifest, write_shard

    manifest = Manifest(directory)
    per_shard = 100
    for shard in range(-(-images // per_shard)):
        samples = [
            GroundingSample(
                f"img-{i:06d}",
                photo_like(i),
                "a picture",
                [Region(f"thing {r}", [[40.0 * r, 30.0, 40.0 * r + 200, 300.0]]) for r in range(3)],
                "benchmark",
            )
            for i in range(shard * per_shard, min(images, (shard + 1) * per_shard))
        ]
        manifest.add(write_shard(directory / f"bench-{shard:06d}.tar", samples))
    manifest.finish({"samples": images})


def bare_loop(directory: Path, image_size: int) -> int:
    count = 0
    for path in sorted(directory.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                    image.resize((image_size, image_size), Image.BICUBIC)
                    count += 1
    return count


def datamodule_loop(directory: Path, image_size: int, images: int, stage: str) -> int:
    from synground.data import GroundingDataModule

    batch_size = 32
    datamodule = GroundingDataModule(
        train={"real": str(directory)},
        test={"bench": str(directory)},
        image_size=image_size,
        mask_size=256,
        batch_size=batch_size,
        eval_batch_size=3 * batch_size,
        batches_per_epoch=images // batch_size,
        num_workers=0,
    )
    if stage == "train":
        return sum(len(batch["texts"]) for batch in datamodule.train_dataloader())
    return sum(len(batch["texts"]) for batch in datamodule.test_dataloader()[0]) // 3  # 3 phrases per image


def throughput(directory: Path, images: int, image_size: int, repeats: int = 5) -> dict:
    loops = {
        "bare decode + resize": lambda: bare_loop(directory, image_size),
        "GroundingDataModule train": lambda: datamodule_loop(directory, image_size, images, "train"),
        "GroundingDataModule eval": lambda: datamodule_loop(directory, image_size, images, "eval"),
    }
    best = {name: float("inf") for name in loops}
    counts = {}
    for _ in range(repeats):  # interleaved, so drifts in machine load hit every loop alike
        for name, loop in loops.items():
            start = time.perf_counter()
            counts[name] = loop()
            best[name] = min(best[name], time.perf_counter() - start)
    rates = {name: counts[name] / best[name] for name in loops}
    bare = rates["bare decode + resize"]
    return {
        name: {
            "images": counts[name],
            "seconds": round(best[name], 3),
            "images_per_second": round(rate, 1),
            "of_bare": round(rate / bare, 3),
        }
        for name, rate in rates.items()
    }


def conversion_worker(images: int) -> dict:
    from support.raw_datasets import write_visual_genome
    from synground.data.convert import convert_records
    from synground.data.readers import visual_genome_records

    with tempfile.TemporaryDirectory() as tmp:
        write_visual_genome(Path(tmp) / "vg", count=images, regions_per_image=20, size=(160, 120))
        before = rss_mib()
        peak, done = [before], threading.Event()

        def sample_rss():  # the process's peak so far includes imports and fixture writing: sample during conversion only
            while not done.wait(0.005):
                peak[0] = max(peak[0], rss_mib())

        sampler = threading.Thread(target=sample_rss)
        sampler.start()
        start = time.perf_counter()
        report = convert_records(visual_genome_records(Path(tmp) / "vg"), Path(tmp) / "shards", "vg", samples_per_shard=500)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        annotation_mib = (Path(tmp) / "vg" / "region_descriptions.json").stat().st_size / 2**20
    return {
        "images": images,
        "samples": report["samples"],
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(peak[0], 1),
        "rss_before_conversion_mib": round(before, 1),
        "growth_mib": round(peak[0] - before, 1),
        "region_file_mib": round(annotation_mib, 1),
    }


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--conversion-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.conversion_worker:
        print(json.dumps(conversion_worker(args.conversion_worker)))
        return

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        write_shards(Path(tmp), args.images)
        rates = throughput(Path(tmp), args.images, args.image_size)
    for name, rate in rates.items():
        print(f"{name:<28} {rate['images_per_second']:>7.1f} images/s  ({rate['of_bare']:.0%} of bare)", flush=True)
    conversion = []
    for images in (1000, 10000):
        output = subprocess.run(
            [sys.executable, __file__, "--conversion-worker", str(images)], check=True, capture_output=True, text=True
        )
        conversion.append(json.loads(output.stdout.strip().splitlines()[-1]))
        print(
            f"conversion of {images} images: peak RSS {conversion[-1]['peak_rss_mib']:.0f} MiB "
            f"({conversion[-1]['growth_mib']:+.0f} MiB during conversion)",
            flush=True,
        )

    result = {
        "command": "python benchmarks/data_throughput.py",
        "image_size": args.image_size,
        "throughput": rates,
        "conversion": conversion,
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS / "data_throughput.json", json.dumps(result, indent=2) + "\n")
    lines = [
        f"| reading {args.images} shard images (640x480 JPEG -> {args.image_size} px) | images/s | of bare loop |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {rate['images_per_second']:.1f} | {rate['of_bare']:.0%} |" for name, rate in rates.items()]
    lines += [
        "",
        "| conversion (Visual Genome format, 20 regions per image) | region file | peak memory | growth during conversion | time |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {c['images']:,} images | {c['region_file_mib']:.1f} MiB | {c['peak_rss_mib']:.0f} MiB | {c['growth_mib']:+.0f} MiB | "
        f"{c['seconds']:.0f} s |"
        for c in conversion
    ]
    table = "\n".join(lines)
    write_atomic(RESULTS / "data_throughput.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
