"""Train and test a grounding model: `python train.py experiment=shapes` (synground-train; see synground/conf/train.yaml)."""

from synground.cli import train as main

if __name__ == "__main__":
    main()
