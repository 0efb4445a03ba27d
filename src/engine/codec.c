// codec.c - binds the engine's small text interface (vm_text_codec) to the
// project's tokenizer: tokenizer.json beside an HF/MLX model, or the
// vocabulary inside a GGUF file.
#include <stdlib.h>
#include <sys/stat.h>

#include "engine.h"
#include "../tokenizer/tokenizer.h"

typedef struct codec_ctx {
    vm_tokenizer *tok;
    vm_weight_store *ws; // GGUF: kept open while the tokenizer may point into it
} codec_ctx;

static int codec_encode(void *ctx, const char *text, int add_special, int32_t **ids, int *n, vm_err *e) {
    codec_ctx *c = ctx;
    size_t k = 0;
    if (vm_tokenizer_encode(c->tok, text, strlen(text), add_special, ids, &k, e)) return -1;
    *n = (int)k;
    return 0;
}

static char *codec_decode(void *ctx, const int32_t *ids, int n, int skip_special) {
    codec_ctx *c = ctx;
    vm_err e;
    return vm_tokenizer_decode(c->tok, ids, (size_t)n, skip_special, NULL, &e);
}

static void codec_destroy(void *ctx) {
    codec_ctx *c = ctx;
    if (!c) return;
    vm_tokenizer_free(c->tok);
    if (c->ws) vm_weights_free(c->ws);
    free(c);
}

// A tokenizer as a codec (takes ownership of tok).
vm_text_codec *vm_codec_from_tokenizer(vm_tokenizer *tok) {
    vm_text_codec *tc = calloc(1, sizeof *tc);
    codec_ctx *c = calloc(1, sizeof *c);
    if (!tc || !c) { free(tc); free(c); vm_tokenizer_free(tok); return NULL; }
    c->tok = tok;
    *tc = (vm_text_codec){ .ctx = c, .encode = codec_encode, .decode = codec_decode, .destroy = codec_destroy };
    return tc;
}

vm_text_codec *vm_codec_for_model(const char *path, vm_err *e) {
    struct stat st;
    if (!path || stat(path, &st) != 0) { vm_errf(e, "%s: cannot open", path ? path : "(null)"); return NULL; }
    size_t n = strlen(path);
    vm_tokenizer *tok = NULL;
    vm_weight_store *ws = NULL;
    if (S_ISDIR(st.st_mode)) {
        tok = vm_tokenizer_load_dir(path, e);
    } else if (n > 5 && !strcmp(path + n - 5, ".gguf")) {
        if (!(ws = vm_weights_open(path, e))) return NULL;
        tok = vm_tokenizer_from_gguf(vm_weights_gguf(ws), e);
    } else { // a single .safetensors: tokenizer.json beside it
        char *dir = strdup(path);
        if (!dir) { vm_errf(e, "out of memory"); return NULL; }
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0; else strcpy(dir, ".");
        tok = vm_tokenizer_load_dir(dir, e);
        free(dir);
    }
    if (!tok) { if (ws) vm_weights_free(ws); return NULL; }
    vm_text_codec *c = vm_codec_from_tokenizer(tok);
    if (!c) { if (ws) vm_weights_free(ws); vm_errf(e, "out of memory"); return NULL; }
    ((codec_ctx *)c->ctx)->ws = ws;
    return c;
}

int vm_codec_eos_ids(vm_text_codec *c, int32_t *out, int cap) {
    if (!c || c->encode != codec_encode) return 0;
    const int32_t *ids = NULL;
    size_t k = vm_tokenizer_eos_ids(((codec_ctx *)c->ctx)->tok, &ids);
    int m = 0;
    for (size_t i = 0; i < k && m < cap; i++) out[m++] = ids[i];
    return m;
}

void *vm_codec_tokenizer(vm_text_codec *c) {
    return c && c->encode == codec_encode ? ((codec_ctx *)c->ctx)->tok : NULL;
}
