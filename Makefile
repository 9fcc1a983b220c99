# fdpipe: every target sets itself up; `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo nightly test browser lint typecheck format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/fdpipe demo --output out/demo

# An example scheduled job: nightly.toml on the bundled photos; rerun it and only what changed
# is explained (exit 1: some images failed, 3: the input is empty or missing).
nightly: setup
	$(BIN)/python -c "from pathlib import Path; from fdpipe.demo import write_photos; write_photos(Path('out/nightly/images'))"
	$(BIN)/fdpipe --quiet --config nightly.toml explain
	@echo "run record: out/nightly/last-run.json"

test: setup
	-@$(MAKE) --no-print-directory browser
	$(BIN)/ruff check .
	@$(MAKE) --no-print-directory typecheck
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# Debian's Chromium and its driver for the report's browser test (which skips without them).
# `make test` tries it and goes on where it cannot install (not root, no apt-get, no registry).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		chromium --version 2>/dev/null; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null && chromium --version 2>/dev/null; \
	else \
		echo "make browser: installing chromium needs root and apt-get (Debian);" \
			"the browser test will be skipped"; \
		exit 1; \
	fi

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@$(MAKE) --no-print-directory typecheck

# mypy reads the import package `fdpipe` through a tree of links (the editable install maps it to
# three folders with an import hook that static tools cannot see).
typecheck: setup
	@rm -rf build/typecheck && mkdir -p build/typecheck/fdpipe
	@ln -s $(CURDIR)/pipeline/* build/typecheck/fdpipe/
	@ln -s $(CURDIR)/export $(CURDIR)/kernels build/typecheck/fdpipe/
	$(BIN)/python -m mypy

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/fdpipe bench --output bench-results

clean:
	rm -rf out bench-results build .pytest_cache .ruff_cache .mypy_cache
