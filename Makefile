# The two fresh-machine commands: `make demo` and `make test`. Both create or reuse .venv,
# installed from requirements.lock: every package, transitive ones included, pinned with its
# hashes, so that a fresh machine builds the environment that was tested. Installing needs
# nothing but pip (`make lock`, which writes the lock, is the only step that uses uv).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# What the lock pins: the ranges of requirements*.txt and of setup.py's extras mtcp and ray
# (both installed so that their tests always run), and the CPU torch of requirements-torch.txt.
LOCK_INPUTS := requirements.txt requirements-dev.txt requirements-torch.txt setup.py
LOCK_EXTRAS := mtcp ray
comma := ,
# `make lock`: uv, pinned, in an environment of its own; LOCK_UPGRADE=--upgrade moves every
# pin to the newest release the ranges allow (without it, pins still allowed are kept).
UV_VERSION := 0.13.9
LOCK_VENV := .venv-lock
LOCK_UPGRADE ?=
# Where the CPU torch wheel lies on the development and CI machines (pip's find-links there).
TORCH_WHEELS ?= /opt/wheels
# `make test-latest`: a second environment from the newest releases the ranges allow.
LATEST_VENV := .venv-latest
LATEST_PY := $(LATEST_VENV)/bin/python

.PHONY: venv demo test lint lock test-latest clean

venv: $(STAMP)

# --require-hashes: pip refuses any file whose hash the lock does not list, and any package
# the lock does not pin. The project itself goes in editable, built with the lock's
# setuptools (no build isolation, which would fetch the newest setuptools).
$(STAMP): $(LOCK) setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --find-links $(TORCH_WHEELS) -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
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

$(LOCK_VENV)/bin/uv:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q "uv==$(UV_VERSION)"

lock: $(LOCK_VENV)/bin/uv
	$(LOCK_VENV)/bin/uv pip compile --quiet --generate-hashes $(LOCK_UPGRADE) \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	    --find-links $(TORCH_WHEELS) --emit-find-links --custom-compile-command "make lock" \
	    $(addprefix --extra ,$(LOCK_EXTRAS)) --output-file $(LOCK) $(LOCK_INPUTS)

# Rebuilt from scratch each time (newest releases as of now). torch stays the CPU build of
# requirements-torch.txt: the only CPU build this machine can reach (see the README).
# Runs the unit layer, as test-fast.
test-latest:
	$(PYTHON) -m venv --clear $(LATEST_VENV)
	$(LATEST_PY) -m pip install -q --upgrade pip
	$(LATEST_PY) -m pip install -q --upgrade --upgrade-strategy eager \
	    --find-links $(TORCH_WHEELS) -c requirements-torch.txt -r requirements-torch.txt \
	    -r requirements.txt -r requirements-dev.txt -e ".[$(subst $() ,$(comma),$(LOCK_EXTRAS))]"
	$(LATEST_PY) -m pip freeze --all --exclude-editable > $(LATEST_VENV)/versions.txt
	@echo "newest releases installed: $(LATEST_VENV)/versions.txt; differences from the lock:"
	@$(LATEST_PY) -c "$$LOCK_DIFF" $(LOCK) $(LATEST_VENV)/versions.txt
	$(LATEST_PY) -m pytest -q -m "not slow" test

# Prints "name: locked -> installed" for each locked package whose version differs, then the
# installed distributions the lock does not name (new dependencies; the ROS wheels also
# carry egg-info entries such as rclpy).
define LOCK_DIFF
import re, sys
def pins(path):
    pattern = re.compile(r'^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)')
    found = {}
    for line in open(path):
        match = pattern.match(line)
        if match:
            found[re.sub(r'[-_.]+', '-', match.group(1)).lower()] = match.group(2)
    return found
locked, installed = pins(sys.argv[1]), pins(sys.argv[2])
changes = [f'  {n}: {v} -> {installed.get(n, "not installed")}'
           for n, v in sorted(locked.items()) if installed.get(n) != v]
print('\n'.join(changes) or '  none')
print('  not in the lock:', ', '.join(sorted(set(installed) - set(locked))) or 'none')
endef
export LOCK_DIFF

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(LOCK_VENV) build *.egg-info demo_output
