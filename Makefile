# ClipMind: `make up` runs the whole mesh on embedded defaults, `make test` runs every check.
SHELL := /bin/bash
BIN := .venv/bin
STAMP := .venv/.setup-stamp

.PHONY: setup up test lint typecheck gen gen-check unit api integration e2e bench clean

$(STAMP): pyproject.toml package.json scripts/setup
	scripts/setup
	touch $@

setup: $(STAMP)

up: setup
	$(BIN)/clipmind up

gen: setup
	scripts/gen-protos

gen-check: setup
	scripts/gen-protos --check

lint: setup
	node_modules/.bin/buf lint
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy services

unit: setup
	$(BIN)/pytest -q tests/unit

api: setup
	$(BIN)/pytest -q tests/api

integration: setup
	$(BIN)/pytest -q tests/integration

e2e: setup
	$(BIN)/pytest -q tests/e2e

test: setup gen-check lint typecheck
	$(BIN)/pytest -q -ra

clean:
	rm -rf .venv node_modules .clipmind .pytest_cache .mypy_cache .ruff_cache
