# make lab | make test | make run    (each one installs what it needs into .venv first)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
BUILD := build
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))

# The lab's offline dataset copies sit beside the project; use them unless LABKIT_DATA_DIR is already set.
ifneq ($(wildcard ../shared/data),)
export LABKIT_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: install lab test unit notebooks run clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-embedded.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps -r requirements-embedded.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

lab: install
	$(BIN)/jupyter lab notebooks/

# The whole suite: labkit's unit tests and every notebook executed by nbmake, in quick mode.
test: install
	LABKIT_PROFILE=quick $(BIN)/python -m pytest -ra --durations=15 tests --nbmake --nbmake-timeout=1200 $(NOTEBOOKS)

unit: install
	LABKIT_PROFILE=quick $(BIN)/python -m pytest -ra tests

# Execute every notebook headless (quick mode) into build/, with an HTML rendering of each.
run: install
	mkdir -p $(BUILD)
	for nb in $(NOTEBOOKS); do \
	  LABKIT_PROFILE=$${LABKIT_PROFILE:-quick} $(BIN)/jupyter nbconvert --to notebook --execute \
	    --ExecutePreprocessor.timeout=1800 --output-dir $(BUILD) "$$nb" || exit 1; \
	  $(BIN)/jupyter nbconvert --to html --output-dir $(BUILD) "$(BUILD)/$$(basename $$nb)" || exit 1; \
	done
	@echo "Executed notebooks and HTML in $(BUILD)/"

clean:
	rm -rf $(BUILD) .pytest_cache
