"""Writing a generator's samples as WebDataset shards under Lightning `Trainer.predict`.

Lightning provides the processes (GPUs, nodes); the shard set is the unit of work. Shard i always holds requests
[i * n, (i + 1) * n) with keys `<name>-<i>` and seeds `seed + i`, so any shard can be regenerated alone. Each rank
takes every world-size-th unfinished shard, generates it in chunks, and writes it whole or not at all (`ShardStore`:
a local directory, or an `s3://` / `gs://` prefix where a shard object appears only once its upload completes). Its
manifest entry goes to `manifest.d/<shard>.json` after the shard (one file per shard: ranks never write the same
file), and rank 0 merges those entries into manifest.json after each of its shards and at the end. A rerun after a
crash or kill skips finished shards (checked against their entries first: size and sha256) and regenerates the rest
with the same seeds: the set equals an uninterrupted run's.

Rejected candidates, as they were when rejected (`keep_rejected` per reason and rank, for the dataset report), go to
`rejected/<reason>/<key>.jpg` and `<key>.json` beside the shards, never into them, before the shard's manifest entry,
which lists their keys (`kept_rejected`): a key is a request, which one rank generates, so ranks never write the same
file, and a regenerated shard rewrites its own. A resumed run counts what earlier runs kept from the entries.
"""

from __future__ import annotations

import io
import json
import logging
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from synground.data.schema import GenerationRequest, GroundingSample, TripletGenerator, region_record, validate_key
from synground.data.shards import Manifest, ShardStore, kept_shards, write_shard
from synground.generation.filters import NearDuplicates
from synground.generation.runtime import Rejected, StageClock, to_pil

log = logging.getLogger(__name__)

ENTRIES_DIR = "manifest.d"
REJECTED_DIR = "rejected"


class ShardPlan:
    """Which requests make up which shard: a pure function of the name, seed and sizes."""

    def __init__(self, name: str, num_samples: int, samples_per_shard: int, seed: int):
        if num_samples <= 0 or samples_per_shard <= 0:
            raise ValueError(f"num_samples and samples_per_shard must be positive, got {num_samples}, {samples_per_shard}")
        self.name, self.num_samples, self.samples_per_shard, self.seed = name, num_samples, samples_per_shard, seed
        self.num_shards = -(-num_samples // samples_per_shard)

    def shard_name(self, index: int) -> str:
        return f"{self.name}-{index:06d}.tar"

    def requests(self, index: int) -> list[GenerationRequest]:
        start = index * self.samples_per_shard
        return [
            GenerationRequest(key=f"{self.name}-{i:09d}", seed=self.seed + i, index=i)
            for i in range(start, min(start + self.samples_per_shard, self.num_samples))
        ]


def finished_shards(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """Manifest entries of the complete shards: the merged manifest's plus entries not merged yet."""
    store = manifest.store
    present = store.names()
    entries = {entry["name"]: entry for entry in manifest.shards}
    for name in sorted(store.names(ENTRIES_DIR)):
        if name.endswith(".json"):
            entry = json.loads(store.read_text(f"{ENTRIES_DIR}/{name}"))
            entries[entry["name"]] = entry
    return {name: entry for name, entry in entries.items() if name in present}


def merge_manifest(
    store: ShardStore, config: dict[str, Any], command: str | None, num_shards: int, final: bool = False
) -> Manifest:
    """manifest.json from every finished shard's entry; complete (with totals) once the run ends with every shard."""
    manifest = Manifest(store, config=config)
    manifest.shards = sorted(finished_shards(manifest).values(), key=lambda entry: entry["name"])
    manifest.config, manifest.command, manifest.complete = config, command or manifest.command, False
    if final and len(manifest.shards) == num_shards:
        rejections: Counter[str] = Counter()
        for entry in manifest.shards:
            rejections.update(entry.get("rejections", {}))
        manifest.finish(
            {
                "shards": num_shards,
                "requests": sum(e.get("requests", 0) for e in manifest.shards),
                "samples": sum(e["samples"] for e in manifest.shards),
                "rejections": dict(sorted(rejections.items())),
            }
        )
    else:
        manifest.save()
    return manifest


def check_settings(store: ShardStore, config: dict[str, Any]) -> None:
    """A shard set is made with one configuration: resuming with another would mix two datasets."""
    manifest = Manifest(store)  # a set not started yet has no settings
    previous = manifest.config
    if previous and previous != config:
        changed = sorted(_changed_keys(previous, config))
        raise ValueError(
            f"{store} holds shards made with other settings ({manifest.path}); changed: {changed[:8]}. "
            "Use a new output_dir, or the same settings to resume."
        )


def _changed_keys(old: Any, new: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in set(old) | set(new):
            yield from _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
    elif old != new:
        yield prefix.rstrip(".")


class PendingShards(IterableDataset):
    """The shard indices this rank generates, decided when iteration starts (every rank has started by then)."""

    def __init__(self, task: GenerationTask):
        self.task = task

    def __iter__(self) -> Iterator[int]:
        return iter(self.task.assign_shards())


class GenerationTask(L.LightningModule):
    """Runs a generator over this rank's shards; each predict step returns one complete shard's samples."""

    def __init__(
        self,
        generator: TripletGenerator,
        plan: ShardPlan,
        store: ShardStore,
        chunk_size: int = 64,
        near_duplicates: NearDuplicates | None = None,
        keep_rejected: int = 0,
    ):
        super().__init__()
        self.generator, self.plan, self.store = generator, plan, store
        self.chunk_size, self.near_duplicates, self.keep_rejected = chunk_size, near_duplicates, keep_rejected
        self.kept_before: dict[str, int] = {}  # rejected candidates kept by earlier runs of the set, per reason
        self.kept_now: Counter[str] = Counter()  # by this rank in this run
        self.my_shards: list[int] = []
        self.progress: tqdm | None = None  # shown on rank 0 only
        self.requests_total, self.requests_done = 0, 0  # this rank's, for its ETA
        self.totals = {"seconds": Counter(), "items": Counter()}

    def assign_shards(self) -> list[int]:
        # rank 0 decides what is left and tells the others, so no shard is skipped or made twice
        finished, self.kept_before = self.trainer.strategy.broadcast(
            _finished_and_kept(Manifest(self.store)) if self.global_rank == 0 else None, src=0
        )
        todo = [i for i in range(self.plan.num_shards) if self.plan.shard_name(i) not in finished]
        if self.global_rank == 0 and len(todo) < self.plan.num_shards:
            log.info("%d of %d shards already finished in %s", self.plan.num_shards - len(todo), self.plan.num_shards, self.store)
        self.my_shards = todo[self.global_rank :: self.trainer.world_size]
        self.requests_total = sum(len(self.plan.requests(i)) for i in self.my_shards)
        self.progress = tqdm(
            total=self.requests_total,
            desc=f"generating {self.plan.name}",
            unit="sample",
            disable=self.global_rank != 0,
            dynamic_ncols=True,
        )
        return self.my_shards

    def on_predict_start(self) -> None:
        if hasattr(self.generator, "load"):  # models on this rank's device before the first shard is timed
            start = time.perf_counter()
            self.generator.load()
            log.info("rank %d: models loaded in %.1f s", self.global_rank, time.perf_counter() - start)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(PendingShards(self), batch_size=None)

    def predict_step(self, shard_index: int) -> dict[str, Any]:
        requests = self.plan.requests(int(shard_index))
        clock = getattr(self.generator, "clock", None) or StageClock()  # pipelines count per stage; others still get timed
        clock.keep = self.keep_rejected
        stats = {"stage_seconds": Counter(), "stage_items": Counter(), "rejections": Counter(), "events": Counter()}
        kept: dict[str, list[Rejected]] = {}
        samples: list[GroundingSample] = []
        for start in range(0, len(requests), self.chunk_size):
            chunk = requests[start : start + self.chunk_size]
            with clock.stage("generate", len(chunk)):  # end to end: compared with the sum of the stages in it
                samples += self.generator.generate(chunk)
            self._account(clock.take(), stats, kept)
            self.progress.update(len(chunk))
            self.requests_done += len(chunk)
        if self.near_duplicates is not None:
            samples = self.near_duplicates(samples, clock)
            self._account(clock.take(), stats, kept)
        return {
            "index": int(shard_index),
            "samples": samples,
            "requests": len(requests),
            "rejected": kept,
            **{kind: dict(counts) for kind, counts in stats.items()},
        }

    def _account(self, taken: dict[str, Any], stats: dict[str, Counter], kept: dict[str, list[Rejected]]) -> None:
        for reason, candidates in taken.pop("kept").items():
            # this rank's share of the bound: what earlier runs kept counts as kept by every rank alike
            earlier = -(-self.kept_before.get(reason, 0) // self.trainer.world_size)
            room = max(0, self.keep_rejected - earlier - self.kept_now[reason])
            kept.setdefault(reason, []).extend(candidates[:room])
            self.kept_now[reason] += len(candidates[:room])
        for kind, counts in taken.items():
            stats[kind].update(counts)
        self.totals["seconds"].update(taken["stage_seconds"])
        self.totals["items"].update(taken["stage_items"])
        rates = {stage: self.totals["items"][stage] / seconds for stage, seconds in self.totals["seconds"].items() if seconds > 0}
        self.progress.set_postfix({stage: f"{rate:.2f}/s" for stage, rate in rates.items()}, refresh=False)

    def on_predict_end(self) -> None:
        self.progress.close()


class ShardWriter(BasePredictionWriter):
    """Writes each predicted shard atomically and records it; rank 0 keeps manifest.json up to date."""

    def __init__(self, store: ShardStore, config: dict[str, Any], num_shards: int, command: str | None = None):
        super().__init__(write_interval="batch")
        self.store, self.config, self.num_shards, self.command = store, config, num_shards, command
        self.started = 0.0

    def on_predict_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        plan = pl_module.plan
        start = time.perf_counter()
        entry = write_shard(self.store.url(plan.shard_name(prediction["index"])), prediction["samples"])
        for reason, candidates in prediction["rejected"].items():
            for candidate in candidates:
                write_rejected(self.store, reason, candidate)
        prediction["stage_seconds"]["write"] = time.perf_counter() - start
        prediction["stage_items"]["write"] = len(prediction["samples"])
        entry.update({key: prediction[key] for key in ("requests", "rejections", "stage_seconds", "stage_items", "events")})
        entry["kept_rejected"] = {
            reason: [c.key for c in candidates] for reason, candidates in prediction["rejected"].items() if candidates
        }
        self.store.write_bytes(f"{ENTRIES_DIR}/{entry['name']}.json", json.dumps(entry).encode())  # after the shard
        if trainer.global_rank == 0:
            merge_manifest(self.store, self.config, self.command, self.num_shards)
        remaining = pl_module.requests_total - pl_module.requests_done
        eta = remaining * (time.perf_counter() - self.started) / max(pl_module.requests_done, 1)
        log.info(
            "rank %d wrote %s: %d of %d requests kept, rejections %s; ETA %s",
            trainer.global_rank,
            entry["name"],
            entry["samples"],
            entry["requests"],
            entry["rejections"] or "none",
            _duration(eta),
        )

    def on_predict_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier()
        if trainer.global_rank == 0:
            merge_manifest(self.store, self.config, self.command, self.num_shards, final=True)


def _finished_and_kept(manifest: Manifest) -> tuple[list[str], dict[str, int]]:
    """The finished shards' names, and how many rejected candidates their entries list per reason. A shard whose file is
    not as its entry lists (`kept_shards`: size and sha256) is not finished: this run generates it again."""
    entries = finished_shards(manifest)
    kept_names = kept_shards(manifest.store, entries.values())
    entries = {name: entry for name, entry in entries.items() if name in kept_names}
    kept: Counter[str] = Counter()
    for entry in entries.values():
        kept.update({reason: len(keys) for reason, keys in entry.get("kept_rejected", {}).items()})
    return sorted(entries), dict(kept)


def write_rejected(store: ShardStore, reason: str, candidate: Rejected) -> None:
    """`rejected/<reason>/<key>.json`: the candidate's caption, regions (phrase, boxes, score), the score that failed and
    the threshold it failed, after `<key>.jpg` (its image, if it had one), so a record always finds its image. Each file
    is written whole (`ShardStore`)."""
    key = validate_key(candidate.key)
    folder = f"{REJECTED_DIR}/{reason}"
    image = to_pil(candidate.image) if isinstance(candidate.image, torch.Tensor) else candidate.image
    if image is not None:
        jpeg = io.BytesIO()
        image.convert("RGB").save(jpeg, format="JPEG", quality=90)
        store.write_bytes(f"{folder}/{key}.jpg", jpeg.getvalue())
    record = {
        "key": key,
        "reason": reason,
        "caption": candidate.caption,
        "regions": [region_record(r) for r in candidate.regions],
        "score": candidate.score,
        "threshold": candidate.threshold,
        "image": None if image is None else f"{key}.jpg",
    }
    store.write_bytes(f"{folder}/{key}.json", json.dumps(record).encode())


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def generate_shards(
    generator: TripletGenerator,
    output_dir: str | Path,
    num_samples: int,
    samples_per_shard: int = 1000,
    seed: int = 0,
    name: str = "shapes",
    chunk_size: int = 64,
    config: dict[str, Any] | None = None,
    near_duplicates: NearDuplicates | None = None,
    trainer: dict[str, Any] | None = None,
    command: str | None = None,
    keep_rejected: int = 0,
) -> Manifest:
    """Write `num_samples` samples into `<output_dir>/<name>-<shard>.tar` with a manifest; resumable (see module doc).
    `output_dir` is a local directory or an `s3://`, `gs://` prefix. `keep_rejected` candidates per rejection reason and
    rank are kept as they were under `<output_dir>/rejected/` (0: none) for the dataset report.

    The manifest says the set is complete once every shard is written; `command` (what reruns this generation) is
    kept in it for the error that refuses to read an unfinished set.

    `trainer` holds `lightning.Trainer` arguments for the devices and processes (default: this process, CPU or one GPU).
    """
    store = ShardStore(output_dir)
    plan = ShardPlan(name, num_samples, samples_per_shard, seed)
    settings = json.loads(
        json.dumps(
            {
                "name": name,
                "seed": seed,
                "num_samples": num_samples,
                "samples_per_shard": samples_per_shard,
                "generator": config or {},
            }
        )
    )
    check_settings(store, settings)
    for folder in ("", ENTRIES_DIR, *(f"{REJECTED_DIR}/{reason}" for reason in store.names(REJECTED_DIR))):  # a killed run's
        store.remove_partials(folder)
    arguments = {
        "accelerator": "auto",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        **(trainer or {}),
        "enable_progress_bar": False,
    }  # Lightning's bar counts shards; ours counts samples, with stage rates
    trainer = L.Trainer(**arguments, callbacks=[ShardWriter(store, settings, plan.num_shards, command)])
    # the writer needs no batch indices (a shard knows its own index); Lightning warns that it cannot infer them
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
    task = GenerationTask(generator, plan, store, chunk_size, near_duplicates, keep_rejected)
    trainer.predict(task, return_predictions=False)
    return Manifest(store)
