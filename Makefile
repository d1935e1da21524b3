# The two commands a newcomer needs: `make run` and `make test`.
# Both work on a fresh machine with only Python 3.11+ and make: they create .venv.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev


.PHONY: run dev test test313 tools lint typecheck pytest bench demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(STAMP_RUN)

## make run: start the gateway on 0.0.0.0:8080 with embedded defaults
run: $(STAMP_RUN)
	$(BIN)/gateway serve

## make dev: every transport on with development-only credentials (Twilio token, Asterisk
## user/password, AudioSocket on 9092, call records in ./calls.jsonl); prints one
## `gateway call` line per transport that works as pasted in another terminal
dev: $(STAMP_RUN)
	$(BIN)/gateway dev

## make test: lint, type-check and run the whole test suite
test: $(STAMP_DEV) tools lint typecheck pytest

tools:
	@sh scripts/install-test-tools.sh

lint: $(STAMP_DEV)
	$(BIN)/ruff check gateway codecs tests bench scripts
	$(BIN)/ruff format --check gateway codecs tests bench scripts

# mypy cannot follow the `telecodecs = "codecs"` package-dir mapping, so it
# type-checks the codecs folder through a symlink carrying its import name.
typecheck: $(STAMP_DEV)
	mkdir -p build/typecheck && ln -sfn ../../codecs build/typecheck/telecodecs
	MYPYPATH=build/typecheck $(BIN)/mypy -p telecodecs
	MYPYPATH=build/typecheck $(BIN)/mypy gateway tests bench

pytest: $(STAMP_DEV)
	$(BIN)/python -m pytest -q

## make test313: the codec tests and an import check on Python 3.13 (no stdlib audioop there)
PYTHON313 ?= $(firstword $(wildcard /root/.pyenv/versions/3.13*/bin/python3) python3.13)
test313:
	$(PYTHON313) -m venv .venv313
	.venv313/bin/python -m pip install --quiet -e '.[dev]'
	.venv313/bin/python -c "import gateway.server.app, gateway.agent.voice, telecodecs.g711"
	.venv313/bin/python -m pytest -q -p no:cacheprovider tests/codecs

## make demo: start a gateway with embedded defaults, call it once, print the latency table
demo: $(STAMP_RUN)
	$(BIN)/gateway demo

## make bench: codec per-frame costs
bench: $(STAMP_RUN)
	$(BIN)/python bench/bench_codecs.py

clean:
	rm -rf $(VENV) .venv313 build .mypy_cache .pytest_cache .ruff_cache
