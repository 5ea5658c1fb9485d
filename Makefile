# make demo: install, then run the simulator + watchdog + page on 127.0.0.1
# make test: install (the venv, and the Debian tools the suite runs when missing), then run the whole suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pytest-xdist workers for `make test`: the suite mostly waits (real servers, 1 s probe rounds),
# so more workers than the 2 cores it was measured on pays (see README, Tests).
TEST_WORKERS ?= 3

.PHONY: install constraints debian-deps demo test lint bench bench-fleet clean screenshots

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' -c constraints.txt
	touch $(STAMP)

install: $(STAMP)

# Re-pin constraints.txt to the newest releases pyproject.toml allows; run make test before committing it.
constraints: $(STAMP)
	$(BIN)/pip install -q -U -e '.[dev]'
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --all --exclude-editable --exclude pip; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# apt-get as root; otherwise prints the command to run (skipped suites are named at the end).
debian-deps:
	scripts/install-debian-deps

demo: $(STAMP)
	$(BIN)/breakglass demo

test: $(STAMP) debian-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/detection.py
	$(BIN)/python bench/probe_cost.py
	$(BIN)/python bench/detection_paths.py
	$(BIN)/python bench/sse_fanout.py
	$(BIN)/python bench/loop_lag.py
	$(BIN)/python bench/agent_eval.py --fake tests/scenarios
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/webhook.py
	$(BIN)/python bench/metrics_render.py

# About 20 minutes: 100, 300 and 1000 targets for 3 minutes each, then detection at the
# shipped defaults beside the stock Prometheus path (3 trials of two faults, real time).
bench-fleet: $(STAMP)
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/detection_paths.py --defaults

clean:
	rm -rf $(VENV) build *.egg-info

# Refresh the README's screenshots (docs/screenshots/) from the browser test.
screenshots: $(STAMP)
	BREAKGLASS_SCREENSHOTS_DIR=docs/screenshots $(BIN)/pytest -q -p no:cacheprovider tests/test_browser.py -k fits
