"""Converting a real dataset's records into WebDataset shards: streaming, resumable, with a report of what was skipped."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain, islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from synground.data.readers import Record, load_record
from synground.data.schema import GroundingSample, add_paraphrases
from synground.data.shards import Manifest, ShardStore, kept_shards, write_shard

log = logging.getLogger(__name__)

REPORT_NAME = "conversion_report.json"


def convert_records(
    records: Iterable[Record],
    output_dir: str | Path,
    name: str,
    samples_per_shard: int = 1000,
    reader_issues: Counter[str] | None = None,
    config: dict[str, Any] | None = None,
    command: str | None = None,
    paraphrase: Callable[[Sequence[str], Sequence[int]], list[str | None]] | None = None,
) -> dict[str, Any]:
    """Write records as `<output_dir>/<name>-<shard>.tar` shards of `samples_per_shard` records each, with a manifest;
    `output_dir` is a local directory or an `s3://`, `gs://` prefix (see `ShardStore`).

    Shard i always holds records [i * n, (i + 1) * n) of the stream, so a rerun skips finished shards (without
    opening their images; each is checked against its manifest entry first, see `kept_shards`) and the result equals
    an uninterrupted run. Samples are streamed into the shard one at
    a time: memory does not grow with the dataset. Original JPEG bytes are copied, not re-encoded. Returns the
    report (also written to conversion_report.json): counts of records, samples, regions and skips by reason.
    The manifest says the set is complete only once the whole stream is written; `command` (what reruns this
    conversion) is kept in it for the error that refuses to read an unfinished set.

    `paraphrase` (phrases, seeds -> a paraphrase or None each; synground-convert paraphrases=llm passes the generation
    LLM's) gives each region a paraphrase for SelfEQ, seeded by its record's index so a rerun writes the same shards;
    the report counts the regions that have one.
    """
    stream = iter(records)
    first = next(stream, None)  # before anything is written: an empty split leaves no empty shard set behind
    if first is None:
        raise ValueError(
            f"nothing to convert, the split is empty: the reader gave no records for {name} "
            "(check the split name and the split file)"
        )
    stream = chain([first], stream)
    store = ShardStore(output_dir)
    settings = {"name": name, "samples_per_shard": samples_per_shard, "source": config or {}}
    manifest = Manifest(store, config=settings)
    if manifest.shards and manifest.config != settings:  # shard i's records depend on every one of them
        raise ValueError(
            f"{store} holds a conversion with other settings ({manifest.path}): "
            "use a new output_dir or the same settings to resume"
        )
    manifest.config = settings  # a manifest without shards may still hold an older run's settings
    manifest.command = command or manifest.command
    finished = kept_shards(store, manifest.shards)  # a listed shard that is missing or not as listed is written again
    store.remove_partials()  # half-written by a run that was killed
    with tqdm(desc=f"converting {name}", unit="image") as progress:
        for shard_index in range(1 << 62):
            chunk = list(islice(stream, samples_per_shard))  # annotations only: images are opened below
            if not chunk:
                break
            shard = f"{name}-{shard_index:06d}.tar"
            if shard not in finished:
                if paraphrase is not None:  # each record's phrases seeded by its index in the stream
                    first = shard_index * samples_per_shard
                    add_paraphrases(chunk, range(first, first + len(chunk)), paraphrase)
                issues: Counter[str] = Counter()
                written: Counter[str] = Counter()
                entry = write_shard(store.url(shard), loaded_samples(chunk, issues, written))
                entry.update(records=len(chunk), regions=written["regions"], issues=dict(issues))
                if paraphrase is not None:
                    entry["paraphrased"] = written["paraphrased"]
                manifest.add(entry)
            progress.update(len(chunk))
            progress.set_postfix(shards=shard_index + 1)
    report = conversion_report(manifest, reader_issues or Counter())
    store.write_bytes(REPORT_NAME, (json.dumps(report, indent=2) + "\n").encode())
    if report["samples"] == 0:  # not marked complete: an empty set would be read and scored as if it were data
        raise ValueError(
            f"{name}: every one of the {report['records']} records was skipped ({report['skipped']}), so {store} holds "
            f"no sample and is left unfinished. The first record's image is {first.image_path}: check that the "
            "dataset's image folders are where the reader's image_root (or root) says, then run the conversion again"
        )
    manifest.finish({key: value for key, value in report.items() if key != "manifest"})  # last: the set is whole
    return report


def loaded_samples(records: list[Record], issues: Counter[str], written: Counter[str]) -> Iterator[GroundingSample]:
    """The records' samples, loaded one at a time as the shard writer asks; skips go to `issues`."""
    for record in records:
        sample = load_record(record, issues)
        if sample is not None:
            written["regions"] += len(sample.regions)
            written["paraphrased"] += sum(region.paraphrase is not None for region in sample.regions)
            yield sample


def conversion_report(manifest: Manifest, reader_issues: Counter[str]) -> dict[str, Any]:
    """Totals over every shard of the set (including ones written by earlier runs) and the reader's skips; with
    paraphrases, how many regions have one."""
    issues = Counter(reader_issues)
    for entry in manifest.shards:
        issues.update(entry.get("issues", {}))
    report = {
        "shards": len(manifest.shards),
        "records": sum(e.get("records", e["samples"]) for e in manifest.shards),
        "samples": sum(e["samples"] for e in manifest.shards),
        "regions": sum(e.get("regions", 0) for e in manifest.shards),
    }
    if manifest.shards and all("paraphrased" in entry for entry in manifest.shards):
        report["paraphrased"] = sum(entry["paraphrased"] for entry in manifest.shards)
    return {**report, "skipped": dict(sorted(issues.items())), "manifest": str(manifest.path)}
