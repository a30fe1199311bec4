# make lab | make test | make run    (each one installs what it needs into .venv first)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
BUILD := build
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.d/labkit.json
# the lessons, then their exercise solutions (both executed by `make test` and `make run`)
LESSONS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
SOLUTIONS := $(sort $(wildcard notebooks/solutions/*.ipynb))
NOTEBOOKS := $(LESSONS) $(SOLUTIONS)

# The lab's offline dataset copies sit beside the project; use them unless LABKIT_DATA_DIR is already set.
ifneq ($(wildcard ../shared/data),)
export LABKIT_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: install chromium lab test unit notebooks run clean

install: $(VENV)/.installed $(LAB_SETTINGS)

$(VENV)/.installed: requirements.txt requirements-embedded.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps -r requirements-embedded.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

# The lab's JupyterLab settings (widget state saved with the notebook, so a reopened notebook still draws its widgets).
$(LAB_SETTINGS): etc/jupyterlab/overrides.d/labkit.json $(VENV)/.installed
	mkdir -p $(dir $@)
	cp $< $@

# The browser test drives Debian's Chromium (Playwright's own browser download needs a network CI lacks).
# Installed when missing and when we may (root, apt); otherwise the browser test says why it skips.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
	      || echo "apt-get could not install chromium: the browser test will skip"; \
	  else echo "no Chromium and cannot install it (needs root and apt-get): the browser test will skip"; fi; }

lab: install
	$(BIN)/jupyter lab notebooks/

# The whole suite: labkit's unit tests and every notebook in quick mode, executed by nbmake, or in JupyterLab in
# headless Chromium for the notebooks with figures or widgets (tests/browser; each notebook runs once).
test: install chromium
	LABKIT_PROFILE=quick $(BIN)/python -m pytest -ra --durations=15 tests --nbmake --nbmake-timeout=1200 $(NOTEBOOKS)

unit: install
	LABKIT_PROFILE=quick $(BIN)/python -m pytest -ra tests

# Execute every notebook headless (quick mode) into build/ (solutions into build/solutions/), with an HTML rendering
# of each and build/index.html linking them. Plotly figures load plotly.js from its CDN, so each HTML stays small.
run: install
	mkdir -p $(BUILD)/solutions
	for nb in $(NOTEBOOKS); do \
	  out=$(BUILD)/$$(dirname $${nb#notebooks/}); \
	  PLOTLY_RENDERER=$${PLOTLY_RENDERER:-plotly_mimetype+notebook_connected} LABKIT_PROFILE=$${LABKIT_PROFILE:-quick} \
	    $(BIN)/jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=1800 --output-dir $$out "$$nb" || exit 1; \
	  $(BIN)/jupyter nbconvert --to html --output-dir $$out "$$out/$$(basename $$nb)" || exit 1; \
	done
	{ echo '<!doctype html><meta charset="utf-8"><title>QAT + FlashAttention-2 lab</title>'; \
	  echo "<h1>Executed notebooks ($${LABKIT_PROFILE:-quick} profile)</h1><ul>"; \
	  for nb in $(NOTEBOOKS); do h=$${nb#notebooks/}; echo "<li><a href=\"$${h%.ipynb}.html\">$${h%.ipynb}</a></li>"; done; \
	  echo '</ul>'; } > $(BUILD)/index.html
	@echo "Executed notebooks and HTML in $(BUILD)/ (open $(BUILD)/index.html)"

clean:
	rm -rf $(BUILD) .pytest_cache
