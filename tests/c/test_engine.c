// test_engine.c - the engine end to end over a fake model (see test_engine_fake.h):
// batch invariance, chunked prefill, prefix caching, preemption, abort,
// max_model_len, stop strings, min_tokens, seeds, logprobs, threads.
#include <criterion/criterion.h>
#include <pthread.h>

#include "test_engine_fake.h"
#include "engine/engine_internal.h"

static void make_prompt(int32_t *p, int n, int salt) {
    for (int i = 0; i < n; i++) p[i] = 1 + (int32_t)(fake_mix((uint64_t)salt * 1000003 + (uint64_t)i) % (FAKE_VOCAB - 1));
}

static void greedy_params(vm_sampling_params *p, int max_tokens) {
    vm_sampling_params_init(p);
    p->temperature = 0;
    p->max_tokens = max_tokens;
}

static void check_all_free(vm_engine *eng) {
    vm_engine_stats st;
    vm_engine_get_stats(eng, &st);
    cr_assert_eq(st.num_free_blocks, st.num_kv_blocks - 1, "free %d of %d", st.num_free_blocks, st.num_kv_blocks);
    cr_assert_eq(st.num_running, 0);
    cr_assert_eq(st.num_waiting, 0);
}

// 32 prompts of varied lengths together, small token budget, each block size:
// every greedy output equals the reference (= the output of the prompt alone).
static void batch_invariance(int block_size, int prefix_caching) {
    enum { N = 32, MAXT = 24 };
    vm_engine *eng = fake_engine(2048, block_size, 16, 40, prefix_caching, NULL);
    cr_assert(eng);
    int32_t *prompts[N]; int n_ids[N];
    for (int i = 0; i < N; i++) {
        n_ids[i] = 1 + (i * 37) % 90;
        prompts[i] = malloc(sizeof(int32_t) * (size_t)n_ids[i]);
        make_prompt(prompts[i], n_ids[i], i % 20); // some prompts share prefixes
    }
    vm_sampling_params p;
    greedy_params(&p, MAXT);
    vm_offline_result res[N];
    vm_err e = { "" };
    cr_assert_eq(vm_engine_generate(eng, N, NULL, (const int32_t *const *)prompts, n_ids, &p, res, &e), 0, "%s", e.msg);
    for (int i = 0; i < N; i++) {
        int32_t ref[MAXT];
        int k = fake_greedy_ref(prompts[i], n_ids[i], MAXT, ref);
        cr_assert_eq(res[i].n_tokens, k, "prompt %d: %d tokens vs %d", i, res[i].n_tokens, k);
        cr_assert_arr_eq(res[i].token_ids, ref, sizeof(int32_t) * (size_t)k, "prompt %d differs", i);
        cr_assert_eq(res[i].finish_reason, ref[k - 1] == FAKE_EOS ? VM_FINISH_STOP : VM_FINISH_LENGTH);
        // and alone
        vm_offline_result one;
        cr_assert_eq(vm_engine_generate(eng, 1, NULL, (const int32_t *const *)&prompts[i], &n_ids[i], &p, &one, &e), 0);
        cr_assert_eq(one.n_tokens, k);
        cr_assert_arr_eq(one.token_ids, ref, sizeof(int32_t) * (size_t)k);
        vm_offline_result_free(&one);
        vm_offline_result_free(&res[i]);
        free(prompts[i]);
    }
    check_all_free(eng);
    vm_engine_free(eng);
}

Test(engine, batch_invariance_bs8) { batch_invariance(8, 1); }
Test(engine, batch_invariance_bs16) { batch_invariance(16, 1); }
Test(engine, batch_invariance_bs32) { batch_invariance(32, 1); }
Test(engine, batch_invariance_no_prefix_cache) { batch_invariance(16, 0); }

Test(engine, chunked_prefill_respects_budget) {
    fake_model *m;
    vm_engine *eng = fake_engine(256, 16, 8, 32, 1, &m);
    int32_t prompt[100];
    make_prompt(prompt, 100, 7);
    vm_sampling_params p;
    greedy_params(&p, 4);
    vm_err e;
    vm_stream *s = vm_engine_submit(eng, NULL, prompt, 100, &p, &e);
    cr_assert(s);
    int steps = 0;
    long prev = 0;
    while (!vm_stream_finished(s)) {
        cr_assert_geq(vm_engine_step(eng, &e), 0);
        cr_assert_leq(m->tokens_computed - prev, 32, "step computed %ld tokens", m->tokens_computed - prev);
        prev = m->tokens_computed;
        vm_request_output *o;
        while ((o = vm_stream_next(s, 0))) vm_request_output_free(o);
        steps++;
    }
    cr_assert_eq(steps, 4 + 3, "100-token prompt in 32-token chunks = 4 steps, then 3 decode steps; got %d", steps);
    vm_stream_release(s);
    check_all_free(eng);
    vm_engine_free(eng);
}

Test(engine, prefix_caching_computes_only_new_tokens) {
    enum { PRE = 500, SUF = 20, MAXT = 10 };
    fake_model *m;
    vm_engine *eng = fake_engine(512, 16, 8, 256, 1, &m);
    vm_engine *cold = fake_engine(512, 16, 8, 256, 0, NULL);
    int32_t a[PRE + SUF], b[PRE + SUF];
    make_prompt(a, PRE + SUF, 1);
    memcpy(b, a, sizeof(int32_t) * PRE);
    make_prompt(b + PRE, SUF, 2);
    vm_sampling_params p;
    greedy_params(&p, MAXT);
    vm_offline_result r1, r2, c2;
    vm_err e;
    const int32_t *pa = a, *pb = b;
    int n = PRE + SUF;
    cr_assert_eq(vm_engine_generate(eng, 1, NULL, &pa, &n, &p, &r1, &e), 0);
    long before = m->tokens_computed;
    cr_assert_eq(vm_engine_generate(eng, 1, NULL, &pb, &n, &p, &r2, &e), 0);
    long computed = m->tokens_computed - before;
    // 500 shared tokens = 31 full blocks of 16 (496 tokens) are reused
    int hit = (PRE / 16) * 16;
    cr_assert_eq(r2.n_cached_tokens, hit, "cached %d", r2.n_cached_tokens);
    cr_assert_eq(computed, (PRE + SUF - hit) + (r2.n_tokens - 1), "computed %ld", computed);
    cr_assert_eq(vm_engine_generate(cold, 1, NULL, &pb, &n, &p, &c2, &e), 0);
    cr_assert_eq(c2.n_tokens, r2.n_tokens);
    cr_assert_arr_eq(c2.token_ids, r2.token_ids, sizeof(int32_t) * (size_t)c2.n_tokens);
    vm_engine_stats st;
    vm_engine_get_stats(eng, &st);
    cr_assert_eq(st.prefix_cache_queries, 2 * (uint64_t)(PRE + SUF));
    cr_assert_eq(st.prefix_cache_hits, (uint64_t)hit);
    // the very same prompt again: everything but the last token is reused
    vm_offline_result r3;
    before = m->tokens_computed;
    cr_assert_eq(vm_engine_generate(eng, 1, NULL, &pa, &n, &p, &r3, &e), 0);
    cr_assert_eq(r3.n_cached_tokens, ((PRE + SUF - 1) / 16) * 16);
    cr_assert_arr_eq(r3.token_ids, r1.token_ids, sizeof(int32_t) * (size_t)r1.n_tokens);
    check_all_free(eng);
    vm_offline_result_free(&r1); vm_offline_result_free(&r2); vm_offline_result_free(&c2); vm_offline_result_free(&r3);
    vm_engine_free(eng); vm_engine_free(cold);
}

Test(engine, preemption_with_small_pool) {
    enum { N = 12, MAXT = 40 };
    // 12 requests of ~30 + 40 tokens need ~5 blocks of 16 each; give 20 blocks
    vm_engine *eng = fake_engine(20, 16, 12, 64, 1, NULL);
    int32_t *prompts[N]; int n_ids[N];
    for (int i = 0; i < N; i++) {
        n_ids[i] = 20 + i;
        prompts[i] = malloc(sizeof(int32_t) * (size_t)n_ids[i]);
        make_prompt(prompts[i], n_ids[i], 100 + i);
    }
    vm_sampling_params p;
    greedy_params(&p, MAXT);
    p.ignore_eos = 1;
    vm_offline_result res[N];
    vm_err e = { "" };
    cr_assert_eq(vm_engine_generate(eng, N, NULL, (const int32_t *const *)prompts, n_ids, &p, res, &e), 0, "%s", e.msg);
    vm_engine_stats st;
    vm_engine_get_stats(eng, &st);
    cr_assert_gt(st.num_preemptions, 0, "expected preemptions");
    for (int i = 0; i < N; i++) {
        int32_t ref[MAXT + 1];
        // ignore_eos: reference without stopping at EOS
        int32_t *seq = malloc(sizeof(int32_t) * (size_t)(n_ids[i] + MAXT));
        memcpy(seq, prompts[i], sizeof(int32_t) * (size_t)n_ids[i]);
        for (int k = 0; k < MAXT; k++) {
            float lg[FAKE_VOCAB];
            fake_logits(seq, n_ids[i] + k, lg);
            int best = 0;
            for (int t = 1; t < FAKE_VOCAB; t++) if (lg[t] > lg[best]) best = t;
            seq[n_ids[i] + k] = ref[k] = best;
        }
        free(seq);
        cr_assert_eq(res[i].n_tokens, MAXT);
        cr_assert_arr_eq(res[i].token_ids, ref, sizeof(int32_t) * MAXT, "request %d differs", i);
        cr_assert_eq(res[i].finish_reason, VM_FINISH_LENGTH);
        vm_offline_result_free(&res[i]);
        free(prompts[i]);
    }
    check_all_free(eng);
    vm_engine_free(eng);
}

Test(engine, abort_frees_blocks) {
    vm_engine *eng = fake_engine(64, 16, 4, 64, 1, NULL);
    int32_t prompt[40];
    make_prompt(prompt, 40, 3);
    vm_sampling_params p;
    greedy_params(&p, 1000);
    p.ignore_eos = 1;
    vm_err e;
    vm_stream *s = vm_engine_submit(eng, NULL, prompt, 40, &p, &e);
    for (int i = 0; i < 5; i++) cr_assert_gt(vm_engine_step(eng, &e), 0);
    vm_engine_stats st;
    vm_engine_get_stats(eng, &st);
    cr_assert_lt(st.num_free_blocks, st.num_kv_blocks - 1);
    vm_stream_abort(s);
    vm_engine_step(eng, &e);
    vm_request_output *o, *last = NULL;
    int n = 0;
    while ((o = vm_stream_next(s, 0))) { n += o->n_tokens; vm_request_output_free(last); last = o; }
    cr_assert(last);
    cr_assert_eq(last->finish_reason, VM_FINISH_ABORT);
    cr_assert_eq(n, 5);
    vm_request_output_free(last);
    cr_assert(vm_stream_finished(s));
    vm_stream_release(s);
    check_all_free(eng);
    vm_engine_free(eng);
}

Test(engine, max_model_len_refused_at_add) {
    vm_engine *eng = fake_engine(64, 16, 4, 64, 1, NULL);
    int32_t *prompt = calloc(3000, sizeof(int32_t));
    for (int i = 0; i < 3000; i++) prompt[i] = 5;
    vm_sampling_params p;
    greedy_params(&p, 4);
    vm_err e = { "" };
    cr_assert_null(vm_engine_submit(eng, NULL, prompt, 2049, &p, &e));
    cr_assert(strstr(e.msg, "longer than the maximum model length of 2048"), "%s", e.msg);
    cr_assert_null(vm_engine_submit(eng, NULL, prompt, 0, &p, &e));
    prompt[0] = FAKE_VOCAB;
    cr_assert_null(vm_engine_submit(eng, NULL, prompt, 5, &p, &e));
    cr_assert(strstr(e.msg, "out of vocabulary"), "%s", e.msg);
    p.top_p = 0;
    prompt[0] = 1;
    cr_assert_null(vm_engine_submit(eng, NULL, prompt, 5, &p, &e));
    cr_assert_str_eq(e.msg, "top_p must be in (0, 1], got 0.");
    free(prompt);
    vm_engine_free(eng);
}

Test(engine, generation_capped_by_max_model_len) {
    vm_engine_args a;
    vm_engine_args_init(&a);
    a.num_kv_blocks = 64; a.block_size = 16; a.max_model_len = 40;
    a.eos_token_ids[0] = FAKE_EOS; a.n_eos_token_ids = 1;
    vm_err e;
    vm_engine *eng = vm_engine_create_with(&a, fake_executor(64, 16, NULL), fake_codec(), &e);
    int32_t prompt[30];
    make_prompt(prompt, 30, 9);
    vm_sampling_params p;
    greedy_params(&p, 100);
    p.ignore_eos = 1;
    vm_offline_result r;
    const int32_t *pp = prompt; int n = 30;
    cr_assert_eq(vm_engine_generate(eng, 1, NULL, &pp, &n, &p, &r, &e), 0);
    cr_assert_eq(r.n_tokens, 10);
    cr_assert_eq(r.finish_reason, VM_FINISH_LENGTH);
    vm_offline_result_free(&r);
    vm_engine_free(eng);
}

Test(engine, min_tokens_holds_eos_back) {
    vm_engine *eng = fake_engine(64, 16, 4, 64, 1, NULL);
    int32_t prompt[8];
    make_prompt(prompt, 8, 11);
    vm_sampling_params p;
    greedy_params(&p, 50);
    int32_t bias_id = FAKE_EOS; float bias = 100;
    p.logit_bias_ids = &bias_id; p.logit_bias_values = &bias; p.n_logit_bias = 1;
    vm_offline_result r;
    const int32_t *pp = prompt; int n = 8;
    vm_err e;
    cr_assert_eq(vm_engine_generate(eng, 1, NULL, &pp, &n, &p, &r, &e), 0);
    cr_assert_eq(r.n_tokens, 1);     // EOS at once
    cr_assert_eq(r.token_ids[0], FAKE_EOS);
    cr_assert_eq(r.finish_reason, VM_FINISH_STOP);
    vm_offline_result_free(&r);
    p.min_tokens = 7;
    cr_assert_eq(vm_engine_generate(eng, 1, NULL, &pp, &n, &p, &r, &e), 0);
    cr_assert_eq(r.n_tokens, 8);
    for (int i = 0; i < 7; i++) cr_assert_neq(r.token_ids[i], FAKE_EOS);
    cr_assert_eq(r.token_ids[7], FAKE_EOS);
    cr_assert_eq(r.finish_reason, VM_FINISH_STOP);
    vm_offline_result_free(&r);
    // stop_token_ids are held back too, and reported
    int32_t stop_id = 5;
    bias_id = 5;
    p.stop_token_ids = &stop_id; p.n_stop_token_ids = 1;
    p.min_tokens = 3;
    vm_stream *s = vm_engine_submit(eng, NULL, prompt, 8, &p, &e);
    vm_request_output *o, *last = NULL;
    int total = 0;
    while (!vm_stream_finished(s)) {
        vm_engine_step(eng, &e);
        while ((o = vm_stream_next(s, 0))) { total += o->n_tokens; vm_request_output_free(last); last = o; }
    }
    cr_assert_eq(total, 4);
    cr_assert_eq(last->finish_reason, VM_FINISH_STOP);
    cr_assert_eq(last->stop_token_id, 5);
    vm_request_output_free(last);
    vm_stream_release(s);
    vm_engine_free(eng);
}

Test(engine, ignore_eos_runs_to_max_tokens) {
    vm_engine *eng = fake_engine(64, 16, 4, 64, 1, NULL);
    int32_t prompt[8];
    make_prompt(prompt, 8, 11);
    vm_sampling_params p;
    greedy_params(&p, 12);
    int32_t bias_id = FAKE_EOS; float bias = 100;
    p.logit_bias_ids = &bias_id; p.logit_bias_values = &bias; p.n_logit_bias = 1;
    p.ignore_eos = 1;
    vm_offline_result r;
    const int32_t *pp = prompt; int n = 8;
    vm_err e;
    cr_assert_eq(vm_engine_generate(eng, 1, NULL, &pp, &n, &p, &r, &e), 0);
    cr_assert_eq(r.n_tokens, 12);
    cr_assert_eq(r.finish_reason, VM_FINISH_LENGTH);
    vm_offline_result_free(&r);
    vm_engine_free(eng);
}

static int valid_utf8(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 1 : (*p & 0xE0) == 0xC0 ? 2 : (*p & 0xF0) == 0xE0 ? 3 : (*p & 0xF8) == 0xF0 ? 4 : 0;
        if (!n) return 0;
        for (int i = 1; i < n; i++) if ((p[i] & 0xC0) != 0x80) return 0;
        p += n;
    }
    return 1;
}

// Streams a request to the end, concatenating text deltas (each checked to be valid UTF-8).
static char *stream_text(vm_engine *eng, vm_stream *s, vm_request_output **last_out, int *n_tokens) {
    char *acc = calloc(1, 1); size_t len = 0;
    vm_request_output *o, *last = NULL;
    vm_err e;
    *n_tokens = 0;
    while (!vm_stream_finished(s)) {
        vm_engine_step(eng, &e);
        while ((o = vm_stream_next(s, 0))) {
            cr_assert(o->text);
            cr_assert(valid_utf8(o->text), "delta is not valid UTF-8");
            size_t l = strlen(o->text);
            acc = realloc(acc, len + l + 1);
            memcpy(acc + len, o->text, l + 1); len += l;
            *n_tokens += o->n_tokens;
            vm_request_output_free(last); last = o;
        }
    }
    *last_out = last;
    return acc;
}

Test(engine, stop_strings_spanning_tokens) {
    vm_engine *eng = fake_engine(64, 16, 4, 64, 1, NULL);
    vm_sampling_params p;
    greedy_params(&p, 40);
    p.ignore_eos = 1;
    vm_err e;
    vm_stream *s = vm_engine_submit(eng, "hello world", NULL, 0, &p, &e);
    cr_assert(s, "%s", e.msg);
    vm_request_output *last; int nt;
    char *full = stream_text(eng, s, &last, &nt);
    vm_request_output_free(last);
    vm_stream_release(s);
    size_t L = strlen(full);
    cr_assert_gt(L, 20);
    // a stop string starting in the middle of the text, 5 bytes long (spans several tokens)
    size_t at = L / 2;
    while (at < L && ((unsigned char)full[at] & 0xC0) == 0x80) at++;
    char stop[6]; memcpy(stop, full + at, 5); stop[5] = 0;
    size_t first = (size_t)(strstr(full, stop) - full);
    for (int include = 0; include < 2; include++) {
        const char *stops[] = { "zzzzzzzzzz", stop };
        p.stop = stops; p.n_stop = 2;
        p.include_stop_str_in_output = include;
        s = vm_engine_submit(eng, "hello world", NULL, 0, &p, &e);
        char *txt = stream_text(eng, s, &last, &nt);
        cr_assert_eq(last->finish_reason, VM_FINISH_STOP);
        cr_assert_str_eq(last->stop_str, stop);
        size_t want = include ? first + 5 : first;
        cr_assert_eq(strlen(txt), want, "text '%s' (full '%s', stop '%s')", txt, full, stop);
        cr_assert_eq(strncmp(txt, full, want), 0);
        vm_request_output_free(last);
        vm_stream_release(s);
        free(txt);
    }
    free(full);
    vm_engine_free(eng);
}

Test(engine, utf8_never_split) {
    vm_engine *eng = fake_engine(64, 16, 4, 64, 1, NULL);
    vm_sampling_params p;
    greedy_params(&p, 30);
    p.ignore_eos = 1;
    // only 'a' and the two halves of 'é' can be drawn; halves are strongly favored in turn
    int32_t allowed[] = { 1, 29, 30 };
    p.allowed_token_ids = allowed; p.n_allowed_token_ids = 3;
    p.temperature = 1.0f; p.has_seed = 1; p.seed = 5;
    vm_err e;
    vm_stream *s = vm_engine_submit(eng, "ab", NULL, 0, &p, &e);
    vm_request_output *last; int nt;
    char *txt = stream_text(eng, s, &last, &nt);
    cr_assert_eq(nt, 30);
    vm_request_output_free(last);
    vm_stream_release(s);
    free(txt);
    vm_engine_free(eng);
}

Test(engine, seed_same_output_alone_and_in_busy_batch) {
    vm_engine *eng = fake_engine(1024, 16, 32, 64, 1, NULL);
    int32_t prompt[20];
    make_prompt(prompt, 20, 42);
    vm_sampling_params p;
    vm_sampling_params_init(&p);
    p.temperature = 0.9f; p.top_p = 0.95f; p.max_tokens = 30; p.has_seed = 1; p.seed = 1234;
    p.ignore_eos = 1;
    vm_offline_result alone, busy[16];
    const int32_t *pp = prompt; int n = 20;
    vm_err e;
    cr_assert_eq(vm_engine_generate(eng, 1, NULL, &pp, &n, &p, &alone, &e), 0);
    // busy batch: the same seeded request among unseeded ones with other prompts
    vm_stream *others[15];
    int32_t op[15][25];
    vm_sampling_params q = p;
    q.has_seed = 0;
    for (int i = 0; i < 15; i++) {
        make_prompt(op[i], 25, 500 + i);
        others[i] = vm_engine_submit(eng, NULL, op[i], 25, &q, &e);
    }
    cr_assert_eq(vm_engine_generate(eng, 1, NULL, &pp, &n, &p, &busy[0], &e), 0);
    cr_assert_eq(busy[0].n_tokens, alone.n_tokens);
    cr_assert_arr_eq(busy[0].token_ids, alone.token_ids, sizeof(int32_t) * (size_t)alone.n_tokens);
    // a different seed gives a different sequence
    vm_offline_result other;
    p.seed = 99;
    cr_assert_eq(vm_engine_generate(eng, 1, NULL, &pp, &n, &p, &other, &e), 0);
    cr_assert(memcmp(other.token_ids, alone.token_ids, sizeof(int32_t) * 30) != 0);
    for (int i = 0; i < 15; i++) vm_stream_release(others[i]);
    while (vm_engine_has_work(eng)) vm_engine_step(eng, &e);
    check_all_free(eng);
    vm_offline_result_free(&alone); vm_offline_result_free(&busy[0]); vm_offline_result_free(&other);
    vm_engine_free(eng);
}

Test(engine, n_sequences_with_seed) {
    vm_engine *eng = fake_engine(256, 16, 8, 64, 1, NULL);
    int32_t prompt[10];
    make_prompt(prompt, 10, 4);
    vm_sampling_params p;
    vm_sampling_params_init(&p);
    p.n = 3; p.max_tokens = 10; p.has_seed = 1; p.seed = 7; p.ignore_eos = 1;
    vm_err e;
    vm_stream *s = vm_engine_submit(eng, NULL, prompt, 10, &p, &e);
    int count[3] = { 0 }, finished[3] = { 0 };
    while (!vm_stream_finished(s)) {
        vm_engine_step(eng, &e);
        vm_request_output *o;
        while ((o = vm_stream_next(s, 0))) {
            cr_assert(o->index >= 0 && o->index < 3);
            count[o->index] += o->n_tokens;
            if (o->finish_reason) finished[o->index] = 1;
            vm_request_output_free(o);
        }
    }
    for (int i = 0; i < 3; i++) { cr_assert_eq(count[i], 10); cr_assert(finished[i]); }
    vm_stream_release(s);
    check_all_free(eng);
    vm_engine_free(eng);
}

Test(engine, logprobs_and_prompt_logprobs) {
    vm_engine *eng = fake_engine(256, 16, 8, 8, 1, NULL); // budget 8: prompt in chunks
    int32_t prompt[20];
    make_prompt(prompt, 20, 77);
    vm_sampling_params p;
    greedy_params(&p, 5);
    p.logprobs = 3; p.prompt_logprobs = 2;
    vm_err e;
    vm_stream *s = vm_engine_submit(eng, NULL, prompt, 20, &p, &e);
    int32_t seq[40]; memcpy(seq, prompt, sizeof prompt);
    int n_out = 0, got_plp = 0;
    while (!vm_stream_finished(s)) {
        vm_engine_step(eng, &e);
        vm_request_output *o;
        while ((o = vm_stream_next(s, 0))) {
            if (o->prompt_logprobs) {
                got_plp++;
                cr_assert_eq(o->n_prompt_logprobs, 20);
                cr_assert_eq(o->prompt_logprobs[0].n, 0);
                for (int i = 1; i < 20; i++) {
                    float lg[FAKE_VOCAB], ls[FAKE_VOCAB];
                    fake_logits(prompt, i, lg);
                    vm_log_softmax(lg, FAKE_VOCAB, ls);
                    vm_position_logprobs *pl = &o->prompt_logprobs[i];
                    cr_assert_eq(pl->n, 3);
                    cr_assert_eq(pl->entries[0].token_id, prompt[i]);
                    cr_assert_float_eq(pl->entries[0].logprob, ls[prompt[i]], 1e-5);
                }
            }
            for (int k = 0; k < o->n_tokens; k++) {
                float lg[FAKE_VOCAB], ls[FAKE_VOCAB];
                fake_logits(seq, 20 + n_out, lg);
                vm_log_softmax(lg, FAKE_VOCAB, ls);
                vm_position_logprobs *pl = &o->logprobs[k];
                cr_assert_eq(pl->n, 4);
                cr_assert_eq(pl->entries[0].token_id, o->token_ids[k]);
                cr_assert_eq(pl->entries[0].rank, 1); // greedy
                double sum = 0;
                for (int j = 1; j < 4; j++) {
                    cr_assert_eq(pl->entries[j].rank, j);
                    cr_assert_float_eq(pl->entries[j].logprob, ls[pl->entries[j].token_id], 1e-5);
                    if (j > 1) cr_assert_leq(pl->entries[j].logprob, pl->entries[j - 1].logprob);
                    sum += exp(pl->entries[j].logprob);
                }
                cr_assert_leq(sum, 1.0 + 1e-6);
                seq[20 + n_out++] = o->token_ids[k];
            }
            vm_request_output_free(o);
        }
    }
    cr_assert_eq(got_plp, 1);
    cr_assert_eq(n_out, 5);
    vm_stream_release(s);
    vm_engine_free(eng);
}

Test(engine, forward_error_finishes_requests) {
    fake_model *m;
    vm_engine *eng = fake_engine(64, 16, 4, 64, 1, &m);
    int32_t prompt[8];
    make_prompt(prompt, 8, 1);
    vm_sampling_params p;
    greedy_params(&p, 5);
    vm_err e;
    vm_stream *s = vm_engine_submit(eng, NULL, prompt, 8, &p, &e);
    m->fail_next = 1;
    cr_assert_eq(vm_engine_step(eng, &e), -1);
    vm_request_output *o = vm_stream_next(s, 0);
    cr_assert(o);
    cr_assert_eq(o->finish_reason, VM_FINISH_ERROR);
    cr_assert(o->error && strstr(o->error, "fake forward failure"));
    vm_request_output_free(o);
    vm_stream_release(s);
    check_all_free(eng);
    vm_engine_free(eng);
}

typedef struct { vm_engine *eng; int idx; int ok; } client_arg;

static void *client(void *arg) {
    client_arg *c = arg;
    int32_t prompt[30];
    make_prompt(prompt, 30, 300 + c->idx);
    vm_sampling_params p;
    greedy_params(&p, 16);
    vm_err e;
    vm_stream *s = vm_engine_submit(c->eng, NULL, prompt, 30, &p, &e);
    if (!s) return NULL;
    int32_t got[64]; int n = 0;
    vm_request_output *o;
    while ((o = vm_stream_next(s, -1))) {
        for (int k = 0; k < o->n_tokens && n < 64; k++) got[n++] = o->token_ids[k];
        vm_request_output_free(o);
    }
    int32_t ref[16];
    int k = fake_greedy_ref(prompt, 30, 16, ref);
    c->ok = (k == n && !memcmp(ref, got, sizeof(int32_t) * (size_t)k));
    vm_stream_release(s);
    return NULL;
}

Test(engine, threaded_clients) {
    vm_engine *eng = fake_engine(512, 16, 8, 64, 1, NULL);
    vm_err e;
    cr_assert_eq(vm_engine_start(eng, &e), 0);
    enum { N = 16 };
    pthread_t th[N];
    client_arg args[N];
    for (int i = 0; i < N; i++) {
        args[i] = (client_arg){ eng, i, 0 };
        pthread_create(&th[i], NULL, client, &args[i]);
    }
    for (int i = 0; i < N; i++) { pthread_join(th[i], NULL); cr_assert(args[i].ok, "client %d", i); }
    // abort from another thread while running
    int32_t prompt[10];
    make_prompt(prompt, 10, 1);
    vm_sampling_params p;
    greedy_params(&p, 100000);
    p.ignore_eos = 1;
    vm_stream *s = vm_engine_submit(eng, NULL, prompt, 10, &p, &e);
    vm_request_output *o = vm_stream_next(s, -1);
    cr_assert(o);
    vm_request_output_free(o);
    cr_assert_eq(vm_engine_abort(eng, vm_stream_id(s)), 0);
    vm_finish_reason fr = VM_FINISH_NONE;
    while ((o = vm_stream_next(s, -1))) { if (o->finish_reason) fr = o->finish_reason; vm_request_output_free(o); }
    cr_assert_eq(fr, VM_FINISH_ABORT);
    vm_stream_release(s);
    vm_engine_stop(eng);
    check_all_free(eng);
    vm_engine_free(eng);
}

Test(engine, stats_count_tokens) {
    vm_engine *eng = fake_engine(64, 16, 4, 64, 1, NULL);
    int32_t prompt[10];
    make_prompt(prompt, 10, 2);
    vm_sampling_params p;
    greedy_params(&p, 6);
    p.ignore_eos = 1;
    vm_offline_result r;
    const int32_t *pp = prompt; int n = 10;
    vm_err e;
    cr_assert_eq(vm_engine_generate(eng, 1, NULL, &pp, &n, &p, &r, &e), 0);
    vm_engine_stats st;
    vm_engine_get_stats(eng, &st);
    cr_assert_eq(st.prompt_tokens, 10);
    cr_assert_eq(st.generation_tokens, 6);
    cr_assert_eq(st.requests_finished, 1);
    vm_offline_result_free(&r);
    vm_engine_free(eng);
}
