# arm64.mk - `make test-arm64`: the library and every tests/c/test_*.c
# cross-compiled for arm64 (aarch64-linux-gnu-gcc) into build-arm64/ and run
# under qemu-aarch64 with -cpu max (DotProd: the neon_dotprod kernels) and
# -cpu cortex-a53 (ARMv8.0: the neon kernels), so every NEON path is tested on
# an x86-64 machine. Installs what it needs first (scripts/setup_arm64.sh: the
# cross compiler, qemu-user and an arm64 sysroot under ~/.cache/vllm-metal).
# Included by the Makefile (-include mk/arm64.mk).
#   make test-arm64 [ARM64_TESTS="test_kernels test_model_golden"] [ARM64_CPUS="max"]
ifndef VM_ARM64_MK
VM_ARM64_MK := 1

ARM64_BUILD ?= build-arm64
export ARM64_BUILD

test-arm64:
	scripts/setup_arm64.sh all
	scripts/test_arm64.sh

.PHONY: test-arm64
endif
