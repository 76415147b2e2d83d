"""synground.results on run directories written here: aggregation over seeds, paired comparisons, learning curves."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from support import ROOT
from synground.results import (
    T_975,
    aggregate,
    bootstrap_equivalent,
    collect,
    curve_equivalent,
    describe,
    equivalent_size,
    holm,
    paired_differences,
    paired_table,
    paired_test,
    pointing_game_metrics,
    t_quantile,
    t_two_sided_p,
    table,
)

HEADLINE = "test/pointing_game/shapes_textured"


def write_run(root: Path, ratio: float, seed: int, score: float | None = None, failed: str | None = None) -> Path:
    """A run directory as train.py leaves it: the config, and metrics.json (or failed.json)."""
    run = root / f"ratio{ratio}-seed{seed}"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(f"seed: {seed}\ndata:\n  synthetic_ratio: {ratio}\n")
    if failed:
        (run / "failed.json").write_text(json.dumps({"error": failed}))
    elif score is not None:
        (run / "metrics.json").write_text(json.dumps({HEADLINE: score, "val/pointing_game/shapes_textured": score}))
    else:
        (run / "metrics.json").write_text(json.dumps({"val/pointing_game/shapes_textured": 0.5}))  # stopped before its test
    return run


def sweep(root: Path) -> list[Path]:
    """Ratio 0 with seeds 0-2 at 80, 82, 84%; 0.5 at +2, +2.5, +3 points; 1 at -1, +1 with seed 2 failed; 0.25 at
    seeds 0 and 3 (3 has no baseline run)."""
    runs = [write_run(root, 0.0, seed, score) for seed, score in enumerate((0.80, 0.82, 0.84))]
    runs += [write_run(root, 0.5, seed, score) for seed, score in enumerate((0.82, 0.845, 0.87))]
    runs += [write_run(root, 1.0, 0, 0.79), write_run(root, 1.0, 1, 0.83), write_run(root, 1.0, 2, failed="Boom: out of memory")]
    runs += [write_run(root, 0.25, 0, 0.81), write_run(root, 0.25, 3, 0.9)]
    return runs


def test_runs_of_one_value_are_aggregated_over_seeds_with_a_t_interval(tmp_path):
    groups = aggregate(collect(sweep(tmp_path), "data.synthetic_ratio"), [HEADLINE])
    assert [g["x"] for g in groups] == [0.0, 0.25, 0.5, 1.0]
    baseline = groups[0]["metrics"][HEADLINE]
    assert groups[0]["seeds"] == [0, 1, 2] and baseline["values"] == pytest.approx([80, 82, 84])
    # by hand: mean 82, sd sqrt((4 + 0 + 4) / 2) = 2, half-width t(0.975, 2 df) * 2 / sqrt(3) = 4.3027 * 1.1547
    assert baseline["n"] == 3 and baseline["mean"] == pytest.approx(82) and baseline["std"] == pytest.approx(2)
    assert baseline["ci95"] == pytest.approx([82 - 4.9683, 82 + 4.9683], abs=1e-3)
    assert groups[3]["metrics"][HEADLINE]["n"] == 2 and groups[3]["failed"][0]["seed"] == 2
    markdown = table(groups, "data.synthetic_ratio", [HEADLINE])
    assert "| 0.0 | 82.0% [77.0, 87.0], sd 2.0 | 3 |" in markdown
    assert "| 1.0 | 81.0% [55.6, 106.4], sd 2.8 | 2 (1 failed) |" in markdown


def test_a_stages_mean_gets_a_column_only_when_it_averages_several_splits():
    one = {"test/pointing_game/mean": 0.8, "test/pointing_game/a": 0.8, "val/pointing_game/mean": 0.7}
    one |= {"val/pointing_game/a": 0.6, "val/pointing_game/b": 0.8, "train/loss": 0.3}
    columns = pointing_game_metrics([{"metrics": one}])
    assert columns == ["test/pointing_game/a", "val/pointing_game/a", "val/pointing_game/b", "val/pointing_game/mean"]


def test_one_run_has_a_mean_but_no_interval():
    assert describe([81.5]) == {"n": 1, "mean": 81.5, "std": None, "ci95": None}


def test_values_are_paired_on_the_seed_and_a_missing_partner_is_reported(tmp_path):
    rows = collect(sweep(tmp_path), "data.synthetic_ratio")
    comparisons = {c["x"]: c for c in paired_differences(rows, 0, HEADLINE)}  # 0 matches the runs' 0.0
    mix = comparisons[0.5]  # differences 2, 2.5, 3: sd 0.5, half-width 4.3027 * 0.5 / sqrt(3)
    assert mix["differences"] == pytest.approx([2, 2.5, 3]) and mix["mean"] == pytest.approx(2.5)
    assert mix["ci95"] == pytest.approx([2.5 - 1.2421, 2.5 + 1.2421], abs=1e-3) and mix["excludes_zero"]
    synthetic = comparisons[1.0]  # seed 2 failed: one side only, reported
    assert synthetic["seeds"] == [0, 1] and synthetic["differences"] == pytest.approx([-1, 1]) and not synthetic["excludes_zero"]
    assert synthetic["baseline_only_seeds"] == [2] and synthetic["value_only_seeds"] == []
    few = comparisons[0.25]  # seed 3 has no baseline run, seeds 1 and 2 no run at 0.25
    assert few["n"] == 1 and few["ci95"] is None and not few["excludes_zero"]
    assert few["baseline_only_seeds"] == [1, 2] and few["value_only_seeds"] == [3]
    markdown = paired_table(list(comparisons.values()), "data.synthetic_ratio")
    assert "| 0.5 | 3 | +2.50 | [+1.26, +3.74] | yes: higher | - |" in markdown
    assert "| 1.0 | 2 | +0.00 | [-12.71, +12.71] | no | 2 (no finished run at 1.0) |" in markdown
    assert "needs 2 pairs | 1 (no finished run at 0.25), 2 (no finished run at 0.25), 3 (no finished run at 0.0) |" in markdown
    with pytest.raises(ValueError, match=r"paired baseline 0\.75 is not among"):
        paired_differences(rows, 0.75, HEADLINE)


def test_two_finished_runs_of_one_value_and_seed_cannot_be_paired(tmp_path):
    runs = [write_run(tmp_path / "a", 0.0, 0, 0.8), write_run(tmp_path / "b", 0.0, 0, 0.7), write_run(tmp_path, 0.5, 0, 0.8)]
    with pytest.raises(ValueError, match=r"a/ratio0\.0-seed0 and .*b/ratio0\.0-seed0 are both finished runs"):
        paired_differences(collect(runs, "data.synthetic_ratio"), 0.0, HEADLINE)


def test_a_run_missing_its_metric_is_an_error_naming_its_directory(tmp_path):
    runs = [write_run(tmp_path, 0.0, 0, 0.8), write_run(tmp_path, 0.5, 0)]
    rows = collect(runs, "data.synthetic_ratio")
    with pytest.raises(ValueError, match=rf"ratio0\.5-seed0: metrics.json has no '{HEADLINE}'.*rerun it"):
        aggregate(rows, [HEADLINE])
    with pytest.raises(ValueError, match=r"ratio0\.5-seed0: metrics.json has no"):
        paired_differences(rows, 0.0, HEADLINE)


def test_the_equivalent_size_is_interpolated_log_linearly_where_the_curve_first_reaches_the_score():
    curve = [(1000, 85.0), (125, 70.0), (250, 75.0), (500, 80.0)]
    halfway = equivalent_size(curve, 82.5)
    assert halfway["size"] == pytest.approx(math.sqrt(500 * 1000)) and halfway["bracket"] == [500, 1000]
    assert equivalent_size(curve, 80.0)["size"] == pytest.approx(500)
    assert equivalent_size(curve, 90.0) == {"size": None, "bracket": [1000], "relation": "beyond the largest size measured"}
    assert equivalent_size(curve, 60.0)["relation"] == "at or below the smallest size measured"
    bumpy = [(125, 70.0), (250, 80.0), (500, 75.0), (1000, 85.0)]  # a noisy curve: the first size that reaches it
    assert equivalent_size(bumpy, 77.0)["size"] == pytest.approx(125 * 2**0.7)


def learning_curve(root: Path, scores: dict[int, tuple[float, ...]]) -> list[dict]:
    """Real-only runs of each pool size, one per seed, as the mixing study names them."""
    for pool, per_seed in scores.items():
        for seed, score in enumerate(per_seed):
            run = root / f"pool{pool}-ratio0.0-seed{seed}"
            (run / ".hydra").mkdir(parents=True)
            (run / ".hydra" / "config.yaml").write_text(f"seed: {seed}\nreal_pool: {pool}\n")
            (run / "metrics.json").write_text(json.dumps({HEADLINE: score}))
    return collect(sorted(root.iterdir()), "real_pool")


def test_a_rising_learning_curve_gives_the_equivalent_size_and_a_flat_one_none(tmp_path):
    rising = learning_curve(tmp_path / "rising", {125: (0.80, 0.81, 0.82), 500: (0.84, 0.85, 0.86), 2000: (0.88, 0.89, 0.9)})
    found = curve_equivalent(rising, 85.0, HEADLINE)
    assert found["size"] == pytest.approx(500) and found["bracket"] == [125, 500]
    assert found["rise"]["x"] == 2000 and found["rise"]["mean"] == pytest.approx(8) and found["rise"]["excludes_zero"]
    # seed noise as large as the differences between sizes: the means alone would put 85.0 beyond 2000 scenes
    flat = learning_curve(tmp_path / "flat", {125: (0.80, 0.86, 0.83), 500: (0.82, 0.85, 0.84), 2000: (0.84, 0.81, 0.85)})
    found = curve_equivalent(flat, 85.0, HEADLINE)
    assert found["size"] is None and found["relation"] == "the real-only curve is flat"
    assert found["bracket"] == [125, 2000] and not found["rise"]["excludes_zero"]


def test_the_command_line_writes_the_tables_the_paired_comparison_and_the_plot(tmp_path):
    sweep(tmp_path / "multirun")
    arguments = [str(tmp_path / "multirun"), "--paired-baseline", "0", "--metric", HEADLINE, "--output", str(tmp_path / "out")]
    result = subprocess.run(
        [sys.executable, "-m", "synground.results", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Paired with data.synthetic_ratio=0.0 on the same seed" in result.stdout
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [c["x"] for c in record["paired"]] == [0.25, 0.5, 1.0] and len(record["runs"]) == 11
    assert "| 0.5 | 3 | +2.50 |" in (tmp_path / "out" / "results.md").read_text()
    with Image.open(tmp_path / "out" / "pointing_game.png") as plot:
        assert plot.format == "PNG"


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5, 10.0, 60.0])
def test_t_p_values_match_the_closed_forms_of_one_and_two_degrees_of_freedom(t):
    assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, rel=1e-9)  # Cauchy
    assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9, abs=1e-15)
    assert t_two_sided_p(-t, 4) == t_two_sided_p(t, 4)


def test_t_p_values_and_quantiles_agree_with_the_printed_table():
    """The table's 0.975 quantiles (4 decimals) give p = 0.05 and are given back by the quantile."""
    for df, quantile in enumerate(T_975, start=1):
        assert t_two_sided_p(quantile, df) == pytest.approx(0.05, abs=2e-5)
        assert t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-4)
    assert t_two_sided_p(3.7469, 4) == pytest.approx(0.02, abs=1e-5)  # the printed 0.99 quantile of t(4)


def t_cdf_by_integration(t: float, df: int, steps: int = 20000) -> float:
    """P(T <= t), t >= 0, by Simpson's rule on Student's density: an independent check of the continued fraction."""
    scale = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    density = lambda x: scale * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    h = t / steps
    inner = sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    return 0.5 + (density(0) + inner + density(t)) * h / 3


@pytest.mark.parametrize("df", [3, 4, 9])
def test_the_bonferroni_quantiles_the_study_uses_match_the_integrated_density(df):
    for comparisons in (1, 2, 4):
        probability = 1 - 0.05 / (2 * comparisons)
        assert t_cdf_by_integration(t_quantile(probability, df), df) == pytest.approx(probability, abs=1e-7)


def test_holm_multiplies_the_kth_smallest_p_by_m_minus_k_plus_1_and_keeps_the_order():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.02]) == [0.02]


def test_a_paired_test_gives_the_t_test_p_value_and_a_bonferroni_interval():
    differences = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, sd sqrt(2.5), t = 3 / sqrt(0.5)
    result = paired_test(differences, family=4)
    assert result["p"] == pytest.approx(t_two_sided_p(3 / math.sqrt(0.5), 4))
    quantile = result["ci_bonferroni"][1] - 3  # the half-width, in units of the standard error:
    assert t_cdf_by_integration(quantile / math.sqrt(2.5 / 5), 4) == pytest.approx(1 - 0.05 / 8, abs=1e-7)
    assert result["ci_bonferroni"][0] == pytest.approx(3 - quantile)
    assert paired_test([2.0]) == {"p": None, "ci_bonferroni": None}


def test_the_equivalent_size_interval_resamples_seeds_and_says_when_it_runs_off_the_curve(tmp_path):
    tight = learning_curve(tmp_path / "tight", {100: (0.700, 0.701, 0.699, 0.700), 1000: (0.800, 0.801, 0.799, 0.800)})
    found = bootstrap_equivalent(tight, {0: 75.0, 1: 75.1, 2: 74.9, 3: 75.0}, HEADLINE)
    low, high = found["ci95"]
    assert math.sqrt(100 * 1000) / 1.1 < low <= high < math.sqrt(100 * 1000) * 1.1 and found["seeds"] == [0, 1, 2, 3]
    # a mix near the top of a noisy curve: some resamples put it beyond the largest size, so no upper end
    noisy = learning_curve(tmp_path / "noisy", {100: (0.70, 0.74, 0.66, 0.70), 1000: (0.80, 0.84, 0.76, 0.80)})
    found = bootstrap_equivalent(noisy, {0: 79.0, 1: 83.0, 2: 80.0, 3: 78.0}, HEADLINE)
    assert found["ci95"][1] is None and 0 < found["beyond_share"] < 1
