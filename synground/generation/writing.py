"""Writing a generator's samples as WebDataset shards: numbered requests, one shard at a time, resumable."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from synground.data.schema import GenerationRequest, TripletGenerator
from synground.data.shards import Manifest, write_shard

log = logging.getLogger(__name__)


def shard_requests(name: str, shard_index: int, samples_per_shard: int, num_samples: int, seed: int) -> list[GenerationRequest]:
    """Sample i always gets key `<name>-<i>` and seed `seed + i`, so any shard can be regenerated alone."""
    start = shard_index * samples_per_shard
    return [GenerationRequest(key=f"{name}-{i:09d}", seed=seed + i) for i in range(start, min(start + samples_per_shard, num_samples))]


def generate_shards(generator: TripletGenerator, output_dir: str | Path, num_samples: int, samples_per_shard: int = 1000,
                    seed: int = 0, name: str = "shapes", batch_size: int = 16, config: dict[str, Any] | None = None) -> Manifest:
    """Write `num_samples` samples into `<output_dir>/<name>-<shard>.tar` with a manifest.

    Shards already in the manifest are kept, so a rerun after a crash finishes the set with the same result as an
    uninterrupted run. A shard is written under a temporary name and renamed when complete.
    """
    if num_samples <= 0 or samples_per_shard <= 0:
        raise ValueError(f"num_samples and samples_per_shard must be positive, got {num_samples}, {samples_per_shard}")
    manifest = Manifest(output_dir, config={"name": name, "seed": seed, "num_samples": num_samples,
                                            "samples_per_shard": samples_per_shard, "generator": config or {}})
    num_shards = -(-num_samples // samples_per_shard)
    todo = [i for i in range(num_shards) if f"{name}-{i:06d}.tar" not in manifest.finished]
    if len(todo) < num_shards:
        log.info("%d of %d shards already finished in %s", num_shards - len(todo), num_shards, output_dir)
    with tqdm(total=sum(min(samples_per_shard, num_samples - i * samples_per_shard) for i in todo),
              desc=f"generating {name}", unit="sample") as progress:
        for shard_index in todo:
            requests = shard_requests(name, shard_index, samples_per_shard, num_samples, seed)
            samples = []
            for start in range(0, len(requests), batch_size):
                samples += generator.generate(requests[start : start + batch_size])
                progress.update(len(requests[start : start + batch_size]))
            manifest.add(write_shard(Path(output_dir) / f"{name}-{shard_index:06d}.tar", samples))
    return manifest
