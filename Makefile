# Every target sets itself up from nothing: a venv in the checkout.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Exactly these versions, each file checked against its sha256: see the lock's header.
LOCK   := requirements.lock

.PHONY: setup demo test bench validate sample-fcs lint clean lock

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

setup: $(STAMP)

## lock: re-resolve requirements.lock from pyproject.toml, keeping its versions where they still fit
## (UPGRADE=1: the newest that fit); then `make setup` installs it
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "uv>=0.5,<1"
	touch $(LOCK)
	cp $(LOCK) $(LOCK).tmp
	printf 'pip\nsetuptools>=77\n' | $(VENV)/bin/uv pip compile --quiet pyproject.toml - --extra test \
		--generate-hashes --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
		--no-header $(if $(UPGRADE),--upgrade,) -o $(LOCK).tmp
	{ printf '%s\n' "# cytopipe's dependencies and its [test] extra, plus pip and setuptools (to build" \
		"# cytopipe itself), resolved for CPython 3.11 on Linux x86_64 (manylinux), each with" \
		"# the sha256 of its files. Written by 'make lock' (uv pip compile); 'make setup'" \
		"# installs exactly this: pip install --require-hashes --no-deps -r $(LOCK)."; \
		cat $(LOCK).tmp; } > $(LOCK)
	rm -f $(LOCK).tmp

## demo: gate sample_fcs/ with the default strategy into demo_out/
demo: setup
	$(VENV)/bin/cytopipe run sample_fcs/samples.csv --out demo_out
	@echo "Results: demo_out/treg_by_visit.csv (and .parquet), demo_out/populations.parquet, demo_out/run.json; review report: demo_out/report/index.html"

## test: the whole suite, slow tests included
test: setup
	sh scripts/ensure_chromium.sh
	$(PY) -m pytest -q

## bench: speed ratios measured in one run (QUICK=1 for a smoke run)
bench: setup
	$(PY) benchmarks/bench_gating.py $(if $(QUICK),--quick,)
	$(PY) benchmarks/bench_whole.py $(if $(QUICK),--quick,)
	$(PY) benchmarks/bench_station.py $(if $(QUICK),--quick,)

## validate: the default and the surface strategy (a draft, measured here before release) over 20 random worlds of every kind; exit 1 if a target is missed
validate: setup
	$(PY) benchmarks/validate.py --allow-draft $(if $(STRATEGY),--strategy $(STRATEGY),)

## sample-fcs: regenerate sample_fcs/ byte for byte from its fixed seed
sample-fcs: setup
	rm -f sample_fcs/*.fcs
	$(VENV)/bin/cytopipe synth sample_fcs --patients 3 --events 20000 --seed 2026

## lint: pyflakes checks and line length (ruff)
lint: setup
	$(VENV)/bin/ruff check cytopipe tests benchmarks
	$(VENV)/bin/mypy  # the public API's modules: [tool.mypy] in pyproject.toml

clean:
	rm -rf demo_out .pytest_cache
