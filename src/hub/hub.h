// hub.h - models by Hugging Face Hub name.
//
// "org/name", "org/name@revision" or "org/name@revision:file.gguf" (revision and
// file both optional: "org/name:file.gguf" works too) is resolved through the
// Hub's HTTP API into the standard Hugging Face cache, shared with
// huggingface_hub and transformers:
//
//   $HF_HOME/hub/models--org--name/      (HF_HOME defaults to ~/.cache/huggingface;
//       refs/<revision>                    HF_HUB_CACHE overrides the hub/ folder)
//       blobs/<etag>                       LFS etags are the sha256 of the content
//       blobs/<etag>.incomplete            partial download, resumed with Range
//       snapshots/<commit sha>/<file>  ->  ../../blobs/<etag>
//
// Only the files a model needs are fetched: config.json, generation_config.json,
// tokenizer.json, tokenizer_config.json, special_tokens_map.json,
// chat_template.jinja, and the weights: model.safetensors.index.json and the
// shards it names, or the top-level *.safetensors, or else one GGUF (Q4_1, Q8_0,
// Q4_0, Q4_K_M, F16, BF16, F32 in that order of preference, unless ":file" names it).
//
// Environment: HF_ENDPOINT (default https://huggingface.co), HF_TOKEN (else the
// file $HF_HOME/token) sent as "Authorization: Bearer", HF_HUB_OFFLINE=1 (no
// network: resolve from refs/ and snapshots/ only), HF_HOME, HF_HUB_CACHE.
// A model whose snapshot is complete in the cache resolves with no network
// at all; "@<40-hex commit>" pins a revision.
#ifndef VM_HUB_H
#define VM_HUB_H

#include <stddef.h>

#include "../common/common.h"

// 1 when name is not an existing local path and has the shape org/name[@rev][:file].
int vm_hub_is_hub_name(const char *name);

// Resolves a model name to a local path. An existing local path is copied as is.
// A Hub name is fetched (or found in the cache) and out_path gets the snapshot
// folder (safetensors models) or the snapshot's .gguf file. Progress goes to
// stderr. Returns 0, or -1 with a message (e.g. "model org/name not found on the
// Hub (404)"). Thread-safe; no global state besides curl_global_init once.
int vm_hub_resolve(const char *name, char *out_path, size_t n, vm_err *e);

#endif
