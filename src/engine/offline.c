// offline.c - run prompts to completion on the calling thread (vm_engine_generate)
// and the CLI commands built on it: `generate` and `throughput`.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine_internal.h"
#include "hub/hub.h"

void vm_offline_result_free(vm_offline_result *r) {
    if (!r) return;
    free(r->token_ids); free(r->text);
    if (r->logprobs) for (int i = 0; i < r->n_tokens; i++) free(r->logprobs[i].entries);
    free(r->logprobs);
    memset(r, 0, sizeof *r);
}

// Appends one chunk (index 0 only) to a result; takes the chunk's logprobs.
static void absorb(vm_offline_result *r, vm_request_output *o) {
    if (o->index != 0) return;
    if (o->n_tokens > 0) {
        int32_t *ids = realloc(r->token_ids, (size_t)(r->n_tokens + o->n_tokens) * sizeof *ids);
        if (ids) {
            r->token_ids = ids;
            memcpy(ids + r->n_tokens, o->token_ids, (size_t)o->n_tokens * sizeof *ids);
            if (o->logprobs) {
                vm_position_logprobs *lp = realloc(r->logprobs, (size_t)(r->n_tokens + o->n_tokens) * sizeof *lp);
                if (lp) {
                    r->logprobs = lp;
                    for (int i = 0; i < o->n_tokens; i++) {
                        lp[r->n_tokens + i] = o->logprobs[i];
                        o->logprobs[i] = (vm_position_logprobs){ 0, NULL };
                    }
                }
            }
            r->n_tokens += o->n_tokens;
        }
    }
    if (o->text && *o->text) {
        size_t a = r->text ? strlen(r->text) : 0, b = strlen(o->text);
        char *t = realloc(r->text, a + b + 1);
        if (t) { memcpy(t + a, o->text, b + 1); r->text = t; }
    } else if (o->text && !r->text) r->text = strdup("");
    r->n_cached_tokens = o->n_cached_tokens;
    if (o->finish_reason != VM_FINISH_NONE) r->finish_reason = o->finish_reason;
}

int vm_engine_generate(vm_engine *eng, int n, const char *const *texts, const int32_t *const *ids,
                       const int *n_ids, const vm_sampling_params *p, vm_offline_result *outs,
                       vm_err *e) {
    return vm_engine_generate_mm(eng, n, texts, ids, n_ids, NULL, p, outs, e);
}

int vm_engine_generate_mm(vm_engine *eng, int n, const char *const *texts, const int32_t *const *ids,
                          const int *n_ids, vm_mm_inputs *const *mm, const vm_sampling_params *p,
                          vm_offline_result *outs, vm_err *e) {
    vm_stream **streams = calloc((size_t)(n > 0 ? n : 1), sizeof *streams);
    if (!streams) return vm_errf(e, "out of memory");
    memset(outs, 0, (size_t)n * sizeof *outs);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        streams[i] = vm_engine_submit_mm(eng, texts ? texts[i] : NULL, ids ? ids[i] : NULL,
                                         n_ids ? n_ids[i] : 0, mm ? mm[i] : NULL, p, e);
        if (!streams[i]) { rc = -1; break; }
    }
    bool threaded = vm_engine_is_threaded(eng);
    for (;;) {
        if (rc == 0 && !threaded) {
            if (vm_engine_step(eng, e) < 0) rc = -1;
        }
        bool all_done = true;
        for (int i = 0; i < n && streams[i]; i++) {
            vm_request_output *o;
            while ((o = vm_stream_next(streams[i], threaded ? 0.01 : 0)) != NULL) {
                absorb(&outs[i], o);
                vm_request_output_free(o);
            }
            if (!vm_stream_finished(streams[i])) all_done = false;
        }
        if (all_done || rc) break;
    }
    for (int i = 0; i < n; i++) if (streams[i]) vm_stream_release(streams[i]);
    free(streams);
    return rc;
}

// ---------------------------------------------------------------- CLI

typedef struct cli_opts {
    vm_engine_args args;
    vm_sampling_params sp;
    const char *prompts[256]; int n_prompts;
    const char *stops[16]; int n_stops;
    int num_prompts, input_len, output_len;
    int quiet;
    char model_path[4096];   // a Hub name resolved to the local snapshot
} cli_opts;

static int parse_int(const char *s, int *out) {
    char *end; errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < -2147483647L || v > 2147483647L) return -1;
    *out = (int)v;
    return 0;
}

static int parse_float(const char *s, float *out) {
    char *end; errno = 0;
    double v = strtod(s, &end);
    if (errno || *end) return -1;
    *out = (float)v;
    return 0;
}

static void cli_usage(const char *cmd) {
    fprintf(stderr,
            "usage: vllm-metal %s --model PATH [options]\n"
            "  engine:   --block-size N --max-model-len N --max-num-seqs N --max-num-batched-tokens N\n"
            "            --no-enable-prefix-caching --memory-fraction auto|0.x --threads N\n"
            "  sampling: --max-tokens N --temperature T --top-p P --top-k K --min-p P --seed S\n"
            "            --presence-penalty X --frequency-penalty X --repetition-penalty X\n"
            "            --stop STR (repeatable) --min-tokens N --ignore-eos --logprobs N\n"
            "  generate: --prompt TEXT (repeatable)\n"
            "  throughput: --num-prompts N --input-len N --output-len N [--prompt TEXT]\n", cmd);
}

static int cli_parse(int argc, char **argv, cli_opts *o) {
    memset(o, 0, sizeof *o);
    vm_engine_args_init(&o->args);
    vm_sampling_params_init(&o->sp);
    o->num_prompts = 32; o->input_len = 128; o->output_len = 64;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED() do { if (!v) { fprintf(stderr, "%s needs a value\n", a); return -1; } i++; } while (0)
#define INT(field) do { NEED(); if (parse_int(v, &(field))) { fprintf(stderr, "%s: not an integer: %s\n", a, v); return -1; } } while (0)
#define FLT(field) do { NEED(); if (parse_float(v, &(field))) { fprintf(stderr, "%s: not a number: %s\n", a, v); return -1; } } while (0)
        if (!strcmp(a, "--model")) { NEED(); o->args.model = v; }
        else if (!strcmp(a, "--prompt")) { NEED(); if (o->n_prompts < 256) o->prompts[o->n_prompts++] = v; }
        else if (!strcmp(a, "--block-size")) INT(o->args.block_size);
        else if (!strcmp(a, "--max-model-len")) INT(o->args.max_model_len);
        else if (!strcmp(a, "--max-num-seqs")) INT(o->args.max_num_seqs);
        else if (!strcmp(a, "--max-num-batched-tokens")) INT(o->args.max_num_batched_tokens);
        else if (!strcmp(a, "--no-enable-prefix-caching")) o->args.enable_prefix_caching = 0;
        else if (!strcmp(a, "--enable-prefix-caching")) o->args.enable_prefix_caching = 1;
        else if (!strcmp(a, "--memory-fraction")) { NEED(); o->args.memory_fraction = v; }
        else if (!strcmp(a, "--threads")) INT(o->args.n_threads);
        else if (!strcmp(a, "--num-kv-blocks")) INT(o->args.num_kv_blocks);
        else if (!strcmp(a, "--max-tokens")) INT(o->sp.max_tokens);
        else if (!strcmp(a, "--temperature")) FLT(o->sp.temperature);
        else if (!strcmp(a, "--top-p")) FLT(o->sp.top_p);
        else if (!strcmp(a, "--top-k")) INT(o->sp.top_k);
        else if (!strcmp(a, "--min-p")) FLT(o->sp.min_p);
        else if (!strcmp(a, "--presence-penalty")) FLT(o->sp.presence_penalty);
        else if (!strcmp(a, "--frequency-penalty")) FLT(o->sp.frequency_penalty);
        else if (!strcmp(a, "--repetition-penalty")) FLT(o->sp.repetition_penalty);
        else if (!strcmp(a, "--min-tokens")) INT(o->sp.min_tokens);
        else if (!strcmp(a, "--logprobs")) INT(o->sp.logprobs);
        else if (!strcmp(a, "--ignore-eos")) o->sp.ignore_eos = 1;
        else if (!strcmp(a, "--seed")) {
            NEED();
            char *end; errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || *end) { fprintf(stderr, "--seed: not an integer: %s\n", v); return -1; }
            o->sp.has_seed = 1; o->sp.seed = s;
        }
        else if (!strcmp(a, "--stop")) { NEED(); if (o->n_stops < 16) o->stops[o->n_stops++] = v; }
        else if (!strcmp(a, "--num-prompts")) INT(o->num_prompts);
        else if (!strcmp(a, "--input-len")) INT(o->input_len);
        else if (!strcmp(a, "--output-len")) INT(o->output_len);
        else if (!strcmp(a, "--quiet")) o->quiet = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { cli_usage(argv[0]); return 1; }
        else { fprintf(stderr, "unknown option %s\n", a); cli_usage(argv[0]); return -1; }
#undef NEED
#undef INT
#undef FLT
    }
    if (!o->args.model) o->args.model = getenv("VLLM_METAL_MODEL");
    if (!o->args.model) { fprintf(stderr, "--model is required\n"); cli_usage(argv[0]); return -1; }
    if (vm_hub_is_hub_name(o->args.model)) {   // org/name[@rev]: download or find in the HF cache
        vm_err e = {{0}};
        if (vm_hub_resolve(o->args.model, o->model_path, sizeof o->model_path, &e) != 0) {
            fprintf(stderr, "error: %s\n", e.msg);
            return -1;
        }
        o->args.model = o->model_path;
    }
    o->sp.stop = o->stops; o->sp.n_stop = o->n_stops;
    return 0;
}

int vm_cli_generate(int argc, char **argv) {
    cli_opts o;
    int pr = cli_parse(argc, argv, &o);
    if (pr) return pr > 0 ? 0 : 2;
    if (o.n_prompts == 0) { fprintf(stderr, "--prompt is required\n"); return 2; }
    vm_err e = { "" };
    if (vm_sampling_params_validate(&o.sp, -1, 20, &e)) { fprintf(stderr, "error: %s\n", e.msg); return 2; }
    vm_engine *eng = vm_engine_create(&o.args, &e);
    if (!eng) { fprintf(stderr, "error: %s\n", e.msg); return 1; }
    int rc = 0;
    if (o.n_prompts == 1) { // stream the text as it comes
        vm_stream *s = vm_engine_submit(eng, o.prompts[0], NULL, 0, &o.sp, &e);
        if (!s) { fprintf(stderr, "error: %s\n", e.msg); vm_engine_free(eng); return 1; }
        vm_finish_reason fr = VM_FINISH_NONE;
        int n_tok = 0;
        double t0 = vm_now_seconds();
        while (!vm_stream_finished(s)) {
            if (vm_engine_step(eng, &e) < 0) { fprintf(stderr, "error: %s\n", e.msg); rc = 1; break; }
            vm_request_output *out;
            while ((out = vm_stream_next(s, 0)) != NULL) {
                if (out->text) { fputs(out->text, stdout); fflush(stdout); }
                n_tok += out->n_tokens;
                if (out->finish_reason) fr = out->finish_reason;
                if (out->error) fprintf(stderr, "\nerror: %s\n", out->error);
                vm_request_output_free(out);
            }
        }
        double dt = vm_now_seconds() - t0;
        printf("\n");
        if (!o.quiet)
            fprintf(stderr, "[%d tokens, finish_reason=%s, %.1f tokens/s]\n", n_tok,
                    vm_finish_reason_name(fr) ? vm_finish_reason_name(fr) : "-", dt > 0 ? n_tok / dt : 0.0);
        vm_stream_release(s);
    } else {
        vm_offline_result *res = calloc((size_t)o.n_prompts, sizeof *res);
        if (!res || vm_engine_generate(eng, o.n_prompts, o.prompts, NULL, NULL, &o.sp, res, &e)) {
            fprintf(stderr, "error: %s\n", e.msg);
            rc = 1;
        } else {
            for (int i = 0; i < o.n_prompts; i++)
                printf("=== prompt %d (%s)\n%s\n", i,
                       vm_finish_reason_name(res[i].finish_reason) ? vm_finish_reason_name(res[i].finish_reason) : "-",
                       res[i].text ? res[i].text : "");
        }
        for (int i = 0; res && i < o.n_prompts; i++) vm_offline_result_free(&res[i]);
        free(res);
    }
    vm_engine_free(eng);
    return rc;
}

int vm_cli_throughput(int argc, char **argv) {
    cli_opts o;
    int pr = cli_parse(argc, argv, &o);
    if (pr) return pr > 0 ? 0 : 2;
    if (o.num_prompts < 1 || o.input_len < 1 || o.output_len < 1) {
        fprintf(stderr, "--num-prompts, --input-len and --output-len must be >= 1\n");
        return 2;
    }
    vm_err e = { "" };
    vm_engine *eng = vm_engine_create(&o.args, &e);
    if (!eng) { fprintf(stderr, "error: %s\n", e.msg); return 1; }
    int V = vm_engine_vocab_size(eng), N = o.num_prompts;
    // random token prompts (fixed seed), or the given prompt repeated
    int32_t **ids = calloc((size_t)N, sizeof *ids);
    int *n_ids = calloc((size_t)N, sizeof *n_ids);
    vm_rng rng; vm_rng_seed(&rng, 0);
    int rc = 0;
    for (int i = 0; ids && n_ids && i < N; i++) {
        if (o.n_prompts > 0) { // --prompt given: those prompts in turn
            if (!vm_engine_codec(eng)) { fprintf(stderr, "error: no tokenizer for text prompts\n"); rc = 1; break; }
            vm_text_codec *c = vm_engine_codec(eng);
            if (c->encode(c->ctx, o.prompts[i % o.n_prompts], 1, &ids[i], &n_ids[i], &e)) { rc = 1; break; }
        } else {
            ids[i] = malloc((size_t)o.input_len * sizeof(int32_t));
            if (!ids[i]) { rc = 1; break; }
            n_ids[i] = o.input_len;
            for (int j = 0; j < o.input_len; j++) ids[i][j] = (int32_t)(vm_rng_uniform(&rng) * (V - 1)) + 1;
        }
    }
    if (!ids || !n_ids) rc = 1;
    vm_sampling_params sp = o.sp;
    sp.max_tokens = o.output_len;
    sp.ignore_eos = 1;
    vm_offline_result *res = calloc((size_t)N, sizeof *res);
    if (!rc && res) {
        double t0 = vm_now_seconds();
        if (vm_engine_generate(eng, N, NULL, (const int32_t *const *)ids, n_ids, &sp, res, &e)) {
            fprintf(stderr, "error: %s\n", e.msg);
            rc = 1;
        } else {
            double dt = vm_now_seconds() - t0;
            long in_tok = 0, out_tok = 0;
            for (int i = 0; i < N; i++) { in_tok += n_ids[i]; out_tok += res[i].n_tokens; }
            vm_engine_stats st;
            vm_engine_get_stats(eng, &st);
            printf("Throughput: %.2f requests/s, %.2f total tokens/s, %.2f output tokens/s\n",
                   N / dt, (in_tok + out_tok) / dt, out_tok / dt);
            printf("Total num prompt tokens:  %ld\nTotal num output tokens:  %ld\nElapsed: %.2f s "
                   "(%llu steps, %llu preemptions, KV blocks %d)\n",
                   in_tok, out_tok, dt, (unsigned long long)st.num_steps,
                   (unsigned long long)st.num_preemptions, st.num_kv_blocks);
        }
    }
    for (int i = 0; res && i < N; i++) vm_offline_result_free(&res[i]);
    free(res);
    for (int i = 0; ids && i < N; i++) free(ids[i]);
    free(ids); free(n_ids);
    vm_engine_free(eng);
    return rc;
}
