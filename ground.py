"""Ground phrases in your own images: `python ground.py [ckpt_path=...] images=<file|folder|glob> phrases=...`
(see conf/ground.yaml); writes overlay PNGs and results.jsonl into the run directory."""

import hydra
from omegaconf import DictConfig

from synground.inference.batch import ground


@hydra.main(version_base="1.3", config_path="conf", config_name="ground")
def main(cfg: DictConfig) -> None:
    ground(cfg)


if __name__ == "__main__":
    main()
