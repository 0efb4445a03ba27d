#!/usr/bin/env bash
# run_tokenizer_fuzz.sh [SECONDS] - fuzzes the tokenizer under ASan/UBSan, from the repo root:
#   1. the Criterion random-input test (tests/c/test_tokenizer.c) with 20000 inputs a family;
#   2. the libFuzzer target tests/fuzz/fuzz_tokenizer.c for SECONDS (default 60), if clang has it.
# Builds into ${BUILD:-/tmp/build-tok-fuzz}; writes nothing into the tree.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${BUILD:-/tmp/build-tok-fuzz}; mkdir -p "$B"
SRCS="src/tokenizer/tokenizer*.c src/common/*.c src/loader/*.c"
LIBS="$(pkg-config --cflags --libs jansson libpcre2-8) -lutf8proc -lm -pthread"
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -g -O1"
gcc -std=c11 -D_GNU_SOURCE $SAN -Isrc -Iinclude -o "$B/test_tokenizer" tests/c/test_tokenizer.c $SRCS $LIBS -lcriterion
VM_FUZZ_ITERS=20000 UBSAN_OPTIONS=halt_on_error=1 "$B/test_tokenizer" --jobs 1 --filter 'tokenizer/fuzz*'
if clang -fsanitize=fuzzer -x c /dev/null -o /dev/null 2>/dev/null || echo 'int LLVMFuzzerTestOneInput(){return 0;}' | clang -fsanitize=fuzzer -x c - -o "$B/probe" 2>/dev/null; then
    clang -std=c11 -D_GNU_SOURCE $SAN -fsanitize=fuzzer -Isrc -Iinclude -o "$B/fuzz_tokenizer" tests/fuzz/fuzz_tokenizer.c $SRCS $LIBS
    mkdir -p "$B/corpus"
    UBSAN_OPTIONS=halt_on_error=1 "$B/fuzz_tokenizer" -max_total_time="${1:-60}" -max_len=2048 "$B/corpus"
else
    echo "clang with libFuzzer not found: skipped the libFuzzer run"
fi
