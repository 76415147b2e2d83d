"""The report of a generated shard set: counts, distributions as PNG histograms, rejections and stage throughput.

    python -m synground.generation.report data/synground [--output DIR]

Reads the manifest and every shard's JSON records (images are not decoded) and writes report.json, report.md and
PNG plots into `<shard_dir>/report/`. generate.py writes it at the end of a run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from synground.data.shards import MANIFEST_NAME, read_manifest

HISTOGRAMS = {  # file stem -> (title, x label)
    "boxes_per_image": ("Boxes per image", "boxes"),
    "regions_per_image": ("Phrases per image", "phrases"),
    "phrase_length": ("Phrase length", "words"),
    "box_area": ("Box area", "fraction of the image"),
    "detector_score": ("Detector score of each phrase", "score"),
    "clip_score": ("CLIP image-text score", "cosine similarity"),
}


def dataset_report(shard_dir: str | Path, output_dir: str | Path | None = None) -> dict[str, Any]:
    shard_dir = Path(shard_dir)
    output_dir = Path(output_dir) if output_dir else shard_dir / "report"
    shards = read_manifest(shard_dir / MANIFEST_NAME)["shards"]
    values: dict[str, list[float]] = {name: [] for name in HISTOGRAMS}
    sources: Counter[str] = Counter()
    unreadable = 0
    for entry in shards:
        path = shard_dir / entry["name"]
        if not path.exists():
            raise FileNotFoundError(f"{shard_dir / MANIFEST_NAME} lists {entry['name']}, which does not exist")
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.name.endswith(".json"):
                    continue
                try:
                    _measure(json.loads(tar.extractfile(member).read()), values, sources)
                except (ValueError, KeyError, TypeError, ZeroDivisionError):
                    unreadable += 1

    rejections, seconds, items = Counter(), Counter(), Counter()
    for entry in shards:
        rejections.update(entry.get("rejections", {}))
        seconds.update(entry.get("stage_seconds", {}))
        items.update(entry.get("stage_items", {}))
    samples = sum(entry["samples"] for entry in shards)
    requests = sum(entry["requests"] for entry in shards) if all("requests" in e for e in shards) and shards else None
    summary = {
        "shards": len(shards), "samples": samples, "requests": requests,
        "acceptance_rate": round(samples / requests, 4) if requests else None,
        "regions": int(sum(values["regions_per_image"])),
        "boxes": int(sum(values["boxes_per_image"])), "unreadable_records": unreadable, "sources": dict(sources),
        "distributions": {name: _describe(numbers) for name, numbers in values.items() if numbers},
        "rejections": dict(rejections.most_common()),
        "stages": {stage: {"seconds": round(seconds[stage], 2), "items": items[stage],
                           "items_per_second": round(items[stage] / seconds[stage], 3) if seconds[stage] else None}
                   for stage in seconds},
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, numbers in values.items():
        if numbers:
            _histogram(output_dir / f"{name}.png", numbers, *HISTOGRAMS[name])
    if rejections:
        _bars(output_dir / "rejections.png", dict(rejections.most_common()), "Rejections by reason", "requests")
    rates = {stage: s["items_per_second"] for stage, s in summary["stages"].items() if s["items_per_second"]}
    if rates:
        _bars(output_dir / "stage_throughput.png", rates, "Throughput per stage", "items per second")
    (output_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (output_dir / "report.md").write_text(markdown(summary, sorted(p.name for p in output_dir.glob("*.png"))))
    return summary


def _measure(record: dict[str, Any], values: dict[str, list[float]], sources: Counter[str]) -> None:
    area = float(record["width"]) * float(record["height"])
    regions = record["regions"]
    values["regions_per_image"].append(len(regions))
    values["boxes_per_image"].append(sum(len(region["boxes"]) for region in regions))
    for region in regions:
        values["phrase_length"].append(len(str(region["phrase"]).split()))
        if region.get("score") is not None:
            values["detector_score"].append(float(region["score"]))
        for x0, y0, x1, y1 in region["boxes"]:
            values["box_area"].append(max(0.0, x1 - x0) * max(0.0, y1 - y0) / area)
    if record.get("provenance", {}).get("clip_score") is not None:
        values["clip_score"].append(float(record["provenance"]["clip_score"]))
    sources[str(record.get("source", ""))] += 1


def _describe(numbers: list[float]) -> dict[str, float]:
    ordered = sorted(numbers)
    quantile = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"count": len(numbers), "mean": round(statistics.fmean(numbers), 4), "p10": round(quantile(0.1), 4),
            "median": round(quantile(0.5), 4), "p90": round(quantile(0.9), 4), "min": ordered[0], "max": ordered[-1]}


def _histogram(path: Path, numbers: list[float], title: str, xlabel: str) -> None:
    figure = Figure(figsize=(5, 3.2), dpi=100, layout="constrained")
    axes = figure.subplots()
    integers = all(float(n).is_integer() for n in numbers)
    bins = [b - 0.5 for b in range(int(min(numbers)), int(max(numbers)) + 2)] if integers else 30
    axes.hist(numbers, bins=bins, color="#4878a8")
    axes.set(title=f"{title} (n={len(numbers)})", xlabel=xlabel, ylabel="count")
    figure.savefig(path)


def _bars(path: Path, counts: dict[str, float], title: str, xlabel: str) -> None:
    figure = Figure(figsize=(5.5, 1 + 0.35 * len(counts)), dpi=100, layout="constrained")
    axes = figure.subplots()
    axes.barh(list(counts)[::-1], list(counts.values())[::-1], color="#a85448")
    axes.set(title=title, xlabel=xlabel)
    figure.savefig(path)


def markdown(summary: dict[str, Any], plots: list[str]) -> str:
    lines = ["# Dataset report", "", "| | |", "|---|---|"]
    for key in ("shards", "samples", "requests", "acceptance_rate", "regions", "boxes", "unreadable_records"):
        lines.append(f"| {key.replace('_', ' ')} | {summary[key]} |")
    lines += ["", "| distribution | mean | p10 | median | p90 |", "|---|---|---|---|---|"]
    lines += [f"| {name.replace('_', ' ')} | {d['mean']} | {d['p10']} | {d['median']} | {d['p90']} |"
              for name, d in summary["distributions"].items()]
    if summary["rejections"]:
        lines += ["", "| rejected because | requests |", "|---|---|"]
        lines += [f"| {reason.replace('_', ' ')} | {count} |" for reason, count in summary["rejections"].items()]
    if summary["stages"]:
        lines += ["", "| stage | seconds | items | items/s |", "|---|---|---|---|"]
        lines += [f"| {stage} | {s['seconds']} | {s['items']} | {s['items_per_second']} |" for stage, s in summary["stages"].items()]
    lines += [""] + [f"![{plot[:-4]}]({plot})" for plot in plots]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Report of a generated shard set (counts, histograms, rejections).")
    parser.add_argument("shard_dir")
    parser.add_argument("--output", help="directory of the report (default: <shard_dir>/report)")
    args = parser.parse_args()
    summary = dataset_report(args.shard_dir, args.output)
    print(markdown(summary, []))


if __name__ == "__main__":
    main()
