// prof.c - see prof.h.
#include "prof.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int vm_prof_level = -1;

static double sums[VM_PROF_COUNT];
static uint64_t n_steps, n_tokens, n_sampled;
static double t_first, t_last;

static const char *const names[VM_PROF_COUNT] = {
    "schedule", "pack batch", "forward (record)", "GPU submit+wait", "logits copy", "sampling",
    "output/detok", "step total",
};

int vm_prof_init(void) {
    const char *s = getenv("VLLM_METAL_PROFILE");
    vm_prof_level = s && *s && strcmp(s, "0") ? 1 : 0;
    return vm_prof_level;
}

double vm_prof_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void vm_prof_add(vm_prof_slot s, double seconds) { sums[s] += seconds; }

void vm_prof_step(double t_start, double t_end, int tokens, int sampled) {
    if (!n_steps) t_first = t_start;
    t_last = t_end;
    n_steps++;
    n_tokens += (uint64_t)tokens;
    n_sampled += (uint64_t)sampled;
}

void vm_prof_report(const char *who) {
    if (!n_steps) return;
    double k = 1e3 / (double)n_steps, parts = 0;
    fprintf(stderr, "%s profile: %llu steps, %.1f tokens and %.1f sampled rows per step; ms per step (total s):\n",
            who, (unsigned long long)n_steps, (double)n_tokens / (double)n_steps, (double)n_sampled / (double)n_steps);
    sums[VM_PROF_RECORD] -= sums[VM_PROF_WAIT] + sums[VM_PROF_COPY];  // it held the whole forward call
    for (int i = 0; i < VM_PROF_COUNT; i++) {
        fprintf(stderr, "  %-18s %8.3f  (%7.2f)\n", names[i], sums[i] * k, sums[i]);
        if (i != VM_PROF_STEP) parts += sums[i];
    }
    fprintf(stderr, "  %-18s %8.3f  (%7.2f)\n", "unaccounted", (sums[VM_PROF_STEP] - parts) * k, sums[VM_PROF_STEP] - parts);
    double wall = t_last - t_first;
    fprintf(stderr, "  %-18s %8.3f  (%7.2f)\n", "between steps", (wall - sums[VM_PROF_STEP]) * k, wall - sums[VM_PROF_STEP]);
    memset(sums, 0, sizeof sums);
    n_steps = n_tokens = n_sampled = 0;
}
