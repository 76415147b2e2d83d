"""The sample format, shard sets, streams and batches: usable from plain PyTorch. GroundingDataModule, the Lightning
wrapper, is imported on first use, so `import synground.data` (and every data-loader worker) does not load Lightning."""

from synground.data.schema import GenerationRequest, GroundingSample, Region, TripletGenerator
from synground.data.shards import IncompleteShardSet, Manifest, read_manifest, resolve_shards, write_shard
from synground.data.streams import EvalSplit, GeneratorSource, MixedTrainStream
from synground.data.transforms import GroundingBatch, GroundingTransform, collate, normalize_images

__all__ = [
    "EvalSplit",
    "GenerationRequest",
    "GeneratorSource",
    "GroundingBatch",
    "GroundingDataModule",
    "GroundingSample",
    "GroundingTransform",
    "IncompleteShardSet",
    "Manifest",
    "MixedTrainStream",
    "Region",
    "TripletGenerator",
    "collate",
    "normalize_images",
    "read_manifest",
    "resolve_shards",
    "write_shard",
]


def __getattr__(name: str):
    if name == "GroundingDataModule":
        from synground.data.datamodule import GroundingDataModule

        return GroundingDataModule
    raise AttributeError(f"module 'synground.data' has no attribute {name!r}")
