# mk/bench.mk - `make bench`: vllm-metal against llama.cpp (llama-cpp-python,
# llama-server) and mlx-lm on this machine, same model file and threads; one
# table, appended to bench/RESULTS.md; then, on a machine with a CUDA GPU and
# torch, the GPU table (bench/gpu_bench.sh). Not part of `make test`. A few minutes
# (longer the first time: peers from PyPI, llama-server build, MLX conversion).
#   make bench [BENCH_THREADS=N] [BENCH_ARGS="--quick ..."]
# Builds its own copy of the library/CLI in $(BENCH_BUILD), never in ./build.
BENCH_BUILD ?= /tmp/build-bench
BENCH_VENV = $(CACHE)/venv-bench
BENCH_THREADS ?= $(shell nproc)
BENCH_ARGS ?=

$(BENCH_BUILD)/bench/membw: bench/membw.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -pthread -o $@ $<

bench: $(BENCH_BUILD)/bench/membw
	$(MAKE) BUILD=$(BENCH_BUILD) all
	@[ -f $(MODEL) ] || scripts/setup.sh model
	bench/setup_bench_venv.sh $(MODEL)
	bench/build_llama_server.sh || echo "bench: llama-server build failed; its rows are skipped"
	$(BENCH_VENV)/bin/python bench/make_mlx_model.py
	$(BENCH_VENV)/bin/python bench/bench.py --bin $(BENCH_BUILD)/vllm-metal \
	    --membw $(BENCH_BUILD)/bench/membw --model $(MODEL) --threads $(BENCH_THREADS) $(BENCH_ARGS)
	@# GPU rows: where python3 has torch with a CUDA device (the transformers peer), the
	@# GPU table of bench/gpu_bench.sh (append it to bench/RESULTS.md by hand: one card, one run)
	@if python3 -c "import torch, transformers, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then \
	    BIN=$(BENCH_BUILD) BUILD=$(BENCH_BUILD) bash bench/gpu_bench.sh; \
	else echo "bench: no CUDA GPU with torch and transformers here: GPU rows skipped (bench/gpu_bench.sh on a GPU machine)"; fi

.PHONY: bench
