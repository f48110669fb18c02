# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-serving bench-triggers bench-deploy bench-package bench-container-swap bench-dashboard bench-data bench-disagreement lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## Scaffold the iris example, run the whole line, query the live API, stop the server.
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

test: $(STAMP)  ## Type-check the package, then run the test suite (integration tests included).
	$(BIN)/python -m mypy src/conveyor
	$(BIN)/python -m pytest -n 2 --dist loadgroup

lint: $(STAMP)  ## Type-check the package (strict).
	$(BIN)/python -m mypy src/conveyor

bench: $(STAMP)  ## Benchmarks; results go to benchmarks/RESULTS.md.
	$(BIN)/python benchmarks/noop_run.py

bench-serving: $(STAMP)  ## Serving throughput vs MLflow and bare Starlette (needs wrk; installs MLflow once).
	$(BIN)/python benchmarks/serving.py

bench-triggers: $(STAMP)  ## Trigger costs: commit with/without the hook, signed webhook push, a flood of pushes.
	$(BIN)/python benchmarks/triggers.py

bench-deploy: $(STAMP)  ## Deploys and rollbacks under load: failed requests (must be 0), time to 100 %.
	$(BIN)/python benchmarks/deploy.py

bench-package: $(STAMP)  ## Image build, model-only rebuild and image size (needs podman: scripts/containers.sh).
	$(BIN)/python benchmarks/package.py

bench-container-swap: $(STAMP)  ## Model-only deploys hot-swapped into a running container under load (needs podman).
	$(BIN)/python benchmarks/container_swap.py

bench-data: $(STAMP)  ## Data add/status/push/pull vs DVC on moto S3 (installs DVC + dvc-s3 once).
	$(BIN)/python benchmarks/data.py

clean:
	rm -rf $(VENV) .pytest_cache

bench-dashboard: $(STAMP)  ## Dashboard page loads on 10,000 runs and 1,000 versions, paginated vs unpaginated.
	$(BIN)/python benchmarks/dashboard.py

bench-disagreement: $(STAMP)  ## What comparing a canary or shadow with stable costs a request (latency, requests/s).
	$(BIN)/python benchmarks/disagreement.py
