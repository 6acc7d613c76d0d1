# `make demo` and `make test` work on a fresh machine: they create .venv if missing and install the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Point at the shared datasets when they are beside the checkout (CI has them there).
ifneq ($(wildcard ../shared/data),)
export PIXELWISE_DATA ?= $(abspath ../shared/data)
endif

.PHONY: demo test test-slow bench env browser compiler clean

$(BIN)/pixelwise: pyproject.toml
	$(MAKE) compiler
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

env: $(BIN)/pixelwise

demo: env
	$(BIN)/pixelwise demo

# The report's browser test needs headless Chromium: the Debian package, installed once.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }

# The crf extra (pydensecrf2) is an sdist compiled at install, and infer.compile (torch.compile) compiles C++ on the
# CPU: a C++ compiler and Python's headers, installed once.
compiler:
	@command -v g++ >/dev/null 2>&1 && $(PYTHON) -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" || \
	  { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ python3-dev; }

test: env browser
	$(BIN)/python -m pytest

test-slow: env
	$(BIN)/python -m pytest -m slow

bench: env
	$(BIN)/python benchmarks/unet_isbi2012.py

clean:
	rm -rf $(VENV) runs build *.egg-info
