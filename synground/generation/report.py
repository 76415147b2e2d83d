"""The report of a shard set, generated or converted, read from its manifest and the shards' JSON records (images are
not decoded): counts, distributions as PNG histograms, rejections by reason and throughput per stage. With `samples`,
sample sheets too (sheets.py): that many samples drawn at random (seeded) with their boxes and phrases, and per
rejection reason as many of the candidates generation kept as they were (reading only the shards and files drawn).
`generate.py` and `convert.py` write it at the end of a run; `synground-report SHARD_DIR
[--output DIR] [--samples N [--seed S]]` writes it for any shard set, local or on object storage.
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

from synground.data.shards import MANIFEST_NAME, ShardStore, is_remote, manifest_of, open_shard, read_manifest
from synground.files import write_atomic
from synground.generation.sheets import REJECTION_CHECKS, drawn_samples, rejected_panels, sample_panel, sheet

HISTOGRAMS = {  # file stem -> (title, x label)
    "boxes_per_image": ("Boxes per image", "boxes"),
    "regions_per_image": ("Phrases per image", "phrases"),
    "phrase_length": ("Phrase length", "words"),
    "box_area": ("Box area", "fraction of the image"),
    "detector_score": ("Detector score of each phrase", "score"),
    "clip_score": ("CLIP image-text score", "cosine similarity"),
}
PLOTS = [*HISTOGRAMS, "rejections", "stage_throughput", "samples"]


def dataset_report(
    shard_dir: str | Path, output_dir: str | Path | None = None, samples: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Write report.json, report.md and PNG plots of the shard set into `output_dir` (default `<shard_dir>/report`);
    with `samples`, also samples.png (that many samples drawn by `seed`) and rejected_<reason>.png (as many of the
    rejected candidates kept while generating, per reason).

    Either may be a local directory or an object-store prefix (`s3://`, `gs://`; the shard set also `http(s)://`).
    """
    if samples is not None and samples <= 0:
        raise ValueError(f"samples must be a positive number of samples for the sample sheets, got {samples}")
    shard_dir = str(shard_dir).rstrip("/")
    manifest_path = manifest_of(shard_dir) or str(Path(shard_dir) / MANIFEST_NAME)  # a missing directory: named below
    base = manifest_path[: -len(MANIFEST_NAME)]  # the set's directory or prefix, with its separator
    try:
        shards = read_manifest(manifest_path)["shards"]
    except FileNotFoundError as error:
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {shard_dir}: {manifest_path} does not exist") from error
    values: dict[str, list[float]] = {name: [] for name in HISTOGRAMS}
    sources: Counter[str] = Counter()
    records = unreadable = 0
    for entry in shards:
        url = f"{base}{entry['name']}"
        try:
            with open_shard(url) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:  # read in order; the images' bytes are skipped, not decoded
                    if not member.name.endswith(".json"):
                        continue
                    records += 1
                    try:
                        numbers, source = _measure(json.loads(tar.extractfile(member).read()))
                    except (ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError):
                        unreadable += 1
                        continue
                    for name, sample_values in numbers.items():
                        values[name] += sample_values
                    sources[source] += 1
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{manifest_path} lists {entry['name']}, which does not exist ({url})") from error
        except tarfile.TarError as error:
            raise ValueError(f"shard {url} is unreadable: {error}") from error

    rejections, kept, seconds, items = Counter(), Counter(), Counter(), Counter()
    for entry in shards:
        rejections.update(entry.get("rejections", {}))
        kept.update({reason: len(keys) for reason, keys in entry.get("kept_rejected", {}).items()})
        seconds.update(entry.get("stage_seconds", {}))
        items.update(entry.get("stage_items", {}))
    total = sum(entry["samples"] for entry in shards)
    requests = sum(entry["requests"] for entry in shards) if shards and all("requests" in e for e in shards) else None
    summary = {
        "shards": len(shards),
        "samples": total,
        "requests": requests,
        "acceptance_rate": round(total / requests, 4) if requests else None,
        "regions": int(sum(values["regions_per_image"])),
        "boxes": int(sum(values["boxes_per_image"])),
        "records": records,
        "unreadable_records": unreadable,
        "sources": dict(sources.most_common()),
        "distributions": {name: _describe(numbers) for name, numbers in values.items() if numbers},
        "rejections": dict(rejections.most_common()),
        "kept_rejected": dict(sorted(kept.items())),
        "stages": {
            stage: {
                "seconds": round(seconds[stage], 2),
                "items": items[stage],
                "items_per_second": round(items[stage] / seconds[stage], 3) if seconds[stage] else None,
            }
            for stage in dict.fromkeys([*seconds, *items])
        },
    }

    output = ShardStore(output_dir or (f"{shard_dir}/report" if is_remote(shard_dir) else Path(shard_dir) / "report"))
    with output.local_directory() as directory:
        plots = []
        for name, numbers in values.items():
            if numbers:
                plots.append(_histogram(directory / f"{name}.png", numbers, *HISTOGRAMS[name]))
        if rejections:
            plots.append(_bars(directory / "rejections.png", summary["rejections"], "Rejections by reason", "requests"))
        rates = {stage: s["items_per_second"] for stage, s in summary["stages"].items() if s["items_per_second"]}
        if rates:
            plots.append(_bars(directory / "stage_throughput.png", rates, "Throughput per stage", "items per second"))
        if samples is not None:
            summary["sheets"] = _sheets(directory, base, shards, samples, seed, plots)
        write_atomic(directory / "report.json", json.dumps(summary, indent=2) + "\n")
        write_atomic(directory / "report.md", markdown(summary, plots))
    stale = [f"{name}.png" for name in PLOTS] + [name for name in output.names() if name.startswith("rejected_")]
    for name in stale:  # a plot left by an earlier report of other data would be read as this one's
        if name not in plots:
            output.remove(name)
    return summary


def _sheets(directory: Path, base: str, shards: list[dict[str, Any]], count: int, seed: int, plots: list[str]) -> dict[str, Any]:
    """Draw samples.png and rejected_<reason>.png into `directory`, add them to `plots`; the keys each one shows."""
    drawn = drawn_samples(base, shards, count, seed)
    if drawn:
        total = sum(entry["samples"] for entry in shards)
        title = f"{len(drawn)} of {total} samples in {len(shards)} shards, drawn at random (seed {seed})"
        sheet([sample_panel(sample) for sample in drawn], title).savefig(directory / "samples.png")
        plots.append("samples.png")
    rejected = rejected_panels(base, shards, count, seed)
    for reason, panels in rejected.items():
        check = REJECTION_CHECKS.get(reason)
        title = f"Rejected as {reason}{f': {check}' if check else ''} ({len(panels)} kept candidates, seed {seed})"
        sheet(panels, title).savefig(directory / f"rejected_{reason}.png")
        plots.append(f"rejected_{reason}.png")
    return {
        "seed": seed,
        "samples": [sample.key for sample in drawn],
        "rejected": {reason: [panel.title for panel in panels] for reason, panels in rejected.items()},
    }


def _measure(record: dict[str, Any]) -> tuple[dict[str, list[float]], str]:
    """One record's numbers and source; raises on a malformed record before any of them is counted."""
    area = float(record["width"]) * float(record["height"])
    regions = record["regions"]
    boxes = [box for region in regions for box in region["boxes"]]
    scores = [float(region["score"]) for region in regions if region.get("score") is not None]
    clip_score = (record.get("provenance") or {}).get("clip_score")
    numbers = {
        "regions_per_image": [len(regions)],
        "boxes_per_image": [len(boxes)],
        "phrase_length": [len(str(region["phrase"]).split()) for region in regions],
        "box_area": [max(0.0, x1 - x0) * max(0.0, y1 - y0) / area for x0, y0, x1, y1 in boxes],
        "detector_score": scores,
        "clip_score": [] if clip_score is None else [float(clip_score)],
    }
    return numbers, str(record.get("source", ""))


def _describe(numbers: list[float]) -> dict[str, float]:
    ordered = sorted(numbers)
    p10, p90 = (ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.1, 0.9))
    return {
        "count": len(numbers),
        "mean": round(statistics.fmean(ordered), 4),
        "p10": round(p10, 4),
        "median": round(statistics.median(ordered), 4),
        "p90": round(p90, 4),
        "min": round(ordered[0], 4),
        "max": round(ordered[-1], 4),
    }


def _histogram(path: Path, numbers: list[float], title: str, xlabel: str) -> str:
    figure = Figure(figsize=(5, 3.2), dpi=100, layout="constrained")
    axes = figure.subplots()
    integers = all(float(n).is_integer() for n in numbers)
    bins = [b - 0.5 for b in range(int(min(numbers)), int(max(numbers)) + 2)] if integers else 30
    axes.hist(numbers, bins=bins, color="#4878a8")
    axes.set(title=f"{title} (n={len(numbers)})", xlabel=xlabel, ylabel="count")
    figure.savefig(path)
    return path.name


def _bars(path: Path, counts: dict[str, float], title: str, xlabel: str) -> str:
    figure = Figure(figsize=(5.5, 1 + 0.35 * len(counts)), dpi=100, layout="constrained")
    axes = figure.subplots()
    axes.barh(list(counts)[::-1], list(counts.values())[::-1], color="#a85448")  # largest on top
    axes.set(title=title, xlabel=xlabel)
    figure.savefig(path)
    return path.name


def markdown(summary: dict[str, Any], plots: list[str]) -> str:
    lines = ["# Dataset report", "", "| | |", "|---|---|"]
    for key in ("shards", "samples", "requests", "acceptance_rate", "regions", "boxes", "records", "unreadable_records"):
        lines.append(f"| {key.replace('_', ' ')} | {summary[key]} |")
    lines += [f"| source {source} | {count} |" for source, count in summary["sources"].items()]
    lines += ["", "| distribution | count | mean | p10 | median | p90 |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {name.replace('_', ' ')} | {d['count']} | {d['mean']} | {d['p10']} | {d['median']} | {d['p90']} |"
        for name, d in summary["distributions"].items()
    ]
    if summary["rejections"]:
        kept = summary["kept_rejected"]
        lines += ["", "| rejected because | requests | kept under rejected/ |", "|---|---|---|"]
        lines += [
            f"| {reason.replace('_', ' ')} | {count} | {kept.get(reason, 0)} |" for reason, count in summary["rejections"].items()
        ]
    if summary["stages"]:
        lines += ["", "| stage | seconds | items | items/s |", "|---|---|---|---|"]
        lines += [
            f"| {stage} | {s['seconds']} | {s['items']} | {s['items_per_second']} |" for stage, s in summary["stages"].items()
        ]
    sheets = [plot for plot in plots if plot == "samples.png" or plot.startswith("rejected_")]
    lines += [""] + [f"![{plot.removesuffix('.png')}]({plot})" for plot in plots if plot not in sheets]
    if "samples.png" in sheets:
        drawn = summary["sheets"]
        lines += [
            "",
            "## Samples",
            "",
            f"{len(drawn['samples'])} drawn at random (seed {drawn['seed']}).",
            "",
            "![samples](samples.png)",
        ]
    rejected = [plot for plot in sheets if plot.startswith("rejected_")]
    if rejected:
        lines += ["", "## Rejected candidates", "", "As they were when rejected, with the score that failed and its threshold."]
    for plot in rejected:
        reason = plot.removeprefix("rejected_").removesuffix(".png")
        check = REJECTION_CHECKS.get(reason)
        lines += ["", f"### {reason.replace('_', ' ')}", ""] + ([check, ""] if check else []) + [f"![{reason}]({plot})"]
    return "\n".join(lines) + "\n"


def _positive(text: str) -> int:
    number = int(text)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of samples, got {number}")
    return number


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Report of a shard set, generated or converted (counts, histograms, rejections, sample sheets)."
    )
    parser.add_argument("shard_dir", help="the shard set: a directory, or an s3://, gs://, http(s):// prefix")
    parser.add_argument("--output", help="directory or s3:// / gs:// prefix of the report (default: <shard_dir>/report)")
    parser.add_argument(
        "--samples",
        type=_positive,
        help="draw this many samples at random on samples.png, and as many kept rejected candidates per reason on "
        "rejected_<reason>.png (reads only the shards drawn from)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the seed of the samples drawn (default 0)")
    args = parser.parse_args(argv)
    try:
        summary = dataset_report(args.shard_dir, args.output, args.samples, args.seed)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(markdown(summary, []))


if __name__ == "__main__":
    main()
