/* vllm_metal.h - the public C API of libvllm_metal.
 *
 * A small, stable surface over the serving engine, made to be called from C
 * and through ctypes/FFI: opaque handles, JSON strings in and out, plain
 * int32 arrays for token ids, and one error string per thread.
 *
 *   vllm_metal_engine *eng = vllm_metal_engine_create("{\"model\": \"HuggingFaceTB/SmolLM2-135M-Instruct\"}");
 *   if (!eng) { fprintf(stderr, "%s\n", vllm_metal_last_error()); return 1; }
 *   char *out = vllm_metal_generate(eng, "{\"prompt\": \"The capital of France is\"}",
 *                                   "{\"max_tokens\": 16, \"temperature\": 0}");
 *   puts(out);             // {"text": ..., "token_ids": [...], "finish_reason": ..., "usage": {...}}
 *   vllm_metal_free(out);
 *   vllm_metal_engine_free(eng);
 *
 * Conventions
 *   - Functions that return a pointer return NULL on failure; functions that
 *     return int return -1 on failure. Then vllm_metal_last_error() says why
 *     (the message of the calling thread's last failure).
 *   - Every char* returned is malloc'd, NUL-terminated UTF-8: release it with
 *     vllm_metal_free().
 *   - An engine is safe to use from many threads at once: requests submitted
 *     together are batched by its scheduler (it steps on its own thread).
 *   - Nothing here calls exit() or prints to stdout. Model downloads print a
 *     progress line on stderr.
 *
 * Link: pkg-config --cflags --libs vllm-metal
 */
#ifndef VLLM_METAL_H
#define VLLM_METAL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VLLM_METAL_VERSION_MAJOR 0
#define VLLM_METAL_VERSION_MINOR 1
#define VLLM_METAL_VERSION_PATCH 0
#define VLLM_METAL_VERSION_STRING "0.1.0"
/* Bumped when a function below changes meaning or signature. */
#define VLLM_METAL_API_VERSION 1

typedef struct vllm_metal_engine vllm_metal_engine;

/* "0.1.0" (static string). */
const char *vllm_metal_version(void);
/* VLLM_METAL_API_VERSION of the library actually loaded. */
int vllm_metal_api_version(void);

/* The calling thread's last error message ("" if none). Valid until the next
 * failing call on this thread. */
const char *vllm_metal_last_error(void);

/* Releases any string or buffer returned by this library (NULL is fine). */
void vllm_metal_free(void *p);

/* ------------------------------------------------------------------ engine */

/* Creates an engine from a JSON object of engine arguments (vLLM's names):
 *   "model"                  (required) a local path (HF folder, .safetensors, .gguf)
 *                            or a Hugging Face Hub name "org/name[@revision][:file.gguf]"
 *   "max_model_len"          int, default: the model's context length
 *   "block_size"             8/16/32/64/128, default 16
 *   "max_num_seqs"           int, default 256
 *   "max_num_batched_tokens" int, default 2048
 *   "enable_prefix_caching"  bool, default true
 *   "enable_chunked_prefill" bool, default true
 *   "gpu_memory_utilization" / "memory_fraction"  number or "auto"
 *   "num_kv_blocks"          int, 0 = from the memory budget
 *   "max_logprobs"           int, default 20
 *   "threads"                CPU threads, 0 = all cores
 *   "chat_template"          a chat template (Jinja source) replacing the model's
 * Unknown keys are an error. NULL on failure. */
vllm_metal_engine *vllm_metal_engine_create(const char *engine_args_json);
void vllm_metal_engine_free(vllm_metal_engine *eng);

/* {"model": "<as given>", "model_path": "<resolved local path>", "vocab_size": N,
 *  "max_model_len": N, "block_size": N, "num_kv_blocks": N, "has_tokenizer": bool,
 *  "has_chat_template": bool, "eos_token_ids": [...], "version": "0.1.0"} */
char *vllm_metal_engine_info(vllm_metal_engine *eng);

/* {"num_running", "num_waiting", "num_kv_blocks", "num_free_blocks", "kv_usage",
 *  "prefix_cache_queries", "prefix_cache_hits", "num_preemptions", "prompt_tokens",
 *  "generation_tokens", "num_steps", "requests_finished"} */
char *vllm_metal_engine_stats(vllm_metal_engine *eng);

/* ------------------------------------------------------------------ generation */

/* Runs one request to completion.
 * request_json, one of:
 *   {"prompt": "text"}                          tokenized with the model's special tokens
 *   {"prompt_token_ids": [1, 2, 3]}
 *   {"messages": [{"role": "user", "content": "hi"}, ...],
 *    "add_generation_prompt": true, "chat_template_kwargs": {...}}
 *                                               rendered with the model's chat template
 * params_json: vLLM SamplingParams (NULL or "" = defaults): n is 1 here; temperature,
 *   top_p, top_k, min_p, presence_penalty, frequency_penalty, repetition_penalty,
 *   seed, max_tokens (default 16, as vLLM), min_tokens, ignore_eos, logprobs,
 *   stop (string or list), stop_token_ids, skip_special_tokens,
 *   include_stop_str_in_output, logit_bias ({"id": bias}), allowed_token_ids, bad_words.
 * Returns {"text": "...", "token_ids": [...], "finish_reason": "stop"|"length"|"abort",
 *          "stop_reason": "<stop string>"|<token id>|null, "prompt": "<rendered prompt>",
 *          "prompt_token_ids": [...],
 *          "usage": {"prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"},
 *          "logprobs": [[{"token_id", "logprob", "rank"}, ...], ...] (when asked)}
 * NULL on failure (bad JSON, bad parameters, prompt too long, engine error). */
char *vllm_metal_generate(vllm_metal_engine *eng, const char *request_json, const char *params_json);

/* Token ids in, token ids out (no tokenizer needed). Writes at most cap generated
 * ids to out and returns how many were generated (may exceed cap), or -1.
 * finish_reason (optional, may be NULL) gets "stop", "length" or "abort". */
int vllm_metal_generate_ids(vllm_metal_engine *eng, const int32_t *prompt_ids, int n_prompt,
                            const char *params_json, int32_t *out, int cap,
                            char *finish_reason, size_t finish_reason_cap);

/* ------------------------------------------------------------------ tokenizer */

/* Encodes text into out (at most cap ids); returns the number of ids (may exceed cap) or -1. */
int vllm_metal_tokenize(vllm_metal_engine *eng, const char *text, int add_special_tokens,
                        int32_t *out, int cap);
/* Decodes ids to text; NULL on failure. */
char *vllm_metal_detokenize(vllm_metal_engine *eng, const int32_t *ids, int n, int skip_special_tokens);
/* Renders {"messages": [...], "add_generation_prompt": true, "tools": ..., kwargs...}
 * with the model's chat template; NULL on failure (e.g. no template). */
char *vllm_metal_apply_chat_template(vllm_metal_engine *eng, const char *request_json);

/* ------------------------------------------------------------------ models */

/* Resolves a model name to a local path without loading it: a local path is
 * returned as is; a Hub name "org/name[@revision][:file.gguf]" is downloaded into
 * (or found in) the Hugging Face cache, honouring HF_ENDPOINT, HF_TOKEN,
 * HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE=1. NULL on failure
 * (e.g. "model org/name not found on the Hub (404)"). */
char *vllm_metal_resolve_model(const char *name);

#ifdef __cplusplus
}
#endif

#endif /* VLLM_METAL_H */
