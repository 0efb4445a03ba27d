#!/usr/bin/env bash
# test_arm64.sh - cross-builds the library and every tests/c/test_*.c for
# arm64 (aarch64-linux-gnu-gcc against the sysroot of scripts/setup_arm64.sh)
# into $ARM64_BUILD, then runs each test binary under qemu-aarch64 twice:
#   -cpu max         has DotProd: the neon_dotprod kernels (SDOT)
#   -cpu cortex-a53  plain ARMv8.0: the neon kernels (SMULL/SADALP)
# Prints one closing line "N passed, N failed" over all (binary, cpu) runs.
#   ARM64_CPUS="max cortex-a53"   the qemu CPU models to run
#   ARM64_TESTS="test_kernels ..." only these binaries (default: all)
#   ARM64_SKIP="test_x ..."        binaries to build but not run (default:
#                                  test_engine_model, ~6 min per CPU model under
#                                  qemu, and test_vulkan: the cross build has no
#                                  Vulkan; ARM64_SKIP= runs them too)
#   ARM64_JOBS=N                   parallel compile jobs (default: nproc)
#   ARM64_MODEL=1                  also the default-model tests (slow: tens of minutes)
set -uo pipefail
CACHE="${VLLM_METAL_CACHE:-$HOME/.cache/vllm-metal}"
SYSROOT="${ARM64_SYSROOT:-$CACHE/arm64-sysroot}"
BUILD="${ARM64_BUILD:-build-arm64}"
CROSS="${ARM64_CC:-aarch64-linux-gnu-gcc}"
QEMU="${ARM64_QEMU:-qemu-aarch64}"
CPUS="${ARM64_CPUS:-max cortex-a53}"
JOBS="${ARM64_JOBS:-$(nproc)}"
LIBDIRS="$SYSROOT/usr/lib/aarch64-linux-gnu:$SYSROOT/lib/aarch64-linux-gnu"
for tool in "$CROSS" "$QEMU"; do
    command -v "$tool" >/dev/null || { echo "test_arm64: $tool not found (scripts/setup_arm64.sh deps)" >&2; exit 1; }
done
[ -d "$SYSROOT/usr/include" ] || { echo "test_arm64: no sysroot in $SYSROOT (scripts/setup_arm64.sh sysroot)" >&2; exit 1; }

# The project's own Makefile, pointed at the cross compiler: pkg-config reads
# the sysroot's .pc files; CFLAGS and LDLIBS from the environment come first
# and the Makefile appends its own (and no x86 instruction-set flags for an
# arm64 compiler: the x86 kernel files compile to nothing there).
t0=$(date +%s)
env -u PKG_CONFIG_PATH \
    PKG_CONFIG_LIBDIR="$SYSROOT/usr/lib/aarch64-linux-gnu/pkgconfig:$SYSROOT/usr/share/pkgconfig" \
    PKG_CONFIG_SYSROOT_DIR="$SYSROOT" \
    CFLAGS="${ARM64_CFLAGS:--O2 -g} -isystem $SYSROOT/usr/include -isystem $SYSROOT/usr/include/aarch64-linux-gnu" \
    LDLIBS="-L$SYSROOT/usr/lib/aarch64-linux-gnu -L$SYSROOT/lib/aarch64-linux-gnu -Wl,-rpath-link,$LIBDIRS" \
    make -s --no-print-directory -j"$JOBS" BUILD="$BUILD" CC="$CROSS" tests || exit 1
SHIM="$PWD/$BUILD/arm64_exec_shim.so"
"$CROSS" -O2 -Wall -Wextra -shared -fPIC -o "$SHIM" scripts/arm64_exec_shim.c || exit 1
echo "test_arm64: built in $(( $(date +%s) - t0 ))s"

# The default model's tests (SmolLM2 against llama.cpp, engine batch
# invariance on it) take far too long under emulation: they skip unless
# ARM64_MODEL=1. The tiny models of tests/data run the same decoder and kernels.
if [ "${ARM64_MODEL:-0}" = 1 ]; then
    export VLLM_METAL_TEST_MODEL="${VLLM_METAL_TEST_MODEL:-$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf}"
else
    export VLLM_METAL_TEST_MODEL=/nonexistent/default-model-skipped-under-qemu
fi
# qemu finds the arm64 loader and libc in QEMU_LD_PREFIX, the guest's ld.so
# the other libraries in LD_LIBRARY_PATH. Criterion re-executes the test
# binary for every test: the shim (scripts/arm64_exec_shim.c) runs those
# children under qemu as well, with the same QEMU_* settings.
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
export QEMU_SET_ENV="LD_PRELOAD=$SHIM,LD_LIBRARY_PATH=$LIBDIRS"
export VM_ARM64_QEMU="$(command -v "$QEMU")"
pass=0; fail=0; failed=""
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    if [ -n "${ARM64_TESTS:-}" ]; then case " $ARM64_TESTS " in *" $name "*) ;; *) continue ;; esac; fi
    case " ${ARM64_SKIP-test_engine_model test_vulkan} " in *" $name "*) echo "== $t: skipped (ARM64_SKIP)"; continue ;; esac
    for cpu in $CPUS; do
        echo "== $t (qemu -cpu $cpu)"
        s=$(date +%s)
        if QEMU_CPU="$cpu" "$QEMU" "$t" --jobs 1; then
            pass=$((pass+1)); r=ok
        else
            fail=$((fail+1)); failed="$failed $name@$cpu"; r=FAILED
        fi
        echo "-- $name (qemu -cpu $cpu): $r in $(( $(date +%s) - s ))s"
    done
done
echo "arm64 test binaries ($CPUS): $pass passed, $fail failed${failed:+ ($failed)} in $(( $(date +%s) - t0 ))s"
[ $fail -eq 0 ]
