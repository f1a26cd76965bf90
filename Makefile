# The two commands: `make up` (install + start the local stack) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up down status test lint typecheck unit protos bench clean fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[server,dev]'
	@# xds-protos ships old copies of OpenTelemetry's generated protos that break MLServer's
	@# tracing import; put opentelemetry-proto's own files back (docs/decisions/0002).
	$(BIN)/pip install --quiet --force-reinstall --no-deps \
	  "opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	$(BIN)/python -m samples.train
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/meshserve up --detach

down:
	@if [ -x $(BIN)/meshserve ]; then $(BIN)/meshserve down; else echo "meshserve is not installed"; fi

status: $(STAMP)
	$(BIN)/meshserve status

protos: $(STAMP)
	$(BIN)/python -m apis.generate

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m apis.generate --check

typecheck: $(STAMP)
	$(BIN)/mypy

# Coverage of product code, the processes the e2e tests start included (pyproject's
# [tool.coverage.*]); `coverage report` fails under its fail_under.
test: lint typecheck
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report

# The property tests (tests/*/test_*_fuzz.py) with a long budget: hypothesis profile "fuzz"
# (tests/conftest.py); `make test` runs the same tests with the short "ci" profile.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -p no:cacheprovider $(wildcard tests/*/test_*_fuzz.py)

# Load generators from Debian (wrk; h2load from nghttp2-client), installed when missing (needs root
# or sudo). BENCH_ARGS passes options, e.g. `make bench BENCH_ARGS="--only dataplane --quick"`.
bench: $(STAMP)
	@command -v wrk >/dev/null && command -v h2load >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wrk nghttp2-client; }
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .meshserve build *.egg-info
