"""Learning regression: a short make-demo training must still learn to ground, well above ITM alone.

The floors come from benchmarks/results/learning_floor.md (python benchmarks/learning_floor.py): the run's spread
over seeds, measured on the machine CI uses. A change that breaks a loss, the Grad-CAM path, the data or the
pretrained encoder's loading lands the pointing game near ITM alone and fails here.
"""

import json

from test_train import run

# measured over 4 seeds (benchmarks/results/learning_floor.md), with BLIP's [ENC] and phrase-token average: ITM + AMC
# 85.4% (sd 3.1, lowest 81.0%), ITM alone 35.6% (sd 8.5, highest 40.9%). The floor is 3 sd below ITM + AMC's mean and
# 6 points below its lowest seed; the margin is half the smallest gap between any seed's ITM + AMC and any seed's ITM
# alone (40 points).
AMC_FLOOR = 0.75
MARGIN_OVER_ITM = 0.20


def short_run(tmp_path, name: str, *overrides: str) -> float:
    result = run("train.py", "experiment=shapes_short", "seed=0", *overrides, f"hydra.run.dir={tmp_path}/{name}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / name / "metrics.json").read_text())["test/pointing_game/mean"]


def test_a_short_shapes_training_learns_grounding_well_above_itm_alone(tmp_path):
    amc = short_run(tmp_path, "amc")
    itm = short_run(tmp_path, "itm", "model.amc_weight=0")
    assert amc >= AMC_FLOOR, f"ITM + AMC reached {amc:.1%}, below the floor of {AMC_FLOOR:.0%} (ITM alone {itm:.1%})"
    assert amc - itm >= MARGIN_OVER_ITM, f"ITM + AMC {amc:.1%} is not {MARGIN_OVER_ITM:.0%} above ITM alone ({itm:.1%})"
