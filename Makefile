# The two commands of the README's Quick start: `make train` and `make test`.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup train test test-quick lint

setup:
	scripts/setup.sh test

train: setup
	$(BIN)/tinydigits train --model medium

lint: setup
	$(BIN)/ruff check src tests hubconf.py

# Two pytest processes side by side (pytest-xdist), each test module whole in one of them, so
# a module's browser, server or compiled model is made once; then the numerics-sensitive
# tests (marked `kernels`) again under other CPU kernels and thread counts.
PYTEST_PARALLEL := -n 2 --dist loadfile

test: setup
	$(BIN)/ruff check src tests hubconf.py
	$(BIN)/pytest -q $(PYTEST_PARALLEL)
	scripts/test-kernels.sh

# A couple of minutes: leaves out the tests marked slow (browser, compiler and emulator, training).
test-quick: setup
	$(BIN)/ruff check src tests hubconf.py
	$(BIN)/pytest -q $(PYTEST_PARALLEL) -m "not slow"
