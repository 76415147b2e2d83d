"""Train and test a grounding model: `python train.py experiment=shapes` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from synground.training import run_or_record_failure, train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_or_record_failure(train, cfg)


if __name__ == "__main__":
    main()
