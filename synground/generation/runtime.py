"""What every pipeline stage shares: per-stage telemetry and the rejected candidates it keeps, batching with an
out-of-memory fallback, loading a pretrained model once per process, and the provenance of a model."""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch
from PIL import Image

from synground.data.schema import Region

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class Rejected:
    """A candidate as it was when a stage rejected it: what the dataset report draws for each rejection reason.

    Callers that know what each item is (the pipelines) hand stages these candidates; the stage that rejects one adds
    what it found: `score`, the value that failed, and `threshold`, the limit it failed (None where a reason has no
    score), and boxes or the image where it made them. Phrases without a box are regions without boxes.
    """

    key: str
    caption: str = ""
    image: torch.Tensor | Image.Image | None = None  # uint8 [3, H, W] in the pipeline; None before one was drawn
    regions: list[Region] = field(default_factory=list)
    score: float | None = None
    threshold: float | None = None


class StageClock:
    """Seconds and items per stage, rejections by reason and other events, since the last `take()`; and, when `keep`
    is positive, the first `keep` rejected candidates of each reason as they were."""

    def __init__(self, keep: int = 0):
        self.keep = keep
        self.seconds: Counter[str] = Counter()
        self.items: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.kept: dict[str, list[Rejected]] = {}

    @contextmanager
    def stage(self, name: str, items: int) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if torch.cuda.is_available():  # kernels run asynchronously: charge them to the stage that launched them
            torch.cuda.synchronize()
        self.seconds[name] += time.perf_counter() - start
        self.items[name] += items

    def reject(self, reason: str, count: int = 1, candidate: Rejected | None = None, **found: Any) -> None:
        """Count `count` rejections for `reason`; keep `candidate` with what the stage `found` (its score, threshold,
        boxes, image) while fewer than `keep` are kept for the reason. Without a candidate (a caller that gave none,
        a batch lost to memory) the rejection is only counted."""
        if count:
            self.rejections[reason] += count
        if candidate is not None and len(self.kept.get(reason, ())) < self.keep:
            self.kept.setdefault(reason, []).append(replace(candidate, **found))

    def take(self) -> dict[str, Any]:
        """The counts so far as plain dicts, the kept candidates (`kept`: reason -> candidates), and a fresh start."""
        taken = {
            "stage_seconds": dict(self.seconds),
            "stage_items": dict(self.items),
            "rejections": dict(self.rejections),
            "events": dict(self.events),
            "kept": self.kept,
        }
        self.__init__(self.keep)
        return taken


class LazyModels:
    """A stage whose models load on first use, once per process: cheap to build, and safe to send to data-loading
    workers, which load their own copy on their own device after they start (CUDA cannot survive a fork)."""

    device: str = "auto"
    _loaded: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": None}

    @property
    def uses_cuda(self) -> bool:
        return self.device.startswith("cuda") or (self.device == "auto" and torch.cuda.is_available())


class OutOfMemory:
    """What `run_batched` gives for an item skipped for lack of memory, which it counted as `out_of_memory`. Falsy
    like None, but told apart from "nothing found", so that no later stage counts the same lost request again
    (e.g. as no_phrases or no_description)."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "OUT_OF_MEMORY"


OUT_OF_MEMORY = OutOfMemory()


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def run_batched(
    function: Callable[[Sequence[Item]], list[Result]],
    items: Sequence[Item],
    batch_size: int,
    clock: StageClock,
    stage: str,
    reject_lost: bool = True,
) -> list[Result | OutOfMemory]:
    """`function` over `items` in batches of `batch_size`, one result per item.

    A batch that runs out of memory is retried as two halves; a half that runs out again is skipped: its items
    get OUT_OF_MEMORY and are counted (once, here) as `out_of_memory` rejections, and the run goes on. With
    `reject_lost` False (items whose sample goes on without their result, as paraphrases) they are counted as the
    event `<stage>/out_of_memory` instead.
    """
    results: list[Result | None] = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        try:
            results += _timed(function, batch, clock, stage)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
            log.warning("%s: out of memory on a batch of %d; retrying at half size", stage, len(batch))
            clock.events[f"{stage}/out_of_memory_retry"] += 1
            half = max(1, len(batch) // 2)
            for part in (batch[:half], batch[half:]):
                if not part:
                    continue
                _release_memory()
                try:
                    results += _timed(function, part, clock, stage)
                except (torch.OutOfMemoryError, RuntimeError) as retry_error:
                    if not is_out_of_memory(retry_error):
                        raise
                    log.warning("%s: out of memory again at %d items; skipping them", stage, len(part))
                    if reject_lost:
                        clock.reject("out_of_memory", len(part))
                    else:
                        clock.events[f"{stage}/out_of_memory"] += len(part)
                    results += [OUT_OF_MEMORY] * len(part)
    return results


def _timed(
    function: Callable[[Sequence[Item]], list[Result]], batch: Sequence[Item], clock: StageClock, stage: str
) -> list[Result]:
    with clock.stage(stage, len(batch)):
        results = function(batch)
    if len(results) != len(batch):
        raise RuntimeError(f"stage {stage} returned {len(results)} results for {len(batch)} items")
    return results


def _release_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 [3, H, W] -> PIL, the one conversion of an image on its way to the shard (or the rejected candidates)."""
    return Image.fromarray(image.permute(1, 2, 0).cpu().numpy())


def model_dtype(name: str, device: str) -> torch.dtype:
    """The configured dtype on a GPU; float32 on the CPU, where half-precision matmuls are slow or missing."""
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(dtypes)}")
    return dtypes[name] if device != "cpu" else torch.float32


def resolve_device(device: str) -> str:
    """`auto` is the GPU this process owns (Lightning sets the current device per rank), else the CPU."""
    if device == "auto":
        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    return device


@functools.cache
def load_pretrained(loader: Callable[..., Any], model_id: str, revision: str | None = None, **kwargs: Any) -> Any:
    """`loader.from_pretrained(model_id, ...)`, once per process for equal arguments (stages share models)."""
    try:
        return loader.from_pretrained(model_id, revision=revision, **kwargs)
    except OSError as error:
        raise OSError(
            f"cannot load {model_id!r} (revision {revision or 'main'}) with {getattr(loader, '__name__', loader)}: "
            f"{error}\nDownload it first (`huggingface-cli download {model_id}`) or pass a local directory "
            f"that holds it; offline runs need HF_HUB_OFFLINE=1 and a filled cache."
        ) from error


def model_provenance(model_id: str, revision: str | None, model: Any = None, **settings: Any) -> dict[str, Any]:
    """Model id, the commit actually loaded (when the hub reports it) and the settings that shaped the output."""
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return {"model": model_id, "revision": commit or revision, **settings}


def prompt_version(template: str) -> str:
    """A short content hash: a changed prompt is a different prompt, whatever its name."""
    return hashlib.sha256(template.encode()).hexdigest()[:10]


def move_to(batch: dict[str, Any], device: str, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Tensors of a processor's output on `device`; floating ones in the model's dtype."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
        moved[key] = value
    return moved


def load_stages(stages: Sequence[Any]) -> None:
    """Load every stage's models (and seed image index) now: a missing one fails before any work, and the first
    batch's timing measures work, not loading."""
    for stage in stages:
        for owner in (getattr(stage, "seed_images", None), stage, getattr(stage, "llm", None)):
            load = getattr(owner, "load", None)
            if callable(load):
                load()
