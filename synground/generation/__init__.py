"""The synthetic-data pipeline: descriptions, text-to-image, phrases, detection, filters and shard writing."""

from synground.extras import require

require("generation", "synground.generation (the synthetic-data pipeline)")
