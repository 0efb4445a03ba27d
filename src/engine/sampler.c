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

// ---------------------------------------------------------------- argmax and the draw
//
// Written on 4-float vectors (GCC vector extensions: one SSE or NEON register),
// with no fused multiply-adds (ISO C mode): every lane computes the same
// roundings, so a row's result depends only on the row, never on the machine.

typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

static inline v4f v4_load(const float *p) { v4f v; memcpy(&v, p, sizeof v); return v; }
static inline void v4_store(float *p, v4f v) { memcpy(p, &v, sizeof v); }
static inline v4f v4_set1(float x) { return (v4f){ x, x, x, x }; }
static inline v4f v4_select(v4i m, v4f a, v4f b) { return (v4f)((m & (v4i)a) | (~m & (v4i)b)); }
static inline v4f v4_max(v4f a, v4f b) { return v4_select(a > b, a, b); } // NaN in a: b

// exp(x) for x <= 0 (Cephes' expf: round to n = x/ln2, two-part ln 2, degree-5
// polynomial, 2^n through the exponent bits); 0 below -87 and for NaN.
static inline v4f v4_exp_neg(v4f x) {
    v4i keep = x > v4_set1(-87.0f);
    x = v4_select(keep, x, v4_set1(-87.0f));
    const v4f magic = v4_set1(12582912.0f); // 1.5 * 2^23: adding it rounds to an integer
    v4f n = (x * v4_set1(1.44269504088896341f) + magic) - magic;
    v4f r = x - n * v4_set1(0.693359375f) - n * v4_set1(-2.12194440e-4f);
    v4f q = v4_set1(1.9875691500e-4f);
    q = q * r + v4_set1(1.3981999507e-3f);
    q = q * r + v4_set1(8.3334519073e-3f);
    q = q * r + v4_set1(4.1665795894e-2f);
    q = q * r + v4_set1(1.6666665459e-1f);
    q = q * r + v4_set1(5.0000001201e-1f);
    v4f e = q * (r * r) + r + v4_set1(1.0f);
    v4i ni = __builtin_convertvector(n, v4i);
    v4f two_n = (v4f)((ni + 127) << 23);
    return (v4f)(keep & (v4i)(e * two_n));
}

// The vector starting at x[i], padded with `pad` past n.
static inline v4f v4_load_tail(const float *x, int i, int n, float pad) {
    float t[4];
    for (int k = 0; k < 4; k++) t[k] = i + k < n ? x[i + k] : pad;
    return v4_load(t);
}

static float row_max(const float *x, int n) {
    v4f m = v4_set1(-INFINITY);
    int i = 0;
    for (; i + 4 <= n; i += 4) m = v4_max(v4_load(x + i), m);
    if (i < n) m = v4_max(v4_load_tail(x, i, n, -INFINITY), m);
    float mx = -INFINITY;
    for (int k = 0; k < 4; k++) if (m[k] > mx) mx = m[k];
    return mx;
}

#define DRAW_BLOCK 512

int32_t vm_draw_row(float *x, int n, float temperature, vm_rng *rng) {
    // probabilities exp(x/T - max) in place, summed per block of DRAW_BLOCK
    const v4f T = v4_set1(temperature);
    const float mx = row_max(x, n) / temperature; // = max of x/T (division is monotonic)
    const v4f m = v4_set1(mx == -INFINITY ? 0.0f : mx);
    int n_blocks = (n + DRAW_BLOCK - 1) / DRAW_BLOCK;
    double bsum_stack[1024], *bsum = n_blocks <= 1024 ? bsum_stack : malloc((size_t)n_blocks * sizeof *bsum);
    if (!bsum) return vm_argmax(x, n);
    double total = 0;
    for (int b = 0; b < n_blocks; b++) {
        int lo = b * DRAW_BLOCK, hi = VM_MIN(lo + DRAW_BLOCK, n), i = lo;
        v4f acc = v4_set1(0.0f);
        if (temperature == 1.0f)
            for (; i + 4 <= hi; i += 4) {
                v4f e = v4_exp_neg(v4_load(x + i) - m);
                v4_store(x + i, e);
                acc += e;
            }
        else
            for (; i + 4 <= hi; i += 4) {
                v4f e = v4_exp_neg(v4_load(x + i) / T - m);
                v4_store(x + i, e);
                acc += e;
            }
        if (i < hi) {
            v4f e = v4_exp_neg(v4_load_tail(x, i, hi, -INFINITY) / T - m);
            for (int k = 0; i + k < hi; k++) x[i + k] = e[k];
            acc += e;
        }
        double s = 0;
        for (int k = 0; k < 4; k++) s += acc[k];
        bsum[b] = s;
        total += s;
    }
    // inverse CDF with the request's own generator: the block, then the token in it
    double u = vm_rng_uniform(rng) * total, cum = 0;
    int32_t pick = -1;
    int last = n_blocks - 1;
    while (last > 0 && !(bsum[last] > 0)) last--;
    for (int b = 0; b <= last && pick < 0; b++) {
        if (!(bsum[b] > 0)) continue;
        int lo = b * DRAW_BLOCK, hi = VM_MIN(lo + DRAW_BLOCK, n);
        if (!(u < cum + bsum[b]) && b < last) { cum += bsum[b]; continue; }
        // in this block (or, by rounding, past the end of the last one)
        double in = cum;
        for (int t = lo; t < hi; t++) {
            if (x[t] == 0.0f) continue;
            in += x[t];
            pick = t;
            if (u < in) break;
        }
    }
    if (bsum != bsum_stack) free(bsum);
    return pick >= 0 ? pick : 0;
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
