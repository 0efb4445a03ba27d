// api.c - the public C API (include/vllm_metal.h) over src/engine: JSON in,
// JSON out, a per-thread error string. The engine steps on its own thread so
// that many callers share one batch.
#include "vllm_metal.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "engine/engine.h"
#include "hub/hub.h"
#include "loader/weights.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

#define API_MAX_TEMPLATE_BYTES (4u << 20)
#define API_MAX_STOPS 64

struct vllm_metal_engine {
    vm_engine *eng;
    char *model_name;            // as given
    char *model_path;            // resolved
    vm_chat_template *tpl;       // NULL: no chat template
    char *tpl_error;             // why the template could not be parsed
    char *bos_token, *eos_token; // strings for templates ("" when none)
};

// ---------------------------------------------------------------- errors

static _Thread_local char last_error[1024];

static void set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void set_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
}

const char *vllm_metal_last_error(void) { return last_error; }
const char *vllm_metal_version(void) { return VLLM_METAL_VERSION_STRING; }
int vllm_metal_api_version(void) { return VLLM_METAL_API_VERSION; }
void vllm_metal_free(void *p) { free(p); }

// Serializes and frees j; NULL (with an error) when that fails.
static char *dump(json_t *j) {
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(j);
    if (!s) set_error("out of memory");
    return s;
}

// Parses a JSON object; "" or NULL is {} when allow_empty.
static json_t *parse_object(const char *text, const char *what, int allow_empty) {
    if (!text || !*text) {
        if (allow_empty) return json_object();
        set_error("%s: no JSON given", what);
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (!j) { set_error("%s: invalid JSON at line %d column %d: %s", what, je.line, je.column, je.text); return NULL; }
    if (!json_is_object(j)) { json_decref(j); set_error("%s: expected a JSON object", what); return NULL; }
    return j;
}

// ---------------------------------------------------------------- JSON fields

static int get_int(json_t *v, const char *key, int lo, int hi, int *out) {
    if (!json_is_integer(v)) {
        if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v))) {
            double d = json_real_value(v);
            if (d >= lo && d <= hi) { *out = (int)d; return 0; }
        }
        set_error("%s must be an integer", key);
        return -1;
    }
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) { set_error("%s must be in [%d, %d], got %lld", key, lo, hi, (long long)x); return -1; }
    *out = (int)x;
    return 0;
}

static int get_float(json_t *v, const char *key, float *out) {
    if (!json_is_number(v)) { set_error("%s must be a number", key); return -1; }
    *out = (float)json_number_value(v);
    return 0;
}

static int get_bool(json_t *v, const char *key, int *out) {
    if (!json_is_boolean(v)) { set_error("%s must be true or false", key); return -1; }
    *out = json_is_true(v);
    return 0;
}

// An array of token ids -> malloc'd int32 array.
static int get_ids(json_t *v, const char *key, int32_t **out, int *n) {
    if (!json_is_array(v)) { set_error("%s must be a list of token ids", key); return -1; }
    size_t len = json_array_size(v);
    int32_t *ids = malloc((len ? len : 1) * sizeof *ids);
    if (!ids) { set_error("out of memory"); return -1; }
    for (size_t i = 0; i < len; i++) {
        json_t *x = json_array_get(v, i);
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > INT32_MAX) {
            free(ids);
            set_error("%s[%zu] must be a non-negative integer token id", key, i);
            return -1;
        }
        ids[i] = (int32_t)json_integer_value(x);
    }
    *out = ids;
    *n = (int)len;
    return 0;
}

// ---------------------------------------------------------------- sampling params

// Owns what the vm_sampling_params points into.
typedef struct params_holder {
    vm_sampling_params p;
    const char *stops[API_MAX_STOPS];
    const char *bad_words[API_MAX_STOPS];
    int32_t *stop_ids, *allowed_ids, *bias_ids;
    float *bias_values;
    json_t *root; // keeps the strings alive
} params_holder;

static void params_free(params_holder *h) {
    free(h->stop_ids); free(h->allowed_ids); free(h->bias_ids); free(h->bias_values);
    json_decref(h->root);
    memset(h, 0, sizeof *h);
}

static int get_strings(json_t *v, const char *key, const char **out, int *n) {
    if (json_is_string(v)) { out[0] = json_string_value(v); *n = 1; return 0; }
    if (json_is_null(v)) { *n = 0; return 0; }
    if (!json_is_array(v)) { set_error("%s must be a string or a list of strings", key); return -1; }
    if (json_array_size(v) > API_MAX_STOPS) { set_error("%s: at most %d entries", key, API_MAX_STOPS); return -1; }
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s) {
        if (!json_is_string(s)) { set_error("%s[%zu] must be a string", key, i); return -1; }
        out[i] = json_string_value(s);
    }
    *n = (int)json_array_size(v);
    return 0;
}

static int parse_params(const char *params_json, params_holder *h) {
    memset(h, 0, sizeof *h);
    vm_sampling_params *p = &h->p;
    vm_sampling_params_init(p);
    h->root = parse_object(params_json, "sampling params", 1);
    if (!h->root) return -1;
    const char *k;
    json_t *v;
    json_object_foreach(h->root, k, v) {
        int rc = 0, n = 0;
        if (json_is_null(v) && strcmp(k, "stop")) continue; // null = default, as in vLLM's JSON
        if (!strcmp(k, "n")) {
            rc = get_int(v, k, 1, 1, &p->n);
            if (rc) set_error("n must be 1 here (run the request again for more samples)");
        }
        else if (!strcmp(k, "temperature")) rc = get_float(v, k, &p->temperature);
        else if (!strcmp(k, "top_p")) rc = get_float(v, k, &p->top_p);
        else if (!strcmp(k, "top_k")) rc = get_int(v, k, -1, INT32_MAX, &p->top_k);
        else if (!strcmp(k, "min_p")) rc = get_float(v, k, &p->min_p);
        else if (!strcmp(k, "presence_penalty")) rc = get_float(v, k, &p->presence_penalty);
        else if (!strcmp(k, "frequency_penalty")) rc = get_float(v, k, &p->frequency_penalty);
        else if (!strcmp(k, "repetition_penalty")) rc = get_float(v, k, &p->repetition_penalty);
        else if (!strcmp(k, "seed")) {
            if (!json_is_integer(v)) { set_error("seed must be an integer"); rc = -1; }
            else { p->has_seed = 1; p->seed = (uint64_t)json_integer_value(v); }
        }
        else if (!strcmp(k, "max_tokens")) rc = get_int(v, k, -1, INT32_MAX, &p->max_tokens);
        else if (!strcmp(k, "min_tokens")) rc = get_int(v, k, 0, INT32_MAX, &p->min_tokens);
        else if (!strcmp(k, "ignore_eos")) rc = get_bool(v, k, &p->ignore_eos);
        else if (!strcmp(k, "logprobs")) rc = get_int(v, k, -1, 1000, &p->logprobs);
        else if (!strcmp(k, "skip_special_tokens")) rc = get_bool(v, k, &p->skip_special_tokens);
        else if (!strcmp(k, "include_stop_str_in_output")) rc = get_bool(v, k, &p->include_stop_str_in_output);
        else if (!strcmp(k, "stop")) {
            rc = get_strings(v, k, h->stops, &n);
            p->stop = h->stops; p->n_stop = n;
        }
        else if (!strcmp(k, "bad_words")) {
            rc = get_strings(v, k, h->bad_words, &n);
            p->bad_words = h->bad_words; p->n_bad_words = n;
        }
        else if (!strcmp(k, "stop_token_ids")) {
            rc = get_ids(v, k, &h->stop_ids, &n);
            p->stop_token_ids = h->stop_ids; p->n_stop_token_ids = n;
        }
        else if (!strcmp(k, "allowed_token_ids")) {
            rc = get_ids(v, k, &h->allowed_ids, &n);
            p->allowed_token_ids = h->allowed_ids; p->n_allowed_token_ids = n;
        }
        else if (!strcmp(k, "logit_bias")) {
            if (!json_is_object(v)) { set_error("logit_bias must be an object {\"token id\": bias}"); rc = -1; }
            else {
                size_t m = json_object_size(v), i = 0;
                h->bias_ids = malloc((m ? m : 1) * sizeof *h->bias_ids);
                h->bias_values = malloc((m ? m : 1) * sizeof *h->bias_values);
                if (!h->bias_ids || !h->bias_values) { set_error("out of memory"); rc = -1; }
                const char *bk;
                json_t *bv;
                json_object_foreach(v, bk, bv) {
                    if (rc) break;
                    char *end;
                    errno = 0;
                    long id = strtol(bk, &end, 10);
                    if (errno || *end || end == bk || id < 0 || id > INT32_MAX || !json_is_number(bv)) {
                        set_error("logit_bias: keys must be token ids and values numbers (%s)", bk);
                        rc = -1;
                        break;
                    }
                    h->bias_ids[i] = (int32_t)id;
                    h->bias_values[i++] = (float)json_number_value(bv);
                }
                p->logit_bias_ids = h->bias_ids; p->logit_bias_values = h->bias_values;
                p->n_logit_bias = (int)i;
            }
        }
        else { set_error("unknown sampling parameter '%s'", k); rc = -1; }
        if (rc) { params_free(h); return -1; }
    }
    return 0;
}

// ---------------------------------------------------------------- chat template

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static char *dup_n(const char *s, size_t n) {
    char *o = malloc(n + 1);
    if (o) { memcpy(o, s, n); o[n] = 0; }
    return o;
}

// "chat_template": "..." or [{"name": "default", "template": "..."}, ...]
static char *template_from_config(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    json_error_t je;
    json_t *cfg = json_load_file(path, JSON_DECODE_INT_AS_REAL, &je);
    char *out = NULL;
    json_t *v = json_object_get(cfg, "chat_template");
    if (json_is_string(v)) out = strdup(json_string_value(v));
    else if (json_is_array(v)) {
        size_t i;
        json_t *it;
        json_array_foreach(v, i, it) {
            const char *name = json_string_value(json_object_get(it, "name"));
            const char *tpl = json_string_value(json_object_get(it, "template"));
            if (tpl && (!out || (name && !strcmp(name, "default")))) { free(out); out = strdup(tpl); }
        }
    }
    json_decref(cfg);
    if (!out) {
        snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
        out = vm_read_file(path, NULL, API_MAX_TEMPLATE_BYTES, NULL);
    }
    return out;
}

// The model's chat template source (NULL when it has none).
static char *template_source(const char *model_path) {
    size_t n = strlen(model_path);
    if (n > 5 && !strcmp(model_path + n - 5, ".gguf")) {
        vm_err e = {{0}};
        vm_weight_store *ws = vm_weights_open(model_path, &e);
        if (!ws) return NULL;
        const vm_gguf *g = vm_weights_gguf(ws);
        vm_gguf_str s;
        char *out = g && vm_gguf_get_str(g, "tokenizer.chat_template", &s) == 0 ? dup_n(s.s, s.len) : NULL;
        vm_weights_free(ws);
        return out;
    }
    if (is_dir(model_path)) return template_from_config(model_path);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", model_path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
    return template_from_config(dir);
}

static char *token_text(const vm_tokenizer *t, int32_t id) {
    size_t len;
    const char *s = id >= 0 ? vm_tokenizer_id_to_token(t, id, &len) : NULL;
    return s ? dup_n(s, len) : strdup("");
}

static int load_chat_template(vllm_metal_engine *h, const char *override_src) {
    char *src = override_src ? strdup(override_src) : template_source(h->model_path);
    vm_text_codec *codec = vm_engine_codec(h->eng);
    const vm_tokenizer *t = codec ? vm_codec_tokenizer(codec) : NULL;
    h->bos_token = t ? token_text(t, vm_tokenizer_bos_id(t)) : strdup("");
    h->eos_token = t ? token_text(t, vm_tokenizer_eos_id(t)) : strdup("");
    if (!src) return 0;
    vm_err e = {{0}};
    h->tpl = vm_chat_template_parse(src, strlen(src), &e);
    free(src);
    if (!h->tpl) {
        if (override_src) { set_error("chat_template: %s", e.msg); return -1; }
        h->tpl_error = strdup(e.msg);
    }
    return 0;
}

// Renders req's messages (+ tools, add_generation_prompt, chat_template_kwargs).
static char *render_chat(vllm_metal_engine *h, json_t *req) {
    json_t *messages = json_object_get(req, "messages");
    if (!json_is_array(messages) || json_array_size(messages) == 0) {
        set_error("messages must be a non-empty list of {\"role\", \"content\"} objects");
        return NULL;
    }
    if (!h->tpl) {
        if (h->tpl_error) set_error("the model's chat template cannot be used: %s", h->tpl_error);
        else set_error("the model has no chat template: pass \"prompt\" instead of \"messages\", "
                       "or give \"chat_template\" when creating the engine");
        return NULL;
    }
    json_t *agp = json_object_get(req, "add_generation_prompt");
    json_t *kwargs = json_object_get(req, "chat_template_kwargs");
    json_t *ctx = json_object();
    if (json_is_object(kwargs)) json_object_update(ctx, kwargs);
    json_object_set(ctx, "messages", messages);
    json_t *tools = json_object_get(req, "tools");
    json_object_set(ctx, "tools", tools ? tools : json_null());
    json_object_set_new(ctx, "add_generation_prompt", json_boolean(agp ? json_is_true(agp) : 1));
    json_object_set_new(ctx, "bos_token", json_string(h->bos_token ? h->bos_token : ""));
    json_object_set_new(ctx, "eos_token", json_string(h->eos_token ? h->eos_token : ""));
    char *out = NULL;
    vm_err e = {{0}};
    if (vm_chat_template_render(h->tpl, ctx, &out, &e) != 0) {
        set_error("chat template error: %s", e.msg);
        out = NULL;
    }
    json_decref(ctx);
    return out;
}

// ---------------------------------------------------------------- engine

vllm_metal_engine *vllm_metal_engine_create(const char *engine_args_json) {
    json_t *j = parse_object(engine_args_json, "engine args", 0);
    if (!j) return NULL;
    vm_engine_args a;
    vm_engine_args_init(&a);
    const char *model = NULL, *mem = NULL, *tpl_src = NULL;
    char mem_buf[32];
    const char *k;
    json_t *v;
    int rc = 0;
    json_object_foreach(j, k, v) {
        if (json_is_null(v)) continue;
        if (!strcmp(k, "model")) {
            if (!json_is_string(v) || !*json_string_value(v)) { set_error("model must be a non-empty string"); rc = -1; }
            else model = json_string_value(v);
        }
        else if (!strcmp(k, "max_model_len")) rc = get_int(v, k, 1, INT32_MAX, &a.max_model_len);
        else if (!strcmp(k, "block_size")) rc = get_int(v, k, 1, 1024, &a.block_size);
        else if (!strcmp(k, "max_num_seqs")) rc = get_int(v, k, 1, 1 << 20, &a.max_num_seqs);
        else if (!strcmp(k, "max_num_batched_tokens")) rc = get_int(v, k, 1, INT32_MAX, &a.max_num_batched_tokens);
        else if (!strcmp(k, "enable_prefix_caching")) rc = get_bool(v, k, &a.enable_prefix_caching);
        else if (!strcmp(k, "enable_chunked_prefill")) rc = get_bool(v, k, &a.enable_chunked_prefill);
        else if (!strcmp(k, "num_kv_blocks")) rc = get_int(v, k, 0, INT32_MAX, &a.num_kv_blocks);
        else if (!strcmp(k, "max_logprobs")) rc = get_int(v, k, 0, 1 << 20, &a.max_logprobs);
        else if (!strcmp(k, "threads") || !strcmp(k, "n_threads")) rc = get_int(v, k, 0, 4096, &a.n_threads);
        else if (!strcmp(k, "memory_fraction") || !strcmp(k, "gpu_memory_utilization")) {
            if (json_is_string(v)) mem = json_string_value(v);
            else if (json_is_number(v)) { snprintf(mem_buf, sizeof mem_buf, "%g", json_number_value(v)); mem = mem_buf; }
            else { set_error("%s must be a number or \"auto\"", k); rc = -1; }
        }
        else if (!strcmp(k, "chat_template")) {
            if (!json_is_string(v)) { set_error("chat_template must be a string"); rc = -1; }
            else tpl_src = json_string_value(v);
        }
        else if (!strcmp(k, "trust_remote_code") || !strcmp(k, "tokenizer_mode")) continue; // accepted, no effect
        else { set_error("unknown engine argument '%s'", k); rc = -1; }
        if (rc) break;
    }
    if (!rc && !model) { set_error("engine args: \"model\" is required"); rc = -1; }
    vllm_metal_engine *h = NULL;
    char path[4096];
    vm_err e = {{0}};
    if (!rc && vm_hub_resolve(model, path, sizeof path, &e) != 0) { set_error("%s", e.msg); rc = -1; }
    if (!rc) {
        h = calloc(1, sizeof *h);
        if (!h || !(h->model_name = strdup(model)) || !(h->model_path = strdup(path))) {
            set_error("out of memory"); rc = -1;
        }
    }
    if (!rc) {
        a.model = h->model_path;
        a.memory_fraction = mem;
        h->eng = vm_engine_create(&a, &e);
        if (!h->eng) { set_error("%s", e.msg); rc = -1; }
    }
    if (!rc && load_chat_template(h, tpl_src) != 0) rc = -1;
    if (!rc && vm_engine_start(h->eng, &e) != 0) { set_error("%s", e.msg); rc = -1; }
    json_decref(j);
    if (rc) { vllm_metal_engine_free(h); return NULL; }
    return h;
}

void vllm_metal_engine_free(vllm_metal_engine *h) {
    if (!h) return;
    if (h->eng) vm_engine_free(h->eng);
    if (h->tpl) vm_chat_template_free(h->tpl);
    free(h->tpl_error); free(h->bos_token); free(h->eos_token);
    free(h->model_name); free(h->model_path);
    free(h);
}

static json_t *ids_json(const int32_t *ids, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_integer(ids[i]));
    return a;
}

char *vllm_metal_engine_info(vllm_metal_engine *h) {
    if (!h) { set_error("no engine"); return NULL; }
    const vm_engine_args *a = vm_engine_get_args(h->eng);
    vm_text_codec *codec = vm_engine_codec(h->eng);
    int32_t eos[8];
    int n_eos = codec ? vm_codec_eos_ids(codec, eos, 8) : 0;
    json_t *j = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:b, s:b, s:o, s:s}",
                          "model", h->model_name, "model_path", h->model_path,
                          "vocab_size", vm_engine_vocab_size(h->eng), "max_model_len", a->max_model_len,
                          "block_size", a->block_size, "num_kv_blocks", vm_engine_num_kv_blocks(h->eng),
                          "has_tokenizer", codec != NULL, "has_chat_template", h->tpl != NULL,
                          "eos_token_ids", ids_json(eos, n_eos > 8 ? 8 : n_eos),
                          "version", VLLM_METAL_VERSION_STRING);
    return dump(j);
}

char *vllm_metal_engine_stats(vllm_metal_engine *h) {
    if (!h) { set_error("no engine"); return NULL; }
    vm_engine_stats st;
    vm_engine_get_stats(h->eng, &st);
    json_t *j = json_pack("{s:i, s:i, s:i, s:i, s:f, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                          "num_running", st.num_running, "num_waiting", st.num_waiting,
                          "num_kv_blocks", st.num_kv_blocks, "num_free_blocks", st.num_free_blocks,
                          "kv_usage", st.kv_usage,
                          "prefix_cache_queries", (json_int_t)st.prefix_cache_queries,
                          "prefix_cache_hits", (json_int_t)st.prefix_cache_hits,
                          "num_preemptions", (json_int_t)st.num_preemptions,
                          "prompt_tokens", (json_int_t)st.prompt_tokens,
                          "generation_tokens", (json_int_t)st.generation_tokens,
                          "num_steps", (json_int_t)st.num_steps,
                          "requests_finished", (json_int_t)st.requests_finished);
    return dump(j);
}

// ---------------------------------------------------------------- generation

// Text -> ids with the engine's codec.
static int encode(vllm_metal_engine *h, const char *text, int add_special, int32_t **ids, int *n) {
    vm_text_codec *c = vm_engine_codec(h->eng);
    if (!c || !c->encode) { set_error("the model has no tokenizer: give prompt_token_ids"); return -1; }
    vm_err e = {{0}};
    if (c->encode(c->ctx, text, add_special, ids, n, &e) != 0) { set_error("%s", e.msg); return -1; }
    return 0;
}

static int run_one_mm(vllm_metal_engine *h, const int32_t *ids, int n_ids, vm_mm_inputs *mm,
                      const vm_sampling_params *p, vm_offline_result *r);

// Runs one request; on success fills r (caller frees with vm_offline_result_free).
static int run_one(vllm_metal_engine *h, const int32_t *ids, int n_ids, const vm_sampling_params *p,
                   vm_offline_result *r) {
    return run_one_mm(h, ids, n_ids, NULL, p, r);
}

// The request's "images": each a data: URL, an http(s) URL or a local file path.
static vm_mm_inputs *load_images(vllm_metal_engine *h, json_t *images) {
    if (!json_is_array(images)) { set_error("images must be a list of paths, URLs or data: URLs"); return NULL; }
    size_t k = json_array_size(images);
    if (k == 0) return NULL;
    if (!vm_engine_is_vlm(h->eng)) {
        set_error("images given, but the model is not a vision-language model (it does not take images)");
        return NULL;
    }
    vm_image_input *in = calloc(k, sizeof *in);
    void **bufs = calloc(k, sizeof *bufs);
    vm_mm_inputs *mm = NULL;
    vm_image_fetch_opts fo;
    vm_image_fetch_defaults(&fo);
    fo.allow_files = 1; // the caller's own machine
    size_t i;
    for (i = 0; in && bufs && i < k; i++) {
        const char *src = json_string_value(json_array_get(images, i));
        vm_err e = {{0}};
        size_t n = 0;
        if (!src) { set_error("images[%zu] must be a string", i); break; }
        if (vm_image_source_read(src, &fo, &bufs[i], &n, &e)) { set_error("image %zu: %s", i + 1, e.msg); break; }
        in[i] = (vm_image_input){ .bytes = bufs[i], .n_bytes = n };
    }
    if (!in || !bufs) set_error("out of memory");
    else if (i == k) {
        vm_err e = {{0}};
        if (!(mm = vm_engine_prepare_images(h->eng, in, (int)k, 0, &e))) set_error("%s", e.msg);
    }
    for (size_t j = 0; bufs && j < k; j++) free(bufs[j]);
    free(bufs); free(in);
    return mm;
}

static int run_one_mm(vllm_metal_engine *h, const int32_t *ids, int n_ids, vm_mm_inputs *mm,
                      const vm_sampling_params *p, vm_offline_result *r) {
    const int32_t *const idv[1] = { ids };
    int nv[1] = { n_ids };
    vm_mm_inputs *mv[1] = { mm };
    vm_err e = {{0}};
    if (vm_engine_generate_mm(h->eng, 1, NULL, idv, nv, mm ? mv : NULL, p, r, &e) != 0) {
        set_error("%s", e.msg[0] ? e.msg : "generation failed");
        vm_offline_result_free(r);
        return -1;
    }
    if (r->finish_reason == VM_FINISH_ERROR) {
        set_error("generation failed in the engine");
        vm_offline_result_free(r);
        return -1;
    }
    return 0;
}

char *vllm_metal_generate(vllm_metal_engine *h, const char *request_json, const char *params_json) {
    if (!h) { set_error("no engine"); return NULL; }
    json_t *req = parse_object(request_json, "request", 0);
    if (!req) return NULL;
    params_holder ph;
    if (parse_params(params_json, &ph) != 0) { json_decref(req); return NULL; }
    json_t *prompt = json_object_get(req, "prompt"), *pids = json_object_get(req, "prompt_token_ids");
    json_t *messages = json_object_get(req, "messages");
    int kinds = (prompt != NULL) + (pids != NULL) + (messages != NULL);
    char *out = NULL, *rendered = NULL;
    int32_t *ids = NULL;
    int n_ids = 0;
    vm_mm_inputs *mm = NULL;
    vm_offline_result r;
    memset(&r, 0, sizeof r);
    const char *k;
    json_t *v;
    json_object_foreach(req, k, v) {
        if (strcmp(k, "prompt") && strcmp(k, "prompt_token_ids") && strcmp(k, "messages") &&
            strcmp(k, "add_generation_prompt") && strcmp(k, "chat_template_kwargs") && strcmp(k, "tools") &&
            strcmp(k, "images")) {
            set_error("request: unknown field '%s' (prompt, prompt_token_ids, messages or images)", k);
            goto done;
        }
    }
    if (kinds != 1) { set_error("request: give exactly one of prompt, prompt_token_ids, messages"); goto done; }
    if (prompt) {
        if (!json_is_string(prompt)) { set_error("prompt must be a string"); goto done; }
        if (encode(h, json_string_value(prompt), 1, &ids, &n_ids)) goto done;
    } else if (pids) {
        if (get_ids(pids, "prompt_token_ids", &ids, &n_ids)) goto done;
    } else {
        if (!(rendered = render_chat(h, req))) goto done;
        if (encode(h, rendered, 0, &ids, &n_ids)) goto done; // the template holds the special tokens
    }
    json_t *images = json_object_get(req, "images");
    if (images && json_array_size(images) > 0) {
        if (!(mm = load_images(h, images))) goto done;
        // a prompt without placeholders gets one <|vision_start|><|image_pad|><|vision_end|> per image up front
        int runs = 0;
        for (int i = 0; i < n_ids; i++)
            runs += ids[i] == vm_engine_image_token_id(h->eng) && (i == 0 || ids[i - 1] != ids[i]);
        if (runs == 0) {
            int k = vm_mm_inputs_count(mm), bos = n_ids > 0 && ids[0] == vm_engine_bos_token_id(h->eng);
            int32_t *with = malloc(((size_t)n_ids + 3 * (size_t)k) * sizeof *with);
            if (!with) { set_error("out of memory"); goto done; }
            int m = 0;
            if (bos) with[m++] = ids[0];
            for (int i = 0; i < k; i++) {
                with[m++] = vm_engine_vision_token_id(h->eng, 0);
                with[m++] = vm_engine_image_token_id(h->eng);
                with[m++] = vm_engine_vision_token_id(h->eng, 1);
            }
            for (int i = bos; i < n_ids; i++) with[m++] = ids[i];
            free(ids);
            ids = with; n_ids = m;
        }
        int32_t *exp; int n_exp;
        vm_err e = {{0}};
        if (vm_mm_expand_prompt(mm, ids, n_ids, &exp, &n_exp, &e)) { set_error("%s", e.msg); goto done; }
        free(ids);
        ids = exp; n_ids = n_exp;
    }
    if (run_one_mm(h, ids, n_ids, mm, &ph.p, &r) != 0) goto done;
    json_t *o = json_object();
    json_object_set_new(o, "text", json_string(r.text ? r.text : ""));
    json_object_set_new(o, "token_ids", ids_json(r.token_ids, r.n_tokens));
    const char *fr = vm_finish_reason_name(r.finish_reason);
    json_object_set_new(o, "finish_reason", fr ? json_string(fr) : json_null());
    // stop_reason: the stop string or stop token that ended it (vLLM's field)
    json_t *stop_reason = json_null();
    if (r.finish_reason == VM_FINISH_STOP && r.n_tokens > 0 && ph.p.n_stop_token_ids > 0) {
        int32_t last = r.token_ids[r.n_tokens - 1];
        for (int i = 0; i < ph.p.n_stop_token_ids; i++)
            if (ph.p.stop_token_ids[i] == last) { json_decref(stop_reason); stop_reason = json_integer(last); break; }
    }
    // which stop string ended it is not kept by the offline helper: name it when there is only one
    if (r.finish_reason == VM_FINISH_STOP && json_is_null(stop_reason) && ph.p.n_stop == 1) {
        int eos_end = 0;
        vm_text_codec *c = vm_engine_codec(h->eng);
        int32_t eos[8];
        int n_eos = c ? vm_codec_eos_ids(c, eos, 8) : 0;
        for (int i = 0; i < n_eos && i < 8 && r.n_tokens > 0; i++) eos_end |= r.token_ids[r.n_tokens - 1] == eos[i];
        if (!eos_end) stop_reason = json_string(ph.p.stop[0]);
    }
    json_object_set_new(o, "stop_reason", stop_reason);
    if (rendered) json_object_set_new(o, "prompt", json_string(rendered));
    else if (prompt) json_object_set(o, "prompt", prompt);
    json_object_set_new(o, "prompt_token_ids", ids_json(ids, n_ids));
    json_object_set_new(o, "usage", json_pack("{s:i, s:i, s:i, s:i}", "prompt_tokens", n_ids,
                                              "completion_tokens", r.n_tokens, "total_tokens", n_ids + r.n_tokens,
                                              "cached_tokens", r.n_cached_tokens));
    if (r.logprobs) {
        json_t *lps = json_array();
        for (int i = 0; i < r.n_tokens; i++) {
            json_t *pos = json_array();
            for (int j = 0; j < r.logprobs[i].n; j++) {
                const vm_logprob *lp = &r.logprobs[i].entries[j];
                json_array_append_new(pos, json_pack("{s:i, s:f, s:i}", "token_id", lp->token_id,
                                                     "logprob", (double)lp->logprob, "rank", lp->rank));
            }
            json_array_append_new(lps, pos);
        }
        json_object_set_new(o, "logprobs", lps);
    }
    out = dump(o);
done:
    vm_offline_result_free(&r);
    vm_mm_inputs_release(mm);
    free(ids);
    free(rendered);
    params_free(&ph);
    json_decref(req);
    return out;
}

int vllm_metal_generate_ids(vllm_metal_engine *h, const int32_t *prompt_ids, int n_prompt,
                            const char *params_json, int32_t *out, int cap,
                            char *finish_reason, size_t finish_reason_cap) {
    if (!h) { set_error("no engine"); return -1; }
    if (!prompt_ids || n_prompt <= 0) { set_error("The prompt cannot be empty"); return -1; }
    params_holder ph;
    if (parse_params(params_json, &ph) != 0) return -1;
    vm_offline_result r;
    memset(&r, 0, sizeof r);
    int rc = run_one(h, prompt_ids, n_prompt, &ph.p, &r);
    if (rc == 0) {
        for (int i = 0; i < r.n_tokens && i < cap && out; i++) out[i] = r.token_ids[i];
        if (finish_reason && finish_reason_cap) {
            const char *fr = vm_finish_reason_name(r.finish_reason);
            snprintf(finish_reason, finish_reason_cap, "%s", fr ? fr : "");
        }
        rc = r.n_tokens;
    }
    vm_offline_result_free(&r);
    params_free(&ph);
    return rc;
}

// ---------------------------------------------------------------- tokenizer

int vllm_metal_tokenize(vllm_metal_engine *h, const char *text, int add_special_tokens, int32_t *out, int cap) {
    if (!h || !text) { set_error("no engine or text"); return -1; }
    int32_t *ids;
    int n;
    if (encode(h, text, add_special_tokens, &ids, &n)) return -1;
    for (int i = 0; i < n && i < cap && out; i++) out[i] = ids[i];
    free(ids);
    return n;
}

char *vllm_metal_detokenize(vllm_metal_engine *h, const int32_t *ids, int n, int skip_special_tokens) {
    if (!h) { set_error("no engine"); return NULL; }
    vm_text_codec *c = vm_engine_codec(h->eng);
    if (!c || !c->decode) { set_error("the model has no tokenizer"); return NULL; }
    int vocab = vm_engine_vocab_size(h->eng);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || (vocab > 0 && ids[i] >= vocab)) { set_error("token id %d out of range", ids[i]); return NULL; }
    char *s = c->decode(c->ctx, ids, n, skip_special_tokens);
    if (!s) set_error("decoding failed");
    return s;
}

char *vllm_metal_apply_chat_template(vllm_metal_engine *h, const char *request_json) {
    if (!h) { set_error("no engine"); return NULL; }
    json_t *req = parse_object(request_json, "request", 0);
    if (!req) return NULL;
    char *s = render_chat(h, req);
    json_decref(req);
    return s;
}

// ---------------------------------------------------------------- models

char *vllm_metal_resolve_model(const char *name) {
    char path[4096];
    vm_err e = {{0}};
    if (vm_hub_resolve(name, path, sizeof path, &e) != 0) { set_error("%s", e.msg); return NULL; }
    char *s = strdup(path);
    if (!s) set_error("out of memory");
    return s;
}
