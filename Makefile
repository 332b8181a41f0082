# Two commands do everything on a fresh machine:
#   make run    the main job (see README)
#   make test   the test suite
# Both create .venv and install the project into it on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup data run test bench inspect plots clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The main job: train every step of the roadmap on the embedded default study
# (Fashion-MNIST, micro regime): about 10 minutes on 2 CPU cores. The runs land in
# runs/fashion_mnist_micro/ (ignored by git). Running it again skips what finished and
# resumes what was interrupted.
run: setup data
	$(PY) -m roadmap.sweep +step=all

# The figures and tables of every study under runs/ (yours) and experiments/ (the
# committed reference studies); nothing is trained. First the effective receptive field and
# the corruption robustness of every study that keeps checkpoints (the committed ones keep
# none: their measurements are committed), so that table.md gains their columns.
plots: setup
	$(PY) -m analysis.erf
	$(PY) -m analysis.robustness
	$(PY) -m analysis.plots
	@if [ -d experiments/fashion_mnist_micro_random ]; then \
		$(PY) -m analysis.design_figures experiments/fashion_mnist_micro experiments/fashion_mnist_micro_leave_one_out \
			experiments/fashion_mnist_micro_add_one experiments/fashion_mnist_micro_random experiments/figures; \
	fi
	$(PY) -m analysis.ladder   # the proxy ladder: the default study and its committed rungs

# The speed table (BENCHMARKS.md): every step against the reference implementations
# and the machine's matmul rate, about 10 minutes on 2 CPU cores. Writes benchmarks/.
bench: setup data
	$(PY) -m roadmap.bench

inspect: setup
	$(PY) -m roadmap.inspect +step=all regime=r50
	$(PY) -m roadmap.inspect +step=all regime=r200
	$(PY) -m roadmap.inspect +step=all

# Fashion-MNIST, the real one: Debian's package where apt-get can run, else
# torchvision's downloader into data/ (for online machines without apt).
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
		sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else \
		$(MAKE) setup && $(PY) -m roadmap.data; \
	fi

test: setup data
	$(PY) -m pytest -n 2 -q

clean:
	rm -rf $(VENV) .pytest_cache outputs multirun  # runs/ holds your studies: delete it yourself
