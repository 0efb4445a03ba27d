// detok.c - incremental detokenization (the prefix/read offset scheme of HF
// and vLLM) with stop strings. A token's text is the difference between
// decoding a short window with and without it, so leading-space rules and
// multi-token UTF-8 characters come out right; text is held back while it ends
// in an incomplete UTF-8 sequence, and the last (longest stop - 1) bytes are
// held back while streaming so no text past a stop string is ever emitted.
#include <stdlib.h>

#include "engine_internal.h"

#define DETOK_CONTEXT 5 // prompt tokens kept as decoding context

static int push_id(vm_seq_detok *d, int32_t t) {
    if (d->n_ids == d->cap_ids) {
        int nc = d->cap_ids ? d->cap_ids * 2 : 64;
        int32_t *p = realloc(d->ids, (size_t)nc * sizeof *p);
        if (!p) return -1;
        d->ids = p; d->cap_ids = nc;
    }
    d->ids[d->n_ids++] = t;
    return 0;
}

static int append_text(vm_seq_detok *d, const char *s, size_t n) {
    return vm_text_append(&d->text, &d->len, &d->cap, s, n);
}

void vm_seq_detok_init(vm_seq_detok *d, const int32_t *prompt, int n_prompt, int stop_buffer) {
    memset(d, 0, sizeof *d);
    int k = VM_MIN(n_prompt, DETOK_CONTEXT);
    for (int i = n_prompt - k; i < n_prompt; i++) push_id(d, prompt[i]);
    d->prefix_offset = 0;
    d->read_offset = d->n_ids;
    d->stop_buffer = stop_buffer;
    append_text(d, "", 0);
}

void vm_seq_detok_free(vm_seq_detok *d) {
    free(d->ids); free(d->text);
    memset(d, 0, sizeof *d);
}

// Does s end in an incomplete UTF-8 sequence or a replacement character?
static bool ends_incomplete(const char *s, size_t n) {
    if (n >= 3 && (unsigned char)s[n - 3] == 0xEF && (unsigned char)s[n - 2] == 0xBF &&
        (unsigned char)s[n - 1] == 0xBD)
        return true;
    for (size_t back = 1; back <= 4 && back <= n; back++) {
        unsigned char c = (unsigned char)s[n - back];
        if ((c & 0xC0) == 0x80) continue; // continuation byte
        size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
        return back < need;
    }
    return false;
}

int vm_seq_detok_add(vm_seq_detok *d, vm_text_codec *c, int32_t tok, int skip_special, int decode,
                 const char *const *stops, int n_stops, int include_stop) {
    push_id(d, tok);
    if (!decode || !c || !c->decode) return -1;
    char *prefix = c->decode(c->ctx, d->ids + d->prefix_offset, d->read_offset - d->prefix_offset, skip_special);
    char *full = c->decode(c->ctx, d->ids + d->prefix_offset, d->n_ids - d->prefix_offset, skip_special);
    size_t old_len = d->len;
    if (prefix && full) {
        size_t lp = strlen(prefix), lf = strlen(full);
        if (lf > lp && !ends_incomplete(full, lf)) {
            // normally prefix is a prefix of full; if not, take full's tail past the common part
            size_t common = 0;
            while (common < lp && full[common] == prefix[common]) common++;
            append_text(d, full + common, lf - common);
            d->prefix_offset = d->read_offset;
            d->read_offset = d->n_ids;
        }
    }
    free(prefix); free(full);
    if (d->len == old_len || n_stops == 0) return -1;

    // earliest stop string that now appears, searching only where new text can complete one
    int found = -1;
    size_t found_at = 0;
    for (int i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        if (!sl) continue;
        size_t from = old_len >= sl - 1 ? old_len - (sl - 1) : 0;
        char *hit = memmem(d->text + from, d->len - from, stops[i], sl);
        if (hit && (found < 0 || (size_t)(hit - d->text) < found_at)) {
            found = i; found_at = (size_t)(hit - d->text);
        }
    }
    if (found >= 0) {
        d->len = include_stop ? found_at + strlen(stops[found]) : found_at;
        d->text[d->len] = 0;
        if (d->emitted > d->len) d->emitted = d->len;
    }
    return found;
}

char *vm_seq_detok_take(vm_seq_detok *d, bool finished) {
    size_t limit = d->len;
    if (!finished) {
        limit = d->len > (size_t)d->stop_buffer ? d->len - (size_t)d->stop_buffer : 0;
        while (limit > d->emitted && limit < d->len && ((unsigned char)d->text[limit] & 0xC0) == 0x80)
            limit--; // never split a UTF-8 character
    }
    if (limit < d->emitted) limit = d->emitted;
    size_t n = limit - d->emitted;
    char *out = malloc(n + 1);
    if (!out) return NULL;
    memcpy(out, d->text + d->emitted, n);
    out[n] = 0;
    d->emitted = limit;
    return out;
}
