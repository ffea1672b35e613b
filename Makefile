PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install screenshots bench lint cov clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/flockctl demo

# Two workers (pytest-xdist): most tests wait on agents and sockets, so two at a time halve
# the wall time on a 2-core machine. TEST_WORKERS=0 runs them one by one.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check flock_node flock_tui tests benchmarks
	$(BIN)/python -m mypy flock_node flock_tui

cov: $(STAMP)
	rm -f .coverage .coverage.*
	# Reported even if a test fails under tracing (under coverage's tracer a thread's timed
	# wait does not end while an exception raised into a thread stuck in a C call is pending,
	# so a python_block that ignores its stop holds the run): `make test` is the pass/fail
	# check, this is the figure.
	-$(BIN)/python -m coverage run -m pytest -q -p no:cacheprovider
	$(BIN)/python -m coverage combine -q
	$(BIN)/python -m coverage report --include='flock_node/*' | grep TOTAL
	$(BIN)/python -m coverage report --include='flock_tui/*' | grep TOTAL

screenshots: $(STAMP)
	$(BIN)/python scripts/screenshots.py

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
