"""GroundingDataModule: real and synthetic training sources mixed at a ratio, named evaluation splits."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from synground.data.proposals import ANNOTATIONS, Proposals, load_proposals
from synground.data.schema import GenerationRequest, GroundingSample, SkipCounts, TripletGenerator, count_skip
from synground.data.shards import iterate_shard, listed_shards, resolve_shards
from synground.data.transforms import CLIP_MEAN, CLIP_STD, GroundingTransform, clean_regions, collate, normalize_images

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


Source = str | GeneratorSource | TripletGenerator


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
            raise ValueError("no training source: give data.train.synthetic and/or data.train.real")
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
                        raise RuntimeError("nearly every training sample is in data.exclude_keys")
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


class EvalLoader(DataLoader):
    """An evaluation split's loader: passes on the batches that hold items, and keeps in `data_issues` what its
    workers skipped during the current pass, complete once the pass has ended (`DataIssueCounts` logs it). The counts
    travel from the workers inside the batches and are summed here, in the main process, so every skip is counted once
    whatever the number of workers, also when a worker (or a rank) is left with no item at all."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_issues: Counter[str] = Counter()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.data_issues = Counter()
        return self._batches(super().__iter__())

    def _batches(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for batch in batches:
            self.data_issues.update(batch.pop("data_issues", {}))
            if "images" in batch:  # not a worker's last word, which carries counts only
                yield batch


class _TrainLoader(DataLoader):
    """Tells its dataset the epoch before each pass (Lightning only does that for samplers), and resumes a pass
    mid-epoch: Lightning keeps `state_dict()` in every checkpoint and hands it to `load_state_dict()` before the
    first pass of a resumed run.

    `epoch` and `trained` tell the epoch and how many of its batches were trained on; the worker processes' base
    seed comes from a generator seeded by the epoch, not from the global one, so creating the pass anew on resuming
    draws nothing from the random stream that negatives and dropout use.
    """

    def __init__(self, *args, epoch: Callable[[], int], trained: Callable[[], int], seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._epoch, self._trained, self._seed = epoch, trained, seed
        self._serving = 0  # the epoch of the current pass
        self._resume: dict[str, int] | None = None

    def __iter__(self):
        self._serving = self._epoch()
        resume, self._resume = self._resume, None
        skip = resume["batches"] if resume and resume["epoch"] == self._serving else 0
        if skip:
            log.info("resuming epoch %d at batch %d", self._serving, skip)
        self.dataset.set_epoch(self._serving, skip)
        self.generator = torch.Generator().manual_seed(self._seed * 100_003 + self._serving)
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._serving, "batches": self._trained()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = state


class GroundingDataModule(L.LightningDataModule):
    """Training sources mixed at `synthetic_ratio`; `val` and `test` map split names to sources.

    A source is a shard path (directory with manifest, manifest file, glob or brace pattern), a TripletGenerator
    (drawn on the fly) or a GeneratorSource. Works with or without Hydra:

        GroundingDataModule(train={"synthetic": "shards/syn", "real": "shards/vg"}, test={"flickr": "shards/f30k"},
                            synthetic_ratio=0.5, image_size=384)
    """

    def __init__(
        self,
        train: Mapping[str, Source | Sequence[Source]] | None = None,
        val: Mapping[str, Source] | None = None,
        test: Mapping[str, Source] | None = None,
        synthetic_ratio: float = 0.5,
        image_size: int = 384,
        mask_size: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        batches_per_epoch: int = 1000,
        num_workers: int = 2,
        flip_prob: float = 0.5,
        seed: int = 0,
        pin_memory: bool = False,
        eval_image_size: Mapping[str, int] | None = None,
        exclude_keys: str | None = None,
        allow_partial: bool = False,
        proposals: Mapping[str, str] | str | None = None,
        val_split_of: Mapping[str, str] | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ):
        super().__init__()
        if not isinstance(synthetic_ratio, (int, float)) or isinstance(synthetic_ratio, bool):
            raise ValueError(f"data.synthetic_ratio must be a number in [0, 1], got {synthetic_ratio!r}")
        if not 0.0 <= synthetic_ratio <= 1.0:
            raise ValueError(f"data.synthetic_ratio must lie in [0, 1], got {synthetic_ratio}")
        for key, value in (
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("batches_per_epoch", batches_per_epoch),
        ):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"data.{key} must be a whole number, 1 or more; got {value!r}")
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise ValueError(
                f"data.num_workers must be a whole number, 0 or more (0: load in the main process); got {num_workers!r}"
            )
        unknown = set(train or {}) - {"synthetic", "real"}
        if unknown:
            raise ValueError(f"data.train has unknown keys {sorted(unknown)}: use 'synthetic' and/or 'real'")
        self.train_sources = {name: [as_source(s) for s in _as_list((train or {}).get(name))] for name in ("synthetic", "real")}
        for name, sources in self.train_sources.items():
            for source in sources:  # an empty pool would leave its stream looping forever without a sample
                if isinstance(source, GeneratorSource) and source.num_samples is not None and source.num_samples < 1:
                    raise ValueError(
                        f"data.train.{name}: source {source.name!r} has num_samples={source.num_samples}: "
                        "a training pool needs at least 1 sample (null for endless fresh scenes)"
                    )
        self.val_sources = {name: as_source(s) for name, s in (val or {}).items()}
        self.test_sources = {name: as_source(s) for name, s in (test or {}).items()}
        self.synthetic_ratio = synthetic_ratio
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.batches_per_epoch = batches_per_epoch
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.allow_partial = allow_partial  # read shard sets whose writing run did not finish (refused by default)
        self.exclude_keys = frozenset()  # e.g. training samples that leak into evaluation (synground.data.leakage)
        if exclude_keys:
            if not Path(exclude_keys).is_file():
                raise FileNotFoundError(f"data.exclude_keys={exclude_keys}: no such file (one sample key per line)")
            self.exclude_keys = frozenset(Path(exclude_keys).read_text().split())
        self.mean, self.std = tuple(mean), tuple(std)
        self.train_transform = GroundingTransform(image_size, mask_size, flip_prob)
        eval_image_size = eval_image_size or {}
        self._check_split_names("eval_image_size", eval_image_size)
        # {test split: the validation split of its benchmark}: train.py keeps the checkpoint best on that split for it
        self.val_split_of = dict(val_split_of or {})
        for test_split, val_split in self.val_split_of.items():
            if test_split not in self.test_sources or val_split not in self.val_sources:
                raise ValueError(
                    f"data.val_split_of.{test_split}={val_split}: needs a test split {test_split!r} (data.test has "
                    f"{sorted(self.test_sources)}) and a validation split {val_split!r} (data.val has {sorted(self.val_sources)})"
                )
        # per split: candidate boxes for box accuracy from proposals, a proposals file or "annotations"; one value for all
        if isinstance(proposals, str):
            proposals = dict.fromkeys([*self.val_sources, *self.test_sources], proposals)
        proposals = proposals or {}
        self._check_split_names("proposals", proposals)
        self.proposals = {
            name: (ANNOTATIONS if value == ANNOTATIONS else load_proposals(value), str(value))
            for name, value in proposals.items()
            if value
        }
        # per split, e.g. RefCOCO+ at 384 px while training and Flickr30k run at 256 px
        self.eval_transforms = {
            name: GroundingTransform(eval_image_size.get(name, image_size), mask_size, flip_prob=0.0)
            for name in [*self.val_sources, *self.test_sources]
        }

    def _check_split_names(self, setting: str, per_split: Mapping[str, Any]) -> None:
        unknown = set(per_split) - set(self.val_sources) - set(self.test_sources)
        if unknown:
            raise ValueError(f"data.{setting} names splits that are not in data.val or data.test: {sorted(unknown)}")

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """uint8 images and masks -> normalised float images and float masks, once the (4x smaller) uint8 batch is
        on the model's device. Lightning calls this; a loop without a Trainer calls it on each batch itself.
        """
        if batch["images"].dtype == torch.uint8:
            batch["images"] = normalize_images(batch["images"], self.mean, self.std)
            if "masks" in batch:  # training batches only
                batch["masks"] = batch["masks"].float()
        return batch

    def setup(self, stage: str) -> None:
        """Check that the shard paths this stage reads exist: fail now, naming the path, not inside a worker."""
        sources = {
            "fit": [*self.train_sources["synthetic"], *self.train_sources["real"], *self.val_sources.values()],
            "validate": list(self.val_sources.values()),
            "test": list(self.test_sources.values()),
        }.get(stage, [])
        for source in sources:
            if isinstance(source, str):
                resolve_shards(source, self.allow_partial)

    @property
    def val_split_names(self) -> list[str]:
        return list(self.val_sources)

    @property
    def test_split_names(self) -> list[str]:
        return list(self.test_sources)

    def train_dataloader(self) -> DataLoader:
        dataset = MixedTrainStream(
            self.train_sources["synthetic"],
            self.train_sources["real"],
            self.synthetic_ratio,
            self.train_transform,
            self.batch_size,
            self.batches_per_epoch,
            self.seed,
            self.exclude_keys,
            self.allow_partial,
        )
        # Lightning's own sampler epoch and batch count: right also when a run resumes from a checkpoint
        if self.trainer is not None:
            loop = self.trainer.fit_loop
            epoch, trained = (
                (lambda: loop.epoch_progress.current.processed),
                (lambda: loop.epoch_loop.batch_progress.current.processed),
            )
        else:
            epoch, trained = _counter(), (lambda: 0)
        return _TrainLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            epoch=epoch,
            trained=trained,
            seed=self.seed,
            multiprocessing_context=self._worker_start([*self.train_sources["synthetic"], *self.train_sources["real"]]),
        )

    def val_dataloader(self) -> list[EvalLoader]:
        return [self._eval_loader(name, source) for name, source in self.val_sources.items()]

    def test_dataloader(self) -> list[EvalLoader]:
        return [self._eval_loader(name, source) for name, source in self.test_sources.items()]

    def _eval_loader(self, name: str, source: str | GeneratorSource) -> EvalLoader:
        return EvalLoader(
            EvalSplit(name, source, self.eval_transforms[name], self.allow_partial, *self.proposals.get(name, (None, ""))),
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            multiprocessing_context=self._worker_start([source]),
        )

    def _worker_start(self, sources: Sequence[str | GeneratorSource]) -> str | None:
        """ "spawn" when a worker will run a generator on the GPU: a forked child cannot use CUDA. Such generators load
        their models lazily, so each spawned worker loads its own copy on first use."""
        on_gpu = any(getattr(s.generator, "uses_cuda", False) for s in sources if isinstance(s, GeneratorSource))
        return "spawn" if on_gpu and self.num_workers > 0 else None


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (str, GeneratorSource, TripletGenerator)):
        return [value]
    return list(value)


def _counter() -> Callable[[], int]:
    count = iter(range(1 << 62))
    return lambda: next(count)
