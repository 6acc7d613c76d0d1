# `make demo` and `make test` work on a fresh machine: they create .venv if missing and install the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Point at the shared datasets when they are beside the checkout (CI has them there).
ifneq ($(wildcard ../shared/data),)
export PIXELWISE_DATA ?= $(abspath ../shared/data)
endif

.PHONY: demo test test-slow bench env clean

$(BIN)/pixelwise: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

env: $(BIN)/pixelwise

demo: env
	$(BIN)/pixelwise demo

test: env
	$(BIN)/python -m pytest

test-slow: env
	$(BIN)/python -m pytest -m slow

bench: env
	$(BIN)/python benchmarks/unet_isbi2012.py

clean:
	rm -rf $(VENV) runs build *.egg-info
