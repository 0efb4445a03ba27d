// platform.c - configuration from the environment (VLLM_METAL_BLOCK_SIZE,
// VLLM_METAL_MEMORY_FRACTION) and the memory budget for weights + KV cache.
#include <stdio.h>
#include <strings.h>
#include <stdlib.h>
#include <unistd.h>

#include "platform.h"
#include "backend/vulkan/vulkan_backend.h"

int vm_platform_valid_block_size(int bs) {
    return bs == 8 || bs == 16 || bs == 32 || bs == 64 || bs == 128;
}

int vm_platform_block_size(int requested, vm_err *e) {
    int bs = requested;
    if (bs <= 0) {
        const char *env = getenv("VLLM_METAL_BLOCK_SIZE");
        bs = 16;
        if (env && *env) {
            char *end;
            long v = strtol(env, &end, 10);
            if (*end || v <= 0 || v > 1024)
                return vm_errf(e, "VLLM_METAL_BLOCK_SIZE=%s is not a number; use 8, 16, 32, 64 or 128", env);
            bs = (int)v;
        }
    }
    if (!vm_platform_valid_block_size(bs))
        return vm_errf(e, "block size %d is not supported; use 8, 16, 32, 64 or 128 "
                          "(--block-size or VLLM_METAL_BLOCK_SIZE)", bs);
    return bs;
}

uint64_t vm_platform_physical_memory(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return 0;
    return (uint64_t)pages * (uint64_t)page;
}

uint64_t vm_platform_available_memory(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) { fclose(f); return (uint64_t)kb * 1024; }
        fclose(f);
    }
#ifdef _SC_AVPHYS_PAGES
    long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) return (uint64_t)pages * (uint64_t)page;
#endif
    return vm_platform_physical_memory();
}

static double gib(uint64_t b) { return (double)b / (1024.0 * 1024.0 * 1024.0); }

int vm_platform_kv_blocks(const char *fraction, uint64_t weight_bytes, size_t block_bytes,
                          int block_size, int max_model_len, int max_num_seqs, vm_err *e) {
    if (!fraction) fraction = getenv("VLLM_METAL_MEMORY_FRACTION");
    if (!fraction || !*fraction) fraction = "auto";
    if (block_bytes == 0 || block_size <= 0) return vm_errf(e, "invalid KV block geometry");
    uint64_t blocks_per_seq = (uint64_t)(max_model_len + block_size - 1) / (uint64_t)block_size;
    uint64_t min_blocks = blocks_per_seq + 1; // one full-length sequence + reserved block 0
    uint64_t min_bytes = weight_bytes + min_blocks * block_bytes;
    uint64_t kv_budget;

    if (!strcmp(fraction, "auto")) {
        uint64_t want = blocks_per_seq * (uint64_t)max_num_seqs + 1;
        uint64_t avail = vm_platform_available_memory();
        // keep 10% of what is available (and 512 MiB) for activations and the rest of the system
        uint64_t headroom = VM_MAX(avail / 10, (uint64_t)512 << 20);
        uint64_t usable = avail > weight_bytes + headroom ? avail - weight_bytes - headroom : 0;
        // On the CPU the KV cache shares memory with everything else on the machine:
        // auto takes at most half of what is available (pages are committed only
        // as blocks are first used; VLLM_METAL_MEMORY_FRACTION=0.x takes more).
        usable = VM_MIN(usable, avail / 2);
        uint64_t cap = usable / block_bytes;
        uint64_t n = VM_MIN(want, cap);
        if (n < min_blocks)
            return vm_errf(e, "the model does not fit: it needs %.2f GiB (%.2f GiB weights + %.2f GiB "
                              "KV cache for one %d-token sequence) but only %.2f GiB is available; "
                              "lower --max-model-len or free memory",
                           gib(min_bytes), gib(weight_bytes), gib(min_blocks * block_bytes),
                           max_model_len, gib(avail > headroom ? avail - headroom : 0));
        return n > 0x7fffffff ? 0x7fffffff : (int)n;
    }

    char *end;
    double f = strtod(fraction, &end);
    if (*end || !(f > 0.0 && f <= 1.0))
        return vm_errf(e, "VLLM_METAL_MEMORY_FRACTION=%s: use \"auto\" or a fraction in (0, 1]", fraction);
    uint64_t total = (uint64_t)((double)vm_platform_physical_memory() * f);
    kv_budget = total > weight_bytes ? total - weight_bytes : 0;
    uint64_t n = kv_budget / block_bytes;
    if (n < min_blocks)
        return vm_errf(e, "the model does not fit: it needs %.2f GiB (%.2f GiB weights + %.2f GiB "
                          "KV cache for one %d-token sequence) but VLLM_METAL_MEMORY_FRACTION=%s gives "
                          "%.2f GiB; raise VLLM_METAL_MEMORY_FRACTION or lower --max-model-len",
                       gib(min_bytes), gib(weight_bytes), gib(min_blocks * block_bytes),
                       max_model_len, fraction, gib(total));
    return n > 0x7fffffff ? 0x7fffffff : (int)n;
}

vm_backend *vm_platform_create_backend(int n_threads, vm_err *e) {
    const char *dev = getenv("VLLM_MLX_DEVICE");
    if (!dev || !*dev) dev = "gpu";
    if (!strcasecmp(dev, "cpu")) return vm_backend_cpu_create(n_threads, e);
    if (strcasecmp(dev, "gpu")) {
        vm_errf(e, "VLLM_MLX_DEVICE=%s: expected gpu or cpu", dev);
        return NULL;
    }
    const char *hint = getenv("VLLM_METAL_VULKAN_DEVICE");
    vm_err ve = {{0}};
    vm_backend *be = vm_backend_vulkan_create(hint && *hint ? hint : NULL, &ve);
    if (be && (!vm_backend_vulkan_is_software(be) || (hint && *hint))) {
        fprintf(stderr, "vllm-metal: GPU backend on %s\n", vm_backend_vulkan_device_name(be));
        return be;
    }
    if (be) {
        snprintf(ve.msg, sizeof ve.msg, "only a software Vulkan device (%s) is present",
                 vm_backend_vulkan_device_name(be));
        be->destroy(be);
    }
    fprintf(stderr, "WARNING: VLLM_MLX_DEVICE=gpu: no GPU device (%s); using the CPU\n", ve.msg);
    return vm_backend_cpu_create(n_threads, e);
}
