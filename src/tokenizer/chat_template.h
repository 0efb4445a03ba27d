// chat_template.h - a Jinja-subset interpreter for HF chat templates.
//
// Renders byte-identical to transformers' apply_chat_template, which runs
// jinja2's ImmutableSandboxedEnvironment with trim_blocks=True,
// lstrip_blocks=True and the loopcontrols extension, a `tojson` filter that is
// json.dumps(ensure_ascii=False, indent=..., separators=..., sort_keys=...),
// and the globals raise_exception(msg) and strftime_now(fmt).
//
// A construct we do not support (raw, call blocks, include, extends, an
// unknown filter or test, ...) fails at parse time with a message that names
// it and its line. Rendering is bounded: nesting depth, evaluation steps,
// memory and output size all have limits, so a hostile template errors out
// instead of hanging or blowing the stack.
#ifndef VM_CHAT_TEMPLATE_H
#define VM_CHAT_TEMPLATE_H

#include <stddef.h>
#include <jansson.h>

#include "common/common.h"

typedef struct vm_chat_template vm_chat_template;

// Parses a template (UTF-8, `len` bytes). NULL + e->msg on a syntax error or
// an unsupported construct ("line N: ...").
vm_chat_template *vm_chat_template_parse(const char *source, size_t len, vm_err *e);

// Renders with `context`, a JSON object whose keys become template variables:
// messages, tools, add_generation_prompt, bos_token, eos_token and any extra
// kwargs (pass "tools": null when there are none, as transformers does).
// On success *out is a malloc'd NUL-terminated string (free with free()) and
// 0 is returned; on error -1 and e->msg (raise_exception's message verbatim).
int vm_chat_template_render(const vm_chat_template *t, const json_t *context, char **out, vm_err *e);

void vm_chat_template_free(vm_chat_template *t);

// Convenience for tests (ctypes): parse + render from JSON text. Returns a
// malloc'd string, or NULL with the error message copied into err.
char *vm_chat_template_render_json(const char *template_src, const char *context_json,
                                   char *err, size_t errlen);

// Frees a string returned by vm_chat_template_render_json.
void vm_free_string(char *s);

#endif
