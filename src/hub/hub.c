// hub.c - models by Hugging Face Hub name: the Hub's HTTP API through libcurl,
// into the standard Hugging Face cache (see hub.h for the layout and the
// environment it honours).
//
// The way of one resolve:
//   1. parse "org/name[@rev][:file]"
//   2. cache first: refs/<rev> (or a pinned commit) -> snapshots/<sha>/ complete?
//      then return it, no network (HF_HUB_OFFLINE=1 stops here either way)
//   3. GET {endpoint}/api/models/{repo}/revision/{rev} -> "sha", "siblings"
//   4. pick the files, then for each: HEAD .../resolve/{sha}/{file} for its etag
//      (X-Linked-Etag for LFS files, which is their sha256; else ETag), reuse
//      blobs/<etag> or download into blobs/<etag>.incomplete (resumed with
//      Range after a cut connection), check size and sha256, rename, and link
//      snapshots/<sha>/<file> -> ../../blobs/<etag>
//   5. write refs/<rev> = sha
#include "hub.h"

#include <ctype.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sha256.h"

#define HUB_PATH_MAX 4096
#define HUB_MAX_FILES 256
#define HUB_API_MAX_BYTES (64u << 20)
#define HUB_RETRIES 5

// Files fetched beside the weights when the repository has them.
static const char *const SMALL_FILES[] = {
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja",
};

// GGUF choice when a repository holds several and none is named: the types the
// loader reads first, then the rest.
static const char *const GGUF_PREFERENCE[] = {
    "q4_1", "q8_0", "q4_0", "q4_k_m", "f16", "bf16", "f32",
};

// ---------------------------------------------------------------- names

typedef struct hub_ref {
    char repo[256];   // org/name
    char rev[256];    // "main" unless given
    char file[512];   // "" unless ":file" given
} hub_ref;

static int valid_part(const char *s, size_t n) {
    if (n == 0 || n > 96 || !isalnum((unsigned char)s[0])) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!isalnum(c) && c != '-' && c != '_' && c != '.') return 0;
        if (c == '.' && i + 1 < n && s[i + 1] == '.') return 0;
    }
    return 1;
}

static int parse_name(const char *name, hub_ref *r) {
    memset(r, 0, sizeof *r);
    const char *slash = strchr(name, '/');
    if (!slash) return -1;
    size_t org_len = (size_t)(slash - name);
    const char *rest = slash + 1;
    size_t name_len = strcspn(rest, "@:");
    if (!valid_part(name, org_len) || !valid_part(rest, name_len)) return -1;
    if (org_len + 1 + name_len >= sizeof r->repo) return -1;
    memcpy(r->repo, name, org_len + 1 + name_len);
    const char *p = rest + name_len;
    snprintf(r->rev, sizeof r->rev, "main");
    if (*p == '@') {
        p++;
        size_t n = strcspn(p, ":");
        if (n == 0 || n >= sizeof r->rev) return -1;
        for (size_t i = 0; i < n; i++)
            if (isspace((unsigned char)p[i]) || p[i] == '\\') return -1;
        if (!strncmp(p, "..", 2) || strstr(p, "/..") ) return -1;
        memcpy(r->rev, p, n);
        r->rev[n] = 0;
        p += n;
    }
    if (*p == ':') {
        p++;
        size_t n = strlen(p);
        if (n == 0 || n >= sizeof r->file || strstr(p, "..") || p[0] == '/') return -1;
        memcpy(r->file, p, n + 1);
        p += n;
    }
    return *p ? -1 : 0;
}

int vm_hub_is_hub_name(const char *name) {
    struct stat st;
    if (!name || !*name || stat(name, &st) == 0) return 0;
    if (name[0] == '/' || name[0] == '.' || name[0] == '~') return 0;
    hub_ref r;
    return parse_name(name, &r) == 0;
}

static int is_commit_sha(const char *s) {
    if (strlen(s) != 40) return 0;
    for (int i = 0; i < 40; i++) if (!isxdigit((unsigned char)s[i]) || isupper((unsigned char)s[i])) return 0;
    return 1;
}

static int is_sha256_hex(const char *s) {
    if (strlen(s) != 64) return 0;
    for (int i = 0; i < 64; i++) if (!isxdigit((unsigned char)s[i])) return 0;
    return 1;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcasecmp(s + a - b, suffix);
}

// ---------------------------------------------------------------- cache folders

// $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
static int cache_root(char *out, size_t n, vm_err *e) {
    const char *v;
    int w;
    if ((v = getenv("HF_HUB_CACHE")) && *v) w = snprintf(out, n, "%s", v);
    else if ((v = getenv("HF_HOME")) && *v) w = snprintf(out, n, "%s/hub", v);
    else if ((v = getenv("XDG_CACHE_HOME")) && *v) w = snprintf(out, n, "%s/huggingface/hub", v);
    else if ((v = getenv("HOME")) && *v) w = snprintf(out, n, "%s/.cache/huggingface/hub", v);
    else return vm_errf(e, "no Hugging Face cache folder: set HF_HOME (HOME is not set)");
    if (w < 0 || (size_t)w >= n) return vm_errf(e, "Hugging Face cache path too long");
    return 0;
}

static int mkdir_p(const char *path) {
    char tmp[HUB_PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp) return -1;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(tmp, 0755) == 0 || errno == EEXIST ? 0 : -1;
}

static int path_fmt(char *out, size_t n, vm_err *e, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int path_fmt(char *out, size_t n, vm_err *e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(out, n, fmt, ap);
    va_end(ap);
    if (w < 0 || (size_t)w >= n) return vm_errf(e, "path too long");
    return 0;
}

static int file_exists(const char *p) { // follows symlinks: a dangling link is absent
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static long long file_size(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (long long)st.st_size : -1;
}

// Reads a small text file's first line (refs/<rev>) into out.
static int read_line(const char *path, char *out, size_t n) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char *ok = fgets(out, (int)n, f);
    fclose(f);
    if (!ok) return -1;
    out[strcspn(out, "\r\n \t")] = 0;
    return out[0] ? 0 : -1;
}

// Writes via a temporary file and rename, so readers never see half a file.
static int write_file_atomic(const char *path, const char *text) {
    char tmp[HUB_PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid()) >= (int)sizeof tmp) return -1;
    FILE *f = fopen(tmp, "w");
    if (!f) return -1;
    int bad = fputs(text, f) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) { unlink(tmp); return -1; }
    return 0;
}

// ---------------------------------------------------------------- file choice

typedef struct file_list {
    char *names[HUB_MAX_FILES];
    int n;
    char entry[512];  // the .gguf the path points at, "" for a folder
} file_list;

static void file_list_free(file_list *l) {
    for (int i = 0; i < l->n; i++) free(l->names[i]);
    l->n = 0;
}

static int file_list_add(file_list *l, const char *name) {
    for (int i = 0; i < l->n; i++) if (!strcmp(l->names[i], name)) return 0;
    if (l->n == HUB_MAX_FILES) return -1;
    l->names[l->n] = strdup(name);
    return l->names[l->n] ? (l->n++, 0) : -1;
}

static int gguf_rank(const char *name) {
    if (!ends_with(name, ".gguf")) return -1;
    char low[512];
    size_t i = 0;
    for (; name[i] && i + 1 < sizeof low; i++) low[i] = (char)tolower((unsigned char)name[i]);
    low[i] = 0;
    if (strstr(low, "mmproj")) return -1; // a vision projector, not a language model
    for (size_t k = 0; k < VM_ARRAY_LEN(GGUF_PREFERENCE); k++) if (strstr(low, GGUF_PREFERENCE[k])) return (int)k;
    return (int)VM_ARRAY_LEN(GGUF_PREFERENCE);
}

// Best GGUF among names (NULL if none).
static const char *pick_gguf(char *const *names, int n) {
    const char *best = NULL;
    int best_rank = 1 << 30;
    for (int i = 0; i < n; i++) {
        if (strchr(names[i], '/')) continue;
        int r = gguf_rank(names[i]);
        if (r < 0) continue;
        if (r < best_rank || (r == best_rank && strcmp(names[i], best) < 0)) { best = names[i]; best_rank = r; }
    }
    return best;
}

// Shard names from a model.safetensors.index.json (weight_map values), added to l.
static int add_index_shards(const char *index_path, file_list *l, vm_err *e) {
    json_error_t je;
    json_t *root = json_load_file(index_path, 0, &je);
    if (!root) return vm_errf(e, "%s: %s", index_path, je.text);
    json_t *map = json_object_get(root, "weight_map");
    const char *k;
    json_t *v;
    int rc = 0;
    if (!json_is_object(map)) rc = vm_errf(e, "%s: no weight_map", index_path);
    else json_object_foreach(map, k, v) {
        const char *shard = json_string_value(v);
        if (!shard || strstr(shard, "..") || shard[0] == '/') { rc = vm_errf(e, "%s: bad shard name", index_path); break; }
        if (file_list_add(l, shard) != 0) { rc = vm_errf(e, "%s: too many shards", index_path); break; }
    }
    json_decref(root);
    return rc;
}

// ---------------------------------------------------------------- cached snapshots

// Is snapshot dir complete for r? Fills out_path with the folder or the .gguf file.
static int snapshot_complete(const char *snap, const hub_ref *r, char *out_path, size_t n) {
    char p[HUB_PATH_MAX + 512];
    if (r->file[0]) {
        if (snprintf(p, sizeof p, "%s/%s", snap, r->file) >= (int)sizeof p || !file_exists(p)) return 0;
        return snprintf(out_path, n, "%s", p) < (int)n;
    }
    if (snprintf(p, sizeof p, "%s/model.safetensors.index.json", snap) < (int)sizeof p && file_exists(p)) {
        file_list l = {0};
        int ok = add_index_shards(p, &l, NULL) == 0 && l.n > 0;
        for (int i = 0; ok && i < l.n; i++) {
            char s[HUB_PATH_MAX];
            ok = snprintf(s, sizeof s, "%s/%s", snap, l.names[i]) < (int)sizeof s && file_exists(s);
        }
        file_list_free(&l);
        snprintf(p, sizeof p, "%s/config.json", snap);
        if (!ok || !file_exists(p)) return 0;
        return snprintf(out_path, n, "%s", snap) < (int)n;
    }
    DIR *d = opendir(snap);
    if (!d) return 0;
    struct dirent *de;
    int has_st = 0;
    char *ggufs[HUB_MAX_FILES];
    int n_gguf = 0;
    while ((de = readdir(d))) {
        if (snprintf(p, sizeof p, "%s/%s", snap, de->d_name) >= (int)sizeof p || !file_exists(p)) continue;
        if (ends_with(de->d_name, ".safetensors")) has_st = 1;
        else if (gguf_rank(de->d_name) >= 0 && n_gguf < HUB_MAX_FILES) ggufs[n_gguf++] = strdup(de->d_name);
    }
    closedir(d);
    int ok = 0;
    snprintf(p, sizeof p, "%s/config.json", snap);
    if (has_st && file_exists(p)) ok = snprintf(out_path, n, "%s", snap) < (int)n;
    else if (n_gguf) {
        const char *g = pick_gguf(ggufs, n_gguf);
        ok = g && snprintf(out_path, n, "%s/%s", snap, g) < (int)n;
    }
    for (int i = 0; i < n_gguf; i++) free(ggufs[i]);
    return ok;
}

// Cache lookup without network: the pinned commit, or refs/<rev>.
static int resolve_cached(const char *repo_dir, const hub_ref *r, char *out_path, size_t n) {
    char sha[256], p[HUB_PATH_MAX];
    if (is_commit_sha(r->rev)) snprintf(sha, sizeof sha, "%s", r->rev);
    else if (snprintf(p, sizeof p, "%s/refs/%s", repo_dir, r->rev) >= (int)sizeof p ||
             read_line(p, sha, sizeof sha) != 0)
        return 0;
    if (snprintf(p, sizeof p, "%s/snapshots/%s", repo_dir, sha) >= (int)sizeof p) return 0;
    return snapshot_complete(p, r, out_path, n);
}

// ---------------------------------------------------------------- HTTP

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_OK;
static void curl_init(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

typedef struct http_resp {
    long status;              // the final response's status
    char etag[160];           // final response's ETag (quotes and W/ stripped)
    char linked_etag[160];    // X-Linked-Etag from any response in the redirect chain
    long long linked_size;    // X-Linked-Size, -1 if absent
    long long content_length; // final response's Content-Length, -1 if absent
    char error_code[64];      // X-Error-Code (RepoNotFound, RevisionNotFound, GatedRepo, ...)
    char error_message[256];  // X-Error-Message
} http_resp;

static void trim_value(const char *v, size_t n, char *out, size_t cap, int strip_etag) {
    while (n && isspace((unsigned char)*v)) { v++; n--; }
    while (n && isspace((unsigned char)v[n - 1])) n--;
    if (strip_etag) {
        if (n >= 2 && v[0] == 'W' && v[1] == '/') { v += 2; n -= 2; }
        if (n >= 2 && v[0] == '"' && v[n - 1] == '"') { v++; n -= 2; }
    }
    if (n >= cap) n = cap - 1;
    memcpy(out, v, n);
    out[n] = 0;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud) {
    http_resp *h = ud;
    size_t n = size * nitems;
    if (n >= 5 && !strncmp(buf, "HTTP/", 5)) { // a new response (redirects give several)
        const char *sp = memchr(buf, ' ', n);
        h->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        h->etag[0] = 0;
        h->content_length = -1;
        return n;
    }
    const char *colon = memchr(buf, ':', n);
    if (!colon) return n;
    size_t klen = (size_t)(colon - buf);
    const char *v = colon + 1;
    size_t vlen = n - klen - 1;
    char num[32];
#define KEY(s) (klen == strlen(s) && !strncasecmp(buf, s, klen))
    if (KEY("etag")) trim_value(v, vlen, h->etag, sizeof h->etag, 1);
    else if (KEY("x-linked-etag") && !h->linked_etag[0]) trim_value(v, vlen, h->linked_etag, sizeof h->linked_etag, 1);
    else if (KEY("x-linked-size") && h->linked_size < 0) { trim_value(v, vlen, num, sizeof num, 0); h->linked_size = atoll(num); }
    else if (KEY("content-length")) { trim_value(v, vlen, num, sizeof num, 0); h->content_length = atoll(num); }
    else if (KEY("x-error-code")) trim_value(v, vlen, h->error_code, sizeof h->error_code, 0);
    else if (KEY("x-error-message")) trim_value(v, vlen, h->error_message, sizeof h->error_message, 0);
#undef KEY
    return n;
}

static void resp_init(http_resp *h) {
    memset(h, 0, sizeof *h);
    h->linked_size = -1;
    h->content_length = -1;
}

// HF_TOKEN, HUGGING_FACE_HUB_TOKEN, else the file HF_TOKEN_PATH or $HF_HOME/token.
static void read_token(char *out, size_t n) {
    out[0] = 0;
    const char *v = getenv("HF_TOKEN");
    if (!v || !*v) v = getenv("HUGGING_FACE_HUB_TOKEN");
    if (v && *v) { trim_value(v, strlen(v), out, n, 0); return; }
    char p[HUB_PATH_MAX];
    const char *tp = getenv("HF_TOKEN_PATH"), *home = getenv("HF_HOME"), *h = getenv("HOME");
    if (tp && *tp) snprintf(p, sizeof p, "%s", tp);
    else if (home && *home) snprintf(p, sizeof p, "%s/token", home);
    else if (h && *h) snprintf(p, sizeof p, "%s/.cache/huggingface/token", h);
    else return;
    if (read_line(p, out, n) != 0) out[0] = 0;
}

typedef struct hub_ctx {
    const char *name;         // as the user wrote it, for messages
    hub_ref ref;
    char endpoint[1024];      // no trailing slash
    char token[512];
    char repo_dir[HUB_PATH_MAX];
} hub_ctx;

static CURL *easy_for(const hub_ctx *c, const char *url, struct curl_slist **hdrs) {
    CURL *h = curl_easy_init();
    if (!h) return NULL;
    *hdrs = NULL;
    if (c->token[0]) {
        char auth[600];
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token);
        *hdrs = curl_slist_append(*hdrs, auth);
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, *hdrs);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "vllm-metal/0.1; hf_hub-compatible");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 15L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);   // a stalled transfer fails after 60 s
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "identity");
    return h;
}

// The Hub's error for a status, in words.
static int status_error(const hub_ctx *c, const http_resp *r, const char *what, vm_err *e) {
    long s = r->status;
    const char *code = r->error_code;
    if (!strcmp(code, "RevisionNotFound"))
        return vm_errf(e, "revision '%s' of model %s not found on the Hub (%ld)", c->ref.rev, c->ref.repo, s);
    if (!strcmp(code, "EntryNotFound"))
        return vm_errf(e, "file %s not found in model %s on the Hub (%ld)", what, c->ref.repo, s);
    if (!strcmp(code, "GatedRepo") || s == 403)
        return vm_errf(e, "model %s is gated on the Hub (%ld): accept its terms on the model page and set "
                       "HF_TOKEN to a token of that account", c->ref.repo, s);
    if (s == 404 || !strcmp(code, "RepoNotFound"))
        return vm_errf(e, "model %s not found on the Hub (%ld)%s", c->ref.repo, s,
                       c->token[0] ? "" : "; if it is private or gated, set HF_TOKEN");
    if (s == 401)
        return vm_errf(e, "model %s: the Hub refused access (401)%s", c->ref.repo,
                       c->token[0] ? ": the token in HF_TOKEN is not valid for it"
                                   : ": it is private or gated; set HF_TOKEN");
    return vm_errf(e, "the Hub answered HTTP %ld for %s of model %s%s%s", s, what, c->ref.repo,
                   r->error_message[0] ? ": " : "", r->error_message);
}

typedef struct membuf { char *p; size_t n; int too_big; } membuf;

static size_t on_body_mem(char *buf, size_t size, size_t nitems, void *ud) {
    membuf *m = ud;
    size_t n = size * nitems;
    if (m->n + n > HUB_API_MAX_BYTES) { m->too_big = 1; return 0; }
    char *p = realloc(m->p, m->n + n + 1);
    if (!p) return 0;
    memcpy(p + m->n, buf, n);
    m->p = p; m->n += n; p[m->n] = 0;
    return n;
}

static int network_error(const hub_ctx *c, CURLcode rc, const char *errbuf, vm_err *e) {
    return vm_errf(e, "cannot reach the Hub at %s for model %s: %s (model not in the cache; "
                   "HF_HUB_OFFLINE=1 uses only the cache)", c->endpoint, c->name,
                   errbuf[0] ? errbuf : curl_easy_strerror(rc));
}

// GET the model info JSON -> commit sha and file list.
static int fetch_model_info(const hub_ctx *c, char *sha, size_t sha_n, file_list *siblings, vm_err *e) {
    char *rev_enc = curl_easy_escape(NULL, c->ref.rev, 0);
    if (!rev_enc) return vm_errf(e, "out of memory");
    char url[2048];
    int w = snprintf(url, sizeof url, "%s/api/models/%s/revision/%s", c->endpoint, c->ref.repo, rev_enc);
    curl_free(rev_enc);
    if (w >= (int)sizeof url) return vm_errf(e, "Hub URL too long");
    int rc = -1;
    for (int attempt = 0; attempt < 3 && rc != 0; attempt++) {
        struct curl_slist *hdrs;
        CURL *h = easy_for(c, url, &hdrs);
        if (!h) return vm_errf(e, "curl_easy_init failed");
        membuf body = {0};
        http_resp resp;
        resp_init(&resp);
        char errbuf[CURL_ERROR_SIZE] = "";
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, &resp);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body_mem);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
        curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
        CURLcode cc = curl_easy_perform(h);
        curl_easy_cleanup(h);
        curl_slist_free_all(hdrs);
        int retry = 0;
        if (cc != CURLE_OK) {
            retry = cc != CURLE_COULDNT_RESOLVE_HOST && cc != CURLE_COULDNT_CONNECT && !body.too_big;
            if (body.too_big) vm_errf(e, "model info for %s is larger than %u MB", c->ref.repo, HUB_API_MAX_BYTES >> 20);
            else network_error(c, cc, errbuf, e);
        } else if (resp.status >= 500) {
            retry = 1;
            status_error(c, &resp, "model info", e);
        } else if (resp.status != 200) {
            status_error(c, &resp, "model info", e);
        } else {
            json_error_t je;
            json_t *root = json_loadb(body.p ? body.p : "", body.n, 0, &je);
            const char *s = json_string_value(json_object_get(root, "sha"));
            json_t *sib = json_object_get(root, "siblings");
            if (!root || !s || !is_commit_sha(s) || !json_is_array(sib)) {
                vm_errf(e, "the Hub's answer for model %s is not model info (%s)", c->ref.repo,
                        root ? "no sha/siblings" : je.text);
            } else {
                snprintf(sha, sha_n, "%s", s);
                size_t i;
                json_t *it;
                rc = 0;
                json_array_foreach(sib, i, it) {
                    const char *f = json_string_value(json_object_get(it, "rfilename"));
                    if (f && file_list_add(siblings, f) != 0) break; // huge repos: the first files suffice
                }
            }
            json_decref(root);
        }
        free(body.p);
        if (rc != 0 && !retry) break;
        if (rc != 0 && attempt < 2) usleep(300000u * (unsigned)(attempt + 1));
    }
    return rc;
}

// ---------------------------------------------------------------- downloads

typedef struct download {
    FILE *f;
    long long offset;          // bytes already in the file when this attempt started
    long long total;           // expected size, -1 unknown
    http_resp resp;
    int started;               // first body byte seen
    int discard;               // error status: swallow the body
    const char *label;
    double last_print, t0;
    int tty;
} download;

static void print_progress(download *d, long long have, int done) {
    double now = vm_now_seconds();
    if (!done && now - d->last_print < 0.2) return;
    d->last_print = now;
    double mb = have / 1e6, rate = (have - d->offset) / 1e6 / (now - d->t0 > 1e-3 ? now - d->t0 : 1e-3);
    if (d->tty) {
        if (d->total > 0) {
            int pct = (int)(100.0 * (double)have / (double)d->total);
            if (pct > 100) pct = 100;
            char bar[31];
            int fill = pct * 30 / 100;
            for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
            bar[30] = 0;
            fprintf(stderr, "\r%-36.36s [%s] %3d%% %8.1f/%.1f MB %6.1f MB/s", d->label, bar, pct, mb,
                    d->total / 1e6, rate);
        } else {
            fprintf(stderr, "\r%-36.36s %8.1f MB %6.1f MB/s", d->label, mb, rate);
        }
        if (done) fputc('\n', stderr);
    } else if (done) {
        fprintf(stderr, "hub: %s %.1f MB done\n", d->label, mb);
    }
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
    (void)dltotal; (void)ultotal; (void)ulnow;
    download *d = ud;
    if (d->started && !d->discard) print_progress(d, d->offset + (long long)dlnow, 0);
    return 0;
}

static size_t on_body_file(char *buf, size_t size, size_t nitems, void *ud) {
    download *d = ud;
    size_t n = size * nitems;
    if (!d->started) {
        d->started = 1;
        long s = d->resp.status;
        if (s == 200 && d->offset > 0) { // the server ignored Range: start over
            if (fflush(d->f) != 0 || ftruncate(fileno(d->f), 0) != 0 || fseek(d->f, 0, SEEK_SET) != 0) return 0;
            d->offset = 0;
        } else if (s != 200 && s != 206) {
            d->discard = 1;
        }
    }
    if (d->discard) return n;
    return fwrite(buf, 1, n, d->f);
}

// Downloads url into blob_path (via blob_path.incomplete, resumed), checks size and sha256.
static int download_blob(const hub_ctx *c, const char *url, const char *file, const char *etag,
                         long long size, const char *blob_path, vm_err *e) {
    char part[HUB_PATH_MAX];
    if (path_fmt(part, sizeof part, e, "%s.incomplete", blob_path)) return -1;
    int fd = open(part, O_RDWR | O_CREAT, 0644);
    if (fd < 0) return vm_errf(e, "cannot write %s: %s", part, strerror(errno));
    if (flock(fd, LOCK_EX) != 0) { close(fd); return vm_errf(e, "cannot lock %s: %s", part, strerror(errno)); }
    if (file_exists(blob_path)) { // another process finished it while we waited
        flock(fd, LOCK_UN); close(fd);
        return 0;
    }
    FILE *f = fdopen(fd, "r+b");
    if (!f) { close(fd); return vm_errf(e, "cannot open %s", part); }
    int rc = -1, done = 0;
    download d;
    for (int attempt = 0; attempt < HUB_RETRIES && !done; attempt++) {
        if (attempt) usleep(200000u * (unsigned)attempt);
        if (fseek(f, 0, SEEK_END) != 0) { vm_errf(e, "seek %s: %s", part, strerror(errno)); break; }
        memset(&d, 0, sizeof d);
        d.f = f;
        d.offset = ftell(f);
        d.total = size;
        d.label = file;
        d.tty = isatty(STDERR_FILENO);
        d.t0 = vm_now_seconds();
        resp_init(&d.resp);
        if (size >= 0 && d.offset == size) { done = 1; break; } // complete already
        if (size >= 0 && d.offset > size) { // a different, larger file: start over
            if (ftruncate(fd, 0) != 0) { vm_errf(e, "truncate %s: %s", part, strerror(errno)); break; }
            continue;
        }
        if (attempt == 0 && d.offset > 0 && !d.tty)
            fprintf(stderr, "hub: resuming %s at %.1f MB\n", file, d.offset / 1e6);
        struct curl_slist *hdrs;
        CURL *h = easy_for(c, url, &hdrs);
        if (!h) { vm_errf(e, "curl_easy_init failed"); break; }
        char errbuf[CURL_ERROR_SIZE] = "", range[64];
        if (d.offset > 0) {
            snprintf(range, sizeof range, "%lld-", d.offset);
            curl_easy_setopt(h, CURLOPT_RANGE, range);
        }
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, &d.resp);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body_file);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &d);
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, &d);
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        CURLcode cc = curl_easy_perform(h);
        long status = d.resp.status;
        curl_easy_cleanup(h);
        curl_slist_free_all(hdrs);
        fflush(f);
        if (d.tty && d.started && !d.discard) fputc('\n', stderr);
        if (cc == CURLE_WRITE_ERROR && !d.discard) { vm_errf(e, "cannot write %s: %s", part, strerror(errno)); break; }
        if (status == 416 && d.offset > 0) { // nothing left to send: the part is whole (checked below)
            if (size < 0) { done = 1; break; }
            if (ftruncate(fd, 0) != 0) break;     // the size says otherwise: start over
            continue;
        }
        if (cc == CURLE_OK && (status == 200 || status == 206)) {
            long long have = file_size(part);
            if (size >= 0 && have < size) { // a short body without a transport error
                vm_errf(e, "%s: connection ended at %lld of %lld bytes", file, have, size);
                continue;
            }
            done = 1;
            break;
        }
        if (cc == CURLE_OK) { // an HTTP error status
            status_error(c, &d.resp, file, e);
            if (status >= 500 || status == 429) continue;
            break;
        }
        vm_errf(e, "downloading %s of model %s: %s", file, c->ref.repo, errbuf[0] ? errbuf : curl_easy_strerror(cc));
        if (cc == CURLE_COULDNT_RESOLVE_HOST) break;
    }
    if (done) {
        long long have = file_size(part);
        char hex[65];
        if (size >= 0 && have != size) {
            vm_errf(e, "%s of model %s: got %lld bytes, expected %lld; the partial file was removed", file,
                    c->ref.repo, have, size);
            unlink(part);
        } else if (is_sha256_hex(etag) && (vm_sha256_file_hex(part, hex) != 0 || strcasecmp(hex, etag))) {
            vm_errf(e, "%s of model %s: sha256 mismatch (expected %s, got %s); the file was removed", file,
                    c->ref.repo, etag, hex);
            unlink(part);
        } else if (rename(part, blob_path) != 0) {
            vm_errf(e, "cannot rename %s: %s", part, strerror(errno));
        } else {
            if (!d.tty) fprintf(stderr, "hub: %s %.1f MB\n", file, have / 1e6);
            rc = 0;
        }
    }
    flock(fd, LOCK_UN);
    fclose(f);
    return rc;
}

// HEAD for the etag and size of one file of the commit.
static int head_file(const hub_ctx *c, const char *url, const char *file, http_resp *resp, vm_err *e) {
    for (int attempt = 0; attempt < 3; attempt++) {
        if (attempt) usleep(300000u * (unsigned)attempt);
        struct curl_slist *hdrs;
        CURL *h = easy_for(c, url, &hdrs);
        if (!h) return vm_errf(e, "curl_easy_init failed");
        resp_init(resp);
        char errbuf[CURL_ERROR_SIZE] = "";
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, resp);
        curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
        CURLcode cc = curl_easy_perform(h);
        curl_easy_cleanup(h);
        curl_slist_free_all(hdrs);
        if (cc != CURLE_OK) {
            network_error(c, cc, errbuf, e);
            if (cc == CURLE_COULDNT_RESOLVE_HOST || cc == CURLE_COULDNT_CONNECT) return -1;
            continue;
        }
        if (resp->status == 200) return 0;
        status_error(c, resp, file, e);
        if (resp->status < 500) return -1;
    }
    return -1;
}

// Relative link target from snapshots/<sha>/<file> to blobs/<etag>.
static int link_snapshot(const char *repo_dir, const char *sha, const char *file, const char *etag, vm_err *e) {
    char link[HUB_PATH_MAX], target[HUB_PATH_MAX], dir[HUB_PATH_MAX];
    if (path_fmt(link, sizeof link, e, "%s/snapshots/%s/%s", repo_dir, sha, file)) return -1;
    snprintf(dir, sizeof dir, "%s", link);
    *strrchr(dir, '/') = 0;
    if (mkdir_p(dir) != 0) return vm_errf(e, "cannot make %s: %s", dir, strerror(errno));
    int depth = 2;
    for (const char *p = file; *p; p++) depth += *p == '/';
    size_t o = 0;
    for (int i = 0; i < depth; i++) o += (size_t)snprintf(target + o, sizeof target - o, "../");
    if (o + strlen(etag) + 7 >= sizeof target) return vm_errf(e, "path too long");
    snprintf(target + o, sizeof target - o, "blobs/%s", etag);
    char tmp[HUB_PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp%ld", link, (long)getpid());
    unlink(tmp);
    if (symlink(target, tmp) != 0 || rename(tmp, link) != 0) {
        int err = errno;
        unlink(tmp);
        // no symlinks (some file systems): a copy would do, but say what failed
        return vm_errf(e, "cannot link %s -> %s: %s", link, target, strerror(err));
    }
    return 0;
}

// One file of the commit into blobs/ and the snapshot.
static int fetch_file(const hub_ctx *c, const char *sha, const char *file, vm_err *e) {
    char snap_file[HUB_PATH_MAX];
    if (path_fmt(snap_file, sizeof snap_file, e, "%s/snapshots/%s/%s", c->repo_dir, sha, file)) return -1;
    if (file_exists(snap_file)) return 0;
    char *enc = malloc(strlen(file) * 3 + 1);
    if (!enc) return vm_errf(e, "out of memory");
    size_t o = 0; // escape each path segment, keep the slashes
    for (const unsigned char *p = (const unsigned char *)file; *p; p++) {
        if (isalnum(*p) || strchr("-._~/", *p)) enc[o++] = (char)*p;
        else o += (size_t)sprintf(enc + o, "%%%02X", *p);
    }
    enc[o] = 0;
    char url[4096];
    int w = snprintf(url, sizeof url, "%s/%s/resolve/%s/%s", c->endpoint, c->ref.repo, sha, enc);
    free(enc);
    if (w >= (int)sizeof url) return vm_errf(e, "URL too long for %s", file);
    http_resp head;
    if (head_file(c, url, file, &head, e) != 0) return -1;
    const char *etag = head.linked_etag[0] ? head.linked_etag : head.etag;
    long long size = head.linked_size >= 0 ? head.linked_size : head.content_length;
    char etag_name[160];
    snprintf(etag_name, sizeof etag_name, "%s", etag);
    for (char *p = etag_name; *p; p++) if (*p == '/' || *p == '\\' || isspace((unsigned char)*p)) *p = '_';
    if (!etag_name[0] || etag_name[0] == '.')
        return vm_errf(e, "the Hub gave no usable ETag for %s of model %s", file, c->ref.repo);
    char blobs[HUB_PATH_MAX], blob[HUB_PATH_MAX];
    if (path_fmt(blobs, sizeof blobs, e, "%s/blobs", c->repo_dir)) return -1;
    if (mkdir_p(blobs) != 0) return vm_errf(e, "cannot make %s: %s", blobs, strerror(errno));
    if (path_fmt(blob, sizeof blob, e, "%s/%s", blobs, etag_name)) return -1;
    if (!file_exists(blob) && download_blob(c, url, file, etag_name, size, blob, e) != 0) return -1;
    return link_snapshot(c->repo_dir, sha, file, etag_name, e);
}

// ---------------------------------------------------------------- resolve

int vm_hub_resolve(const char *name, char *out_path, size_t n, vm_err *e) {
    struct stat st;
    if (!name || !*name) return vm_errf(e, "no model name");
    if (stat(name, &st) == 0) { // a local path
        if (snprintf(out_path, n, "%s", name) >= (int)n) return vm_errf(e, "model path too long");
        return 0;
    }
    hub_ctx c;
    memset(&c, 0, sizeof c);
    c.name = name;
    if (name[0] == '/' || name[0] == '.' || name[0] == '~' || parse_name(name, &c.ref) != 0)
        return vm_errf(e, "model %s: no such file or folder, and not a Hugging Face Hub name "
                       "(org/name[@revision][:file.gguf])", name);
    char root[HUB_PATH_MAX];
    if (cache_root(root, sizeof root, e)) return -1;
    char repo_flat[256];
    snprintf(repo_flat, sizeof repo_flat, "%s", c.ref.repo);
    *strchr(repo_flat, '/') = 0;
    if (path_fmt(c.repo_dir, sizeof c.repo_dir, e, "%s/models--%s--%s", root, repo_flat,
                 strchr(c.ref.repo, '/') + 1))
        return -1;

    // 2. the cache, with no network
    if (resolve_cached(c.repo_dir, &c.ref, out_path, n)) return 0;
    const char *off = getenv("HF_HUB_OFFLINE");
    if (off && *off && strcmp(off, "0") && strcasecmp(off, "false"))
        return vm_errf(e, "model %s (revision %s) is not in the Hugging Face cache %s, and HF_HUB_OFFLINE "
                       "is set: unset it to download the model", c.ref.repo, c.ref.rev, c.repo_dir);

    // 3. the Hub
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK) return vm_errf(e, "curl_global_init: %s", curl_easy_strerror(curl_init_rc));
    const char *ep = getenv("HF_ENDPOINT");
    snprintf(c.endpoint, sizeof c.endpoint, "%s", ep && *ep ? ep : "https://huggingface.co");
    for (size_t l = strlen(c.endpoint); l && c.endpoint[l - 1] == '/'; l--) c.endpoint[l - 1] = 0;
    read_token(c.token, sizeof c.token);
    char sha[64];
    file_list siblings = {0}, want = {0};
    int rc = -1;
    if (fetch_model_info(&c, sha, sizeof sha, &siblings, e) != 0) goto done;
    char snap[HUB_PATH_MAX];
    if (path_fmt(snap, sizeof snap, e, "%s/snapshots/%s", c.repo_dir, sha)) goto done;

    // 4. which files
    const char *gguf = NULL;
    int has_index = 0, n_st = 0;
    for (int i = 0; i < siblings.n; i++) {
        const char *f = siblings.names[i];
        if (strchr(f, '/')) continue;
        if (!strcmp(f, "model.safetensors.index.json")) has_index = 1;
        else if (ends_with(f, ".safetensors")) n_st++;
    }
    if (c.ref.file[0]) {
        int found = 0;
        for (int i = 0; i < siblings.n && !found; i++) found = !strcmp(siblings.names[i], c.ref.file);
        if (!found) { vm_errf(e, "file %s not found in model %s on the Hub (revision %s)", c.ref.file, c.ref.repo, c.ref.rev); goto done; }
        if (!ends_with(c.ref.file, ".gguf")) { vm_errf(e, "%s: only a .gguf file can be named after ':'", name); goto done; }
        gguf = c.ref.file;
    } else if (!has_index && n_st == 0) {
        gguf = pick_gguf(siblings.names, siblings.n);
        if (!gguf) {
            vm_errf(e, "model %s has no weights vllm-metal can load (no *.safetensors or *.gguf at the top level)",
                    c.ref.repo);
            goto done;
        }
    }
    if (gguf) {
        if (file_list_add(&want, gguf) != 0) { vm_errf(e, "out of memory"); goto done; }
        snprintf(want.entry, sizeof want.entry, "%s", gguf);
    } else {
        for (size_t k = 0; k < VM_ARRAY_LEN(SMALL_FILES); k++)
            for (int i = 0; i < siblings.n; i++)
                if (!strcmp(siblings.names[i], SMALL_FILES[k]) && file_list_add(&want, SMALL_FILES[k]) != 0) {
                    vm_errf(e, "out of memory"); goto done;
                }
        if (has_index) {
            if (file_list_add(&want, "model.safetensors.index.json") != 0) { vm_errf(e, "out of memory"); goto done; }
        } else {
            for (int i = 0; i < siblings.n; i++)
                if (!strchr(siblings.names[i], '/') && ends_with(siblings.names[i], ".safetensors") &&
                    file_list_add(&want, siblings.names[i]) != 0) {
                    vm_errf(e, "too many files"); goto done;
                }
        }
    }
    if (mkdir_p(snap) != 0) { vm_errf(e, "cannot make %s: %s", snap, strerror(errno)); goto done; }
    fprintf(stderr, "hub: %s@%s (commit %.12s) into %s\n", c.ref.repo, c.ref.rev, sha, c.repo_dir);

    // 5. fetch (small files first; the shards once the index is here)
    for (int i = 0; i < want.n; i++) {
        if (fetch_file(&c, sha, want.names[i], e) != 0) goto done;
        if (!strcmp(want.names[i], "model.safetensors.index.json")) {
            char idx[HUB_PATH_MAX];
            if (path_fmt(idx, sizeof idx, e, "%s/%s", snap, want.names[i])) goto done;
            if (add_index_shards(idx, &want, e) != 0) goto done;
        }
    }

    // 6. refs/<rev>, then the path
    if (!is_commit_sha(c.ref.rev) || strcmp(c.ref.rev, sha)) {
        char refs[HUB_PATH_MAX], refdir[HUB_PATH_MAX];
        if (path_fmt(refs, sizeof refs, e, "%s/refs/%s", c.repo_dir, c.ref.rev)) goto done;
        snprintf(refdir, sizeof refdir, "%s", refs);
        *strrchr(refdir, '/') = 0;
        if (mkdir_p(refdir) != 0 || write_file_atomic(refs, sha) != 0) {
            vm_errf(e, "cannot write %s: %s", refs, strerror(errno)); goto done;
        }
    }
    int w = want.entry[0] ? snprintf(out_path, n, "%s/%s", snap, want.entry) : snprintf(out_path, n, "%s", snap);
    if (w < 0 || (size_t)w >= n) { vm_errf(e, "model path too long"); goto done; }
    rc = 0;
done:
    file_list_free(&siblings);
    file_list_free(&want);
    return rc;
}
