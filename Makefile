# The two commands of the README's Quick start: `make train` and `make test`.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup train test lint

setup:
	scripts/setup.sh test

train: setup
	$(BIN)/tinydigits train --model medium

lint: setup
	$(BIN)/ruff check src tests hubconf.py

test: setup
	$(BIN)/ruff check src tests hubconf.py
	$(BIN)/pytest -q
