"""Pointing game of a grounding model on the test splits of a data config: `python eval.py model=... [ckpt_path=...]`."""

import hydra
from omegaconf import DictConfig

from synground.evaluation import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
