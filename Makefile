# Two commands on a fresh machine: `make chat` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The bench's other engines live apart from cpuinfer's own environment.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
LLAMA_CPP_PYTHON ?= llama-cpp-python==0.3.36
# On AMX hosts ggml built natively runs AMX tile code, which faulted in this project's VMs (ldtilecfg: general
# protection fault, every model, 2026-12-06): built without it there. `make bench LLAMA_NO_AMX=` keeps AMX.
NO_AMX_FLAGS := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_NO_AMX ?= $(if $(shell grep -m1 -o amx_tile /proc/cpuinfo 2>/dev/null),\
	-DCMAKE_C_FLAGS='$(NO_AMX_FLAGS)' -DCMAKE_CXX_FLAGS='$(NO_AMX_FLAGS)')
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
	CMAKE_ARGS="-DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF $(LLAMA_NO_AMX)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BENCH_VENV)/bin/python -m pip install --quiet '$(LLAMA_CPP_PYTHON)' \
		|| echo "llama-cpp-python could not be built: the bench will skip llama.cpp"
	if [ "$(BENCH_TORCH)" = 1 ]; then $(BENCH_VENV)/bin/python -m pip install --quiet torch==2.13.0 transformers \
		gguf accelerate || echo "torch/transformers not installed: the bench will skip them"; fi
	touch $(BENCH_STAMP)

# llama-server for bench/serve.py, built from the llama.cpp sources llama-cpp-python vendors (same version as the
# bench's llama.cpp), statically linked, without its web UI; optional like the rest.
LLAMA_SERVER_STAMP := $(BENCH_VENV)/.llama-server
LLAMA_SRC := $(BENCH_VENV)/src
$(LLAMA_SERVER_STAMP): $(BENCH_STAMP)
	rm -rf $(LLAMA_SRC) && mkdir -p $(LLAMA_SRC)
	( $(BENCH_VENV)/bin/python -m pip download --quiet --no-deps --no-binary :all: '$(LLAMA_CPP_PYTHON)' -d $(LLAMA_SRC) \
	  && tar xzf $(LLAMA_SRC)/llama_cpp_python-*.tar.gz -C $(LLAMA_SRC) \
	  && cmake -S $$(echo $(LLAMA_SRC)/llama_cpp_python-*/vendor/llama.cpp) -B $(LLAMA_SRC)/build \
	       -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
	       -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_BLAS=OFF $(LLAMA_NO_AMX) > /dev/null \
	  && cmake --build $(LLAMA_SRC)/build --target llama-server -j $$(nproc) > /dev/null \
	  && cp $(LLAMA_SRC)/build/bin/llama-server $(BENCH_VENV)/bin/ && rm -rf $(LLAMA_SRC) ) \
	|| echo "llama-server could not be built: bench/serve.py will skip llama.cpp"
	touch $@

bench: $(STAMP) $(BENCH_STAMP) $(LLAMA_SERVER_STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache build *.egg-info
