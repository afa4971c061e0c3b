# vaekit: `make demo` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test docs fuzz bench bench-quick gpu-check lint setup clean

setup: $(STAMP)

# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vaekit demo --out demo-out

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

# the docs site (mkdocs-material, docs/README.md) into site/; every warning is an error
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# the long profiles: 200 fuzzed cases (compile among the draws) and 24 fresh processes compared bit for bit
fuzz: $(STAMP)
	VAEKIT_FUZZ=long $(BIN)/python -m pytest -q tests/test_fuzz.py tests/test_determinism.py

bench: $(STAMP)
	$(BIN)/vaekit bench --model sd --out benchmarks/results
	$(BIN)/vaekit bench --model sana --out benchmarks/results
	$(BIN)/vaekit bench --compile --out benchmarks/results
	$(BIN)/vaekit bench --dist --out benchmarks/results

# issue 23's goals only (SD-VAE 1024² at 768 MiB and 64 MiB, Wan 2.1 9x240x416 at 256 MiB): under 10 minutes
bench-quick: $(STAMP)
	$(BIN)/vaekit bench --quick --out benchmarks/results

# on a machine with a CUDA GPU (and a CUDA build of torch: make gpu-check TORCH_SPEC=torch); says so and exits 0 without one
gpu-check: $(STAMP)
	$(BIN)/vaekit gpu-check --out benchmarks/results

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) demo-out .pytest_cache site
