// prof.h - VLLM_METAL_PROFILE=1: host time of the engine step's parts, summed
// over the steps of an engine and printed (per-step averages) when it is freed.
// Off, each probe costs one branch. Single-threaded use (the engine thread).
#ifndef VM_PROF_H
#define VM_PROF_H

#include <stdint.h>

typedef enum {
    VM_PROF_SCHED,    // inbox, aborts, scheduling
    VM_PROF_PACK,     // the flat batch: sequences, token ids, positions, slots, block tables
    VM_PROF_RECORD,   // the forward call (the report takes WAIT and COPY out of it: ops called / recorded)
    VM_PROF_WAIT,     // GPU: submit and wait for the step (inside the logits read)
    VM_PROF_COPY,     // logits from the device's staging memory into host memory
    VM_PROF_SAMPLE,   // logits processors, logprobs, the draw
    VM_PROF_OUTPUT,   // accept tokens, detokenize, stop checks, outputs to streams
    VM_PROF_STEP,     // the whole engine step
    VM_PROF_COUNT
} vm_prof_slot;

extern int vm_prof_level;   // -1: not read yet, 0: off, 1: on

int vm_prof_init(void);     // reads VLLM_METAL_PROFILE once; returns vm_prof_level
static inline int vm_prof_on(void) { return vm_prof_level > 0 || (vm_prof_level < 0 && vm_prof_init() > 0); }
double vm_prof_now(void);
void vm_prof_add(vm_prof_slot s, double seconds);
// Counts one step [t_start, t_end] with its rows (tokens in the batch, rows sampled).
void vm_prof_step(double t_start, double t_end, int n_tokens, int n_sampled);
// Prints the per-step averages to stderr and resets the sums (no-op when nothing was counted).
void vm_prof_report(const char *who);

#endif
