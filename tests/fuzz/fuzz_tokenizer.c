// fuzz_tokenizer.c - libFuzzer target: arbitrary bytes into encode (all families), the ids
// back through decode and the streaming decoder. Built and run by run_tokenizer_fuzz.sh.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer.h"

static vm_tokenizer *toks[5];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *fams[] = {"smollm2", "llama3", "qwen2", "spm", "spm_metaspace"};
    for (int i = 0; i < 5; i++) {
        char p[256]; vm_err e = {{0}};
        snprintf(p, sizeof p, "tests/data/tokenizers/%s/tokenizer.json", fams[i]);
        toks[i] = vm_tokenizer_load_json(p, NULL, &e);
        if (!toks[i]) { fprintf(stderr, "%s\n", e.msg); abort(); }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!size) return 0;
    vm_tokenizer *t = toks[data[0] % 5];
    int32_t *ids; size_t n; vm_err e = {{0}};
    if (vm_tokenizer_encode(t, (const char *)data + 1, size - 1, data[0] & 8, &ids, &n, &e)) {
        if (!strstr(e.msg, "invalid UTF-8")) abort();
        return 0;
    }
    char *s = vm_tokenizer_decode(t, ids, n, data[0] & 16, NULL, &e);
    if (!s) abort();
    free(s);
    vm_detok_state *st = vm_detok_create(t, data[0] & 32, &e);
    const char *p; size_t l;
    for (size_t i = 0; i < n; i++) if (vm_detok_feed(st, ids[i], &p, &l, &e)) abort();
    vm_detok_flush(st, &p, &l, &e);
    vm_detok_free(st);
    free(ids);
    return 0;
}
