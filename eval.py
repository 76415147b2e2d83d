"""Pointing game of a grounding model on the test splits of a data config: `python eval.py model=... [ckpt_path=...]`
(synground-eval; see synground/conf/eval.yaml)."""

from synground.cli import evaluate as main

if __name__ == "__main__":
    main()
