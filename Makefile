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

# Everything, then the numerics-sensitive tests again under other CPU kernels and thread counts.
test: setup
	$(BIN)/ruff check src tests hubconf.py
	$(BIN)/pytest -q
	scripts/test-kernels.sh

# A couple of minutes: leaves out the tests marked slow (browser, compiler and emulator, training).
test-quick: setup
	$(BIN)/ruff check src tests hubconf.py
	$(BIN)/pytest -q -m "not slow"
