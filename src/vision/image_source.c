// image_source.c - where a request's image bytes come from: data: URLs
// (base64), http(s):// URLs fetched with libcurl (size, time and redirect
// limits; no other protocols, also not after a redirect), and, only when the
// caller allows it, local files.
#include <ctype.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "vision.h"

void vm_image_fetch_defaults(vm_image_fetch_opts *o) {
    o->max_bytes = 20u << 20;
    o->timeout_s = 10;
    o->max_redirects = 3;
    o->allow_files = 0;
}

static int b64_value(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
}

int vm_base64_decode(const char *s, size_t n, void **out, size_t *n_out, size_t max_bytes, vm_err *e) {
    if (n / 4 * 3 > max_bytes + 3)
        return vm_errf(e, "the image is larger than the limit of %zu bytes", max_bytes);
    uint8_t *o = malloc(n / 4 * 3 + 3);
    if (!o) return vm_errf(e, "out of memory");
    size_t k = 0;
    uint32_t acc = 0;
    int bits = 0, pad = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '=') { pad++; continue; }
        if (isspace(c)) continue;
        int v = b64_value(c);
        if (v < 0 || pad) { free(o); return vm_errf(e, "invalid base64 data (character %zu)", i); }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) { bits -= 8; o[k++] = (uint8_t)(acc >> bits); }
    }
    if (pad > 2 || bits >= 6) { free(o); return vm_errf(e, "invalid base64 data (bad length or padding)"); }
    if (k > max_bytes) { free(o); return vm_errf(e, "the image is larger than the limit of %zu bytes", max_bytes); }
    *out = o;
    *n_out = k;
    return 0;
}

// data:[<media type>][;base64],<data>
static int read_data_url(const char *url, const vm_image_fetch_opts *o, void **out, size_t *n, vm_err *e) {
    const char *comma = strchr(url, ',');
    if (!comma) return vm_errf(e, "invalid data URL: no ','");
    const char *meta = url + 5;
    size_t mlen = (size_t)(comma - meta);
    bool b64 = mlen >= 7 && !strncasecmp(comma - 7, ";base64", 7);
    if (!b64) return vm_errf(e, "data URLs must be base64-encoded (data:image/png;base64,...)");
    size_t tlen = strcspn(meta, ";,");
    if (tlen > 0 && !(tlen >= 6 && !strncasecmp(meta, "image/", 6)) &&
        !(tlen == 24 && !strncasecmp(meta, "application/octet-stream", 24)))
        return vm_errf(e, "unsupported media type '%.*s' in a data URL: expected image/*", (int)VM_MIN(tlen, 64), meta);
    return vm_base64_decode(comma + 1, strlen(comma + 1), out, n, o->max_bytes, e);
}

typedef struct fetch_buf { uint8_t *p; size_t n, cap, max; bool too_big; } fetch_buf;

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud) {
    fetch_buf *b = ud;
    size_t len = size * nmemb;
    if (b->n + len > b->max) { b->too_big = true; return 0; }
    if (b->n + len > b->cap) {
        size_t nc = VM_MAX(b->cap * 2, b->n + len + 4096);
        if (nc > b->max) nc = b->max;
        void *q = realloc(b->p, nc);
        if (!q) return 0;
        b->p = q; b->cap = nc;
    }
    memcpy(b->p + b->n, ptr, len);
    b->n += len;
    return len;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_rc = CURLE_OK;
static void curl_start(void) { curl_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

static int fetch_url(const char *url, const vm_image_fetch_opts *o, void **out, size_t *n, vm_err *e) {
    pthread_once(&curl_once, curl_start);
    if (curl_rc != CURLE_OK) return vm_errf(e, "curl_global_init: %s", curl_easy_strerror(curl_rc));
    CURL *h = curl_easy_init();
    if (!h) return vm_errf(e, "curl_easy_init failed");
    fetch_buf b = { .max = o->max_bytes };
    char cerr[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_URL, url);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, o->max_redirects > 0 ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, (long)o->max_redirects);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, o->timeout_s);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, o->timeout_s);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->max_bytes);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "vllm-metal");
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    if (b.too_big || rc == CURLE_FILESIZE_EXCEEDED) {
        free(b.p);
        return vm_errf(e, "cannot fetch %.200s: the image is larger than the limit of %zu bytes", url, o->max_bytes);
    }
    if (rc != CURLE_OK) {
        free(b.p);
        if (rc == CURLE_HTTP_RETURNED_ERROR) return vm_errf(e, "cannot fetch %.200s: HTTP status %ld", url, status);
        return vm_errf(e, "cannot fetch %.200s: %s", url, cerr[0] ? cerr : curl_easy_strerror(rc));
    }
    if (b.n == 0) { free(b.p); return vm_errf(e, "cannot fetch %.200s: empty response", url); }
    *out = b.p;
    *n = b.n;
    return 0;
}

int vm_image_source_read(const char *src, const vm_image_fetch_opts *opts, void **out, size_t *n, vm_err *e) {
    vm_image_fetch_opts def;
    if (!opts) { vm_image_fetch_defaults(&def); opts = &def; }
    *out = NULL; *n = 0;
    if (!src || !*src) return vm_errf(e, "empty image URL");
    if (!strncasecmp(src, "data:", 5)) return read_data_url(src, opts, out, n, e);
    if (!strncasecmp(src, "http://", 7) || !strncasecmp(src, "https://", 8)) return fetch_url(src, opts, out, n, e);
    if (opts->allow_files) {
        const char *path = !strncasecmp(src, "file://", 7) ? src + 7 : src;
        vm_err fe = {{0}};
        char *data = vm_read_file(path, n, opts->max_bytes, &fe);
        if (!data) return vm_errf(e, "cannot read image %.200s: %s", path, fe.msg);
        *out = data;
        return 0;
    }
    return vm_errf(e, "unsupported image URL '%.40s%s': use a data: URL (base64) or http(s)://",
                   src, strlen(src) > 40 ? "..." : "");
}
