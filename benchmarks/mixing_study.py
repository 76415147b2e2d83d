"""The offline mixing study, run to its plan (docs/mixing_study_plan.md): does synthetic data from another domain help
grounding when real data is scarce, and how many real scenes is it worth?

    python benchmarks/mixing_study.py                                  (or `make mixing-study`): every part
    python benchmarks/mixing_study.py --conditions disjoint            one part (each fits in 90 min on 2 CPU cores)
    python benchmarks/mixing_study.py --analyse-only                   the tables and plots from the runs there are

experiment=shapes_mixing trains the tiny BLIP on a fixed pool of real (textured) scenes and endless synthetic (clean)
ones, and tests on held-out real scenes. The plan's three encoder conditions (CONDITIONS) differ in the vision encoder
every run starts from: pretrained on the sketch world, which shares neither study style (the primary condition, the
ImageNet analogue); random weights; pretrained on both study styles (the upper bound). Study seed s trains with seed s
from an encoder pretrained with seed s (`synground-pretrain-encoder`, deterministic), so the spread over
seeds holds the encoder's too. Each condition runs its ratio sweep at its real pool and its real-only learning curve.

Every encoder and run is a file or directory named by what it is (<runs dir>/encoders/<world>_<labels>-seed<s>_blip
.safetensors, <runs dir>/<condition>/pool<N>-ratio<r>-seed<s>), trained by its own process, --workers at a time with
--threads torch threads each (on 2 cores two one-thread runs train in about the time of one two-thread run). A rerun
trains only what is missing; a run directory without its test metric is cleared first; a finished run whose config
differs from the one the study would give it now stops the study, naming the keys. A failed run writes failed.json
and the others go on.

The analysis follows the plan (synground.results): per condition, every ratio against real only paired on seed (the
paired t-test, Holm's adjustment over the ratios, Bonferroni intervals), the best ratio picked on validation and
reported on test, the real-only curve's rise, and where it rises the best mix's equivalent real-scene count with a
seed-bootstrap interval. Writes <output>/{results.json,results.md,ratio_sweep.png,learning_curve.png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from safetensors import safe_open

from runner import finished, run_all
from synground.files import write_atomic
from synground.results import (
    FLAT,
    aggregate,
    bootstrap_equivalent,
    collect,
    curve_equivalent,
    curve_rise,
    describe,
    draw,
    holm,
    mean_interval,
    metric_of,
    paired_differences,
    paired_test,
    pointing_game_metrics,
    table,
)

ROOT = Path(__file__).resolve().parents[1]

METRIC = "test/pointing_game/shapes_textured"  # the headline: held-out scenes of the real domain
SELECTION = "val/pointing_game/shapes_textured"  # what picks the best ratio
ALPHA = 0.05  # family-wise, over one condition's ratios (Holm)
HELPS_MARGIN = 2.0  # points: the smallest gain the plan calls help ("does not help" needs the interval below it)
RATIO, POOL_KEY = "data.synthetic_ratio", "real_pool"
SEEDS = (0, 1, 2, 3, 4)
# 200 steps of 32 (1.8 min a run with two threads): the former study's length, fixed before the pilot
RUN_LENGTH = ("trainer.max_epochs=2", "data.batches_per_epoch=100")
# the question is about the real domain: the clean (synthetic-domain) test split is left out, a third of each test
STUDY_OVERRIDES = ("~data.test.shapes_clean",)


@dataclass(frozen=True)
class Condition:
    about: str
    encoder: tuple[str, str] | None  # (world, labels) of the encoder pretrained per seed; None: random weights
    pool: int  # real scenes of the ratio sweep
    ratios: tuple[float, ...]  # must hold 0, the baseline
    curve: tuple[int, ...]  # real-only pools besides `pool`


# The plan's cells (docs/mixing_study_plan.md): the primary condition runs the whole ratio sweep and learning curve,
# the two controls a subset.
POOL = 16
CURVE = (32, 64, 256, 1024)
RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)
CONDITIONS = {
    "disjoint": Condition("encoder pretrained on the sketch world (neither study style)", ("disjoint", "dense"), POOL, RATIOS, CURVE),
    "random": Condition("random vision encoder", None, POOL, (0.0, 0.5, 1.0), (CURVE[-1],)),
    "both": Condition("encoder pretrained on both study styles (upper bound)", ("both", "dense"), POOL, (0.0, 0.5, 1.0), (CURVE[-1],)),
}  # fmt: skip
PRETRAINING_STEPS = 1500
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "shapes_mixing"  # also rewrites docs/findings.md


def run_name(pool: int, ratio: float, seed: int) -> str:
    return f"pool{pool}-ratio{float(ratio)}-seed{seed}"


def encoder_path(runs_dir: Path, encoder: tuple[str, str], seed: int) -> Path:
    world, labels = encoder
    return runs_dir / "encoders" / f"{world}_{labels}-seed{seed}_blip.safetensors"


def cells(condition: Condition, seeds: Sequence[int]) -> list[tuple[int, float, int]]:
    """(pool, ratio, seed) of every run of a condition: the ratio sweep, then the curve's other pools at ratio 0."""
    wanted = [(condition.pool, ratio, seed) for ratio in condition.ratios for seed in seeds]
    return wanted + [(size, 0.0, seed) for size in condition.curve if size != condition.pool for seed in seeds]


def run_overrides(condition: Condition, runs_dir: Path, pool: int, ratio: float, seed: int, common: list[str]) -> list[str]:
    weights = "null" if condition.encoder is None else str(encoder_path(runs_dir, condition.encoder, seed))
    return [*common, f"model.net.vision_weights={weights}", f"{POOL_KEY}={pool}", f"{RATIO}={ratio}", f"seed={seed}"]


def missing_runs(runs_dir: Path, conditions: dict[str, Condition], seeds: Sequence[int], common: list[str]) -> list[tuple]:
    """The runs still to train, as (condition name, pool, ratio, seed); clears the directories of unfinished ones."""
    return [
        (name, pool, ratio, seed)
        for name, condition in conditions.items()
        for pool, ratio, seed in cells(condition, seeds)
        if not finished(
            runs_dir / name / run_name(pool, ratio, seed),
            [METRIC],
            run_overrides(condition, runs_dir, pool, ratio, seed, common),
        )
    ]


def encoder_jobs(runs_dir: Path, conditions: dict[str, Condition], seeds: Sequence[int], args) -> list[tuple]:
    jobs = []
    for encoder in sorted({c.encoder for c in conditions.values() if c.encoder is not None}):
        for seed in seeds:
            path = encoder_path(runs_dir, encoder, seed)
            if path.is_file():
                continue
            command = [sys.executable, "-m", "synground.shapes.pretraining", "--experiment", "shapes_mixing"]
            command += [*args.extra, "--world", encoder[0], "--labels", encoder[1], "--seed", str(seed)]
            command += ["--steps", str(args.pretraining_steps), "--threads", str(args.threads), "--output", str(path)]
            jobs.append((f"encoder {path.name}", command, path.with_suffix(".log")))
    return jobs


def train_jobs(runs_dir: Path, conditions: dict[str, Condition], missing: list[tuple], common: list[str]) -> list[tuple]:
    jobs = []
    for name, pool, ratio, seed in missing:
        run = runs_dir / name / run_name(pool, ratio, seed)
        overrides = run_overrides(conditions[name], runs_dir, pool, ratio, seed, common)
        command = [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run}", "logger=csv"]
        jobs.append((f"{name}/{run.name}", command, run.parent / f"{run.name}.log"))
    return jobs


def write_failure(run: Path, log: Path) -> None:
    """A failed run's failed.json (what train.py writes in a multirun), with its log's last lines, if it has none."""
    if not (run / "failed.json").exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.is_file() else []
        run.mkdir(parents=True, exist_ok=True)
        write_atomic(run / "failed.json", json.dumps({"error": " | ".join(tail)[-500:] or "no log"}, indent=2))


def analyse_condition(runs_dir: Path, name: str, condition: Condition, seeds: Sequence[int]) -> dict[str, Any]:
    """One condition's analysis, as the plan defines it."""
    folder = runs_dir / name
    sweep_rows = collect([folder / run_name(condition.pool, r, s) for r in condition.ratios for s in seeds], RATIO)
    sizes = sorted({*condition.curve, condition.pool})
    curve_rows = collect([folder / run_name(n, 0.0, s) for n in sizes for s in seeds], POOL_KEY)
    metrics = pointing_game_metrics(sweep_rows + curve_rows)
    sweep, curve = aggregate(sweep_rows, metrics), aggregate(curve_rows, metrics)
    comparisons = (
        paired_differences(sweep_rows, 0.0, METRIC) if any(r["x"] == 0.0 and "error" not in r for r in sweep_rows) else []
    )
    tests = [paired_test(c["differences"], family=len(comparisons)) for c in comparisons]
    adjusted = holm([t["p"] if t["p"] is not None else 1.0 for t in tests])
    for comparison, test, p_holm in zip(comparisons, tests, adjusted):
        comparison |= test | {"p_holm": p_holm if test["p"] is not None else None}
        comparison["holm_rejects"] = test["p"] is not None and p_holm <= ALPHA
    mixes = [group for group in sweep if group["x"] > 0 and group["runs"] and SELECTION in group["metrics"]]
    best = max(mixes, key=lambda group: group["metrics"][SELECTION]["mean"], default=None)
    best_comparison = next((c for c in comparisons if best is not None and c["x"] == best["x"]), None)
    rise = curve_rise(curve_rows, METRIC)
    equivalent = interval = None
    if best is not None and rise:
        equivalent = curve_equivalent(curve_rows, best["metrics"][METRIC]["mean"], METRIC)
        if equivalent["relation"] != FLAT:
            mix = {row["seed"]: metric_of(row, METRIC) for row in sweep_rows if row["x"] == best["x"] and "error" not in row}
            interval = bootstrap_equivalent(curve_rows, mix, METRIC)
    return {
        "about": condition.about,
        "encoder": None if condition.encoder is None else {"world": condition.encoder[0], "labels": condition.encoder[1]},
        "encoder_probes": encoder_probes(runs_dir, condition, seeds),
        "pool": condition.pool,
        "metrics": metrics,
        "ratio_sweep": {"values": sweep, "paired": comparisons, "runs": sweep_rows},
        "learning_curve": {"values": curve, "runs": curve_rows, "rise": rise},
        "best_ratio": None if best is None else {"ratio": best["x"], **{k: best["metrics"][k] for k in (METRIC, SELECTION)}},
        "best_paired": best_comparison,
        "verdict": verdict(comparisons, best_comparison),
        "equivalent_real_scenes": equivalent,
        "equivalent_interval": interval,
    }


def encoder_probes(runs_dir: Path, condition: Condition, seeds: Sequence[int]) -> dict[str, Any] | None:
    """What each seed's encoder knows of the study domains before the study (the linear probes pretraining keeps in
    the file), in points, with their mean and interval over the seeds."""
    if condition.encoder is None:
        return None
    per_seed = {}
    for seed in seeds:
        path = encoder_path(runs_dir, condition.encoder, seed)
        if path.is_file():
            with safe_open(str(path), framework="pt") as file:
                per_seed[seed] = {k: 100 * v for k, v in json.loads(file.metadata()["about"])["transfer"].items()}
    names = sorted({name for probes in per_seed.values() for name in probes})
    return {"seeds": per_seed, "summary": {name: describe([probes[name] for probes in per_seed.values()]) for name in names}}


def verdict(comparisons: list[dict[str, Any]], best: dict[str, Any] | None) -> str:
    """The plan's reading of one condition's ratio sweep."""
    if not comparisons or best is None or best.get("ci95") is None:
        return "not enough finished runs to judge"
    helps = [c for c in comparisons if c["holm_rejects"] and c["mean"] > 0]
    hurts = [c for c in comparisons if c["holm_rejects"] and c["mean"] < 0]
    if helps:
        return (
            "synthetic data helps: " + ", ".join(f"ratio {c['x']} ({c['mean']:+.1f} points)" for c in helps) + " beat real only"
        )
    if best["ci95"][1] < HELPS_MARGIN:
        tail = f"; ratios {', '.join(str(c['x']) for c in hurts)} do worse" if hurts else ""
        return f"synthetic data does not help: no ratio beats real only, and the best one's gain is below {HELPS_MARGIN:g} points{tail}"
    return "inconclusive: no ratio beats real only after Holm's adjustment, but a gain of the size the plan calls help is not ruled out"


def equivalent_text(result: dict[str, Any]) -> str:
    equivalent, interval = result["equivalent_real_scenes"], result["equivalent_interval"]
    if result["best_ratio"] is None:
        return "no mix finished"
    if equivalent is None:
        return "not computed: the real-only curve has fewer than two pool sizes with finished runs"
    rise = equivalent["rise"]
    if equivalent["relation"] == FLAT:
        evidence = "too few seeds for an interval"
        if rise["ci95"] is not None:
            evidence = (
                f"paired difference {rise['mean']:+.2f} points, 95% interval [{rise['ci95'][0]:+.2f}, {rise['ci95'][1]:+.2f}]"
            )
        return f"none can be read: the real-only curve does not rise beyond its noise from {rise['baseline']} to {rise['x']} scenes ({evidence})"
    where = (
        f"about {equivalent['size']:,.0f} (between {' and '.join(map(str, equivalent['bracket']))})"
        if equivalent["size"]
        else equivalent["relation"]
    )
    if interval and interval["ci95"]:
        low, high = interval["ci95"]
        largest = max(equivalent["bracket"])
        if low is None:  # the lower end too lies beyond the curve
            where += (
                f"; in {interval['beyond_share']:.0%} of {interval['resamples']} seed-bootstrap resamples of "
                f"{len(interval['seeds'])} seeds the best mix beats real only at {largest} scenes"
            )
        else:
            ends = f"{low:,.0f} to " + (f"{high:,.0f}" if high is not None else f"more than {largest} (beyond the curve)")
            where += f", 95% seed-bootstrap interval {ends} ({interval['resamples']} resamples of {len(interval['seeds'])} seeds)"
    if equivalent["size"] and len(measured_curve(result)) == 2:
        where += (
            "; a rough reading: the curve has two pools only, so it is taken as straight in log(pool) between them, "
            "and a curve that levels off before its largest pool would give fewer scenes"
        )
    return where


def measured_curve(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A condition's real-only pools with finished runs: two for the controls, whose equivalent count and drawn line
    between them are then an interpolation over nothing measured."""
    return [group for group in result["learning_curve"]["values"] if group["runs"]]


def side_by_side(record: dict[str, Any]) -> list[str]:
    """The plan's step 5: the conditions next to each other, descriptive (the tests are within a condition)."""
    lines = [
        "## The conditions side by side",
        "",
        (
            "Descriptive, as the plan says: no test across conditions. Real only and the best ratio (picked on "
            f"validation) at the sweep's pool, their difference paired on seed, and real only at the curve's largest "
            f"pool ({METRIC})."
        ),
        "",
        "| condition | real only | best ratio: test | minus real only, paired | real only, largest pool | equivalent real scenes |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in record["conditions"].items():
        sweep = {group["x"]: group for group in result["ratio_sweep"]["values"] if group["runs"]}
        curve = measured_curve(result)
        best, paired = result["best_ratio"], result["best_paired"]
        real = mean_interval(sweep[0.0]["metrics"][METRIC], "%") if 0.0 in sweep else "-"
        mix = f"{best['ratio']}: {mean_interval(best[METRIC], '%')}" if best else "-"
        gain = mean_interval(paired, sign="+") if paired and paired["mean"] is not None else "-"
        largest = f"{mean_interval(curve[-1]['metrics'][METRIC], '%')} ({curve[-1]['x']} scenes)" if curve else "-"
        equivalent = result["equivalent_real_scenes"]
        count = "-"
        if equivalent and equivalent.get("size"):
            count = f"about {equivalent['size']:,.0f}" + (" (a two-pool curve: rough)" if len(curve) == 2 else "")
        elif equivalent and equivalent["relation"] != FLAT:
            count = f"{equivalent['relation']} ({', '.join(map(str, equivalent['bracket']))})"
        lines.append(f"| {name} ({result['pool']} real scenes) | {real} | {mix} | {gain} | {largest} | {count} |")
    return [*lines, ""]


def paired_lines(comparisons: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| ratio | pairs | mean difference | 95% t-interval | Bonferroni interval | p | Holm p | beats real only |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        interval = bonferroni = p = p_holm = "-"
        if c["ci95"] is not None:
            interval = f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
            bonferroni = f"[{c['ci_bonferroni'][0]:+.2f}, {c['ci_bonferroni'][1]:+.2f}]"
            p, p_holm = f"{c['p']:.3f}", f"{c['p_holm']:.3f}"
        mean = "-" if c["mean"] is None else f"{c['mean']:+.2f}"
        beats = "yes" if c["holm_rejects"] and c["mean"] > 0 else ("worse" if c["holm_rejects"] else "no")
        lines.append(f"| {c['x']} | {c['n']} | {mean} | {interval} | {bonferroni} | {p} | {p_holm} | {beats} |")
    return lines


def markdown(record: dict[str, Any], figures: str = "") -> str:
    """The results page; `figures` is the path of the plots' folder as the page links it (next to it by default)."""
    lines = [
        "# Pilot of the offline mixing study (validation only)" if record["pilot"] else "# The offline mixing study",
        "",
        (
            f"Run to docs/mixing_study_plan.md by `{record['command']}`; {record['machine']}. Headline: {METRIC} "
            f"(held-out scenes of the real domain), in points; the best ratio is picked on {SELECTION}. Cells: mean "
            f"[95% t-interval], sd over seeds {', '.join(map(str, record['seeds']))}."
        ),
        "",
    ]
    for name, result in record["conditions"].items():
        lines += [f"## {name}: {result['about']}", ""]
        probes = result["encoder_probes"]
        if probes and probes["summary"]:
            cells = ", ".join(f"{key} {mean_interval(stats, '%')}" for key, stats in probes["summary"].items())
            lines += [
                f"Linear probes of its encoders before the study (patch features of held-out scenes, {len(probes['seeds'])} seeds): {cells}.",
                "",
            ]
        if not result["ratio_sweep"]["runs"]:
            lines += ["No run of this condition has finished.", ""]
            continue
        lines += [
            f"Ratio sweep, real pool of {result['pool']} scenes:",
            "",
            table(result["ratio_sweep"]["values"], RATIO, result["metrics"]),
            "",
        ]
        if result["ratio_sweep"]["paired"]:
            family = len(result["ratio_sweep"]["paired"])
            lines += [
                f"Each ratio minus real only on the same seed ({METRIC}; Holm over {family} ratios, family-wise {ALPHA}):",
                "",
            ]
            lines += [*paired_lines(result["ratio_sweep"]["paired"]), ""]
        curve = result["learning_curve"]
        if len({row["x"] for row in curve["runs"]}) > 1:
            lines += [
                "Real-only learning curve (synthetic_ratio 0):",
                "",
                table(curve["values"], POOL_KEY, result["metrics"]),
                "",
            ]
        best = result["best_ratio"]
        if best is not None:
            lines.append(
                f"Best ratio on validation: {best['ratio']}, test {best[METRIC]['mean']:.1f}% with {result['pool']} real "
                f"scenes. Verdict: {result['verdict']}. Equivalent real scenes: {equivalent_text(result)}."
            )
            lines.append("")
    if len(record["conditions"]) > 1:
        lines += side_by_side(record)
    lines += [f"![ratio sweep]({figures}ratio_sweep.png)", "", f"![learning curve]({figures}learning_curve.png)", ""]
    return "\n".join(lines)


def plots(output: Path, record: dict[str, Any]) -> None:
    figure = Figure(figsize=(6, 4), dpi=100, layout="constrained")
    axes = figure.subplots()
    for name, result in record["conditions"].items():
        draw(axes, result["ratio_sweep"]["values"], METRIC, f"{name}: {result['about']}")
    axes.set(
        xlabel="synthetic_ratio", ylabel=f"{METRIC} (%)", title=f"Ratio sweep at {POOL} real scenes: mean, 95% interval, runs"
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.savefig(output / "ratio_sweep.png")

    figure = Figure(figsize=(6, 4), dpi=100, layout="constrained")
    axes = figure.subplots()
    sizes = set()
    for index, (name, result) in enumerate(record["conditions"].items()):
        values = result["learning_curve"]["values"]
        if len(measured_curve(result)) == 2:  # the controls': a dotted line, for nothing is measured between its ends
            draw(axes, values, METRIC, f"{name}: real only (two pools, dotted)", linestyle=":")
        else:
            draw(axes, values, METRIC, f"{name}: real only")
        sizes |= {group["x"] for group in values}
        best = result["best_ratio"]
        if best is not None and best[METRIC]["ci95"]:
            colour = axes.lines[-1].get_color() if axes.lines else f"C{index}"
            axes.axhline(
                best[METRIC]["mean"],
                color=colour,
                linestyle="--",
                label=f"{name}: best mix ({best['ratio']}) at {result['pool']} scenes",
            )
    if sizes:
        axes.set_xscale("log")
        axes.set_xticks(sorted(sizes), [str(size) for size in sorted(sizes)])
        axes.minorticks_off()
    axes.set(
        xlabel="real training scenes (pool size)",
        ylabel=f"{METRIC} (%)",
        title="Real-only learning curves, mean and 95% interval",
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.savefig(output / "learning_curve.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=list(CONDITIONS), help="the parts to run")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--workers", type=int, default=2, help="processes at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--pretraining-steps", type=int, default=PRETRAINING_STEPS)
    parser.add_argument("--pool", type=int, help="replaces every condition's sweep pool (a pilot's or a test's)")
    parser.add_argument("--ratios", type=float, nargs="+", help="replaces every condition's ratios (must hold 0)")
    parser.add_argument("--curve-sizes", type=int, nargs="*", help="replaces every condition's other curve pools")
    parser.add_argument("--run-length", nargs="*", default=list(RUN_LENGTH), help="train.py overrides setting a run's length")
    parser.add_argument("--extra", nargs="*", default=[], help="more train.py overrides for every run and encoder (give it last)")
    parser.add_argument("--analyse-only", action="store_true", help="train nothing; analyse the runs there are")
    parser.add_argument(
        "--pilot", action="store_true", help="validation only: no test split is scored, and the headline is the validation score"
    )
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "logs" / "shapes_mixing" / "study")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    if args.ratios is not None and 0.0 not in args.ratios:
        parser.error("--ratios must hold 0: the real-only baseline every ratio is paired with")
    conditions = {}
    for name in args.conditions:
        condition = CONDITIONS[name]
        conditions[name] = Condition(
            condition.about,
            condition.encoder,
            args.pool if args.pool is not None else condition.pool,
            tuple(args.ratios) if args.ratios is not None else condition.ratios,
            tuple(args.curve_sizes) if args.curve_sizes is not None else condition.curve,
        )
    common = ["experiment=shapes_mixing", *args.run_length, *STUDY_OVERRIDES, *args.extra]
    if args.pilot:  # a pilot sees no test score: the design it informs is then not chosen on test data
        global METRIC
        METRIC = SELECTION
        common += ["test=false"]
    runs_dir = args.runs_dir.resolve()

    start = time.perf_counter()
    trained, failures = 0, []
    if not args.analyse_only:
        encoders = encoder_jobs(runs_dir, conditions, args.seeds, args)
        print(f"pretraining {len(encoders)} encoders", flush=True)
        failures += run_all(encoders, args.workers, args.threads)
        wanted = sum(len(cells(c, args.seeds)) for c in conditions.values())
        missing = missing_runs(runs_dir, conditions, args.seeds, common)
        print(f"{wanted - len(missing)} of {wanted} runs finished already; training {len(missing)}", flush=True)
        jobs = train_jobs(runs_dir, conditions, missing, common)
        failed = run_all(jobs, args.workers, args.threads)
        for label, _, log in jobs:
            if label in failed:
                write_failure(runs_dir / label, log)
        failures += failed
        trained = len(encoders) + len(jobs)
    started = {name: c for name, c in conditions.items() if any((runs_dir / name).glob("*/.hydra/config.yaml"))}
    for name in conditions.keys() - started.keys():
        print(f"condition {name}: no run in {runs_dir / name} yet, left out of the analysis", flush=True)
    if not started:
        raise SystemExit(f"no run of {', '.join(conditions)} in {runs_dir}: train them first (without --analyse-only)")
    record = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.workers} processes of {args.threads} thread(s), torch {torch.__version__}",
        "command": " ".join(["python benchmarks/mixing_study.py", *sys.argv[1:]]),
        "plan": "docs/mixing_study_plan.md",
        "pilot": args.pilot,
        "seeds": args.seeds,
        "overrides": common,
        "trained_now": {"jobs": trained, "minutes": round((time.perf_counter() - start) / 60, 1)},
        "conditions": {name: analyse_condition(runs_dir, name, c, args.seeds) for name, c in started.items()},
    }
    args.output.mkdir(parents=True, exist_ok=True)
    text = markdown(record)
    write_atomic(args.output / "results.md", text)
    write_atomic(args.output / "results.json", json.dumps(record, indent=2) + "\n")
    plots(args.output, record)
    print(text)
    if args.output.resolve() == DEFAULT_OUTPUT and not args.pilot:
        import findings  # imports this module: imported here, not at the top

        findings.main([])
    if failures:
        raise SystemExit("failed (a rerun trains them again):\n" + "\n".join(f"  {label}" for label in failures))


if __name__ == "__main__":
    main()
