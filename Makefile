# `make demo` / `make test` create .venv on first use and reuse it afterwards. They install the exact versions of
# requirements.lock (pyproject.toml's dependencies and its dev extra, which includes every other extra, with hashes;
# for CPython 3.11 on Linux x86_64), then synground itself from the work tree, and reinstall when pyproject.toml or the
# lock changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# the tools the Makefile itself installs, pinned
PIP_VERSION := 26.3
UV_VERSION := 0.13.8

.PHONY: demo app test test-slow test-all lint check-lock lock benchmark mixing-study dry-run gpu-check

# the lock is checked against pyproject.toml first (offline, on the bare venv), so a stale lock fails with the
# requirement it misses instead of installing; `pip check` then checks that the pinned packages fit one another
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) tools/check_lock.py --lock $(LOCK)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

# The one command that updates the lock after a change to pyproject.toml: uv resolves pyproject's dependencies, its
# dev extra (with every extra it includes) and its build requirements (the project is installed without build isolation) from PyPI's metadata for
# CPython 3.11 on Linux x86_64 (no wheel is downloaded), keeping every pin of the current lock that still fits.
# `make lock LOCK_ARGS=--upgrade` moves every package to the newest version allowed, `LOCK_ARGS="--upgrade-package X"`
# only X. Needs the network (PyPI); installs uv into .venv if it is missing.
LOCK_ARGS ?=
LOCK_HEADER := \
  "\# The exact versions, with their hashes, that make demo, make test and CI install (pip install --require-hashes):" \
  "\# pyproject.toml's dependencies, its dev extra (which includes every other) and its build backend, for CPython 3.11" \
  "\# (manylinux_2_28). pyproject.toml keeps the ranges; after changing them run make lock, which rewrites this file" \
  "\# (make check-lock tells whether it is needed). Not edited by hand."
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/uv --version 2>/dev/null | grep -qE '^uv $(UV_VERSION)( |$$)' || $(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' > $(VENV)/build-requires.txt
	$(VENV)/bin/uv pip compile --quiet pyproject.toml - --extra dev --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --custom-compile-command 'make lock' --output-file $(LOCK) $(LOCK_ARGS) \
	  < $(VENV)/build-requires.txt
	{ printf '%s\n' $(LOCK_HEADER); cat $(LOCK); } > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)
	$(PY) tools/check_lock.py --lock $(LOCK)

# offline and fast: does the lock still pin every requirement of pyproject.toml inside its range, with hashes?
check-lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) tools/check_lock.py --lock $(LOCK)

# what CI and the pre-commit hooks run: the lock check, ruff's lint and ruff's formatting check (ruff pinned in the lock)
lint: $(STAMP)
	$(PY) tools/check_lock.py --lock $(LOCK)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: $(STAMP)
	$(PY) train.py experiment=shapes

# the web demo (app.py) on http://127.0.0.1:7860, serving the offline demo's model (trained first if there is none);
# APP_ARGS="ckpt_path=[a.ckpt,exports/b]" compares other checkpoints
APP_ARGS ?=
app: $(STAMP)
	$(PY) app.py $(APP_ARGS)

# The fast tier, for every change: every test but those marked slow (subprocess training, generation, ...), slurm,
# browser or s3 (pyproject.toml lists the markers); a few minutes on 2 cores. test-slow runs just those, test-all
# everything in one go; CI runs test, then test-slow. The slowest tests are listed at the end of each.
# pytest exits 5 when it collects no test: that is a failure here too.
FAST_TIER := not slow and not slurm and not browser and not s3
PYTEST_ARGS ?=
test: $(STAMP)
	$(PY) -m pytest -q -m "$(FAST_TIER)" --durations=10 $(PYTEST_ARGS); status=$$?; [ $$status -ne 5 ] || echo "pytest collected no tests"; exit $$status

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "not ($(FAST_TIER))" --durations=25 $(PYTEST_ARGS); status=$$?; [ $$status -ne 5 ] || echo "pytest collected no tests"; exit $$status

test-all: $(STAMP)
	$(PY) -m pytest -q --durations=25 $(PYTEST_ARGS); status=$$?; [ $$status -ne 5 ] || echo "pytest collected no tests"; exit $$status

benchmark: $(STAMP)
	$(PY) benchmarks/shapes_grounding.py
	$(PY) benchmarks/learning_floor.py
	$(PY) benchmarks/gradcam_throughput.py
	$(PY) benchmarks/data_throughput.py
	$(PY) benchmarks/generation_pipeline.py
	$(PY) benchmarks/full_size_cost.py
	$(PY) benchmarks/remote_throughput.py
	$(PY) benchmarks/consumer_install.py
	$(PY) benchmarks/findings.py

# the offline mixing study, run to docs/mixing_study_plan.md: three encoder conditions (sketch-world pretrained,
# random, both-style upper bound) over 5 seeds, each seed with its own pretrained encoder, then the analysis; resumable
# (a rerun trains only what is missing). MIXING_ARGS="--conditions disjoint" runs one part (each within 90 min on
# 2 CPU cores), MIXING_ARGS=--analyse-only only writes benchmarks/results/shapes_mixing/ and docs/findings.md from
# the runs there are
MIXING_ARGS ?=
mixing-study: $(STAMP)
	$(PY) benchmarks/mixing_study.py $(MIXING_ARGS)

# every experiment of the paper through the real entry points with full-size models, 2 steps each (~20 min on 2 CPU cores);
# DRY_RUN_ARGS selects a part, e.g. DRY_RUN_ARGS="--experiments albef_amc_vg --dropout off"
DRY_RUN_ARGS ?=
dry-run: $(STAMP)
	$(PY) benchmarks/dry_run.py $(DRY_RUN_ARGS)

# the GPU path at full size with random weights, offline, in about 8 minutes on one GPU: training (1 and 2 processes),
# evaluation, generation and data loading, each part within its budget (benchmarks/results/gpu_check.{json,md});
# GPU_CHECK_ARGS=--smoke runs it with tiny models on a CPU (< 2 min), GPU_CHECK_ARGS=--dry-run at full size on a CPU
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)
