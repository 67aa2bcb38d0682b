# The two fresh-machine commands: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo test lint clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mtdp-demo

test: $(STAMP)
	$(PY) -m pytest -q test

# The unit layer: everything but the tests marked slow (node processes, bags, DDP).
.PHONY: test-fast
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" test

lint: $(STAMP)
	$(PY) -m flake8 mtdp_ros test launch setup.py

clean:
	rm -rf $(VENV) build *.egg-info demo_output
