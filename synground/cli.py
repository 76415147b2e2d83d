"""The Hydra commands, one function each: the console scripts synground-train, -eval, -generate, -convert, -ground and
-app call them, and so do the thin scripts at the top of a checkout (python train.py ... is synground-train ...).
Their configs are the package's (synground/conf); `--help` lists a command's config groups and options.

    python -m synground.cli train experiment=shapes      (the same as synground-train experiment=shapes)
"""

from __future__ import annotations

from synground.extras import require

require("train", "the synground commands (synground-train, -eval, -generate, -convert, -ground, -app)")

import shlex
import sys
from collections import Counter
from functools import partial

import hydra
from omegaconf import DictConfig, OmegaConf

CONFIGS = "conf"  # synground/conf, found beside this module in a checkout and in an installed wheel alike


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="train")
def train(cfg: DictConfig) -> None:
    """Train and test a grounding model (synground/conf/train.yaml; the offline demo is experiment=shapes)."""
    from synground.training import run_or_record_failure, train

    run_or_record_failure(train, cfg)


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="eval")
def evaluate(cfg: DictConfig) -> None:
    """The pointing game of a grounding model on the test splits of a data config (synground/conf/eval.yaml)."""
    from synground.evaluation import evaluate

    evaluate(cfg)


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="generate")
def generate(cfg: DictConfig) -> None:
    """Generate image-text-box triplets into WebDataset shards (synground/conf/generate.yaml), then their report."""
    from lightning.pytorch.utilities import rank_zero_only

    from synground.generation.writing import generate_shards

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
    if rank_zero_only.rank != 0:  # every rank runs this command under DDP; one reports
        return
    print(f"{sum(s['samples'] for s in manifest.shards)} samples in {len(manifest.shards)} shards: {manifest.path}")
    write_report(cfg)


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="convert")
def convert(cfg: DictConfig) -> None:
    """Convert a real dataset from its own files into WebDataset shards (synground/conf/convert.yaml)."""
    from synground.data.convert import convert_records

    issues: Counter[str] = Counter()
    reader = hydra.utils.instantiate(cfg.dataset.reader, _partial_=True)
    records = reader(issues=issues)  # passed here, not to instantiate, which would copy the Counter into a config
    settings, paraphrase = OmegaConf.to_container(cfg.dataset, resolve=True), None
    if cfg.get("paraphrases"):  # resuming with other paraphrase settings is refused, as with other dataset settings
        from synground.generation.runtime import StageClock

        paraphraser, clock = hydra.utils.instantiate(cfg.paraphrases), StageClock()
        settings["paraphrases"] = OmegaConf.to_container(cfg.paraphrases, resolve=True)
        paraphrase = partial(paraphraser.paraphrase, clock=clock)
    report = convert_records(
        records,
        cfg.output_dir,
        cfg.dataset.name,
        cfg.samples_per_shard,
        issues,
        config=settings,
        command=shlex.join(["python", *sys.argv]),
        paraphrase=paraphrase,
    )
    print(f"{report['samples']} images with {report['regions']} phrases in {report['shards']} shards: {report['manifest']}")
    if "paraphrased" in report:
        print(f"{report['paraphrased']} of the phrases have a paraphrase")
    if report["skipped"]:
        print("skipped: " + ", ".join(f"{reason} {count}" for reason, count in report["skipped"].items()))
    write_report(cfg)


def write_report(cfg: DictConfig) -> None:
    """The dataset report of the shard set generate or convert wrote, unless report=false."""
    from synground.generation.report import dataset_report

    if cfg.report:
        dataset_report(cfg.output_dir, samples=cfg.report_samples or None)
        print(f"dataset report: {cfg.output_dir}/report/report.md")


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="ground")
def ground(cfg: DictConfig) -> None:
    """Ground phrases in your own images, writing overlay PNGs and results.jsonl (synground/conf/ground.yaml)."""
    from synground.inference.batch import ground

    ground(cfg)


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="app")
def app(cfg: DictConfig) -> None:
    """The web demo on http://127.0.0.1:7860 (synground/conf/app.yaml)."""
    from synground.inference.app import serve

    serve(cfg, train_command=[sys.executable, "-m", "synground.cli", "train"])


COMMANDS = {"train": train, "eval": evaluate, "generate": generate, "convert": convert, "ground": ground, "app": app}


def main() -> None:
    """`python -m synground.cli <command> [overrides]`: what the console scripts run, without installing them."""
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        raise SystemExit(f"usage: python -m synground.cli {{{','.join(COMMANDS)}}} [key=value ...] [--help]")
    command = COMMANDS[sys.argv.pop(1)]
    command()


if __name__ == "__main__":
    main()
