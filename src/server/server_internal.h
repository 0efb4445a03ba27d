// server_internal.h - the server's modules as they see each other:
// http.c (libmicrohttpd glue, routing, auth, SSE), openai.c (request
// validation and response JSON), chat.c (chat template source + rendering),
// metrics.c (Prometheus text), cli_serve.c (flags and environment).
#ifndef VM_SERVER_INTERNAL_H
#define VM_SERVER_INTERNAL_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "server.h"

#ifndef VLLM_METAL_VERSION
#define VLLM_METAL_VERSION "0.1.0"
#endif

// ---------------------------------------------------------------- errors

// An HTTP-level failure: status code + OpenAI error JSON fields.
typedef struct srv_error {
    int status;          // 400, 401, 404, 405, 413, 500, 503
    const char *type;    // "BadRequestError", ...
    const char *param;   // offending field or NULL
    char msg[1024];
} srv_error;

int srv_fail(srv_error *err, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
const char *srv_error_type(int status);
json_t *srv_error_json(const srv_error *err);

// ---------------------------------------------------------------- metrics

#define SRV_TTFT_BUCKETS 22
#define SRV_ITL_BUCKETS 19
#define SRV_E2E_BUCKETS 21

typedef struct srv_histogram {
    int n_bounds;
    const double *bounds;
    uint64_t *counts;    // [n_bounds + 1], last = +Inf (non-cumulative)
    double sum;
    uint64_t count;
} srv_histogram;

typedef struct srv_metrics {
    pthread_mutex_t lock;
    srv_histogram ttft, itl, e2e;
    uint64_t ttft_c[SRV_TTFT_BUCKETS + 1], itl_c[SRV_ITL_BUCKETS + 1], e2e_c[SRV_E2E_BUCKETS + 1];
    uint64_t success_stop, success_length, success_abort, success_error;
    uint64_t prompt_tokens, generation_tokens; // counted by the server at finish
} srv_metrics;

void srv_metrics_init(srv_metrics *m);
void srv_metrics_destroy(srv_metrics *m);
// One finished sequence: its timestamps and how it ended.
void srv_metrics_observe_ttft(srv_metrics *m, double seconds);
void srv_metrics_observe_itl(srv_metrics *m, double seconds, int n);
void srv_metrics_finish(srv_metrics *m, vm_finish_reason r, double e2e_seconds);
// Prometheus text exposition (format 0.0.4). Returns malloc'ed text.
char *srv_metrics_render(srv_metrics *m, vm_engine *eng, const char *model_name);

// ---------------------------------------------------------------- chat templates

typedef struct srv_chat {
    char *source;        // Jinja template text (NULL: the model has none)
    char *bos_token, *eos_token;
    struct vm_chat_template *tpl; // parsed source (NULL: none, or parse_error says why)
    char parse_error[512];
} srv_chat;

// Finds the template: override file, else tokenizer_config.json "chat_template"
// (string or [{name, template}]), chat_template.jinja beside it, or GGUF
// tokenizer.chat_template. bos/eos strings from the codec / tokenizer config.
int srv_chat_load(srv_chat *c, const char *model_path, const char *override_file,
                  vm_engine *eng, vm_err *e);
void srv_chat_free(srv_chat *c);
// Renders messages (+ tools, add_generation_prompt, extra kwargs) to a prompt.
// Image parts' URLs are appended to images (a JSON array) in prompt order.
// Returns a malloc'ed string or NULL with err filled (400 for bad messages).
char *srv_chat_render(const srv_chat *c, json_t *messages, json_t *tools,
                      bool add_generation_prompt, bool continue_final_message,
                      json_t *kwargs, json_t *images, srv_error *err);

// ---------------------------------------------------------------- the server

struct vm_server {
    vm_server_config cfg;
    char *model_path;        // cfg.engine.model resolved (Hub name -> local snapshot)
    struct MHD_Daemon *daemon;
    vm_engine *eng;
    atomic_int ready;        // model loaded
    atomic_int stopping;
    char *model_name;        // served name
    char *model_root;        // path
    int max_model_len, vocab_size, max_logprobs;
    srv_chat chat;
    srv_metrics metrics;
    atomic_ullong next_id;
    atomic_ullong next_seed;
    long created;
    int port;
    atomic_int active_streams;
};

// ---------------------------------------------------------------- OpenAI layer

typedef enum { SRV_CHAT, SRV_COMPLETION } srv_kind;

// One accepted request: its prompts (submitted) and how to render outputs.
typedef struct srv_request srv_request;

// Validates the body, renders/tokenizes prompts and submits them.
// NULL + err on any problem (nothing left running).
srv_request *srv_request_create(vm_server *s, srv_kind kind, const char *body, size_t len,
                                srv_error *err);
bool srv_request_streaming(const srv_request *r);
// While waiting, `gone(ctx)` is asked now and then whether the client hung up
// (then the request is aborted).
void srv_request_set_watch(srv_request *r, bool (*gone)(void *ctx), void *ctx);
// Non-streaming: waits for every sequence and builds the response JSON.
json_t *srv_request_collect(srv_request *r, srv_error *err);
// Streaming: next SSE bytes (blocking). Returns a malloc'ed buffer with *len
// bytes, or NULL at the end of the stream ("data: [DONE]" already returned).
char *srv_request_next_sse(srv_request *r, size_t *len);
void srv_request_free(srv_request *r); // aborts whatever is still running

// /tokenize, /detokenize
json_t *srv_tokenize(vm_server *s, const char *body, size_t len, srv_error *err);
json_t *srv_detokenize(vm_server *s, const char *body, size_t len, srv_error *err);
json_t *srv_models_json(vm_server *s);

#endif
