// session.h - one sequence run straight through the paged forward pass: the
// simplest way to get logits for a prompt and then one token at a time.
// (The engine in src/engine runs many sequences per step; this is for tests,
// the debugging CLI and the C API's single-sequence calls.)
#ifndef VM_SESSION_H
#define VM_SESSION_H

#include "model.h"

typedef struct vm_session vm_session;

// max_ctx: most tokens the sequence may hold; block_size: KV block size.
vm_session *vm_session_create(vm_model *m, int max_ctx, int block_size, vm_err *e);
void vm_session_free(vm_session *s);
// Forget the sequence (KV cache is reused).
void vm_session_reset(vm_session *s);
int vm_session_n_past(const vm_session *s);

// Appends n tokens and computes their K/V. logits: NULL, or [vocab] for the
// last token (all_logits = 0), or [n, vocab] for every token (all_logits = 1).
int vm_session_eval(vm_session *s, const int32_t *tokens, int n, int all_logits, float *logits, vm_err *e);
// The same, and *next = the argmax of the last token's logits (the first
// maximum, as vm_argmax), drawn on the backend: only the id crosses back, as
// in the engine's greedy steps.
int vm_session_eval_greedy(vm_session *s, const int32_t *tokens, int n, int32_t *next, vm_err *e);

#endif
