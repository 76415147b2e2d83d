"""Generate image-text-box triplets into WebDataset shards: `python generate.py generation=shapes` (synground-generate)."""

from synground.cli import generate as main

if __name__ == "__main__":
    main()
