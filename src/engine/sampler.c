// sampler.c - vLLM's SamplingParams: validation with vLLM's ranges and messages,
// and the v1 sampler's order of operations on one row of raw logits:
//   allowed_token_ids -> bad_words -> min_tokens -> logit_bias   (logits processors)
//   -> repetition/frequency/presence penalties
//   -> greedy argmax (temperature 0), or: temperature -> min_p -> top_k -> top_p -> draw
// Logprobs are the log_softmax of the raw logits (vLLM's default "raw_logprobs").
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine_internal.h"

#define SAMPLING_EPS 1e-5f

void vm_sampling_params_init(vm_sampling_params *p) {
    memset(p, 0, sizeof *p);
    p->n = 1;
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->top_k = 0;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
    p->max_tokens = 16;
    p->logprobs = -1;
    p->prompt_logprobs = -1;
    p->skip_special_tokens = 1;
    p->detokenize = 1;
}

int vm_sampling_params_validate(const vm_sampling_params *p, int vocab, int max_logprobs, vm_err *e) {
    if (p->n < 1) return vm_errf(e, "n must be at least 1, got %d.", p->n);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        return vm_errf(e, "presence_penalty must be in [-2, 2], got %g.", p->presence_penalty);
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return vm_errf(e, "frequency_penalty must be in [-2, 2], got %g.", p->frequency_penalty);
    if (!(p->repetition_penalty > 0.0f))
        return vm_errf(e, "repetition_penalty must be greater than zero, got %g.", p->repetition_penalty);
    if (!(p->temperature >= 0.0f) || isinf(p->temperature))
        return vm_errf(e, "temperature must be non-negative, got %g.", p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return vm_errf(e, "top_p must be in (0, 1], got %g.", p->top_p);
    if (p->top_k < -1)
        return vm_errf(e, "top_k must be -1 (disable), or at least 1, got %d.", p->top_k);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return vm_errf(e, "min_p must be in [0, 1], got %g.", p->min_p);
    if (p->max_tokens != -1 && p->max_tokens < 1)
        return vm_errf(e, "max_tokens must be at least 1, got %d.", p->max_tokens);
    if (p->min_tokens < 0)
        return vm_errf(e, "min_tokens must be greater than or equal to 0, got %d.", p->min_tokens);
    if (p->max_tokens != -1 && p->min_tokens > p->max_tokens)
        return vm_errf(e, "min_tokens must be less than or equal to max_tokens=%d, got %d.",
                       p->max_tokens, p->min_tokens);
    if (p->logprobs < -1) return vm_errf(e, "logprobs must be non-negative, got %d.", p->logprobs);
    if (p->prompt_logprobs < -1)
        return vm_errf(e, "prompt_logprobs must be non-negative, got %d.", p->prompt_logprobs);
    if (max_logprobs >= 0 && p->logprobs > max_logprobs)
        return vm_errf(e, "Requested sample logprobs of %d, which is greater than max allowed: %d",
                       p->logprobs, max_logprobs);
    if (max_logprobs >= 0 && p->prompt_logprobs > max_logprobs)
        return vm_errf(e, "Requested prompt logprobs of %d, which is greater than max allowed: %d",
                       p->prompt_logprobs, max_logprobs);
    for (int i = 0; i < p->n_stop; i++)
        if (!p->stop[i] || !p->stop[i][0]) return vm_errf(e, "stop cannot contain an empty string.");
    if (p->n_stop > 0 && !p->detokenize)
        return vm_errf(e, "stop strings are only supported when detokenize is True. Set "
                          "detokenize=True to use stop.");
    if (p->allowed_token_ids && p->n_allowed_token_ids == 0)
        return vm_errf(e, "allowed_token_ids is not None and empty!");
    if (vocab > 0) {
        for (int i = 0; i < p->n_allowed_token_ids; i++)
            if (p->allowed_token_ids[i] < 0 || p->allowed_token_ids[i] >= vocab)
                return vm_errf(e, "allowed_token_ids contains out-of-vocab token id!");
        for (int i = 0; i < p->n_logit_bias; i++)
            if (p->logit_bias_ids[i] < 0 || p->logit_bias_ids[i] >= vocab)
                return vm_errf(e, "token_id(s) [%d] in logit_bias contain out-of-vocab token ids. "
                                  "Vocabulary size: %d", p->logit_bias_ids[i], vocab);
        for (int i = 0; i < p->n_stop_token_ids; i++)
            if (p->stop_token_ids[i] < 0 || p->stop_token_ids[i] >= vocab)
                return vm_errf(e, "stop_token_ids contains out-of-vocab token id %d (vocabulary "
                                  "size %d)", p->stop_token_ids[i], vocab);
    }
    return 0;
}

// ---------------------------------------------------------------- RNG (xoshiro256**)

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void vm_rng_seed(vm_rng *r, uint64_t seed) {
    uint64_t z = seed;
    for (int i = 0; i < 4; i++) { // splitmix64
        z += 0x9e3779b97f4a7c15ULL;
        uint64_t x = z;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
        r->s[i] = x ^ (x >> 31);
    }
}

static uint64_t rng_next(vm_rng *r) {
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = rotl(s[3], 45);
    return out;
}

double vm_rng_uniform(vm_rng *r) { return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }

// ---------------------------------------------------------------- logprobs

void vm_log_softmax(const float *row, int n, float *out) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) if (row[i] > mx) mx = row[i];
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)row[i] - mx);
    float lse = mx + (float)log(sum);
    for (int i = 0; i < n; i++) out[i] = row[i] - lse;
}

void vm_logprobs_fill(const float *lsm, int n, int32_t chosen, int k, vm_position_logprobs *out) {
    if (k > n) k = n;
    out->entries = malloc((size_t)(k + 1) * sizeof *out->entries);
    out->n = 0;
    if (!out->entries) return;
    // top-k by insertion (k is small): best[0] is the largest
    int32_t *best = k ? malloc((size_t)k * sizeof *best) : NULL;
    int nb = 0;
    for (int i = 0; i < n && k; i++) {
        if (nb == k && !(lsm[i] > lsm[best[nb - 1]])) continue;
        int j = nb < k ? nb++ : nb - 1;
        while (j > 0 && lsm[i] > lsm[best[j - 1]]) { best[j] = best[j - 1]; j--; }
        best[j] = i;
    }
    int rank = 1;
    for (int i = 0; i < n; i++) if (lsm[i] > lsm[chosen]) rank++;
    out->entries[out->n++] = (vm_logprob){ chosen, lsm[chosen], rank };
    for (int i = 0; i < nb; i++) out->entries[out->n++] = (vm_logprob){ best[i], lsm[best[i]], i + 1 };
    free(best);
}

// ---------------------------------------------------------------- the draw

// The request's generator gives the uniform; the draw itself (common/draw.c) is
// shared with the backends' sample op, so a row drawn there is the same token.
int32_t vm_draw_row(float *x, int n, float temperature, vm_rng *rng) {
    return vm_draw_u(x, n, temperature, vm_rng_uniform(rng));
}

// ---------------------------------------------------------------- processors

void vm_apply_penalties(float *logits, int vocab, const int32_t *prompt, int n_prompt,
                        const int32_t *out, int n_out, float presence, float frequency,
                        float repetition) {
    // counts of each token in the output; `seen` marks prompt or output
    int *count = calloc((size_t)vocab, sizeof *count);
    unsigned char *seen = calloc((size_t)vocab, 1);
    if (!count || !seen) { free(count); free(seen); return; }
    for (int i = 0; i < n_prompt; i++) if (prompt[i] >= 0 && prompt[i] < vocab) seen[prompt[i]] = 1;
    for (int i = 0; i < n_out; i++) if (out[i] >= 0 && out[i] < vocab) { seen[out[i]] = 1; count[out[i]]++; }
    for (int t = 0; t < vocab; t++) {
        float x = logits[t];
        if (repetition != 1.0f && seen[t]) x = x > 0 ? x / repetition : x * repetition;
        x -= frequency * (float)count[t];
        x -= presence * (float)(count[t] > 0);
        logits[t] = x;
    }
    free(count); free(seen);
}

void vm_apply_min_p(float *logits, int vocab, float min_p) {
    if (min_p <= 0) return;
    float mx = -INFINITY;
    for (int i = 0; i < vocab; i++) if (logits[i] > mx) mx = logits[i];
    // p_i < min_p * p_max  <=>  logit_i < logit_max + log(min_p)
    float thr = mx + logf(min_p);
    for (int i = 0; i < vocab; i++) if (logits[i] < thr) logits[i] = -INFINITY;
}

// Sorts idx[0..n) by logits descending without a global comparator context
// (qsort has none in C11): a simple merge sort.
static void sort_desc(const float *v, int *idx, int *tmp, int n) {
    for (int w = 1; w < n; w *= 2) {
        for (int lo = 0; lo < n; lo += 2 * w) {
            int mid = VM_MIN(lo + w, n), hi = VM_MIN(lo + 2 * w, n), i = lo, j = mid, k = lo;
            while (i < mid && j < hi) tmp[k++] = (v[idx[j]] > v[idx[i]]) ? idx[j++] : idx[i++];
            while (i < mid) tmp[k++] = idx[i++];
            while (j < hi) tmp[k++] = idx[j++];
        }
        memcpy(idx, tmp, (size_t)n * sizeof *idx);
    }
}

void vm_apply_top_k_top_p(float *logits, int vocab, int top_k, float top_p, int *idx) {
    bool use_k = top_k > 0 && top_k < vocab, use_p = top_p < 1.0f;
    if (!use_k && !use_p) return;
    int n = 0;
    for (int i = 0; i < vocab; i++) if (logits[i] != -INFINITY) idx[n++] = i;
    int *tmp = malloc((size_t)(n ? n : 1) * sizeof *tmp);
    if (!tmp) return;
    sort_desc(logits, idx, tmp, n);
    free(tmp);
    int keep = n;
    if (use_k && top_k < n) {
        float kth = logits[idx[top_k - 1]];
        keep = top_k;
        while (keep < n && logits[idx[keep]] == kth) keep++; // ties with the k-th stay
        for (int i = keep; i < n; i++) logits[idx[i]] = -INFINITY;
    }
    if (use_p && keep > 0) {
        // vLLM: ascending order, drop tokens while the cumulative probability <= 1 - p,
        // always keeping the most likely one.
        float mx = logits[idx[0]];
        double sum = 0;
        for (int i = 0; i < keep; i++) sum += exp((double)logits[idx[i]] - mx);
        double cum = 0;
        for (int i = keep - 1; i >= 1; i--) {
            cum += exp((double)logits[idx[i]] - mx) / sum;
            if (cum <= 1.0 - top_p) logits[idx[i]] = -INFINITY;
            else break;
        }
    }
}

bool vm_sample_is_plain(const vm_request *r, int vocab) {
    const vm_sampling_params *p = &r->sp;
    bool untouched = p->logprobs < 0 && p->n_allowed_token_ids == 0 && r->n_bad_words == 0 &&
                     r->n_tokens - r->n_prompt >= p->min_tokens && p->n_logit_bias == 0 &&
                     p->presence_penalty == 0 && p->frequency_penalty == 0 && p->repetition_penalty == 1.0f;
    return untouched && (p->temperature < SAMPLING_EPS ||
                         (p->min_p <= 0 && !(p->top_k > 0 && p->top_k < vocab) && !(p->top_p < 1.0f)));
}

void vm_sample_param_make(vm_request *r, vm_sample_param *q) {
    memset(q, 0, sizeof *q);
    if (r->sp.temperature < SAMPLING_EPS) return;
    q->temperature = r->sp.temperature;
    q->u = vm_rng_uniform(&r->rng);
    q->u32 = (float)q->u;
}

// Keep vm_sample_is_plain in step with what this does to the logits.
int32_t vm_sample_row(vm_sample_ctx *c, vm_request *r, float *logits) {
    const vm_sampling_params *p = &r->sp;
    int V = c->vocab_size;
    const int32_t *outs = r->tokens + r->n_prompt;
    int n_out = r->n_tokens - r->n_prompt;

    // allowed_token_ids
    if (p->n_allowed_token_ids > 0) {
        unsigned char *ok = calloc((size_t)V, 1);
        if (ok) {
            for (int i = 0; i < p->n_allowed_token_ids; i++) ok[r->allowed[i]] = 1;
            for (int t = 0; t < V; t++) if (!ok[t]) logits[t] = -INFINITY;
            free(ok);
        }
    }
    // bad_words: single-token words always; longer ones when the output ends with their prefix
    for (int w = 0; w < r->n_bad_words; w++) {
        const vm_token_seq *bw = &r->bad_words[w];
        if (bw->n <= 0) continue;
        int pre = bw->n - 1;
        if (pre > n_out) continue;
        if (pre && memcmp(outs + n_out - pre, bw->ids, (size_t)pre * sizeof(int32_t))) continue;
        int32_t t = bw->ids[bw->n - 1];
        if (t >= 0 && t < V) logits[t] = -INFINITY;
    }
    // min_tokens: hold back EOS and stop_token_ids
    if (n_out < p->min_tokens) {
        if (!p->ignore_eos)
            for (int i = 0; i < c->n_eos; i++)
                if (c->eos_ids[i] >= 0 && c->eos_ids[i] < V) logits[c->eos_ids[i]] = -INFINITY;
        for (int i = 0; i < p->n_stop_token_ids; i++) logits[r->stop_ids[i]] = -INFINITY;
    }
    // logit_bias
    for (int i = 0; i < p->n_logit_bias; i++) logits[r->bias_ids[i]] += r->bias_vals[i];
    // penalties
    if (p->presence_penalty != 0 || p->frequency_penalty != 0 || p->repetition_penalty != 1.0f)
        vm_apply_penalties(logits, V, r->tokens, r->n_prompt, outs, n_out, p->presence_penalty,
                           p->frequency_penalty, p->repetition_penalty);

    if (p->temperature < SAMPLING_EPS) return vm_argmax(logits, V); // greedy
    if (p->min_p <= 0 && !(p->top_k > 0 && p->top_k < V) && !(p->top_p < 1.0f))
        return vm_draw_row(logits, V, p->temperature, &r->rng); // temperature only: no sort, one pass fewer
    for (int t = 0; t < V; t++) logits[t] /= p->temperature;
    vm_apply_min_p(logits, V, p->min_p);
    vm_apply_top_k_top_p(logits, V, p->top_k, p->top_p, c->idx);
    return vm_draw_row(logits, V, 1.0f, &r->rng);
}
