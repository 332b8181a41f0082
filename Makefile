# Two commands do everything on a fresh machine:
#   make run    the main job (see README)
#   make test   the test suite
# Both create .venv and install the project into it on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run test inspect clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The main job. Until the sweep runner (python -m roadmap.sweep +step=all) lands, it
# prints the whole roadmap: every step of both paper regimes against Tables 10 and 11,
# and the default Fashion-MNIST study's networks.
run: inspect

inspect: setup
	$(PY) -m roadmap.inspect +step=all regime=r50
	$(PY) -m roadmap.inspect +step=all regime=r200
	$(PY) -m roadmap.inspect +step=all

test: setup
	$(PY) -m pytest -n 2 -q

clean:
	rm -rf $(VENV) .pytest_cache outputs multirun
