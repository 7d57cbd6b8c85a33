PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

DEMO_ARGS ?=

.PHONY: demo test lint setup setup-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e ".[dev]"
	touch $@ $(STAMP)

setup: $(STAMP)
setup-dev: $(DEV_STAMP)

demo: $(STAMP)
	$(VENV)/bin/endofm demo $(DEMO_ARGS)

test: $(DEV_STAMP)
	$(PY) -m pytest -q

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check endofm tests benchmarks

clean:
	rm -rf $(VENV) runs build dist *.egg-info
