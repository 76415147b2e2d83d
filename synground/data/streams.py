"""The data streams, without Lightning: training and evaluation sources (shard sets or generators), the training
stream that mixes real and synthetic sources at a ratio, and named evaluation splits. GroundingDataModule
(datamodule.py) batches them for Lightning; a plain PyTorch loop can iterate them with a DataLoader and `collate`."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from synground.data.proposals import ANNOTATIONS, Proposals
from synground.data.schema import GenerationRequest, GroundingSample, SkipCounts, TripletGenerator, count_skip
from synground.data.shards import iterate_shard, listed_shards
from synground.data.transforms import GroundingTransform, clean_regions, collate

log = logging.getLogger(__name__)


@dataclass
class GeneratorSource:
    """Samples drawn from a TripletGenerator: endless with fresh seeds for training, or N numbered samples (seeds
    `seed`..`seed`+N-1): an evaluation split, or in training a fixed pool read in a fresh order each pass."""

    generator: TripletGenerator
    num_samples: int | None = None  # None: endless (training only); N: samples 0..N-1
    seed: int = 0
    requests_per_call: int = 16
    name: str = "generated"


Source = str | GeneratorSource | TripletGenerator  # a shard set (path or URL), a generator config, or a generator


def as_source(source: Source) -> str | GeneratorSource:
    if isinstance(source, GeneratorSource):
        return source
    if isinstance(source, TripletGenerator):
        return GeneratorSource(source)
    if isinstance(source, str):
        return source
    raise TypeError(f"a data source must be a shard path, a GeneratorSource or a TripletGenerator, got {type(source).__name__}")


def _local_worker() -> tuple[int, int]:
    """(index, count) of this data-loading worker within its rank."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


def _worker_slot(worker: int | None = None) -> tuple[int, int]:
    """(index, count) of this data-loading worker (or of its `worker` part) across all ranks."""
    rank, world = (
        (torch.distributed.get_rank(), torch.distributed.get_world_size())
        if (torch.distributed.is_available() and torch.distributed.is_initialized())
        else (0, 1)
    )
    local, workers = _local_worker()
    return rank * workers + (local if worker is None else worker), world * workers


def _endless_samples(
    source: str | GeneratorSource,
    rng: random.Random,
    issues: Counter[str],
    slot: int = 0,
    slots: int = 1,
    partition_seed: str = "",
    allow_partial: bool = False,
) -> Iterator[GroundingSample]:
    """Training stream: shards, or the samples of a fixed generator pool, in a random order per pass; or generator
    requests with fresh seeds (a GeneratorSource without `num_samples`).

    With at least as many shards (pool samples) as slots (ranks x workers), they are dealt to the slots (a new deal
    each epoch: `partition_seed` is the same on every slot), so no sample is seen by two ranks in one epoch; a slot
    repeats a sample only after reading all of its share. With fewer, every slot reads all of them, in its own order;
    so does a slot whose share gave no readable sample in a whole pass (its shards were dealt before they were read).
    """
    if isinstance(source, GeneratorSource) and source.num_samples is not None:
        indices = range(source.num_samples)
        dealt = random.Random(partition_seed).sample(indices, len(indices))
        mine = dealt[slot::slots] if len(indices) >= slots else list(indices)
        while True:
            yield from _numbered_samples(source, rng.sample(mine, len(mine)))
    elif isinstance(source, str):
        listed = listed_shards(source, allow_partial)
        shards = list(listed)
        dealt = random.Random(partition_seed).sample(shards, len(shards))
        mine = dealt[slot::slots] if len(shards) >= slots else shards
        empty_passes = 0
        while True:
            produced = False
            for shard in rng.sample(mine, len(mine)):
                for sample in iterate_shard(shard, issues, listed[shard]):
                    produced = True
                    yield sample
            if not produced and len(mine) < len(shards):
                mine = shards
                continue
            empty_passes = 0 if produced else empty_passes + 1
            if empty_passes > 3:
                raise RuntimeError(f"no readable sample in the shards of {source!r}")
    else:
        while True:
            requests = []
            for _ in range(source.requests_per_call):
                seed = rng.getrandbits(62)
                requests.append(GenerationRequest(key=f"{source.name}-{seed:016x}", seed=seed))
            yield from source.generator.generate(requests)


def _split_samples(
    source: str | GeneratorSource, slot: int, slots: int, issues: Counter[str], allow_partial: bool = False
) -> Iterator[GroundingSample]:
    """Evaluation stream: every sample exactly once across all workers and ranks, in a fixed order."""
    if isinstance(source, str):
        listed = listed_shards(source, allow_partial)
        shards = list(listed)
        if len(shards) >= slots:
            for shard in shards[slot::slots]:
                yield from iterate_shard(shard, issues, listed[shard])
        else:  # every slot reads every shard and keeps its share: one of them counts what reading skipped
            reading_issues = issues if slot == 0 else Counter()
            for index, sample in enumerate(s for shard in shards for s in iterate_shard(shard, reading_issues, listed[shard])):
                if index % slots == slot:
                    yield sample
    else:
        if source.num_samples is None:
            raise ValueError(f"evaluation source {source.name!r} needs num_samples (an endless split never ends)")
        yield from _numbered_samples(source, range(slot, source.num_samples, slots))


def _numbered_samples(source: GeneratorSource, indices: Sequence[int]) -> Iterator[GroundingSample]:
    """Samples `indices` of a numbered source, in that order: sample i has seed `source.seed + i` and the same key
    whether it is read as an evaluation split or as a training pool."""
    for start in range(0, len(indices), source.requests_per_call):
        requests = [
            GenerationRequest(key=f"{source.name}-{i:08d}", seed=source.seed + i)
            for i in indices[start : start + source.requests_per_call]
        ]
        yield from source.generator.generate(requests)


class MixedTrainStream(IterableDataset):
    """Endless real and synthetic streams mixed per sample at `synthetic_ratio`, batched inside the dataset.

    Every rank yields exactly `batches_per_epoch` batches (shared among its workers), so DDP ranks never wait
    for each other; each epoch, rank and worker draws from its own seeded random stream.

    An epoch can start after its first `skip` batches (a run resumed mid-epoch): the DataLoader takes batch j from
    worker j % workers, and a resumed loader starts again at worker 0, so each worker plays the part of worker
    (worker + skip) % workers and replays that part's skipped batches without yielding them. Replaying keeps every
    random draw and shard position exactly where the uninterrupted epoch had them; it costs data loading only.
    """

    def __init__(
        self,
        synthetic: Sequence[str | GeneratorSource],
        real: Sequence[str | GeneratorSource],
        synthetic_ratio: float,
        transform: GroundingTransform,
        batch_size: int,
        batches_per_epoch: int,
        seed: int,
        exclude_keys: frozenset[str] = frozenset(),
        allow_partial: bool = False,
    ):
        if not synthetic and not real:
            raise ValueError("no training source: give synthetic and/or real sources (data.train.synthetic, data.train.real)")
        self.synthetic, self.real = list(synthetic), list(real)
        self.synthetic_ratio = synthetic_ratio if synthetic and real else float(bool(synthetic))
        if self.synthetic_ratio != synthetic_ratio:
            log.warning(
                "only %s training data given: synthetic_ratio %.2f is ignored",
                "synthetic" if synthetic else "real",
                synthetic_ratio,
            )
        self.transform = transform
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.seed = seed
        self.exclude_keys = exclude_keys
        self.allow_partial = allow_partial
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """The epoch the next pass yields, without its first `skip` batches."""
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[dict[str, Any]]:
        local, workers = _local_worker()
        worker = (local + self.skip) % workers
        slot, slots = _worker_slot(worker)
        rng = random.Random(f"{self.seed}:{self.epoch}:{slot}")
        issues = SkipCounts()  # each bad sample named, so one met in several passes counts once (DataIssueCounts)
        streams = {
            name: self._interleave(
                [
                    _endless_samples(
                        s,
                        random.Random(f"{self.seed}:{self.epoch}:{slot}:{name}:{i}"),
                        issues,
                        slot,
                        slots,
                        partition_seed=f"{self.seed}:{self.epoch}:{name}:{i}",
                        allow_partial=self.allow_partial,
                    )
                    for i, s in enumerate(sources)
                ],
                rng,
            )
            for name, sources in (("synthetic", self.synthetic), ("real", self.real))
            if sources
        }
        my_batches = len(range(worker, self.batches_per_epoch, workers))
        skipped = len(range(worker, self.skip, workers))
        if skipped >= my_batches:  # resumed at the end of the epoch: nothing to replay
            return
        for index in range(my_batches):
            items, excluded = [], 0
            while len(items) < self.batch_size:
                domain = "synthetic" if rng.random() < self.synthetic_ratio else "real"
                sample = next(streams[domain])
                if sample.key in self.exclude_keys:
                    count_skip(issues, "excluded_sample", sample.key)
                    excluded += 1
                    if excluded > 1000 * self.batch_size:
                        raise RuntimeError("nearly every training sample is in exclude_keys (data.exclude_keys)")
                    continue
                regions = clean_regions(sample, issues)
                if not regions:
                    count_skip(issues, "sample_without_regions", sample.key)
                    continue
                # one random region per sample and step, as the AMC reference draws one box per caption
                item = self.transform(sample.image, rng.choice(regions), sample.key, rng)
                item["domain"] = domain
                items.append(item)
            if index < skipped:  # trained on before the run was interrupted, its skips counted then
                issues.clear()
                continue
            batch = collate(items)
            batch["synthetic"] = torch.tensor([item["domain"] == "synthetic" for item in items])
            batch["data_issues"] = dict(issues)  # what was counted, not named (skips of an on-the-fly generator)
            batch["data_faults"] = sorted(issues.faults)  # "<reason> <shard> <key> ...": DataIssueCounts counts each once
            issues.clear()  # the same SkipCounts: the shard readers keep counting into it
            yield batch

    @staticmethod
    def _interleave(streams: list[Iterator[GroundingSample]], rng: random.Random) -> Iterator[GroundingSample]:
        while True:
            yield next(rng.choice(streams))


class EvalSplit(IterableDataset):
    """One item per (sample, region) of a fixed split; split across ranks and workers without repeats.

    With `proposals` (a loaded proposals file, or ANNOTATIONS: every annotated box of the sample) each item also
    carries `candidate_boxes` [K, 4] in the original image's pixels, for box accuracy from proposals.
    """

    def __init__(
        self,
        name: str,
        source: str | GeneratorSource,
        transform: GroundingTransform,
        allow_partial: bool = False,
        proposals: Proposals | str | None = None,
        proposals_name: str = "",
    ):
        self.name, self.source, self.transform, self.allow_partial = name, source, transform, allow_partial
        self.proposals, self.proposals_name = proposals, proposals_name

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Items, each carrying in `data_issues` what was skipped since the one before; what was skipped after the last
        one goes out in an item that carries nothing else. A worker process's counter dies with it, so a worker whose
        whole share was unreadable reports it that way; `EvalLoader` takes the counts off the batches."""
        issues: Counter[str] = Counter()
        for item in self._items(issues):
            item["data_issues"] = dict(issues)
            issues.clear()
            yield item
        if issues:
            yield {"data_issues": dict(issues)}

    def _items(self, issues: Counter[str]) -> Iterator[dict[str, Any]]:
        slot, slots = _worker_slot()
        for sample in _split_samples(self.source, slot, slots, issues, self.allow_partial):
            regions = clean_regions(sample, issues)
            if not regions:
                count_skip(issues, "sample_without_regions", sample.key)
                continue
            pixels = self.transform.pixels(sample.image)  # once for all the sample's phrases
            candidates = self._candidates(sample.key, regions)
            for index, region in enumerate(regions):
                item = self.transform.region_item(pixels, sample.image.size, region, f"{sample.key}-{index}", with_mask=False)
                item["image_key"] = sample.key  # the phrases of one image share it: the model can encode it once
                if candidates is not None:
                    item["candidate_boxes"] = candidates
                yield item

    def _candidates(self, key: str, regions: list) -> torch.Tensor | None:
        if self.proposals is None:
            return None
        if self.proposals == ANNOTATIONS:
            boxes = list(dict.fromkeys(tuple(box) for region in regions for box in region.boxes))
        elif key in self.proposals:
            boxes = self.proposals[key]
        else:
            raise ValueError(
                f"eval split {self.name!r}: the proposals file {self.proposals_name} has no boxes for sample {key!r} "
                "(its keys are the shards' sample keys, e.g. coco-<image id>; give every image of the split an entry, "
                "an empty list if it has no candidate)"
            )
        return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
