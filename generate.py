"""Generate image-text-box triplets into WebDataset shards: `python generate.py generation=shapes`."""

import shlex
import sys

import hydra
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from synground.generation.report import dataset_report
from synground.generation.writing import generate_shards


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    generation = cfg.generation
    near_duplicates = generation.get("near_duplicates")
    manifest = generate_shards(
        hydra.utils.instantiate(generation.generator),
        cfg.output_dir,
        generation.num_samples,
        generation.samples_per_shard,
        generation.seed,
        generation.name,
        generation.chunk_size,
        config=OmegaConf.to_container(generation, resolve=True),
        near_duplicates=hydra.utils.instantiate(near_duplicates) if near_duplicates else None,
        trainer=OmegaConf.to_container(cfg.trainer, resolve=True),
        command=shlex.join(["python", *sys.argv]),
        keep_rejected=cfg.keep_rejected,
    )
    if rank_zero_only.rank != 0:  # every rank runs this script under DDP; one reports
        return
    print(f"{sum(s['samples'] for s in manifest.shards)} samples in {len(manifest.shards)} shards: {manifest.path}")
    if cfg.report:
        dataset_report(cfg.output_dir, samples=cfg.report_samples or None)
        print(f"dataset report: {cfg.output_dir}/report/report.md")


if __name__ == "__main__":
    main()
