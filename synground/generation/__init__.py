"""The synthetic-data pipeline: descriptions, text-to-image, phrases, detection, filters and shard writing."""
