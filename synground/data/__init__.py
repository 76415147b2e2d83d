from synground.data.datamodule import GroundingDataModule
from synground.data.schema import GenerationRequest, GroundingSample, Region, TripletGenerator
from synground.data.shards import IncompleteShardSet, Manifest, read_manifest, resolve_shards, write_shard
from synground.data.streams import EvalSplit, GeneratorSource, MixedTrainStream

__all__ = [
    "EvalSplit",
    "GenerationRequest",
    "GeneratorSource",
    "GroundingDataModule",
    "GroundingSample",
    "IncompleteShardSet",
    "Manifest",
    "MixedTrainStream",
    "Region",
    "TripletGenerator",
    "read_manifest",
    "resolve_shards",
    "write_shard",
]
