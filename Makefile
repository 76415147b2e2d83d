# `make demo` / `make test` create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test benchmark

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
