"""Convert a real dataset from its own files into WebDataset shards: `python convert.py dataset=flickr30k`."""

import shlex
import sys
from collections import Counter

import hydra
from omegaconf import DictConfig, OmegaConf

from synground.data.convert import convert_records
from synground.generation.report import dataset_report


@hydra.main(version_base="1.3", config_path="conf", config_name="convert")
def main(cfg: DictConfig) -> None:
    issues: Counter[str] = Counter()
    reader = hydra.utils.instantiate(cfg.dataset.reader, _partial_=True)
    records = reader(issues=issues)  # passed here, not to instantiate, which would copy the Counter into a config
    report = convert_records(
        records,
        cfg.output_dir,
        cfg.dataset.name,
        cfg.samples_per_shard,
        issues,
        config=OmegaConf.to_container(cfg.dataset, resolve=True),
        command=shlex.join(["python", *sys.argv]),
    )
    print(f"{report['samples']} images with {report['regions']} phrases in {report['shards']} shards: {report['manifest']}")
    if report["skipped"]:
        print("skipped: " + ", ".join(f"{reason} {count}" for reason, count in report["skipped"].items()))
    if cfg.report:
        dataset_report(cfg.output_dir, samples=cfg.report_samples or None)
        print(f"dataset report: {cfg.output_dir}/report/report.md")


if __name__ == "__main__":
    main()
