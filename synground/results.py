"""Results of a sweep: every run's metrics.json against a swept config value, aggregated over seeds, as tables and a
PNG plot.

    synground-results logs/shapes_mixing/multiruns/2026-11-22_10-00-00      # a Hydra multirun
    synground-results "logs/train/runs/*" --x data.synthetic_ratio          # e.g. W&B sweep runs
    synground-results <multirun> --paired-baseline 0 --metric test/pointing_game/shapes_textured

Each run directory holds `.hydra/config.yaml` (the value of `--x` and the run's `seed` are read from it), and
`metrics.json` or, for a run that crashed, `failed.json`. The runs of one swept value (any number, e.g. one per
seed) are aggregated: mean, sample standard deviation, n and the 95% t-interval of the mean, in pointing game points
(%). A run whose metrics.json lacks a metric the others have (stopped before its test) is an error naming its
directory: averaging the others would hide it.

`--paired-baseline VALUE` compares every other value with VALUE run by run, matched on `seed`: runs with the same
seed share their initialisation (not their data order, once the swept value changes what each batch holds), so the
mean of the paired differences and its t-interval separate the values with fewer runs than two independent means
would. A seed that has a run on one side only is reported, not dropped silently.

t quantiles come from a table (scipy is not a dependency): exact to 4 decimals for up to 30 degrees of freedom,
Fisher's expansion beyond, which is as exact there. For studies that test several values against one baseline,
`paired_test` gives the paired t-test's p-value (Student's t distribution by its incomplete beta function) and a
Bonferroni interval, `holm` the family-wise adjustment, and `bootstrap_equivalent` an interval for the equivalent
size on a learning curve. Writes `<output>/results.md`, `results.json` and
`pointing_game.png` (mean and 95% interval against the swept value, each run a faint dot).
"""

from __future__ import annotations

from synground.extras import require

require("train", "synground.results (synground-results)")

import argparse
import glob
import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from synground import runs
from synground.files import write_atomic

# the 0.975 quantile of Student's t with 1..30 degrees of freedom (two-sided 95%)
T_975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
Z_975 = 1.959964


def t_975(df: int) -> float:
    """Student's t quantile for a two-sided 95% interval; Fisher's expansion above 30 df (error under 1e-4)."""
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom: the regularised incomplete beta function
    I_x(df/2, 1/2) at x = df / (df + t^2), evaluated by its continued fraction (modified Lentz)."""
    if df < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {df}")
    x = df / (df + t * t)
    a, b = df / 2, 0.5
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below this point: use the symmetry I_x(a,b) = 1 - I_1-x(b,a)
        return 1.0 - front * _beta_fraction(b, a, 1 - x) / b
    return front * _beta_fraction(a, b, x) / a


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def t_quantile(probability: float, df: int) -> float:
    """The t value with P(T <= t) = `probability` (above 0.5), by bisection on `t_two_sided_p`."""
    if not 0.5 < probability < 1:
        raise ValueError(f"t_quantile takes a probability between 0.5 and 1, got {probability}")
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) / 2 > 1 - probability:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if t_two_sided_p(middle, df) / 2 > 1 - probability else (low, middle)
    return (low + high) / 2


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the k-th smallest of m p-values is multiplied by m - k + 1, then made monotone
    (no adjusted value below an earlier one) and capped at 1. A hypothesis is rejected at family-wise level alpha
    when its adjusted p-value is at most alpha."""
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def paired_test(differences: list[float], family: int = 1) -> dict[str, Any]:
    """A paired t-test of `differences` against 0: the two-sided p-value, and the interval of the mean at the
    Bonferroni level for a family of `family` comparisons (95% simultaneous coverage); None for fewer than 2."""
    stats = describe(differences)
    n, mean, std = stats["n"], stats["mean"], stats["std"]
    if n < 2:
        return {"p": None, "ci_bonferroni": None}
    if std == 0:
        return {"p": 0.0 if mean else 1.0, "ci_bonferroni": [mean, mean]}
    half = t_quantile(1 - 0.05 / (2 * family), n - 1) * std / math.sqrt(n)
    return {"p": t_two_sided_p(mean / (std / math.sqrt(n)), n - 1), "ci_bonferroni": [mean - half, mean + half]}


def describe(values: list[float]) -> dict[str, Any]:
    """n, mean, sample standard deviation and the 95% t-interval of the mean (the last two need n >= 2)."""
    n = len(values)
    mean = sum(values) / n if n else None
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci95": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_975(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def collect(run_dirs: list[Path], x: str) -> list[dict[str, Any]]:
    """One row per run: the swept value, its seed, its metrics (or its error), its directory; sorted by the value."""
    rows = []
    for run in run_dirs:
        config_path = runs.config_path(run)
        if not config_path.is_file():
            continue  # not a run directory (e.g. the multirun's own files)
        config = OmegaConf.load(config_path)
        row: dict[str, Any] = {"run": str(run), "x": OmegaConf.select(config, x, default=None)}
        row["seed"] = OmegaConf.select(config, "seed", default=None)
        if runs.metrics_path(run).is_file():
            row["metrics"] = read_record(runs.metrics_path(run), "metrics by name")
        elif runs.failure_path(run).is_file():
            failure = read_record(runs.failure_path(run), 'the run\'s error, {"error": ...}')
            if "error" not in failure:
                raise ValueError(f"{run / 'failed.json'}: no 'error' in it; rerun that run, or leave its directory out")
            row["error"] = failure["error"]
        else:
            row["error"] = "no metrics.json (still running, or killed)"
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no run directory (with .hydra/config.yaml) among {[str(r) for r in run_dirs[:5]]}")
    if all(row["x"] is None for row in rows):
        overrides = str(runs.overrides_path(rows[0]["run"]))
        swept = list(OmegaConf.load(overrides)) if Path(overrides).is_file() else []
        raise ValueError(
            f"--x {x} is in no run's .hydra/config.yaml: give the swept key"
            + (f"; {overrides} overrides {', '.join(str(item).split('=')[0] for item in swept)}" if swept else "")
        )
    return sorted(rows, key=lambda row: (row["x"] is None, row["x"] if row["x"] is not None else 0))


def config_differences(run: Path, expected: Any) -> list[str]:
    """The config keys (dotted) on which a run's saved .hydra/config.yaml differs from `expected` (a config, e.g. the
    one composed now for the same overrides): a finished run of another config must not be read as this one's."""
    saved = OmegaConf.to_container(OmegaConf.load(runs.config_path(run)))

    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): node}

    now, then = flat(OmegaConf.to_container(expected) if OmegaConf.is_config(expected) else expected), flat(saved)
    return sorted(key for key in now.keys() | then.keys() if now.get(key) != then.get(key))


def read_record(path: Path, holds: str) -> dict[str, Any]:
    """A run's metrics.json or failed.json as a JSON object; anything else is an error naming the file."""
    try:
        record = json.loads(path.read_text())
    except (ValueError, OSError) as error:  # empty, cut short by a kill, not UTF-8
        problem = f"{type(error).__name__}: {error}"
    else:
        problem = None if isinstance(record, dict) else f"a {type(record).__name__}"
    if problem:
        raise ValueError(f"{path}: not a JSON object of {holds} ({problem}); rerun that run, or leave its directory out")
    return record


def pointing_game_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """The runs' pointing-game metrics, test first; a stage's `mean` is left out when it has one split (it is that
    split's score again)."""
    names = {name for row in rows for name in row.get("metrics", {}) if "/pointing_game/" in name}
    splits = Counter(name.split("/")[0] for name in names if not name.endswith("/mean"))
    names = {name for name in names if not (name.endswith("/mean") and splits[name.split("/")[0]] == 1)}
    return sorted(names, key=lambda name: (not name.startswith("test/"), name))


def metric_of(row: dict[str, Any], name: str) -> float:
    """A finished run's metric in points (%); its absence is an error naming the run."""
    if name not in row["metrics"]:
        raise ValueError(
            f"{row['run']}: metrics.json has no {name!r} (the run stopped before its test?): rerun it, or leave its "
            "directory out of the runs given"
        )
    return 100 * row["metrics"][name]


def aggregate(rows: list[dict[str, Any]], metrics: list[str]) -> list[dict[str, Any]]:
    """Per swept value, in the rows' order: its finished runs' seeds and directories, its failed runs, and per metric
    the values (in points) with their statistics."""
    groups: dict[Any, dict[str, Any]] = {}
    for row in rows:
        group = groups.setdefault(row["x"], {"x": row["x"], "runs": [], "seeds": [], "failed": [], "metrics": {}})
        if "error" in row:
            group["failed"].append({"run": row["run"], "seed": row["seed"], "error": row["error"]})
            continue
        group["runs"].append(row["run"])
        group["seeds"].append(row["seed"])
        for name in metrics:
            group["metrics"].setdefault(name, {"values": []})["values"].append(metric_of(row, name))
    for group in groups.values():
        group["metrics"] = {name: {**describe(m["values"]), "values": m["values"]} for name, m in group["metrics"].items()}
    return list(groups.values())


def paired_differences(rows: list[dict[str, Any]], baseline: Any, metric: str) -> list[dict[str, Any]]:
    """Every swept value other than `baseline` against it, run by run on the same seed: the differences (value minus
    baseline, in points), their statistics, whether the 95% interval excludes 0, and the seeds left without a partner
    (a run missing or failed on one side)."""
    known = sorted({name for row in rows for name in row.get("metrics", {})})
    if known and metric not in known:
        raise ValueError(f"--metric {metric} is in no finished run's metrics.json; they have {', '.join(known)}")
    scores: dict[Any, dict[Any, float]] = {}
    finished: dict[tuple[Any, Any], str] = {}
    for row in rows:
        seeds = scores.setdefault(row["x"], {})
        if "error" in row:
            continue
        if row["seed"] is None:
            raise ValueError(f"{row['run']}/.hydra/config.yaml has no `seed`: its run cannot be paired")
        twin = finished.setdefault((row["x"], row["seed"]), row["run"])
        if twin != row["run"]:
            raise ValueError(
                f"{twin} and {row['run']} are both finished runs of value {row['x']!r} with seed {row['seed']}: "
                "pairing needs one run per value and seed; leave one of them out"
            )
        seeds[row["seed"]] = metric_of(row, metric)
    if baseline not in scores:
        raise ValueError(f"paired baseline {baseline!r} is not among the swept values {list(scores)}")
    baseline = next(value for value in scores if value == baseline)  # as the runs spell it: 0.0 for a given 0
    base = scores[baseline]
    comparisons = []
    for value, seeds in scores.items():
        if value == baseline:
            continue
        paired = sorted(set(base) & set(seeds))
        differences = [seeds[seed] - base[seed] for seed in paired]
        stats = describe(differences)
        comparison = {"x": value, "baseline": baseline, "metric": metric, **stats, "seeds": paired}
        comparison["differences"] = differences
        comparison["excludes_zero"] = stats["ci95"] is not None and (stats["ci95"][0] > 0 or stats["ci95"][1] < 0)
        comparison["baseline_only_seeds"] = sorted(set(base) - set(seeds))
        comparison["value_only_seeds"] = sorted(set(seeds) - set(base))
        comparisons.append(comparison)
    return comparisons


def equivalent_size(curve: list[tuple[float, float]], target: float) -> dict[str, Any]:
    """Where `target` falls on a learning curve of (size, mean score) points: the size at which the curve first
    reaches it, interpolated linearly in log(size) between the two sizes that bracket it. `size` is None when the
    curve reaches it at its smallest size already, or never."""
    if not curve:
        raise ValueError("an empty learning curve: no size to compare with")
    points = sorted(curve)
    for index, (size, mean) in enumerate(points):
        if mean < target:
            continue
        if index == 0:
            return {"size": None, "bracket": [size], "relation": "at or below the smallest size measured"}
        below, below_mean = points[index - 1]
        fraction = (target - below_mean) / (mean - below_mean)
        estimate = math.exp(math.log(below) + fraction * (math.log(size) - math.log(below)))
        return {"size": estimate, "bracket": [below, size], "relation": "interpolated"}
    return {"size": None, "bracket": [points[-1][0]], "relation": "beyond the largest size measured"}


FLAT = "the real-only curve is flat"


def curve_rise(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Every size of a learning curve (`rows` collected with x = the size) against its smallest finished one, paired
    on seed; none with fewer than two sizes finished."""
    sizes = sorted({row["x"] for row in rows if "error" not in row})
    return paired_differences(rows, sizes[0], metric) if len(sizes) > 1 else []


def curve_equivalent(rows: list[dict[str, Any]], target: float, metric: str) -> dict[str, Any]:
    """`equivalent_size` of `target` on the learning curve of `rows` (collected with x = the size), if the curve rises:
    its largest size against its smallest, paired on seed, must be higher with a 95% interval that excludes 0. A curve
    flat within its noise gives no exchange rate (`target` would land wherever the noise puts it): then `size` is
    None and `relation` says so. `rise` holds that comparison either way."""
    comparisons = curve_rise(rows, metric)
    if not comparisons:
        raise ValueError(f"a learning curve needs finished runs of two sizes at least, got {[row['x'] for row in rows]}")
    rise = max(comparisons, key=lambda comparison: comparison["x"])
    if not (rise["excludes_zero"] and rise["mean"] > 0):
        return {"size": None, "bracket": [rise["baseline"], rise["x"]], "relation": FLAT, "rise": rise}
    curve = [(group["x"], group["metrics"][metric]["mean"]) for group in aggregate(rows, [metric]) if group["runs"]]
    return {**equivalent_size(curve, target), "rise": rise}


def bootstrap_equivalent(
    curve_rows: list[dict[str, Any]], mix: dict[Any, float], metric: str, resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """The 95% percentile interval of `equivalent_size` over seed resamples: each resample draws seeds with replacement
    from those with a finished run at every size of the curve (`curve_rows`, collected with x = the size) and in
    `mix` (seed -> the mix's score in points), and takes both the curve's means and the mix's mean over the same
    seeds (they share encoder and initialisation). A resample whose mean falls below the smallest size counts as that
    size, one beyond the largest as infinitely many scenes: then the interval's end is None ("more than the largest")."""
    sizes = sorted({row["x"] for row in curve_rows if "error" not in row})
    scores = {
        size: {row["seed"]: metric_of(row, metric) for row in curve_rows if row["x"] == size and "error" not in row}
        for size in sizes
    }
    seeds = sorted(set(mix).intersection(*(set(per_seed) for per_seed in scores.values())))
    if len(seeds) < 2 or len(sizes) < 2:
        return {"ci95": None, "seeds": seeds, "beyond_share": None}
    rng = random.Random(seed)
    estimates = []
    for _ in range(resamples):
        drawn = [rng.choice(seeds) for _ in seeds]
        curve = [(size, sum(scores[size][s] for s in drawn) / len(drawn)) for size in sizes]
        found = equivalent_size(curve, sum(mix[s] for s in drawn) / len(drawn))
        if found["size"] is not None:
            estimates.append(found["size"])
        else:
            estimates.append(math.inf if found["relation"].startswith("beyond") else float(sizes[0]))
    estimates.sort()
    low, high = estimates[int(0.025 * resamples)], estimates[min(resamples - 1, int(0.975 * resamples))]
    return {
        "ci95": [None if math.isinf(low) else low, None if math.isinf(high) else high],
        "seeds": seeds,
        "resamples": resamples,
        "beyond_share": sum(math.isinf(e) for e in estimates) / resamples,
    }


def mean_interval(stats: dict[str, Any], unit: str = "", sign: str = "") -> str:
    """A `describe` result as "mean<unit> [low, high]" to one decimal (the mean alone without an interval); sign="+"
    signs every number, for differences."""
    mean = f"{stats['mean']:{sign}.1f}{unit}"
    if stats["ci95"] is None:
        return mean
    low, high = stats["ci95"]
    return f"{mean} [{low:{sign}.1f}, {high:{sign}.1f}]"


def _cell(stats: dict[str, Any]) -> str:
    if stats["ci95"] is None:
        return mean_interval(stats, "%")
    return f"{mean_interval(stats, '%')}, sd {stats['std']:.1f}"


def table(groups: list[dict[str, Any]], x: str, metrics: list[str]) -> str:
    """Per swept value: each metric's mean [95% t-interval], sd over its runs, and how many runs finished."""
    header = [x] + [name.replace("/pointing_game/", " ") for name in metrics] + ["runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in groups:
        failed = len(group["failed"])
        if not group["runs"]:
            cells = [f"failed: {group['failed'][0]['error'][:60]}"] + [""] * (len(metrics) - 1)
        else:
            cells = [_cell(group["metrics"][name]) for name in metrics]
        runs = f"{len(group['runs'])}" + (f" ({failed} failed)" if failed else "")
        lines.append("| " + " | ".join([str(group["x"]), *cells, runs]) + " |")
    return "\n".join(lines)


def paired_table(comparisons: list[dict[str, Any]], x: str) -> str:
    """One line per compared value: mean paired difference, its 95% t-interval and whether that excludes 0."""
    if not comparisons:
        return ""
    baseline, metric = comparisons[0]["baseline"], comparisons[0]["metric"]
    lines = [
        f"Paired with {x}={baseline} on the same seed, {metric} (value minus baseline, in points):",
        "",
        f"| {x} | pairs | mean difference | 95% t-interval | interval excludes 0 | unpaired seeds |",
        "|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        mean = "-" if c["mean"] is None else f"{c['mean']:+.2f}"
        interval, verdict = "-", "needs 2 pairs"
        if c["ci95"] is not None:
            interval = f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
            verdict = ("yes: higher" if c["mean"] > 0 else "yes: lower") if c["excludes_zero"] else "no"
        unpaired = [f"{s} (no finished run at {c['x']})" for s in c["baseline_only_seeds"]]
        unpaired += [f"{s} (no finished run at {baseline})" for s in c["value_only_seeds"]]
        lines.append(f"| {c['x']} | {c['n']} | {mean} | {interval} | {verdict} | {', '.join(unpaired) or '-'} |")
    return "\n".join(lines)


def draw(axes: Axes, groups: list[dict[str, Any]], metric: str, label: str, linestyle: str = "-") -> None:
    """One metric's mean with its 95% t-interval against the swept value, and each run as a faint dot."""
    done = [g for g in groups if isinstance(g["x"], (int, float)) and metric in g["metrics"]]
    if not done:
        return
    stats = [g["metrics"][metric] for g in done]
    halves = [s["ci95"][1] - s["mean"] if s["ci95"] else 0.0 for s in stats]  # one run: no interval
    line = axes.errorbar(
        [g["x"] for g in done], [s["mean"] for s in stats], yerr=halves, marker="o", capsize=3, label=label, linestyle=linestyle
    )
    runs = [(g["x"], value) for g, s in zip(done, stats) for value in s["values"]]
    axes.scatter(*zip(*runs), s=10, alpha=0.3, color=line.lines[0].get_color())


def plot(path: Path, groups: list[dict[str, Any]], x: str, metrics: list[str]) -> None:
    figure = Figure(figsize=(6, 4), dpi=100, layout="constrained")
    axes = figure.subplots()
    for name in metrics:
        draw(axes, groups, name, name)
    axes.set(xlabel=x, ylabel="pointing game (%): mean, 95% interval, runs", title="Pointing game against " + x)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.savefig(path)


def summarize(
    runs: list[Path], x: str, output: Path, paired_baseline: Any = None, metric: str = "test/pointing_game/mean"
) -> str:
    rows = collect(runs, x)
    metrics = pointing_game_metrics(rows)
    groups = aggregate(rows, metrics)
    comparisons = paired_differences(rows, paired_baseline, metric) if paired_baseline is not None else []
    output.mkdir(parents=True, exist_ok=True)
    markdown = table(groups, x, metrics)
    if comparisons:
        markdown += "\n\n" + paired_table(comparisons, x)
    write_atomic(output / "results.md", markdown + "\n\n![pointing game](pointing_game.png)\n")
    record = {"x": x, "metrics": metrics, "values": groups, "paired": comparisons, "runs": rows}
    write_atomic(output / "results.json", json.dumps(record, indent=2) + "\n")
    plot(output / "pointing_game.png", groups, x, metrics)
    return markdown


def parse_value(text: str) -> int | float | str:
    """A swept value as given on the command line: "0" matches a run's 0 and 0.0 alike."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Table and plot of a sweep's pointing game against a swept value.")
    parser.add_argument("runs", nargs="+", help="a multirun directory, or run directories / glob patterns")
    parser.add_argument("--x", default="data.synthetic_ratio", help="the swept config key (default data.synthetic_ratio)")
    parser.add_argument("--output", type=Path, help="where results.{md,json} and the plot go (default: the multirun directory)")
    parser.add_argument(
        "--paired-baseline", type=parse_value, help="compare every other swept value with this one, run by run on `seed`"
    )
    parser.add_argument(
        "--metric", default="test/pointing_game/mean", help="the paired comparison's metric (default test/pointing_game/mean)"
    )
    args = parser.parse_args(argv)
    run_dirs = [Path(p) for pattern in args.runs for p in sorted(glob.glob(pattern))]
    if len(run_dirs) == 1 and not runs.config_path(run_dirs[0]).parent.is_dir():  # a multirun directory: its numbered runs
        run_dirs = sorted((p for p in run_dirs[0].iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name))
    if not run_dirs:
        raise SystemExit(f"no directory matches {args.runs}")
    output = args.output or (run_dirs[0].parent if len(args.runs) == 1 else Path("."))
    print(summarize(run_dirs, args.x, output, args.paired_baseline, args.metric))
    print(f"written to {output / 'results.md'} and {output / 'pointing_game.png'}")


if __name__ == "__main__":
    main()
