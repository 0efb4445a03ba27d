// cli_serve.c - `vllm-metal --model M` / `vllm-metal serve M`: flags and
// environment (flags win; a bad value stops start-up naming it), then serve
// until SIGINT/SIGTERM.
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

#include "server_internal.h"

static void serve_usage(FILE *f) {
    fprintf(f,
        "usage: vllm-metal --model PATH [options]\n"
        "       vllm-metal serve PATH [options]\n"
        "\n"
        "Serves PATH (HF or MLX directory, .safetensors or .gguf) with an OpenAI-compatible API:\n"
        "/v1/chat/completions, /v1/completions, /v1/models, /tokenize, /detokenize,\n"
        "/health, /version, /metrics.\n"
        "\n"
        "options:\n"
        "  --model PATH                  the model to serve\n"
        "  --host HOST                   address to listen on (default 127.0.0.1, local only;\n"
        "                                use 0.0.0.0 to accept other machines)\n"
        "  --port PORT                   port (default 8000)\n"
        "  --api-key KEY                 require 'Authorization: Bearer KEY' on /v1 (env VLLM_API_KEY)\n"
        "  --served-model-name NAME...   the model name(s) clients use (default: PATH); the first\n"
        "                                is reported in responses and metrics\n"
        "  --max-model-len N             context length (default: the model's); 4k = 4000, 4K = 4096\n"
        "  --max-num-seqs N              sequences per step (default 256)\n"
        "  --max-num-batched-tokens N    tokens per step (default 2048)\n"
        "  --block-size N                KV cache block size: 8, 16, 32, 64 or 128 (env VLLM_METAL_BLOCK_SIZE; default 16)\n"
        "  --enable-prefix-caching       reuse KV blocks of shared prompt prefixes (default)\n"
        "  --no-enable-prefix-caching    turn prefix caching off\n"
        "  --chat-template FILE          Jinja chat template overriding the model's\n"
        "  --seed N                      seed for requests that give none (default: random)\n"
        "  --dtype auto|float32|float16|bfloat16|half|float\n"
        "                                accepted for compatibility; activations are float32\n"
        "  --gpu-memory-utilization F    fraction of memory for weights + KV cache, in (0, 1]\n"
        "                                (env VLLM_METAL_MEMORY_FRACTION, or 'auto')\n"
        "  --max-logprobs N              largest logprobs/top_logprobs allowed (default 20)\n"
        "  --num-gpu-blocks-override N   KV cache blocks to allocate (default: from the memory budget)\n"
        "  --threads N                   CPU backend threads (default: all cores)\n"
        "  -h, --help                    this text\n"
        "  --version                     print the version\n"
        "\n"
        "environment:\n"
        "  VLLM_METAL_MEMORY_FRACTION    'auto' or a fraction in (0, 1]\n"
        "  VLLM_METAL_USE_MLX            1/0 (accepted; the C backends are always used)\n"
        "  VLLM_MLX_DEVICE               gpu (default: a Vulkan GPU if present, else the CPU) or cpu\n"
        "  VLLM_METAL_BLOCK_SIZE         8, 16, 32, 64 or 128\n"
        "  VLLM_METAL_DEBUG              1 to log every request\n"
        "  VLLM_API_KEY                  as --api-key\n");
}

// ---------------------------------------------------------------- value parsing

static int parse_long(const char *name, const char *v, long long lo, long long hi, long long *out) {
    if (!v || !*v) { fprintf(stderr, "error: %s needs a value\n", name); return -1; }
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    long long mult = 1;
    if (end != v && (*end == 'k' || *end == 'm')) { mult = *end == 'k' ? 1000 : 1000000; end++; }
    else if (end != v && (*end == 'K' || *end == 'M')) { mult = *end == 'K' ? 1024 : 1048576; end++; }
    if (end == v || *end || errno || x < lo / mult || x > hi / mult) {
        fprintf(stderr, "error: invalid value '%s' for %s (expected an integer in [%lld, %lld])\n", v, name, lo, hi);
        return -1;
    }
    *out = x * mult;
    return 0;
}

static int parse_fraction(const char *name, const char *v, double *out) {
    char *end;
    double x = v ? strtod(v, &end) : 0;
    if (!v || end == v || *end || !(x > 0 && x <= 1)) {
        fprintf(stderr, "error: invalid value '%s' for %s (expected a number in (0, 1])\n", v ? v : "", name);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_bool_env(const char *name, int *out) {
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    if (!strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on")) *out = 1;
    else if (!strcmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcasecmp(v, "off")) *out = 0;
    else {
        fprintf(stderr, "error: invalid value '%s' for %s (expected 1/0, true/false)\n", v, name);
        return -1;
    }
    return 0;
}

static bool valid_block_size(long long b) { return b == 8 || b == 16 || b == 32 || b == 64 || b == 128; }

// ---------------------------------------------------------------- entry

typedef struct load_job {
    vm_server *srv;
    double t0, t1;
    int rc;
    vm_err err;
    atomic_int done;
} load_job;

static void *load_main(void *arg) {
    load_job *j = arg;
    j->rc = vm_server_load(j->srv, &j->err);
    j->t1 = vm_now_seconds();
    atomic_store(&j->done, 1);
    return NULL;
}

int vm_cli_serve(int argc, char **argv) {
    vm_server_config cfg;
    vm_server_config_init(&cfg);
    const char *model = NULL;
    const char *mem_flag = NULL, *block_flag = NULL;
    char mem_buf[32];
    int i = 1;
    if (argc >= 2 && argv[1][0] != '-') { model = argv[1]; i = 2; } // serve PATH
    for (; i < argc; i++) {
        char *a = argv[i];
        char *val = NULL;
        char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
        char name[64];
        if (eq) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - a), a);
            val = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a);
        }
        // the flags that take no value
        if (!strcmp(name, "-h") || !strcmp(name, "--help")) { serve_usage(stdout); return 0; }
        if (!strcmp(name, "--version")) { printf("vllm-metal %s\n", VLLM_METAL_VERSION); return 0; }
        if (!strcmp(name, "--enable-prefix-caching")) { cfg.engine.enable_prefix_caching = 1; continue; }
        if (!strcmp(name, "--no-enable-prefix-caching")) { cfg.engine.enable_prefix_caching = 0; continue; }
        if (!strcmp(name, "--trust-remote-code") || !strcmp(name, "--disable-log-requests") ||
            !strcmp(name, "--disable-log-stats") || !strcmp(name, "--enable-log-requests"))
            continue; // accepted for compatibility
        if (!val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "error: %s needs a value (see --help)\n", name);
                return 2;
            }
            val = argv[++i];
        }
        long long x;
        if (!strcmp(name, "--model")) model = val;
        else if (!strcmp(name, "--host")) cfg.host = val;
        else if (!strcmp(name, "--port")) { if (parse_long(name, val, 0, 65535, &x)) return 2; cfg.port = (int)x; }
        else if (!strcmp(name, "--api-key")) cfg.api_key = val;
        else if (!strcmp(name, "--served-model-name")) {
            cfg.served_model_name = val;
            while (!eq && i + 1 < argc && argv[i + 1][0] != '-') { // vLLM takes several names
                if (cfg.n_model_aliases == (int)VM_ARRAY_LEN(cfg.model_aliases)) {
                    fprintf(stderr, "error: --served-model-name takes at most %d names\n",
                            (int)VM_ARRAY_LEN(cfg.model_aliases) + 1);
                    return 2;
                }
                cfg.model_aliases[cfg.n_model_aliases++] = argv[++i];
            }
        }
        else if (!strcmp(name, "--chat-template")) cfg.chat_template = val;
        else if (!strcmp(name, "--max-model-len")) { if (parse_long(name, val, 1, 1 << 30, &x)) return 2; cfg.engine.max_model_len = (int)x; }
        else if (!strcmp(name, "--max-num-seqs")) { if (parse_long(name, val, 1, 1 << 20, &x)) return 2; cfg.engine.max_num_seqs = (int)x; }
        else if (!strcmp(name, "--max-num-batched-tokens")) { if (parse_long(name, val, 1, 1 << 30, &x)) return 2; cfg.engine.max_num_batched_tokens = (int)x; }
        else if (!strcmp(name, "--max-logprobs")) { if (parse_long(name, val, 0, 1 << 20, &x)) return 2; cfg.engine.max_logprobs = (int)x; }
        else if (!strcmp(name, "--num-gpu-blocks-override")) { if (parse_long(name, val, 2, 1 << 30, &x)) return 2; cfg.engine.num_kv_blocks = (int)x; }
        else if (!strcmp(name, "--threads")) { if (parse_long(name, val, 0, 4096, &x)) return 2; cfg.engine.n_threads = (int)x; }
        else if (!strcmp(name, "--block-size")) block_flag = val;
        else if (!strcmp(name, "--seed")) {
            char *end;
            errno = 0;
            unsigned long long sd = strtoull(val, &end, 10);
            if (end == val || *end || errno || val[0] == '-') {
                fprintf(stderr, "error: invalid value '%s' for --seed (expected a non-negative integer)\n", val);
                return 2;
            }
            cfg.has_seed = 1; cfg.seed = sd;
        } else if (!strcmp(name, "--dtype")) {
            const char *ok[] = {"auto", "float32", "float16", "bfloat16", "half", "float"};
            bool found = false;
            for (size_t k = 0; k < VM_ARRAY_LEN(ok); k++) found |= !strcmp(val, ok[k]);
            if (!found) {
                fprintf(stderr, "error: invalid value '%s' for --dtype (auto, float32, float16, bfloat16, half, float)\n", val);
                return 2;
            }
        } else if (!strcmp(name, "--gpu-memory-utilization")) mem_flag = val;
        else {
            fprintf(stderr, "error: unknown option %s (see --help)\n", name);
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "error: no model given: vllm-metal --model PATH (or vllm-metal serve PATH)\n");
        return 2;
    }
    cfg.engine.model = model;

    // environment (flags beat variables)
    if (!cfg.api_key) {
        const char *k = getenv("VLLM_API_KEY");
        if (k && *k) cfg.api_key = k;
    }
    if (parse_bool_env("VLLM_METAL_DEBUG", &cfg.debug)) return 2;
    int use_mlx = 1;
    if (parse_bool_env("VLLM_METAL_USE_MLX", &use_mlx)) return 2;
    const char *dev = getenv("VLLM_MLX_DEVICE");
    if (dev && *dev) {
        if (strcasecmp(dev, "gpu") && strcasecmp(dev, "cpu")) {
            fprintf(stderr, "error: invalid value '%s' for VLLM_MLX_DEVICE (expected gpu or cpu)\n", dev);
            return 2;
        }
    }
    double frac;
    if (mem_flag) {
        if (parse_fraction("--gpu-memory-utilization", mem_flag, &frac)) return 2;
        snprintf(mem_buf, sizeof mem_buf, "%g", frac);
        cfg.engine.memory_fraction = mem_buf;
    } else {
        const char *v = getenv("VLLM_METAL_MEMORY_FRACTION");
        if (v && *v) {
            if (!strcasecmp(v, "auto")) cfg.engine.memory_fraction = "auto";
            else if (parse_fraction("VLLM_METAL_MEMORY_FRACTION", v, &frac)) return 2;
            else cfg.engine.memory_fraction = v;
        }
    }
    const char *bs_name = block_flag ? "--block-size" : "VLLM_METAL_BLOCK_SIZE";
    const char *bs = block_flag ? block_flag : getenv("VLLM_METAL_BLOCK_SIZE");
    if (bs && *bs) {
        long long b;
        if (parse_long(bs_name, bs, 1, 1 << 20, &b)) return 2;
        if (!valid_block_size(b)) {
            fprintf(stderr, "error: invalid value '%s' for %s (expected 8, 16, 32, 64 or 128)\n", bs, bs_name);
            return 2;
        }
        cfg.engine.block_size = (int)b;
    }
    if (cfg.chat_template) {
        FILE *f = fopen(cfg.chat_template, "rb");
        if (!f) {
            fprintf(stderr, "error: --chat-template %s: cannot open: %s\n", cfg.chat_template, strerror(errno));
            return 2;
        }
        fclose(f);
    }

    // Signals: handled by sigwait in this thread; every other thread blocks them.
    signal(SIGPIPE, SIG_IGN);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    vm_err e = {{0}};
    vm_server *srv = vm_server_start(&cfg, &e);
    if (!srv) { fprintf(stderr, "error: %s\n", e.msg); return 1; }
    fprintf(stderr, "INFO: loading model %s (listening on %s:%d; /health says 503 until ready) ...\n",
            model, cfg.host, vm_server_port(srv));
    // The model loads on its own thread so that Ctrl+C works meanwhile.
    load_job job = {.srv = srv, .t0 = vm_now_seconds()};
    pthread_t loader;
    if (pthread_create(&loader, NULL, load_main, &job) != 0) {
        fprintf(stderr, "error: cannot start the loader thread\n");
        vm_server_stop(srv);
        return 1;
    }
    bool loaded = false;
    for (;;) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        int sig = sigtimedwait(&sigs, NULL, &ts);
        if (sig == SIGINT || sig == SIGTERM) {
            if (!loaded) {
                // the loader cannot be interrupted; leave it to the process exit
                fprintf(stderr, "INFO: interrupted while loading the model\n");
                return 130;
            }
            fprintf(stderr, "INFO: shutting down (%s)\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
            break;
        }
        if (!loaded && atomic_load(&job.done)) {
            pthread_join(loader, NULL);
            if (job.rc != 0) {
                fprintf(stderr, "error: cannot load %s: %s\n", model, job.err.msg);
                vm_server_stop(srv);
                return 1;
            }
            loaded = true;
            fprintf(stderr, "INFO: model loaded in %.1f s (max_model_len %d, %d KV blocks of %d tokens)\n",
                    job.t1 - job.t0, srv->max_model_len, vm_engine_num_kv_blocks(srv->eng),
                    vm_engine_get_args(srv->eng)->block_size);
            bool v6 = strchr(cfg.host, ':') != NULL;
            fprintf(stderr, "INFO: vllm-metal %s serving '%s' at http://%s%s%s:%d/v1 (press Ctrl+C to stop)\n",
                    VLLM_METAL_VERSION, srv->model_name, v6 ? "[" : "", cfg.host, v6 ? "]" : "",
                    vm_server_port(srv));
        }
    }
    vm_server_stop(srv);
    return 0;
}
