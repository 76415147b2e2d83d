"""Convert a real dataset from its own files into WebDataset shards: `python convert.py dataset=flickr30k`
(synground-convert)."""

from synground.cli import convert as main

if __name__ == "__main__":
    main()
