# posttrain-course: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
export POSTTRAIN_PROFILE ?= tiny
DEMO_DIR := $(or $(POSTTRAIN_DEMO_DIR),/tmp/posttrain-demo)

.PHONY: env lock demo test test-fast bench selftest lint format release reproduce speech-corpus clean

env: $(STAMP)

# Every version comes from the lock (requirements.lock); pyproject.toml keeps only lower bounds.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	.ci/install-torch $(BIN)/pip $(LOCK)
	.ci/install-sandbox
	$(BIN)/pip install -c $(LOCK) -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (posttrain)" >/dev/null
	touch $(STAMP)

# Re-resolves every version of the lock on purpose (Linux x86-64, Python 3.10-3.12, torch as in .ci/lock-inputs.txt).
# Re-run the claim tests and the spread study (docs/margins.md) after a refresh: the documented numbers move with it.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "uv>=0.5"
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.10 \
		-c .ci/lock-inputs.txt --custom-compile-command "make lock" -o $(LOCK)

# Runs the finished labs on the tiny profile, releases the student versions and autogrades a sample class.
demo: $(STAMP)
	$(BIN)/python -m autograder demo --work $(DEMO_DIR)

# One pytest-xdist worker per core, each test file whole on one worker (a lab's notebook runs once, shared by the
# tests of its file; conftest.py starts the slow files first). `pytest` alone runs everything in one process.
PYTEST_PARALLEL := -n auto --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m autograder bench --out docs/bench

# Grades a generated class per lab (solution, blank, partial and every attack) and checks each grade
# (tiny profile; 300 s per cell instead of the labs' 600 s, so the infinite loop costs less).
selftest: $(STAMP)
	$(BIN)/python -m autograder selftest all --workers 2 --cell-timeout 300

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check shared autograder tests

format: $(STAMP)
	$(BIN)/ruff format shared autograder tests
	$(BIN)/ruff check --fix .

release: $(STAMP)
	$(BIN)/python -m autograder release all

# Rebuilds the shipped tiny-world models from scratch (about 9 minutes on 2 cores) and reports their skills.
reproduce: $(STAMP)
	$(BIN)/python -m posttrain.world build
	$(BIN)/python -m posttrain.world report

# Renders Lab 06's speech corpus again with Debian's espeak-ng (installed here when missing) and retrains the small
# CTC model on it (a few minutes on 2 cores); both are shipped, so nothing else needs espeak.
speech-corpus: $(STAMP)
	command -v espeak-ng >/dev/null || (apt-get update && apt-get install -y espeak-ng)
	$(BIN)/python -m posttrain.world.speech build
	$(BIN)/python -m posttrain.world.speech train

clean:
	rm -rf $(VENV) results .pytest_cache
