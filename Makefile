# photo-escape: two commands on a fresh machine.
#   make demo   sets everything up and runs the main story end to end on the sandbox
#   make test   sets everything up and runs the test suite
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
VENV := .venv
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup demo test test-fast bench clean browser

setup: $(VENV)/.synced

# uv: use the one on PATH, else install it with pip (idempotent)
$(VENV)/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || [ -x "$(UV)" ] || $(PYTHON) -m pip install --quiet --user uv || $(PYTHON) -m pip install --quiet uv
	@UV=$$(command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv); \
	  $$UV sync --frozen --python $(PYTHON) --quiet
	@touch $@

# Debian's Chromium for the report's browser test (no browser download at run time)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the browser test will be skipped"; }

demo: setup
	$(VENV)/bin/photo-escape demo

test: setup browser
	$(VENV)/bin/python -m pytest -q

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

bench: setup
	$(VENV)/bin/python bench/hashing.py

clean:
	rm -rf $(VENV) .photo-escape reports/out
