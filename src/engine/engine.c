// engine.c - the step loop: take in new requests and aborts, schedule, run one
// batched forward pass, sample, detokenize, check stops, and hand each
// request's new tokens/text to its output stream.
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "engine_internal.h"
#include "common/prof.h"
#include "par.h"

// ---------------------------------------------------------------- streams

typedef struct out_node { vm_request_output *o; struct out_node *next; } out_node;

struct vm_stream {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t id;
    int n_seqs, n_finished;  // finished sequences (final chunk queued)
    out_node *head, *tail;
    int refs;                // engine + client
    bool abort_requested;
};

// One reference for the client plus one for each of the n sequences the
// engine runs, all taken before any sequence is published to the engine.
static vm_stream *stream_create(uint64_t id, int n_seqs) {
    vm_stream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->id = id; s->n_seqs = n_seqs; s->refs = 1 + n_seqs;
    return s;
}

static void stream_destroy(vm_stream *s) {
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

static void stream_unref(vm_stream *s) {
    pthread_mutex_lock(&s->mu);
    int left = --s->refs;
    pthread_mutex_unlock(&s->mu);
    if (left) return;
    for (out_node *n = s->head, *nx; n; n = nx) { nx = n->next; vm_request_output_free(n->o); free(n); }
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

static void stream_push(vm_stream *s, vm_request_output *o) {
    out_node *n = malloc(sizeof *n);
    if (!n) { vm_request_output_free(o); return; }
    n->o = o; n->next = NULL;
    pthread_mutex_lock(&s->mu);
    if (s->tail) s->tail->next = n; else s->head = n;
    s->tail = n;
    if (o->finish_reason != VM_FINISH_NONE) s->n_finished++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

uint64_t vm_stream_id(const vm_stream *s) { return s->id; }

vm_request_output *vm_stream_next(vm_stream *s, double timeout_s) {
    struct timespec until;
    if (timeout_s > 0) {
        clock_gettime(CLOCK_REALTIME, &until);
        double t = (double)until.tv_sec + until.tv_nsec * 1e-9 + timeout_s;
        until.tv_sec = (time_t)t;
        until.tv_nsec = (long)((t - (double)until.tv_sec) * 1e9);
    }
    pthread_mutex_lock(&s->mu);
    while (!s->head && s->n_finished < s->n_seqs && timeout_s != 0) { // 0: a poll, no wait (no syscall)
        if (timeout_s < 0) pthread_cond_wait(&s->cv, &s->mu);
        else if (pthread_cond_timedwait(&s->cv, &s->mu, &until)) break;
    }
    vm_request_output *o = NULL;
    if (s->head) {
        out_node *n = s->head;
        s->head = n->next;
        if (!s->head) s->tail = NULL;
        o = n->o;
        free(n);
    }
    pthread_mutex_unlock(&s->mu);
    return o;
}

int vm_stream_finished(vm_stream *s) {
    pthread_mutex_lock(&s->mu);
    int done = !s->head && s->n_finished >= s->n_seqs;
    pthread_mutex_unlock(&s->mu);
    return done;
}

void vm_stream_abort(vm_stream *s) {
    pthread_mutex_lock(&s->mu);
    s->abort_requested = true;
    pthread_mutex_unlock(&s->mu);
}

void vm_stream_release(vm_stream *s) {
    if (!s) return;
    vm_stream_abort(s);
    stream_unref(s);
}

void vm_request_output_free(vm_request_output *o) {
    if (!o) return;
    free(o->token_ids); free(o->text); free(o->stop_str); free(o->error);
    if (o->logprobs) for (int i = 0; i < o->n_tokens; i++) free(o->logprobs[i].entries);
    free(o->logprobs);
    if (o->prompt_logprobs) for (int i = 0; i < o->n_prompt_logprobs; i++) free(o->prompt_logprobs[i].entries);
    free(o->prompt_logprobs);
    free(o);
}

const char *vm_finish_reason_name(vm_finish_reason r) {
    switch (r) {
    case VM_FINISH_STOP: return "stop";
    case VM_FINISH_LENGTH: return "length";
    case VM_FINISH_ABORT: return "abort";
    case VM_FINISH_ERROR: return "error";
    default: return NULL;
    }
}

// ---------------------------------------------------------------- engine

_Static_assert(sizeof(vm_sample_param) == VM_SAMPLE_PARAM_WORDS * 4, "vm_sample_param layout");

typedef struct sample_job {
    vm_request *r;
    float *logits;           // the row (overwritten)
    int32_t token;           // the result
} sample_job;

struct vm_engine {
    vm_engine_args args;
    vm_executor exec;
    vm_text_codec *codec;
    int bos_token_id;        // -1: unknown
    int vocab_size;
    vm_kv_pool *pool;
    vm_scheduler *sched;
    vm_model_runner *runner;
    vm_sample_ctx sctx;
    float *lsm;              // [vocab] log-softmax scratch
    // sampling on several threads: a pool, and per thread a context (idx
    // scratch) and a log-softmax row, made when first needed
    vm_par *par; int par_max; bool par_tried;
    bool device_sample;     // plain draws on the backend (exec.device_sample; VLLM_METAL_DEVICE_SAMPLE=0: never)
    vm_sample_param *sparams; int cap_sparams;
    vm_sample_ctx *tctx; float **tlsm; int n_tctx;
    sample_job *jobs; int cap_jobs;
    vm_runner_seq *seqs; int cap_seqs;

    pthread_mutex_t mu;      // inbox, live list, stats
    pthread_cond_t work_cv;
    vm_request **inbox; int n_inbox, cap_inbox;
    vm_request **live; int n_live, cap_live; // owned by the engine thread
    uint64_t next_id;
    vm_rng seed_rng;         // seeds for requests without one
    bool thread_running, stop;
    pthread_t thread;
    pthread_mutex_t step_mu; // one step at a time
    vm_engine_stats stats;   // (mu) the counters, and the scheduler's and pool's state as of the last step
};

// The scheduler's and the pool's numbers into stats, with step_mu held: a
// reader of the stats then takes only mu, never waiting for a step (the
// engine thread takes step_mu again right after letting it go, so a reader
// queued on it could wait for many steps).
static void publish_stats(vm_engine *eng) {
    pthread_mutex_lock(&eng->mu);
    vm_engine_stats *st = &eng->stats;
    st->num_running = eng->sched->n_running;
    st->num_waiting = eng->sched->n_waiting;
    st->num_kv_blocks = eng->pool->num_blocks;
    st->num_free_blocks = vm_kv_pool_num_free(eng->pool);
    st->kv_usage = vm_kv_pool_usage(eng->pool);
    st->prefix_cache_queries = eng->pool->queries;
    st->prefix_cache_hits = eng->pool->hits;
    st->num_preemptions = eng->sched->num_preemptions;
    pthread_mutex_unlock(&eng->mu);
}

void vm_engine_args_init(vm_engine_args *a) {
    memset(a, 0, sizeof *a);
    a->enable_prefix_caching = 1;
    a->enable_chunked_prefill = 1;
}


static int resolve_args(vm_engine_args *a, vm_err *e) {
    int bs = vm_platform_block_size(a->block_size, e);
    if (bs < 0) return -1;
    a->block_size = bs;
    if (a->max_num_seqs <= 0) a->max_num_seqs = 256;
    if (a->max_num_batched_tokens <= 0) a->max_num_batched_tokens = 2048;
    if (a->max_logprobs <= 0) a->max_logprobs = 20;
    return 0;
}

vm_engine *vm_engine_create_with(const vm_engine_args *args, vm_executor exec, vm_text_codec *codec,
                                 vm_err *e) {
    vm_engine *eng = calloc(1, sizeof *eng);
    if (!eng) {
        vm_errf(e, "out of memory");
        if (exec.destroy) exec.destroy(exec.ctx);
        if (codec && codec->destroy) codec->destroy(codec->ctx);
        free(codec);
        return NULL;
    }
    eng->args = *args;
    eng->exec = exec;
    eng->codec = codec;
    pthread_mutex_init(&eng->mu, NULL);
    pthread_mutex_init(&eng->step_mu, NULL);
    pthread_cond_init(&eng->work_cv, NULL);
    vm_engine_args *a = &eng->args;
    if (resolve_args(a, e)) goto fail;
    if (a->max_model_len <= 0) a->max_model_len = exec.max_position_embeddings > 0 ? exec.max_position_embeddings : 2048;
    if (a->num_kv_blocks < 2) { vm_errf(e, "engine: num_kv_blocks must be set (>= 2)"); goto fail; }
    eng->vocab_size = exec.vocab_size;
    const char *ds = getenv("VLLM_METAL_DEVICE_SAMPLE");
    eng->device_sample = exec.device_sample && !(ds && !strcmp(ds, "0"));
    eng->bos_token_id = -1;
    eng->next_id = 1;
    vm_rng_seed(&eng->seed_rng, (uint64_t)time(NULL) ^ ((uint64_t)(uintptr_t)eng << 16));
    if (!(eng->pool = vm_kv_pool_create(a->num_kv_blocks, a->block_size, a->enable_prefix_caching, e))) goto fail;
    vm_sched_config sc = { .max_num_seqs = a->max_num_seqs, .max_num_batched_tokens = a->max_num_batched_tokens,
                           .max_model_len = a->max_model_len, .chunked_prefill = a->enable_chunked_prefill };
    if (!(eng->sched = vm_scheduler_create(&sc, eng->pool, e))) goto fail;
    if (!(eng->runner = vm_model_runner_create(a->block_size, eng->vocab_size, e))) goto fail;
    eng->sctx.vocab_size = eng->vocab_size;
    eng->sctx.eos_ids = eng->args.eos_token_ids;
    eng->sctx.n_eos = eng->args.n_eos_token_ids;
    eng->sctx.idx = malloc((size_t)eng->vocab_size * sizeof(int));
    eng->lsm = malloc((size_t)eng->vocab_size * sizeof(float));
    if (!eng->sctx.idx || !eng->lsm) { vm_errf(e, "out of memory"); goto fail; }
    publish_stats(eng);
    return eng;
fail:
    vm_engine_free(eng);
    return NULL;
}

vm_engine *vm_engine_create(const vm_engine_args *args, vm_err *e) {
    vm_engine_args a = *args;
    if (resolve_args(&a, e)) return NULL;
    if (!a.model) { vm_errf(e, "no model given"); return NULL; }
    vm_worker_config wc = { .model = a.model, .block_size = a.block_size, .max_model_len = a.max_model_len,
                            .max_num_seqs = a.max_num_seqs, .max_num_batched_tokens = a.max_num_batched_tokens,
                            .memory_fraction = a.memory_fraction, .num_kv_blocks = a.num_kv_blocks,
                            .n_threads = a.n_threads };
    vm_executor ex;
    vm_worker_info info;
    if (vm_worker_create(&wc, &ex, &info, e)) return NULL;
    a.num_kv_blocks = info.num_kv_blocks;
    a.max_model_len = info.max_model_len;
    if (a.n_eos_token_ids == 0) {
        a.n_eos_token_ids = info.n_eos_token_ids;
        memcpy(a.eos_token_ids, info.eos_token_ids, sizeof a.eos_token_ids);
    }
    vm_err ce;
    vm_text_codec *codec = vm_codec_for_model(a.model, &ce);
    if (!codec) fprintf(stderr, "vllm-metal: no tokenizer (%s); token-id prompts only\n", ce.msg);
    int32_t tok_eos[8];
    int n_tok_eos = vm_codec_eos_ids(codec, tok_eos, 8);
    for (int i = 0; i < n_tok_eos && a.n_eos_token_ids < 8; i++) {
        bool have = false;
        for (int j = 0; j < a.n_eos_token_ids; j++) if (a.eos_token_ids[j] == tok_eos[i]) have = true;
        if (!have) a.eos_token_ids[a.n_eos_token_ids++] = tok_eos[i];
    }
    vm_engine *eng = vm_engine_create_with(&a, ex, codec, e);
    if (eng) eng->bos_token_id = info.bos_token_id;
    return eng;
}

static void request_free(vm_request *r);
static void finish_request(vm_engine *eng, vm_request *r, vm_finish_reason why, const char *err);

void vm_engine_free(vm_engine *eng) {
    if (!eng) return;
    vm_engine_stop(eng);
    if (vm_prof_on()) vm_prof_report("engine");
    // abort whatever is left so readers see an end
    pthread_mutex_lock(&eng->mu);
    for (int i = 0; i < eng->n_inbox; i++) {
        vm_request *r = eng->inbox[i];
        if (vm_grow((void **)&eng->live, &eng->cap_live, eng->n_live + 1, sizeof *eng->live) == 0)
            eng->live[eng->n_live++] = r;
    }
    eng->n_inbox = 0;
    pthread_mutex_unlock(&eng->mu);
    while (eng->n_live > 0) finish_request(eng, eng->live[eng->n_live - 1], VM_FINISH_ABORT, NULL);
    vm_scheduler_free(eng->sched);
    vm_kv_pool_free(eng->pool);
    vm_model_runner_free(eng->runner);
    free(eng->sctx.idx); free(eng->lsm); free(eng->seqs);
    vm_par_free(eng->par);
    for (int i = 1; i < eng->n_tctx; i++) { free(eng->tctx[i].idx); free(eng->tlsm[i]); } // 0: the engine's own
    free(eng->tctx); free(eng->tlsm); free(eng->jobs); free(eng->sparams);
    free(eng->inbox); free(eng->live);
    if (eng->exec.destroy) eng->exec.destroy(eng->exec.ctx);
    if (eng->codec && eng->codec->destroy) eng->codec->destroy(eng->codec->ctx);
    free(eng->codec);
    pthread_mutex_destroy(&eng->mu);
    pthread_mutex_destroy(&eng->step_mu);
    pthread_cond_destroy(&eng->work_cv);
    free(eng);
}

const vm_engine_args *vm_engine_get_args(const vm_engine *eng) { return &eng->args; }
int vm_engine_num_kv_blocks(const vm_engine *eng) { return eng->args.num_kv_blocks; }
int vm_engine_vocab_size(const vm_engine *eng) { return eng->vocab_size; }
vm_text_codec *vm_engine_codec(vm_engine *eng) { return eng->codec; }

// ---------------------------------------------------------------- requests

static void request_free(vm_request *r) {
    if (!r) return;
    for (int i = 0; i < r->sp.n_stop; i++) free(r->stop[i]);
    free(r->stop); free(r->stop_ids); free(r->bias_ids); free(r->bias_vals); free(r->allowed);
    for (int i = 0; i < r->n_bad_words; i++) free(r->bad_words[i].ids);
    free(r->bad_words);
    free(r->tokens); free(r->blocks); free(r->hashes);
    free(r->mrope_pos); free(r->image_offset); free(r->image_tokens); free(r->image_features);
    vm_mm_inputs_release(r->mm);
    for (int i = 0; i < r->n_lp; i++) free(r->lp[i].entries);
    free(r->lp);
    if (r->plp) for (int i = 0; i < r->n_plp; i++) free(r->plp[i].entries);
    free(r->plp);
    vm_seq_detok_free(&r->detok);
    free(r);
}

// Copies n elements of src into a new heap array at dst (left NULL when n <= 0).
#define DUP_ARR(dst, src, n)                                                      \
    do {                                                                          \
        if ((n) > 0) {                                                            \
            (dst) = malloc((size_t)(n) * sizeof *(dst));                          \
            if (!(dst)) goto oom;                                                 \
            memcpy((dst), (src), (size_t)(n) * sizeof *(dst));                    \
        }                                                                         \
    } while (0)

static vm_request *request_create(vm_engine *eng, uint64_t id, int index, const int32_t *ids, int n,
                                  const vm_sampling_params *p, const vm_token_seq *bad, int n_bad,
                                  vm_mm_inputs *mm, const int32_t *mrope, int32_t rope_delta, vm_err *e) {
    vm_request *r = calloc(1, sizeof *r);
    if (!r) { vm_errf(e, "out of memory"); return NULL; }
    r->id = id; r->index = index;
    if (mm) {
        r->mm = vm_mm_inputs_retain(mm);
        r->rope_delta = rope_delta;
        DUP_ARR(r->mrope_pos, mrope, 3 * n);
        int k = mm->n_images;
        if (!(r->image_offset = calloc((size_t)k, sizeof *r->image_offset)) ||
            !(r->image_tokens = calloc((size_t)k, sizeof *r->image_tokens)) ||
            !(r->image_features = calloc((size_t)k, sizeof *r->image_features))) goto oom;
        for (int i = 0, img = 0; i < n && img < k; i++)
            if (ids[i] == mm->image_token_id && (i == 0 || ids[i - 1] != mm->image_token_id)) {
                r->image_offset[img] = i;
                r->image_tokens[img] = mm->images[img].n_tokens;
                img++;
            }
    }
    r->sp = *p;
    r->cap_tokens = n + 64;
    if (!(r->tokens = malloc((size_t)r->cap_tokens * sizeof *r->tokens))) goto oom;
    memcpy(r->tokens, ids, (size_t)n * sizeof *ids);
    r->n_tokens = r->n_prompt = n;
    if (p->n_stop > 0) {
        if (!(r->stop = calloc((size_t)p->n_stop, sizeof *r->stop))) goto oom;
        for (int i = 0; i < p->n_stop; i++) if (!(r->stop[i] = strdup(p->stop[i]))) goto oom;
    }
    DUP_ARR(r->stop_ids, p->stop_token_ids, p->n_stop_token_ids);
    DUP_ARR(r->bias_ids, p->logit_bias_ids, p->n_logit_bias);
    DUP_ARR(r->bias_vals, p->logit_bias_values, p->n_logit_bias);
    DUP_ARR(r->allowed, p->allowed_token_ids, p->n_allowed_token_ids);
    if (n_bad > 0) {
        if (!(r->bad_words = calloc((size_t)n_bad, sizeof *r->bad_words))) goto oom;
        r->n_bad_words = n_bad;
        for (int i = 0; i < n_bad; i++) {
            DUP_ARR(r->bad_words[i].ids, bad[i].ids, bad[i].n);
            r->bad_words[i].n = bad[i].n;
        }
    }
    // the copies own these now
    r->sp.stop = (const char *const *)r->stop;
    r->sp.stop_token_ids = r->stop_ids;
    r->sp.logit_bias_ids = r->bias_ids; r->sp.logit_bias_values = r->bias_vals;
    r->sp.allowed_token_ids = r->allowed;
    r->sp.bad_words = NULL; r->sp.n_bad_words = 0;
    if (r->sp.temperature >= 1e-5f && r->sp.temperature < 1e-2f) r->sp.temperature = 1e-2f;
    r->max_tokens = p->max_tokens < 0 ? eng->args.max_model_len - n : p->max_tokens;
    if (r->max_tokens < 1) r->max_tokens = 1;
    vm_rng_seed(&r->rng, p->has_seed ? p->seed + (uint64_t)index : 0);
    if (!p->has_seed) {
        pthread_mutex_lock(&eng->mu);
        uint64_t s = (uint64_t)(vm_rng_uniform(&eng->seed_rng) * 18446744073709551615.0);
        pthread_mutex_unlock(&eng->mu);
        vm_rng_seed(&r->rng, s);
    }
    int stop_buffer = 0;
    if (!p->include_stop_str_in_output)
        for (int i = 0; i < p->n_stop; i++) stop_buffer = VM_MAX(stop_buffer, (int)strlen(p->stop[i]) - 1);
    vm_seq_detok_init(&r->detok, ids, n, stop_buffer);
    r->stop_str_index = -1;
    r->stop_token = -1;
    r->finish = VM_FINISH_NONE;
    r->arrival_time = vm_now_seconds();
    return r;
oom:
    request_free(r);
    vm_errf(e, "out of memory");
    return NULL;
}

// bad_words -> token sequences, with and without a leading space (as vLLM does)
static int tokenize_bad_words(vm_engine *eng, const vm_sampling_params *p, vm_token_seq **out,
                              int *n_out, vm_err *e) {
    *out = NULL; *n_out = 0;
    if (p->n_bad_words == 0) return 0;
    if (!eng->codec || !eng->codec->encode) return vm_errf(e, "bad_words needs a tokenizer");
    vm_token_seq *seqs = calloc((size_t)p->n_bad_words * 2, sizeof *seqs);
    if (!seqs) return vm_errf(e, "out of memory");
    int n = 0;
    for (int i = 0; i < p->n_bad_words; i++) {
        const char *w = p->bad_words[i];
        while (*w == ' ') w++;
        for (int sp = 0; sp < 2; sp++) {
            size_t len = strlen(w);
            char *txt = malloc(len + 2);
            if (!txt) continue;
            snprintf(txt, len + 2, "%s%s", sp ? " " : "", w);
            int32_t *ids = NULL; int k = 0;
            vm_err e2;
            if (eng->codec->encode(eng->codec->ctx, txt, 0, &ids, &k, &e2) == 0 && k > 0) {
                bool dup = false;
                for (int j = 0; j < n; j++)
                    if (seqs[j].n == k && !memcmp(seqs[j].ids, ids, (size_t)k * sizeof *ids)) dup = true;
                if (dup) free(ids);
                else seqs[n++] = (vm_token_seq){ ids, k };
            } else free(ids);
            free(txt);
        }
    }
    *out = seqs; *n_out = n;
    return 0;
}

int vm_engine_is_vlm(const vm_engine *eng) { return eng->exec.vision != NULL; }
int vm_engine_image_token_id(const vm_engine *eng) { return eng->exec.vision ? eng->exec.vision->image_token_id : -1; }
int vm_engine_vision_token_id(const vm_engine *eng, int end) {
    if (!eng->exec.vision) return -1;
    return end ? eng->exec.vision->vision_end_token_id : eng->exec.vision->vision_start_token_id;
}
int vm_engine_bos_token_id(const vm_engine *eng) { return eng->bos_token_id; }

vm_mm_inputs *vm_engine_prepare_images(vm_engine *eng, const vm_image_input *images, int n,
                                       int64_t max_pixels, vm_err *e) {
    return vm_mm_prepare(eng->exec.vision, images, n, max_pixels, e);
}

vm_stream *vm_engine_submit(vm_engine *eng, const char *text, const int32_t *ids, int n_ids,
                            const vm_sampling_params *p, vm_err *e) {
    return vm_engine_submit_mm(eng, text, ids, n_ids, NULL, p, e);
}

vm_stream *vm_engine_submit_mm(vm_engine *eng, const char *text, const int32_t *ids, int n_ids,
                               vm_mm_inputs *mm, const vm_sampling_params *p, vm_err *e) {
    vm_sampling_params def;
    if (!p) { vm_sampling_params_init(&def); p = &def; }
    if (vm_sampling_params_validate(p, eng->vocab_size, eng->args.max_logprobs, e)) return NULL;
    if (p->n_stop > 0 && (!eng->codec || !eng->codec->decode))
        { vm_errf(e, "stop strings need a tokenizer"); return NULL; }
    int32_t *owned = NULL;
    if (!ids) {
        if (!text) { vm_errf(e, "no prompt given"); return NULL; }
        if (!eng->codec || !eng->codec->encode) { vm_errf(e, "text prompts need a tokenizer"); return NULL; }
        if (eng->codec->encode(eng->codec->ctx, text, 1, &owned, &n_ids, e)) return NULL;
        ids = owned;
    }
    if (n_ids <= 0) { free(owned); vm_errf(e, "The prompt cannot be empty"); return NULL; }
    int32_t *mrope = NULL, rope_delta = 0;
    if (mm && mm->n_images == 0) mm = NULL;
    if (mm) {
        if (!eng->exec.vision) { free(owned); vm_errf(e, "this model does not take images (it is not a vision-language model)"); return NULL; }
        int32_t *expanded; int n_exp;
        if (vm_mm_expand_prompt(mm, ids, n_ids, &expanded, &n_exp, e)) { free(owned); return NULL; }
        free(owned);
        owned = expanded; ids = expanded; n_ids = n_exp;
        if (n_ids <= eng->args.max_model_len) {
            int grid[mm->n_images][3];
            for (int i = 0; i < mm->n_images; i++) memcpy(grid[i], mm->images[i].grid_thw, sizeof grid[i]);
            mrope = malloc((size_t)n_ids * 3 * sizeof *mrope);
            if (!mrope) { free(owned); vm_errf(e, "out of memory"); return NULL; }
            if (vm_mrope_positions(ids, n_ids, mm->image_token_id, mm->merge_size, mm->n_images,
                                   (const int (*)[3])grid, mrope, &rope_delta, e)) {
                free(owned); free(mrope); return NULL;
            }
        }
    }
    if (n_ids > eng->args.max_model_len) {
        free(owned); free(mrope);
        vm_errf(e, "The decoder prompt (length %d) is longer than the maximum model length of %d. "
                   "Make sure that `max_model_len` is no smaller than the number of text tokens.",
                n_ids, eng->args.max_model_len);
        return NULL;
    }
    for (int i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= eng->vocab_size) {
            vm_errf(e, "Token id %d is out of vocabulary (size %d)", ids[i], eng->vocab_size);
            free(owned); free(mrope);
            return NULL;
        }
    vm_token_seq *bad = NULL; int n_bad = 0;
    if (tokenize_bad_words(eng, p, &bad, &n_bad, e)) { free(owned); free(mrope); return NULL; }

    pthread_mutex_lock(&eng->mu);
    uint64_t id = eng->next_id++;
    pthread_mutex_unlock(&eng->mu);
    vm_stream *s = stream_create(id, p->n);
    vm_request **reqs = calloc((size_t)p->n, sizeof *reqs);
    bool ok = s && reqs;
    for (int i = 0; ok && i < p->n; i++)
        if (!(reqs[i] = request_create(eng, id, i, ids, n_ids, p, bad, n_bad, mm, mrope, rope_delta, e))) ok = false;
    for (int i = 0; i < n_bad; i++) free(bad[i].ids);
    free(bad);
    free(owned);
    free(mrope);
    if (!ok) {
        if (reqs) for (int i = 0; i < p->n; i++) request_free(reqs[i]);
        free(reqs);
        if (s) stream_destroy(s);
        if (!e || !e->msg[0]) vm_errf(e, "out of memory");
        return NULL;
    }
    pthread_mutex_lock(&eng->mu);
    if (vm_grow((void **)&eng->inbox, &eng->cap_inbox, eng->n_inbox + p->n, sizeof *eng->inbox)) ok = false;
    for (int i = 0; ok && i < p->n; i++) { reqs[i]->stream = s; eng->inbox[eng->n_inbox++] = reqs[i]; }
    pthread_cond_broadcast(&eng->work_cv);
    pthread_mutex_unlock(&eng->mu);
    if (!ok) {
        for (int i = 0; i < p->n; i++) request_free(reqs[i]);
        free(reqs);
        stream_destroy(s);
        vm_errf(e, "out of memory");
        return NULL;
    }
    free(reqs);
    return s;
}

int vm_engine_abort(vm_engine *eng, uint64_t request_id) {
    int found = -1;
    pthread_mutex_lock(&eng->mu);
    for (int i = 0; i < eng->n_inbox; i++)
        if (eng->inbox[i]->id == request_id) { vm_stream_abort(eng->inbox[i]->stream); found = 0; }
    for (int i = 0; i < eng->n_live; i++)
        if (eng->live[i]->id == request_id) { vm_stream_abort(eng->live[i]->stream); found = 0; }
    pthread_cond_broadcast(&eng->work_cv);
    pthread_mutex_unlock(&eng->mu);
    return found;
}

// ---------------------------------------------------------------- outputs

static vm_request_output *make_output(vm_engine *eng, vm_request *r) {
    vm_request_output *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    o->request_id = r->id;
    o->index = r->index;
    int n_out = r->n_tokens - r->n_prompt;
    int from = r->n_pending_from;
    o->n_tokens = n_out - from;
    if (o->n_tokens > 0) {
        o->token_ids = malloc((size_t)o->n_tokens * sizeof *o->token_ids);
        if (o->token_ids) memcpy(o->token_ids, r->tokens + r->n_prompt + from, (size_t)o->n_tokens * sizeof(int32_t));
        if (r->sp.logprobs >= 0 && r->n_lp >= n_out) {
            o->logprobs = calloc((size_t)o->n_tokens, sizeof *o->logprobs);
            for (int i = 0; o->logprobs && i < o->n_tokens; i++) { // move ownership
                o->logprobs[i] = r->lp[from + i];
                r->lp[from + i] = (vm_position_logprobs){ 0, NULL };
            }
        }
    }
    r->n_pending_from = n_out;
    if (r->sp.detokenize && eng->codec) o->text = vm_seq_detok_take(&r->detok, r->finish != VM_FINISH_NONE);
    if (r->plp && !r->plp_sent) {
        o->prompt_logprobs = r->plp; o->n_prompt_logprobs = r->n_plp;
        r->plp = NULL; r->plp_sent = true;
    }
    o->n_prompt_tokens = r->n_prompt;
    o->n_cached_tokens = r->n_cached;
    o->n_output_tokens = n_out;
    o->finish_reason = r->finish;
    o->stop_str = r->stop_str_index >= 0 ? strdup(r->stop[r->stop_str_index]) : NULL;
    o->stop_token_id = r->stop_token;
    o->arrival_time = r->arrival_time;
    o->scheduled_time = r->scheduled_time;
    o->first_token_time = r->first_token_time;
    o->last_token_time = r->last_token_time;
    o->finish_time = r->finish_time;
    return o;
}

static void remove_live(vm_engine *eng, vm_request *r) {
    pthread_mutex_lock(&eng->mu);
    for (int i = 0; i < eng->n_live; i++)
        if (eng->live[i] == r) { eng->live[i] = eng->live[--eng->n_live]; break; }
    pthread_mutex_unlock(&eng->mu);
}

// Frees r's blocks, sends its final chunk and drops it.
static void finish_request(vm_engine *eng, vm_request *r, vm_finish_reason why, const char *err) {
    if (r->finish == VM_FINISH_NONE) r->finish = why;
    r->finish_time = vm_now_seconds();
    vm_scheduler_finish(eng->sched, r);
    vm_request_output *o = make_output(eng, r);
    if (o && err) o->error = strdup(err);
    vm_stream *s = r->stream;
    if (o) stream_push(s, o);
    remove_live(eng, r);
    pthread_mutex_lock(&eng->mu);
    eng->stats.requests_finished++;
    pthread_mutex_unlock(&eng->mu);
    request_free(r);
    stream_unref(s);
}

static int append_token(vm_request *r, int32_t t) {
    if (r->n_tokens == r->cap_tokens) {
        int nc = r->cap_tokens * 2;
        int32_t *p = realloc(r->tokens, (size_t)nc * sizeof *p);
        if (!p) return -1;
        r->tokens = p; r->cap_tokens = nc;
    }
    r->tokens[r->n_tokens++] = t;
    return 0;
}

static bool is_eos(const vm_engine *eng, int32_t t) {
    for (int i = 0; i < eng->args.n_eos_token_ids; i++) if (eng->args.eos_token_ids[i] == t) return true;
    return false;
}

// Appends a sampled token and decides whether r is done (vLLM's check_stop + stop strings).
static void accept_token(vm_engine *eng, vm_request *r, int32_t t, double now) {
    append_token(r, t);
    int n_out = r->n_tokens - r->n_prompt;
    if (n_out == 1) r->first_token_time = now;
    r->last_token_time = now;
    const vm_sampling_params *p = &r->sp;
    bool stop_tok = false;
    if (n_out >= p->min_tokens) {
        if (!p->ignore_eos && is_eos(eng, t)) { r->finish = VM_FINISH_STOP; stop_tok = true; }
        else for (int i = 0; i < p->n_stop_token_ids; i++)
            if (r->stop_ids[i] == t) { r->finish = VM_FINISH_STOP; r->stop_token = t; stop_tok = true; break; }
    }
    if (!stop_tok && (n_out >= r->max_tokens || r->n_tokens >= eng->args.max_model_len))
        r->finish = VM_FINISH_LENGTH;
    // the stop token itself is not detokenized unless asked to be
    bool decode = p->detokenize && eng->codec && !(stop_tok && !p->include_stop_str_in_output);
    int hit = vm_seq_detok_add(&r->detok, eng->codec, t, p->skip_special_tokens, decode,
                           (const char *const *)r->stop, p->n_stop, p->include_stop_str_in_output);
    if (hit >= 0) { r->finish = VM_FINISH_STOP; r->stop_str_index = hit; r->stop_token = -1; }
}

// ---------------------------------------------------------------- sampling

// Sampler threads: VLLM_METAL_SAMPLER_THREADS, else the online cores (at most 16).
static int sampler_threads_wanted(void) {
    const char *s = getenv("VLLM_METAL_SAMPLER_THREADS");
    if (s && *s) { int n = atoi(s); return n < 1 ? 1 : n > 256 ? 256 : n; }
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    return c < 1 ? 1 : c > 16 ? 16 : (int)c;
}

// Per-thread scratch for threads [0, n); thread 0 uses the engine's own. Returns
// how many threads have it.
static int sampler_scratch(vm_engine *eng, int n) {
    if (n <= eng->n_tctx) return n;
    vm_sample_ctx *c = realloc(eng->tctx, (size_t)n * sizeof *c);
    if (!c) return eng->n_tctx;
    eng->tctx = c;
    float **l = realloc(eng->tlsm, (size_t)n * sizeof *l);
    if (!l) return eng->n_tctx;
    eng->tlsm = l;
    while (eng->n_tctx < n) {
        int i = eng->n_tctx;
        if (i == 0) { c[0] = eng->sctx; l[0] = eng->lsm; eng->n_tctx = 1; continue; }
        c[i] = eng->sctx;
        c[i].idx = malloc((size_t)eng->vocab_size * sizeof(int));
        l[i] = malloc((size_t)eng->vocab_size * sizeof(float));
        if (!c[i].idx || !l[i]) { free(c[i].idx); free(l[i]); break; }
        eng->n_tctx++;
    }
    return eng->n_tctx;
}

static void sample_one(void *ctx, int j, int thread) {
    vm_engine *eng = ctx;
    sample_job *job = &eng->jobs[j];
    vm_request *r = job->r;
    const int V = eng->vocab_size;
    float *lsm = thread == 0 ? eng->lsm : eng->tlsm[thread];
    vm_sample_ctx *sc = thread == 0 ? &eng->sctx : &eng->tctx[thread];
    if (r->sp.logprobs >= 0) vm_log_softmax(job->logits, V, lsm);
    job->token = vm_sample_row(sc, r, job->logits);
    if (r->sp.logprobs >= 0 && vm_grow((void **)&r->lp, &r->cap_lp, r->n_lp + 1, sizeof *r->lp) == 0) {
        vm_logprobs_fill(lsm, V, job->token, r->sp.logprobs, &r->lp[r->n_lp]);
        r->n_lp++;
    }
}

// Samples eng->jobs[0, n): on one thread for little work, else on the pool.
static void sample_rows(vm_engine *eng, int n) {
    int threads = 1;
    if (n >= 2 && (size_t)n * (size_t)eng->vocab_size >= 65536) {
        if (!eng->par_tried) {
            eng->par_tried = true;
            eng->par_max = sampler_threads_wanted();
            if (eng->par_max > 1) eng->par = vm_par_create(eng->par_max);
            eng->par_max = vm_par_threads(eng->par);
        }
        threads = sampler_scratch(eng, VM_MIN(n, eng->par_max));
    }
    vm_par_run(eng->par, n, threads, sample_one, eng);
}

// ---------------------------------------------------------------- the step

static void take_inbox_and_aborts(vm_engine *eng) {
    pthread_mutex_lock(&eng->mu);
    for (int i = 0; i < eng->n_inbox; i++) {
        vm_request *r = eng->inbox[i];
        if (vm_grow((void **)&eng->live, &eng->cap_live, eng->n_live + 1, sizeof *eng->live) == 0)
            eng->live[eng->n_live++] = r;
        if (!r->mm) vm_scheduler_add(eng->sched, r);
    }
    int n_taken = eng->n_inbox;
    vm_request **taken = n_taken ? malloc((size_t)n_taken * sizeof *taken) : NULL;
    if (taken) memcpy(taken, eng->inbox, (size_t)n_taken * sizeof *taken);
    eng->n_inbox = 0;
    pthread_mutex_unlock(&eng->mu);
    // requests with images: the vision tower runs once per image (shared by the
    // request's n sequences); the features stay with the request until it ends
    for (int i = 0; i < n_taken; i++) {
        vm_request *r = taken ? taken[i] : NULL;
        if (!r || !r->mm) continue;
        vm_err ve = {{0}};
        if (vm_mm_encode(r->mm, &eng->exec, &ve)) { finish_request(eng, r, VM_FINISH_ERROR, ve.msg); continue; }
        for (int k = 0; k < r->mm->n_images; k++) r->image_features[k] = r->mm->images[k].features;
        vm_scheduler_add(eng->sched, r);
    }
    free(taken);
    for (int i = eng->n_live - 1; i >= 0; i--) {
        if (i >= eng->n_live) continue;
        vm_request *r = eng->live[i];
        pthread_mutex_lock(&r->stream->mu);
        bool ab = r->stream->abort_requested;
        pthread_mutex_unlock(&r->stream->mu);
        if (ab) finish_request(eng, r, VM_FINISH_ABORT, NULL);
    }
}

int vm_engine_has_work(vm_engine *eng) {
    pthread_mutex_lock(&eng->mu);
    int w = eng->n_inbox > 0 || eng->n_live > 0;
    pthread_mutex_unlock(&eng->mu);
    return w;
}

int vm_engine_step(vm_engine *eng, vm_err *e) {
    pthread_mutex_lock(&eng->step_mu);
    const bool prof = vm_prof_on();
    double t_step = prof ? vm_prof_now() : 0, t_mark = t_step;
    take_inbox_and_aborts(eng);
    vm_scheduler *s = eng->sched;
    int n = vm_scheduler_schedule(s);
    if (prof) { double t = vm_prof_now(); vm_prof_add(VM_PROF_SCHED, t - t_mark); t_mark = t; }
    if (n == 0) {
        publish_stats(eng);   // (aborts may have freed blocks)
        pthread_mutex_unlock(&eng->step_mu);
        return 0;
    }
    if (vm_grow((void **)&eng->seqs, &eng->cap_seqs, n, sizeof *eng->seqs) ||
        vm_grow((void **)&eng->jobs, &eng->cap_jobs, n, sizeof *eng->jobs)) {
        publish_stats(eng);
        pthread_mutex_unlock(&eng->step_mu);
        return vm_errf(e, "out of memory");
    }
    double now = vm_now_seconds();
    uint64_t prompt_tokens = 0;
    int n_step_tokens = 0;
    bool want_ids = eng->device_sample;
    for (int i = 0; i < n; i++) {
        vm_scheduled *st = &s->step[i];
        vm_request *r = st->req;
        n_step_tokens += st->n_new;
        if (r->scheduled_time == 0) r->scheduled_time = now;
        int end = st->start + st->n_new;
        int from = end == r->n_tokens ? end - 1 : end; // last row samples
        if (r->sp.prompt_logprobs >= 0 && !r->plp_sent && st->start < r->n_prompt - 1) from = st->start;
        eng->seqs[i] = (vm_runner_seq){ .tokens = r->tokens, .start = st->start, .n_new = st->n_new,
                                        .blocks = r->blocks, .n_blocks = r->n_blocks, .logits_from = from,
                                        .decode_from = r->n_prompt >= 2 ? r->n_prompt : 0 };
        if (r->mm) {
            eng->seqs[i].mrope_pos = r->mrope_pos; eng->seqs[i].n_mrope = r->n_prompt;
            eng->seqs[i].rope_delta = r->rope_delta;
            eng->seqs[i].n_images = r->mm->n_images;
            eng->seqs[i].image_offset = r->image_offset; eng->seqs[i].image_tokens = r->image_tokens;
            eng->seqs[i].image_features = r->image_features;
        }
        if (st->start < r->n_prompt) prompt_tokens += (uint64_t)(VM_MIN(end, r->n_prompt) - st->start);
        if (from < end && !(from == end - 1 && end == r->n_tokens && vm_sample_is_plain(r, eng->vocab_size)))
            want_ids = false;
    }
    // Ids only when every row that needs logits is a plain draw: the backend
    // draws them (the uniform from each request's own generator, as on the host).
    // (grown first: no generator is drawn from unless the step goes this way)
    if (want_ids && vm_grow((void **)&eng->sparams, &eng->cap_sparams, n, sizeof *eng->sparams)) want_ids = false;
    if (want_ids)
        for (int i = 0, row = 0; i < n; i++)   // at most one row per sequence: its last
            if (eng->seqs[i].logits_from < s->step[i].start + s->step[i].n_new)
                vm_sample_param_make(s->step[i].req, &eng->sparams[row++]);
    if (prof) vm_prof_add(VM_PROF_PACK, vm_prof_now() - t_mark);
    float *logits = NULL;
    int32_t *ids = NULL;
    int n_logits = 0;
    vm_err fe;
    if (vm_model_runner_execute(eng->runner, &eng->exec, eng->seqs, n, want_ids, eng->sparams, &logits, &ids,
                                &n_logits, &fe)) {
        // the step's requests cannot go on
        for (int i = n - 1; i >= 0; i--) finish_request(eng, s->step[i].req, VM_FINISH_ERROR, fe.msg);
        s->n_step = 0;
        publish_stats(eng);
        pthread_mutex_unlock(&eng->step_mu);
        return vm_errf(e, "%s", fe.msg);
    }
    vm_scheduler_update(s);
    if (prof) t_mark = vm_prof_now();

    const int V = eng->vocab_size;
    int row = 0;
    uint64_t gen = 0;
    vm_request **done = malloc((size_t)n * sizeof *done);
    int n_done = 0, n_sampled = 0;
    double t_sample = 0;
    now = vm_now_seconds();
    // prompt logprobs (in order, on this thread), and the rows that sample
    for (int i = 0; i < n; i++) {
        vm_scheduled *st = &s->step[i];
        vm_request *r = st->req;
        int end = st->start + st->n_new;
        int from = eng->seqs[i].logits_from;
        for (int p = from; p < end; p++, row++) {
            if (ids) {   // want_ids: this row sampled on the backend
                eng->jobs[n_sampled++] = (sample_job){ .r = r, .token = ids[row] };
                continue;
            }
            float *lg = logits + (size_t)row * V;
            if (p + 1 < r->n_prompt && r->sp.prompt_logprobs >= 0 && !r->plp_sent) { // prompt logprobs
                if (!r->plp) {
                    r->plp = calloc((size_t)r->n_prompt, sizeof *r->plp);
                    r->n_plp = r->n_prompt;
                }
                if (r->plp) {
                    vm_log_softmax(lg, V, eng->lsm);
                    free(r->plp[p + 1].entries);
                    vm_logprobs_fill(eng->lsm, V, r->tokens[p + 1], r->sp.prompt_logprobs, &r->plp[p + 1]);
                }
            }
            if (p == end - 1 && end == r->n_tokens) // this row samples the next token
                eng->jobs[n_sampled++] = (sample_job){ .r = r, .logits = lg };
        }
    }
    // sampling: rows are independent (each request draws from its own generator),
    // so they run on the sampler threads in any order with the same results
    double t0 = prof ? vm_prof_now() : 0;
    if (!ids) sample_rows(eng, n_sampled);
    if (prof) t_sample = vm_prof_now() - t0;
    for (int j = 0; j < n_sampled; j++) {
        vm_request *r = eng->jobs[j].r;
        accept_token(eng, r, eng->jobs[j].token, now);
        gen++;
        if (r->finish != VM_FINISH_NONE) { if (done) done[n_done++] = r; }
        else {
            vm_request_output *o = make_output(eng, r);
            if (o) stream_push(r->stream, o);
        }
    }
    for (int i = 0; i < n_done; i++) finish_request(eng, done[i], done[i]->finish, NULL);
    free(done);
    if (prof) {
        double t = vm_prof_now();
        vm_prof_add(VM_PROF_SAMPLE, t_sample);
        vm_prof_add(VM_PROF_OUTPUT, t - t_mark - t_sample);
        vm_prof_add(VM_PROF_STEP, t - t_step);
        vm_prof_step(t_step, t, n_step_tokens, n_sampled);
    }
    pthread_mutex_lock(&eng->mu);
    eng->stats.num_steps++;
    eng->stats.prompt_tokens += prompt_tokens;
    eng->stats.generation_tokens += gen;
    pthread_mutex_unlock(&eng->mu);
    publish_stats(eng);
    pthread_mutex_unlock(&eng->step_mu);
    return n;
}

// ---------------------------------------------------------------- thread

static void *engine_thread(void *arg) {
    vm_engine *eng = arg;
    for (;;) {
        pthread_mutex_lock(&eng->mu);
        while (!eng->stop && eng->n_inbox == 0 && eng->n_live == 0)
            pthread_cond_wait(&eng->work_cv, &eng->mu);
        bool stop = eng->stop;
        pthread_mutex_unlock(&eng->mu);
        if (stop) break;
        vm_err e;
        int n = vm_engine_step(eng, &e);
        if (n < 0) fprintf(stderr, "vllm-metal engine: step failed: %s\n", e.msg);
        if (n == 0) { // work that cannot be scheduled yet (aborts still apply): wait a little
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += 2000000;
            if (until.tv_nsec >= 1000000000) { until.tv_sec++; until.tv_nsec -= 1000000000; }
            pthread_mutex_lock(&eng->mu);
            if (!eng->stop && eng->n_inbox == 0) pthread_cond_timedwait(&eng->work_cv, &eng->mu, &until);
            pthread_mutex_unlock(&eng->mu);
        }
    }
    return NULL;
}

bool vm_engine_is_threaded(const vm_engine *eng) { return eng->thread_running; }

int vm_engine_start(vm_engine *eng, vm_err *e) {
    if (eng->thread_running) return 0;
    eng->stop = false;
    if (pthread_create(&eng->thread, NULL, engine_thread, eng)) return vm_errf(e, "cannot start the engine thread");
    eng->thread_running = true;
    return 0;
}

void vm_engine_stop(vm_engine *eng) {
    if (!eng->thread_running) return;
    pthread_mutex_lock(&eng->mu);
    eng->stop = true;
    pthread_cond_broadcast(&eng->work_cv);
    pthread_mutex_unlock(&eng->mu);
    pthread_join(eng->thread, NULL);
    eng->thread_running = false;
}

void vm_engine_get_stats(vm_engine *eng, vm_engine_stats *st) {
    pthread_mutex_lock(&eng->mu);
    *st = eng->stats;
    st->num_waiting += eng->n_inbox;
    pthread_mutex_unlock(&eng->mu);
}
