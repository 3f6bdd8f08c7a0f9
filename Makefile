# Set-up and the two everyday jobs. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_WORKERS ?= 2
# Where torch and torchvision come from, when not PyPI: https://download.pytorch.org/whl/cpu for the CPU build.
TORCH_INDEX ?=

.PHONY: demo test bench clean-venv

demo: $(VENV)/.installed
	$(PY) scripts/demo.py

test: $(VENV)/.installed
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q

bench: $(VENV)/.installed
	$(PY) benchmarks/run_all.py

$(VENV)/.installed: setup.py
	@echo "$$(date +%H:%M:%S) creating $(VENV) and installing the package and its dependencies with pip (1.5 to 3 minutes on a fresh machine)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(PY) -m pip install --quiet torch torchvision --index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

clean-venv:
	rm -rf $(VENV)
