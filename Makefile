# photo-escape: two commands on a fresh machine.
#   make demo   sets everything up and runs the main story end to end on the sandbox
#   make test   sets everything up and runs the test suite
PYTHON ?= python3
VENV := .venv
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup demo test test-fast bench clean browser immich-cli

# Our own modules are compiled to bytecode at every setup (compileall skips what is up to
# date; see the install below for why): about 0.1 s of every command's start otherwise.
# A file edited since is compiled in memory at import, as always.
setup: $(VENV)/.synced
	@$(VENV)/bin/python -m compileall -q photo_escape flows tasks reports sandbox >/dev/null

# uv: the one on PATH, else `python3 -m uv`, installed with pip when missing (idempotent).
# Bytecode is compiled at install: this environment sets PYTHONDONTWRITEBYTECODE, and
# every command and test process would otherwise recompile Prefect at start.
$(VENV)/.synced: pyproject.toml uv.lock
	@if command -v uv >/dev/null 2>&1; then :; \
	 elif $(PYTHON) -m uv --version >/dev/null 2>&1; then :; \
	 else echo "installing uv with pip"; $(PYTHON) -m pip install --quiet uv || $(PYTHON) -m pip install --quiet --user uv; fi
	@if command -v uv >/dev/null 2>&1; then UV=uv; else UV="$(PYTHON) -m uv"; fi; \
	  $$UV sync --frozen --compile-bytecode --python $(PYTHON) --quiet
	@touch $@

# Debian's Chromium for the report's browser test (no browser download at run time), and
# exiftool, the field's reference reader of photo metadata, which the tests use as an oracle
browser:
	@command -v chromium >/dev/null 2>&1 && command -v exiftool >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium libimage-exiftool-perl >/dev/null) \
	  || echo "warning: could not install chromium and exiftool; the tests that need them will be skipped"; }

# Immich's own command line (npm; Node 22 from the npm package node@22), which the tests
# run against the Immich stand-in to show it speaks what the real client expects
immich-cli:
	@test -x .cache/immich-cli/node_modules/.bin/immich || { command -v npm >/dev/null 2>&1 && \
	  npm install --prefix .cache/immich-cli --no-save --no-audit --no-fund --loglevel=error node@22 @immich/cli@3 \
	  || echo "warning: could not install Immich's CLI; its tests will be skipped"; }

demo: setup
	$(VENV)/bin/photo-escape demo

test: setup browser immich-cli
	$(VENV)/bin/python -m pytest -q

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

bench: setup
	$(VENV)/bin/python bench/hashing.py

clean:
	rm -rf $(VENV) .photo-escape reports/out
