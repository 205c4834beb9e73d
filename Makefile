# Two commands on a fresh machine: `make chat` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The bench's other engines live apart from cpuinfer's own environment.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
LLAMA_CPP_PYTHON ?= llama-cpp-python==0.3.36
# torch is opt-in (make bench BENCH_TORCH=1): without a local CPU wheel pip would fetch a multi-GB CUDA build.
BENCH_TORCH ?= 0

.PHONY: install chat test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

chat: $(STAMP)
	$(BIN)/cpuinfer chat

# pytest exits 5 when it collects nothing: treat that as a failure, not a pass.
test: $(STAMP)
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

# Each other engine is optional: one that cannot be installed is skipped by bench/compare.py.
$(BENCH_STAMP):
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet numpy matplotlib
	CMAKE_ARGS="-DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BENCH_VENV)/bin/python -m pip install --quiet '$(LLAMA_CPP_PYTHON)' \
		|| echo "llama-cpp-python could not be built: the bench will skip llama.cpp"
	if [ "$(BENCH_TORCH)" = 1 ]; then $(BENCH_VENV)/bin/python -m pip install --quiet torch==2.13.0 transformers \
		gguf accelerate || echo "torch/transformers not installed: the bench will skip them"; fi
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache build *.egg-info
