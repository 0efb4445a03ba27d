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
# Passes on the Vulkan backend over lavapipe (a software GPU), when built and present.
lavapipe=
if [ -x "$BUILD/tests/test_vulkan" ] && [ -z "${SKIP_GPU_PASS:-}" ] &&
   ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then lavapipe=1; fi
# The engine tests again there (a narrowed set: one quantized and one f32 tiny
# model, 8-token blocks; batch invariance, preemption with a small pool, prefix caching).
if [ -n "$lavapipe" ]; then
    echo "== $BUILD/tests/test_engine_model on lavapipe"
    log=$(mktemp)
    VLLM_MLX_DEVICE=gpu VLLM_METAL_VULKAN_DEVICE=llvmpipe VLLM_METAL_TEST_MODEL=/nonexistent \
        VM_TEST_TINY="qwen3_mlx_q4g64" VM_TEST_BLOCK_SIZES="8" "$BUILD/tests/test_engine_model" --jobs 1 2>&1 |
        grep -v "no tokenizer" | tee "$log"
    # it must have run on the GPU backend, not fallen back to the CPU
    if [ "${PIPESTATUS[0]}" -eq 0 ] && grep -q "GPU backend on llvmpipe" "$log" && ! grep -q "using the CPU" "$log"; then
        pass=$((pass+1)); else fail=$((fail+1)); failed="$failed test_engine_model(lavapipe)"; fi
    rm -f "$log"
fi
# The default model's golden tests on lavapipe too (a decode step takes about
# 3 s there: the first 2 prompts, 4 greedy tokens each, teacher forcing over
# them), when the model file is present.
if [ -n "$lavapipe" ] && [ -r "$VLLM_METAL_TEST_MODEL" ]; then
    echo "== $BUILD/tests/test_smollm2_reference on lavapipe"
    if VLLM_METAL_TEST_BACKEND=vulkan VLLM_METAL_VULKAN_DEVICE=llvmpipe VM_TEST_PROMPTS=2 VM_TEST_GREEDY=4 \
        "$BUILD/tests/test_smollm2_reference" --jobs 1 --verbose; then
        pass=$((pass+1)); else fail=$((fail+1)); failed="$failed test_smollm2_reference(lavapipe)"; fi
fi
echo "C test binaries: $pass passed, $fail failed${failed:+ ($failed)}"
"$CACHE/venv/bin/python" -m pytest -q tests/py
py=$?
[ $fail -eq 0 ] && [ $py -eq 0 ]
