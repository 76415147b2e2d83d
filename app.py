"""The web demo: `python app.py [ckpt_path=...]` (see conf/app.yaml), then open http://127.0.0.1:7860."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from synground.inference.app import serve


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> None:
    serve(cfg, train_script=Path(__file__).with_name("train.py"))


if __name__ == "__main__":
    main()
