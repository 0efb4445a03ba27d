#!/usr/bin/env bash
# gpu_decode.sh - single-sequence decode tokens/s of a model on a backend.
#   bench/gpu_decode.sh [model] [vulkan|cpu] [decode_tokens]
# Builds a tiny C driver against $BUILD/libvllm_metal.a (or runs a prebuilt
# one at $GPU_DECODE_BIN, built there if absent): prefills a 32-token prompt, then decodes greedily
# (each id drawn on the backend, so only it crosses back, as in the engine)
# and prints prefill and decode rates.
set -euo pipefail
BUILD=${BUILD:-build}
MODEL=${1:-$HOME/.cache/vllm-metal/SmolLM2-135M-Instruct.Q4_1.gguf}
BACKEND=${2:-vulkan}
N=${3:-256}
BIN=${GPU_DECODE_BIN:-$(mktemp -d)/gpu_decode}   # reused when it exists
if [ ! -x "$BIN" ]; then
    cat > "$BIN.c" <<'C'
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "backend/vulkan/vulkan_backend.h"
#include "model/session.h"
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: gpu_decode model vulkan|cpu n\n"); return 2; }
    vm_err e = {{0}};
    vm_backend *be = !strcmp(argv[2], "cpu") ? vm_backend_cpu_create(0, &e) : vm_backend_vulkan_create(NULL, &e);
    if (!be) { fprintf(stderr, "backend: %s\n", e.msg); return 1; }
    if (strcmp(argv[2], "cpu")) printf("device: %s\n", vm_backend_vulkan_device_name(be));
    double t0 = now();
    vm_model *m = vm_model_create(argv[1], be, 512, &e);
    if (!m) { fprintf(stderr, "model: %s\n", e.msg); return 1; }
    int n = atoi(argv[3]), np = 32;
    printf("load: %.2f s\n", now() - t0);
    vm_session *s = vm_session_create(m, np + n + 1, 16, &e);
    if (!s) { fprintf(stderr, "session: %s\n", e.msg); return 1; }
    int32_t prompt[32];
    for (int i = 0; i < np; i++) prompt[i] = 100 + 37 * i;
    for (int rep = 0; rep < 2; rep++) {   // first round warms up (pipelines, caches)
        vm_session_reset(s);
        double a = now();
        int32_t tok;   // greedy ids drawn on the backend, as the engine's steps do
        if (vm_session_eval_greedy(s, prompt, np, &tok, &e)) { fprintf(stderr, "%s\n", e.msg); return 1; }
        double b = now();
        int steps = rep ? n : 8;
        for (int i = 0; i < steps; i++)
            if (vm_session_eval_greedy(s, &tok, 1, &tok, &e)) { fprintf(stderr, "%s\n", e.msg); return 1; }
        double c = now();
        if (rep) printf("%s: prefill %d tokens %.1f ms (%.0f tok/s); decode %d tokens %.1f tok/s (%.2f ms/token)\n",
                        argv[2], np, (b - a) * 1e3, np / (b - a), steps, steps / (c - b), (c - b) * 1e3 / steps);
    }
    vm_session_free(s);
    vm_model_free(m);
    be->destroy(be);
    return 0;
}
C
    ${CC:-cc} -O2 -std=c11 -Isrc -o "$BIN" "$BIN.c" "$BUILD/libvllm_metal.a" \
        $(pkg-config --libs jansson libpcre2-8 libmicrohttpd libcurl vulkan openblas 2>/dev/null) -lutf8proc -lm -pthread
fi
"$BIN" "$MODEL" "$BACKEND" "$N"
