#!/usr/bin/env bash
# gemv8_bench.sh - builds bench/gemv8_bench.c against the library in $BUILD
# (default build/; `make` first) and runs it: the AVX2 and (where the CPU has
# it) AVX-512 one-token matvec kernels side by side on one thread.
#   bench/gemv8_bench.sh [rows cols]
set -euo pipefail
BUILD=${BUILD:-build}
[ -f "$BUILD/libvllm_metal.a" ] || { echo "gemv8_bench: no $BUILD/libvllm_metal.a (run make)" >&2; exit 1; }
mkdir -p "$BUILD/bench"
${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -Isrc -Iinclude bench/gemv8_bench.c "$BUILD/libvllm_metal.a" \
    $(pkg-config --libs jansson libpcre2-8 libmicrohttpd libcurl openblas 2>/dev/null) -lutf8proc -ljpeg -lpng16 -lwebp -lm -pthread \
    $(pkg-config --libs vulkan 2>/dev/null) -o "$BUILD/bench/gemv8_bench"
exec "$BUILD/bench/gemv8_bench" "$@"
