// chat.c - chat template source (override file, tokenizer_config.json,
// chat_template.jinja, GGUF metadata), message checks, and rendering through
// the tokenizer's Jinja renderer.
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "../loader/weights.h"
#include "server_internal.h"

#include "../tokenizer/chat_template.h"

#define MAX_TEMPLATE_BYTES (4u << 20)

static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static char *dup_n(const char *s, size_t n) {
    char *o = malloc(n + 1);
    if (!o) return NULL;
    memcpy(o, s, n);
    o[n] = 0;
    return o;
}

// tokenizer_config.json "bos_token": "<s>" or {"content": "<s>", ...}
static char *token_field(json_t *cfg, const char *key) {
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_is_string(v) ? strdup(json_string_value(v)) : NULL;
}

// "chat_template": "..." or [{"name": "default", "template": "..."}, ...]
static char *template_field(json_t *cfg) {
    json_t *v = json_object_get(cfg, "chat_template");
    if (json_is_string(v)) return strdup(json_string_value(v));
    if (json_is_array(v)) {
        size_t i; json_t *it; const char *first = NULL;
        json_array_foreach(v, i, it) {
            const char *name = json_string_value(json_object_get(it, "name"));
            const char *tpl = json_string_value(json_object_get(it, "template"));
            if (!tpl) continue;
            if (!first) first = tpl;
            if (name && !strcmp(name, "default")) return strdup(tpl);
        }
        if (first) return strdup(first);
    }
    return NULL;
}

static int load_hf(srv_chat *c, const char *dir, vm_err *e) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    json_error_t je;
    json_t *cfg = json_load_file(path, JSON_DECODE_INT_AS_REAL, &je);
    if (cfg) {
        if (!c->source) c->source = template_field(cfg);
        c->bos_token = token_field(cfg, "bos_token");
        c->eos_token = token_field(cfg, "eos_token");
        json_decref(cfg);
    }
    if (!c->source) {
        snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
        c->source = vm_read_file(path, NULL, MAX_TEMPLATE_BYTES, NULL);
    }
    (void)e;
    return 0;
}

static char *gguf_token_text(const vm_gguf *g, const char *id_key) {
    int64_t id;
    vm_gguf_array toks;
    if (vm_gguf_get_int(g, id_key, &id) != 0) return NULL;
    if (vm_gguf_get_array(g, "tokenizer.ggml.tokens", &toks) != 0 || toks.type != VM_GGUF_STRING ||
        !toks.strs || id < 0 || (uint64_t)id >= toks.n)
        return NULL;
    return dup_n(toks.strs[id].s, toks.strs[id].len);
}

static int load_gguf(srv_chat *c, const char *path, vm_err *e) {
    vm_weight_store *ws = vm_weights_open(path, e);
    if (!ws) return -1;
    const vm_gguf *g = vm_weights_gguf(ws);
    if (g) {
        vm_gguf_str s;
        if (!c->source && vm_gguf_get_str(g, "tokenizer.chat_template", &s) == 0)
            c->source = dup_n(s.s, s.len);
        c->bos_token = gguf_token_text(g, "tokenizer.ggml.bos_token_id");
        c->eos_token = gguf_token_text(g, "tokenizer.ggml.eos_token_id");
    }
    vm_weights_free(ws);
    return 0;
}

int srv_chat_load(srv_chat *c, const char *model_path, const char *override_file,
                  vm_engine *eng, vm_err *e) {
    memset(c, 0, sizeof *c);
    (void)eng;
    if (override_file) {
        c->source = vm_read_file(override_file, NULL, MAX_TEMPLATE_BYTES, e);
        if (!c->source) return -1;
    }
    size_t n = model_path ? strlen(model_path) : 0;
    int rc = 0;
    if (!model_path) rc = 0;
    else if (n > 5 && !strcmp(model_path + n - 5, ".gguf")) rc = load_gguf(c, model_path, e);
    else if (is_dir(model_path)) rc = load_hf(c, model_path, e);
    else {
        // a single .safetensors file: look beside it
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", model_path);
        char *slash = strrchr(dir, '/');
        if (slash) { *slash = 0; rc = load_hf(c, dir, e); }
        else rc = load_hf(c, ".", e);
    }
    if (rc != 0) { srv_chat_free(c); return -1; }
    if (c->source) {
        vm_err pe = {{0}};
        c->tpl = vm_chat_template_parse(c->source, strlen(c->source), &pe);
        if (!c->tpl) {
            snprintf(c->parse_error, sizeof c->parse_error, "%.500s", pe.msg);
            if (override_file) { vm_errf(e, "%s: %s", override_file, pe.msg); srv_chat_free(c); return -1; }
        }
    }
    return 0;
}

void srv_chat_free(srv_chat *c) {
    if (c->tpl) vm_chat_template_free(c->tpl);
    free(c->source); free(c->bos_token); free(c->eos_token);
    memset(c, 0, sizeof *c);
}

// ---------------------------------------------------------------- messages

// The URL of an image content part: {"type": "image_url", "image_url": {"url": ...}}
// (or "image_url": "..."); NULL when the part is not an image part.
static const char *image_part_url(json_t *part, bool *is_image) {
    const char *type = json_string_value(json_object_get(part, "type"));
    *is_image = type && (!strcmp(type, "image_url") || !strcmp(type, "image"));
    if (!*is_image) return NULL;
    json_t *iu = json_object_get(part, !strcmp(type, "image") ? "image" : "image_url");
    if (json_is_object(iu)) iu = json_object_get(iu, "url");
    return json_string_value(iu);
}

// Checks each message. Text-only content parts [{type:"text", text}] are flattened
// into a string (joined with "\n", as vLLM does for string-content templates);
// content with images stays a list of {"type": "text", "text"} and {"type": "image"}
// parts (vLLM's "openai" content format, which VLM templates iterate), and the
// image URLs are appended to images in order.
static json_t *normalize_messages(json_t *messages, json_t *images, srv_error *err) {
    if (!json_is_array(messages)) {
        srv_fail(err, 400, "messages", "'messages' must be a list of message objects");
        return NULL;
    }
    if (json_array_size(messages) == 0) {
        srv_fail(err, 400, "messages", "'messages' must contain at least one message");
        return NULL;
    }
    json_t *out = json_array();
    size_t i; json_t *m;
    json_array_foreach(messages, i, m) {
        if (!json_is_object(m)) {
            srv_fail(err, 400, "messages", "messages[%zu] must be an object", i);
            goto fail;
        }
        json_t *role = json_object_get(m, "role");
        if (!json_is_string(role)) {
            srv_fail(err, 400, "messages", "messages[%zu].role must be a string", i);
            goto fail;
        }
        // OpenAI's roles, "ipython" (Llama 3.x) and "tool_results" (Mistral) for tool results
        static const char *const roles[] = {"system", "developer", "user", "assistant", "tool",
                                            "function", "ipython", "tool_results"};
        const char *rs = json_string_value(role);
        bool known = false;
        for (size_t k = 0; k < sizeof roles / sizeof *roles && !known; k++) known = !strcmp(rs, roles[k]);
        if (!known) {
            srv_fail(err, 400, "messages", "messages[%zu].role '%.64s' is not one of system, developer, "
                     "user, assistant, tool, function, ipython, tool_results", i, rs);
            goto fail;
        }
        json_t *content = json_object_get(m, "content");
        if ((!content || json_is_null(content)) && strcmp(rs, "assistant")) { // an assistant turn may carry only tool_calls
            srv_fail(err, 400, "messages", "messages[%zu].content is required for role '%s'", i, rs);
            goto fail;
        }
        json_t *copy = json_deep_copy(m);
        if (json_is_array(content)) {
            size_t total = 0, j, n_img = 0; json_t *part;
            json_array_foreach(content, j, part) {
                bool is_image = false;
                const char *url = json_is_object(part) ? image_part_url(part, &is_image) : NULL;
                if (is_image) {
                    if (!url) {
                        json_decref(copy);
                        srv_fail(err, 400, "messages", "messages[%zu].content[%zu]: an image part needs "
                                 "\"image_url\": {\"url\": \"data:...\" or \"http(s)://...\"}", i, j);
                        goto fail;
                    }
                    n_img++;
                    continue;
                }
                const char *type = json_string_value(json_object_get(part, "type"));
                json_t *text = json_object_get(part, "text");
                if (!json_is_object(part) || !type || strcmp(type, "text") || !json_is_string(text)) {
                    json_decref(copy);
                    srv_fail(err, 400, "messages",
                             "messages[%zu].content[%zu]: only {\"type\": \"text\", \"text\": ...} "
                             "and {\"type\": \"image_url\", \"image_url\": {\"url\": ...}} parts are supported", i, j);
                    goto fail;
                }
                total += json_string_length(text) + 1;
            }
            if (n_img > 0) {
                json_t *parts = json_array();
                json_array_foreach(content, j, part) {
                    bool is_image;
                    const char *url = image_part_url(part, &is_image);
                    if (is_image) {
                        json_array_append_new(images, json_string(url));
                        json_array_append_new(parts, json_pack("{s:s}", "type", "image"));
                    } else {
                        json_array_append_new(parts, json_pack("{s:s,s:O}", "type", "text", "text",
                                                               json_object_get(part, "text")));
                    }
                }
                json_object_set_new(copy, "content", parts);
                json_array_append_new(out, copy);
                continue;
            }
            char *joined = malloc(total + 1), *q = joined;
            if (!joined) { json_decref(copy); srv_fail(err, 500, NULL, "out of memory"); goto fail; }
            json_array_foreach(content, j, part) {
                json_t *text = json_object_get(part, "text");
                if (j) *q++ = '\n';
                memcpy(q, json_string_value(text), json_string_length(text));
                q += json_string_length(text);
            }
            json_object_set_new(copy, "content", json_stringn_nocheck(joined, (size_t)(q - joined)));
            free(joined);
        } else if (content && !json_is_string(content) && !json_is_null(content)) {
            json_decref(copy);
            srv_fail(err, 400, "messages", "messages[%zu].content must be a string or a list of parts", i);
            goto fail;
        }
        json_array_append_new(out, copy);
    }
    return out;
fail:
    json_decref(out);
    return NULL;
}

char *srv_chat_render(const srv_chat *c, json_t *messages, json_t *tools,
                      bool add_generation_prompt, bool continue_final_message,
                      json_t *kwargs, json_t *images, srv_error *err) {
    json_t *msgs = normalize_messages(messages, images, err);
    if (!msgs) return NULL;
    if (continue_final_message && add_generation_prompt) {
        json_decref(msgs);
        srv_fail(err, 400, "continue_final_message",
                 "continue_final_message and add_generation_prompt cannot both be true");
        return NULL;
    }
    if (!c->source) {
        json_decref(msgs);
        srv_fail(err, 400, NULL,
                 "As of transformers v4.44, default chat template is no longer allowed, so you "
                 "must provide a chat template if the tokenizer does not define one.");
        return NULL;
    }
    char *out = NULL;
    if (!c->tpl) {
        json_decref(msgs);
        srv_fail(err, 400, NULL, "the chat template cannot be used: %s", c->parse_error);
        return NULL;
    }
    // Context: extra kwargs, then messages, tools, add_generation_prompt, bos/eos.
    json_t *ctx = json_object();
    if (kwargs) json_object_update(ctx, kwargs);
    json_object_set(ctx, "messages", msgs);
    json_object_set(ctx, "tools", tools ? tools : json_null());
    json_object_set_new(ctx, "add_generation_prompt", json_boolean(add_generation_prompt));
    json_object_set_new(ctx, "bos_token", json_string(c->bos_token ? c->bos_token : ""));
    json_object_set_new(ctx, "eos_token", json_string(c->eos_token ? c->eos_token : ""));
    vm_err e = {{0}};
    if (vm_chat_template_render(c->tpl, ctx, &out, &e) != 0) {
        out = NULL;
        const char *why = e.msg;
        if (!strncmp(why, "chat template error: ", 21)) why += 21;
        srv_fail(err, 400, "messages", "chat template error: %s", why);
    }
    json_decref(ctx);
    if (out && continue_final_message) {
        // cut the text after the final message's content (the template closes it)
        json_t *lastm = json_array_get(msgs, json_array_size(msgs) - 1);
        const char *content = json_string_value(json_object_get(lastm, "content"));
        if (content && *content) {
            char *pos = NULL, *p = out;
            while ((p = strstr(p, content))) { pos = p; p++; }
            if (pos) pos[strlen(content)] = 0;
        }
    }
    json_decref(msgs);
    return out;
}
