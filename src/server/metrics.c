// metrics.c - vLLM's Prometheus metrics (names, labels and bucket boundaries
// of vLLM v1) in the text exposition format 0.0.4.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "server_internal.h"

static const double ttft_bounds[SRV_TTFT_BUCKETS] = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
static const double itl_bounds[SRV_ITL_BUCKETS] = {
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
    0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
static const double e2e_bounds[SRV_E2E_BUCKETS] = {
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

void srv_metrics_init(srv_metrics *m) {
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->lock, NULL);
    m->ttft = (srv_histogram){SRV_TTFT_BUCKETS, ttft_bounds, m->ttft_c, 0, 0};
    m->itl = (srv_histogram){SRV_ITL_BUCKETS, itl_bounds, m->itl_c, 0, 0};
    m->e2e = (srv_histogram){SRV_E2E_BUCKETS, e2e_bounds, m->e2e_c, 0, 0};
}

void srv_metrics_destroy(srv_metrics *m) { pthread_mutex_destroy(&m->lock); }

static void observe(srv_histogram *h, double v, int n) {
    if (!(v >= 0)) v = 0; // NaN or a clock step backwards
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i]) i++;
    h->counts[i] += (uint64_t)n;
    h->sum += v * n;
    h->count += (uint64_t)n;
}

void srv_metrics_observe_ttft(srv_metrics *m, double s) {
    pthread_mutex_lock(&m->lock);
    observe(&m->ttft, s, 1);
    pthread_mutex_unlock(&m->lock);
}

void srv_metrics_observe_itl(srv_metrics *m, double s, int n) {
    if (n <= 0) return;
    pthread_mutex_lock(&m->lock);
    observe(&m->itl, s, n);
    pthread_mutex_unlock(&m->lock);
}

void srv_metrics_finish(srv_metrics *m, vm_finish_reason r, double e2e) {
    pthread_mutex_lock(&m->lock);
    switch (r) {
    case VM_FINISH_STOP: m->success_stop++; break;
    case VM_FINISH_LENGTH: m->success_length++; break;
    case VM_FINISH_ABORT: m->success_abort++; break;
    default: m->success_error++; break;
    }
    observe(&m->e2e, e2e, 1);
    pthread_mutex_unlock(&m->lock);
}

// ---------------------------------------------------------------- text output

typedef struct text_buf { char *p; size_t len, cap; bool oom; } text_buf;

static void tb_printf(text_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_printf(text_buf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) { b->oom = true; return; }
        if (b->p && b->len + (size_t)n < b->cap) { b->len += (size_t)n; return; }
        size_t nc = b->cap ? b->cap * 2 : 8192;
        while (nc < b->len + (size_t)n + 1) nc *= 2;
        char *q = realloc(b->p, nc);
        if (!q) { b->oom = true; return; }
        b->p = q; b->cap = nc;
    }
}

// Label values escape backslash, quote and newline.
static char *escape_label(const char *s) {
    size_t n = strlen(s);
    char *o = malloc(2 * n + 1), *q = o;
    if (!o) return NULL;
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') { *q++ = '\\'; *q++ = *s; }
        else if (*s == '\n') { *q++ = '\\'; *q++ = 'n'; }
        else *q++ = *s;
    }
    *q = 0;
    return o;
}

static void header(text_buf *b, const char *name, const char *type, const char *help) {
    tb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void histogram(text_buf *b, const char *name, const char *help, const char *labels,
                      const srv_histogram *h) {
    header(b, name, "histogram", help);
    uint64_t cum = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        cum += h->counts[i];
        tb_printf(b, "%s_bucket{%s,le=\"%g\"} %llu\n", name, labels,
                  h->bounds[i], (unsigned long long)cum);
    }
    cum += h->counts[h->n_bounds];
    tb_printf(b, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels, (unsigned long long)cum);
    tb_printf(b, "%s_count{%s} %llu\n", name, labels, (unsigned long long)h->count);
    tb_printf(b, "%s_sum{%s} %.9g\n", name, labels, h->sum);
}

char *srv_metrics_render(srv_metrics *m, vm_engine *eng, const char *model_name) {
    vm_engine_stats st;
    memset(&st, 0, sizeof st);
    if (eng) vm_engine_get_stats(eng, &st);
    char *esc = escape_label(model_name ? model_name : "");
    if (!esc) return NULL;
    char labels[1200];
    snprintf(labels, sizeof labels, "engine=\"0\",model_name=\"%s\"", esc);
    free(esc);

    text_buf b = {0};
    header(&b, "vllm:num_requests_running", "gauge",
           "Number of requests in model execution batches.");
    tb_printf(&b, "vllm:num_requests_running{%s} %d\n", labels, st.num_running);
    header(&b, "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.");
    tb_printf(&b, "vllm:num_requests_waiting{%s} %d\n", labels, st.num_waiting);
    header(&b, "vllm:kv_cache_usage_perc", "gauge",
           "KV-cache usage. 1 means 100 percent usage.");
    tb_printf(&b, "vllm:kv_cache_usage_perc{%s} %.9g\n", labels, st.kv_usage);
    header(&b, "vllm:prefix_cache_queries_total", "counter",
           "Prefix cache queries, in terms of number of queried tokens.");
    tb_printf(&b, "vllm:prefix_cache_queries_total{%s} %llu\n", labels,
              (unsigned long long)st.prefix_cache_queries);
    header(&b, "vllm:prefix_cache_hits_total", "counter",
           "Prefix cache hits, in terms of number of cached tokens.");
    tb_printf(&b, "vllm:prefix_cache_hits_total{%s} %llu\n", labels,
              (unsigned long long)st.prefix_cache_hits);
    header(&b, "vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine.");
    tb_printf(&b, "vllm:num_preemptions_total{%s} %llu\n", labels,
              (unsigned long long)st.num_preemptions);
    header(&b, "vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.");
    tb_printf(&b, "vllm:prompt_tokens_total{%s} %llu\n", labels, (unsigned long long)st.prompt_tokens);
    header(&b, "vllm:generation_tokens_total", "counter", "Number of generation tokens processed.");
    tb_printf(&b, "vllm:generation_tokens_total{%s} %llu\n", labels,
              (unsigned long long)st.generation_tokens);

    pthread_mutex_lock(&m->lock);
    header(&b, "vllm:request_success_total", "counter", "Count of successfully processed requests.");
    const char *reasons[] = {"stop", "length", "abort"};
    uint64_t counts[] = {m->success_stop, m->success_length, m->success_abort};
    for (int i = 0; i < 3; i++)
        tb_printf(&b, "vllm:request_success_total{%s,finished_reason=\"%s\"} %llu\n", labels,
                  reasons[i], (unsigned long long)counts[i]);
    histogram(&b, "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
              labels, &m->ttft);
    histogram(&b, "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
              labels, &m->itl);
    histogram(&b, "vllm:e2e_request_latency_seconds",
              "Histogram of e2e request latency in seconds.", labels, &m->e2e);
    pthread_mutex_unlock(&m->lock);
    if (b.oom) { free(b.p); return NULL; }
    return b.p;
}
