# The two commands of the README: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-heavy bench bench-fit bench-ids bench-vae bench-encode clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,compare,report]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m semid_spark.demo

test: $(STAMP)
	$(PY) -m pytest -m "not heavy" -q

test-heavy: $(STAMP)
	$(PY) -m pytest -m heavy -q

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis

bench-fit: $(STAMP)
	$(PY) -m semid_spark.bench.fit_compare

bench-ids: $(STAMP)
	$(PY) -m semid_spark.bench.ids_compare

bench-vae: $(STAMP)
	$(PY) -m semid_spark.bench.vae_report

bench-encode: $(STAMP)
	$(PY) -m semid_spark.bench.spark_encode

bench: $(STAMP)
	$(PY) -m semid_spark.cli bench
