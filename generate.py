"""Generate image-text-box triplets into WebDataset shards: `python generate.py generation=shapes`."""

import hydra
from omegaconf import DictConfig, OmegaConf

from synground.generation.writing import generate_shards


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    generation = cfg.generation
    manifest = generate_shards(hydra.utils.instantiate(generation.generator), cfg.output_dir, generation.num_samples,
                               generation.samples_per_shard, generation.seed, generation.name, generation.chunk_size,
                               config=OmegaConf.to_container(generation, resolve=True))
    print(f"{sum(s['samples'] for s in manifest.shards)} samples in {len(manifest.shards)} shards: {manifest.path}")


if __name__ == "__main__":
    main()
