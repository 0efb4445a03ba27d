#!/usr/bin/env bash
# run_image_fuzz.sh [SECONDS] - fuzzes the image decoders under ASan/UBSan, from the repo root:
#   1. the Criterion mutation test (tests/c/test_vision.c vision/fuzz_decode) with 50000 inputs;
#   2. the libFuzzer target tests/fuzz/fuzz_image.c for SECONDS (default 60), if clang has it,
#      seeded with tests/data/tiny_vlm/images.
# Builds into ${BUILD:-/tmp/build-img-fuzz}; writes nothing into the tree.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${BUILD:-/tmp/build-img-fuzz}; mkdir -p "$B"
SRCS="src/vision/*.c src/model/*.c src/common/*.c src/loader/*.c"
SRCS="$SRCS $(ls src/backend/cpu/*.c | grep -v _avx2) src/backend/cpu/*_avx2.c"
LIBS="$(pkg-config --cflags --libs jansson libcurl) -ljpeg -lpng16 -lwebp -lm -pthread"
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -g -O1"
gcc -std=c11 -D_GNU_SOURCE $SAN -mavx2 -mfma -mf16c -Isrc -Iinclude -o "$B/test_vision" tests/c/test_vision.c $SRCS $LIBS -lcriterion
VM_FUZZ_ITERS=50000 UBSAN_OPTIONS=halt_on_error=1 "$B/test_vision" --jobs 1 --filter 'vision/fuzz*'
if echo 'int LLVMFuzzerTestOneInput(){return 0;}' | clang -fsanitize=fuzzer -x c - -o "$B/probe" 2>/dev/null; then
    # the decoders alone (no backend): src/vision/image*.c + common
    clang -std=c11 -D_GNU_SOURCE $SAN -fsanitize=fuzzer -Isrc -Iinclude -o "$B/fuzz_image" tests/fuzz/fuzz_image.c \
        src/vision/image.c src/vision/image_source.c src/common/*.c $LIBS
    mkdir -p "$B/corpus" && cp tests/data/tiny_vlm/images/* "$B/corpus/"
    UBSAN_OPTIONS=halt_on_error=1 "$B/fuzz_image" -max_total_time="${1:-60}" -max_len=65536 "$B/corpus"
else
    echo "clang with libFuzzer not found: skipped the libFuzzer run"
fi
