#!/usr/bin/env bash
# run_tests.sh - runs every C test binary, then pytest over tests/py.
# Prints one closing line "N passed, N failed" for the C binaries; pytest prints its own.
set -uo pipefail
BUILD=${BUILD:-build}
CACHE="${VLLM_METAL_CACHE:-$HOME/.cache/vllm-metal}"
export VLLM_METAL_TEST_MODEL="${VLLM_METAL_TEST_MODEL:-$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf}"
export VLLM_METAL_BIN="$PWD/$BUILD/vllm-metal" VLLM_METAL_LIB="$PWD/$BUILD/libvllm_metal.so"
pass=0; fail=0; failed=""
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    echo "== $t"
    if "$t" --jobs 1; then pass=$((pass+1)); else fail=$((fail+1)); failed="$failed $t"; fi
done
echo "C test binaries: $pass passed, $fail failed${failed:+ ($failed)}"
"$CACHE/venv/bin/python" -m pytest -q tests/py
py=$?
[ $fail -eq 0 ] && [ $py -eq 0 ]
