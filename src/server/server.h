// server.h - the OpenAI-compatible HTTP server (vLLM's `vllm serve` surface).
//
//   vllm-metal --model PATH [options]     or     vllm-metal serve PATH [options]
//
// HTTP is libmicrohttpd (one thread per connection), JSON is jansson. The
// server talks to the engine only through vm_engine_submit and the request's
// vm_stream; it never touches the scheduler or the model.
#ifndef VM_SERVER_H
#define VM_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "../engine/engine.h"

typedef struct vm_server_config {
    const char *host;               // default "127.0.0.1"
    int port;                       // default 8000
    const char *api_key;            // NULL: no auth (flag, else VLLM_API_KEY)
    const char *served_model_name;  // NULL: the model path
    const char *model_aliases[8];   // more names from --served-model-name A B C
    int n_model_aliases;
    const char *chat_template;      // file overriding the model's template (NULL: model's)
    int has_seed;
    uint64_t seed;                  // default seed for requests that give none
    size_t max_body_bytes;          // request bodies above this get 413 (default 32 MiB)
    int debug;                      // VLLM_METAL_DEBUG: log every request
    vm_engine_args engine;
} vm_server_config;

void vm_server_config_init(vm_server_config *c);

typedef struct vm_server vm_server;

// Starts listening at once (/health answers 503 until the model is loaded).
vm_server *vm_server_start(const vm_server_config *c, vm_err *e);
// Loads the model into a started server (progress on stderr); /health turns 200.
int vm_server_load(vm_server *s, vm_err *e);
// Serves an engine someone else made (tests, embedding). The server takes ownership.
int vm_server_attach_engine(vm_server *s, vm_engine *eng, vm_err *e);
int vm_server_port(const vm_server *s);
void vm_server_stop(vm_server *s); // stops listening, aborts what is running, frees

// CLI entry: argv[0] is "serve" (or the program name); parses flags and env,
// serves until SIGINT/SIGTERM. Returns the process exit code.
int vm_cli_serve(int argc, char **argv);

#endif
