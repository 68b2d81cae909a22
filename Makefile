# The two commands of the README: `make demo` and `make test`. Each sets up .venv first.
# Benchmark targets take their own flags in BENCH_ARGS: make bench-fit BENCH_ARGS="--data synthetic"
BENCH_ARGS ?=
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-heavy test-matrix bench bench-shapes bench-scale bench-advice bench-relocation bench-quality bench-fit bench-refit bench-ids bench-vae bench-encode dist airflow-check example clean

DEMO_STAMP := $(VENV)/.installed-demo

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[spark,test,compare,report]"
	touch $(STAMP)

# The demo needs no torch: the core, local Spark with Delta, and matplotlib for the report's plots.
$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[spark,report]"
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m semid_spark.demo

test: $(STAMP)
	$(PY) -m pytest -m "not heavy" -q --durations=20

test-heavy: $(STAMP)
	$(PY) -m pytest -m heavy -q --durations=25

# The Spark and Delta tests (and the torch-free rest) on the other Spark versions clusters run (the
# pinned 4.2 is `make test`'s), each in its own light virtualenv (no torch: RQ-VAE's tests skip).
# An entry is pyspark:delta-spark[:more pins]; 3.5 runs with the oldest libraries the wheel accepts,
# the generation Spark 3.5 clusters ship (Databricks 15.4 LTS: numpy 1.23, pandas 1.5.3, pyarrow 14).
SPARK35 := 3.5.8:3.3.2:numpy==1.23.5,pandas==1.5.3,pyarrow==14.0.1,scipy==1.11.1
SPARK40 := 4.0.2:4.0.1
MATRIX ?= $(SPARK35) $(SPARK40)
MATRIX_TESTS ?= tests/spark --ignore=tests/spark/test_real_deployments.py tests/delta tests/uniqueness tests/properties \
  tests/test_core.py tests/test_relocate.py tests/test_session.py tests/test_storage.py tests/test_config.py tests/test_metrics.py
# CI's 3.5 run: the same but the checks that run the same Spark and Delta calls as tests it keeps
# (production's concurrency and retry cases, evaluate, the quality gate, first contact, metrics): 182
# tests in 478 s where the full 3.5 set took 1135 s; CI's 90 minutes held make test, make test-heavy
# and the full 3.5 run with 5 to spare.
# Production's change-data-feed read stays: Delta 3.3 reads it through another path.
CI_MATRIX_TESTS ?= tests/spark --ignore=tests/spark/test_real_deployments.py --ignore=tests/spark/test_production.py \
  --ignore=tests/spark/test_evaluate.py --ignore=tests/spark/test_quality_gate.py --ignore=tests/spark/test_first_contact.py \
  tests/spark/test_production.py::test_since_last_run_reads_only_the_rows_of_new_input_versions \
  tests/delta tests/uniqueness tests/properties \
  tests/test_core.py tests/test_relocate.py tests/test_session.py tests/test_storage.py tests/test_config.py
test-matrix:
	@set -e; for entry in $(MATRIX); do \
	  spark=$$(echo $$entry | cut -d: -f1); delta=$$(echo $$entry | cut -d: -f2); \
	  pins=$$(echo $$entry | cut -s -d: -f3 | tr , ' '); venv=.venv-spark$$spark; \
	  test -x $$venv/bin/python || $(PYTHON) -m venv $$venv; \
	  $$venv/bin/python -m pip install -q -e . "pyspark==$$spark" "delta-spark==$$delta" $$pins \
	    pytest chispa hypothesis "moto[server]" s3fs; \
	  echo "== pyspark $$spark, delta-spark $$delta $$pins"; \
	  $$venv/bin/python -m pytest -q -m "not heavy" -p no:cacheprovider $(MATRIX_TESTS); \
	done

# Real text, offline: emoji names embedded by WordLlama, through the job and the quality report.
example: $(STAMP)
	$(PY) -m pip install -q -e ".[example]"
	$(PY) -m semid_spark.examples.emoji_ids

# The wheel for spark-submit --py-files, a packed virtualenv, or a Databricks wheel task.
dist: $(STAMP)
	rm -rf dist build
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .
	@ls dist/*.whl

# The Airflow DAG's integrity check, in its own virtualenv (Airflow is not a dependency of the package).
AIRFLOW_VENV := .venv-airflow
airflow-check:
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q "apache-airflow==3.3.2" "apache-airflow-providers-apache-spark==6.3.4"
	AIRFLOW_HOME=$(CURDIR)/$(AIRFLOW_VENV)/home $(AIRFLOW_VENV)/bin/python jobs/airflow/check_dag.py

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) .venv-spark* build dist *.egg-info .pytest_cache .hypothesis

# RQ-KMeans fit on real text: time vs faiss greedy RQ, error vs converged scikit-learn, balanced fit
bench-fit: $(STAMP)
	$(PY) -m pip install -q -e ".[example,compare]"
	$(PY) -m semid_spark.bench.fit_compare $(BENCH_ARGS)

# Churn of a refit on a grown, drifted catalog: cold/warm start, with and without alignment, then
# semid run + semid refit (new_table, keep_ids) through the job (3 minutes on 2 cores): artifacts/bench/refit*.json
bench-refit: $(STAMP)
	$(PY) -m semid_spark.bench.refit --job $(BENCH_ARGS)

# IDs on real text (docstring sentences, WordLlama): suffix vs relocate vs faiss RQ, and the job with each
# (10-20 minutes on 2 cores): artifacts/bench/quality.json and quality.md.
bench-quality: $(STAMP)
	$(PY) -m pip install -q -e ".[example,compare]"
	$(PY) -m semid_spark.bench.quality --job $(BENCH_ARGS)

bench-ids: $(STAMP)
	$(PY) -m semid_spark.bench.ids_compare $(BENCH_ARGS)

bench-vae: $(STAMP)
	$(PY) -m semid_spark.bench.vae_report $(BENCH_ARGS)

bench-encode: $(STAMP)
	$(PY) -m semid_spark.bench.spark_encode $(BENCH_ARGS)

bench: $(STAMP)
	$(PY) -m semid_spark.cli bench $(BENCH_ARGS)

# Large codebook shapes (3x1024, 2048/1024/512/256, 3x4096) fitted and encoded beside faiss and one core's
# GEMM on 200k x 128 rows, with the advisor's figures and a plan at 10^9 items (about 15 minutes on 2 cores):
# artifacts/bench/shapes.json and shapes.md. BENCH_ARGS="--repeats 3" gives the medians the README quotes
# (about 35 minutes: run it in the background), "--shapes 3x8192" the largest shape, "--device cuda" the
# cuda path as well; a semid bench --scale result in artifacts/bench (or --scale-json) adds the plan.
bench-shapes: $(STAMP)
	$(PY) -m semid_spark.cli bench --shapes $(BENCH_ARGS)

# The advisor's predictions beside catalogs 4x and 16x its 20,000-row sample, synthetic and real words (the example
# extra): artifacts/bench/advice-synthetic.{json,md} and advice-words.{json,md}.
bench-advice: $(STAMP)
	$(PY) -m pip install -q -e ".[example]"
	$(PY) -m semid_spark.cli bench --advice $(BENCH_ARGS)
	$(PY) -m semid_spark.cli bench --advice --data words --sample 18000 $(BENCH_ARGS)

# Relocation's cost beside suffix counters, first and +1% runs at 1M and 4M rows, 3 x 256 and 3 x 4096 (about 25
# minutes on 2 cores): artifacts/bench/relocation.json and relocation.md.
bench-relocation: $(STAMP)
	$(PY) -m semid_spark.cli bench --relocation $(BENCH_ARGS)

# The job at 1M, 4M and 16M rows (8 to 20 minutes on 2 cores, by CPU): artifacts/bench/scale.json and scale.md.
bench-scale: $(STAMP)
	$(PY) -m semid_spark.cli bench --scale $(BENCH_ARGS)
