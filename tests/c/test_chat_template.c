// test_chat_template.c - chat template API checks and a mutation fuzz loop.
//
// Byte-exact comparisons against jinja2 live in tests/py/test_chat_template.py;
// here we hold the C API to its contract and throw random / mutated template
// sources at the parser and renderer. Built normally by `make tests`; for the
// sanitizer run:
//   gcc -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all
//       -Isrc tests/c/test_chat_template.c src/tokenizer/chat_template.c src/common/common.c
//       -ljansson -lutf8proc -lm -lcriterion -o /tmp/test_chat_template_asan
//   CT_FUZZ_ITERS=200000 /tmp/test_chat_template_asan
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/chat_template.h"

static char *render(const char *src, const char *ctx_json, vm_err *e) {
    json_error_t je;
    json_t *ctx = json_loads(ctx_json, 0, &je);
    cr_assert(ctx, "bad test JSON: %s", je.text);
    char *out = NULL;
    vm_chat_template *t = vm_chat_template_parse(src, strlen(src), e);
    if (t && vm_chat_template_render(t, ctx, &out, e) != 0) out = NULL;
    vm_chat_template_free(t);
    json_decref(ctx);
    return out;
}

Test(chat_template, renders_smollm2_style) {
    const char *src =
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are helpful<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    vm_err e = {{0}};
    char *out = render(src, "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"add_generation_prompt\":true}", &e);
    cr_assert(out, "%s", e.msg);
    cr_assert_str_eq(out, "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                          "<|im_start|>assistant\n");
    free(out);
}

Test(chat_template, trim_and_lstrip_blocks) {
    vm_err e = {{0}};
    char *out = render("a\n  {% if x %}\n    b\n  {% endif %}\nc\n", "{\"x\":true}", &e);
    cr_assert(out, "%s", e.msg);
    cr_assert_str_eq(out, "a\n    b\nc");
    free(out);
}

Test(chat_template, tojson_like_python) {
    vm_err e = {{0}};
    char *out = render("{{ v | tojson }}|{{ v | tojson(indent=2) }}", "{\"v\":{\"a\":[1,2.5,null,\"\\u00e9\"],\"b\":{}}}", &e);
    cr_assert(out, "%s", e.msg);
    cr_assert_str_eq(out, "{\"a\": [1, 2.5, null, \"\xc3\xa9\"], \"b\": {}}|{\n  \"a\": [\n    1,\n    2.5,\n    null,\n"
                          "    \"\xc3\xa9\"\n  ],\n  \"b\": {}\n}");
    free(out);
}

Test(chat_template, raise_exception_message_verbatim) {
    vm_err e = {{0}};
    char *out = render("{{ raise_exception('roles must alternate') }}", "{}", &e);
    cr_assert_null(out);
    cr_assert_str_eq(e.msg, "roles must alternate");
}

Test(chat_template, unsupported_construct_names_line) {
    vm_err e = {{0}};
    const char *src = "ok\n\n{% include 'other.jinja' %}";
    vm_chat_template *t = vm_chat_template_parse(src, strlen(src), &e);
    cr_assert_null(t);
    cr_assert(strstr(e.msg, "line 3") && strstr(e.msg, "include"), "%s", e.msg);
}

Test(chat_template, convenience_json_api) {
    char err[256] = "";
    char *out = vm_chat_template_render_json("{{ a ~ b }}", "{\"a\":\"x\",\"b\":1}", err, sizeof err);
    cr_assert(out, "%s", err);
    cr_assert_str_eq(out, "x1");
    vm_free_string(out);
    out = vm_chat_template_render_json("{{ a ~ }}", "{}", err, sizeof err);
    cr_assert_null(out);
    cr_assert(strstr(err, "line 1"), "%s", err);
    out = vm_chat_template_render_json("x", "not json", err, sizeof err);
    cr_assert_null(out);
}

Test(chat_template, bounded_on_hostile_input) {
    const char *srcs[] = {
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}",
        "{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    };
    for (size_t i = 0; i < sizeof srcs / sizeof srcs[0]; i++) {
        vm_err e = {{0}};
        char *out = render(srcs[i], "{}", &e);
        cr_assert_null(out, "template %zu should fail", i);
        cr_assert(e.msg[0]);
    }
}

// ----------------------------------------------------------------- fuzz

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    return rng_state;
}

static const char *const FRAGMENTS[] = {
    "{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", "{{-", "-}}", "{%+", "+%}", " if ", " else ", " elif ",
    " endif ", " for ", " in ", " endfor ", " set ", " = ", " macro ", " endmacro ", " break ", " continue ",
    "loop.index", "loop.last", "messages", "message['content']", "message.role", " | tojson(indent=2)",
    " | trim", " | length", " | join(', ')", " is defined", " is not none", " and ", " or ", " not ", "(", ")",
    "[", "]", "{", "}", "[::-1]", "[1:]", ",", ":", "'", "\"", "\\", "\n", " ~ ", " + ", " * ", " // ", " % ",
    "namespace(x=1)", "ns.x", "raise_exception('x')", "range(3)", "1e308", "-9223372036854775808", "0.5",
    "none", "true", "tools", "'\\u00e9'", "\xc3\xa9", "\xf0\x9f\x98\x80", "|items", "|selectattr('role')",
    "|map(attribute='content')", "|unique", "|dictsort", "|list", ".split('a')", ".strip()", "x if y else z",
};

static const char *CTX_JSON =
    "{\"messages\":[{\"role\":\"system\",\"content\":\"sys\"},{\"role\":\"user\",\"content\":\"hi \\u00e9\"},"
    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"abc123xyz\",\"function\":{\"name\":\"f\","
    "\"arguments\":{\"a\":1}}}]},{\"role\":\"tool\",\"tool_call_id\":\"abc123xyz\",\"content\":\"r\"},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"image\"},{\"type\":\"text\",\"text\":\"t\"}]}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\"}}}],"
    "\"add_generation_prompt\":true,\"bos_token\":\"<s>\",\"eos_token\":\"</s>\",\"x\":1,\"y\":[1,2],\"z\":\"s\"}";

static size_t load_corpus(char **corpus, size_t max) {
    size_t n = 0;
    DIR *d = opendir("tests/data/templates");
    if (!d) return 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < max) {
        size_t len = strlen(de->d_name);
        if (len < 7 || strcmp(de->d_name + len - 6, ".jinja")) continue;
        char path[512];
        snprintf(path, sizeof path, "tests/data/templates/%s", de->d_name);
        vm_err e;
        char *s = vm_read_file(path, NULL, 1 << 20, &e);
        if (s) corpus[n++] = s;
    }
    closedir(d);
    return n;
}

Test(chat_template, fuzz_mutations_no_crash, .timeout = 300) {
    char *corpus[32];
    size_t ncorp = load_corpus(corpus, 32);
    const char *seed_src = "{% for m in messages %}{{ m.role }}: {{ m.content | trim }}\n{% endfor %}";
    json_t *ctx = json_loads(CTX_JSON, 0, NULL);
    cr_assert(ctx);
    long iters = getenv("CT_FUZZ_ITERS") ? atol(getenv("CT_FUZZ_ITERS")) : 3000;
    size_t cap = 1 << 16;
    char *buf = malloc(cap + 1);
    long parsed = 0, rendered = 0;
    for (long it = 0; it < iters; it++) {
        const char *base = ncorp && rnd() % 4 ? corpus[rnd() % ncorp] : seed_src;
        size_t n = strlen(base);
        if (n > cap) n = cap;
        memcpy(buf, base, n);
        int muts = 1 + (int)(rnd() % 6);
        for (int m = 0; m < muts; m++) {
            int kind = (int)(rnd() % 5);
            size_t at = n ? rnd() % (n + 1) : 0;
            if (kind == 0 && n) { buf[rnd() % n] = (char)(rnd() & 0xff); }            // byte flip
            else if (kind == 1 && n) {                                                 // delete a span
                size_t len = rnd() % 16, st = rnd() % n;
                if (st + len > n) len = n - st;
                memmove(buf + st, buf + st + len, n - st - len);
                n -= len;
            } else if (kind == 2) {                                                     // insert a fragment
                const char *f = FRAGMENTS[rnd() % (sizeof FRAGMENTS / sizeof FRAGMENTS[0])];
                size_t fl = strlen(f);
                if (n + fl <= cap) { memmove(buf + at + fl, buf + at, n - at); memcpy(buf + at, f, fl); n += fl; }
            } else if (kind == 3 && n) {                                                // duplicate a span
                size_t st = rnd() % n, len = rnd() % 64;
                if (st + len > n) len = n - st;
                if (n + len <= cap) { memmove(buf + at + len, buf + at, n - at); memmove(buf + at, buf + (st >= at ? st + len : st), len); n += len; }
            } else if (kind == 4) { n = at; }                                            // truncate
        }
        buf[n] = 0;
        vm_err e = {{0}};
        vm_chat_template *t = vm_chat_template_parse(buf, n, &e);
        if (!t) { cr_assert(e.msg[0], "parse failed without a message"); continue; }
        parsed++;
        char *out = NULL;
        if (vm_chat_template_render(t, ctx, &out, &e) == 0) { rendered++; free(out); }
        else cr_assert(e.msg[0], "render failed without a message");
        vm_chat_template_free(t);
    }
    // pure random bytes, too
    for (long it = 0; it < iters / 10; it++) {
        size_t n = rnd() % 256;
        static const char alphabet[] = "{}%#-+ abc'\"\\|.()[]=\n0123ifordnst_";
        for (size_t i = 0; i < n; i++) buf[i] = alphabet[rnd() % (sizeof alphabet - 1)];
        buf[n] = 0;
        vm_err e = {{0}};
        vm_chat_template *t = vm_chat_template_parse(buf, n, &e);
        if (t) {
            char *out = NULL;
            if (vm_chat_template_render(t, ctx, &out, &e) == 0) free(out);
            vm_chat_template_free(t);
        }
    }
    cr_log_info("fuzz: %ld iterations, %ld parsed, %ld rendered", iters, parsed, rendered);
    free(buf);
    for (size_t i = 0; i < ncorp; i++) free(corpus[i]);
    json_decref(ctx);
}
