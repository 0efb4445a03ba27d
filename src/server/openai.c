// openai.c - the OpenAI API over the engine: request validation (types,
// ranges, lengths -> 400 with a message naming the field), prompt building
// (chat template / prompt strings / token ids), submission, and the
// response JSON (whole or as SSE chunks) in vLLM's shapes.
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "server_internal.h"

#define MAX_PROMPTS 1024
#define MAX_N 256
#define MAX_STOPS 64

// ---------------------------------------------------------------- errors

const char *srv_error_type(int status) {
    switch (status) {
    case 400: return "BadRequestError";
    case 401: return "AuthenticationError";
    case 403: return "PermissionDeniedError";
    case 404: return "NotFoundError";
    case 405: return "MethodNotAllowed";
    case 413: return "RequestEntityTooLarge";
    case 503: return "ServiceUnavailableError";
    default: return "InternalServerError";
    }
}

int srv_fail(srv_error *err, int status, const char *param, const char *fmt, ...) {
    if (err) {
        err->status = status;
        err->type = srv_error_type(status);
        err->param = param;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

json_t *srv_error_json(const srv_error *err) {
    return json_pack("{s:{s:s,s:s,s:o,s:i}}", "error",
                     "message", err->msg, "type", err->type ? err->type : srv_error_type(err->status),
                     "param", err->param ? json_string(err->param) : json_null(),
                     "code", err->status);
}

// ---------------------------------------------------------------- field readers
// Each returns 1 when the field is present (and valid), 0 when absent or null,
// -1 (err filled) when it has the wrong type.

static json_t *field(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    return json_is_null(v) ? NULL : v;
}

static int get_int(json_t *o, const char *k, long long *out, srv_error *err) {
    json_t *v = field(o, k);
    if (!v) return 0;
    if (json_is_integer(v)) { *out = json_integer_value(v); return 1; }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d == floor(d) && fabs(d) < 9e15) { *out = (long long)d; return 1; }
    }
    return srv_fail(err, 400, k, "'%s' must be an integer", k);
}

static int get_int_range(json_t *o, const char *k, int *out, long long lo, long long hi,
                         srv_error *err) {
    long long x;
    int rc = get_int(o, k, &x, err);
    if (rc <= 0) return rc;
    if (x < lo || x > hi)
        return srv_fail(err, 400, k, "'%s' must be between %lld and %lld, got %lld", k, lo, hi, x);
    *out = (int)x;
    return 1;
}

static int get_num(json_t *o, const char *k, double *out, srv_error *err) {
    json_t *v = field(o, k);
    if (!v) return 0;
    if (json_is_number(v)) { *out = json_number_value(v); return 1; }
    return srv_fail(err, 400, k, "'%s' must be a number", k);
}

static int get_float(json_t *o, const char *k, float *out, srv_error *err) {
    double d = 0;
    int rc = get_num(o, k, &d, err);
    if (rc == 1) {
        if (!isfinite(d)) return srv_fail(err, 400, k, "'%s' must be finite", k);
        *out = (float)d;
    }
    return rc;
}

static int get_bool(json_t *o, const char *k, bool *out, srv_error *err) {
    json_t *v = field(o, k);
    if (!v) return 0;
    if (json_is_boolean(v)) { *out = json_is_true(v); return 1; }
    return srv_fail(err, 400, k, "'%s' must be a boolean", k);
}

static int get_flag(json_t *o, const char *k, int *out, srv_error *err) {
    bool b;
    int rc = get_bool(o, k, &b, err);
    if (rc == 1) *out = b;
    return rc;
}

// [int, ...] -> malloc'ed int32 array
static int get_ids(json_t *v, const char *k, int32_t **ids, int *n, srv_error *err) {
    if (!json_is_array(v)) return srv_fail(err, 400, k, "'%s' must be a list of integers", k);
    size_t cnt = json_array_size(v);
    int32_t *a = malloc((cnt ? cnt : 1) * sizeof *a);
    if (!a) return srv_fail(err, 500, NULL, "out of memory");
    size_t i; json_t *it;
    json_array_foreach(v, i, it) {
        if (!json_is_integer(it) || json_integer_value(it) < 0 || json_integer_value(it) > INT32_MAX) {
            free(a);
            return srv_fail(err, 400, k, "'%s' must be a list of non-negative integers", k);
        }
        a[i] = (int32_t)json_integer_value(it);
    }
    *ids = a; *n = (int)cnt;
    return 1;
}

// ---------------------------------------------------------------- small helpers

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void make_id(vm_server *s, const char *prefix, char *out, size_t cap) {
    uint64_t x = atomic_fetch_add(&s->next_id, 1) ^ ((uint64_t)time(NULL) << 20) ^
                 (uint64_t)(vm_now_seconds() * 1e9);
    uint64_t a = splitmix64(&x), b = splitmix64(&x);
    snprintf(out, cap, "%s%016llx%016llx", prefix, (unsigned long long)a, (unsigned long long)b);
}

// JSON cannot carry -inf; vLLM writes -9999.0 for it.
static json_t *jlogprob(float lp) { return json_real(isfinite(lp) ? lp : -9999.0); }

// The text of one token (special tokens included), for logprobs.
static char *token_str(vm_server *s, int32_t id) {
    vm_text_codec *c = vm_engine_codec(s->eng);
    char *t = c && c->decode ? c->decode(c->ctx, &id, 1, 0) : NULL;
    if (!t) {
        t = malloc(24);
        if (t) snprintf(t, 24, "token_id:%d", id);
    }
    return t;
}

static json_t *utf8_bytes(const char *t) {
    json_t *a = json_array();
    for (const unsigned char *p = (const unsigned char *)t; *p; p++) json_array_append_new(a, json_integer(*p));
    return a;
}

// A string that may hold invalid UTF-8 (partial characters) -> JSON string.
static json_t *jtext(const char *t, size_t n) {
    json_t *v = json_stringn(t, n);
    if (v) return v;
    char *o = malloc(3 * n + 1), *q = o; // replace bad bytes with U+FFFD
    if (!o) return json_string("");
    const unsigned char *p = (const unsigned char *)t, *end = p + n;
    while (p < end) {
        int len = *p < 0x80 ? 1 : (*p >> 5) == 6 ? 2 : (*p >> 4) == 14 ? 3 : (*p >> 3) == 30 ? 4 : 0;
        bool ok = len > 0 && p + len <= end;
        for (int i = 1; ok && i < len; i++) ok = (p[i] & 0xC0) == 0x80;
        if (ok && (v = json_stringn((const char *)p, (size_t)len))) {
            json_decref(v);
            memcpy(q, p, (size_t)len); q += len; p += len;
        } else {
            memcpy(q, "\xEF\xBF\xBD", 3); q += 3; p++;
        }
    }
    v = json_stringn(o, (size_t)(q - o));
    free(o);
    return v ? v : json_string("");
}

// ---------------------------------------------------------------- request state

typedef struct seq_state {
    char *text; size_t len, cap;       // collected text (non-streaming)
    int n_tokens;
    json_t *lp_chat;                   // chat: [{token, logprob, bytes, top_logprobs}]
    json_t *lp_tokens, *lp_token_lps, *lp_top, *lp_offsets; // completions
    size_t text_offset;
    vm_finish_reason finish;
    char *stop_str; int32_t stop_token_id;
    bool seen_token, finished;
    double last_token_time;
} seq_state;

typedef struct prompt_state {
    vm_stream *stream;
    char *echo_text;                   // completions with echo
    int n_prompt, n_cached;
    bool done;
} prompt_state;

struct srv_request {
    vm_server *s;
    srv_kind kind;
    char id[80];
    long created;
    bool stream, include_usage, continuous_usage, echo;
    int n;
    int logprobs;                      // -1 none, else top-k count
    int n_prompts;
    prompt_state *prompts;
    seq_state *seqs;                   // [n_prompts * n]
    json_t *prompt_logprobs_out;       // completions/chat prompt_logprobs (first prompt)
    int want_prompt_logprobs;
    double t_start;
    bool (*gone)(void *ctx); void *gone_ctx;
    double last_check;
    // streaming
    int phase, cur;
    double last_send;
};

static seq_state *seq_of(srv_request *r, int prompt, int index) {
    if (index < 0 || index >= r->n) index = 0;
    return &r->seqs[prompt * r->n + index];
}

static int text_append(seq_state *q, const char *t) {
    return vm_text_append(&q->text, &q->len, &q->cap, t, strlen(t));
}

void srv_request_free(srv_request *r) {
    if (!r) return;
    if (r->seqs && r->prompts) // sequences given up before they finished count as aborted
        for (int p = 0; p < r->n_prompts; p++)
            for (int i = 0; i < r->n; i++)
                if (r->prompts[p].stream && !seq_of(r, p, i)->finished)
                    srv_metrics_finish(&r->s->metrics, VM_FINISH_ABORT, vm_now_seconds() - r->t_start);
    for (int i = 0; i < r->n_prompts; i++) {
        if (r->prompts[i].stream) vm_stream_release(r->prompts[i].stream);
        free(r->prompts[i].echo_text);
    }
    if (r->seqs)
        for (int i = 0; i < r->n_prompts * r->n; i++) {
            seq_state *q = &r->seqs[i];
            free(q->text); free(q->stop_str);
            json_decref(q->lp_chat); json_decref(q->lp_tokens); json_decref(q->lp_token_lps);
            json_decref(q->lp_top); json_decref(q->lp_offsets);
        }
    json_decref(r->prompt_logprobs_out);
    free(r->prompts);
    free(r->seqs);
    atomic_fetch_sub(&r->s->active_streams, 1);
    free(r);
}

bool srv_request_streaming(const srv_request *r) { return r->stream; }

void srv_request_set_watch(srv_request *r, bool (*gone)(void *ctx), void *ctx) {
    r->gone = gone; r->gone_ctx = ctx;
}

// ---------------------------------------------------------------- parsing

typedef struct parsed_prompt {
    int32_t *ids; int n;
    char *text;                       // for echo
    vm_mm_inputs *mm;                 // chat images (NULL: none)
} parsed_prompt;

static void free_prompts(parsed_prompt *p, int n) {
    if (!p) return;
    for (int i = 0; i < n; i++) { free(p[i].ids); free(p[i].text); vm_mm_inputs_release(p[i].mm); }
    free(p);
}

static int encode_text(vm_server *s, const char *text, int add_special, int32_t **ids, int *n,
                       srv_error *err) {
    vm_text_codec *c = vm_engine_codec(s->eng);
    if (!c || !c->encode) return srv_fail(err, 400, "prompt", "this model has no tokenizer; send token ids");
    vm_err e = {{0}};
    int32_t *out = NULL;
    int count = 0;
    if (c->encode(c->ctx, text, add_special, &out, &count, &e) != 0)
        return srv_fail(err, 400, "prompt", "cannot tokenize the prompt: %s", e.msg);
    *ids = out; *n = count;
    return 0;
}

static int check_ids(vm_server *s, const int32_t *ids, int n, const char *k, srv_error *err) {
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->vocab_size)
            return srv_fail(err, 400, k, "token id %d is out of vocabulary (size %d)", ids[i],
                            s->vocab_size);
    return 0;
}

// completions "prompt": str | [str] | [int] | [[int]]
static int parse_completion_prompts(vm_server *s, json_t *body, bool add_special, parsed_prompt **out,
                                    int *n_out, srv_error *err) {
    json_t *p = field(body, "prompt");
    if (!p) return srv_fail(err, 400, "prompt", "'prompt' is required");
    int n = 1;
    bool is_list = json_is_array(p);
    if (is_list) {
        n = (int)json_array_size(p);
        if (n == 0) return srv_fail(err, 400, "prompt", "'prompt' must not be empty");
        if (json_is_integer(json_array_get(p, 0))) n = 1; // one prompt of ids
        if (n > MAX_PROMPTS) return srv_fail(err, 400, "prompt", "at most %d prompts per request", MAX_PROMPTS);
    } else if (!json_is_string(p)) {
        return srv_fail(err, 400, "prompt", "'prompt' must be a string, a list of strings or a list of token ids");
    }
    parsed_prompt *pp = calloc((size_t)n, sizeof *pp);
    if (!pp) return srv_fail(err, 500, NULL, "out of memory");
    for (int i = 0; i < n; i++) {
        json_t *item = !is_list ? p : json_is_integer(json_array_get(p, 0)) ? p : json_array_get(p, (size_t)i);
        if (json_is_string(item)) {
            if (json_string_length(item) == 0) {
                srv_fail(err, 400, "prompt", "'prompt' must not be an empty string");
                goto fail;
            }
            if (encode_text(s, json_string_value(item), add_special, &pp[i].ids, &pp[i].n, err) != 0) goto fail;
            pp[i].text = strdup(json_string_value(item));
        } else if (json_is_array(item)) {
            if (get_ids(item, "prompt", &pp[i].ids, &pp[i].n, err) != 1) goto fail;
            if (check_ids(s, pp[i].ids, pp[i].n, "prompt", err) != 0) goto fail;
        } else {
            srv_fail(err, 400, "prompt", "'prompt' must be a string, a list of strings or a list of token ids");
            goto fail;
        }
        if (pp[i].n == 0) { srv_fail(err, 400, "prompt", "the prompt is empty"); goto fail; }
    }
    *out = pp; *n_out = n;
    return 0;
fail:
    free_prompts(pp, n);
    return -1;
}

// Fields shared by chat and completions -> sampling params. String/array
// values stay borrowed from `body`, which outlives the submit.
typedef struct parsed_params {
    vm_sampling_params sp;
    const char *stops[MAX_STOPS];
    int32_t *stop_ids;
    int32_t *bias_ids; float *bias_vals;
    int32_t *allowed;
    const char **bad_words;
    bool max_tokens_given;
    const char *max_field;             // the field that gave max_tokens
} parsed_params;

static void params_free(parsed_params *pp) {
    free(pp->stop_ids); free(pp->bias_ids); free(pp->bias_vals); free(pp->allowed);
    free(pp->bad_words);
}

// The request field an engine validation message starts with ("temperature
// must be ...") as a static string for the error's "param", or NULL.
static const char *param_named_in(const char *msg) {
    static const char *const fields[] = {"n", "temperature", "top_p", "top_k", "min_p", "presence_penalty",
                                         "frequency_penalty", "repetition_penalty", "max_tokens", "min_tokens",
                                         "logprobs", "prompt_logprobs", "stop", "stop_token_ids", "seed",
                                         "logit_bias", "allowed_token_ids", "bad_words"};
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        size_t k = strlen(fields[i]);
        if (!strncmp(msg, fields[i], k) && (msg[k] == ' ' || msg[k] == ':' || msg[k] == '\''))
            return fields[i];
    }
    return NULL;
}

static int parse_common(vm_server *s, srv_kind kind, json_t *b, parsed_params *pp, srv_request *r,
                        srv_error *err) {
    vm_sampling_params *sp = &pp->sp;
    vm_sampling_params_init(sp);
    // vLLM's OpenAI defaults: temperature 1, top_p 1
    if (get_int_range(b, "n", &sp->n, 1, MAX_N, err) < 0) return -1;
    long long best_of;
    int rc = get_int(b, "best_of", &best_of, err);
    if (rc < 0) return -1;
    if (rc == 1 && best_of != sp->n)
        return srv_fail(err, 400, "best_of", "best_of must equal n (beam search and best_of > n are not supported)");
    if (get_float(b, "temperature", &sp->temperature, err) < 0) return -1;
    if (get_float(b, "top_p", &sp->top_p, err) < 0) return -1;
    if (get_int_range(b, "top_k", &sp->top_k, -1, INT32_MAX, err) < 0) return -1;
    if (get_float(b, "min_p", &sp->min_p, err) < 0) return -1;
    if (get_float(b, "presence_penalty", &sp->presence_penalty, err) < 0) return -1;
    if (get_float(b, "frequency_penalty", &sp->frequency_penalty, err) < 0) return -1;
    if (get_float(b, "repetition_penalty", &sp->repetition_penalty, err) < 0) return -1;
    long long seed;
    if ((rc = get_int(b, "seed", &seed, err)) < 0) return -1;
    if (rc == 1) { sp->has_seed = 1; sp->seed = (uint64_t)seed; }
    else if (s->cfg.has_seed) {
        sp->has_seed = 1;
        sp->seed = s->cfg.seed + atomic_fetch_add(&s->next_seed, 1);
    }
    int max_tokens = -1;
    const char *max_field = "max_tokens";
    if ((rc = get_int_range(b, "max_tokens", &max_tokens, INT32_MIN, INT32_MAX, err)) < 0) return -1;
    if (rc == 1) pp->max_tokens_given = true;
    if (kind == SRV_CHAT) {
        if ((rc = get_int_range(b, "max_completion_tokens", &max_tokens, INT32_MIN, INT32_MAX, err)) < 0) return -1;
        if (rc == 1) { pp->max_tokens_given = true; max_field = "max_completion_tokens"; }
    }
    pp->max_field = max_field;
    if (pp->max_tokens_given && max_tokens < 1)
        return srv_fail(err, 400, max_field, "%s must be at least 1, got %d.", max_field, max_tokens);
    sp->max_tokens = max_tokens;
    if (get_int_range(b, "min_tokens", &sp->min_tokens, 0, INT32_MAX, err) < 0) return -1;
    if (get_flag(b, "ignore_eos", &sp->ignore_eos, err) < 0) return -1;
    if (get_flag(b, "skip_special_tokens", &sp->skip_special_tokens, err) < 0) return -1;
    if (get_flag(b, "include_stop_str_in_output", &sp->include_stop_str_in_output, err) < 0) return -1;
    // stop: str | [str]
    json_t *stop = field(b, "stop");
    if (stop) {
        if (json_is_string(stop)) {
            if (json_string_length(stop) > 0) pp->stops[sp->n_stop++] = json_string_value(stop);
        } else if (json_is_array(stop)) {
            if (json_array_size(stop) > MAX_STOPS)
                return srv_fail(err, 400, "stop", "at most %d stop strings", MAX_STOPS);
            size_t i; json_t *it;
            json_array_foreach(stop, i, it) {
                if (!json_is_string(it)) return srv_fail(err, 400, "stop", "'stop' must be a string or a list of strings");
                if (json_string_length(it) > 0) pp->stops[sp->n_stop++] = json_string_value(it);
            }
        } else {
            return srv_fail(err, 400, "stop", "'stop' must be a string or a list of strings");
        }
        sp->stop = pp->stops;
    }
    json_t *v;
    if ((v = field(b, "stop_token_ids"))) {
        if (get_ids(v, "stop_token_ids", &pp->stop_ids, &sp->n_stop_token_ids, err) != 1) return -1;
        sp->stop_token_ids = pp->stop_ids;
    }
    if ((v = field(b, "allowed_token_ids"))) {
        if (get_ids(v, "allowed_token_ids", &pp->allowed, &sp->n_allowed_token_ids, err) != 1) return -1;
        if (check_ids(s, pp->allowed, sp->n_allowed_token_ids, "allowed_token_ids", err) != 0) return -1;
        sp->allowed_token_ids = pp->allowed;
    }
    if ((v = field(b, "logit_bias"))) {
        if (!json_is_object(v)) return srv_fail(err, 400, "logit_bias", "'logit_bias' must be an object {token_id: bias}");
        size_t cnt = json_object_size(v);
        pp->bias_ids = malloc((cnt + 1) * sizeof *pp->bias_ids);
        pp->bias_vals = malloc((cnt + 1) * sizeof *pp->bias_vals);
        if (!pp->bias_ids || !pp->bias_vals) return srv_fail(err, 500, NULL, "out of memory");
        const char *key; json_t *val;
        json_object_foreach(v, key, val) {
            char *end;
            long id = strtol(key, &end, 10);
            if (end == key || *end || id < 0 || id >= s->vocab_size)
                return srv_fail(err, 400, "logit_bias", "logit_bias key '%s' is not a token id in the vocabulary", key);
            if (!json_is_number(val)) return srv_fail(err, 400, "logit_bias", "logit_bias values must be numbers");
            double bias = json_number_value(val);
            if (bias < -100 || bias > 100) bias = bias < 0 ? -100 : 100; // OpenAI clamps to [-100, 100]
            pp->bias_ids[sp->n_logit_bias] = (int32_t)id;
            pp->bias_vals[sp->n_logit_bias++] = (float)bias;
        }
        sp->logit_bias_ids = pp->bias_ids; sp->logit_bias_values = pp->bias_vals;
    }
    if ((v = field(b, "bad_words"))) {
        if (!json_is_array(v)) return srv_fail(err, 400, "bad_words", "'bad_words' must be a list of strings");
        pp->bad_words = malloc((json_array_size(v) + 1) * sizeof *pp->bad_words);
        if (!pp->bad_words) return srv_fail(err, 500, NULL, "out of memory");
        size_t i; json_t *it;
        json_array_foreach(v, i, it) {
            if (!json_is_string(it)) return srv_fail(err, 400, "bad_words", "'bad_words' must be a list of strings");
            pp->bad_words[sp->n_bad_words++] = json_string_value(it);
        }
        sp->bad_words = pp->bad_words;
    }
    // logprobs
    if (kind == SRV_CHAT) {
        bool lp = false;
        int top = -1;
        if (get_bool(b, "logprobs", &lp, err) < 0) return -1;
        if (get_int_range(b, "top_logprobs", &top, INT32_MIN, INT32_MAX, err) < 0) return -1;
        if (top != -1 && (top < 0 || top > s->max_logprobs))
            return srv_fail(err, 400, "top_logprobs", "top_logprobs must be between 0 and %d, got %d",
                            s->max_logprobs, top);
        if (top > 0 && !lp)
            return srv_fail(err, 400, "top_logprobs", "when using `top_logprobs`, `logprobs` must be set to true.");
        sp->logprobs = lp ? (top > 0 ? top : 0) : -1;
    } else {
        int lp = -1;
        if ((rc = get_int_range(b, "logprobs", &lp, INT32_MIN, INT32_MAX, err)) < 0) return -1;
        if (rc == 1 && (lp < 0 || lp > s->max_logprobs))
            return srv_fail(err, 400, "logprobs", "logprobs must be between 0 and %d, got %d", s->max_logprobs, lp);
        sp->logprobs = lp;
    }
    r->logprobs = sp->logprobs;
    int plp = -1;
    if ((rc = get_int_range(b, "prompt_logprobs", &plp, INT32_MIN, INT32_MAX, err)) < 0) return -1;
    if (rc == 1 && (plp < 0 || plp > s->max_logprobs))
        return srv_fail(err, 400, "prompt_logprobs", "prompt_logprobs must be between 0 and %d, got %d",
                        s->max_logprobs, plp);
    sp->prompt_logprobs = plp;
    r->want_prompt_logprobs = plp >= 0;
    // stream
    bool stream = false;
    if (get_bool(b, "stream", &stream, err) < 0) return -1;
    r->stream = stream;
    json_t *so = field(b, "stream_options");
    if (so) {
        if (!json_is_object(so)) return srv_fail(err, 400, "stream_options", "'stream_options' must be an object");
        if (!stream) return srv_fail(err, 400, "stream_options", "Stream options can only be defined when `stream=True`.");
        bool iu = false, cu = false;
        if (get_bool(so, "include_usage", &iu, err) < 0) return -1;
        if (get_bool(so, "continuous_usage_stats", &cu, err) < 0) return -1;
        r->include_usage = iu; r->continuous_usage = cu;
    }
    if (kind == SRV_COMPLETION) {
        bool echo = false;
        if (get_bool(b, "echo", &echo, err) < 0) return -1;
        r->echo = echo;
        if (field(b, "suffix")) return srv_fail(err, 400, "suffix", "suffix is not currently supported");
    }
    if ((v = field(b, "response_format"))) {
        const char *type = json_string_value(json_object_get(v, "type"));
        if (!json_is_object(v) || !type)
            return srv_fail(err, 400, "response_format", "'response_format' must be an object with a 'type'");
        if (strcmp(type, "text"))
            return srv_fail(err, 400, "response_format", "response_format type '%s' is not supported", type);
    }
    if ((v = field(b, "user")) && !json_is_string(v)) return srv_fail(err, 400, "user", "'user' must be a string");
    vm_err e = {{0}};
    if (vm_sampling_params_validate(sp, s->vocab_size, s->max_logprobs, &e) != 0)
        return srv_fail(err, 400, param_named_in(e.msg), "%s", e.msg);
    r->n = sp->n;
    return 0;
}

static int check_model(vm_server *s, json_t *b, srv_error *err) {
    json_t *m = field(b, "model");
    if (!m) return 0;
    if (!json_is_string(m)) return srv_fail(err, 400, "model", "'model' must be a string");
    const char *name = json_string_value(m);
    if (!strcmp(name, s->model_name) || (s->model_root && !strcmp(name, s->model_root))) return 0;
    for (int i = 0; i < s->cfg.n_model_aliases; i++)
        if (!strcmp(name, s->cfg.model_aliases[i])) return 0;
    return srv_fail(err, 404, "model", "The model `%s` does not exist.", name);
}

static json_t *parse_body(const char *body, size_t len, srv_error *err) {
    if (!body || len == 0) { srv_fail(err, 400, NULL, "the request body is empty; expected a JSON object"); return NULL; }
    json_error_t je;
    json_t *b = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!b) {
        srv_fail(err, 400, NULL, "JSON decode error at line %d column %d: %s", je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(b)) {
        json_decref(b);
        srv_fail(err, 400, NULL, "the request body must be a JSON object");
        return NULL;
    }
    return b;
}

// The chat's images: fetched (data: / http(s) URLs), decoded and preprocessed;
// the prompt's image placeholders expanded to each image's token count.
static int chat_images(vm_server *s, json_t *urls, int32_t **ids, int *n, vm_mm_inputs **mm_out,
                       srv_error *err) {
    size_t k = json_array_size(urls);
    if (k == 0) return 0;
    if (!vm_engine_is_vlm(s->eng))
        return srv_fail(err, 400, "messages", "the model `%s` does not take images (it is not a "
                        "vision-language model); send text content only", s->model_name);
    if (k > 64) return srv_fail(err, 400, "messages", "at most 64 images per request, not %zu", k);
    vm_image_input *in = calloc(k, sizeof *in);
    void **bufs = calloc(k, sizeof *bufs);
    int rc = -1;
    vm_mm_inputs *mm = NULL;
    if (!in || !bufs) { srv_fail(err, 500, NULL, "out of memory"); goto done; }
    vm_image_fetch_opts fo;
    vm_image_fetch_defaults(&fo);
    for (size_t i = 0; i < k; i++) {
        vm_err fe = {{0}};
        size_t len = 0;
        if (vm_image_source_read(json_string_value(json_array_get(urls, i)), &fo, &bufs[i], &len, &fe)) {
            srv_fail(err, 400, "messages", "image %zu: %s", i + 1, fe.msg);
            goto done;
        }
        in[i] = (vm_image_input){ .bytes = bufs[i], .n_bytes = len };
    }
    vm_err e = {{0}};
    if (!(mm = vm_engine_prepare_images(s->eng, in, (int)k, 0, &e))) {
        srv_fail(err, 400, "messages", "%s", e.msg);
        goto done;
    }
    int32_t *exp; int n_exp;
    if (vm_mm_expand_prompt(mm, *ids, *n, &exp, &n_exp, &e)) {
        srv_fail(err, 400, "messages", "the chat template did not place the images: %s", e.msg);
        goto done;
    }
    free(*ids);
    *ids = exp; *n = n_exp;
    *mm_out = mm; mm = NULL;
    rc = 0;
done:
    for (size_t i = 0; bufs && i < k; i++) free(bufs[i]);
    free(bufs); free(in);
    vm_mm_inputs_release(mm);
    return rc;
}

static int render_chat_prompt(vm_server *s, json_t *b, bool default_add_special, char **text,
                              int32_t **ids, int *n, vm_mm_inputs **mm, srv_error *err) {
    bool add_gen = true, cont = false, add_special = default_add_special;
    if (get_bool(b, "add_generation_prompt", &add_gen, err) < 0) return -1;
    if (get_bool(b, "continue_final_message", &cont, err) < 0) return -1;
    if (get_bool(b, "add_special_tokens", &add_special, err) < 0) return -1;
    if (cont && !field(b, "add_generation_prompt")) add_gen = false;
    json_t *kwargs = field(b, "chat_template_kwargs");
    if (kwargs && !json_is_object(kwargs))
        return srv_fail(err, 400, "chat_template_kwargs", "'chat_template_kwargs' must be an object");
    json_t *tools = field(b, "tools");
    if (tools && !json_is_array(tools)) return srv_fail(err, 400, "tools", "'tools' must be a list");
    json_t *messages = json_object_get(b, "messages");
    if (!messages) return srv_fail(err, 400, "messages", "'messages' is required");
    json_t *images = json_array();
    char *t = srv_chat_render(&s->chat, messages, tools, add_gen, cont, kwargs, images, err);
    if (json_array_size(images) > 0 && !vm_engine_is_vlm(s->eng)) { // the reason, whatever the template did
        free(t);
        json_decref(images);
        return srv_fail(err, 400, "messages", "the model `%s` does not take images (it is not a "
                        "vision-language model); send text content only", s->model_name);
    }
    if (!t) { json_decref(images); return -1; }
    if (encode_text(s, t, add_special, ids, n, err) != 0) { free(t); json_decref(images); return -1; }
    if (chat_images(s, images, ids, n, mm, err) != 0) {
        free(t); free(*ids); *ids = NULL; *n = 0;
        json_decref(images);
        return -1;
    }
    json_decref(images);
    *text = t;
    return 0;
}

srv_request *srv_request_create(vm_server *s, srv_kind kind, const char *body, size_t len,
                                srv_error *err) {
    json_t *b = parse_body(body, len, err);
    if (!b) return NULL;
    srv_request *r = calloc(1, sizeof *r);
    parsed_params pp;
    memset(&pp, 0, sizeof pp);
    parsed_prompt *prompts = NULL;
    int n_prompts = 0;
    if (!r) { json_decref(b); srv_fail(err, 500, NULL, "out of memory"); return NULL; }
    atomic_fetch_add(&s->active_streams, 1);
    r->s = s;
    r->kind = kind;
    r->created = (long)time(NULL);
    r->t_start = vm_now_seconds();
    r->logprobs = -1;
    make_id(s, kind == SRV_CHAT ? "chatcmpl-" : "cmpl-", r->id, sizeof r->id);

    if (check_model(s, b, err) != 0) goto fail;
    if (parse_common(s, kind, b, &pp, r, err) != 0) goto fail;
    if (kind == SRV_CHAT) {
        json_t *tc = field(b, "tool_choice");
        if (tc && !(json_is_string(tc) && (!strcmp(json_string_value(tc), "none") ||
                                           !strcmp(json_string_value(tc), "auto")))) {
            srv_fail(err, 400, "tool_choice", "only tool_choice \"none\" and \"auto\" are supported");
            goto fail;
        }
        prompts = calloc(1, sizeof *prompts);
        if (!prompts) { srv_fail(err, 500, NULL, "out of memory"); goto fail; }
        n_prompts = 1;
        if (render_chat_prompt(s, b, false, &prompts[0].text, &prompts[0].ids, &prompts[0].n, &prompts[0].mm,
                               err) != 0) goto fail;
        if (prompts[0].n == 0) { srv_fail(err, 400, "messages", "the rendered prompt is empty"); goto fail; }
    } else {
        bool add_special = true;
        if (get_bool(b, "add_special_tokens", &add_special, err) < 0) goto fail;
        if (parse_completion_prompts(s, b, add_special, &prompts, &n_prompts, err) != 0) goto fail;
    }
    // lengths (vLLM's messages)
    const char *where = kind == SRV_CHAT ? "messages" : "prompt";
    for (int i = 0; i < n_prompts; i++) {
        int np = prompts[i].n;
        if (np >= s->max_model_len) {
            srv_fail(err, 400, where,
                     "This model's maximum context length is %d tokens. However, your request has "
                     "%d input tokens. Please reduce the length of the input messages.",
                     s->max_model_len, np);
            goto fail;
        }
        if (pp.max_tokens_given && (long long)np + pp.sp.max_tokens > s->max_model_len) {
            srv_fail(err, 400, pp.max_field,
                     "'max_tokens' or 'max_completion_tokens' is too large: %d. This model's maximum "
                     "context length is %d tokens and your request has %d input tokens (%d > %d - %d).",
                     pp.sp.max_tokens, s->max_model_len, np, pp.sp.max_tokens, s->max_model_len, np);
            goto fail;
        }
    }
    if ((long long)n_prompts * r->n > MAX_PROMPTS) {
        srv_fail(err, 400, "n", "a request may ask for at most %d sequences (prompts x n), not %lld",
                 MAX_PROMPTS, (long long)n_prompts * r->n);
        goto fail;
    }
    r->n_prompts = n_prompts;
    r->prompts = calloc((size_t)n_prompts, sizeof *r->prompts);
    r->seqs = calloc((size_t)n_prompts * (size_t)r->n, sizeof *r->seqs);
    if (!r->prompts || !r->seqs) { srv_fail(err, 500, NULL, "out of memory"); goto fail; }
    for (int i = 0; i < n_prompts * r->n; i++) r->seqs[i].stop_token_id = -1;
    for (int i = 0; i < n_prompts; i++) {
        vm_sampling_params sp = pp.sp;
        if (!pp.max_tokens_given) { // vLLM: completions default to 16, chat to the rest of the context
            sp.max_tokens = s->max_model_len - prompts[i].n;
            if (kind == SRV_COMPLETION && sp.max_tokens > 16) sp.max_tokens = 16;
        }
        vm_err e = {{0}};
        r->prompts[i].stream = vm_engine_submit_mm(s->eng, NULL, prompts[i].ids, prompts[i].n, prompts[i].mm,
                                                   &sp, &e);
        if (!r->prompts[i].stream) { srv_fail(err, 400, NULL, "%s", e.msg); goto fail; }
        r->prompts[i].n_prompt = prompts[i].n;
        if (r->echo) {
            if (prompts[i].text) { r->prompts[i].echo_text = prompts[i].text; prompts[i].text = NULL; }
            else {
                vm_text_codec *c = vm_engine_codec(s->eng);
                r->prompts[i].echo_text = c && c->decode ? c->decode(c->ctx, prompts[i].ids, prompts[i].n, 0) : NULL;
            }
        }
    }
    free_prompts(prompts, n_prompts);
    params_free(&pp);
    json_decref(b);
    return r;
fail:
    free_prompts(prompts, n_prompts);
    params_free(&pp);
    json_decref(b);
    srv_request_free(r);
    return NULL;
}

// ---------------------------------------------------------------- outputs

// Chat: {token, logprob, bytes, top_logprobs: [...]} per position.
static json_t *chat_logprob_entry(srv_request *r, const vm_position_logprobs *pl) {
    vm_server *s = r->s;
    if (pl->n <= 0) return NULL;
    char *t = token_str(s, pl->entries[0].token_id);
    json_t *top = json_array();
    for (int k = 1; k < pl->n && k <= r->logprobs; k++) {
        char *tt = token_str(s, pl->entries[k].token_id);
        json_array_append_new(top, json_pack("{s:o,s:o,s:o}", "token", json_string(tt ? tt : ""),
                                             "logprob", jlogprob(pl->entries[k].logprob),
                                             "bytes", utf8_bytes(tt ? tt : "")));
        free(tt);
    }
    json_t *o = json_pack("{s:o,s:o,s:o,s:o}", "token", jtext(t ? t : "", t ? strlen(t) : 0),
                          "logprob", jlogprob(pl->entries[0].logprob), "bytes", utf8_bytes(t ? t : ""),
                          "top_logprobs", top);
    free(t);
    return o;
}

// Completions: tokens / token_logprobs / top_logprobs / text_offset (appended).
static void completion_logprobs_add(srv_request *r, seq_state *q, const vm_position_logprobs *pl,
                                    json_t *tokens, json_t *lps, json_t *tops, json_t *offsets) {
    vm_server *s = r->s;
    if (pl->n <= 0) return;
    char *t = token_str(s, pl->entries[0].token_id);
    json_array_append_new(tokens, jtext(t ? t : "", t ? strlen(t) : 0));
    json_array_append_new(lps, jlogprob(pl->entries[0].logprob));
    json_array_append_new(offsets, json_integer((json_int_t)q->text_offset));
    q->text_offset += t ? strlen(t) : 0;
    json_t *top = json_object();
    for (int k = 0; k < pl->n && k <= r->logprobs; k++) {
        char *tt = k ? token_str(s, pl->entries[k].token_id) : NULL;
        const char *key = k ? tt : t;
        if (key && !json_object_get(top, key)) json_object_set_new(top, key, jlogprob(pl->entries[k].logprob));
        free(tt);
    }
    json_array_append_new(tops, top);
    free(t);
}

static json_t *prompt_logprobs_json(srv_request *r, const vm_request_output *o) {
    json_t *a = json_array();
    for (int i = 0; i < o->n_prompt_logprobs; i++) {
        const vm_position_logprobs *pl = &o->prompt_logprobs[i];
        if (pl->n <= 0) { json_array_append_new(a, json_null()); continue; }
        json_t *d = json_object();
        for (int k = 0; k < pl->n; k++) {
            char key[16];
            snprintf(key, sizeof key, "%d", pl->entries[k].token_id);
            if (json_object_get(d, key)) continue;
            char *t = token_str(r->s, pl->entries[k].token_id);
            json_object_set_new(d, key, json_pack("{s:o,s:i,s:o}", "logprob", jlogprob(pl->entries[k].logprob),
                                                  "rank", pl->entries[k].rank,
                                                  "decoded_token", jtext(t ? t : "", t ? strlen(t) : 0)));
            free(t);
        }
        json_array_append_new(a, d);
    }
    return a;
}

// Book-keeping common to both modes: counts, metrics, finish.
static void account(srv_request *r, int prompt, const vm_request_output *o) {
    prompt_state *ps = &r->prompts[prompt];
    seq_state *q = seq_of(r, prompt, o->index);
    if (o->n_prompt_tokens > 0) ps->n_prompt = o->n_prompt_tokens;
    if (o->n_cached_tokens > ps->n_cached) ps->n_cached = o->n_cached_tokens;
    q->n_tokens = o->n_output_tokens > q->n_tokens ? o->n_output_tokens : q->n_tokens + o->n_tokens;
    if (o->n_tokens > 0) {
        if (!q->seen_token) {
            srv_metrics_observe_ttft(&r->s->metrics, o->first_token_time - o->arrival_time);
            if (o->n_tokens > 1)
                srv_metrics_observe_itl(&r->s->metrics,
                                        (o->last_token_time - o->first_token_time) / (o->n_tokens - 1),
                                        o->n_tokens - 1);
            q->seen_token = true;
        } else {
            srv_metrics_observe_itl(&r->s->metrics, (o->last_token_time - q->last_token_time) / o->n_tokens,
                                    o->n_tokens);
        }
        q->last_token_time = o->last_token_time;
    }
    if (o->finish_reason != VM_FINISH_NONE && !q->finished) {
        q->finished = true;
        q->finish = o->finish_reason;
        if (o->stop_str) q->stop_str = strdup(o->stop_str);
        q->stop_token_id = o->stop_token_id;
        srv_metrics_finish(&r->s->metrics, o->finish_reason, o->finish_time - o->arrival_time);
    }
    if (o->n_prompt_logprobs > 0 && r->want_prompt_logprobs && !r->prompt_logprobs_out && prompt == 0)
        r->prompt_logprobs_out = prompt_logprobs_json(r, o);
}

static json_t *stop_reason_json(const seq_state *q) {
    if (q->stop_str) return json_string(q->stop_str);
    if (q->stop_token_id >= 0) return json_integer(q->stop_token_id);
    return json_null();
}

static const char *finish_name(const seq_state *q) {
    const char *n = vm_finish_reason_name(q->finish);
    return n ? n : "stop";
}

static json_t *usage_json(srv_request *r) {
    long long prompt = 0, completion = 0, cached = 0;
    for (int i = 0; i < r->n_prompts; i++) { prompt += r->prompts[i].n_prompt; cached += r->prompts[i].n_cached; }
    for (int i = 0; i < r->n_prompts * r->n; i++) completion += r->seqs[i].n_tokens;
    return json_pack("{s:I,s:I,s:I,s:{s:I}}", "prompt_tokens", (json_int_t)prompt,
                     "total_tokens", (json_int_t)(prompt + completion),
                     "completion_tokens", (json_int_t)completion,
                     "prompt_tokens_details", "cached_tokens", (json_int_t)cached);
}

static const char *fingerprint(void) { return "vllm-metal-" VLLM_METAL_VERSION; }

// waits for the next chunk of a prompt's stream; NULL when it has ended
static vm_request_output *next_output(srv_request *r, int prompt, double timeout) {
    vm_stream *st = r->prompts[prompt].stream;
    double t0 = vm_now_seconds();
    for (;;) {
        vm_request_output *o = vm_stream_next(st, 0.25);
        double now = vm_now_seconds();
        if (!o && vm_stream_finished(st)) { r->prompts[prompt].done = true; return NULL; }
        if (now - r->last_check >= 0.25) { // server going down, or the client gone?
            r->last_check = now;
            if (atomic_load(&r->s->stopping) || (r->gone && r->gone(r->gone_ctx)))
                for (int p = 0; p < r->n_prompts; p++)
                    if (r->prompts[p].stream) vm_stream_abort(r->prompts[p].stream);
        }
        if (o) return o;
        if (timeout >= 0 && now - t0 >= timeout) return NULL;
    }
}

json_t *srv_request_collect(srv_request *r, srv_error *err) {
    for (int p = 0; p < r->n_prompts; p++) {
        for (;;) {
            vm_request_output *o = next_output(r, p, -1);
            if (!o) break;
            seq_state *q = seq_of(r, p, o->index);
            account(r, p, o);
            if (o->finish_reason == VM_FINISH_ERROR) {
                srv_fail(err, 500, NULL, "%s", o->error ? o->error : "the engine failed");
                vm_request_output_free(o);
                return NULL;
            }
            if (o->text && text_append(q, o->text) != 0) {
                vm_request_output_free(o);
                srv_fail(err, 500, NULL, "out of memory");
                return NULL;
            }
            if (r->logprobs >= 0 && o->logprobs) {
                for (int t = 0; t < o->n_tokens; t++) {
                    if (r->kind == SRV_CHAT) {
                        if (!q->lp_chat) q->lp_chat = json_array();
                        json_t *e = chat_logprob_entry(r, &o->logprobs[t]);
                        if (e) json_array_append_new(q->lp_chat, e);
                    } else {
                        if (!q->lp_tokens) {
                            q->lp_tokens = json_array(); q->lp_token_lps = json_array();
                            q->lp_top = json_array(); q->lp_offsets = json_array();
                        }
                        completion_logprobs_add(r, q, &o->logprobs[t], q->lp_tokens, q->lp_token_lps,
                                                q->lp_top, q->lp_offsets);
                    }
                }
            }
            vm_request_output_free(o);
        }
    }
    json_t *choices = json_array();
    for (int p = 0; p < r->n_prompts; p++)
        for (int i = 0; i < r->n; i++) {
            seq_state *q = seq_of(r, p, i);
            json_t *c;
            json_t *text = q->text ? jtext(q->text, q->len) : json_string("");
            if (r->kind == SRV_CHAT) {
                json_t *lp = json_null();
                if (r->logprobs >= 0) lp = json_pack("{s:o}", "content", q->lp_chat ? json_incref(q->lp_chat) : json_array());
                c = json_pack("{s:i,s:{s:s,s:o,s:o,s:[]},s:o,s:s,s:o}", "index", i,
                              "message", "role", "assistant", "content", text, "reasoning_content", json_null(),
                              "tool_calls", "logprobs", lp, "finish_reason", finish_name(q),
                              "stop_reason", stop_reason_json(q));
            } else {
                if (r->echo && r->prompts[p].echo_text) {
                    json_t *joined = json_sprintf("%s%s", r->prompts[p].echo_text, json_string_value(text));
                    if (joined) { json_decref(text); text = joined; }
                }
                json_t *lp = json_null();
                if (r->logprobs >= 0)
                    lp = json_pack("{s:o,s:o,s:o,s:o}",
                                   "text_offset", q->lp_offsets ? json_incref(q->lp_offsets) : json_array(),
                                   "token_logprobs", q->lp_token_lps ? json_incref(q->lp_token_lps) : json_array(),
                                   "tokens", q->lp_tokens ? json_incref(q->lp_tokens) : json_array(),
                                   "top_logprobs", q->lp_top ? json_incref(q->lp_top) : json_array());
                c = json_pack("{s:i,s:o,s:o,s:s,s:o,s:o}", "index", p * r->n + i, "text", text,
                              "logprobs", lp, "finish_reason", finish_name(q), "stop_reason", stop_reason_json(q),
                              "prompt_logprobs",
                              p == 0 && r->prompt_logprobs_out ? json_incref(r->prompt_logprobs_out) : json_null());
            }
            json_array_append_new(choices, c);
        }
    json_t *resp = json_pack("{s:s,s:s,s:I,s:s,s:o,s:o,s:s}", "id", r->id,
                             "object", r->kind == SRV_CHAT ? "chat.completion" : "text_completion",
                             "created", (json_int_t)r->created, "model", r->s->model_name, "choices", choices,
                             "usage", usage_json(r), "system_fingerprint", fingerprint());
    if (r->kind == SRV_CHAT)
        json_object_set_new(resp, "prompt_logprobs",
                            r->prompt_logprobs_out ? json_incref(r->prompt_logprobs_out) : json_null());
    return resp;
}

// ---------------------------------------------------------------- SSE

enum { PH_START, PH_RUN, PH_USAGE, PH_DONE, PH_END };

static char *sse_event(json_t *chunk, size_t *len) {
    char *js = json_dumps(chunk, JSON_COMPACT);
    json_decref(chunk);
    if (!js) return NULL;
    size_t n = strlen(js);
    char *o = malloc(n + 9);
    if (o) { memcpy(o, "data: ", 6); memcpy(o + 6, js, n); memcpy(o + 6 + n, "\n\n", 3); *len = n + 8; }
    free(js);
    return o;
}

static json_t *chunk_base(srv_request *r, json_t *choices) {
    json_t *c = json_pack("{s:s,s:s,s:I,s:s,s:o,s:s}", "id", r->id,
                          "object", r->kind == SRV_CHAT ? "chat.completion.chunk" : "text_completion",
                          "created", (json_int_t)r->created, "model", r->s->model_name, "choices", choices,
                          "system_fingerprint", fingerprint());
    if (r->include_usage) json_object_set_new(c, "usage", r->continuous_usage ? usage_json(r) : json_null());
    return c;
}

static json_t *chunk_for_output(srv_request *r, int p, const vm_request_output *o) {
    seq_state *q = seq_of(r, p, o->index);
    bool finished = o->finish_reason != VM_FINISH_NONE;
    const char *text = o->text ? o->text : "";
    json_t *lp = json_null();
    if (r->logprobs >= 0 && o->logprobs && o->n_tokens > 0) {
        if (r->kind == SRV_CHAT) {
            json_t *content = json_array();
            for (int t = 0; t < o->n_tokens; t++) {
                json_t *e = chat_logprob_entry(r, &o->logprobs[t]);
                if (e) json_array_append_new(content, e);
            }
            lp = json_pack("{s:o}", "content", content);
        } else {
            json_t *tk = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
            for (int t = 0; t < o->n_tokens; t++) completion_logprobs_add(r, q, &o->logprobs[t], tk, lps, tops, offs);
            lp = json_pack("{s:o,s:o,s:o,s:o}", "text_offset", offs, "token_logprobs", lps, "tokens", tk,
                           "top_logprobs", tops);
        }
    }
    if (!*text && !finished && json_is_null(lp)) return NULL; // nothing to say
    json_t *choice;
    json_t *fr = finished ? json_string(finish_name(q)) : json_null();
    json_t *sr = finished ? stop_reason_json(q) : json_null();
    if (r->kind == SRV_CHAT) {
        json_t *delta = json_object();
        if (*text || !finished) json_object_set_new(delta, "content", jtext(text, strlen(text)));
        choice = json_pack("{s:i,s:o,s:o,s:o,s:o}", "index", o->index, "delta", delta, "logprobs", lp,
                           "finish_reason", fr, "stop_reason", sr);
    } else {
        choice = json_pack("{s:i,s:o,s:o,s:o,s:o}", "index", p * r->n + o->index, "text", jtext(text, strlen(text)),
                           "logprobs", lp, "finish_reason", fr, "stop_reason", sr);
    }
    return chunk_base(r, json_pack("[o]", choice));
}

char *srv_request_next_sse(srv_request *r, size_t *len) {
    for (;;) {
        switch (r->phase) {
        case PH_START: {
            r->phase = PH_RUN;
            r->last_send = vm_now_seconds();
            json_t *choices = json_array();
            for (int p = 0; p < r->n_prompts; p++)
                for (int i = 0; i < r->n; i++) {
                    if (r->kind == SRV_CHAT && p == 0)
                        json_array_append_new(choices,
                            json_pack("{s:i,s:{s:s,s:s},s:n,s:n}", "index", i, "delta", "role", "assistant",
                                      "content", "", "logprobs", "finish_reason"));
                    else if (r->kind == SRV_COMPLETION && r->echo && r->prompts[p].echo_text)
                        json_array_append_new(choices,
                            json_pack("{s:i,s:o,s:n,s:n,s:n}", "index", p * r->n + i, "text",
                                      jtext(r->prompts[p].echo_text, strlen(r->prompts[p].echo_text)),
                                      "logprobs", "finish_reason", "stop_reason"));
                }
            if (json_array_size(choices) == 0) { json_decref(choices); continue; }
            if (r->kind == SRV_CHAT) {
                // vLLM sends one role chunk per choice
                size_t n = json_array_size(choices);
                char *all = NULL; size_t total = 0;
                for (size_t i = 0; i < n; i++) {
                    size_t l = 0;
                    char *ev = sse_event(chunk_base(r, json_pack("[O]", json_array_get(choices, i))), &l);
                    if (!ev) continue;
                    char *na = realloc(all, total + l + 1);
                    if (!na) { free(ev); continue; }
                    all = na; memcpy(all + total, ev, l + 1); total += l; free(ev);
                }
                json_decref(choices);
                if (!all) continue;
                *len = total;
                return all;
            }
            return sse_event(chunk_base(r, choices), len);
        }
        case PH_RUN: {
            if (r->cur >= r->n_prompts) { r->phase = PH_USAGE; continue; }
            vm_request_output *o = next_output(r, r->cur, 15.0);
            if (!o) {
                if (r->prompts[r->cur].done) { r->cur++; continue; }
                // a quiet spell: an SSE comment keeps proxies (and our disconnect check) going
                char *ping = strdup(": ping\n\n");
                if (ping) *len = strlen(ping);
                return ping;
            }
            account(r, r->cur, o);
            json_t *chunk;
            if (o->finish_reason == VM_FINISH_ERROR) {
                srv_error err;
                srv_fail(&err, 500, NULL, "%s", o->error ? o->error : "the engine failed");
                chunk = srv_error_json(&err);
            } else {
                chunk = chunk_for_output(r, r->cur, o);
            }
            vm_request_output_free(o);
            if (!chunk) continue;
            char *ev = sse_event(chunk, len);
            if (ev) return ev;
            continue;
        }
        case PH_USAGE:
            r->phase = PH_DONE;
            if (r->include_usage) {
                json_t *c = chunk_base(r, json_array());
                json_object_set_new(c, "usage", usage_json(r));
                char *ev = sse_event(c, len);
                if (ev) return ev;
            }
            continue;
        case PH_DONE: {
            r->phase = PH_END;
            char *d = strdup("data: [DONE]\n\n");
            if (d) *len = strlen(d);
            return d;
        }
        default:
            return NULL;
        }
    }
}

// ---------------------------------------------------------------- tokenize / detokenize / models

json_t *srv_tokenize(vm_server *s, const char *body, size_t len, srv_error *err) {
    json_t *b = parse_body(body, len, err);
    if (!b) return NULL;
    json_t *out = NULL;
    int32_t *ids = NULL; int n = 0;
    char *text = NULL;
    bool strs = false;
    if (check_model(s, b, err) != 0) goto done;
    if (get_bool(b, "return_token_strs", &strs, err) < 0) goto done;
    if (field(b, "messages")) {
        vm_mm_inputs *mm = NULL;
        if (render_chat_prompt(s, b, false, &text, &ids, &n, &mm, err) != 0) goto done;
        vm_mm_inputs_release(mm);
    } else {
        json_t *p = field(b, "prompt");
        bool add_special = true;
        if (get_bool(b, "add_special_tokens", &add_special, err) < 0) goto done;
        if (!json_is_string(p)) { srv_fail(err, 400, "prompt", "'prompt' (a string) or 'messages' is required"); goto done; }
        if (encode_text(s, json_string_value(p), add_special, &ids, &n, err) != 0) goto done;
    }
    json_t *tokens = json_array();
    json_t *ts = strs ? json_array() : json_null();
    for (int i = 0; i < n; i++) {
        json_array_append_new(tokens, json_integer(ids[i]));
        if (strs) {
            char *t = token_str(s, ids[i]);
            json_array_append_new(ts, jtext(t ? t : "", t ? strlen(t) : 0));
            free(t);
        }
    }
    out = json_pack("{s:i,s:i,s:o,s:o}", "count", n, "max_model_len", s->max_model_len, "tokens", tokens,
                    "token_strs", ts);
done:
    free(ids); free(text);
    json_decref(b);
    return out;
}

json_t *srv_detokenize(vm_server *s, const char *body, size_t len, srv_error *err) {
    json_t *b = parse_body(body, len, err);
    if (!b) return NULL;
    json_t *out = NULL;
    int32_t *ids = NULL; int n = 0;
    if (check_model(s, b, err) != 0) goto done;
    json_t *t = field(b, "tokens");
    if (!t) { srv_fail(err, 400, "tokens", "'tokens' is required"); goto done; }
    if (get_ids(t, "tokens", &ids, &n, err) != 1) goto done;
    if (check_ids(s, ids, n, "tokens", err) != 0) goto done;
    vm_text_codec *c = vm_engine_codec(s->eng);
    if (!c || !c->decode) { srv_fail(err, 400, NULL, "this model has no tokenizer"); goto done; }
    char *text = c->decode(c->ctx, ids, n, 0);
    if (!text) { srv_fail(err, 500, NULL, "cannot decode the tokens"); goto done; }
    out = json_pack("{s:o}", "prompt", jtext(text, strlen(text)));
    free(text);
done:
    free(ids);
    json_decref(b);
    return out;
}

json_t *srv_models_json(vm_server *s) {
    json_t *perm = json_pack("[{s:s,s:s,s:I,s:b,s:b,s:b,s:b,s:b,s:b,s:s,s:n,s:b}]",
                             "id", "modelperm-vllm-metal", "object", "model_permission",
                             "created", (json_int_t)s->created, "allow_create_engine", 0,
                             "allow_sampling", 1, "allow_logprobs", 1, "allow_search_indices", 0,
                             "allow_view", 1, "allow_fine_tuning", 0, "organization", "*", "group",
                             "is_blocking", 0);
    json_t *m = json_pack("{s:s,s:s,s:I,s:s,s:s,s:n,s:i,s:o}", "id", s->model_name, "object", "model",
                          "created", (json_int_t)s->created, "owned_by", "vllm", "root",
                          s->model_root ? s->model_root : s->model_name, "parent", "max_model_len",
                          s->max_model_len, "permission", perm);
    json_t *data = json_array();
    for (int i = 0; i < s->cfg.n_model_aliases; i++) {
        json_t *alias = json_deep_copy(m);
        json_object_set_new(alias, "id", json_string(s->cfg.model_aliases[i]));
        json_array_append_new(data, alias);
    }
    json_array_insert_new(data, 0, m);
    return json_pack("{s:s,s:o}", "object", "list", "data", data);
}
