// test_server.c - the HTTP server over the fake engine (no model needed):
// routing, auth, validation errors, completions (greedy = the fake's
// reference), SSE, chat through a template, metrics text.
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/server_internal.h"
#include "test_engine_fake.h"

// ---------------------------------------------------------------- tiny HTTP client

typedef struct http_reply { int status; char *all; const char *body; } http_reply;

static http_reply http(int port, const char *method, const char *path, const char *auth, const char *body) {
    http_reply r = {0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    char head[1024];
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n"
                     "%s%s%sContent-Length: %zu\r\n\r\n",
                     method, path, auth ? "Authorization: Bearer " : "", auth ? auth : "", auth ? "\r\n" : "",
                     body ? strlen(body) : 0);
    cr_assert(write(fd, head, (size_t)n) == n);
    if (body) cr_assert(write(fd, body, strlen(body)) == (ssize_t)strlen(body));
    size_t cap = 1 << 16, len = 0;
    r.all = malloc(cap);
    ssize_t k;
    while ((k = read(fd, r.all + len, cap - len - 1)) > 0) {
        len += (size_t)k;
        if (len + 1 == cap) { cap *= 2; r.all = realloc(r.all, cap); }
    }
    r.all[len] = 0;
    close(fd);
    sscanf(r.all, "HTTP/1.1 %d", &r.status);
    const char *b = strstr(r.all, "\r\n\r\n");
    r.body = b ? b + 4 : "";
    return r;
}

static json_t *reply_json(http_reply *r) {
    json_error_t je;
    json_t *j = json_loads(r->body, 0, &je);
    cr_assert(j, "not JSON: %s", r->body);
    return j;
}

static void expect_error(int port, const char *method, const char *path, const char *auth, const char *body,
                         int status) {
    http_reply r = http(port, method, path, auth, body);
    cr_assert_eq(r.status, status, "%s %s %s -> %d: %s", method, path, body ? body : "", r.status, r.body);
    json_t *j = reply_json(&r);
    json_t *err = json_object_get(j, "error");
    cr_assert(json_is_string(json_object_get(err, "message")));
    cr_assert(json_is_string(json_object_get(err, "type")));
    cr_assert_eq(json_integer_value(json_object_get(err, "code")), status);
    json_decref(j);
    free(r.all);
}

// ---------------------------------------------------------------- fixture

static vm_server *srv;
static int port;
static char template_path[] = "/tmp/vm_test_server_tpl_XXXXXX";

static void start(void) {
    int fd = mkstemp(template_path);
    cr_assert(fd >= 0);
    const char *tpl = "{% for m in messages %}{{ m.content }} {% endfor %}";
    cr_assert(write(fd, tpl, strlen(tpl)) == (ssize_t)strlen(tpl));
    close(fd);
    vm_server_config c;
    vm_server_config_init(&c);
    c.port = 0;
    c.api_key = "k";
    c.served_model_name = "fake";
    c.chat_template = template_path;
    vm_err e = {{0}};
    srv = vm_server_start(&c, &e);
    cr_assert(srv, "%s", e.msg);
    port = vm_server_port(srv);
    http_reply r = http(port, "GET", "/health", NULL, NULL);
    cr_assert_eq(r.status, 503);
    free(r.all);
    vm_engine *eng = fake_engine(64, 16, 8, 256, 1, NULL);
    cr_assert(eng);
    cr_assert(vm_server_attach_engine(srv, eng, &e) == 0, "%s", e.msg);
}

static void stop(void) {
    vm_server_stop(srv);
    unlink(template_path);
}

TestSuite(server, .init = start, .fini = stop, .timeout = 60);

Test(server, health_models_auth) {
    http_reply r = http(port, "GET", "/health", NULL, NULL);
    cr_assert_eq(r.status, 200);
    free(r.all);
    expect_error(port, "GET", "/v1/models", NULL, NULL, 401);
    expect_error(port, "GET", "/v1/models", "wrong", NULL, 401);
    r = http(port, "GET", "/v1/models", "k", NULL);
    cr_assert_eq(r.status, 200);
    json_t *j = reply_json(&r);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(j, "data"), 0), "id")), "fake");
    json_decref(j);
    free(r.all);
}

Test(server, greedy_completion_matches_reference) {
    int32_t prompt[] = {8, 5, 12, 12, 15}, ref[8];
    int n = fake_greedy_ref(prompt, 5, 8, ref);
    char *want = fake_decode(NULL, ref, n, 1);
    // as vLLM, a trailing incomplete character is never emitted
    size_t wl = strlen(want);
    while (wl >= 3 && !strcmp(want + wl - 3, "\xEF\xBF\xBD")) want[wl -= 3] = 0;
    http_reply r = http(port, "POST", "/v1/completions", "k",
                        "{\"model\":\"fake\",\"prompt\":[8,5,12,12,15],\"max_tokens\":8,\"temperature\":0}");
    cr_assert_eq(r.status, 200, "%s", r.body);
    json_t *j = reply_json(&r);
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(c0, "text")), want);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens")), 5);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens")), n);
    cr_assert_eq(strncmp(json_string_value(json_object_get(j, "id")), "cmpl-", 5), 0);
    json_decref(j);
    free(r.all);
    free(want);
}

Test(server, streaming) {
    http_reply r = http(port, "POST", "/v1/completions", "k",
                        "{\"prompt\":\"hello\",\"max_tokens\":4,\"stream\":true,\"n\":1,"
                        "\"stream_options\":{\"include_usage\":true},\"ignore_eos\":true}");
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.all, "text/event-stream"));
    cr_assert(strstr(r.body, "\"finish_reason\":\"length\""));
    cr_assert(strstr(r.body, "\"completion_tokens\":4"), "%s", r.body);
    cr_assert(strstr(r.body, "data: [DONE]"));
    free(r.all);
}

Test(server, chat_through_template) {
    http_reply r = http(port, "POST", "/v1/chat/completions", "k",
                        "{\"messages\":[{\"role\":\"user\",\"content\":\"hello there\"}],\"max_tokens\":3,"
                        "\"logprobs\":true,\"top_logprobs\":2}");
    cr_assert_eq(r.status, 200, "%s", r.body);
    json_t *j = reply_json(&r);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens")), 12);
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    json_t *lp = json_object_get(json_object_get(c0, "logprobs"), "content");
    cr_assert(json_array_size(lp) >= 1);
    cr_assert_eq(json_array_size(json_object_get(json_array_get(lp, 0), "top_logprobs")), 2);
    json_decref(j);
    free(r.all);
}

Test(server, errors) {
    expect_error(port, "POST", "/v1/completions", "k", "{", 400);
    expect_error(port, "POST", "/v1/completions", "k", "", 400);
    expect_error(port, "POST", "/v1/completions", "k", "{\"prompt\":\"hi\",\"max_tokens\":\"x\"}", 400);
    expect_error(port, "POST", "/v1/completions", "k", "{\"prompt\":\"hi\",\"temperature\":-3}", 400);
    expect_error(port, "POST", "/v1/completions", "k", "{\"prompt\":\"HI\"}", 400); // untokenizable
    expect_error(port, "POST", "/v1/completions", "k", "{\"prompt\":[1000]}", 400);
    expect_error(port, "POST", "/v1/completions", "k", "{\"prompt\":\"hi\",\"model\":\"other\"}", 404);
    expect_error(port, "POST", "/v1/chat/completions", "k", "{\"messages\":[]}", 400);
    expect_error(port, "POST", "/v1/completions", "k", "{\"prompt\":\"hi\",\"max_tokens\":5000}", 400);
    expect_error(port, "GET", "/v1/completions", "k", NULL, 405);
    expect_error(port, "GET", "/nope", NULL, NULL, 404);
    expect_error(port, "POST", "/detokenize", NULL, "{\"tokens\":[-1]}", 400);
    http_reply r = http(port, "POST", "/detokenize", NULL, "{\"tokens\":[8,9]}");
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\"prompt\":\"hi\""), "%s", r.body);
    free(r.all);
}

Test(server, metrics_text) {
    http_reply r = http(port, "POST", "/v1/completions", "k", "{\"prompt\":\"ab\",\"max_tokens\":2,\"ignore_eos\":true}");
    cr_assert_eq(r.status, 200);
    free(r.all);
    r = http(port, "GET", "/metrics", NULL, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "# TYPE vllm:time_to_first_token_seconds histogram"));
    cr_assert(strstr(r.body, "vllm:request_success_total{engine=\"0\",model_name=\"fake\",finished_reason=\"length\"} 1"),
              "%s", r.body);
    cr_assert(strstr(r.body, "vllm:generation_tokens_total{engine=\"0\",model_name=\"fake\"} 2"), "%s", r.body);
    cr_assert(strstr(r.body, "vllm:e2e_request_latency_seconds_bucket{engine=\"0\",model_name=\"fake\",le=\"7680\"} 1"));
    free(r.all);
}

Test(metrics, histogram_buckets_cumulative) {
    srv_metrics m;
    srv_metrics_init(&m);
    srv_metrics_observe_ttft(&m, 0.003);
    srv_metrics_observe_ttft(&m, 0.005); // on a boundary: le="0.005"
    srv_metrics_observe_ttft(&m, 9999);
    char *t = srv_metrics_render(&m, NULL, "a\"b");
    cr_assert(strstr(t, "model_name=\"a\\\"b\""));
    cr_assert(strstr(t, "vllm:time_to_first_token_seconds_bucket{engine=\"0\",model_name=\"a\\\"b\",le=\"0.001\"} 0"));
    cr_assert(strstr(t, "vllm:time_to_first_token_seconds_bucket{engine=\"0\",model_name=\"a\\\"b\",le=\"0.005\"} 2"));
    cr_assert(strstr(t, "vllm:time_to_first_token_seconds_bucket{engine=\"0\",model_name=\"a\\\"b\",le=\"2560\"} 2"));
    cr_assert(strstr(t, "vllm:time_to_first_token_seconds_bucket{engine=\"0\",model_name=\"a\\\"b\",le=\"+Inf\"} 3"));
    cr_assert(strstr(t, "vllm:time_to_first_token_seconds_count{engine=\"0\",model_name=\"a\\\"b\"} 3"));
    free(t);
    srv_metrics_destroy(&m);
}
