"""Readers of the real datasets' own files. Each yields `Record`s (one image's annotations) in a fixed order."""

from synground.data.readers.flickr30k import flickr30k_records
from synground.data.readers.record import Record, load_record, require
from synground.data.readers.refcoco import load_refs, refcoco_records
from synground.data.readers.visual_genome import amc_json_records, visual_genome_records

__all__ = [
    "Record",
    "amc_json_records",
    "flickr30k_records",
    "load_record",
    "load_refs",
    "refcoco_records",
    "require",
    "visual_genome_records",
]
