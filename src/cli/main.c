// main.c - the vllm-metal command line.
//   vllm-metal --model M [options] | vllm-metal serve M [options]   the server
//   vllm-metal generate --model M --prompt TEXT [sampling options]  through the engine
//   vllm-metal generate --model M --prompt-ids 1,2,3 [--max-tokens N] raw greedy ids on the CPU (debugging)
//   vllm-metal throughput --model M [--num-prompts N ...]           offline tokens/s
#include "engine/engine.h"
#include "model/session.h"
#include "server/server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef VLLM_METAL_VERSION
#define VLLM_METAL_VERSION "0.1.0"
#endif

static void usage(FILE *f) {
    fprintf(f,
            "usage: vllm-metal <command> [options]\n"
            "       vllm-metal --model PATH [serve options]   (OpenAI-compatible server; see --model x --help)\n"
            "       vllm-metal serve PATH [serve options]\n"
            "commands:\n"
            "  generate --model PATH --prompt TEXT [--max-tokens N --temperature T ...]\n"
            "           offline generation through the engine (generate --help for the flags)\n"
            "  generate --model PATH --prompt-ids 1,2,3 [--max-tokens 32] [--threads N]\n"
            "           greedy decoding straight through the model on the CPU backend (whatever\n"
            "           VLLM_MLX_DEVICE says); prints the token ids and the time per token (debugging)\n"
            "  throughput --model PATH [--num-prompts N --input-len N --output-len N]\n"
            "           N prompts at once through the engine; prints tokens/s\n"
            "  --version\n");
}

static int parse_ids(const char *s, int32_t **ids, int *n) {
    int cap = 16, count = 0;
    int32_t *v = malloc(sizeof(int32_t) * cap);
    if (!v) return -1;
    const char *p = s;
    while (*p) {
        char *end;
        long x = strtol(p, &end, 10);
        if (end == p || x < 0 || x > 0x7fffffff) { free(v); return -1; }
        if (count == cap) {
            cap *= 2;
            int32_t *nv = realloc(v, sizeof(int32_t) * cap);
            if (!nv) { free(v); return -1; }
            v = nv;
        }
        v[count++] = (int32_t)x;
        p = end;
        if (*p == ',') p++;
        else if (*p) { free(v); return -1; }
    }
    *ids = v;
    *n = count;
    return count > 0 ? 0 : -1;
}

static int cmd_generate(int argc, char **argv) {
    const char *model = NULL, *prompt_ids = NULL;
    int max_tokens = 32, threads = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--model") && val) { model = val; i++; }
        else if (!strcmp(a, "--prompt-ids") && val) { prompt_ids = val; i++; }
        else if (!strcmp(a, "--max-tokens") && val) { max_tokens = atoi(val); i++; }
        else if (!strcmp(a, "--threads") && val) { threads = atoi(val); i++; }
        else { fprintf(stderr, "generate: unknown or incomplete option %s\n", a); return 2; }
    }
    if (!model || !prompt_ids) { usage(stderr); return 2; }
    int32_t *ids; int n;
    if (parse_ids(prompt_ids, &ids, &n) != 0) {
        fprintf(stderr, "generate: --prompt-ids must be comma-separated token ids\n");
        return 2;
    }
    vm_err e = {{0}};
    double t0 = vm_now_seconds();
    vm_backend *be = vm_backend_cpu_create(threads, &e);
    vm_model *m = be ? vm_model_create(model, be, 512, &e) : NULL;
    vm_session *s = m ? vm_session_create(m, n + max_tokens, 16, &e) : NULL;
    int rc = 1;
    if (!s) { fprintf(stderr, "error: %s\n", e.msg); goto done; }
    double t_load = vm_now_seconds();
    // Greedy on the backend: each step hands back the next token's id, not
    // its logits (the argmax of the same logits)
    int32_t tok;
    if (vm_session_eval_greedy(s, ids, n, &tok, &e) != 0) { fprintf(stderr, "error: %s\n", e.msg); goto done; }
    double t_first = vm_now_seconds();
    printf("tokens:");
    for (int i = 0; i < max_tokens; i++) {
        printf("%s%d", i ? "," : " ", tok);
        fflush(stdout);
        const int32_t in = tok;
        if (i + 1 < max_tokens && vm_session_eval_greedy(s, &in, 1, &tok, &e) != 0) {
            fprintf(stderr, "\nerror: %s\n", e.msg); goto done;
        }
    }
    double t_end = vm_now_seconds();
    printf("\nload %.3f s, prompt %d tokens %.3f s (%.1f tok/s), first token at %.3f s, decode %.2f ms/token\n",
           t_load - t0, n, t_first - t_load, n / (t_first - t_load), t_first - t0,
           max_tokens > 1 ? (t_end - t_first) * 1000 / (max_tokens - 1) : 0.0);
    rc = 0;
done:
    vm_session_free(s);
    vm_model_free(m);
    if (be) be->destroy(be);
    free(ids);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    if (!strcmp(argv[1], "--version")) { printf("vllm-metal %s\n", VLLM_METAL_VERSION); return 0; }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) { usage(stdout); return 0; }
    if (!strcmp(argv[1], "generate")) {
        for (int i = 2; i < argc; i++)
            if (!strcmp(argv[i], "--prompt-ids")) return cmd_generate(argc - 2, argv + 2);
        return vm_cli_generate(argc - 1, argv + 1);
    }
    if (!strcmp(argv[1], "throughput")) return vm_cli_throughput(argc - 1, argv + 1);
    if (!strcmp(argv[1], "serve")) return vm_cli_serve(argc - 1, argv + 1);
    if (argv[1][0] == '-') return vm_cli_serve(argc, argv); // vllm-metal --model M ...
    fprintf(stderr, "vllm-metal: unknown command %s\n", argv[1]);
    usage(stderr);
    return 2;
}
