// chat_template.c - a Jinja-subset interpreter for chat templates.
//
// Reads top to bottom: limits, arena and strings, values, lexer (with jinja2's
// trim_blocks / lstrip_blocks / "-" "+" whitespace rules), parser to an AST,
// evaluator (operators, filters, tests, methods, statements), public API.
//
// Memory: every allocation made while parsing lives in the template's arena;
// every allocation made while rendering lives in a per-render arena that is
// dropped at the end. Errors inside the parser and the evaluator unwind with
// longjmp to the API function, which is safe because nothing outside the
// arenas is held across them.
#include "tokenizer/chat_template.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

// ---------------------------------------------------------------- limits

#define CT_MAX_SOURCE     (4u << 20)   // template source bytes
#define CT_MAX_PARSE_DEPTH 200         // nested expressions / blocks
#define CT_MAX_EVAL_DEPTH  400         // nested evaluation (macro recursion)
#define CT_MAX_STEPS      20000000LL   // evaluation steps per render
#define CT_MAX_OUTPUT     (64u << 20)  // rendered bytes
#define CT_MAX_MEMORY     (512u << 20) // per-render arena bytes
#define CT_MAX_RANGE      100000       // jinja2 sandbox's MAX_RANGE

// ---------------------------------------------------------------- arena

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t cap, used;
    max_align_t data[];
} arena_chunk;

typedef struct arena {
    arena_chunk *head;
    size_t total, limit;
    jmp_buf *fail;       // where to unwind when the limit is hit
    vm_err *err;
} arena;

static void arena_free_all(arena *a) {
    arena_chunk *c = a->head;
    while (c) { arena_chunk *n = c->next; free(c); c = n; }
    a->head = NULL; a->total = 0;
}

static void *arena_alloc(arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    arena_chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > (64u << 10) ? n : (64u << 10);
        if (a->total + cap > a->limit || !(c = malloc(sizeof *c + cap))) {
            vm_errf(a->err, "template memory limit exceeded");
            longjmp(*a->fail, 1);
        }
        c->cap = cap; c->used = 0; c->next = a->head; a->head = c;
        a->total += cap;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    return p;
}

static char *arena_strndup(arena *a, const char *s, size_t n) {
    char *p = arena_alloc(a, n + 1);
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

// Growable byte buffer in an arena (old copies are left behind: at most 2x).
typedef struct sbuf {
    arena *a;
    char *p;
    size_t n, cap, limit;
} sbuf;

static void sb_init(sbuf *b, arena *a) { b->a = a; b->p = NULL; b->n = b->cap = 0; b->limit = CT_MAX_OUTPUT; }

static void sb_reserve(sbuf *b, size_t extra) {
    if (b->n + extra <= b->cap) return;
    if (b->n + extra > b->limit) {
        vm_errf(b->a->err, "template output exceeds %u bytes", (unsigned)b->limit);
        longjmp(*b->a->fail, 1);
    }
    size_t cap = b->cap ? b->cap * 2 : 64;
    while (cap < b->n + extra) cap *= 2;
    char *p = arena_alloc(b->a, cap);
    if (b->n) memcpy(p, b->p, b->n);
    b->p = p; b->cap = cap;
}

static void sb_add(sbuf *b, const char *s, size_t n) {
    if (!n) return;
    sb_reserve(b, n);
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void sb_puts(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }
static void sb_putc(sbuf *b, char c) { sb_add(b, &c, 1); }
static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) sb_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

// ---------------------------------------------------------------- UTF-8

// Decodes one code point at s[*i] (i < n); invalid bytes decode as themselves.
static int32_t utf8_next(const char *s, size_t n, size_t *i) {
    const unsigned char *u = (const unsigned char *)s;
    utf8proc_int32_t cp;
    utf8proc_ssize_t k = utf8proc_iterate(u + *i, (utf8proc_ssize_t)(n - *i), &cp);
    if (k <= 0) { cp = u[*i]; k = 1; }
    *i += (size_t)k;
    return cp;
}

static void utf8_put(sbuf *b, int32_t cp) {
    unsigned char tmp[4];
    size_t k;
    if (cp < 0x80) { tmp[0] = (unsigned char)cp; k = 1; }
    else if (cp < 0x800) { tmp[0] = 0xC0 | (cp >> 6); tmp[1] = 0x80 | (cp & 63); k = 2; }
    else if (cp < 0x10000) { tmp[0] = 0xE0 | (cp >> 12); tmp[1] = 0x80 | ((cp >> 6) & 63); tmp[2] = 0x80 | (cp & 63); k = 3; }
    else { tmp[0] = 0xF0 | (cp >> 18); tmp[1] = 0x80 | ((cp >> 12) & 63); tmp[2] = 0x80 | ((cp >> 6) & 63); tmp[3] = 0x80 | (cp & 63); k = 4; }
    sb_add(b, (const char *)tmp, k);
}

static size_t utf8_len(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) if (((unsigned char)s[i] & 0xC0) != 0x80) c++;
    return c;
}

// Python's str.isspace().
static bool py_isspace(int32_t cp) {
    if (cp == ' ' || (cp >= 9 && cp <= 13) || (cp >= 0x1c && cp <= 0x1f) || cp == 0x85) return true;
    if (cp < 0x80) return false;
    utf8proc_category_t c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
}

// Start of the trailing whitespace run of s[0..n).
static size_t rstrip_ws(const char *s, size_t n) {
    while (n > 0) {
        size_t st = n - 1;
        while (st > 0 && ((unsigned char)s[st] & 0xC0) == 0x80 && n - st < 4) st--;
        size_t i = st;
        int32_t cp = utf8_next(s, n, &i);
        if (i != n || !py_isspace(cp)) break;
        n = st;
    }
    return n;
}

static size_t lstrip_ws(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        if (!py_isspace(utf8_next(s, n, &j))) break;
        i = j;
    }
    return i;
}

// ---------------------------------------------------------------- values

typedef enum vkind {
    T_UNDEF, T_NONE, T_BOOL, T_INT, T_FLOAT, T_STR, T_LIST, T_TUPLE, T_DICT,
    T_NS, T_FUNC, T_MACRO, T_LOOP,
} vkind;

struct tlist; struct tdict; struct tfunc; struct tmacro; struct tloop;

typedef struct tv {
    vkind t;
    union {
        int64_t i;                             // T_BOOL, T_INT
        double f;                              // T_FLOAT
        struct { const char *p; size_t n; } s; // T_STR; T_UNDEF: name hint
        struct tlist *l;                       // T_LIST, T_TUPLE
        struct tdict *d;                       // T_DICT, T_NS
        struct tfunc *fn;
        struct tmacro *m;
        struct tloop *lp;
    } u;
} tv;

typedef struct tlist { size_t n; tv *v; } tlist;
typedef struct tdict { size_t n, cap; tv *k, *v; } tdict;

static const tv V_NONE = { .t = T_NONE };

static tv mk_bool(bool b) { tv v = { .t = T_BOOL }; v.u.i = b; return v; }
static tv mk_int(int64_t i) { tv v = { .t = T_INT }; v.u.i = i; return v; }
static tv mk_float(double f) { tv v = { .t = T_FLOAT }; v.u.f = f; return v; }
static tv mk_str(const char *p, size_t n) { tv v = { .t = T_STR }; v.u.s.p = p; v.u.s.n = n; return v; }
static tv mk_undef(const char *hint) { tv v = { .t = T_UNDEF }; v.u.s.p = hint; v.u.s.n = hint ? strlen(hint) : 0; return v; }

static tlist *list_new(arena *a, size_t n) {
    tlist *l = arena_alloc(a, sizeof *l);
    l->n = n;
    l->v = n ? arena_alloc(a, n * sizeof(tv)) : NULL;
    return l;
}
static tv mk_list(tlist *l, vkind k) { tv v = { .t = k }; v.u.l = l; return v; }

static tdict *dict_new(arena *a, size_t cap) {
    tdict *d = arena_alloc(a, sizeof *d);
    d->n = 0; d->cap = cap ? cap : 4;
    d->k = arena_alloc(a, d->cap * sizeof(tv));
    d->v = arena_alloc(a, d->cap * sizeof(tv));
    return d;
}
static tv mk_dict(tdict *d, vkind k) { tv v = { .t = k }; v.u.d = d; return v; }

static bool is_num(tv v) { return v.t == T_INT || v.t == T_FLOAT || v.t == T_BOOL; }
static bool is_seq(tv v) { return v.t == T_LIST || v.t == T_TUPLE; }

static bool str_eq(tv a, const char *s) {
    size_t n = strlen(s);
    return a.t == T_STR && a.u.s.n == n && memcmp(a.u.s.p, s, n) == 0;
}

static double num_f(tv v) { return v.t == T_FLOAT ? v.u.f : (double)v.u.i; }

static bool v_eq(tv a, tv b);

static bool v_eq(tv a, tv b) {
    if (is_num(a) && is_num(b)) {
        if (a.t != T_FLOAT && b.t != T_FLOAT) return a.u.i == b.u.i;
        return num_f(a) == num_f(b);
    }
    if (a.t == T_UNDEF || b.t == T_UNDEF) return a.t == b.t;
    if (is_seq(a) && is_seq(b)) {
        if (a.t != b.t || a.u.l->n != b.u.l->n) return false;
        for (size_t i = 0; i < a.u.l->n; i++) if (!v_eq(a.u.l->v[i], b.u.l->v[i])) return false;
        return true;
    }
    if (a.t != b.t) return false;
    switch (a.t) {
    case T_NONE: return true;
    case T_STR: return a.u.s.n == b.u.s.n && memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0;
    case T_DICT: {
        if (a.u.d->n != b.u.d->n) return false;
        for (size_t i = 0; i < a.u.d->n; i++) {
            size_t j;
            for (j = 0; j < b.u.d->n; j++) if (v_eq(a.u.d->k[i], b.u.d->k[j])) break;
            if (j == b.u.d->n || !v_eq(a.u.d->v[i], b.u.d->v[j])) return false;
        }
        return true;
    }
    case T_NS: return a.u.d == b.u.d;
    case T_FUNC: return a.u.fn == b.u.fn;
    case T_MACRO: return a.u.m == b.u.m;
    case T_LOOP: return a.u.lp == b.u.lp;
    default: return false;
    }
}

// Returns the index of key k in d, or -1.
static long dict_find(const tdict *d, tv k) {
    for (size_t i = 0; i < d->n; i++) if (v_eq(d->k[i], k)) return (long)i;
    return -1;
}
static long dict_find_s(const tdict *d, const char *s, size_t n) {
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == T_STR && d->k[i].u.s.n == n && memcmp(d->k[i].u.s.p, s, n) == 0) return (long)i;
    return -1;
}

static void dict_set(arena *a, tdict *d, tv k, tv v) {
    long i = dict_find(d, k);
    if (i >= 0) { d->v[i] = v; return; }
    if (d->n == d->cap) {
        size_t cap = d->cap * 2;
        tv *nk = arena_alloc(a, cap * sizeof(tv)), *nv = arena_alloc(a, cap * sizeof(tv));
        memcpy(nk, d->k, d->n * sizeof(tv)); memcpy(nv, d->v, d->n * sizeof(tv));
        d->k = nk; d->v = nv; d->cap = cap;
    }
    d->k[d->n] = k; d->v[d->n] = v; d->n++;
}

static bool truthy(tv v) {
    switch (v.t) {
    case T_UNDEF: case T_NONE: return false;
    case T_BOOL: case T_INT: return v.u.i != 0;
    case T_FLOAT: return v.u.f != 0.0;
    case T_STR: return v.u.s.n != 0;
    case T_LIST: case T_TUPLE: return v.u.l->n != 0;
    case T_DICT: return v.u.d->n != 0;
    default: return true;
    }
}

static const char *type_name(tv v) {
    switch (v.t) {
    case T_UNDEF: return "Undefined";
    case T_NONE: return "NoneType";
    case T_BOOL: return "bool";
    case T_INT: return "int";
    case T_FLOAT: return "float";
    case T_STR: return "str";
    case T_LIST: return "list";
    case T_TUPLE: return "tuple";
    case T_DICT: return "dict";
    case T_NS: return "Namespace";
    case T_FUNC: return "function";
    case T_MACRO: return "Macro";
    case T_LOOP: return "LoopContext";
    }
    return "?";
}

// Python's repr(float) ("short" style).
static void fmt_float(sbuf *b, double d) {
    if (isnan(d)) { sb_puts(b, "nan"); return; }
    if (isinf(d)) { sb_puts(b, d < 0 ? "-inf" : "inf"); return; }
    if (d == 0) { sb_puts(b, signbit(d) ? "-0.0" : "0.0"); return; }
    char tmp[64];
    int p;
    for (p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, d);
        if (strtod(tmp, NULL) == d) break;
    }
    // tmp: [-]D[.DDD]e[+-]XX
    char digits[32]; int nd = 0; const char *q = tmp;
    bool neg = false;
    if (*q == '-') { neg = true; q++; }
    for (; *q && *q != 'e'; q++) if (*q != '.') digits[nd++] = *q;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    int exp = atoi(q + 1);
    if (neg) sb_putc(b, '-');
    if (exp >= -4 && exp < 16) {
        if (exp >= 0) {
            for (int i = 0; i <= exp; i++) sb_putc(b, i < nd ? digits[i] : '0');
            sb_putc(b, '.');
            if (nd > exp + 1) sb_add(b, digits + exp + 1, (size_t)(nd - exp - 1));
            else sb_putc(b, '0');
        } else {
            sb_puts(b, "0.");
            for (int i = 0; i < -exp - 1; i++) sb_putc(b, '0');
            sb_add(b, digits, (size_t)nd);
        }
    } else {
        sb_putc(b, digits[0]);
        if (nd > 1) { sb_putc(b, '.'); sb_add(b, digits + 1, (size_t)nd - 1); }
        sb_printf(b, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    }
}

// Python's str.isprintable() for one code point.
static bool py_isprintable(int32_t cp) {
    if (cp == ' ') return true;
    if (cp < 0x20 || cp == 0x7f) return false;
    if (cp < 0x7f) return true;
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_CC: case UTF8PROC_CATEGORY_CF: case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO: case UTF8PROC_CATEGORY_CN: case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP: case UTF8PROC_CATEGORY_ZS:
        return false;
    default: return true;
    }
}

static void repr_str(sbuf *b, const char *s, size_t n) {
    bool sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char q = (sq && !dq) ? '"' : '\'';
    sb_putc(b, q);
    for (size_t i = 0; i < n;) {
        size_t st = i;
        int32_t cp = utf8_next(s, n, &i);
        if (cp == q || cp == '\\') { sb_putc(b, '\\'); sb_putc(b, (char)cp); }
        else if (cp == '\n') sb_puts(b, "\\n");
        else if (cp == '\r') sb_puts(b, "\\r");
        else if (cp == '\t') sb_puts(b, "\\t");
        else if (py_isprintable(cp)) sb_add(b, s + st, i - st);
        else if (cp < 0x100) sb_printf(b, "\\x%02x", (unsigned)cp);
        else if (cp < 0x10000) sb_printf(b, "\\u%04x", (unsigned)cp);
        else sb_printf(b, "\\U%08x", (unsigned)cp);
    }
    sb_putc(b, q);
}

static void to_str(sbuf *b, tv v, bool repr);

static void to_str(sbuf *b, tv v, bool repr) {
    switch (v.t) {
    case T_UNDEF: break;
    case T_NONE: sb_puts(b, "None"); break;
    case T_BOOL: sb_puts(b, v.u.i ? "True" : "False"); break;
    case T_INT: sb_printf(b, "%" PRId64, v.u.i); break;
    case T_FLOAT: fmt_float(b, v.u.f); break;
    case T_STR: if (repr) repr_str(b, v.u.s.p, v.u.s.n); else sb_add(b, v.u.s.p, v.u.s.n); break;
    case T_LIST: case T_TUPLE:
        sb_putc(b, v.t == T_LIST ? '[' : '(');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) sb_puts(b, ", ");
            to_str(b, v.u.l->v[i], true);
        }
        if (v.t == T_TUPLE && v.u.l->n == 1) sb_putc(b, ',');
        sb_putc(b, v.t == T_LIST ? ']' : ')');
        break;
    case T_DICT: case T_NS:
        if (v.t == T_NS) sb_puts(b, "<Namespace ");
        sb_putc(b, '{');
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i) sb_puts(b, ", ");
            to_str(b, v.u.d->k[i], true);
            sb_puts(b, ": ");
            to_str(b, v.u.d->v[i], true);
        }
        sb_putc(b, '}');
        if (v.t == T_NS) sb_putc(b, '>');
        break;
    case T_FUNC: sb_puts(b, "<function>"); break;
    case T_MACRO: sb_puts(b, "<Macro>"); break;
    case T_LOOP: sb_puts(b, "<LoopContext>"); break;
    }
}

// ---------------------------------------------------------------- lexer

typedef enum tkind {
    K_EOF, K_TEXT, K_VBEGIN, K_VEND, K_BBEGIN, K_BEND, K_NAME, K_STR, K_INT, K_FLOAT, K_OP,
} tkind;

// Operators, longest first (jinja2's operator table).
static const char *const OPS[] = {
    "//", "**", "==", "!=", ">=", "<=",
    "+", "-", "/", "*", "%", "~", "[", "]", "(", ")", "{", "}", "|", ".", ",", ":", ";", "=", "<", ">",
};
enum { OP_FLOORDIV, OP_POW, OP_EQ, OP_NE, OP_GE, OP_LE, OP_ADD, OP_SUB, OP_DIV, OP_MUL, OP_MOD,
       OP_TILDE, OP_LBRACK, OP_RBRACK, OP_LPAREN, OP_RPAREN, OP_LBRACE, OP_RBRACE, OP_PIPE, OP_DOT,
       OP_COMMA, OP_COLON, OP_SEMI, OP_ASSIGN, OP_LT, OP_GT, OP_COUNT };

typedef struct tok {
    tkind k;
    int line;
    int op;
    const char *p; size_t n;  // text, name or (unescaped) string
    int64_t i;
    double f;
} tok;

typedef struct parser {
    arena *a;
    vm_err *e;
    jmp_buf *fail;
    tok *toks; size_t ntok, cap, pos;
    int depth;
    int loop_depth, macro_depth;
} parser;

// Records "chat template <what>: line N: <message>" in e.
static void fail_msg(vm_err *e, const char *what, int line, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));
static void fail_msg(vm_err *e, const char *what, int line, const char *fmt, va_list ap) {
    char msg[900];
    vsnprintf(msg, sizeof msg, fmt, ap);
    vm_errf(e, "chat template %s: line %d: %s", what, line, msg);
}

static void pfail(parser *p, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4), noreturn));
static void pfail(parser *p, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fail_msg(p->e, "syntax error", line, fmt, ap);
    va_end(ap);
    longjmp(*p->fail, 1);
}

static tok *push_tok(parser *p, tkind k, int line) {
    if (p->ntok == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        tok *t = arena_alloc(p->a, cap * sizeof *t);
        if (p->ntok) memcpy(t, p->toks, p->ntok * sizeof *t);
        p->toks = t; p->cap = cap;
    }
    tok *t = &p->toks[p->ntok++];
    memset(t, 0, sizeof *t);
    t->k = k; t->line = line;
    return t;
}

static int count_nl(const char *s, size_t n) {
    int c = 0;
    for (size_t i = 0; i < n; i++) c += s[i] == '\n';
    return c;
}

// Python's unicode-escape decoding of a string literal body.
static void unescape(parser *p, int line, const char *s, size_t n, tok *t) {
    sbuf b; sb_init(&b, p->a);
    for (size_t i = 0; i < n;) {
        if (s[i] != '\\' || i + 1 >= n) { sb_putc(&b, s[i++]); continue; }
        char c = s[i + 1];
        i += 2;
        switch (c) {
        case '\n': break;
        case '\\': sb_putc(&b, '\\'); break;
        case '\'': sb_putc(&b, '\''); break;
        case '"': sb_putc(&b, '"'); break;
        case 'a': sb_putc(&b, '\a'); break;
        case 'b': sb_putc(&b, '\b'); break;
        case 'f': sb_putc(&b, '\f'); break;
        case 'n': sb_putc(&b, '\n'); break;
        case 'r': sb_putc(&b, '\r'); break;
        case 't': sb_putc(&b, '\t'); break;
        case 'v': sb_putc(&b, '\v'); break;
        case 'x': case 'u': case 'U': {
            int want = c == 'x' ? 2 : c == 'u' ? 4 : 8;
            uint32_t cp = 0;
            for (int k = 0; k < want; k++) {
                if (i >= n || !isxdigit((unsigned char)s[i]))
                    pfail(p, line, "truncated \\%c escape in string literal", c);
                char h = s[i++];
                cp = cp * 16 + (uint32_t)(isdigit((unsigned char)h) ? h - '0' : (tolower((unsigned char)h) - 'a' + 10));
            }
            if (cp > 0x10FFFF) pfail(p, line, "illegal Unicode character in string literal");
            utf8_put(&b, (int32_t)cp);
            break;
        }
        case 'N': pfail(p, line, "unsupported \\N{...} escape in string literal");
        default:
            if (c >= '0' && c <= '7') {
                uint32_t cp = (uint32_t)(c - '0');
                for (int k = 0; k < 2 && i < n && s[i] >= '0' && s[i] <= '7'; k++) cp = cp * 8 + (uint32_t)(s[i++] - '0');
                utf8_put(&b, (int32_t)cp);
            } else {
                sb_putc(&b, '\\');
                i--; // keep the character after the backslash as it is
            }
        }
    }
    t->p = b.p ? b.p : ""; t->n = b.n;
}

static bool starts(const char *s, size_t n, size_t i, const char *lit) {
    size_t m = strlen(lit);
    return i + m <= n && memcmp(s + i, lit, m) == 0;
}

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Lexes src (newlines already normalized) into p->toks.
static void lex(parser *p, const char *s, size_t n) {
    size_t pos = 0;
    int line = 1;
    bool line_starting = true;
    while (pos < n) {
        // find the next tag start
        size_t q = pos;
        int kind = 0; // 1 var, 2 block, 3 comment
        for (; q + 1 < n; q++) {
            if (s[q] != '{') continue;
            if (s[q + 1] == '{') { kind = 1; break; }
            if (s[q + 1] == '%') { kind = 2; break; }
            if (s[q + 1] == '#') { kind = 3; break; }
        }
        if (!kind) {
            tok *t = push_tok(p, K_TEXT, line);
            t->p = s + pos; t->n = n - pos;
            break;
        }
        const char *text = s + pos;
        size_t tlen = q - pos;
        char sign = q + 2 < n && (s[q + 2] == '-' || s[q + 2] == '+') ? s[q + 2] : 0;
        int text_line = line;
        line += count_nl(text, tlen);
        if (sign == '-') {
            tlen = rstrip_ws(text, tlen);
        } else if (sign != '+' && kind != 1) {
            size_t l_pos = tlen;
            while (l_pos > 0 && text[l_pos - 1] != '\n') l_pos--;
            if ((l_pos > 0 || line_starting) && l_pos < tlen && lstrip_ws(text + l_pos, tlen - l_pos) == tlen - l_pos)
                tlen = l_pos;
        }
        if (tlen) { tok *t = push_tok(p, K_TEXT, text_line); t->p = text; t->n = tlen; }
        pos = q + 2 + (sign ? 1 : 0);
        if (kind == 3) {
            size_t i = pos;
            for (;; i++) {
                if (i + 1 >= n) pfail(p, line, "missing end of comment tag");
                if (starts(s, n, i, "+#}")) { line += count_nl(s + pos, i - pos); pos = i + 3; line_starting = false; break; }
                if (starts(s, n, i, "-#}")) {
                    line += count_nl(s + pos, i - pos);
                    size_t j = i + 3;
                    j += lstrip_ws(s + j, n - j);
                    line += count_nl(s + i, j - i);
                    line_starting = j > i + 3 && s[j - 1] == '\n';
                    pos = j;
                    break;
                }
                if (starts(s, n, i, "#}")) {
                    line += count_nl(s + pos, i - pos);
                    pos = i + 2;
                    line_starting = false;
                    if (pos < n && s[pos] == '\n') { pos++; line++; line_starting = true; }
                    break;
                }
            }
            continue;
        }
        // raw blocks: {% raw %}...{% endraw %}
        if (kind == 2) {
            size_t j = pos;
            while (j < n && is_ws(s[j])) j++;
            if (starts(s, n, j, "raw") && (j + 3 >= n || !(isalnum((unsigned char)s[j + 3]) || s[j + 3] == '_')))
                pfail(p, line, "unsupported construct 'raw'");
        }
        push_tok(p, kind == 1 ? K_VBEGIN : K_BBEGIN, line);
        int balance = 0;
        for (;;) {
            // whitespace
            size_t w = pos;
            while (pos < n && (is_ws(s[pos]))) pos++;
            if (pos > w) {
                line += count_nl(s + w, pos - w);
                line_starting = s[pos - 1] == '\n';
            }
            if (pos >= n) pfail(p, line, "unexpected end of template inside a %s tag", kind == 1 ? "{{ }}" : "{% %}");
            if (balance == 0) {
                if (kind == 2) {
                    if (starts(s, n, pos, "+%}")) { pos += 3; line_starting = false; push_tok(p, K_BEND, line); break; }
                    if (starts(s, n, pos, "-%}")) {
                        size_t j = pos + 3;
                        j += lstrip_ws(s + j, n - j);
                        line_starting = j > pos + 3 && s[j - 1] == '\n';
                        push_tok(p, K_BEND, line);
                        line += count_nl(s + pos, j - pos);
                        pos = j;
                        break;
                    }
                    if (starts(s, n, pos, "%}")) {
                        pos += 2;
                        line_starting = false;
                        push_tok(p, K_BEND, line);
                        if (pos < n && s[pos] == '\n') { pos++; line++; line_starting = true; }
                        break;
                    }
                } else {
                    if (starts(s, n, pos, "-}}")) {
                        size_t j = pos + 3;
                        j += lstrip_ws(s + j, n - j);
                        line_starting = j > pos + 3 && s[j - 1] == '\n';
                        push_tok(p, K_VEND, line);
                        line += count_nl(s + pos, j - pos);
                        pos = j;
                        break;
                    }
                    if (starts(s, n, pos, "}}")) { pos += 2; line_starting = false; push_tok(p, K_VEND, line); break; }
                }
            }
            char c = s[pos];
            line_starting = false;
            if (isdigit((unsigned char)c)) {
                size_t j = pos;
                while (j < n && (isdigit((unsigned char)s[j]) || (s[j] == '_' && j + 1 < n && isdigit((unsigned char)s[j + 1])))) j++;
                bool is_float = false;
                if (j + 1 < n && s[j] == '.' && isdigit((unsigned char)s[j + 1])) {
                    is_float = true; j++;
                    while (j < n && (isdigit((unsigned char)s[j]) || (s[j] == '_' && j + 1 < n && isdigit((unsigned char)s[j + 1])))) j++;
                }
                if (j < n && (s[j] == 'e' || s[j] == 'E')) {
                    size_t k = j + 1;
                    if (k < n && (s[k] == '+' || s[k] == '-')) k++;
                    if (k < n && isdigit((unsigned char)s[k])) {
                        is_float = true; j = k;
                        while (j < n && isdigit((unsigned char)s[j])) j++;
                    }
                }
                char buf[64]; size_t m = 0;
                for (size_t k = pos; k < j && m < sizeof buf - 1; k++) if (s[k] != '_') buf[m++] = s[k];
                buf[m] = 0;
                tok *t = push_tok(p, is_float ? K_FLOAT : K_INT, line);
                if (is_float) t->f = strtod(buf, NULL);
                else {
                    errno = 0;
                    long long v = strtoll(buf, NULL, 10);
                    if (errno) pfail(p, line, "integer literal too large");
                    t->i = v;
                }
                t->p = s + pos; t->n = j - pos;
                pos = j;
                continue;
            }
            if (isalpha((unsigned char)c) || c == '_') {
                size_t j = pos;
                while (j < n && (isalnum((unsigned char)s[j]) || s[j] == '_')) j++;
                tok *t = push_tok(p, K_NAME, line);
                t->p = arena_strndup(p->a, s + pos, j - pos); t->n = j - pos;
                pos = j;
                continue;
            }
            if (c == '\'' || c == '"') {
                size_t j = pos + 1;
                while (j < n && s[j] != c) { if (s[j] == '\\') j++; j++; }
                if (j >= n) pfail(p, line, "unterminated string literal");
                tok *t = push_tok(p, K_STR, line);
                unescape(p, line, s + pos + 1, j - pos - 1, t);
                line += count_nl(s + pos, j - pos);
                pos = j + 1;
                continue;
            }
            int op = -1;
            for (int k = 0; k < OP_COUNT; k++) if (starts(s, n, pos, OPS[k])) { op = k; break; }
            if (op < 0) pfail(p, line, "unexpected char '%c'", c);
            if (op == OP_LBRACE || op == OP_LBRACK || op == OP_LPAREN) balance++;
            if (op == OP_RBRACE || op == OP_RBRACK || op == OP_RPAREN) {
                if (balance == 0) pfail(p, line, "unexpected '%s'", OPS[op]);
                balance--;
            }
            tok *t = push_tok(p, K_OP, line);
            t->op = op;
            pos += strlen(OPS[op]);
        }
    }
    push_tok(p, K_EOF, line);
}

// ---------------------------------------------------------------- AST

typedef enum nkind {
    // expressions
    N_CONST, N_NAME, N_GETATTR, N_GETITEM, N_SLICE, N_CALL, N_FILTER, N_TEST, N_BINOP, N_NEG, N_POS,
    N_AND, N_OR, N_NOT, N_COMPARE, N_COND, N_LIST, N_TUPLE, N_DICT, N_CONCAT,
    // statements
    S_TEXT, S_OUTPUT, S_IF, S_FOR, S_SET, S_SET_ATTR, S_SET_BLOCK, S_MACRO, S_BREAK, S_CONTINUE, S_BLOCK,
} nkind;

typedef struct node node;
struct node {
    nkind k;
    int line;
    int op;                    // N_BINOP operator, N_TEST negated
    node *a, *b, *c;           // operands / condition / iterable / filter
    node **args; size_t nargs; // positional args, list items, body
    node **kw; size_t nkw;     // keyword args values, dict values, else body
    const char **kwn;          // keyword names
    const char **names; size_t nnames; // for/set targets, macro params, compare operators
    const char *s; size_t sn;  // name, attribute, filter/test name, text
    tv val;                    // N_CONST
};

static node *nnew(parser *p, nkind k, int line) {
    node *n = arena_alloc(p->a, sizeof *n);
    memset(n, 0, sizeof *n);
    n->k = k; n->line = line;
    return n;
}

// Small growable pointer vector in the parse arena.
typedef struct pvec { void **v; size_t n, cap; } pvec;
static void pv_push(parser *p, pvec *v, void *x) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 4;
        void **nv = arena_alloc(p->a, cap * sizeof *nv);
        if (v->n) memcpy(nv, v->v, v->n * sizeof *nv);
        v->v = nv; v->cap = cap;
    }
    v->v[v->n++] = x;
}

// ---------------------------------------------------------------- parser

static tok *cur(parser *p) { return &p->toks[p->pos]; }
static tok *peek(parser *p, size_t k) { size_t i = p->pos + k; return &p->toks[i < p->ntok ? i : p->ntok - 1]; }
static tok *advance(parser *p) { tok *t = cur(p); if (t->k != K_EOF) p->pos++; return t; }
static bool is_op(parser *p, int op) { return cur(p)->k == K_OP && cur(p)->op == op; }
static bool is_name(parser *p, const char *s) { return cur(p)->k == K_NAME && strcmp(cur(p)->p, s) == 0; }

static const char *tok_desc(tok *t) {
    switch (t->k) {
    case K_EOF: return "end of template";
    case K_TEXT: return "template data";
    case K_VBEGIN: return "'{{'";
    case K_VEND: return "'}}'";
    case K_BBEGIN: return "'{%'";
    case K_BEND: return "'%}'";
    case K_NAME: return t->p;
    case K_STR: return "string";
    case K_INT: return "integer";
    case K_FLOAT: return "float";
    case K_OP: return OPS[t->op];
    }
    return "?";
}

static void expect_op(parser *p, int op) {
    if (!is_op(p, op)) pfail(p, cur(p)->line, "expected '%s', got '%s'", OPS[op], tok_desc(cur(p)));
    advance(p);
}
static const char *expect_name(parser *p) {
    if (cur(p)->k != K_NAME) pfail(p, cur(p)->line, "expected a name, got '%s'", tok_desc(cur(p)));
    return advance(p)->p;
}
static void expect_bend(parser *p) {
    if (cur(p)->k != K_BEND) pfail(p, cur(p)->line, "expected end of statement block, got '%s'", tok_desc(cur(p)));
    advance(p);
}

static void enter(parser *p) {
    if (++p->depth > CT_MAX_PARSE_DEPTH) pfail(p, cur(p)->line, "template nesting too deep");
}

static node *parse_expr(parser *p, bool with_condexpr);
static node *parse_tuple(parser *p, bool with_condexpr, bool explicit_parens, const char *extra_end);
static node *parse_unary(parser *p, bool with_filter);

static const char *const FILTERS[] = {
    "abs", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first", "float", "items",
    "int", "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr",
    "replace", "reverse", "round", "safe", "select", "selectattr", "sort", "string", "sum", "title",
    "tojson", "trim", "unique", "upper", "wordcount", "center", "indent", "batch", "slice", "groupby",
    NULL,
};
static const char *const JINJA_FILTERS[] = { // known to jinja2, not supported here
    "attr", "filesizeformat", "forceescape", "format", "pprint", "random", "striptags",
    "truncate", "urlencode", "urlize", "wordwrap", "xmlattr", NULL,
};
static const char *const TESTS[] = {
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false",
    "filter", "float", "ge", "greaterthan", "gt", "in", "integer", "iterable", "le", "lessthan", "lower",
    "lt", "mapping", "ne", "none", "number", "odd", "sameas", "sequence", "string", "test", "true",
    "undefined", "upper", "==", "!=", "<", "<=", ">", ">=", NULL,
};

static bool in_list(const char *const *l, const char *s) {
    for (; *l; l++) if (strcmp(*l, s) == 0) return true;
    return false;
}

// (args) of a call, filter or test; p->pos is at '('.
static void parse_call_args(parser *p, node *n) {
    expect_op(p, OP_LPAREN);
    pvec args = {0}, kw = {0}, kwn = {0};
    while (!is_op(p, OP_RPAREN)) {
        if (args.n + kw.n) expect_op(p, OP_COMMA);
        if (is_op(p, OP_RPAREN)) break;
        if (is_op(p, OP_MUL) || is_op(p, OP_POW)) pfail(p, cur(p)->line, "unsupported construct '*args / **kwargs' in call");
        if (cur(p)->k == K_NAME && peek(p, 1)->k == K_OP && peek(p, 1)->op == OP_ASSIGN) {
            const char *name = advance(p)->p;
            advance(p);
            pv_push(p, &kwn, (void *)name);
            pv_push(p, &kw, parse_expr(p, true));
        } else {
            if (kw.n) pfail(p, cur(p)->line, "positional argument follows keyword argument");
            pv_push(p, &args, parse_expr(p, true));
        }
    }
    advance(p);
    n->args = (node **)args.v; n->nargs = args.n;
    n->kw = (node **)kw.v; n->nkw = kw.n; n->kwn = (const char **)kwn.v;
}

static node *parse_primary(parser *p) {
    tok *t = cur(p);
    int line = t->line;
    node *n;
    switch (t->k) {
    case K_NAME:
        advance(p);
        n = nnew(p, N_CONST, line);
        if (!strcmp(t->p, "true") || !strcmp(t->p, "True")) n->val = mk_bool(true);
        else if (!strcmp(t->p, "false") || !strcmp(t->p, "False")) n->val = mk_bool(false);
        else if (!strcmp(t->p, "none") || !strcmp(t->p, "None")) n->val = V_NONE;
        else { n->k = N_NAME; n->s = t->p; }
        return n;
    case K_STR: {
        advance(p);
        sbuf b; sb_init(&b, p->a);
        sb_add(&b, t->p, t->n);
        while (cur(p)->k == K_STR) { tok *u = advance(p); sb_add(&b, u->p, u->n); }
        n = nnew(p, N_CONST, line);
        n->val = mk_str(b.p ? b.p : "", b.n);
        return n;
    }
    case K_INT: advance(p); n = nnew(p, N_CONST, line); n->val = mk_int(t->i); return n;
    case K_FLOAT: advance(p); n = nnew(p, N_CONST, line); n->val = mk_float(t->f); return n;
    case K_OP:
        if (t->op == OP_LPAREN) {
            advance(p);
            n = parse_tuple(p, true, true, NULL);
            expect_op(p, OP_RPAREN);
            return n;
        }
        if (t->op == OP_LBRACK) {
            advance(p);
            pvec items = {0};
            while (!is_op(p, OP_RBRACK)) {
                if (items.n) expect_op(p, OP_COMMA);
                if (is_op(p, OP_RBRACK)) break;
                pv_push(p, &items, parse_expr(p, true));
            }
            advance(p);
            n = nnew(p, N_LIST, line);
            n->args = (node **)items.v; n->nargs = items.n;
            return n;
        }
        if (t->op == OP_LBRACE) {
            advance(p);
            pvec keys = {0}, vals = {0};
            while (!is_op(p, OP_RBRACE)) {
                if (keys.n) expect_op(p, OP_COMMA);
                if (is_op(p, OP_RBRACE)) break;
                pv_push(p, &keys, parse_expr(p, true));
                expect_op(p, OP_COLON);
                pv_push(p, &vals, parse_expr(p, true));
            }
            advance(p);
            n = nnew(p, N_DICT, line);
            n->args = (node **)keys.v; n->nargs = keys.n;
            n->kw = (node **)vals.v; n->nkw = vals.n;
            return n;
        }
        break;
    default: break;
    }
    pfail(p, line, "unexpected '%s'", tok_desc(t));
}

static node *parse_subscript_arg(parser *p) {
    int line = cur(p)->line;
    node *parts[3] = {NULL, NULL, NULL};
    bool slice = false;
    if (!is_op(p, OP_COLON)) {
        parts[0] = parse_expr(p, true);
        if (!is_op(p, OP_COLON)) return parts[0];
    }
    slice = true;
    advance(p); // ':'
    if (!is_op(p, OP_RBRACK) && !is_op(p, OP_COLON) && !is_op(p, OP_COMMA)) parts[1] = parse_expr(p, true);
    if (is_op(p, OP_COLON)) {
        advance(p);
        if (!is_op(p, OP_RBRACK) && !is_op(p, OP_COMMA)) parts[2] = parse_expr(p, true);
    }
    node *n = nnew(p, N_SLICE, line);
    n->a = parts[0]; n->b = parts[1]; n->c = parts[2];
    (void)slice;
    return n;
}

static node *parse_postfix(parser *p, node *n) {
    for (;;) {
        int line = cur(p)->line;
        if (is_op(p, OP_DOT)) {
            advance(p);
            tok *t = cur(p);
            if (t->k == K_NAME) {
                advance(p);
                node *g = nnew(p, N_GETATTR, line);
                g->a = n; g->s = t->p;
                n = g;
            } else if (t->k == K_INT) {
                advance(p);
                node *g = nnew(p, N_GETITEM, line);
                g->a = n; g->b = nnew(p, N_CONST, line); g->b->val = mk_int(t->i);
                n = g;
            } else pfail(p, line, "expected name or number after '.'");
        } else if (is_op(p, OP_LBRACK)) {
            advance(p);
            node *arg = parse_subscript_arg(p);
            if (is_op(p, OP_COMMA)) pfail(p, line, "unsupported construct 'tuple subscript'");
            expect_op(p, OP_RBRACK);
            node *g;
            if (arg->k == N_SLICE) { g = arg; g->args = NULL; }
            else { g = nnew(p, N_GETITEM, line); g->b = arg; }
            // N_SLICE keeps its bounds in a/b/c; the object goes in args[0]
            if (g->k == N_SLICE) {
                g->args = arena_alloc(p->a, sizeof(node *));
                g->args[0] = n; g->nargs = 1;
            } else g->a = n;
            n = g;
        } else if (is_op(p, OP_LPAREN)) {
            node *c = nnew(p, N_CALL, line);
            c->a = n;
            parse_call_args(p, c);
            n = c;
        } else break;
    }
    return n;
}

static node *parse_filter_expr(parser *p, node *n) {
    for (;;) {
        int line = cur(p)->line;
        if (is_op(p, OP_PIPE)) {
            advance(p);
            const char *name = expect_name(p);
            if (is_op(p, OP_DOT)) pfail(p, line, "unsupported construct 'dotted filter name'");
            if (!in_list(FILTERS, name)) {
                if (in_list(JINJA_FILTERS, name)) pfail(p, line, "unsupported filter '%s'", name);
                pfail(p, line, "no filter named '%s'", name);
            }
            node *f = nnew(p, N_FILTER, line);
            f->a = n; f->s = name;
            if (is_op(p, OP_LPAREN)) parse_call_args(p, f);
            n = f;
        } else if (is_name(p, "is")) {
            advance(p);
            node *t = nnew(p, N_TEST, line);
            if (is_name(p, "not")) { advance(p); t->op = 1; }
            const char *name;
            if (cur(p)->k == K_NAME) name = advance(p)->p;
            else if (cur(p)->k == K_OP && (cur(p)->op == OP_EQ || cur(p)->op == OP_NE || cur(p)->op == OP_LT ||
                                          cur(p)->op == OP_LE || cur(p)->op == OP_GT || cur(p)->op == OP_GE))
                name = OPS[advance(p)->op];
            else pfail(p, line, "expected a test name after 'is'");
            if (!strcmp(name, "true") || !strcmp(name, "True")) name = "true";
            if (!strcmp(name, "false") || !strcmp(name, "False")) name = "false";
            if (!strcmp(name, "none") || !strcmp(name, "None")) name = "none";
            if (!in_list(TESTS, name)) pfail(p, line, "no test named '%s'", name);
            if (!strcmp(name, "filter") || !strcmp(name, "test")) pfail(p, line, "unsupported test '%s'", name);
            t->a = n; t->s = name;
            tok *c = cur(p);
            if (is_op(p, OP_LPAREN)) parse_call_args(p, t);
            else if ((c->k == K_NAME || c->k == K_STR || c->k == K_INT || c->k == K_FLOAT ||
                      (c->k == K_OP && (c->op == OP_LBRACK || c->op == OP_LBRACE))) &&
                     !(c->k == K_NAME && (!strcmp(c->p, "else") || !strcmp(c->p, "or") || !strcmp(c->p, "and")))) {
                if (c->k == K_NAME && !strcmp(c->p, "is")) pfail(p, line, "You cannot chain multiple tests with is");
                node *arg = parse_postfix(p, parse_primary(p));
                t->args = arena_alloc(p->a, sizeof(node *));
                t->args[0] = arg; t->nargs = 1;
            }
            n = t;
        } else if (is_op(p, OP_LPAREN)) {
            node *c = nnew(p, N_CALL, line);
            c->a = n;
            parse_call_args(p, c);
            n = c;
        } else break;
    }
    return n;
}

static node *parse_unary(parser *p, bool with_filter) {
    enter(p);
    int line = cur(p)->line;
    node *n;
    if (is_op(p, OP_SUB) || is_op(p, OP_ADD)) {
        bool neg = is_op(p, OP_SUB);
        advance(p);
        n = nnew(p, neg ? N_NEG : N_POS, line);
        n->a = parse_unary(p, false);
    } else n = parse_primary(p);
    n = parse_postfix(p, n);
    if (with_filter) n = parse_filter_expr(p, n);
    p->depth--;
    return n;
}

static node *binop(parser *p, int op, node *a, node *b, int line) {
    node *n = nnew(p, op == OP_TILDE ? N_CONCAT : N_BINOP, line);
    n->op = op; n->a = a; n->b = b;
    return n;
}

static node *parse_pow(parser *p) {
    node *n = parse_unary(p, true);
    while (is_op(p, OP_POW)) { int line = cur(p)->line; advance(p); n = binop(p, OP_POW, n, parse_unary(p, true), line); }
    return n;
}
static node *parse_math2(parser *p) {
    node *n = parse_pow(p);
    while (is_op(p, OP_MUL) || is_op(p, OP_DIV) || is_op(p, OP_FLOORDIV) || is_op(p, OP_MOD)) {
        int line = cur(p)->line, op = advance(p)->op;
        n = binop(p, op, n, parse_pow(p), line);
    }
    return n;
}
static node *parse_concat(parser *p) {
    node *n = parse_math2(p);
    while (is_op(p, OP_TILDE)) { int line = cur(p)->line; advance(p); n = binop(p, OP_TILDE, n, parse_math2(p), line); }
    return n;
}
static node *parse_math1(parser *p) {
    node *n = parse_concat(p);
    while (is_op(p, OP_ADD) || is_op(p, OP_SUB)) {
        int line = cur(p)->line, op = advance(p)->op;
        n = binop(p, op, n, parse_concat(p), line);
    }
    return n;
}
static node *parse_compare(parser *p) {
    int line = cur(p)->line;
    node *first = parse_math1(p);
    pvec ops = {0}, rhs = {0};
    for (;;) {
        const char *op = NULL;
        if (cur(p)->k == K_OP && (cur(p)->op == OP_EQ || cur(p)->op == OP_NE || cur(p)->op == OP_LT ||
                                  cur(p)->op == OP_LE || cur(p)->op == OP_GT || cur(p)->op == OP_GE)) {
            op = OPS[advance(p)->op];
        } else if (is_name(p, "in")) {
            advance(p); op = "in";
        } else if (is_name(p, "not") && peek(p, 1)->k == K_NAME && !strcmp(peek(p, 1)->p, "in")) {
            advance(p); advance(p); op = "notin";
        } else break;
        pv_push(p, &ops, (void *)op);
        pv_push(p, &rhs, parse_math1(p));
    }
    if (!ops.n) return first;
    node *n = nnew(p, N_COMPARE, line);
    n->a = first;
    n->names = (const char **)ops.v; n->nnames = ops.n;
    n->args = (node **)rhs.v; n->nargs = rhs.n;
    return n;
}
static node *parse_not(parser *p) {
    if (is_name(p, "not")) {
        int line = cur(p)->line;
        advance(p);
        enter(p);
        node *n = nnew(p, N_NOT, line);
        n->a = parse_not(p);
        p->depth--;
        return n;
    }
    return parse_compare(p);
}
static node *parse_and(parser *p) {
    node *n = parse_not(p);
    while (is_name(p, "and")) { int line = cur(p)->line; advance(p); node *m = nnew(p, N_AND, line); m->a = n; m->b = parse_not(p); n = m; }
    return n;
}
static node *parse_or(parser *p) {
    node *n = parse_and(p);
    while (is_name(p, "or")) { int line = cur(p)->line; advance(p); node *m = nnew(p, N_OR, line); m->a = n; m->b = parse_and(p); n = m; }
    return n;
}
static node *parse_expr(parser *p, bool with_condexpr) {
    enter(p);
    node *n = parse_or(p);
    if (with_condexpr) {
        while (is_name(p, "if")) {
            int line = cur(p)->line;
            advance(p);
            node *c = nnew(p, N_COND, line);
            c->a = parse_or(p);   // condition
            c->b = n;             // value if true
            if (is_name(p, "else")) { advance(p); c->c = parse_expr(p, true); }
            n = c;
        }
    }
    p->depth--;
    return n;
}

static bool tuple_end(parser *p, const char *extra_end) {
    tok *t = cur(p);
    if (t->k == K_VEND || t->k == K_BEND || t->k == K_EOF) return true;
    if (t->k == K_OP && (t->op == OP_RPAREN)) return true;
    if (extra_end && t->k == K_NAME && !strcmp(t->p, extra_end)) return true;
    return false;
}

static node *parse_tuple(parser *p, bool with_condexpr, bool explicit_parens, const char *extra_end) {
    int line = cur(p)->line;
    pvec items = {0};
    bool comma = false;
    for (;;) {
        if (items.n) {
            if (!is_op(p, OP_COMMA)) break;
            advance(p);
            comma = true;
        }
        if (tuple_end(p, extra_end)) break;
        pv_push(p, &items, parse_expr(p, with_condexpr));
    }
    if (!comma && items.n == 1) return items.v[0];
    if (!items.n && !explicit_parens) pfail(p, line, "expected an expression, got '%s'", tok_desc(cur(p)));
    node *n = nnew(p, N_TUPLE, line);
    n->args = (node **)items.v; n->nargs = items.n;
    return n;
}

// A body of statements until a block tag whose name is in `ends`; returns the
// index of that end name (the name token is current).
static node *parse_body(parser *p, const char *const *ends, int *which);

static const char *const UNSUPPORTED_TAGS[] = {
    "raw", "call", "filter", "include", "import", "from", "extends", "block", "with", "autoescape",
    "do", "trans", "print", "pluralize", NULL,
};

static node *parse_stmt(parser *p) {
    tok *t = cur(p);
    int line = t->line;
    if (t->k != K_NAME) pfail(p, line, "tag name expected");
    const char *tag = t->p;
    advance(p);
    if (!strcmp(tag, "if")) {
        node *n = nnew(p, S_IF, line), *top = n;
        for (;;) {
            n->a = parse_tuple(p, false, false, NULL);
            expect_bend(p);
            static const char *const ends[] = {"elif", "else", "endif", NULL};
            int which;
            n->b = parse_body(p, ends, &which);
            int eline = cur(p)->line;
            advance(p);
            if (which == 0) {
                node *e = nnew(p, S_IF, eline);
                n->c = e; n = e;
                continue;
            }
            if (which == 1) {
                expect_bend(p);
                static const char *const ends2[] = {"endif", NULL};
                n->c = parse_body(p, ends2, &which);
                advance(p);
            }
            expect_bend(p);
            break;
        }
        return top;
    }
    if (!strcmp(tag, "for")) {
        node *n = nnew(p, S_FOR, line);
        pvec names = {0};
        do {
            if (names.n) advance(p);
            if (is_op(p, OP_LPAREN)) pfail(p, line, "unsupported construct 'nested for target'");
            pv_push(p, &names, (void *)expect_name(p));
        } while (is_op(p, OP_COMMA));
        n->names = (const char **)names.v; n->nnames = names.n;
        if (!is_name(p, "in")) pfail(p, cur(p)->line, "expected 'in', got '%s'", tok_desc(cur(p)));
        advance(p);
        n->a = parse_tuple(p, false, false, "recursive");
        if (is_name(p, "if")) { advance(p); n->c = parse_expr(p, true); }
        if (is_name(p, "recursive")) pfail(p, line, "unsupported construct 'recursive for loop'");
        expect_bend(p);
        p->loop_depth++;
        static const char *const ends[] = {"endfor", "else", NULL};
        int which;
        n->b = parse_body(p, ends, &which);
        p->loop_depth--;
        advance(p);
        if (which == 1) {
            expect_bend(p);
            static const char *const ends2[] = {"endfor", NULL};
            node *e = parse_body(p, ends2, &which);
            n->kw = e->args; n->nkw = e->nargs;
            advance(p);
        }
        expect_bend(p);
        return n;
    }
    if (!strcmp(tag, "set")) {
        const char *name = expect_name(p);
        if (is_op(p, OP_DOT)) {
            advance(p);
            node *n = nnew(p, S_SET_ATTR, line);
            n->s = name;
            n->names = arena_alloc(p->a, sizeof(char *));
            n->names[0] = expect_name(p); n->nnames = 1;
            expect_op(p, OP_ASSIGN);
            n->a = parse_tuple(p, true, false, NULL);
            expect_bend(p);
            return n;
        }
        pvec names = {0};
        pv_push(p, &names, (void *)name);
        while (is_op(p, OP_COMMA)) { advance(p); pv_push(p, &names, (void *)expect_name(p)); }
        if (is_op(p, OP_ASSIGN)) {
            advance(p);
            node *n = nnew(p, S_SET, line);
            n->names = (const char **)names.v; n->nnames = names.n;
            n->a = parse_tuple(p, true, false, NULL);
            expect_bend(p);
            return n;
        }
        if (names.n != 1) pfail(p, line, "expected '='");
        if (is_op(p, OP_PIPE)) pfail(p, line, "unsupported construct 'filtered block set'");
        expect_bend(p);
        node *n = nnew(p, S_SET_BLOCK, line);
        n->s = name;
        static const char *const ends[] = {"endset", NULL};
        int which;
        n->a = parse_body(p, ends, &which);
        advance(p);
        expect_bend(p);
        return n;
    }
    if (!strcmp(tag, "macro")) {
        if (p->macro_depth) pfail(p, line, "unsupported construct 'nested macro'");
        node *n = nnew(p, S_MACRO, line);
        n->s = expect_name(p);
        expect_op(p, OP_LPAREN);
        pvec names = {0}, defs = {0};
        while (!is_op(p, OP_RPAREN)) {
            if (names.n) expect_op(p, OP_COMMA);
            if (is_op(p, OP_RPAREN)) break;
            pv_push(p, &names, (void *)expect_name(p));
            if (is_op(p, OP_ASSIGN)) { advance(p); pv_push(p, &defs, parse_expr(p, true)); }
            else {
                if (defs.n) pfail(p, line, "non-default argument follows default argument");
                pv_push(p, &defs, NULL);
            }
        }
        advance(p);
        expect_bend(p);
        n->names = (const char **)names.v; n->nnames = names.n;
        n->kw = (node **)defs.v; n->nkw = defs.n;
        int saved_loop = p->loop_depth;
        p->loop_depth = 0; p->macro_depth++;
        static const char *const ends[] = {"endmacro", NULL};
        int which;
        n->a = parse_body(p, ends, &which);
        p->loop_depth = saved_loop; p->macro_depth--;
        advance(p);
        if (cur(p)->k == K_NAME) advance(p); // {% endmacro name %}
        expect_bend(p);
        return n;
    }
    if (!strcmp(tag, "break") || !strcmp(tag, "continue")) {
        if (!p->loop_depth) pfail(p, line, "'%s' outside of a loop", tag);
        expect_bend(p);
        return nnew(p, tag[0] == 'b' ? S_BREAK : S_CONTINUE, line);
    }
    if (!strcmp(tag, "generation")) { // transformers' AssistantTracker: renders its body
        expect_bend(p);
        static const char *const ends[] = {"endgeneration", NULL};
        int which;
        node *n = parse_body(p, ends, &which);
        advance(p);
        expect_bend(p);
        return n;
    }
    if (in_list(UNSUPPORTED_TAGS, tag)) pfail(p, line, "unsupported construct '%s'", tag);
    pfail(p, line, "Encountered unknown tag '%s'", tag);
}

static node *parse_body(parser *p, const char *const *ends, int *which) {
    enter(p);
    node *body = nnew(p, S_BLOCK, cur(p)->line);
    pvec stmts = {0};
    for (;;) {
        tok *t = cur(p);
        if (t->k == K_EOF) {
            if (ends) pfail(p, t->line, "unexpected end of template, expected '%s'", ends[0]);
            break;
        }
        if (t->k == K_TEXT) {
            advance(p);
            node *n = nnew(p, S_TEXT, t->line);
            n->s = t->p; n->sn = t->n;
            pv_push(p, &stmts, n);
        } else if (t->k == K_VBEGIN) {
            advance(p);
            node *n = nnew(p, S_OUTPUT, t->line);
            n->a = parse_tuple(p, true, false, NULL);
            if (cur(p)->k != K_VEND) pfail(p, cur(p)->line, "expected end of print statement, got '%s'", tok_desc(cur(p)));
            advance(p);
            pv_push(p, &stmts, n);
        } else if (t->k == K_BBEGIN) {
            advance(p);
            if (cur(p)->k == K_NAME && ends) {
                int i;
                for (i = 0; ends[i]; i++) if (!strcmp(cur(p)->p, ends[i])) break;
                if (ends[i]) { *which = i; break; }
            }
            if (cur(p)->k == K_NAME && (!strncmp(cur(p)->p, "end", 3) || !strcmp(cur(p)->p, "elif") || !strcmp(cur(p)->p, "else")))
                pfail(p, cur(p)->line, "Encountered unknown tag '%s'%s", cur(p)->p,
                      ends ? "" : " (no block is open)");
            pv_push(p, &stmts, parse_stmt(p));
        } else pfail(p, t->line, "unexpected '%s'", tok_desc(t));
    }
    body->args = (node **)stmts.v; body->nargs = stmts.n;
    p->depth--;
    return body;
}

// ---------------------------------------------------------------- render context

typedef struct scope {
    struct scope *parent;
    size_t n, cap;
    const char **names;
    tv *vals;
} scope;

typedef enum fid {
    F_RANGE, F_NAMESPACE, F_DICT, F_RAISE, F_STRFTIME,
    M_STARTSWITH, M_ENDSWITH, M_SPLIT, M_RSPLIT, M_STRIP, M_LSTRIP, M_RSTRIP, M_REPLACE, M_UPPER,
    M_LOWER, M_TITLE, M_CAPITALIZE, M_FIND, M_COUNT, M_JOIN, M_ISDIGIT, M_ISALPHA, M_ISSPACE,
    M_GET, M_ITEMS, M_KEYS, M_VALUES, M_CYCLE,
} fid;

static const struct { const char *name; fid id; } STR_METHODS[] = {
    {"startswith", M_STARTSWITH}, {"endswith", M_ENDSWITH}, {"split", M_SPLIT}, {"rsplit", M_RSPLIT},
    {"strip", M_STRIP}, {"lstrip", M_LSTRIP}, {"rstrip", M_RSTRIP}, {"replace", M_REPLACE},
    {"upper", M_UPPER}, {"lower", M_LOWER}, {"title", M_TITLE}, {"capitalize", M_CAPITALIZE},
    {"find", M_FIND}, {"count", M_COUNT}, {"join", M_JOIN}, {"isdigit", M_ISDIGIT},
    {"isalpha", M_ISALPHA}, {"isspace", M_ISSPACE},
};

typedef struct tfunc { fid id; tv self; } tfunc;
typedef struct tmacro { const node *def; scope *closure; } tmacro;
typedef struct tloop { int64_t index0, length; const tlist *items; } tloop;

typedef struct rctx {
    arena a;
    vm_err *e;
    jmp_buf fail;
    sbuf *out;
    int depth;
    long long steps;
    scope *root;
} rctx;

static void rfail(rctx *c, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4), noreturn));
static void rfail(rctx *c, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fail_msg(c->e, "error", line, fmt, ap);
    va_end(ap);
    longjmp(c->fail, 1);
}

static void undef_fail(rctx *c, int line, tv u) __attribute__((noreturn));
static void undef_fail(rctx *c, int line, tv u) {
    if (u.u.s.p) rfail(c, line, "%.*s", (int)u.u.s.n, u.u.s.p);
    rfail(c, line, "value is undefined");
}

static const char *fmt_hint(rctx *c, const char *fmt, const char *a, size_t an) {
    sbuf b; sb_init(&b, &c->a);
    sb_printf(&b, fmt, (int)(an > 200 ? 200 : an), a);
    sb_putc(&b, 0);
    return b.p;
}

static scope *scope_new(rctx *c, scope *parent) {
    scope *s = arena_alloc(&c->a, sizeof *s);
    memset(s, 0, sizeof *s);
    s->parent = parent;
    return s;
}

static void scope_set(rctx *c, scope *s, const char *name, tv v) {
    for (size_t i = 0; i < s->n; i++) if (!strcmp(s->names[i], name)) { s->vals[i] = v; return; }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        const char **nn = arena_alloc(&c->a, cap * sizeof *nn);
        tv *nv = arena_alloc(&c->a, cap * sizeof *nv);
        if (s->n) { memcpy(nn, s->names, s->n * sizeof *nn); memcpy(nv, s->vals, s->n * sizeof *nv); }
        s->names = nn; s->vals = nv; s->cap = cap;
    }
    s->names[s->n] = name; s->vals[s->n] = v; s->n++;
}

static bool scope_get(const scope *s, const char *name, tv *out) {
    for (; s; s = s->parent)
        for (size_t i = s->n; i-- > 0;) if (!strcmp(s->names[i], name)) { *out = s->vals[i]; return true; }
    return false;
}

static tv mk_func(rctx *c, fid id, tv self) {
    tfunc *f = arena_alloc(&c->a, sizeof *f);
    f->id = id; f->self = self;
    tv v = { .t = T_FUNC };
    v.u.fn = f;
    return v;
}

static tv str_tv(rctx *c, sbuf *b) { (void)c; return mk_str(b->p ? b->p : "", b->n); }

static tv to_strv(rctx *c, tv v) {
    if (v.t == T_STR) return v;
    sbuf b; sb_init(&b, &c->a);
    to_str(&b, v, false);
    return str_tv(c, &b);
}

// ---------------------------------------------------------------- JSON (Python json.dumps)

typedef struct jopts {
    bool ensure_ascii, sort_keys, indent_on;
    const char *indent; size_t indent_n;
    const char *item_sep, *key_sep;
} jopts;

static void json_str(sbuf *b, const char *s, size_t n, bool ascii) {
    sb_putc(b, '"');
    for (size_t i = 0; i < n;) {
        size_t st = i;
        int32_t cp = utf8_next(s, n, &i);
        switch (cp) {
        case '"': sb_puts(b, "\\\""); break;
        case '\\': sb_puts(b, "\\\\"); break;
        case '\n': sb_puts(b, "\\n"); break;
        case '\r': sb_puts(b, "\\r"); break;
        case '\t': sb_puts(b, "\\t"); break;
        case '\b': sb_puts(b, "\\b"); break;
        case '\f': sb_puts(b, "\\f"); break;
        default:
            if (cp < 0x20) sb_printf(b, "\\u%04x", (unsigned)cp);
            else if (ascii && cp > 0x7e) {
                if (cp >= 0x10000) {
                    int32_t v = cp - 0x10000;
                    sb_printf(b, "\\u%04x\\u%04x", (unsigned)(0xD800 + (v >> 10)), (unsigned)(0xDC00 + (v & 0x3ff)));
                } else sb_printf(b, "\\u%04x", (unsigned)cp);
            } else sb_add(b, s + st, i - st);
        }
    }
    sb_putc(b, '"');
}

static int cmp_values(rctx *c, int line, tv a, tv b);

static void json_dump(rctx *c, int line, sbuf *b, tv v, const jopts *o, int level) {
    if (++c->depth > CT_MAX_EVAL_DEPTH) rfail(c, line, "tojson: value nested too deeply");
    switch (v.t) {
    case T_NONE: sb_puts(b, "null"); break;
    case T_BOOL: sb_puts(b, v.u.i ? "true" : "false"); break;
    case T_INT: sb_printf(b, "%" PRId64, v.u.i); break;
    case T_FLOAT:
        if (isnan(v.u.f)) sb_puts(b, "NaN");
        else if (isinf(v.u.f)) sb_puts(b, v.u.f > 0 ? "Infinity" : "-Infinity");
        else fmt_float(b, v.u.f);
        break;
    case T_STR: json_str(b, v.u.s.p, v.u.s.n, o->ensure_ascii); break;
    case T_LIST: case T_TUPLE: {
        const tlist *l = v.u.l;
        if (!l->n) { sb_puts(b, "[]"); break; }
        sb_putc(b, '[');
        for (size_t i = 0; i < l->n; i++) {
            if (i) sb_puts(b, o->item_sep);
            if (o->indent_on) { sb_putc(b, '\n'); for (int k = 0; k <= level; k++) sb_add(b, o->indent, o->indent_n); }
            json_dump(c, line, b, l->v[i], o, level + 1);
        }
        if (o->indent_on) { sb_putc(b, '\n'); for (int k = 0; k < level; k++) sb_add(b, o->indent, o->indent_n); }
        sb_putc(b, ']');
        break;
    }
    case T_DICT: {
        const tdict *d = v.u.d;
        if (!d->n) { sb_puts(b, "{}"); break; }
        size_t *ord = arena_alloc(&c->a, d->n * sizeof *ord);
        for (size_t i = 0; i < d->n; i++) ord[i] = i;
        if (o->sort_keys) // insertion sort keeps it simple and stable
            for (size_t i = 1; i < d->n; i++)
                for (size_t j = i; j > 0 && cmp_values(c, line, d->k[ord[j - 1]], d->k[ord[j]]) > 0; j--) {
                    size_t t = ord[j]; ord[j] = ord[j - 1]; ord[j - 1] = t;
                }
        sb_putc(b, '{');
        for (size_t ii = 0; ii < d->n; ii++) {
            size_t i = ord[ii];
            if (ii) sb_puts(b, o->item_sep);
            if (o->indent_on) { sb_putc(b, '\n'); for (int k = 0; k <= level; k++) sb_add(b, o->indent, o->indent_n); }
            tv k = d->k[i];
            if (k.t == T_STR) json_str(b, k.u.s.p, k.u.s.n, o->ensure_ascii);
            else if (k.t == T_INT || k.t == T_FLOAT || k.t == T_BOOL || k.t == T_NONE) {
                sb_putc(b, '"');
                if (k.t == T_BOOL) sb_puts(b, k.u.i ? "true" : "false");
                else if (k.t == T_NONE) sb_puts(b, "null");
                else json_dump(c, line, b, k, o, level + 1);
                sb_putc(b, '"');
            } else rfail(c, line, "keys must be str, int, float, bool or None, not %s", type_name(k));
            sb_puts(b, o->key_sep);
            json_dump(c, line, b, d->v[i], o, level + 1);
        }
        if (o->indent_on) { sb_putc(b, '\n'); for (int k = 0; k < level; k++) sb_add(b, o->indent, o->indent_n); }
        sb_putc(b, '}');
        break;
    }
    default:
        rfail(c, line, "Object of type %s is not JSON serializable", type_name(v));
    }
    c->depth--;
}

// JSON (jansson) -> value. Object key order is kept (jansson keeps insertion order).
static tv from_json(rctx *c, const json_t *j, int depth) {
    if (depth > CT_MAX_EVAL_DEPTH) rfail(c, 0, "context JSON nested too deeply");
    switch (json_typeof(j)) {
    case JSON_NULL: return V_NONE;
    case JSON_TRUE: return mk_bool(true);
    case JSON_FALSE: return mk_bool(false);
    case JSON_INTEGER: return mk_int((int64_t)json_integer_value(j));
    case JSON_REAL: return mk_float(json_real_value(j));
    case JSON_STRING: return mk_str(arena_strndup(&c->a, json_string_value(j), json_string_length(j)), json_string_length(j));
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        tlist *l = list_new(&c->a, n);
        for (size_t i = 0; i < n; i++) l->v[i] = from_json(c, json_array_get(j, i), depth + 1);
        return mk_list(l, T_LIST);
    }
    case JSON_OBJECT: {
        tdict *d = dict_new(&c->a, json_object_size(j));
        const char *k; json_t *v;
        json_object_foreach((json_t *)j, k, v) {
            size_t kn = strlen(k);
            d->k[d->n] = mk_str(arena_strndup(&c->a, k, kn), kn);
            d->v[d->n] = from_json(c, v, depth + 1);
            d->n++;
        }
        return mk_dict(d, T_DICT);
    }
    }
    return V_NONE;
}

// ---------------------------------------------------------------- operators

static int cmp_values(rctx *c, int line, tv a, tv b) {
    if (is_num(a) && is_num(b)) {
        if (a.t != T_FLOAT && b.t != T_FLOAT) return a.u.i < b.u.i ? -1 : a.u.i > b.u.i;
        double x = num_f(a), y = num_f(b);
        return x < y ? -1 : x > y;
    }
    if (a.t == T_STR && b.t == T_STR) {
        size_t n = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
        int r = memcmp(a.u.s.p, b.u.s.p, n); // UTF-8 byte order == code point order
        if (r) return r < 0 ? -1 : 1;
        return a.u.s.n < b.u.s.n ? -1 : a.u.s.n > b.u.s.n;
    }
    if (is_seq(a) && a.t == b.t) {
        size_t n = a.u.l->n < b.u.l->n ? a.u.l->n : b.u.l->n;
        for (size_t i = 0; i < n; i++) {
            if (v_eq(a.u.l->v[i], b.u.l->v[i])) continue;
            return cmp_values(c, line, a.u.l->v[i], b.u.l->v[i]);
        }
        return a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
    }
    if (a.t == T_UNDEF) undef_fail(c, line, a);
    if (b.t == T_UNDEF) undef_fail(c, line, b);
    rfail(c, line, "'<' not supported between instances of '%s' and '%s'", type_name(a), type_name(b));
}

static int64_t py_floordiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}
static int64_t py_mod(int64_t a, int64_t b) {
    int64_t m = a % b;
    if (m != 0 && ((m < 0) != (b < 0))) m += b;
    return m;
}

static tv repeat_seq(rctx *c, int line, tv s, int64_t k) {
    if (k < 0) k = 0;
    if (s.t == T_STR) {
        if (s.u.s.n && (uint64_t)k > CT_MAX_OUTPUT / s.u.s.n) rfail(c, line, "string repetition too large");
        sbuf b; sb_init(&b, &c->a);
        for (int64_t i = 0; i < k; i++) sb_add(&b, s.u.s.p, s.u.s.n);
        return str_tv(c, &b);
    }
    size_t n = s.u.l->n;
    if (n && (uint64_t)k > (CT_MAX_OUTPUT / 16) / n) rfail(c, line, "list repetition too large");
    tlist *l = list_new(&c->a, n * (size_t)k);
    for (int64_t i = 0; i < k; i++) if (n) memcpy(l->v + (size_t)i * n, s.u.l->v, n * sizeof(tv));
    return mk_list(l, s.t);
}

static tv binop_eval(rctx *c, int line, int op, tv a, tv b) {
    if (a.t == T_UNDEF) undef_fail(c, line, a);
    if (b.t == T_UNDEF) undef_fail(c, line, b);
    if (is_num(a) && is_num(b)) {
        bool fl = a.t == T_FLOAT || b.t == T_FLOAT;
        int64_t x = a.u.i, y = b.u.i, r;
        double fx = num_f(a), fy = num_f(b);
        switch (op) {
        case OP_ADD:
            if (fl) return mk_float(fx + fy);
            if (__builtin_add_overflow(x, y, &r)) rfail(c, line, "integer overflow");
            return mk_int(r);
        case OP_SUB:
            if (fl) return mk_float(fx - fy);
            if (__builtin_sub_overflow(x, y, &r)) rfail(c, line, "integer overflow");
            return mk_int(r);
        case OP_MUL:
            if (fl) return mk_float(fx * fy);
            if (__builtin_mul_overflow(x, y, &r)) rfail(c, line, "integer overflow");
            return mk_int(r);
        case OP_DIV:
            if (fy == 0) rfail(c, line, fl ? "float division by zero" : "division by zero");
            return mk_float(fx / fy);
        case OP_FLOORDIV:
            if (fl) { if (fy == 0) rfail(c, line, "float floor division by zero"); return mk_float(floor(fx / fy)); }
            if (y == 0) rfail(c, line, "integer division or modulo by zero");
            if (x == INT64_MIN && y == -1) rfail(c, line, "integer overflow");
            return mk_int(py_floordiv(x, y));
        case OP_MOD:
            if (fl) {
                if (fy == 0) rfail(c, line, "float modulo");
                double m = fmod(fx, fy);
                if (m != 0 && ((m < 0) != (fy < 0))) m += fy;
                return mk_float(m);
            }
            if (y == 0) rfail(c, line, "integer division or modulo by zero");
            if (y == -1) return mk_int(0);
            return mk_int(py_mod(x, y));
        case OP_POW:
            if (fl || y < 0) return mk_float(pow(fx, fy));
            r = 1;
            for (int64_t i = 0; i < y; i++) {
                if (__builtin_mul_overflow(r, x, &r)) rfail(c, line, "integer overflow");
                if (r == 0 || r == 1) break;
            }
            return mk_int(r);
        }
    }
    if (op == OP_ADD) {
        if (a.t == T_STR && b.t == T_STR) {
            if (a.u.s.n + b.u.s.n > CT_MAX_OUTPUT) rfail(c, line, "string too large");
            char *p = arena_alloc(&c->a, a.u.s.n + b.u.s.n + 1);
            memcpy(p, a.u.s.p, a.u.s.n); memcpy(p + a.u.s.n, b.u.s.p, b.u.s.n);
            return mk_str(p, a.u.s.n + b.u.s.n);
        }
        if (is_seq(a) && a.t == b.t) {
            tlist *l = list_new(&c->a, a.u.l->n + b.u.l->n);
            if (a.u.l->n) memcpy(l->v, a.u.l->v, a.u.l->n * sizeof(tv));
            if (b.u.l->n) memcpy(l->v + a.u.l->n, b.u.l->v, b.u.l->n * sizeof(tv));
            return mk_list(l, a.t);
        }
    }
    if (op == OP_MUL) {
        if ((a.t == T_STR || is_seq(a)) && (b.t == T_INT || b.t == T_BOOL)) return repeat_seq(c, line, a, b.u.i);
        if ((b.t == T_STR || is_seq(b)) && (a.t == T_INT || a.t == T_BOOL)) return repeat_seq(c, line, b, a.u.i);
    }
    static const char *const names[] = { [OP_ADD] = "+", [OP_SUB] = "-", [OP_MUL] = "*", [OP_DIV] = "/",
                                         [OP_FLOORDIV] = "//", [OP_MOD] = "%", [OP_POW] = "**" };
    if (op == OP_MOD && a.t == T_STR) rfail(c, line, "unsupported: printf-style string formatting");
    rfail(c, line, "unsupported operand type(s) for %s: '%s' and '%s'", names[op] ? names[op] : "?",
          type_name(a), type_name(b));
}

static bool contains(rctx *c, int line, tv hay, tv needle) {
    switch (hay.t) {
    case T_UNDEF: return false;
    case T_STR:
        if (needle.t != T_STR) rfail(c, line, "'in <string>' requires string as left operand, not %s", type_name(needle));
        if (!needle.u.s.n) return true;
        if (needle.u.s.n > hay.u.s.n) return false;
        return memmem(hay.u.s.p, hay.u.s.n, needle.u.s.p, needle.u.s.n) != NULL;
    case T_LIST: case T_TUPLE:
        for (size_t i = 0; i < hay.u.l->n; i++) if (v_eq(hay.u.l->v[i], needle)) return true;
        return false;
    case T_DICT: return dict_find(hay.u.d, needle) >= 0;
    default:
        rfail(c, line, "argument of type '%s' is not iterable", type_name(hay));
    }
}

// ---------------------------------------------------------------- attribute / item access

static tv loop_attr(rctx *c, int line, tloop *lp, const char *name) {
    (void)line;
    if (!strcmp(name, "index")) return mk_int(lp->index0 + 1);
    if (!strcmp(name, "index0")) return mk_int(lp->index0);
    if (!strcmp(name, "revindex")) return mk_int(lp->length - lp->index0);
    if (!strcmp(name, "revindex0")) return mk_int(lp->length - lp->index0 - 1);
    if (!strcmp(name, "first")) return mk_bool(lp->index0 == 0);
    if (!strcmp(name, "last")) return mk_bool(lp->index0 == lp->length - 1);
    if (!strcmp(name, "length")) return mk_int(lp->length);
    if (!strcmp(name, "depth")) return mk_int(1);
    if (!strcmp(name, "depth0")) return mk_int(0);
    if (!strcmp(name, "previtem"))
        return lp->index0 > 0 ? lp->items->v[lp->index0 - 1] : mk_undef("there is no previous item");
    if (!strcmp(name, "nextitem"))
        return lp->index0 + 1 < lp->length ? lp->items->v[lp->index0 + 1] : mk_undef("there is no next item");
    if (!strcmp(name, "cycle")) { tv self = { .t = T_LOOP }; self.u.lp = lp; return mk_func(c, M_CYCLE, self); }
    return mk_undef(fmt_hint(c, "'LoopContext object' has no attribute '%.*s'", name, strlen(name)));
}

static tv get_attr(rctx *c, int line, tv obj, const char *name) {
    size_t nn = strlen(name);
    switch (obj.t) {
    case T_UNDEF: undef_fail(c, line, obj);
    case T_DICT: {
        if (!strcmp(name, "get")) return mk_func(c, M_GET, obj);
        if (!strcmp(name, "items")) return mk_func(c, M_ITEMS, obj);
        if (!strcmp(name, "keys")) return mk_func(c, M_KEYS, obj);
        if (!strcmp(name, "values")) return mk_func(c, M_VALUES, obj);
        long i = dict_find_s(obj.u.d, name, nn);
        if (i >= 0) return obj.u.d->v[i];
        return mk_undef(fmt_hint(c, "'dict object' has no attribute '%.*s'", name, nn));
    }
    case T_NS: {
        long i = dict_find_s(obj.u.d, name, nn);
        if (i >= 0) return obj.u.d->v[i];
        return mk_undef(fmt_hint(c, "'Namespace object' has no attribute '%.*s'", name, nn));
    }
    case T_STR:
        for (size_t i = 0; i < VM_ARRAY_LEN(STR_METHODS); i++)
            if (!strcmp(name, STR_METHODS[i].name)) return mk_func(c, STR_METHODS[i].id, obj);
        return mk_undef(fmt_hint(c, "'str object' has no attribute '%.*s'", name, nn));
    case T_LOOP: return loop_attr(c, line, obj.u.lp, name);
    default: {
        sbuf b; sb_init(&b, &c->a);
        sb_printf(&b, "'%s object' has no attribute '%.*s'", type_name(obj), (int)(nn > 200 ? 200 : nn), name);
        sb_putc(&b, 0);
        return mk_undef(b.p);
    }
    }
}

// Code point index -> byte offset table for a string.
static size_t *cp_offsets(rctx *c, tv s, size_t *ncp) {
    size_t n = utf8_len(s.u.s.p, s.u.s.n);
    size_t *off = arena_alloc(&c->a, (n + 1) * sizeof *off);
    size_t k = 0;
    for (size_t i = 0; i < s.u.s.n; i++) if (((unsigned char)s.u.s.p[i] & 0xC0) != 0x80) off[k++] = i;
    off[n] = s.u.s.n;
    *ncp = n;
    return off;
}

static tv get_item(rctx *c, int line, tv obj, tv key) {
    switch (obj.t) {
    case T_UNDEF: undef_fail(c, line, obj);
    case T_DICT: {
        long i = dict_find(obj.u.d, key);
        if (i >= 0) return obj.u.d->v[i];
        if (key.t == T_STR) {
            tv r = get_attr(c, line, obj, arena_strndup(&c->a, key.u.s.p, key.u.s.n));
            if (r.t != T_UNDEF) return r;
        }
        if (key.t == T_STR)
            return mk_undef(fmt_hint(c, "'dict object' has no attribute '%.*s'", key.u.s.p, key.u.s.n));
        return mk_undef("'dict object' has no such element");
    }
    case T_LIST: case T_TUPLE: case T_STR: {
        if (key.t == T_INT || key.t == T_BOOL) {
            int64_t i = key.u.i;
            if (obj.t == T_STR) {
                size_t n;
                size_t *off = cp_offsets(c, obj, &n);
                if (i < 0) i += (int64_t)n;
                if (i < 0 || i >= (int64_t)n) return mk_undef("string index out of range");
                return mk_str(obj.u.s.p + off[i], off[i + 1] - off[i]);
            }
            int64_t n = (int64_t)obj.u.l->n;
            if (i < 0) i += n;
            if (i < 0 || i >= n) return mk_undef(obj.t == T_LIST ? "list object has no element" : "tuple object has no element");
            return obj.u.l->v[i];
        }
        if (key.t == T_STR) return get_attr(c, line, obj, arena_strndup(&c->a, key.u.s.p, key.u.s.n));
        return mk_undef("no such element");
    }
    case T_NS: case T_LOOP:
        if (key.t == T_STR) return get_attr(c, line, obj, arena_strndup(&c->a, key.u.s.p, key.u.s.n));
        return mk_undef("no such element");
    default:
        return mk_undef(fmt_hint(c, "'%.*s object' has no such element", type_name(obj), strlen(type_name(obj))));
    }
}

static int64_t slice_index(rctx *c, int line, tv v, bool *given) {
    *given = false;
    if (v.t == T_NONE || v.t == T_UNDEF) return 0;
    if (v.t != T_INT && v.t != T_BOOL) rfail(c, line, "slice indices must be integers or None");
    *given = true;
    return v.u.i;
}

static tv do_slice(rctx *c, int line, tv obj, tv start, tv stop, tv step) {
    bool has_start, has_stop, has_step;
    int64_t a = slice_index(c, line, start, &has_start), b = slice_index(c, line, stop, &has_stop);
    int64_t st = slice_index(c, line, step, &has_step);
    if (!has_step) st = 1;
    if (st == 0) rfail(c, line, "slice step cannot be zero");
    if (obj.t == T_UNDEF) undef_fail(c, line, obj);
    size_t *off = NULL, ncp;
    int64_t len;
    if (obj.t == T_STR) { off = cp_offsets(c, obj, &ncp); len = (int64_t)ncp; }
    else if (is_seq(obj)) len = (int64_t)obj.u.l->n;
    else rfail(c, line, "'%s' object is not subscriptable", type_name(obj));
    // Python's PySlice_AdjustIndices
    if (!has_start) a = st > 0 ? 0 : len - 1;
    else if (a < 0) { a += len; if (a < 0) a = st > 0 ? 0 : -1; }
    else if (a >= len) a = st > 0 ? len : len - 1;
    if (!has_stop) b = st > 0 ? len : -1;
    else if (b < 0) { b += len; if (b < 0) b = st > 0 ? 0 : -1; }
    else if (b >= len) b = st > 0 ? len : len - 1;
    int64_t count = 0;
    if (st > 0 && a < b) count = (b - a - 1) / st + 1;
    if (st < 0 && a > b) count = (a - b - 1) / (-st) + 1;
    if (obj.t == T_STR) {
        if (st == 1) return mk_str(obj.u.s.p + off[a], count ? off[a + count] - off[a] : 0);
        sbuf sb; sb_init(&sb, &c->a);
        for (int64_t i = 0, k = a; i < count; i++, k += st) sb_add(&sb, obj.u.s.p + off[k], off[k + 1] - off[k]);
        return str_tv(c, &sb);
    }
    tlist *l = list_new(&c->a, (size_t)count);
    for (int64_t i = 0, k = a; i < count; i++, k += st) l->v[i] = obj.u.l->v[k];
    return mk_list(l, obj.t);
}

// Iteration: lists/tuples as they are, dicts by key, strings by code point,
// undefined as empty. Anything else is an error.
static const tlist *iter_items(rctx *c, int line, tv v) {
    static const tlist empty = {0, NULL};
    switch (v.t) {
    case T_UNDEF: return &empty;
    case T_LIST: case T_TUPLE: return v.u.l;
    case T_DICT: {
        tlist *l = list_new(&c->a, v.u.d->n);
        for (size_t i = 0; i < v.u.d->n; i++) l->v[i] = v.u.d->k[i];
        return l;
    }
    case T_STR: {
        size_t n, *off = cp_offsets(c, v, &n);
        tlist *l = list_new(&c->a, n);
        for (size_t i = 0; i < n; i++) l->v[i] = mk_str(v.u.s.p + off[i], off[i + 1] - off[i]);
        return l;
    }
    default: rfail(c, line, "'%s' object is not iterable", type_name(v));
    }
}

static int64_t length_of(rctx *c, int line, tv v) {
    switch (v.t) {
    case T_UNDEF: return 0;
    case T_STR: return (int64_t)utf8_len(v.u.s.p, v.u.s.n);
    case T_LIST: case T_TUPLE: return (int64_t)v.u.l->n;
    case T_DICT: return (int64_t)v.u.d->n;
    default: rfail(c, line, "object of type '%s' has no len()", type_name(v));
    }
}

// ---------------------------------------------------------------- arguments

typedef struct args {
    const tv *pos; size_t npos;
    const char **kwn; const tv *kw; size_t nkw;
    bool *used_kw;
} args;

// The i-th positional argument or the keyword `name`; false if absent.
static bool arg_get(const args *a, size_t i, const char *name, tv *out) {
    if (i < a->npos) { *out = a->pos[i]; return true; }
    for (size_t k = 0; k < a->nkw; k++)
        if (name && !strcmp(a->kwn[k], name)) { *out = a->kw[k]; return true; }
    return false;
}
static tv arg_or(const args *a, size_t i, const char *name, tv dflt) {
    tv v;
    return arg_get(a, i, name, &v) ? v : dflt;
}

static tv need_str(rctx *c, int line, tv v, const char *what) {
    if (v.t != T_STR) rfail(c, line, "%s must be a string, not %s", what, type_name(v));
    return v;
}

// ---------------------------------------------------------------- string helpers

typedef enum { CASE_UPPER, CASE_LOWER } casemode;

static tv str_case(rctx *c, tv s, casemode m) {
    sbuf b; sb_init(&b, &c->a);
    for (size_t i = 0; i < s.u.s.n;) {
        int32_t cp = utf8_next(s.u.s.p, s.u.s.n, &i);
        utf8_put(&b, m == CASE_UPPER ? utf8proc_toupper(cp) : utf8proc_tolower(cp));
    }
    return str_tv(c, &b);
}

static bool is_cased(int32_t cp) { return utf8proc_toupper(cp) != cp || utf8proc_tolower(cp) != cp; }

// Python's str.title().
static tv str_title_py(rctx *c, tv s) {
    sbuf b; sb_init(&b, &c->a);
    bool prev_cased = false;
    for (size_t i = 0; i < s.u.s.n;) {
        int32_t cp = utf8_next(s.u.s.p, s.u.s.n, &i);
        utf8_put(&b, prev_cased ? utf8proc_tolower(cp) : utf8proc_totitle(cp));
        prev_cased = is_cased(cp);
    }
    return str_tv(c, &b);
}

// jinja2's title filter: split on runs of [-\s({[<], first char upper, rest lower.
static tv str_title_jinja(rctx *c, tv s) {
    sbuf b; sb_init(&b, &c->a);
    bool start = true;
    for (size_t i = 0; i < s.u.s.n;) {
        int32_t cp = utf8_next(s.u.s.p, s.u.s.n, &i);
        bool sep = cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || py_isspace(cp);
        if (sep) { utf8_put(&b, cp); start = true; continue; }
        utf8_put(&b, start ? utf8proc_toupper(cp) : utf8proc_tolower(cp));
        start = false;
    }
    return str_tv(c, &b);
}

static tv str_capitalize(rctx *c, tv s) {
    sbuf b; sb_init(&b, &c->a);
    bool first = true;
    for (size_t i = 0; i < s.u.s.n;) {
        int32_t cp = utf8_next(s.u.s.p, s.u.s.n, &i);
        utf8_put(&b, first ? utf8proc_totitle(cp) : utf8proc_tolower(cp));
        first = false;
    }
    return str_tv(c, &b);
}

static bool in_chars(tv chars, int32_t cp) {
    for (size_t i = 0; i < chars.u.s.n;) if (utf8_next(chars.u.s.p, chars.u.s.n, &i) == cp) return true;
    return false;
}

// strip with chars (a string) or whitespace (chars.t != T_STR). which: 1 left, 2 right, 3 both.
static tv str_strip(tv s, tv chars, int which) {
    const char *p = s.u.s.p;
    size_t a = 0, b = s.u.s.n;
    bool ws = chars.t != T_STR;
    if (which & 1)
        while (a < b) {
            size_t j = a;
            int32_t cp = utf8_next(p, b, &j);
            if (ws ? !py_isspace(cp) : !in_chars(chars, cp)) break;
            a = j;
        }
    if (which & 2)
        while (b > a) {
            size_t st = b - 1;
            while (st > a && ((unsigned char)p[st] & 0xC0) == 0x80) st--;
            size_t j = st;
            int32_t cp = utf8_next(p, b, &j);
            if (ws ? !py_isspace(cp) : !in_chars(chars, cp)) break;
            b = st;
        }
    return mk_str(p + a, b - a);
}

static tv str_replace(rctx *c, int line, tv s, tv old, tv new_, int64_t count) {
    need_str(c, line, old, "replace() argument 1"); need_str(c, line, new_, "replace() argument 2");
    sbuf b; sb_init(&b, &c->a);
    if (old.u.s.n == 0) { // Python inserts `new` between every character
        size_t i = 0;
        int64_t done = 0;
        while (true) {
            if (count < 0 || done < count) { sb_add(&b, new_.u.s.p, new_.u.s.n); done++; }
            if (i >= s.u.s.n) break;
            size_t st = i;
            utf8_next(s.u.s.p, s.u.s.n, &i);
            sb_add(&b, s.u.s.p + st, i - st);
        }
        return str_tv(c, &b);
    }
    size_t i = 0;
    int64_t done = 0;
    while (i < s.u.s.n) {
        const char *f = (count < 0 || done < count) ? memmem(s.u.s.p + i, s.u.s.n - i, old.u.s.p, old.u.s.n) : NULL;
        if (!f) break;
        size_t at = (size_t)(f - s.u.s.p);
        sb_add(&b, s.u.s.p + i, at - i);
        sb_add(&b, new_.u.s.p, new_.u.s.n);
        i = at + old.u.s.n;
        done++;
    }
    sb_add(&b, s.u.s.p + i, s.u.s.n - i);
    return str_tv(c, &b);
}

static tv str_split(rctx *c, int line, tv s, tv sep, int64_t maxsplit, bool from_right) {
    pvec parts = {0};
    parser tmp = { .a = &c->a };
    if (sep.t == T_STR) {
        if (!sep.u.s.n) rfail(c, line, "empty separator");
        if (!from_right) {
            size_t i = 0;
            int64_t done = 0;
            for (;;) {
                const char *f = (maxsplit < 0 || done < maxsplit) ? memmem(s.u.s.p + i, s.u.s.n - i, sep.u.s.p, sep.u.s.n) : NULL;
                if (!f) break;
                size_t at = (size_t)(f - s.u.s.p);
                tv *v = arena_alloc(&c->a, sizeof *v); *v = mk_str(s.u.s.p + i, at - i);
                pv_push(&tmp, &parts, v);
                i = at + sep.u.s.n;
                done++;
            }
            tv *v = arena_alloc(&c->a, sizeof *v); *v = mk_str(s.u.s.p + i, s.u.s.n - i);
            pv_push(&tmp, &parts, v);
        } else {
            size_t end = s.u.s.n;
            int64_t done = 0;
            for (;;) {
                if (maxsplit >= 0 && done >= maxsplit) break;
                const char *f = NULL;
                for (size_t k = end; k >= sep.u.s.n; k--)
                    if (!memcmp(s.u.s.p + k - sep.u.s.n, sep.u.s.p, sep.u.s.n)) { f = s.u.s.p + k - sep.u.s.n; break; }
                if (!f) break;
                size_t at = (size_t)(f - s.u.s.p);
                tv *v = arena_alloc(&c->a, sizeof *v); *v = mk_str(s.u.s.p + at + sep.u.s.n, end - at - sep.u.s.n);
                pv_push(&tmp, &parts, v);
                end = at;
                done++;
            }
            tv *v = arena_alloc(&c->a, sizeof *v); *v = mk_str(s.u.s.p, end);
            pv_push(&tmp, &parts, v);
            for (size_t i = 0; i < parts.n / 2; i++) { void *t = parts.v[i]; parts.v[i] = parts.v[parts.n - 1 - i]; parts.v[parts.n - 1 - i] = t; }
        }
    } else { // whitespace split, no empty parts
        if (from_right) rfail(c, line, "unsupported: rsplit() without a separator");
        size_t i = 0, n = s.u.s.n;
        int64_t done = 0;
        while (i < n) {
            i += lstrip_ws(s.u.s.p + i, n - i);
            if (i >= n) break;
            if (maxsplit >= 0 && done >= maxsplit) {
                size_t e = rstrip_ws(s.u.s.p + i, n - i);
                tv *v = arena_alloc(&c->a, sizeof *v); *v = mk_str(s.u.s.p + i, e);
                pv_push(&tmp, &parts, v);
                break;
            }
            size_t j = i;
            while (j < n) {
                size_t k = j;
                if (py_isspace(utf8_next(s.u.s.p, n, &k))) break;
                j = k;
            }
            tv *v = arena_alloc(&c->a, sizeof *v); *v = mk_str(s.u.s.p + i, j - i);
            pv_push(&tmp, &parts, v);
            done++;
            i = j;
        }
    }
    tlist *l = list_new(&c->a, parts.n);
    for (size_t i = 0; i < parts.n; i++) l->v[i] = *(tv *)parts.v[i];
    return mk_list(l, T_LIST);
}

static bool affix_match(tv s, tv a, bool suffix) {
    if (a.u.s.n > s.u.s.n) return false;
    return !memcmp(s.u.s.p + (suffix ? s.u.s.n - a.u.s.n : 0), a.u.s.p, a.u.s.n);
}

static tv call_method(rctx *c, int line, tfunc *f, const args *a) {
    tv self = f->self, x, y;
    switch (f->id) {
    case M_STARTSWITH: case M_ENDSWITH: {
        if (!arg_get(a, 0, NULL, &x)) rfail(c, line, "startswith/endswith takes at least 1 argument");
        bool suffix = f->id == M_ENDSWITH;
        if (is_seq(x)) {
            for (size_t i = 0; i < x.u.l->n; i++)
                if (affix_match(self, need_str(c, line, x.u.l->v[i], "tuple item"), suffix)) return mk_bool(true);
            return mk_bool(false);
        }
        return mk_bool(affix_match(self, need_str(c, line, x, "argument"), suffix));
    }
    case M_SPLIT: case M_RSPLIT: {
        tv sep = arg_or(a, 0, "sep", V_NONE), ms = arg_or(a, 1, "maxsplit", mk_int(-1));
        if (sep.t != T_NONE) need_str(c, line, sep, "separator");
        if (ms.t != T_INT) rfail(c, line, "maxsplit must be an integer");
        return str_split(c, line, self, sep, ms.u.i, f->id == M_RSPLIT);
    }
    case M_STRIP: case M_LSTRIP: case M_RSTRIP: {
        tv chars = arg_or(a, 0, NULL, V_NONE);
        if (chars.t != T_NONE) need_str(c, line, chars, "strip argument");
        return str_strip(self, chars, f->id == M_STRIP ? 3 : f->id == M_LSTRIP ? 1 : 2);
    }
    case M_REPLACE: {
        if (!arg_get(a, 0, NULL, &x) || !arg_get(a, 1, NULL, &y)) rfail(c, line, "replace() takes at least 2 arguments");
        tv cnt = arg_or(a, 2, "count", mk_int(-1));
        return str_replace(c, line, self, x, y, cnt.t == T_INT ? cnt.u.i : -1);
    }
    case M_UPPER: return str_case(c, self, CASE_UPPER);
    case M_LOWER: return str_case(c, self, CASE_LOWER);
    case M_TITLE: return str_title_py(c, self);
    case M_CAPITALIZE: return str_capitalize(c, self);
    case M_FIND: case M_COUNT: {
        if (!arg_get(a, 0, NULL, &x)) rfail(c, line, "find/count takes at least 1 argument");
        need_str(c, line, x, "argument");
        if (f->id == M_FIND) {
            const char *h = x.u.s.n ? memmem(self.u.s.p, self.u.s.n, x.u.s.p, x.u.s.n) : self.u.s.p;
            return mk_int(h ? (int64_t)utf8_len(self.u.s.p, (size_t)(h - self.u.s.p)) : -1);
        }
        if (!x.u.s.n) return mk_int((int64_t)utf8_len(self.u.s.p, self.u.s.n) + 1);
        int64_t k = 0;
        for (size_t i = 0; i < self.u.s.n;) {
            const char *h = memmem(self.u.s.p + i, self.u.s.n - i, x.u.s.p, x.u.s.n);
            if (!h) break;
            k++; i = (size_t)(h - self.u.s.p) + x.u.s.n;
        }
        return mk_int(k);
    }
    case M_JOIN: {
        if (!arg_get(a, 0, NULL, &x)) rfail(c, line, "join() takes exactly one argument");
        const tlist *l = iter_items(c, line, x);
        sbuf b; sb_init(&b, &c->a);
        for (size_t i = 0; i < l->n; i++) {
            if (i) sb_add(&b, self.u.s.p, self.u.s.n);
            tv it = l->v[i];
            if (it.t != T_STR) rfail(c, line, "sequence item %zu: expected str instance, %s found", i, type_name(it));
            sb_add(&b, it.u.s.p, it.u.s.n);
        }
        return str_tv(c, &b);
    }
    case M_ISDIGIT: case M_ISALPHA: case M_ISSPACE: {
        if (!self.u.s.n) return mk_bool(false);
        for (size_t i = 0; i < self.u.s.n;) {
            int32_t cp = utf8_next(self.u.s.p, self.u.s.n, &i);
            utf8proc_category_t cat = utf8proc_category(cp);
            bool ok = f->id == M_ISSPACE ? py_isspace(cp)
                    : f->id == M_ISDIGIT ? cat == UTF8PROC_CATEGORY_ND
                    : (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT ||
                       cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_LO);
            if (!ok) return mk_bool(false);
        }
        return mk_bool(true);
    }
    case M_GET: {
        if (!arg_get(a, 0, NULL, &x)) rfail(c, line, "get expected at least 1 argument");
        long i = dict_find(self.u.d, x);
        return i >= 0 ? self.u.d->v[i] : arg_or(a, 1, NULL, V_NONE);
    }
    case M_ITEMS: case M_KEYS: case M_VALUES: {
        tlist *l = list_new(&c->a, self.u.d->n);
        for (size_t i = 0; i < self.u.d->n; i++) {
            if (f->id == M_KEYS) l->v[i] = self.u.d->k[i];
            else if (f->id == M_VALUES) l->v[i] = self.u.d->v[i];
            else {
                tlist *pair = list_new(&c->a, 2);
                pair->v[0] = self.u.d->k[i]; pair->v[1] = self.u.d->v[i];
                l->v[i] = mk_list(pair, T_TUPLE);
            }
        }
        return mk_list(l, T_LIST);
    }
    case M_CYCLE: {
        if (!a->npos) rfail(c, line, "no items for cycling given");
        return a->pos[self.u.lp->index0 % (int64_t)a->npos];
    }
    default: break;
    }
    rfail(c, line, "not callable");
}

// ---------------------------------------------------------------- tests

static bool run_test(rctx *c, int line, const char *name, tv v, const args *a) {
    tv x;
    bool has = arg_get(a, 0, NULL, &x);
    if (!strcmp(name, "defined")) return v.t != T_UNDEF;
    if (!strcmp(name, "undefined")) return v.t == T_UNDEF;
    if (!strcmp(name, "none")) return v.t == T_NONE;
    if (!strcmp(name, "true")) return v.t == T_BOOL && v.u.i;
    if (!strcmp(name, "false")) return v.t == T_BOOL && !v.u.i;
    if (!strcmp(name, "boolean")) return v.t == T_BOOL;
    if (!strcmp(name, "string")) return v.t == T_STR;
    if (!strcmp(name, "mapping")) return v.t == T_DICT;
    if (!strcmp(name, "number")) return is_num(v);
    if (!strcmp(name, "integer")) return v.t == T_INT;
    if (!strcmp(name, "float")) return v.t == T_FLOAT;
    if (!strcmp(name, "iterable")) return v.t == T_STR || is_seq(v) || v.t == T_DICT || v.t == T_UNDEF;
    if (!strcmp(name, "sequence")) return v.t == T_STR || is_seq(v) || v.t == T_DICT || v.t == T_UNDEF;
    if (!strcmp(name, "callable")) return v.t == T_FUNC || v.t == T_MACRO;
    if (!strcmp(name, "escaped")) return false;
    if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        if (v.t != T_STR) { v = to_strv(c, v); }
        tv t = str_case(c, v, name[0] == 'l' ? CASE_LOWER : CASE_UPPER);
        return t.u.s.n == v.u.s.n && !memcmp(t.u.s.p, v.u.s.p, v.u.s.n);
    }
    if (!strcmp(name, "odd") || !strcmp(name, "even") || !strcmp(name, "divisibleby")) {
        if (v.t == T_UNDEF) undef_fail(c, line, v);
        if (!is_num(v)) rfail(c, line, "unsupported operand type(s) for %%: '%s' and 'int'", type_name(v));
        int64_t d = 2;
        if (name[0] == 'd') {
            if (!has || !is_num(x)) rfail(c, line, "divisibleby needs a number");
            if (v.t == T_FLOAT || x.t == T_FLOAT) { double m = fmod(num_f(v), num_f(x)); return m == 0; }
            d = x.u.i;
            if (d == 0) rfail(c, line, "integer division or modulo by zero");
            return py_mod(v.u.i, d) == 0;
        }
        if (v.t == T_FLOAT) { double m = fmod(v.u.f, 2); return name[0] == 'o' ? m != 0 : m == 0; }
        return name[0] == 'o' ? py_mod(v.u.i, 2) == 1 : py_mod(v.u.i, 2) == 0;
    }
    if (!has) rfail(c, line, "test '%s' needs an argument", name);
    if (!strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "==")) return v_eq(v, x);
    if (!strcmp(name, "ne") || !strcmp(name, "!=")) return !v_eq(v, x);
    if (!strcmp(name, "sameas")) {
        if (v.t != x.t) return false;
        if (v.t == T_NONE || v.t == T_UNDEF) return true;
        if (v.t == T_BOOL) return v.u.i == x.u.i;
        if (v.t == T_INT) return v.u.i == x.u.i && v.u.i >= -5 && v.u.i <= 256;
        return is_seq(v) ? v.u.l == x.u.l : (v.t == T_DICT || v.t == T_NS) ? v.u.d == x.u.d : false;
    }
    if (!strcmp(name, "in")) return contains(c, line, x, v);
    int r = cmp_values(c, line, v, x);
    if (!strcmp(name, "lt") || !strcmp(name, "lessthan") || !strcmp(name, "<")) return r < 0;
    if (!strcmp(name, "le") || !strcmp(name, "<=")) return r <= 0;
    if (!strcmp(name, "gt") || !strcmp(name, "greaterthan") || !strcmp(name, ">")) return r > 0;
    if (!strcmp(name, "ge") || !strcmp(name, ">=")) return r >= 0;
    rfail(c, line, "no test named '%s'", name);
}

// ---------------------------------------------------------------- filters

// jinja2's make_attrgetter: dotted path, integer parts, getitem semantics.
static tv attr_path(rctx *c, int line, tv item, tv attr) {
    if (attr.t == T_INT) return get_item(c, line, item, attr);
    need_str(c, line, attr, "attribute");
    const char *p = attr.u.s.p, *end = p + attr.u.s.n;
    while (p <= end) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        if (!dot) dot = end;
        size_t n = (size_t)(dot - p);
        bool digits = n > 0;
        for (size_t i = 0; i < n; i++) if (!isdigit((unsigned char)p[i])) digits = false;
        tv key = mk_str(p, n);
        if (digits && n < 18) key = mk_int(strtoll(arena_strndup(&c->a, p, n), NULL, 10));
        item = get_item(c, line, item, key);
        p = dot + 1;
        if (dot == end) break;
    }
    return item;
}

static tv call_value(rctx *c, int line, tv fn, const args *a);

// Sort key comparison with jinja's case-insensitive default.
typedef struct sortctx { rctx *c; int line; bool case_sensitive; } sortctx;
static tv sort_key(sortctx *s, tv v) {
    if (!s->case_sensitive && v.t == T_STR) return str_case(s->c, v, CASE_LOWER);
    return v;
}
static void sort_values(sortctx *s, tv *keys, tv *vals, size_t n, bool reverse) {
    // stable insertion sort on precomputed keys (n is small in templates)
    if (n > 20000) rfail(s->c, s->line, "sequence too long to sort");
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0; j--) {
            int r = cmp_values(s->c, s->line, keys[j - 1], keys[j]);
            if (reverse ? r >= 0 : r <= 0) break;
            tv t = keys[j]; keys[j] = keys[j - 1]; keys[j - 1] = t;
            t = vals[j]; vals[j] = vals[j - 1]; vals[j - 1] = t;
        }
}

static tv apply_filter(rctx *c, int line, const char *name, tv v, const args *a);

static tv filter_select(rctx *c, int line, tv v, const args *a, bool attr_mode, bool select) {
    const tlist *l = iter_items(c, line, v);
    size_t off = attr_mode ? 1 : 0;
    tv attr = V_NONE, testname;
    if (attr_mode && !arg_get(a, 0, "attribute", &attr)) rfail(c, line, "Missing parameter for attribute name");
    bool has_test = arg_get(a, off, NULL, &testname);
    if (has_test) need_str(c, line, testname, "test name");
    args ta = { .pos = a->npos > off + 1 ? a->pos + off + 1 : NULL, .npos = a->npos > off + 1 ? a->npos - off - 1 : 0 };
    tlist *r = list_new(&c->a, l->n);
    r->n = 0;
    for (size_t i = 0; i < l->n; i++) {
        tv item = l->v[i], x = attr_mode ? attr_path(c, line, item, attr) : item;
        bool ok;
        if (has_test) {
            char *tn = arena_strndup(&c->a, testname.u.s.p, testname.u.s.n);
            if (!in_list(TESTS, tn) || !strcmp(tn, "filter") || !strcmp(tn, "test")) rfail(c, line, "No test named '%s'.", tn);
            ok = run_test(c, line, tn, x, &ta);
        } else ok = truthy(x);
        if (ok == select) r->v[r->n++] = item;
    }
    return mk_list(r, T_LIST);
}

static tv apply_filter(rctx *c, int line, const char *name, tv v, const args *a) {
    tv x;
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        tv dflt = arg_or(a, 0, "default_value", mk_str("", 0));
        bool boolean = truthy(arg_or(a, 1, "boolean", mk_bool(false)));
        if (v.t == T_UNDEF || (boolean && !truthy(v))) return dflt;
        return v;
    }
    if (!strcmp(name, "length") || !strcmp(name, "count")) return mk_int(length_of(c, line, v));
    if (!strcmp(name, "string")) return to_strv(c, v);
    if (!strcmp(name, "safe")) return to_strv(c, v);
    if (!strcmp(name, "trim")) {
        tv chars = arg_or(a, 0, "chars", V_NONE);
        if (chars.t != T_NONE) need_str(c, line, chars, "chars");
        return str_strip(to_strv(c, v), chars, 3);
    }
    if (!strcmp(name, "upper")) return str_case(c, to_strv(c, v), CASE_UPPER);
    if (!strcmp(name, "lower")) return str_case(c, to_strv(c, v), CASE_LOWER);
    if (!strcmp(name, "title")) return str_title_jinja(c, to_strv(c, v));
    if (!strcmp(name, "capitalize")) return str_capitalize(c, to_strv(c, v));
    if (!strcmp(name, "escape") || !strcmp(name, "e")) {
        tv s = to_strv(c, v);
        sbuf b; sb_init(&b, &c->a);
        for (size_t i = 0; i < s.u.s.n; i++) {
            char ch = s.u.s.p[i];
            if (ch == '&') sb_puts(&b, "&amp;");
            else if (ch == '<') sb_puts(&b, "&lt;");
            else if (ch == '>') sb_puts(&b, "&gt;");
            else if (ch == '"') sb_puts(&b, "&#34;");
            else if (ch == '\'') sb_puts(&b, "&#39;");
            else sb_putc(&b, ch);
        }
        return str_tv(c, &b);
    }
    if (!strcmp(name, "replace")) {
        tv old, new_;
        if (!arg_get(a, 0, "old", &old) || !arg_get(a, 1, "new", &new_)) rfail(c, line, "replace needs old and new");
        tv cnt = arg_or(a, 2, "count", V_NONE);
        return str_replace(c, line, to_strv(c, v), old, new_, cnt.t == T_INT ? cnt.u.i : -1);
    }
    if (!strcmp(name, "wordcount")) {
        tv s = to_strv(c, v);
        int64_t k = 0; bool in = false;
        for (size_t i = 0; i < s.u.s.n;) {
            int32_t cp = utf8_next(s.u.s.p, s.u.s.n, &i);
            bool w = cp == '_' || (cp < 128 ? isalnum(cp) : !py_isspace(cp));
            if (w && !in) k++;
            in = w;
        }
        return mk_int(k);
    }
    if (!strcmp(name, "center")) {
        tv s = to_strv(c, v);
        int64_t width = arg_or(a, 0, "width", mk_int(80)).u.i, len = (int64_t)utf8_len(s.u.s.p, s.u.s.n);
        if (width > 100000) rfail(c, line, "center width too large");
        if (width <= len) return s;
        int64_t pad = width - len, left = pad / 2 + (pad & width & 1);
        sbuf b; sb_init(&b, &c->a);
        for (int64_t i = 0; i < left; i++) sb_putc(&b, ' ');
        sb_add(&b, s.u.s.p, s.u.s.n);
        for (int64_t i = 0; i < pad - left; i++) sb_putc(&b, ' ');
        return str_tv(c, &b);
    }
    if (!strcmp(name, "indent")) {
        tv s = to_strv(c, v), w = arg_or(a, 0, "width", mk_int(4));
        bool first = truthy(arg_or(a, 1, "first", mk_bool(false))), blank = truthy(arg_or(a, 2, "blank", mk_bool(false)));
        sbuf ind; sb_init(&ind, &c->a);
        if (w.t == T_STR) sb_add(&ind, w.u.s.p, w.u.s.n);
        else if (w.t == T_INT && w.u.i >= 0 && w.u.i <= 1000) for (int64_t i = 0; i < w.u.i; i++) sb_putc(&ind, ' ');
        else rfail(c, line, "indent width must be an int or a string");
        sbuf b; sb_init(&b, &c->a);
        if (first) sb_add(&b, ind.p, ind.n);
        size_t i = 0;
        while (i < s.u.s.n) {
            const char *nl = memchr(s.u.s.p + i, '\n', s.u.s.n - i);
            size_t e = nl ? (size_t)(nl - s.u.s.p) : s.u.s.n;
            sb_add(&b, s.u.s.p + i, e - i);
            if (!nl) break;
            sb_putc(&b, '\n');
            i = e + 1;
            if (i < s.u.s.n) {
                const char *nl2 = memchr(s.u.s.p + i, '\n', s.u.s.n - i);
                size_t e2 = nl2 ? (size_t)(nl2 - s.u.s.p) : s.u.s.n;
                bool is_blank = lstrip_ws(s.u.s.p + i, e2 - i) == e2 - i;
                if (blank || !is_blank) sb_add(&b, ind.p, ind.n);
            }
        }
        return str_tv(c, &b);
    }
    if (!strcmp(name, "tojson")) {
        jopts o = { .ensure_ascii = truthy(arg_or(a, 1, "ensure_ascii", mk_bool(false))),
                    .sort_keys = truthy(arg_or(a, 3, "sort_keys", mk_bool(false))),
                    .item_sep = ", ", .key_sep = ": " };
        tv ind = arg_or(a, 0, "indent", V_NONE), seps = arg_or(a, 2, "separators", V_NONE);
        if (ind.t == T_INT || ind.t == T_BOOL) {
            if (ind.u.i > 1000) rfail(c, line, "indent too large");
            char *sp = arena_alloc(&c->a, ind.u.i > 0 ? (size_t)ind.u.i : 1);
            if (ind.u.i > 0) memset(sp, ' ', (size_t)ind.u.i);
            o.indent = sp; o.indent_n = ind.u.i > 0 ? (size_t)ind.u.i : 0; o.indent_on = true;
        } else if (ind.t == T_STR) { o.indent = ind.u.s.p; o.indent_n = ind.u.s.n; o.indent_on = true; }
        else if (ind.t != T_NONE) rfail(c, line, "tojson: indent must be an int, a string or None");
        if (o.indent_on) o.item_sep = ",";
        if (seps.t != T_NONE) {
            if (!is_seq(seps) || seps.u.l->n != 2 || seps.u.l->v[0].t != T_STR || seps.u.l->v[1].t != T_STR)
                rfail(c, line, "tojson: separators must be a pair of strings");
            o.item_sep = arena_strndup(&c->a, seps.u.l->v[0].u.s.p, seps.u.l->v[0].u.s.n);
            o.key_sep = arena_strndup(&c->a, seps.u.l->v[1].u.s.p, seps.u.l->v[1].u.s.n);
        }
        sbuf b; sb_init(&b, &c->a);
        json_dump(c, line, &b, v, &o, 0);
        return str_tv(c, &b);
    }
    if (!strcmp(name, "join")) {
        tv d = arg_or(a, 0, "d", mk_str("", 0)), attr;
        bool has_attr = arg_get(a, 1, "attribute", &attr);
        d = to_strv(c, d);
        const tlist *l = iter_items(c, line, v);
        sbuf b; sb_init(&b, &c->a);
        for (size_t i = 0; i < l->n; i++) {
            if (i) sb_add(&b, d.u.s.p, d.u.s.n);
            to_str(&b, has_attr ? attr_path(c, line, l->v[i], attr) : l->v[i], false);
        }
        return str_tv(c, &b);
    }
    if (!strcmp(name, "items")) {
        if (v.t == T_UNDEF) return mk_list(list_new(&c->a, 0), T_LIST);
        if (v.t != T_DICT) rfail(c, line, "Can only get item pairs from a mapping.");
        tfunc f = { M_ITEMS, v };
        args none = {0};
        return call_method(c, line, &f, &none);
    }
    if (!strcmp(name, "list")) {
        const tlist *l = iter_items(c, line, v);
        tlist *r = list_new(&c->a, l->n);
        if (l->n) memcpy(r->v, l->v, l->n * sizeof(tv));
        return mk_list(r, T_LIST);
    }
    if (!strcmp(name, "first")) {
        const tlist *l = iter_items(c, line, v);
        return l->n ? l->v[0] : mk_undef("No first item, sequence was empty.");
    }
    if (!strcmp(name, "last")) {
        if (v.t == T_DICT) rfail(c, line, "'dict' object is not reversible");
        const tlist *l = iter_items(c, line, v);
        return l->n ? l->v[l->n - 1] : mk_undef("No last item, sequence was empty.");
    }
    if (!strcmp(name, "reverse")) {
        if (v.t == T_STR) {
            size_t n, *off = cp_offsets(c, v, &n);
            sbuf b; sb_init(&b, &c->a);
            for (size_t i = n; i-- > 0;) sb_add(&b, v.u.s.p + off[i], off[i + 1] - off[i]);
            return str_tv(c, &b);
        }
        const tlist *l = iter_items(c, line, v);
        tlist *r = list_new(&c->a, l->n);
        for (size_t i = 0; i < l->n; i++) r->v[i] = l->v[l->n - 1 - i];
        return mk_list(r, T_LIST);
    }
    if (!strcmp(name, "select") || !strcmp(name, "reject")) return filter_select(c, line, v, a, false, name[0] == 's');
    if (!strcmp(name, "selectattr") || !strcmp(name, "rejectattr")) return filter_select(c, line, v, a, true, name[0] == 's');
    if (!strcmp(name, "map")) {
        const tlist *l = iter_items(c, line, v);
        tlist *r = list_new(&c->a, l->n);
        tv attr;
        if (!a->npos && arg_get(a, 99, "attribute", &attr)) {
            tv dflt;
            bool has_d = arg_get(a, 99, "default", &dflt);
            for (size_t i = 0; i < l->n; i++) {
                tv x = attr_path(c, line, l->v[i], attr);
                r->v[i] = (x.t == T_UNDEF && has_d) ? dflt : x;
            }
            return mk_list(r, T_LIST);
        }
        tv fname;
        if (!arg_get(a, 0, NULL, &fname)) rfail(c, line, "map requires a filter argument");
        need_str(c, line, fname, "filter name");
        char *fn = arena_strndup(&c->a, fname.u.s.p, fname.u.s.n);
        if (!in_list(FILTERS, fn)) rfail(c, line, "No filter named '%s'.", fn);
        args fa = { .pos = a->pos + 1, .npos = a->npos - 1, .kwn = a->kwn, .kw = a->kw, .nkw = a->nkw };
        for (size_t i = 0; i < l->n; i++) r->v[i] = apply_filter(c, line, fn, l->v[i], &fa);
        return mk_list(r, T_LIST);
    }
    if (!strcmp(name, "int")) {
        tv dflt = arg_or(a, 0, "default", mk_int(0));
        int64_t base = arg_or(a, 1, "base", mk_int(10)).u.i;
        if (v.t == T_INT || v.t == T_BOOL) return mk_int(v.u.i);
        if (v.t == T_FLOAT) {
            if (!isfinite(v.u.f) || fabs(v.u.f) > 9.2e18) return dflt;
            return mk_int((int64_t)v.u.f);
        }
        if (v.t == T_STR) {
            char *s = arena_strndup(&c->a, v.u.s.p, v.u.s.n), *end;
            size_t st = lstrip_ws(s, v.u.s.n), en = rstrip_ws(s, v.u.s.n);
            if (st < en) {
                s[en] = 0;
                errno = 0;
                long long r = strtoll(s + st, &end, (int)base);
                if (!errno && *end == 0 && end != s + st) return mk_int(r);
                double d = strtod(s + st, &end);
                if (*end == 0 && end != s + st && isfinite(d) && fabs(d) < 9.2e18) return mk_int((int64_t)d);
            }
        }
        return dflt;
    }
    if (!strcmp(name, "float")) {
        tv dflt = arg_or(a, 0, "default", mk_float(0.0));
        if (is_num(v)) return mk_float(num_f(v));
        if (v.t == T_STR) {
            char *s = arena_strndup(&c->a, v.u.s.p, v.u.s.n), *end;
            size_t st = lstrip_ws(s, v.u.s.n), en = rstrip_ws(s, v.u.s.n);
            if (st < en) {
                s[en] = 0;
                double d = strtod(s + st, &end);
                if (*end == 0) return mk_float(d);
            }
        }
        return dflt;
    }
    if (!strcmp(name, "abs")) {
        if (v.t == T_INT || v.t == T_BOOL) {
            if (v.u.i == INT64_MIN) rfail(c, line, "integer overflow");
            return mk_int(v.u.i < 0 ? -v.u.i : v.u.i);
        }
        if (v.t == T_FLOAT) return mk_float(fabs(v.u.f));
        if (v.t == T_UNDEF) undef_fail(c, line, v);
        rfail(c, line, "bad operand type for abs(): '%s'", type_name(v));
    }
    if (!strcmp(name, "round")) {
        int64_t prec = arg_or(a, 0, "precision", mk_int(0)).u.i;
        tv method = arg_or(a, 1, "method", mk_str("common", 6));
        if (v.t == T_UNDEF) undef_fail(c, line, v);
        if (!is_num(v)) rfail(c, line, "type %s doesn't define __round__ method", type_name(v));
        if (prec < -300 || prec > 300) rfail(c, line, "round precision out of range");
        if (str_eq(method, "common")) {
            if (v.t != T_FLOAT) return mk_int(v.u.i); // round(int, n) stays an int (n >= 0)
            if (!isfinite(v.u.f)) return v;
            if (prec == 0) return mk_float(nearbyint(v.u.f));
            if (prec > 0) {
                char tmp[512];
                snprintf(tmp, sizeof tmp, "%.*f", (int)prec, v.u.f);
                return mk_float(strtod(tmp, NULL));
            }
            double m = pow(10, (double)-prec);
            return mk_float(nearbyint(v.u.f / m) * m);
        }
        double m = pow(10, (double)prec), f = num_f(v) * m;
        if (str_eq(method, "ceil")) return mk_float(ceil(f) / m);
        if (str_eq(method, "floor")) return mk_float(floor(f) / m);
        rfail(c, line, "method must be common, ceil or floor");
    }
    if (!strcmp(name, "unique") || !strcmp(name, "sort") || !strcmp(name, "dictsort") ||
        !strcmp(name, "min") || !strcmp(name, "max")) {
        bool is_dictsort = name[0] == 'd', is_sort = !strcmp(name, "sort"), is_unique = name[0] == 'u';
        size_t cs_pos = is_sort ? 1 : 0;
        sortctx s = { c, line, truthy(arg_or(a, cs_pos, "case_sensitive", mk_bool(false))) };
        tv attr;
        bool has_attr = arg_get(a, is_sort ? 2 : 1, "attribute", &attr) && !is_dictsort;
        const tlist *l;
        if (is_dictsort) {
            if (v.t != T_DICT) rfail(c, line, "You can only sort by either \"key\" or \"value\"");
            tfunc f = { M_ITEMS, v };
            args none = {0};
            l = call_method(c, line, &f, &none).u.l;
        } else l = iter_items(c, line, v);
        size_t n = l->n;
        tv *keys = arena_alloc(&c->a, (n + 1) * sizeof(tv)), *vals = arena_alloc(&c->a, (n + 1) * sizeof(tv));
        int by_value = 0;
        if (is_dictsort) {
            tv by = arg_or(a, 1, "by", mk_str("key", 3));
            if (str_eq(by, "value")) by_value = 1;
            else if (!str_eq(by, "key")) rfail(c, line, "You can only sort by either \"key\" or \"value\"");
        }
        for (size_t i = 0; i < n; i++) {
            vals[i] = l->v[i];
            tv k = is_dictsort ? l->v[i].u.l->v[by_value] : has_attr ? attr_path(c, line, l->v[i], attr) : l->v[i];
            keys[i] = sort_key(&s, k);
        }
        if (is_unique) {
            tlist *r = list_new(&c->a, n);
            r->n = 0;
            tv *seen = arena_alloc(&c->a, (n + 1) * sizeof(tv));
            size_t ns = 0;
            for (size_t i = 0; i < n; i++) {
                size_t j;
                for (j = 0; j < ns; j++) if (v_eq(seen[j], keys[i])) break;
                if (j < ns) continue;
                seen[ns++] = keys[i];
                r->v[r->n++] = vals[i];
            }
            return mk_list(r, T_LIST);
        }
        if (name[0] == 'm') { // min / max
            if (!n) return mk_undef("No aggregated item, sequence was empty.");
            size_t best = 0;
            for (size_t i = 1; i < n; i++) {
                int r = cmp_values(c, line, keys[i], keys[best]);
                if (name[1] == 'i' ? r < 0 : r > 0) best = i;
            }
            return vals[best];
        }
        bool reverse = truthy(arg_or(a, is_sort ? 0 : 2, "reverse", mk_bool(false)));
        sort_values(&s, keys, vals, n, reverse);
        tlist *r = list_new(&c->a, n);
        if (n) memcpy(r->v, vals, n * sizeof(tv));
        return mk_list(r, T_LIST);
    }
    if (!strcmp(name, "sum")) {
        tv attr, start = arg_or(a, 1, "start", mk_int(0)), acc;
        bool has_attr = arg_get(a, 0, "attribute", &attr);
        const tlist *l = iter_items(c, line, v);
        acc = start;
        for (size_t i = 0; i < l->n; i++) acc = binop_eval(c, line, OP_ADD, acc, has_attr ? attr_path(c, line, l->v[i], attr) : l->v[i]);
        return acc;
    }
    if (!strcmp(name, "batch") || !strcmp(name, "slice") || !strcmp(name, "groupby")) {
        if (!strcmp(name, "groupby")) rfail(c, line, "unsupported filter 'groupby'");
        const tlist *l = iter_items(c, line, v);
        if (!arg_get(a, 0, NULL, &x) || x.t != T_INT || x.u.i <= 0 || x.u.i > 100000) rfail(c, line, "%s needs a positive count", name);
        tv fill = arg_or(a, 1, "fill_with", V_NONE);
        bool has_fill = arg_get(a, 1, "fill_with", &fill) && fill.t != T_NONE;
        size_t k = (size_t)x.u.i, n = l->n;
        if (name[0] == 'b') {
            size_t groups = (n + k - 1) / k;
            tlist *r = list_new(&c->a, groups);
            for (size_t g = 0; g < groups; g++) {
                size_t cnt = (g + 1) * k <= n ? k : n - g * k;
                tlist *b = list_new(&c->a, has_fill ? k : cnt);
                for (size_t i = 0; i < b->n; i++) b->v[i] = i < cnt ? l->v[g * k + i] : fill;
                r->v[g] = mk_list(b, T_LIST);
            }
            return mk_list(r, T_LIST);
        }
        size_t per = n / k, extra = n % k, off = 0;
        tlist *r = list_new(&c->a, k);
        for (size_t g = 0; g < k; g++) {
            size_t cnt = per + (g < extra ? 1 : 0);
            bool pad = has_fill && extra && g >= extra;
            tlist *b = list_new(&c->a, cnt + (pad ? 1 : 0));
            for (size_t i = 0; i < cnt; i++) b->v[i] = l->v[off + i];
            if (pad) b->v[cnt] = fill;
            off += cnt;
            r->v[g] = mk_list(b, T_LIST);
        }
        return mk_list(r, T_LIST);
    }
    rfail(c, line, "no filter named '%s'", name);
}

// ---------------------------------------------------------------- evaluation

static tv eval(rctx *c, scope *s, const node *n);
static int exec_node(rctx *c, scope *s, const node *n);

static void step(rctx *c, int line) {
    if (++c->steps > CT_MAX_STEPS) rfail(c, line, "template evaluation step limit exceeded");
}

static void eval_args(rctx *c, scope *s, const node *n, args *a) {
    tv *pos = n->nargs ? arena_alloc(&c->a, n->nargs * sizeof(tv)) : NULL;
    tv *kw = n->nkw ? arena_alloc(&c->a, n->nkw * sizeof(tv)) : NULL;
    for (size_t i = 0; i < n->nargs; i++) pos[i] = eval(c, s, n->args[i]);
    for (size_t i = 0; i < n->nkw; i++) kw[i] = eval(c, s, n->kw[i]);
    a->pos = pos; a->npos = n->nargs; a->kw = kw; a->kwn = n->kwn; a->nkw = n->nkw; a->used_kw = NULL;
}

static tv call_macro(rctx *c, int line, const tmacro *m, const args *a) {
    const node *def = m->def;
    if (a->npos > def->nnames)
        rfail(c, line, "macro '%s' takes not more than %zu argument(s)", def->s, def->nnames);
    scope *ms = scope_new(c, m->closure);
    bool *given = arena_alloc(&c->a, (def->nnames + 1) * sizeof(bool));
    for (size_t i = 0; i < def->nnames; i++) given[i] = false;
    for (size_t i = 0; i < a->npos; i++) { scope_set(c, ms, def->names[i], a->pos[i]); given[i] = true; }
    for (size_t k = 0; k < a->nkw; k++) {
        size_t i;
        for (i = 0; i < def->nnames; i++) if (!strcmp(def->names[i], a->kwn[k])) break;
        if (i == def->nnames) rfail(c, line, "macro '%s' takes no keyword argument '%s'", def->s, a->kwn[k]);
        if (given[i]) rfail(c, line, "macro '%s' got multiple values for argument '%s'", def->s, a->kwn[k]);
        scope_set(c, ms, def->names[i], a->kw[k]);
        given[i] = true;
    }
    for (size_t i = 0; i < def->nnames; i++) {
        if (given[i]) continue;
        tv v = def->kw[i] ? eval(c, ms, def->kw[i])
                          : mk_undef(fmt_hint(c, "parameter '%.*s' was not provided", def->names[i], strlen(def->names[i])));
        scope_set(c, ms, def->names[i], v);
    }
    sbuf buf, *saved = c->out;
    sb_init(&buf, &c->a);
    c->out = &buf;
    exec_node(c, ms, def->a);
    c->out = saved;
    return str_tv(c, &buf);
}

static tv call_value(rctx *c, int line, tv fn, const args *a) {
    if (fn.t == T_MACRO) return call_macro(c, line, fn.u.m, a);
    if (fn.t == T_UNDEF) undef_fail(c, line, fn);
    if (fn.t != T_FUNC) rfail(c, line, "'%s' object is not callable", type_name(fn));
    tfunc *f = fn.u.fn;
    switch (f->id) {
    case F_RANGE: {
        int64_t v[3] = {0, 0, 1};
        if (a->nkw) rfail(c, line, "range() takes no keyword arguments");
        if (a->npos < 1 || a->npos > 3) rfail(c, line, "range expected 1 to 3 arguments, got %zu", a->npos);
        for (size_t i = 0; i < a->npos; i++) {
            if (a->pos[i].t != T_INT && a->pos[i].t != T_BOOL)
                rfail(c, line, "'%s' object cannot be interpreted as an integer", type_name(a->pos[i]));
        }
        if (a->npos == 1) v[1] = a->pos[0].u.i;
        else { v[0] = a->pos[0].u.i; v[1] = a->pos[1].u.i; if (a->npos == 3) v[2] = a->pos[2].u.i; }
        if (v[2] == 0) rfail(c, line, "range() arg 3 must not be zero");
        int64_t count = 0;
        if (v[2] > 0 && v[0] < v[1]) count = (int64_t)(((double)v[1] - (double)v[0] - 1) / (double)v[2]) + 1;
        if (v[2] < 0 && v[0] > v[1]) count = (int64_t)(((double)v[0] - (double)v[1] - 1) / (double)-v[2]) + 1;
        if (count > CT_MAX_RANGE) rfail(c, line, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (%d).", CT_MAX_RANGE);
        tlist *l = list_new(&c->a, (size_t)count);
        for (int64_t i = 0; i < count; i++) l->v[i] = mk_int(v[0] + i * v[2]);
        return mk_list(l, T_LIST);
    }
    case F_NAMESPACE: case F_DICT: {
        tdict *d = dict_new(&c->a, 4);
        for (size_t i = 0; i < a->npos; i++) {
            tv x = a->pos[i];
            if (x.t == T_DICT || x.t == T_NS) for (size_t k = 0; k < x.u.d->n; k++) dict_set(&c->a, d, x.u.d->k[k], x.u.d->v[k]);
            else if (is_seq(x)) {
                for (size_t k = 0; k < x.u.l->n; k++) {
                    tv pr = x.u.l->v[k];
                    if (!is_seq(pr) || pr.u.l->n != 2) rfail(c, line, "dictionary update sequence element has wrong length");
                    dict_set(&c->a, d, pr.u.l->v[0], pr.u.l->v[1]);
                }
            } else rfail(c, line, "'%s' object is not iterable", type_name(x));
        }
        if (f->id == F_DICT && a->npos > 1) rfail(c, line, "dict expected at most 1 argument");
        for (size_t k = 0; k < a->nkw; k++) dict_set(&c->a, d, mk_str(a->kwn[k], strlen(a->kwn[k])), a->kw[k]);
        return mk_dict(d, f->id == F_NAMESPACE ? T_NS : T_DICT);
    }
    case F_RAISE: {
        tv m = arg_or(a, 0, "message", mk_str("", 0));
        tv ms = to_strv(c, m);
        vm_errf(c->e, "%.*s", (int)(ms.u.s.n > 1000 ? 1000 : ms.u.s.n), ms.u.s.p);
        longjmp(c->fail, 1);
    }
    case F_STRFTIME: {
        tv fmt;
        if (!arg_get(a, 0, "format", &fmt)) rfail(c, line, "strftime_now() missing 1 required positional argument: 'format'");
        need_str(c, line, fmt, "format");
        if (fmt.u.s.n > 256) rfail(c, line, "strftime format too long");
        char *f0 = arena_strndup(&c->a, fmt.u.s.p, fmt.u.s.n);
        time_t now = time(NULL);
        struct tm tmv;
        localtime_r(&now, &tmv);
        char out[1024];
        size_t n = f0[0] ? strftime(out, sizeof out, f0, &tmv) : 0;
        return mk_str(arena_strndup(&c->a, out, n), n);
    }
    default: return call_method(c, line, f, a);
    }
}

static tv eval(rctx *c, scope *s, const node *n) {
    step(c, n->line);
    if (++c->depth > CT_MAX_EVAL_DEPTH) rfail(c, n->line, "template recursion too deep");
    tv r = V_NONE, x, y;
    switch (n->k) {
    case N_CONST: r = n->val; break;
    case N_NAME:
        if (!scope_get(s, n->s, &r)) r = mk_undef(fmt_hint(c, "'%.*s' is undefined", n->s, strlen(n->s)));
        break;
    case N_GETATTR: r = get_attr(c, n->line, eval(c, s, n->a), n->s); break;
    case N_GETITEM: x = eval(c, s, n->a); r = get_item(c, n->line, x, eval(c, s, n->b)); break;
    case N_SLICE: {
        tv obj = eval(c, s, n->args[0]);
        tv a = n->a ? eval(c, s, n->a) : V_NONE, b = n->b ? eval(c, s, n->b) : V_NONE, st = n->c ? eval(c, s, n->c) : V_NONE;
        r = do_slice(c, n->line, obj, a, b, st);
        break;
    }
    case N_CALL: {
        tv fn = eval(c, s, n->a);
        args a;
        eval_args(c, s, n, &a);
        r = call_value(c, n->line, fn, &a);
        break;
    }
    case N_FILTER: {
        x = eval(c, s, n->a);
        args a;
        eval_args(c, s, n, &a);
        r = apply_filter(c, n->line, n->s, x, &a);
        break;
    }
    case N_TEST: {
        x = eval(c, s, n->a);
        args a;
        eval_args(c, s, n, &a);
        r = mk_bool(run_test(c, n->line, n->s, x, &a) != (n->op != 0));
        break;
    }
    case N_BINOP: x = eval(c, s, n->a); y = eval(c, s, n->b); r = binop_eval(c, n->line, n->op, x, y); break;
    case N_CONCAT: {
        x = to_strv(c, eval(c, s, n->a)); y = to_strv(c, eval(c, s, n->b));
        r = binop_eval(c, n->line, OP_ADD, x, y);
        break;
    }
    case N_NEG: case N_POS:
        x = eval(c, s, n->a);
        if (x.t == T_UNDEF) undef_fail(c, n->line, x);
        if (!is_num(x)) rfail(c, n->line, "bad operand type for unary %c: '%s'", n->k == N_NEG ? '-' : '+', type_name(x));
        if (n->k == N_POS) r = x.t == T_BOOL ? mk_int(x.u.i) : x;
        else if (x.t == T_FLOAT) r = mk_float(-x.u.f);
        else { if (x.u.i == INT64_MIN) rfail(c, n->line, "integer overflow"); r = mk_int(-x.u.i); }
        break;
    case N_AND: x = eval(c, s, n->a); r = truthy(x) ? eval(c, s, n->b) : x; break;
    case N_OR: x = eval(c, s, n->a); r = truthy(x) ? x : eval(c, s, n->b); break;
    case N_NOT: r = mk_bool(!truthy(eval(c, s, n->a))); break;
    case N_COMPARE: {
        x = eval(c, s, n->a);
        bool ok = true;
        for (size_t i = 0; i < n->nnames && ok; i++) {
            y = eval(c, s, n->args[i]);
            const char *op = n->names[i];
            if (!strcmp(op, "==")) ok = v_eq(x, y);
            else if (!strcmp(op, "!=")) ok = !v_eq(x, y);
            else if (!strcmp(op, "in")) ok = contains(c, n->line, y, x);
            else if (!strcmp(op, "notin")) ok = !contains(c, n->line, y, x);
            else {
                int cr = cmp_values(c, n->line, x, y);
                ok = op[0] == '<' ? (op[1] ? cr <= 0 : cr < 0) : (op[1] ? cr >= 0 : cr > 0);
            }
            x = y;
        }
        r = mk_bool(ok);
        break;
    }
    case N_COND:
        if (truthy(eval(c, s, n->a))) r = eval(c, s, n->b);
        else r = n->c ? eval(c, s, n->c) : mk_undef("the inline if-expression evaluated to false and no else section was defined");
        break;
    case N_LIST: case N_TUPLE: {
        tlist *l = list_new(&c->a, n->nargs);
        for (size_t i = 0; i < n->nargs; i++) l->v[i] = eval(c, s, n->args[i]);
        r = mk_list(l, n->k == N_LIST ? T_LIST : T_TUPLE);
        break;
    }
    case N_DICT: {
        tdict *d = dict_new(&c->a, n->nargs);
        for (size_t i = 0; i < n->nargs; i++) {
            tv k = eval(c, s, n->args[i]);
            if (is_seq(k) || k.t == T_DICT || k.t == T_NS || k.t == T_UNDEF)
                rfail(c, n->line, "unhashable type: '%s'", type_name(k));
            dict_set(&c->a, d, k, eval(c, s, n->kw[i]));
        }
        r = mk_dict(d, T_DICT);
        break;
    }
    default: rfail(c, n->line, "internal error: not an expression");
    }
    c->depth--;
    return r;
}

static void assign_targets(rctx *c, scope *s, int line, const char **names, size_t nn, tv v) {
    if (nn == 1) { scope_set(c, s, names[0], v); return; }
    const tlist *l = iter_items(c, line, v);
    if (l->n != nn) rfail(c, line, l->n > nn ? "too many values to unpack (expected %zu)" : "not enough values to unpack (expected %zu)", nn);
    for (size_t i = 0; i < nn; i++) scope_set(c, s, names[i], l->v[i]);
}

// Returns 0, or 1 for break, 2 for continue.
static int exec_node(rctx *c, scope *s, const node *n) {
    step(c, n->line);
    if (++c->depth > CT_MAX_EVAL_DEPTH) rfail(c, n->line, "template recursion too deep");
    int rc = 0;
    switch (n->k) {
    case S_BLOCK:
        for (size_t i = 0; i < n->nargs && !rc; i++) rc = exec_node(c, s, n->args[i]);
        break;
    case S_TEXT: sb_add(c->out, n->s, n->sn); break;
    case S_OUTPUT: to_str(c->out, eval(c, s, n->a), false); break;
    case S_IF:
        if (truthy(eval(c, s, n->a))) rc = exec_node(c, s, n->b);
        else if (n->c) rc = exec_node(c, s, n->c);
        break;
    case S_FOR: {
        const tlist *items = iter_items(c, n->line, eval(c, s, n->a));
        if (n->c) { // loop filter: keep the items for which the condition holds
            tlist *kept = list_new(&c->a, items->n);
            kept->n = 0;
            for (size_t i = 0; i < items->n; i++) {
                scope *fs = scope_new(c, s);
                assign_targets(c, fs, n->line, n->names, n->nnames, items->v[i]);
                if (truthy(eval(c, fs, n->c))) kept->v[kept->n++] = items->v[i];
            }
            items = kept;
        }
        tloop *lp = arena_alloc(&c->a, sizeof *lp);
        lp->length = (int64_t)items->n; lp->items = items;
        tv loopv = { .t = T_LOOP };
        loopv.u.lp = lp;
        for (size_t i = 0; i < items->n; i++) {
            lp->index0 = (int64_t)i;
            scope *is = scope_new(c, s);
            scope_set(c, is, "loop", loopv);
            assign_targets(c, is, n->line, n->names, n->nnames, items->v[i]);
            int r = exec_node(c, is, n->b);
            if (r == 1) break;
        }
        if (!items->n && n->nkw) {
            scope *es = scope_new(c, s);
            for (size_t i = 0; i < n->nkw && !rc; i++) rc = exec_node(c, es, n->kw[i]);
            rc = 0;
        }
        break;
    }
    case S_SET: assign_targets(c, s, n->line, n->names, n->nnames, eval(c, s, n->a)); break;
    case S_SET_ATTR: {
        tv ns;
        if (!scope_get(s, n->s, &ns) || ns.t != T_NS) rfail(c, n->line, "cannot assign attribute on non-namespace object");
        tv v = eval(c, s, n->a);
        dict_set(&c->a, ns.u.d, mk_str(n->names[0], strlen(n->names[0])), v);
        break;
    }
    case S_SET_BLOCK: {
        sbuf buf, *saved = c->out;
        sb_init(&buf, &c->a);
        c->out = &buf;
        exec_node(c, s, n->a);
        c->out = saved;
        scope_set(c, s, n->s, str_tv(c, &buf));
        break;
    }
    case S_MACRO: {
        tmacro *m = arena_alloc(&c->a, sizeof *m);
        m->def = n; m->closure = s;
        tv v = { .t = T_MACRO };
        v.u.m = m;
        scope_set(c, s, n->s, v);
        break;
    }
    case S_BREAK: rc = 1; break;
    case S_CONTINUE: rc = 2; break;
    default: rfail(c, n->line, "internal error: not a statement");
    }
    c->depth--;
    return rc;
}

// ---------------------------------------------------------------- public API

struct vm_chat_template {
    arena a;
    node *root;
};

vm_chat_template *vm_chat_template_parse(const char *source, size_t len, vm_err *e) {
    if (!source) { vm_errf(e, "chat template: no source"); return NULL; }
    if (len > CT_MAX_SOURCE) { vm_errf(e, "chat template: source exceeds %u bytes", CT_MAX_SOURCE); return NULL; }
    if (utf8proc_decompose((const utf8proc_uint8_t *)source, (utf8proc_ssize_t)len, NULL, 0, 0) < 0) {
        vm_errf(e, "chat template: source is not valid UTF-8");
        return NULL;
    }
    vm_chat_template *t = calloc(1, sizeof *t);
    parser *p = calloc(1, sizeof *p);
    jmp_buf *jb = malloc(sizeof *jb);
    if (!t || !p || !jb) { free(t); free(p); free(jb); vm_errf(e, "chat template: out of memory"); return NULL; }
    t->a.limit = CT_MAX_MEMORY; t->a.err = e; t->a.fail = jb;
    p->a = &t->a; p->e = e; p->fail = jb;
    if (setjmp(*jb)) {
        arena_free_all(&t->a);
        free(t); free(p); free(jb);
        return NULL;
    }
    // newline normalization (\r\n and \r -> \n) and dropping one trailing newline
    char *src = arena_alloc(&t->a, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (source[i] == '\r') { src[n++] = '\n'; if (i + 1 < len && source[i + 1] == '\n') i++; }
        else src[n++] = source[i];
    }
    if (n && src[n - 1] == '\n') n--;
    src[n] = 0;
    lex(p, src, n);
    t->root = parse_body(p, NULL, NULL);
    t->a.err = NULL; t->a.fail = NULL;
    free(p); free(jb);
    return t;
}

void vm_chat_template_free(vm_chat_template *t) {
    if (!t) return;
    arena_free_all(&t->a);
    free(t);
}

int vm_chat_template_render(const vm_chat_template *t, const json_t *context, char **out, vm_err *e) {
    *out = NULL;
    if (!t) return vm_errf(e, "chat template: no template");
    if (context && !json_is_object(context)) return vm_errf(e, "chat template: context must be a JSON object");
    rctx *c = calloc(1, sizeof *c);
    if (!c) return vm_errf(e, "chat template: out of memory");
    c->a.limit = CT_MAX_MEMORY; c->a.err = e; c->a.fail = &c->fail;
    c->e = e;
    if (setjmp(c->fail)) {
        arena_free_all(&c->a);
        free(c);
        return -1;
    }
    scope *globals = scope_new(c, NULL);
    static const struct { const char *name; fid id; } builtins[] = {
        {"range", F_RANGE}, {"namespace", F_NAMESPACE}, {"dict", F_DICT},
        {"raise_exception", F_RAISE}, {"strftime_now", F_STRFTIME},
    };
    for (size_t i = 0; i < VM_ARRAY_LEN(builtins); i++) scope_set(c, globals, builtins[i].name, mk_func(c, builtins[i].id, V_NONE));
    if (context) {
        const char *k; json_t *v;
        json_object_foreach((json_t *)context, k, v)
            scope_set(c, globals, arena_strndup(&c->a, k, strlen(k)), from_json(c, v, 0));
    }
    c->root = scope_new(c, globals);
    sbuf buf;
    sb_init(&buf, &c->a);
    c->out = &buf;
    exec_node(c, c->root, t->root);
    char *r = malloc(buf.n + 1);
    if (!r) { arena_free_all(&c->a); free(c); return vm_errf(e, "chat template: out of memory"); }
    if (buf.n) memcpy(r, buf.p, buf.n);
    r[buf.n] = 0;
    arena_free_all(&c->a);
    free(c);
    *out = r;
    return 0;
}

char *vm_chat_template_render_json(const char *template_src, const char *context_json, char *err, size_t errlen) {
    vm_err e = {{0}};
    char *out = NULL;
    json_error_t je;
    json_t *ctx = context_json ? json_loads(context_json, JSON_DECODE_ANY, &je) : json_object();
    if (!ctx) vm_errf(&e, "context JSON: %s (line %d)", je.text, je.line);
    else {
        vm_chat_template *t = template_src ? vm_chat_template_parse(template_src, strlen(template_src), &e) : NULL;
        if (!template_src) vm_errf(&e, "chat template: no source");
        if (t && vm_chat_template_render(t, ctx, &out, &e) != 0) out = NULL;
        vm_chat_template_free(t);
        json_decref(ctx);
    }
    if (!out && err && errlen) snprintf(err, errlen, "%s", e.msg);
    return out;
}

// Weak so that another module may provide the same helper without a clash.
__attribute__((weak)) void vm_free_string(char *s) { free(s); }
