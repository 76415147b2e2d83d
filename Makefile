# `make demo` / `make test` create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test benchmark mixing-study dry-run

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) train.py experiment=shapes

# pytest exits 5 when it collects no test: that is a failure here too
test: $(STAMP)
	$(PY) -m pytest -q; status=$$?; [ $$status -ne 5 ] || echo "pytest collected no tests"; exit $$status

benchmark: $(STAMP)
	$(PY) benchmarks/shapes_grounding.py
	$(PY) benchmarks/gradcam_throughput.py
	$(PY) benchmarks/data_throughput.py
	$(PY) benchmarks/generation_pipeline.py
	$(PY) benchmarks/full_size_cost.py
	$(PY) benchmarks/remote_throughput.py

# the offline mixing study: the real/synthetic ratio sweep on the shapes world (~20 min on 2 CPU cores)
mixing-study: $(STAMP)
	$(PY) train.py -m experiment=shapes_mixing data.synthetic_ratio=0,0.25,0.5,0.75,1 hydra.sweep.dir=logs/shapes_mixing/multiruns/study
	$(PY) -m synground.results logs/shapes_mixing/multiruns/study --output benchmarks/results/shapes_mixing

# every experiment of the paper through the real entry points with full-size models, 2 steps each (~20 min on 2 CPU cores);
# DRY_RUN_ARGS selects a part, e.g. DRY_RUN_ARGS="--experiments albef_amc_vg --dropout off"
DRY_RUN_ARGS ?=
dry-run: $(STAMP)
	$(PY) benchmarks/dry_run.py $(DRY_RUN_ARGS)
