"""Ground phrases in your own images: `python ground.py [ckpt_path=...] images=<file|folder|glob> phrases=...`
(synground-ground; see synground/conf/ground.yaml); writes overlay PNGs and results.jsonl into the run directory."""

from synground.cli import ground as main

if __name__ == "__main__":
    main()
