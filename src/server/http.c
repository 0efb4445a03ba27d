// http.c - libmicrohttpd glue: one thread per connection; bodies are read
// into memory (capped), routed, authorized, and answered with JSON, SSE
// (a response callback that blocks on the request's stream) or Prometheus text.
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "server_internal.h"
#include "hub/hub.h"

typedef struct conn_ctx {
    char *body; size_t len, cap;
    bool too_big;
    bool answered;   // a response was queued early (oversized body)
} conn_ctx;

void vm_server_config_init(vm_server_config *c) {
    memset(c, 0, sizeof *c);
    c->host = "127.0.0.1";
    c->port = 8000;
    c->max_body_bytes = 32u << 20;
    vm_engine_args_init(&c->engine);
}

// ---------------------------------------------------------------- responses

static enum MHD_Result send_text(struct MHD_Connection *conn, int status, const char *type,
                                 const char *text, size_t len) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result r = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return r;
}

static enum MHD_Result send_json(struct MHD_Connection *conn, int status, json_t *j) {
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s) return send_text(conn, 500, "application/json",
                             "{\"error\":{\"message\":\"out of memory\",\"type\":\"InternalServerError\","
                             "\"param\":null,\"code\":500}}", 92);
    enum MHD_Result r = send_text(conn, status, "application/json", s, strlen(s));
    free(s);
    return r;
}

static enum MHD_Result send_error(struct MHD_Connection *conn, const srv_error *err) {
    return send_json(conn, err->status, srv_error_json(err));
}

static enum MHD_Result fail(struct MHD_Connection *conn, int status, const char *fmt, const char *arg) {
    srv_error err;
    srv_fail(&err, status, NULL, fmt, arg);
    return send_error(conn, &err);
}

// ---------------------------------------------------------------- SSE

typedef struct sse_ctx {
    srv_request *req;
    char *pending; size_t len, off;
} sse_ctx;

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    sse_ctx *c = cls;
    while (c->off >= c->len) {
        free(c->pending);
        c->pending = NULL; c->len = c->off = 0;
        size_t n = 0;
        char *next = srv_request_next_sse(c->req, &n);
        if (!next) return MHD_CONTENT_READER_END_OF_STREAM;
        c->pending = next; c->len = n;
    }
    size_t k = c->len - c->off < max ? c->len - c->off : max;
    memcpy(buf, c->pending + c->off, k);
    c->off += k;
    return (ssize_t)k;
}

// Called when the response is done or the client went away: aborts what is
// still running (blocks are freed at the engine's next step).
static void sse_free(void *cls) {
    sse_ctx *c = cls;
    srv_request_free(c->req);
    free(c->pending);
    free(c);
}

static enum MHD_Result send_stream(struct MHD_Connection *conn, srv_request *req) {
    sse_ctx *c = calloc(1, sizeof *c);
    if (!c) { srv_request_free(req); return fail(conn, 500, "%s", "out of memory"); }
    c->req = req;
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_read, c, sse_free);
    if (!resp) { sse_free(c); return MHD_NO; }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result r = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return r;
}

// Has the client of a blocked non-streaming request hung up? (Only peeks: a
// pipelined next request stays in the socket.)
static bool client_gone(void *ctx) {
    struct MHD_Connection *conn = ctx;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return false;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLHUP | POLLERR | POLLRDHUP | POLLNVAL)) return true;
    char c;
    return recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

// ---------------------------------------------------------------- routing

typedef enum { R_NONE, R_HEALTH, R_VERSION, R_METRICS, R_MODELS, R_CHAT, R_COMPLETIONS, R_TOKENIZE,
               R_DETOKENIZE, R_PING } route_id;

static const struct { const char *path; const char *method; route_id id; } routes[] = {
    {"/health", "GET", R_HEALTH},
    {"/ping", "GET", R_PING},
    {"/version", "GET", R_VERSION},
    {"/metrics", "GET", R_METRICS},
    {"/v1/models", "GET", R_MODELS},
    {"/v1/chat/completions", "POST", R_CHAT},
    {"/v1/completions", "POST", R_COMPLETIONS},
    {"/tokenize", "POST", R_TOKENIZE},
    {"/detokenize", "POST", R_DETOKENIZE},
};

static bool authorized(vm_server *s, struct MHD_Connection *conn, const char *url) {
    if (!s->cfg.api_key || strncmp(url, "/v1", 3) != 0) return true;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return false;
    h += 7;
    while (*h == ' ') h++;
    // constant-time compare
    size_t a = strlen(h), b = strlen(s->cfg.api_key);
    unsigned diff = (unsigned)(a ^ b);
    for (size_t i = 0; i < a && i < b; i++) diff |= (unsigned char)(h[i] ^ s->cfg.api_key[i]);
    return diff == 0;
}

static enum MHD_Result dispatch(vm_server *s, struct MHD_Connection *conn, const char *url,
                                const char *method, conn_ctx *cc) {
    bool is_head = !strcmp(method, "HEAD");
    route_id id = R_NONE;
    const char *allowed = NULL;
    for (size_t i = 0; i < VM_ARRAY_LEN(routes); i++) {
        if (strcmp(url, routes[i].path)) continue;
        allowed = routes[i].method;
        if (!strcmp(method, routes[i].method) || (is_head && !strcmp(routes[i].method, "GET"))) id = routes[i].id;
    }
    if (id == R_NONE && allowed) {
        srv_error err;
        srv_fail(&err, 405, NULL, "Method %s is not allowed for %s (use %s)", method, url, allowed);
        json_t *j = srv_error_json(&err);
        char *txt = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        struct MHD_Response *resp = MHD_create_response_from_buffer(txt ? strlen(txt) : 0, txt ? txt : (void *)"",
                                                                    txt ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
        if (!resp) return MHD_NO;
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allowed);
        enum MHD_Result r = MHD_queue_response(conn, 405, resp);
        MHD_destroy_response(resp);
        return r;
    }
    if (id == R_NONE) return fail(conn, 404, "Not Found: %s", url);
    if (!authorized(s, conn, url)) return fail(conn, 401, "%s", "Unauthorized");
    if (cc->too_big) {
        char msg[96];
        snprintf(msg, sizeof msg, "%zu", s->cfg.max_body_bytes);
        return fail(conn, 413, "Request body too large (the limit is %s bytes)", msg);
    }
    bool ready = atomic_load(&s->ready);
    switch (id) {
    case R_HEALTH:
    case R_PING:
        if (!ready) return fail(conn, 503, "%s", "the model is still loading");
        return send_text(conn, 200, "application/json", "", 0);
    case R_VERSION:
        return send_json(conn, 200, json_pack("{s:s}", "version", VLLM_METAL_VERSION));
    default: break;
    }
    if (!ready) return fail(conn, 503, "%s", "the model is still loading");
    srv_error err = {0};
    switch (id) {
    case R_METRICS: {
        char *t = srv_metrics_render(&s->metrics, s->eng, s->model_name);
        if (!t) return fail(conn, 500, "%s", "out of memory");
        enum MHD_Result r = send_text(conn, 200, "text/plain; version=0.0.4; charset=utf-8", t, strlen(t));
        free(t);
        return r;
    }
    case R_MODELS:
        return send_json(conn, 200, srv_models_json(s));
    case R_TOKENIZE:
    case R_DETOKENIZE: {
        json_t *j = id == R_TOKENIZE ? srv_tokenize(s, cc->body, cc->len, &err)
                                     : srv_detokenize(s, cc->body, cc->len, &err);
        return j ? send_json(conn, 200, j) : send_error(conn, &err);
    }
    case R_CHAT:
    case R_COMPLETIONS: {
        srv_request *req = srv_request_create(s, id == R_CHAT ? SRV_CHAT : SRV_COMPLETION, cc->body, cc->len, &err);
        if (!req) return send_error(conn, &err);
        srv_request_set_watch(req, client_gone, conn);
        if (srv_request_streaming(req)) return send_stream(conn, req);
        json_t *j = srv_request_collect(req, &err);
        srv_request_free(req);
        return j ? send_json(conn, 200, j) : send_error(conn, &err);
    }
    default:
        return fail(conn, 404, "Not Found: %s", url);
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
    (void)version;
    vm_server *s = cls;
    conn_ctx *cc = *con_cls;
    if (!cc) {
        cc = calloc(1, sizeof *cc);
        if (!cc) return MHD_NO;
        *con_cls = cc;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->cfg.max_body_bytes) {
            cc->too_big = true;
            cc->answered = true;
            char msg[64];
            snprintf(msg, sizeof msg, "%zu", s->cfg.max_body_bytes);
            return fail(conn, 413, "Request body too large (the limit is %s bytes)", msg);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (cc->answered || cc->too_big) return MHD_YES;
        if (cc->len + n > s->cfg.max_body_bytes) {
            cc->too_big = true;
            free(cc->body); cc->body = NULL; cc->len = cc->cap = 0;
            return MHD_YES;
        }
        if (cc->len + n + 1 > cc->cap) {
            size_t nc = cc->cap ? cc->cap : 4096;
            while (nc < cc->len + n + 1) nc *= 2;
            char *p = realloc(cc->body, nc);
            if (!p) { cc->too_big = true; return MHD_YES; }
            cc->body = p; cc->cap = nc;
        }
        memcpy(cc->body + cc->len, upload_data, n);
        cc->len += n;
        cc->body[cc->len] = 0;
        return MHD_YES;
    }
    if (cc->answered) return MHD_YES;
    cc->answered = true;
    double t0 = vm_now_seconds();
    enum MHD_Result r = dispatch(s, conn, url, method, cc);
    if (s->cfg.debug)
        fprintf(stderr, "DEBUG: %s %s (%zu bytes) %.1f ms\n", method, url, cc->len, (vm_now_seconds() - t0) * 1e3);
    return r;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)cls; (void)conn; (void)toe;
    conn_ctx *cc = *con_cls;
    if (cc) { free(cc->body); free(cc); }
    *con_cls = NULL;
}

// ---------------------------------------------------------------- lifecycle

vm_server *vm_server_start(const vm_server_config *cfg, vm_err *e) {
    vm_server *s = calloc(1, sizeof *s);
    if (!s) { vm_errf(e, "out of memory"); return NULL; }
    s->cfg = *cfg;
    srv_metrics_init(&s->metrics);
    s->created = (long)time(NULL);
    s->max_logprobs = 20;
    atomic_init(&s->next_id, (unsigned long long)time(NULL));

    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char port[16];
    snprintf(port, sizeof port, "%d", cfg->port);
    const char *host = cfg->host && *cfg->host ? cfg->host : NULL;
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai != 0 || !ai) {
        vm_errf(e, "--host %s: cannot resolve: %s", cfg->host ? cfg->host : "", gai_strerror(gai));
        srv_metrics_destroy(&s->metrics);
        free(s);
        return NULL;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    if (cfg->debug) flags |= MHD_USE_ERROR_LOG;
    s->daemon = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, on_request, s,
                                 MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)1000,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600,
                                 MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->daemon) {
        vm_errf(e, "cannot listen on %s:%d (address in use, or not allowed)", cfg->host ? cfg->host : "*", cfg->port);
        srv_metrics_destroy(&s->metrics);
        free(s);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : cfg->port;
    return s;
}

int vm_server_port(const vm_server *s) { return s->port; }

int vm_server_attach_engine(vm_server *s, vm_engine *eng, vm_err *e) {
    s->eng = eng;
    const vm_engine_args *a = vm_engine_get_args(eng);
    s->max_model_len = a->max_model_len;
    s->max_logprobs = a->max_logprobs > 0 ? a->max_logprobs : 20;
    s->vocab_size = vm_engine_vocab_size(eng);
    const char *path = s->model_path ? s->model_path : s->cfg.engine.model ? s->cfg.engine.model : "model";
    const char *name = s->cfg.engine.model ? s->cfg.engine.model : path; // as the user typed it
    s->model_root = strdup(path);
    s->model_name = strdup(s->cfg.served_model_name ? s->cfg.served_model_name : name);
    if (!s->model_root || !s->model_name) return vm_errf(e, "out of memory");
    if (srv_chat_load(&s->chat, path, s->cfg.chat_template, eng, e) != 0) return -1;
    if (!s->chat.source)
        fprintf(stderr, "WARNING: the model has no chat template; /v1/chat/completions will fail "
                        "(pass --chat-template FILE)\n");
    else if (!s->chat.tpl && s->chat.parse_error[0])
        fprintf(stderr, "WARNING: the model's chat template cannot be parsed: %s\n", s->chat.parse_error);
    if (vm_engine_start(eng, e) != 0) return -1;
    atomic_store(&s->ready, 1);
    return 0;
}

int vm_server_load(vm_server *s, vm_err *e) {
    vm_engine_args args = s->cfg.engine;
    if (args.model && vm_hub_is_hub_name(args.model)) {   // org/name[@rev]: download or find in the HF cache
        char resolved[4096];
        if (vm_hub_resolve(args.model, resolved, sizeof resolved, e) != 0) return -1;
        free(s->model_path);
        if (!(s->model_path = strdup(resolved))) return vm_errf(e, "out of memory");
        args.model = s->model_path;
    }
    vm_engine *eng = vm_engine_create(&args, e);
    if (!eng) return -1;
    if (vm_server_attach_engine(s, eng, e) != 0) return -1;
    return 0;
}

void vm_server_stop(vm_server *s) {
    if (!s) return;
    atomic_store(&s->stopping, 1);
    if (s->daemon) {
        // streams notice `stopping` within 0.25 s, abort and end
        MHD_quiesce_daemon(s->daemon);
        for (int i = 0; i < 400 && atomic_load(&s->active_streams) > 0; i++) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        MHD_stop_daemon(s->daemon);
    }
    if (s->eng) vm_engine_free(s->eng);
    srv_chat_free(&s->chat);
    srv_metrics_destroy(&s->metrics);
    free(s->model_name);
    free(s->model_root);
    free(s->model_path);
    free(s);
}
