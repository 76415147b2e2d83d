from synground.data.datamodule import GeneratorSource, GroundingDataModule
from synground.data.schema import GenerationRequest, GroundingSample, Region, TripletGenerator
from synground.data.shards import IncompleteShardSet, Manifest, read_manifest, resolve_shards, write_shard

__all__ = [
    "GenerationRequest",
    "GeneratorSource",
    "GroundingDataModule",
    "GroundingSample",
    "IncompleteShardSet",
    "Manifest",
    "Region",
    "TripletGenerator",
    "read_manifest",
    "resolve_shards",
    "write_shard",
]
