# Two commands do all set-up on a fresh machine:
#   make demo   run the whole DAG on the embedded simulated cohorts and build the report
#   make test   run the test suite: unit, lint, schema, dry-runs, and the .test/ scenarios end
#               to end (smoke: every rule of the DAG on tiny inputs; determinism; Slurm); ~15 min
# and one more for the full-size check:
#   make test-demo  the demo end to end with its assertions (~30 min on 2 cores); CI runs both
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.lock | cut -c1-12)
CORES ?= all

.PHONY: venv demo test test-demo test-fast test-unit lint clean-demo fidelity

venv: $(STAMP)

# The stamp names the lock's hash, so editing requirements.lock reinstalls. torch==2.13.0 in the
# lock resolves to the local CPU wheel on the project's machines (see README).
$(STAMP): requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==26.3"
	$(BIN)/pip install --quiet -r requirements.lock
	rm -f $(VENV)/.installed-*
	touch $@

demo: venv
	$(BIN)/snakemake --configfile config/demo.yaml --cores $(CORES)
	$(BIN)/snakemake --configfile config/demo.yaml --report results/report.html
	@echo "report: results/report.html"

# The fidelity record of a finished demo: docs/fidelity.md and results/fidelity.tsv (one row per
# scientific claim: the paper's number, our goal, the measured value, its 95% CI, a verdict).
fidelity: venv
	$(BIN)/python -m genbrain.fidelity --results results --out docs/fidelity.md

test: venv
	$(BIN)/python -m pytest -m "not demo"

# the embedded demo end to end (its own results in a temporary folder, not results/)
test-demo: venv
	$(BIN)/python -m pytest -m demo

# no workflow runs: unit tests, lint, schema and dry-runs
test-fast: venv
	$(BIN)/python -m pytest -m "not slow and not demo"

test-unit: venv
	$(BIN)/python -m pytest tests/unit

lint: venv
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/ruff check genbrain tests benchmarks workflow

clean-demo:
	rm -rf results logs .snakemake
