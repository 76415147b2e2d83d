"""Dry run of the paper: every experiment config through the real entry points, with full-size models, on a CPU.

    python benchmarks/dry_run.py                       (make dry-run: every experiment, dropout on and off)
    python benchmarks/dry_run.py --experiments albef_amc_vg blip_synground_vg --dropout off     (a part of it)

What a user runs before renting GPUs, on data and weights that exist offline:
1. raw data in the upstream formats (Visual Genome, Flickr30k Entities val/test, RefCOCO+ testA/testB), converted
   by convert.py (Visual Genome a second time with paraphrases=llm on the tiny LLM, for the SelfEQ experiments);
   synthetic shards written by generate.py (generation=synground_tiny: the SynGround pipeline on tiny random
   components);
2. full-size architectures with random weights in the released formats: ALBEF (ViT-B/16 + BERT-base) as ALBEF.pth
   is laid out, momentum encoders, queues and MLM head included, with a 30,522-token vocab.txt; BLIP ITM base
   through save_pretrained, with its 30,524-token tokenizer;
3. each experiment (synground/conf/experiment/{albef,blip}_*) through train.py, or eval.py for the off-the-shelf ones, at the
   config's image sizes, under trainer=ddp_cpu (2 processes), 2 training steps of 2 samples per process, with the
   precision the experiment's trainer asks for (bf16-mixed), once with dropout on (0.1) and once off (0);
4. the checkpoint of each training run with dropout off exported (synground-export) and the export used by
   ground.py on a photo-sized image.
It prints a table (experiment, steps, final loss finite, seconds per step, peak memory), writes
benchmarks/results/dry_run.{json,md}, and exits non-zero if any run failed. Peak memory is the largest sum of the
proportional set size of a run's processes (both DDP ranks and their data workers; a page shared by forked processes
is counted once), sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the writers of upstream formats that the tests use

from support.raw_datasets import write_flickr30k, write_refcoco, write_visual_genome  # noqa: E402
from support.released_checkpoints import bert_vocabulary, save_released_albef  # noqa: E402
from synground.conf import CONFIG_DIR  # noqa: E402
from synground.files import write_atomic  # noqa: E402

EXPERIMENTS = [
    "albef_off_the_shelf",
    "albef_amc_vg",
    "albef_synground",
    "albef_synground_vg",
    "albef_selfeq_vg",
    "blip_off_the_shelf",
    "blip_amc_vg",
    "blip_synground",
    "blip_synground_vg",
    "blip_selfeq_vg",
]
RESULTS = ROOT / "benchmarks" / "results"
IMAGE_SIZE = (500, 375)  # a typical photo; the configs resize to 256 or 384 px
FLICKR_IDS = {"val": ["1000092795", "10002456"], "test": ["1007129816", "1009434119"]}
# the words of the captions, written as one string (SIM905 would spell out a list of 17 strings)
WORDS = "two men talk to a woman in the street listens thing number man on left person right".split()  # noqa: SIM905


def run(command: list[str], cwd: Path, log: Path) -> tuple[int, float, float]:
    """(return code, seconds, peak resident memory in GiB of the process and all its descendants together)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start, peak = time.perf_counter(), 0
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        root = psutil.Process(process.pid)
        while process.poll() is None:
            peak = max(peak, tree_memory(root))
            time.sleep(0.2)
    return process.returncode, time.perf_counter() - start, peak / 2**30


def tree_memory(root: psutil.Process) -> int:
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a process that ended between listing and reading
            total += process.memory_full_info().pss  # shared pages (forked data workers) counted once
    return total


def check(step: str, command: list[str], cwd: Path, log: Path) -> None:
    code, seconds, _ = run(command, cwd, log)
    if code != 0:
        sys.exit(f"{step} failed (exit {code}); last lines of {log}:\n" + "\n".join(log.read_text().splitlines()[-30:]))
    print(f"  {step}: {seconds:.0f} s")


def prepare(work: Path) -> dict[str, Path]:
    """Raw data -> shards, synthetic shards, and full-size weights; each step is skipped when its output exists."""
    data, logs = work / "data", work / "logs"
    raw = data / "raw"
    if not (raw / "visual_genome" / "region_descriptions.json").exists():
        write_visual_genome(raw / "visual_genome", count=8, regions_per_image=3, size=IMAGE_SIZE)
        for split, ids in FLICKR_IDS.items():
            write_flickr30k(raw / "flickr30k_entities", ids, split=split, size=IMAGE_SIZE)
        sentences = [["man on the left"], ["person on the right"]]
        write_refcoco(
            raw / "refer",
            {
                1: [("testA", sentences[0]), ("testB", sentences[1]), ("val", sentences[1])],
                2: [("testA", sentences[1]), ("testB", sentences[0]), ("val", sentences[0])],
            },
            size=IMAGE_SIZE,
        )
    python = [sys.executable]
    common = [f"paths.data_dir={data}", "hydra.run.dir=" + str(logs / "hydra" / "${task_name}-${dataset.name}")]
    conversions = [
        ("visual_genome", []),
        ("flickr30k", ["dataset.reader.split=val"]),
        ("flickr30k", ["dataset.reader.split=test"]),
        ("refcoco_plus", ["dataset.reader.split=val"]),
        ("refcoco_plus", ["dataset.reader.split=testA"]),
        ("refcoco_plus", ["dataset.reader.split=testB"]),
    ]
    if not (data / "tiny" / "llm").exists():
        check(
            "tiny generation components",
            [*python, "-m", "synground.generation.tiny", str(data / "tiny")],
            ROOT,
            logs / "tiny.log",
        )
    # SelfEQ's paraphrases from the tiny LLM; its answers are random words, so any length is accepted (extra_words)
    # and nearly every region gets one, as the SelfEQ experiments need pairs in their two training steps
    paraphrased = [
        "paraphrases=llm",
        f"paraphrases.llm.model_id={data / 'tiny' / 'llm'}",
        "paraphrases.llm.device=cpu",
        "paraphrases.llm.dtype=float32",
        "paraphrases.llm.max_new_tokens=12",
        "paraphrases.extra_words=20",
    ]
    for dataset, overrides in [*conversions, ("visual_genome", paraphrased)]:
        name = "-".join([dataset, *[o.split("=")[1] for o in overrides if "split=" in o or o.startswith("paraphrases=")]])
        check(
            f"convert.py {name}",
            [*python, str(ROOT / "convert.py"), f"dataset={dataset}", *overrides, *common],
            work,
            logs / f"convert-{name}.log",
        )
    check(
        "generate.py synground_tiny",
        [
            *python,
            str(ROOT / "generate.py"),
            "generation=synground_tiny",
            f"paths.data_dir={data}",
            f"output_dir={data / 'synground'}",
            "generation.num_samples=32",
            f"hydra.run.dir={logs / 'hydra' / 'generate'}",
        ],
        work,
        logs / "generate.log",
    )

    weights = work / "weights"
    paths = {
        "data": data,
        "vocab": weights / "bert-base-uncased" / "vocab.txt",
        "albef": weights / "ALBEF.pth",
        "blip": weights / "blip-itm-base-coco",
    }
    if not paths["albef"].exists() or not (paths["blip"] / "config.json").exists():
        write_full_size_weights(paths)
    return paths


def write_full_size_weights(paths: dict[str, Path]) -> None:
    from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval

    from synground.models.albef import AlbefGroundingModel
    from synground.models.albef_network import AlbefConfig

    start = time.perf_counter()
    tokens = bert_vocabulary(WORDS)
    paths["vocab"].parent.mkdir(parents=True, exist_ok=True)
    paths["vocab"].write_text("\n".join(tokens) + "\n")
    torch.manual_seed(0)
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(tokens)}, do_lower_case=True)
    save_released_albef(AlbefGroundingModel(AlbefConfig(image_size=256), tokenizer), paths["albef"])

    # BLIP's tokenizer: bert-base-uncased + [DEC] (its bos token) + [ENC], 30,524 tokens for 30,524 word embeddings
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    config = BlipConfig()  # ViT-B/16 at 384 px + BERT-base with cross-attention in every layer, as blip-itm-base-coco
    config.text_config.bos_token_id = tokenizer.bos_token_id
    assert len(tokenizer) == config.text_config.vocab_size == 30524, len(tokenizer)
    BlipForImageTextRetrieval(config).save_pretrained(paths["blip"])
    tokenizer.save_pretrained(paths["blip"])
    print(f"  full-size random weights: {time.perf_counter() - start:.0f} s")


def experiment_settings(name: str) -> tuple[str, str]:
    """(entry point, precision the experiment's trainer asks for)."""
    from hydra import compose, initialize_config_dir

    entry = "eval" if name.endswith("off_the_shelf") else "train"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return entry, str(compose(entry, overrides=[f"experiment={name}"]).trainer.precision)


def run_experiment(name: str, dropout: str | None, paths: dict[str, Path], work: Path) -> dict:
    entry, precision = experiment_settings(name)
    label = name if dropout is None else f"{name} dropout {dropout}"
    run_dir = work / "runs" / label.replace(" ", "_")
    shutil.rmtree(run_dir, ignore_errors=True)
    model = (
        ["model.net.checkpoint=" + str(paths["albef"]), "model.net.text_encoder=" + str(paths["vocab"])]
        if name.startswith("albef")
        else ["model.net.model_id=" + str(paths["blip"])]
    )
    overrides = [
        f"experiment={name}",
        f"paths.data_dir={paths['data']}",
        "trainer=ddp_cpu",
        f"trainer.precision={precision}",
        *model,
        "data.eval_batch_size=2",
        "data.num_workers=1",
        "data.pin_memory=false",
        "trainer.limit_test_batches=1",
        f"hydra.run.dir={run_dir}",
    ]
    if entry == "train":
        overrides += [
            "data.batch_size=2",
            "data.batches_per_epoch=2",
            "trainer.max_epochs=1",
            "trainer.limit_val_batches=1",
            f"model.net.dropout={0.1 if dropout == 'on' else 0.0}",
        ]
    code, seconds, peak = run([sys.executable, str(ROOT / f"{entry}.py"), *overrides], work, run_dir / "output.log")
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    handed_on = export_and_ground(run_dir, work) if entry == "train" and code == 0 and dropout != "on" else []
    # one best checkpoint per validation benchmark (data.val_split_of), as AMC's protocol selects them
    selected = sorted(path.name for path in (run_dir / "checkpoints").glob("best-*.ckpt"))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # 2.5 GB each at full size
    steps = int(metrics.get("train/global_step", 0))
    loss = metrics.get("train/loss")
    tested = sorted(
        key.rsplit("/", 1)[1] for key in metrics if key.startswith("test/pointing_game/") and not key.endswith("/mean")
    )
    problems = [f"exit {code}"] if code else []
    if entry == "train" and steps != 2:
        problems.append(f"{steps} steps instead of 2")
    if entry == "train" and not (loss is not None and math.isfinite(loss)):
        problems.append(f"final loss {loss}")
    if len(tested) != 3:
        problems.append(f"tested {tested or 'nothing'}, not the 3 test splits")
    if "selfeq" in name and not metrics.get("train/selfeq_pairs"):
        problems.append("no SelfEQ pair trained (train/selfeq_pairs)")
    if entry == "train" and selected != ["best-flickr30k_val.ckpt", "best-refcoco_plus_val.ckpt"]:
        problems.append(f"per-benchmark best checkpoints {selected}, not one per validation benchmark")
    problems += handed_on
    return {
        "experiment": label,
        "entry": f"{entry}.py",
        "precision": precision,
        "steps": steps,
        "final_loss": loss,
        "loss_finite": loss is not None and math.isfinite(loss),
        "seconds_per_step": metrics.get("train/seconds_per_step"),
        "seconds": round(seconds, 1),
        "peak_memory_gib": round(peak, 2),
        "tested": tested,
        "ok": not problems,
        "problems": problems,
        "log": str(run_dir / "output.log"),
    }


def export_and_ground(run_dir: Path, work: Path) -> list[str]:
    """The trained full-size model through `synground-export` and `ground.py` on the export, as a user
    hands it on: BLIP through save_pretrained/from_pretrained, ALBEF through the released layout. Problems found."""
    checkpoints = sorted((run_dir / "checkpoints").glob("epoch*.ckpt")) or [run_dir / "checkpoints" / "last.ckpt"]
    export = run_dir / "export"
    code, _, _ = run(
        [sys.executable, "-m", "synground.inference.export", str(checkpoints[-1]), str(export)], work, run_dir / "export.log"
    )
    if code:
        return [f"export: exit {code} ({run_dir / 'export.log'})"]
    photo = work / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*IMAGE_SIZE[::-1], 3), dtype=np.uint8)).save(photo)
    command = [
        sys.executable,
        str(ROOT / "ground.py"),
        f"ckpt_path={export}",
        f"images={photo}",
        "phrases=[man on the left,a woman]",
        "boxes=true",
        f"hydra.run.dir={run_dir / 'ground'}",
    ]
    code, _, _ = run(command, work, run_dir / "ground.log")
    shutil.rmtree(export, ignore_errors=True)  # as large as the model
    results = run_dir / "ground" / "results.jsonl"
    if code or not results.exists():
        return [f"ground.py on the export: exit {code} ({run_dir / 'ground.log'})"]
    records = [json.loads(line) for line in results.read_text().splitlines()]
    inside = all(0 <= r["point"][0] < IMAGE_SIZE[0] and 0 <= r["point"][1] < IMAGE_SIZE[1] for r in records)
    return [] if len(records) == 2 and inside else [f"ground.py on the export: {records}"]


def table(rows: list[dict]) -> str:
    lines = [
        "| experiment | entry point | precision | steps | final loss finite | s / step | run (s) | peak memory (GiB) | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        training = r["entry"] == "train.py"
        step_time = f"{r['seconds_per_step']:.1f}" if r["seconds_per_step"] else "-"
        finite = ("yes" if r["loss_finite"] else "NO") if training else "-"
        lines.append(
            f"| {r['experiment']} | {r['entry']} | {r['precision']} | {r['steps'] if training else '-'} | {finite} | "
            f"{step_time} | {r['seconds']:.0f} | {r['peak_memory_gib']:.1f} | "
            f"{'ok' if r['ok'] else 'FAILED: ' + '; '.join(r['problems'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=EXPERIMENTS)
    parser.add_argument("--dropout", nargs="+", choices=["on", "off"], default=["on", "off"], help="for training experiments")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "logs" / "dry_run")
    parser.add_argument("--results", type=Path, default=RESULTS / "dry_run", help="writes <results>.json and .md")
    args = parser.parse_args()

    print(f"preparing data and full-size weights in {args.work_dir}")
    paths = prepare(args.work_dir)
    rows = []
    for name in args.experiments:
        for dropout in [None] if name.endswith("off_the_shelf") else args.dropout:
            rows.append(run_experiment(name, dropout, paths, args.work_dir))
            row = rows[-1]
            print(
                f"  {row['experiment']}: {'ok' if row['ok'] else 'FAILED ' + '; '.join(row['problems'])} in {row['seconds']:.0f} s"
                + ("" if row["ok"] else f" (log: {row['log']})")
            )
    report = table(rows)
    print(report)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.results.with_suffix(".json"), json.dumps({"machine": machine, "runs": rows}, indent=2))
    write_atomic(args.results.with_suffix(".md"), f"# Dry run of the paper ({machine})\n\n{report}\n")
    failed = [r["experiment"] for r in rows if not r["ok"]]
    if failed:
        sys.exit(f"{len(failed)} of {len(rows)} runs failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
