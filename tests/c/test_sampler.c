// test_sampler.c - every sampling parameter against its definition, and
// vLLM's validation ranges and messages.
#include <criterion/criterion.h>
#include <math.h>

#include "engine/engine_internal.h"

#define V 50

static void random_logits(float *x, int n, uint64_t seed) {
    vm_rng r; vm_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) x[i] = (float)(vm_rng_uniform(&r) * 10.0 - 5.0);
}

typedef struct { vm_request r; int32_t toks[64]; int32_t eos; vm_sample_ctx c; int idx[V]; } fixture;

static void fx_init(fixture *f, const vm_sampling_params *p, int n_prompt, int n_out) {
    memset(f, 0, sizeof *f);
    f->r.sp = *p;
    f->r.tokens = f->toks;
    for (int i = 0; i < n_prompt + n_out; i++) f->toks[i] = (i * 7 + 3) % V;
    f->r.n_prompt = n_prompt; f->r.n_tokens = n_prompt + n_out;
    f->r.stop_ids = (int32_t *)p->stop_token_ids;
    f->r.bias_ids = (int32_t *)p->logit_bias_ids; f->r.bias_vals = (float *)p->logit_bias_values;
    f->r.allowed = (int32_t *)p->allowed_token_ids;
    vm_rng_seed(&f->r.rng, p->seed);
    f->eos = 0;
    f->c = (vm_sample_ctx){ .vocab_size = V, .eos_ids = &f->eos, .n_eos = 1, .idx = f->idx };
}

static int argmax(const float *x, int n) { int b = 0; for (int i = 1; i < n; i++) if (x[i] > x[b]) b = i; return b; }

static int32_t sample(const vm_sampling_params *p, const float *logits, int n_out) {
    fixture f; fx_init(&f, p, 10, n_out);
    float x[V]; memcpy(x, logits, sizeof x);
    return vm_sample_row(&f.c, &f.r, x);
}

Test(sampler, greedy_is_argmax) {
    vm_sampling_params p; vm_sampling_params_init(&p); p.temperature = 0;
    for (uint64_t s = 0; s < 50; s++) {
        float x[V]; random_logits(x, V, s);
        cr_assert_eq(sample(&p, x, 0), argmax(x, V));
    }
}

Test(sampler, top_k_1_equals_greedy) {
    vm_sampling_params p; vm_sampling_params_init(&p); p.temperature = 1.3f; p.top_k = 1; p.has_seed = 1;
    for (uint64_t s = 0; s < 50; s++) {
        float x[V]; random_logits(x, V, s);
        p.seed = s;
        cr_assert_eq(sample(&p, x, 0), argmax(x, V));
    }
}

Test(sampler, top_k_keeps_only_k_best) {
    float x[V]; random_logits(x, V, 3);
    float y[V]; memcpy(y, x, sizeof y);
    int idx[V];
    vm_apply_top_k_top_p(y, V, 5, 1.0f, idx);
    int kept = 0;
    for (int i = 0; i < V; i++) if (y[i] != -INFINITY) {
        kept++;
        int greater = 0;
        for (int j = 0; j < V; j++) if (x[j] > x[i]) greater++;
        cr_assert_lt(greater, 5);
    }
    cr_assert_eq(kept, 5);
}

Test(sampler, top_p_keeps_smallest_nucleus) {
    float x[V]; random_logits(x, V, 4);
    float y[V]; memcpy(y, x, sizeof y);
    int idx[V];
    float top_p = 0.7f;
    vm_apply_top_k_top_p(y, V, 0, top_p, idx);
    // reference: probabilities sorted descending, keep while the mass before a token < top_p
    double pr[V], mx = x[argmax(x, V)], sum = 0;
    for (int i = 0; i < V; i++) { pr[i] = exp(x[i] - mx); sum += pr[i]; }
    for (int i = 0; i < V; i++) {
        double above = 0;
        for (int j = 0; j < V; j++) if (x[j] > x[i]) above += pr[j] / sum;
        // vLLM drops a token when the mass at or below it is <= 1 - p
        double at_or_below = 1.0 - above;
        bool keep = at_or_below > 1.0 - top_p + 1e-9 || above == 0;
        cr_assert_eq(y[i] != -INFINITY, keep, "token %d (above %.4f)", i, above);
    }
}

Test(sampler, min_p_threshold) {
    float x[V]; random_logits(x, V, 5);
    float y[V]; memcpy(y, x, sizeof y);
    vm_apply_min_p(y, V, 0.1f);
    double mx = x[argmax(x, V)];
    for (int i = 0; i < V; i++) {
        bool keep = exp(x[i] - mx) >= 0.1 - 1e-7;
        cr_assert_eq(y[i] != -INFINITY, keep);
    }
}

Test(sampler, logit_bias_minus_100_bans_token) {
    vm_sampling_params p; vm_sampling_params_init(&p); p.has_seed = 1;
    float x[V]; random_logits(x, V, 6);
    int32_t best = (int32_t)argmax(x, V);
    float bias = -100;
    p.logit_bias_ids = &best; p.logit_bias_values = &bias; p.n_logit_bias = 1;
    for (uint64_t s = 0; s < 200; s++) { p.seed = s; cr_assert_neq(sample(&p, x, 0), best); }
    p.temperature = 0;
    cr_assert_neq(sample(&p, x, 0), best);
    // +100 forces it
    int32_t t = 17; bias = 100;
    p.logit_bias_ids = &t; p.temperature = 1;
    for (uint64_t s = 0; s < 50; s++) { p.seed = s; cr_assert_eq(sample(&p, x, 0), 17); }
}

Test(sampler, allowed_token_ids_and_bad_words) {
    vm_sampling_params p; vm_sampling_params_init(&p); p.has_seed = 1;
    float x[V]; random_logits(x, V, 7);
    int32_t allowed[] = { 3, 9, 40 };
    p.allowed_token_ids = allowed; p.n_allowed_token_ids = 3;
    for (uint64_t s = 0; s < 100; s++) {
        p.seed = s;
        int32_t t = sample(&p, x, 0);
        cr_assert(t == 3 || t == 9 || t == 40);
    }
    // bad words: single token always banned; two-token word banned only after its prefix
    vm_sampling_params q; vm_sampling_params_init(&q); q.temperature = 0;
    fixture f; fx_init(&f, &q, 10, 2);
    int32_t best = (int32_t)argmax(x, V);
    int32_t w1[] = { best };
    vm_token_seq bw[1] = { { w1, 1 } };
    f.r.bad_words = bw; f.r.n_bad_words = 1;
    float y[V]; memcpy(y, x, sizeof y);
    cr_assert_neq(vm_sample_row(&f.c, &f.r, y), best);
    int32_t last = f.toks[11];
    int32_t w2[] = { last, best };
    bw[0] = (vm_token_seq){ w2, 2 };
    memcpy(y, x, sizeof y);
    cr_assert_neq(vm_sample_row(&f.c, &f.r, y), best);
    int32_t w3[] = { (last + 1) % V, best };
    bw[0] = (vm_token_seq){ w3, 2 };
    memcpy(y, x, sizeof y);
    cr_assert_eq(vm_sample_row(&f.c, &f.r, y), best);
}

Test(sampler, min_tokens_masks_eos_and_stop_ids) {
    vm_sampling_params p; vm_sampling_params_init(&p); p.temperature = 0;
    float x[V]; random_logits(x, V, 8);
    x[0] = 50; x[7] = 40; // EOS (0) then stop id 7 would win
    int32_t stop = 7;
    p.stop_token_ids = &stop; p.n_stop_token_ids = 1;
    p.min_tokens = 3;
    int32_t t = sample(&p, x, 1);
    cr_assert(t != 0 && t != 7);
    cr_assert_eq(sample(&p, x, 3), 0);
}

Test(sampler, penalties_match_reference) {
    float x[V]; random_logits(x, V, 9);
    int32_t prompt[] = { 1, 2, 3, 3 }, out[] = { 3, 4, 4, 5, 4 };
    float y[V]; memcpy(y, x, sizeof y);
    float pres = 0.5f, freq = 0.3f, rep = 1.2f;
    vm_apply_penalties(y, V, prompt, 4, out, 5, pres, freq, rep);
    for (int t = 0; t < V; t++) {
        int cnt = 0; bool seen = false;
        for (int i = 0; i < 5; i++) if (out[i] == t) { cnt++; seen = true; }
        for (int i = 0; i < 4; i++) if (prompt[i] == t) seen = true;
        float r = x[t];
        if (seen) r = r > 0 ? r / rep : r * rep;
        r -= freq * cnt;
        r -= pres * (cnt > 0);
        cr_assert_float_eq(y[t], r, 1e-6, "token %d", t);
    }
}

Test(sampler, seeded_draw_is_reproducible_and_distributed) {
    vm_sampling_params p; vm_sampling_params_init(&p); p.has_seed = 1; p.seed = 42;
    float x[V]; random_logits(x, V, 10);
    fixture a, b;
    fx_init(&a, &p, 10, 0); fx_init(&b, &p, 10, 0);
    int counts[V] = { 0 };
    for (int i = 0; i < 4000; i++) {
        float y[V], z[V]; memcpy(y, x, sizeof y); memcpy(z, x, sizeof z);
        int32_t s1 = vm_sample_row(&a.c, &a.r, y), s2 = vm_sample_row(&b.c, &b.r, z);
        cr_assert_eq(s1, s2);
        counts[s1]++;
    }
    // frequencies follow softmax (loose 5-sigma bound)
    double mx = x[argmax(x, V)], sum = 0, pr[V];
    for (int i = 0; i < V; i++) { pr[i] = exp(x[i] - mx); sum += pr[i]; }
    for (int i = 0; i < V; i++) {
        double ex = 4000 * pr[i] / sum, sd = sqrt(ex * (1 - pr[i] / sum)) + 1;
        cr_assert(fabs(counts[i] - ex) < 5 * sd, "token %d: %d vs %.1f", i, counts[i], ex);
    }
}

Test(sampler, logprobs_are_log_softmax_with_ranks) {
    float x[V]; random_logits(x, V, 11);
    float ls[V];
    vm_log_softmax(x, V, ls);
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp(ls[i]);
    cr_assert_float_eq(sum, 1.0, 1e-5);
    vm_position_logprobs lp;
    vm_logprobs_fill(ls, V, 13, 5, &lp);
    cr_assert_eq(lp.n, 6);
    cr_assert_eq(lp.entries[0].token_id, 13);
    int rank = 1;
    for (int i = 0; i < V; i++) if (x[i] > x[13]) rank++;
    cr_assert_eq(lp.entries[0].rank, rank);
    double s = 0;
    for (int j = 1; j < 6; j++) {
        cr_assert_eq(lp.entries[j].rank, j);
        cr_assert_float_eq(lp.entries[j].logprob, x[lp.entries[j].token_id] - (x[argmax(x, V)] - ls[argmax(x, V)]), 1e-5);
        s += exp(lp.entries[j].logprob);
    }
    cr_assert_eq(lp.entries[1].token_id, argmax(x, V));
    cr_assert_leq(s, 1.0);
    free(lp.entries);
}

static void expect_invalid(vm_sampling_params *p, const char *msg) {
    vm_err e = { "" };
    cr_assert_eq(vm_sampling_params_validate(p, V, 20, &e), -1, "accepted; expected: %s", msg);
    cr_assert_str_eq(e.msg, msg);
    vm_sampling_params_init(p);
}

Test(sampler, validation_messages) {
    vm_sampling_params p; vm_sampling_params_init(&p);
    vm_err e;
    cr_assert_eq(vm_sampling_params_validate(&p, V, 20, &e), 0);
    p.n = 0; expect_invalid(&p, "n must be at least 1, got 0.");
    p.presence_penalty = 2.5f; expect_invalid(&p, "presence_penalty must be in [-2, 2], got 2.5.");
    p.frequency_penalty = -3; expect_invalid(&p, "frequency_penalty must be in [-2, 2], got -3.");
    p.repetition_penalty = 0; expect_invalid(&p, "repetition_penalty must be greater than zero, got 0.");
    p.temperature = -1; expect_invalid(&p, "temperature must be non-negative, got -1.");
    p.top_p = 1.5f; expect_invalid(&p, "top_p must be in (0, 1], got 1.5.");
    p.top_k = -2; expect_invalid(&p, "top_k must be -1 (disable), or at least 1, got -2.");
    p.min_p = 2; expect_invalid(&p, "min_p must be in [0, 1], got 2.");
    p.max_tokens = 0; expect_invalid(&p, "max_tokens must be at least 1, got 0.");
    p.min_tokens = -1; expect_invalid(&p, "min_tokens must be greater than or equal to 0, got -1.");
    p.min_tokens = 20; expect_invalid(&p, "min_tokens must be less than or equal to max_tokens=16, got 20.");
    p.logprobs = 21; expect_invalid(&p, "Requested sample logprobs of 21, which is greater than max allowed: 20");
    p.prompt_logprobs = -5; expect_invalid(&p, "prompt_logprobs must be non-negative, got -5.");
    const char *stops[] = { "" }; p.stop = stops; p.n_stop = 1;
    expect_invalid(&p, "stop cannot contain an empty string.");
    int32_t none[1]; p.allowed_token_ids = none; p.n_allowed_token_ids = 0;
    expect_invalid(&p, "allowed_token_ids is not None and empty!");
    int32_t big = V; p.allowed_token_ids = &big; p.n_allowed_token_ids = 1;
    expect_invalid(&p, "allowed_token_ids contains out-of-vocab token id!");
    float b = 1; p.logit_bias_ids = &big; p.logit_bias_values = &b; p.n_logit_bias = 1;
    expect_invalid(&p, "token_id(s) [50] in logit_bias contain out-of-vocab token ids. Vocabulary size: 50");
    // accepted edge values
    p.top_k = -1; p.top_p = 1; p.min_p = 1; p.temperature = 0; p.presence_penalty = -2;
    cr_assert_eq(vm_sampling_params_validate(&p, V, 20, &e), 0, "%s", e.msg);
}

// The temperature-only draw (no sort) over a row of several blocks, with a
// length that is no multiple of the vector width: frequencies follow
// softmax(x / T), masked tokens never come, and the first maximum is greedy's.
Test(sampler, temperature_draw_over_blocks) {
    enum { N = 1283 };
    static float x[N], y[N];
    vm_rng g; vm_rng_seed(&g, 12);
    for (int i = 0; i < N; i++) x[i] = (float)(vm_rng_uniform(&g) * 6.0 - 3.0);
    for (int i = 0; i < N; i += 7) x[i] = -INFINITY;
    x[N - 1] = 4.0f; x[600] = 4.5f; x[5] = 4.5f;
    const float T = 0.7f;
    double pr[N], sum = 0;
    for (int i = 0; i < N; i++) { pr[i] = x[i] == -INFINITY ? 0 : exp((double)x[i] / T - 4.5 / T); sum += pr[i]; }
    static int counts[N];
    vm_rng r; vm_rng_seed(&r, 3);
    const int draws = 20000;
    for (int k = 0; k < draws; k++) {
        memcpy(y, x, sizeof y);
        int32_t t = vm_draw_row(y, N, T, &r);
        cr_assert(t >= 0 && t < N && x[t] != -INFINITY);
        counts[t]++;
    }
    for (int i = 0; i < N; i++) {
        double ex = draws * pr[i] / sum, sd = sqrt(ex * (1 - pr[i] / sum)) + 1;
        cr_assert(fabs(counts[i] - ex) < 5 * sd, "token %d: %d vs %.1f", i, counts[i], ex);
    }
    cr_assert_eq(vm_argmax(x, N), 5);
    // every token masked but one
    for (int i = 0; i < N; i++) y[i] = i == 999 ? -50.0f : -INFINITY;
    cr_assert_eq(vm_draw_row(y, N, 1.0f, &r), 999);
}
