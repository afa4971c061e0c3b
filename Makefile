# vaekit: `make demo` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test docs fuzz bench bench-quick gpu-check device-bundle bare-check lint setup clean

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

# .device/ (ignored by git) for a GPU machine with no package index: wheels of vaekit and of what it needs beyond
# such a machine's packages (diffusers, importlib-metadata, zipp; the versions tested here), and run.sh, which
# installs them into a temporary folder and runs gpu-check with a deadline (docs/guides/gpu.md)
DEVICE_WHEELS := diffusers importlib-metadata zipp
device-bundle: $(STAMP)
	rm -rf .device && mkdir -p .device/wheels
	$(BIN)/pip wheel -q --no-deps -w .device/wheels .
	$(BIN)/pip download -q --no-deps --only-binary=:all: -d .device/wheels \
		$$($(BIN)/python -c "import importlib.metadata as m, sys; print(*(f'{d}=={m.version(d)}' for d in sys.argv[1:]))" $(DEVICE_WHEELS))
	cp device/run.sh .device/run.sh
	@ls -1 .device/wheels
	@echo "device bundle: $$(du -sh .device | cut -f1) in .device/ (on the GPU machine: bash .device/run.sh)"

# the bundle's run on this CPU as a bare GPU machine sees it: a fresh venv of the CPU torch and that machine's
# packages only (tests/test_device_bundle.py; slow: it makes the venv)
bare-check: device-bundle
	VAEKIT_BARE=1 $(BIN)/python -m pytest -q tests/test_device_bundle.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) demo-out .pytest_cache site .device
