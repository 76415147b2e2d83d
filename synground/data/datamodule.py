"""GroundingDataModule: real and synthetic training sources mixed at a ratio, named evaluation splits."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from synground.data.proposals import ANNOTATIONS, load_proposals
from synground.data.schema import TripletGenerator
from synground.data.shards import resolve_shards
from synground.data.streams import EvalSplit, GeneratorSource, MixedTrainStream, Source, as_source
from synground.data.transforms import CLIP_MEAN, CLIP_STD, GroundingTransform, collate, normalize_images

log = logging.getLogger(__name__)


def argument(name: str) -> str:
    """How errors name a GroundingDataModule argument: as the constructor takes it and as a config sets it."""
    return f"{name} (data.{name})"


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
            raise ValueError(f"{argument('synthetic_ratio')} must be a number in [0, 1], got {synthetic_ratio!r}")
        if not 0.0 <= synthetic_ratio <= 1.0:
            raise ValueError(f"{argument('synthetic_ratio')} must lie in [0, 1], got {synthetic_ratio}")
        for key, value in (
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("batches_per_epoch", batches_per_epoch),
        ):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{argument(key)} must be a whole number, 1 or more; got {value!r}")
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise ValueError(
                f"{argument('num_workers')} must be a whole number, 0 or more (0: load in the main process); got {num_workers!r}"
            )
        unknown = set(train or {}) - {"synthetic", "real"}
        if unknown:
            raise ValueError(f"{argument('train')} has unknown keys {sorted(unknown)}: use 'synthetic' and/or 'real'")
        self.train_sources = {name: [as_source(s) for s in _as_list((train or {}).get(name))] for name in ("synthetic", "real")}
        for name, sources in self.train_sources.items():
            for source in sources:  # an empty pool would leave its stream looping forever without a sample
                if isinstance(source, GeneratorSource) and source.num_samples is not None and source.num_samples < 1:
                    raise ValueError(
                        f"{argument('train')}[{name!r}]: source {source.name!r} has num_samples={source.num_samples}: "
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
                raise FileNotFoundError(f"{argument('exclude_keys')}={exclude_keys}: no such file (one sample key per line)")
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
                    f"{argument('val_split_of')}[{test_split!r}]={val_split}: needs a test split {test_split!r} (test has "
                    f"{sorted(self.test_sources)}) and a validation split {val_split!r} (val has {sorted(self.val_sources)})"
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
            raise ValueError(f"{argument(setting)} names splits that are not in val or test: {sorted(unknown)}")

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
        """The mixed training stream: `batches_per_epoch` `GroundingBatch`es per epoch and rank, with masks."""
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
        """One loader per validation split, in the order of `val_split_names` (Lightning's dataloader_idx indexes it);
        its batches are `GroundingBatch`es without masks."""
        return [self._eval_loader(name, source) for name, source in self.val_sources.items()]

    def test_dataloader(self) -> list[EvalLoader]:
        """One loader per test split, in the order of `test_split_names`, as `val_dataloader`."""
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
