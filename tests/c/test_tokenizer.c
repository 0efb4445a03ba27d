// test_tokenizer.c - tokenizer unit tests and a random-input fuzz run (run from the repo root).
// The full comparison against HF tokenizers lives in tests/py/test_tokenizer.py; here: known
// ids, the streaming decoder, GGUF loading, and random bytes/ids that must never crash or leak
// (build with -fsanitize=address,undefined to check; see tests/fuzz/run_tokenizer_fuzz.sh).
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loader/weights.h"
#include "tokenizer/tokenizer.h"

#define DATA "tests/data/tokenizers/"

static vm_tokenizer *load(const char *family) {
    char path[256];
    snprintf(path, sizeof path, DATA "%s/tokenizer.json", family);
    vm_err e = {{0}};
    vm_tokenizer *t = vm_tokenizer_load_json(path, NULL, &e);
    cr_assert(t, "load %s: %s", family, e.msg);
    return t;
}

static void expect_ids(vm_tokenizer *t, const char *text, const int32_t *want, size_t nwant) {
    int32_t *ids; size_t n; vm_err e = {{0}};
    cr_assert_eq(vm_tokenizer_encode(t, text, strlen(text), 1, &ids, &n, &e), 0, "%s", e.msg);
    cr_assert_eq(n, nwant, "'%s': %zu ids, want %zu", text, n, nwant);
    for (size_t i = 0; i < n; i++) cr_assert_eq(ids[i], want[i], "'%s' id %zu: %d != %d", text, i, ids[i], want[i]);
    free(ids);
}

static const char *SAMPLE = "Hello world! <|im_start|>12345 h\xc3\xa9llo \xe4\xbd\xa0\xe5\xa5\xbd";

Test(tokenizer, smollm2_known_ids) { // ids from HF tokenizers 0.21
    vm_tokenizer *t = load("smollm2");
    static const int32_t want[] = {19556, 905, 17, 216, 1, 33, 34, 35, 36, 37, 294, 2756, 31394, 216, 18645, 250, 48392, 138};
    expect_ids(t, SAMPLE, want, VM_ARRAY_LEN(want));
    cr_assert_eq(vm_tokenizer_token_to_id(t, "<|im_end|>", 10), 2);
    cr_assert(vm_tokenizer_is_special(t, 2));
    cr_assert(!vm_tokenizer_is_special(t, 19556));
    size_t l; const char *s = vm_tokenizer_id_to_token(t, 905, &l);
    cr_assert(s && l == 7 && !memcmp(s, "\xc4\xa0world", 7));
    cr_assert_eq(vm_tokenizer_vocab_size(t), 49152);
    cr_assert(!vm_tokenizer_add_bos(t));
    vm_tokenizer_free(t);
}

Test(tokenizer, llama3_known_ids_and_bos) {
    vm_tokenizer *t = load("llama3");
    static const int32_t want[] = {6000, 558, 360, 697, 0, 849, 91, 72, 76, 62, 291, 365, 91, 29, 4362, 2144, 324, 942, 360, 220, 3820};
    expect_ids(t, SAMPLE, want, VM_ARRAY_LEN(want));
    cr_assert_eq(vm_tokenizer_bos_id(t), 6000);
    cr_assert(vm_tokenizer_add_bos(t));
    vm_tokenizer_free(t);
}

Test(tokenizer, spm_known_ids_and_decode) {
    vm_tokenizer *t = load("spm");
    static const int32_t want[] = {1, 1126, 754, 1137, 755, 264, 1220, 350, 331, 335, 322, 689, 758, 350, 293, 2372, 1923, 284, 714, 365, 754, 548, 231, 192, 163, 577};
    expect_ids(t, SAMPLE, want, VM_ARRAY_LEN(want));
    vm_err e = {{0}};
    char *s = vm_tokenizer_decode(t, want, VM_ARRAY_LEN(want), 1, NULL, &e);
    cr_assert(s, "%s", e.msg);
    cr_assert_str_eq(s, SAMPLE);
    free(s);
    vm_tokenizer_free(t);
}

Test(tokenizer, invalid_utf8_is_an_error) {
    vm_tokenizer *t = load("qwen2");
    int32_t *ids = NULL; size_t n = 7; vm_err e = {{0}};
    cr_assert_eq(vm_tokenizer_encode(t, "ab\xc3(", 4, 1, &ids, &n, &e), -1);
    cr_assert(strstr(e.msg, "invalid UTF-8 at byte offset 2"), "%s", e.msg);
    cr_assert_null(ids);
    cr_assert_eq(vm_tokenizer_encode(t, "", 0, 1, &ids, &n, &e), 0);
    cr_assert_eq(n, 0);
    free(ids);
    vm_tokenizer_free(t);
}

// Streaming: pieces are whole characters and add up to the full decode.
static void check_stream(vm_tokenizer *t, const char *text) {
    int32_t *ids; size_t n; vm_err e = {{0}};
    cr_assert_eq(vm_tokenizer_encode(t, text, strlen(text), 1, &ids, &n, &e), 0);
    char *full = vm_tokenizer_decode(t, ids, n, 1, NULL, &e);
    vm_detok_state *st = vm_detok_create(t, 1, &e);
    char acc[4096] = {0}; size_t al = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *p; size_t l;
        if (i < n) cr_assert_eq(vm_detok_feed(st, ids[i], &p, &l, &e), 0, "%s", e.msg);
        else cr_assert_eq(vm_detok_flush(st, &p, &l, &e), 0);
        if (l) cr_assert(((uint8_t)p[0] & 0xc0) != 0x80, "piece starts mid-character");
        cr_assert(al + l < sizeof acc);
        memcpy(acc + al, p, l); al += l;
    }
    cr_assert_str_eq(acc, full);
    vm_detok_free(st); free(full); free(ids);
}

Test(tokenizer, incremental_decode) {
    const char *fams[] = {"smollm2", "llama3", "qwen2", "spm", "spm_metaspace"};
    for (size_t i = 0; i < VM_ARRAY_LEN(fams); i++) {
        vm_tokenizer *t = load(fams[i]);
        check_stream(t, SAMPLE);
        check_stream(t, " leading \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7 emoji\n\n  x");
        check_stream(t, "\xe4\xbd\xa0\xe5\xa5\xbd\xe4\xb8\x96\xe7\x95\x8c</s><s> ok");
        vm_tokenizer_free(t);
    }
}

Test(tokenizer, gguf_spm) {
    vm_err e = {{0}};
    vm_weight_store *ws = vm_weights_open(DATA "spm.gguf", &e);
    cr_assert(ws, "%s", e.msg);
    vm_tokenizer *t = vm_tokenizer_from_gguf(vm_weights_gguf(ws), &e);
    cr_assert(t, "%s", e.msg);
    cr_assert_eq(vm_tokenizer_bos_id(t), 1);
    cr_assert_eq(vm_tokenizer_eos_id(t), 2);
    cr_assert(vm_tokenizer_add_bos(t));
    int32_t *ids; size_t n;
    cr_assert_eq(vm_tokenizer_encode(t, "Hello", 5, 1, &ids, &n, &e), 0);
    cr_assert(n >= 2 && ids[0] == 1);
    free(ids);
    vm_tokenizer_free(t);
    vm_weights_free(ws);
}

// Random bytes (mostly invalid UTF-8), random valid UTF-8 and random ids: no crash, no leak,
// errors only for invalid UTF-8 / bad ids.
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

Test(tokenizer, fuzz_random_inputs, .timeout = 120) {
    const char *fams[] = {"smollm2", "llama3", "qwen2", "spm", "spm_metaspace"};
    static const char *frags[] = {"<|im_start|>", "<s>", "</s>", "<|begin_of_text|>", " ", "\n", "\t",
                                  "'s", "'LL", "\xe2\x96\x81", "\xf0\x9f\x91\x8d", "\xc3\xa9", "e\xcc\x81",
                                  "123", "<0x41>", "[WORD]", "<think>", "<|fim_prefix|>", "\xe4\xbd\xa0"};
    int iters = getenv("VM_FUZZ_ITERS") ? atoi(getenv("VM_FUZZ_ITERS")) : 3000;
    for (size_t f = 0; f < VM_ARRAY_LEN(fams); f++) {
        vm_tokenizer *t = load(fams[f]);
        size_t V = vm_tokenizer_vocab_size(t);
        char buf[512];
        for (int it = 0; it < iters; it++) {
            size_t len = 0, want = rnd() % sizeof buf;
            int mode = it % 3;
            while (len < want) {
                if (mode == 0) buf[len++] = (char)rnd();
                else {
                    const char *s = frags[rnd() % VM_ARRAY_LEN(frags)];
                    size_t l = strlen(s);
                    if (mode == 2 && rnd() % 4 == 0) { buf[len++] = (char)(0x20 + rnd() % 95); continue; }
                    if (len + l > want) break;
                    memcpy(buf + len, s, l); len += l;
                }
            }
            int32_t *ids = NULL; size_t n = 0; vm_err e = {{0}};
            int rc = vm_tokenizer_encode(t, buf, len, (int)(rnd() & 1), &ids, &n, &e);
            if (rc) { cr_assert(strstr(e.msg, "invalid UTF-8"), "%s", e.msg); continue; }
            char *s = vm_tokenizer_decode(t, ids, n, (int)(rnd() & 1), NULL, &e);
            cr_assert(s, "%s", e.msg);
            free(s); free(ids);
            // random ids through decode and the streaming decoder
            int32_t rid[16]; size_t rn = rnd() % 16;
            for (size_t i = 0; i < rn; i++) rid[i] = (int32_t)(rnd() % V);
            s = vm_tokenizer_decode(t, rid, rn, 0, NULL, &e);
            cr_assert(s, "%s", e.msg);
            free(s);
            vm_detok_state *st = vm_detok_create(t, (int)(rnd() & 1), &e);
            const char *p; size_t pl;
            for (size_t i = 0; i < rn; i++) cr_assert_eq(vm_detok_feed(st, rid[i], &p, &pl, &e), 0);
            cr_assert_eq(vm_detok_flush(st, &p, &pl, &e), 0);
            vm_detok_free(st);
        }
        int32_t bad = (int32_t)V + 5; vm_err e = {{0}};
        cr_assert_null(vm_tokenizer_decode(t, &bad, 1, 0, NULL, &e));
        vm_tokenizer_free(t);
    }
}
