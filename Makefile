# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-serving lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## Scaffold the iris example, run the whole line, query the live API, stop the server.
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

test: $(STAMP)  ## Type-check the package, then run the test suite (integration tests included).
	$(BIN)/python -m mypy src/conveyor
	$(BIN)/python -m pytest -n 2

lint: $(STAMP)  ## Type-check the package (strict).
	$(BIN)/python -m mypy src/conveyor

bench: $(STAMP)  ## Benchmarks; results go to benchmarks/RESULTS.md.
	$(BIN)/python benchmarks/noop_run.py

bench-serving: $(STAMP)  ## Serving throughput vs MLflow and bare Starlette (needs wrk; installs MLflow once).
	$(BIN)/python benchmarks/serving.py

.PHONY: bench-data
bench-data: $(STAMP)  ## Data add/status/push/pull vs DVC on moto S3 (installs DVC + dvc-s3 once).
	$(BIN)/python benchmarks/data.py

clean:
	rm -rf $(VENV) .pytest_cache
