// vulkan_backend.c - vm_backend on Vulkan compute.
//
// Buffers are plain VkBuffers reached by shaders through 64-bit device
// addresses passed in push constants (VK_KHR_buffer_device_address, core in
// 1.2), so there are no descriptor sets. Ops are recorded into a command list
// (barriers only on buffer hazards) and submitted when the host must see or
// replace memory: buf_read, a buf_write of more than UPDATE_MAX bytes. Other
// buf_writes are recorded in order too (their bytes go to a host-visible
// upload buffer, copied in by the list), also when nothing is pending yet
// (they open the recording), so the host's call order is the GPU's and a
// decode step (metadata in, ops, ids or logits out) is one submit. At the
// submit, a command buffer recorded earlier with the same list (same
// pipelines, push constants, grids, barriers and copies) is reused; only a
// new list is recorded into Vulkan (CB_CACHE of them are kept; destroying any
// buffer drops them). sync does not submit: it reports the first failure
// recorded so far; a failure of the submit itself (device lost) is reported
// by the next sync.
//
// Memory: on a discrete GPU every buffer is device-local and the host goes
// through a staging buffer. Where device-local memory is also host-visible
// and the device is not discrete (Apple unified memory through MoltenVK,
// integrated GPUs, lavapipe) buffers are mapped and written in place, with
// no staging copy.
//
// Weights are uploaded once by weight_prepare in the layout the shaders read
// (shaders/weight.glsl): f32/f16/bf16 as stored; GGUF Q4_0/Q4_1 repacked as
// 4-bit affine groups of 32 and Q8_0 as 8-bit affine (q+128, bias -128d),
// MLX affine words as stored with f32 scales/biases. Matmuls use f32
// activations (the CPU's VLLM_METAL_Q8_ACTIVATIONS=0 arithmetic); with
// VLLM_METAL_Q8_ACTIVATIONS=1 GGUF block weights take llama.cpp's 8-bit
// activations as values (q8act.comp, with its f16 Q4_1 block sums: per matmul
// within 5e-5 of the CPU's integer dots). Attention computes in f32; over an f16 cache
// q is rounded to f16 first as on the CPU (the CPU rounds the softmax weights
// to f16 too; we do not).
#include "vulkan_backend.h"

#ifndef VM_HAVE_VULKAN

vm_backend *vm_backend_vulkan_create(const char *device_hint, vm_err *e) {
    (void)device_hint;
    vm_errf(e, "built without Vulkan (install libvulkan-dev and glslc, then rebuild)");
    return NULL;
}
const char *vm_backend_vulkan_device_name(const vm_backend *be) { (void)be; return ""; }
int vm_backend_vulkan_is_software(const vm_backend *be) { (void)be; return 0; }

#else

#include "../cpu/kernels.h"
#include "../../common/common.h"
#include "../../common/prof.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vulkan/vulkan.h>

// ---- embedded SPIR-V (made by mk/vulkan.mk) ---------------------------------

#define VK_SHADER_LIST(X)                                                                  \
    X(matvec1_f32) X(matvec1_f16) X(matvec1_bf16) X(matvec1_a4) X(matvec1_a8) X(matvec1_a2) \
    X(matvec1s_f32) X(matvec1s_f16) X(matvec1s_bf16) X(matvec1s_a4) X(matvec1s_a8) X(matvec1s_a2) \
    X(matvec4_f32) X(matvec4_f16) X(matvec4_bf16) X(matvec4_a4) X(matvec4_a8) X(matvec4_a2) \
    X(matvec8_f32) X(matvec8_f16) X(matvec8_bf16) X(matvec8_a4) X(matvec8_a8) X(matvec8_a2) \
    X(gemm64_f32) X(gemm64_f16) X(gemm64_bf16) X(gemm64_a4) X(gemm64_a8) X(gemm64_a2) \
    X(gemm32_f32) X(gemm32_f16) X(gemm32_bf16) X(gemm32_a4) X(gemm32_a8) X(gemm32_a2) \
    X(gemmcm_f16) X(gemmcm_bf16) X(gemmcm_a4) X(gemmcm_a8) \
    X(embed_f32) X(embed_f16) X(embed_bf16) X(embed_a4) X(embed_a8) X(embed_a2)            \
    X(rmsnorm) X(rope) X(cache_write_f32) X(cache_write_f16) X(attention_f32)              \
    X(attention_f16) X(add) X(swiglu) X(add_bias) X(get_rows) X(sample) X(splitk) X(rope_kv_f32) X(rope_kv_f16) X(q8act)

// (each array is written out below: an #include cannot sit inside a macro)
static const uint32_t spv_matvec1_f32[] = {
#include "matvec1_f32.inc"
};
static const uint32_t spv_matvec1_f16[] = {
#include "matvec1_f16.inc"
};
static const uint32_t spv_matvec1_bf16[] = {
#include "matvec1_bf16.inc"
};
static const uint32_t spv_matvec1_a4[] = {
#include "matvec1_a4.inc"
};
static const uint32_t spv_matvec1_a8[] = {
#include "matvec1_a8.inc"
};
static const uint32_t spv_matvec1_a2[] = {
#include "matvec1_a2.inc"
};
static const uint32_t spv_matvec1s_f32[] = {
#include "matvec1s_f32.inc"
};
static const uint32_t spv_matvec1s_f16[] = {
#include "matvec1s_f16.inc"
};
static const uint32_t spv_matvec1s_bf16[] = {
#include "matvec1s_bf16.inc"
};
static const uint32_t spv_matvec1s_a4[] = {
#include "matvec1s_a4.inc"
};
static const uint32_t spv_matvec1s_a8[] = {
#include "matvec1s_a8.inc"
};
static const uint32_t spv_matvec1s_a2[] = {
#include "matvec1s_a2.inc"
};
static const uint32_t spv_matvec4_f32[] = {
#include "matvec4_f32.inc"
};
static const uint32_t spv_matvec4_f16[] = {
#include "matvec4_f16.inc"
};
static const uint32_t spv_matvec4_bf16[] = {
#include "matvec4_bf16.inc"
};
static const uint32_t spv_matvec4_a4[] = {
#include "matvec4_a4.inc"
};
static const uint32_t spv_matvec4_a8[] = {
#include "matvec4_a8.inc"
};
static const uint32_t spv_matvec4_a2[] = {
#include "matvec4_a2.inc"
};
static const uint32_t spv_matvec8_f32[] = {
#include "matvec8_f32.inc"
};
static const uint32_t spv_matvec8_f16[] = {
#include "matvec8_f16.inc"
};
static const uint32_t spv_matvec8_bf16[] = {
#include "matvec8_bf16.inc"
};
static const uint32_t spv_matvec8_a4[] = {
#include "matvec8_a4.inc"
};
static const uint32_t spv_matvec8_a8[] = {
#include "matvec8_a8.inc"
};
static const uint32_t spv_matvec8_a2[] = {
#include "matvec8_a2.inc"
};
static const uint32_t spv_gemm64_f32[] = {
#include "gemm64_f32.inc"
};
static const uint32_t spv_gemm64_f16[] = {
#include "gemm64_f16.inc"
};
static const uint32_t spv_gemm64_bf16[] = {
#include "gemm64_bf16.inc"
};
static const uint32_t spv_gemm64_a4[] = {
#include "gemm64_a4.inc"
};
static const uint32_t spv_gemm64_a8[] = {
#include "gemm64_a8.inc"
};
static const uint32_t spv_gemm64_a2[] = {
#include "gemm64_a2.inc"
};
static const uint32_t spv_gemm32_f32[] = {
#include "gemm32_f32.inc"
};
static const uint32_t spv_gemm32_f16[] = {
#include "gemm32_f16.inc"
};
static const uint32_t spv_gemm32_bf16[] = {
#include "gemm32_bf16.inc"
};
static const uint32_t spv_gemm32_a4[] = {
#include "gemm32_a4.inc"
};
static const uint32_t spv_gemm32_a8[] = {
#include "gemm32_a8.inc"
};
static const uint32_t spv_gemm32_a2[] = {
#include "gemm32_a2.inc"
};
static const uint32_t spv_gemmcm_f16[] = {
#include "gemmcm_f16.inc"
};
static const uint32_t spv_gemmcm_bf16[] = {
#include "gemmcm_bf16.inc"
};
static const uint32_t spv_gemmcm_a4[] = {
#include "gemmcm_a4.inc"
};
static const uint32_t spv_gemmcm_a8[] = {
#include "gemmcm_a8.inc"
};
static const uint32_t spv_embed_f32[] = {
#include "embed_f32.inc"
};
static const uint32_t spv_embed_f16[] = {
#include "embed_f16.inc"
};
static const uint32_t spv_embed_bf16[] = {
#include "embed_bf16.inc"
};
static const uint32_t spv_embed_a4[] = {
#include "embed_a4.inc"
};
static const uint32_t spv_embed_a8[] = {
#include "embed_a8.inc"
};
static const uint32_t spv_embed_a2[] = {
#include "embed_a2.inc"
};
static const uint32_t spv_rmsnorm[] = {
#include "rmsnorm.inc"
};
static const uint32_t spv_rope[] = {
#include "rope.inc"
};
static const uint32_t spv_cache_write_f32[] = {
#include "cache_write_f32.inc"
};
static const uint32_t spv_cache_write_f16[] = {
#include "cache_write_f16.inc"
};
static const uint32_t spv_attention_f32[] = {
#include "attention_f32.inc"
};
static const uint32_t spv_attention_f16[] = {
#include "attention_f16.inc"
};
static const uint32_t spv_add[] = {
#include "add.inc"
};
static const uint32_t spv_swiglu[] = {
#include "swiglu.inc"
};
static const uint32_t spv_add_bias[] = {
#include "add_bias.inc"
};
static const uint32_t spv_get_rows[] = {
#include "get_rows.inc"
};
static const uint32_t spv_sample[] = {
#include "sample.inc"
};
static const uint32_t spv_splitk[] = {
#include "splitk.inc"
};
static const uint32_t spv_rope_kv_f32[] = {
#include "rope_kv_f32.inc"
};
static const uint32_t spv_rope_kv_f16[] = {
#include "rope_kv_f16.inc"
};
static const uint32_t spv_q8act[] = {
#include "q8act.inc"
};

enum {
#define X(name) SH_##name,
    VK_SHADER_LIST(X)
#undef X
    SH_COUNT
};

static const struct { const char *name; const uint32_t *code; size_t size; } shaders[SH_COUNT] = {
#define X(name) { #name, spv_##name, sizeof spv_##name },
    VK_SHADER_LIST(X)
#undef X
};

// Weight types of the shaders (WT in weight.glsl); matmul/embed shaders are in this order.
enum { WT_F32, WT_F16, WT_BF16, WT_A4, WT_A8, WT_A2 };

// ---- state ---------------------------------------------------------------------

struct vm_buf {
    VkBuffer buf;
    VkDeviceMemory mem;
    VkDeviceAddress addr;
    void *map;          // persistent mapping (host-visible memory), else NULL
    size_t size;
};

typedef struct vk_weight {
    vm_buf *buf;
    VkDeviceAddress w, sc, bi;
    int wt, group;
    int q8act;            // GGUF block weight: multiplies llama.cpp's 8-bit activations (q8act.comp)
    int q41;              // ... a Q4_1 one: its min term takes q8act.comp's correction (MM_CORR)
    struct vk_weight *next;
} vk_weight;

// f32 device copies of host vectors (norm weights, biases, rope frequencies),
// keyed by host pointer and checked against a copy of the bytes (a pointer
// may be reused by a later model's mapping).
typedef struct vec_entry {
    const void *key;
    void *bytes;
    size_t nbytes;
    vm_buf *buf;
} vec_entry;

#define HZ_MAX 32
#define PUSH_BYTES 128    // the push-constant range of every pipeline
#define CB_CACHE 8        // recorded command buffers kept for reuse
#define PEND_MAX 4
#define PROF_MAX 8192
#define PROF_KEYS 256

// matvec.comp / gemm.comp / gemm_cm.comp push constants; flags: MM_BIAS, MM_RES.
typedef struct {
    VkDeviceAddress w, sc, bi, x, y, bias, res, w2, sc2, bi2, nw;
    uint32_t rows, cols, n, group, flags;
    float eps;
    VkDeviceAddress part;   // gemm_cm.comp split K: the partial sums (set when the dispatch is recorded)
    uint32_t ksplit;        // columns per split (grid z = the number of splits)
} mm_pc;
_Static_assert(sizeof(mm_pc) <= PUSH_BYTES, "push constants");
enum { MM_BIAS = 1, MM_RES = 2, MM_NORM = 4, MM_DUAL = 8, MM_CORR = 16, MM_ROPE = 32 };   // MM_NORM, MM_DUAL: matvec.comp only;
// MM_CORR (matvec.comp, gemm.comp): part = q8act.comp's Q4_1 min-term corrections

typedef struct vk_impl {
    VkInstance instance;
    VkPhysicalDevice phys;
    VkDevice dev;
    VkQueue queue;
    uint32_t qfamily;
    VkCommandPool pool;
    VkFence fence;
    VkPipelineLayout layout;
    VkShaderModule modules[SH_COUNT];
    VkPipeline pipes[SH_COUNT];
    uint32_t dev_mem_type, staging_mem_type;
    int unified;          // device buffers are host-visible and mapped
    int software;         // a CPU device (lavapipe)
    uint32_t subgroup_size;
    uint32_t gemm_min_tiles;  // fewer 64x64 tiles than this: matvec, for gemm_cm.comp (VLLM_METAL_VULKAN_GEMM_MIN_TILES)
    uint32_t gemm_min_tiles_plain;  // the same for gemm.comp (other weights, or no cooperative matrices)
    uint32_t attn_items;      // attention splits the context until about this many workgroups (VLLM_METAL_VULKAN_ATTN_WGS)
    uint32_t splitk_wgs;      // gemm_cm grids of fewer workgroups split K up to this many (VLLM_METAL_VULKAN_SPLITK; 0: never)
    int vk_fuse;          // rmsnorm and swiglu folded into matvecs (VLLM_METAL_VULKAN_FUSE=0: not)
    int q8_activations;   // GGUF block weights take 8-bit activations (VLLM_METAL_Q8_ACTIVATIONS=1; default f32)
    // the last q8act.comp output: src's n rows of cols, while neither has been written since
    struct { const vm_buf *src; int n, cols, valid; } q8;
    vm_buf *xq;           // q8act.comp output
    int coopmat_quant;    // ... for affine 4/8-bit weights too (VLLM_METAL_VULKAN_COOPMAT_QUANT=0: the tiled GEMM)
    int coopmat;          // gemm_cm.comp usable (VK_NV_cooperative_matrix, 16x16x16 f16 -> f32, subgroups of 32)
    char name[VK_MAX_PHYSICAL_DEVICE_NAME_SIZE];

    int recording;        // commands pending in the list
    // The step's commands as a list (vk_cmd); flush submits a recorded command
    // buffer holding exactly that list, from the cache when one does (a
    // steady decode step repeats the last one's commands; only the uploaded
    // bytes differ, and those travel through the upload buffer).
    struct vk_cmd *list;
    size_t n_list, cap_list;
    vm_buf *upload;       // host-visible: the step's buf_writes, copied in by the list
    size_t up_off, up_want;
    struct cb_cache { VkCommandBuffer cb; struct vk_cmd *list; size_t n, cap; uint64_t used; } cache[CB_CACHE];
    uint64_t n_steps, n_cache_hits;
    int no_reuse;         // VLLM_METAL_VULKAN_REUSE=0: record every step
    int wr_open;          // buffer updates recorded since the last barrier (the next command waits for them)
    vm_err err;           // first failure of a void op, returned by sync
    int failed;

    vm_buf *staging;
    vm_buf **deferred;    // freed after the pending commands finish
    size_t n_deferred, cap_deferred;
    vk_weight *weights;
    vec_entry *vecs;
    size_t n_vecs, cap_vecs;
    vm_buf *attn_part;    // attention split partials
    vm_buf *attn_count;   // attention: splits finished per (token, head) (attention.comp sets them back to 0)
    vm_buf *sample_part;  // sample.comp: per row and column group, (max, index, mass)
    vm_buf *sample_count; // sample.comp: groups finished per row (set back to 0 by the last)
    vm_buf *mm_part;      // split-K GEMM partials

    // Hazard tracking: buffer ranges read and written by the dispatches
    // recorded since the last barrier. A dispatch gets a barrier in front of
    // it only if it reads or writes what one of those wrote, or writes what
    // one of them read.
    VkDeviceAddress hz_rd[HZ_MAX][2], hz_wr[HZ_MAX][2];
    int n_rd, n_wr;
    // Matmuls recorded lazily (up to PEND_MAX), so that an add_bias on one's
    // output folds into it.
    struct pend_mm { int sh; mm_pc pc; uint32_t gx, gy, gz; const vm_buf *x, *y, *res, *out2, *rd2[2]; } pend[PEND_MAX];
    int n_pend;
    // Ropes recorded lazily (up to 2: q, then k), so that rope(q), rope(k),
    // cache_write(k, v) become one rope_kv.comp dispatch.
    struct pend_rope { vm_buf *x; const vm_buf *pos; VkDeviceAddress freq; int n, n_heads, head_dim, half, interleaved; float theta_scale; } rope[2];
    int n_rope;
    // ... recorded while the one-token matvecs that made q, k and v are still
    // pending: the cache write then folds rope and the cache write into
    // those matvecs (matvec.comp flag 32, a rope_desc each)
    int rope_after_mm;
    int fold_rope;        // VLLM_METAL_VULKAN_FOLD_ROPE=0: not
    struct rope_slot { struct rope_desc { VkDeviceAddress pos, inv_freq, slots, kc, vc;
                                          uint32_t head_dim, half, interleaved, block_size, n_kv_heads, kind, kv16;
                                          float theta_scale; uint32_t n_blocks, pad_; } d; vm_buf *buf; } *rdesc;
    size_t n_rdesc, cap_rdesc;
    // The last rmsnorm (rows of x -> out, out != x), while neither has been
    // written since: a matvec of out reads x and normalizes it itself, so
    // it need not wait for the rmsnorm.
    struct { const vm_buf *x, *out; VkDeviceAddress w; float eps; int rows, dim, valid; } norm;
    // VLLM_METAL_VULKAN_PROFILE=1: a timestamp after every dispatch, summed per shader.
    VkQueryPool qpool;
    // =2: also per grid (shader and workgroup counts), the 64 largest
    uint32_t n_q, qsh[PROF_MAX];
    struct prof_key { uint32_t sh, g[3], cols; double ms; uint64_t n; } pk[PROF_KEYS];
    int n_pk, prof_grids, prof_steps;   // prof_steps (=3): timestamps at a submission's start and end only
    double prof_ms[SH_COUNT], prof_gpu_ms, ts_period;
    uint64_t prof_n[SH_COUNT], n_barriers, n_dispatches, n_submits;
} vk_impl;

static vk_impl *impl_of(const vm_backend *be) { return be->impl; }

// One recorded command. Entries are zeroed before they are filled, so two
// lists compare with memcmp.
enum { CMD_BARRIER, CMD_DISPATCH, CMD_COPY, CMD_TS_RESET, CMD_TS };
typedef struct vk_cmd {
    uint32_t kind, sh, pc_size, g[3];
    VkBuffer src, dst;
    VkDeviceSize so, dO, n;
    uint8_t pc[PUSH_BYTES];
} vk_cmd;
static void pend_flush(vk_impl *v);
static void grid_1d(uint64_t groups, uint32_t *gx, uint32_t *gy);
static void rec_barrier(vk_impl *v);

static void fail(vk_impl *v, const char *what, VkResult r) {
    if (v->failed) return;
    v->failed = 1;
    vm_errf(&v->err, "vulkan: %s failed (VkResult %d)", what, (int)r);
}

// ---- buffers ---------------------------------------------------------------------

static int find_mem_type(vk_impl *v, uint32_t bits, VkMemoryPropertyFlags want, VkMemoryPropertyFlags prefer) {
    VkPhysicalDeviceMemoryProperties mp;
    vkGetPhysicalDeviceMemoryProperties(v->phys, &mp);
    int found = -1;
    for (uint32_t i = 0; i < mp.memoryTypeCount; i++) {
        if (!(bits & (1u << i)) || (mp.memoryTypes[i].propertyFlags & want) != want) continue;
        if ((mp.memoryTypes[i].propertyFlags & prefer) == prefer) return (int)i;
        if (found < 0) found = (int)i;
    }
    return found;
}

static vm_buf *buf_create(vk_impl *v, size_t bytes, int host, vm_err *e) {
    vm_buf *b = calloc(1, sizeof *b);
    if (!b) { vm_errf(e, "out of memory"); return NULL; }
    size_t size = (bytes + 255) & ~(size_t)255;
    if (size == 0) size = 256;
    b->size = bytes;
    VkBufferCreateInfo bi = { .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .size = size,
        .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                 VK_BUFFER_USAGE_TRANSFER_DST_BIT | VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT,
        .sharingMode = VK_SHARING_MODE_EXCLUSIVE };
    VkResult r = vkCreateBuffer(v->dev, &bi, NULL, &b->buf);
    if (r != VK_SUCCESS) { free(b); vm_errf(e, "vulkan: cannot create a buffer of %zu bytes (%d)", bytes, (int)r); return NULL; }
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(v->dev, b->buf, &req);
    uint32_t type = host ? v->staging_mem_type : v->dev_mem_type;
    if (!(req.memoryTypeBits & (1u << type))) {
        int t = find_mem_type(v, req.memoryTypeBits, host || v->unified ? VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT : VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, 0);
        if (t < 0) { vkDestroyBuffer(v->dev, b->buf, NULL); free(b); vm_errf(e, "vulkan: no memory type for a buffer"); return NULL; }
        type = (uint32_t)t;
    }
    VkMemoryAllocateFlagsInfo fi = { .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_FLAGS_INFO,
                                     .flags = VK_MEMORY_ALLOCATE_DEVICE_ADDRESS_BIT };
    VkMemoryAllocateInfo ai = { .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, .pNext = &fi,
                                .allocationSize = req.size, .memoryTypeIndex = type };
    r = vkAllocateMemory(v->dev, &ai, NULL, &b->mem);
    if (r != VK_SUCCESS) {
        vkDestroyBuffer(v->dev, b->buf, NULL);
        free(b);
        vm_errf(e, "vulkan: cannot allocate %zu bytes of device memory (%d)", bytes, (int)r);
        return NULL;
    }
    vkBindBufferMemory(v->dev, b->buf, b->mem, 0);
    if (host || v->unified) {
        if ((r = vkMapMemory(v->dev, b->mem, 0, VK_WHOLE_SIZE, 0, &b->map)) != VK_SUCCESS) {
            vkDestroyBuffer(v->dev, b->buf, NULL);
            vkFreeMemory(v->dev, b->mem, NULL);
            free(b);
            vm_errf(e, "vulkan: cannot map memory (%d)", (int)r);
            return NULL;
        }
    }
    VkBufferDeviceAddressInfo ad = { .sType = VK_STRUCTURE_TYPE_BUFFER_DEVICE_ADDRESS_INFO, .buffer = b->buf };
    b->addr = vkGetBufferDeviceAddress(v->dev, &ad);
    return b;
}

static void cache_clear(vk_impl *v);

static void buf_destroy(vk_impl *v, vm_buf *b) {
    if (!b) return;
    cache_clear(v);   // recorded command buffers may name it
    vkDestroyBuffer(v->dev, b->buf, NULL);
    vkFreeMemory(v->dev, b->mem, NULL);
    free(b);
}

// Frees b now, or after the pending commands (which may use it) have run.
static void buf_release(vk_impl *v, vm_buf *b) {
    if (!b) return;
    pend_flush(v);
    if (!v->recording) { buf_destroy(v, b); return; }
    if (v->n_deferred == v->cap_deferred) {
        size_t cap = v->cap_deferred ? 2 * v->cap_deferred : 16;
        vm_buf **p = realloc(v->deferred, cap * sizeof *p);
        if (!p) { vkQueueWaitIdle(v->queue); buf_destroy(v, b); return; } // leak-free fallback; commands not yet submitted
        v->deferred = p;
        v->cap_deferred = cap;
    }
    v->deferred[v->n_deferred++] = b;
}

// ---- command recording -----------------------------------------------------------------

static vk_cmd *cmd_add(vk_impl *v, uint32_t kind) {
    if (v->n_list == v->cap_list) {
        size_t cap = v->cap_list ? 2 * v->cap_list : 512;
        vk_cmd *l = realloc(v->list, cap * sizeof *l);
        if (!l) { if (!v->failed) { v->failed = 1; vm_errf(&v->err, "out of memory"); } return NULL; }
        v->list = l;
        v->cap_list = cap;
    }
    vk_cmd *c = &v->list[v->n_list++];
    memset(c, 0, sizeof *c);
    c->kind = kind;
    return c;
}

static int rec_begin(vk_impl *v) {
    if (v->recording) return 0;
    if (v->failed) return -1;
    v->recording = 1;
    v->n_list = 0;
    v->up_off = 0;
    rec_barrier(v);   // what earlier submissions wrote is visible to this one
    if (v->qpool) {
        cmd_add(v, CMD_TS_RESET);
        cmd_add(v, CMD_TS);
        v->n_q = 1;
    }
    return 0;
}

// Everything before is visible to everything after (compute and transfers).
static void rec_barrier(vk_impl *v) {
    cmd_add(v, CMD_BARRIER);
    v->n_rd = v->n_wr = 0;
    v->wr_open = 0;
    v->n_barriers++;
}

static int hz_hit(VkDeviceAddress (*set)[2], int n, VkDeviceAddress lo, VkDeviceAddress hi) {
    for (int i = 0; i < n; i++)
        if (lo < set[i][1] && set[i][0] < hi) return 1;
    return 0;
}

static void hz_add(VkDeviceAddress (*set)[2], int *n, const vm_buf *b) {
    set[*n][0] = b->addr;
    set[*n][1] = b->addr + (b->size ? b->size : 1);
    (*n)++;
}

// Waits for the submit's fence: polls it for up to FENCE_SPIN_S first, then
// blocks. A thread that sleeps on the fence every step wakes on a cold (and
// often another) core; on the H100 machine that made recording the next step
// up to 8x slower than on a thread that stays put (a step is a few ms).
#define FENCE_SPIN_S 0.05
static VkResult fence_wait(vk_impl *v) {
    if (!v->software) {   // lavapipe's workers need the cores a spinning thread would take
        double t0 = vm_now_seconds();
        for (unsigned i = 0;; i++) {
            VkResult r = vkGetFenceStatus(v->dev, v->fence);
            if (r != VK_NOT_READY) return r;
            if ((i & 63) == 63 && vm_now_seconds() - t0 > FENCE_SPIN_S) break;
            vm_cpu_relax();
        }
    }
    return vkWaitForFences(v->dev, 1, &v->fence, VK_TRUE, UINT64_MAX);
}

static void cache_clear(vk_impl *v) {
    for (int i = 0; i < CB_CACHE; i++) v->cache[i].n = 0;   // (command buffers kept, re-recorded when taken)
}

// Records the list into cb.
static int replay(vk_impl *v, VkCommandBuffer cb) {
    VkCommandBufferBeginInfo bi = { .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO };
    VkResult r = vkResetCommandBuffer(cb, 0);
    if (r == VK_SUCCESS) r = vkBeginCommandBuffer(cb, &bi);
    if (r != VK_SUCCESS) { fail(v, "vkBeginCommandBuffer", r); return -1; }
    VkMemoryBarrier mb = { .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                         VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT };
    const VkPipelineStageFlags st = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
    uint32_t q = 0;
    int bound = -1;
    for (size_t i = 0; i < v->n_list; i++) {
        const vk_cmd *c = &v->list[i];
        switch (c->kind) {
        case CMD_BARRIER: vkCmdPipelineBarrier(cb, st, st, 0, 1, &mb, 0, NULL, 0, NULL); break;
        case CMD_DISPATCH:
            if ((int)c->sh != bound) { vkCmdBindPipeline(cb, VK_PIPELINE_BIND_POINT_COMPUTE, v->pipes[c->sh]); bound = (int)c->sh; }
            vkCmdPushConstants(cb, v->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, c->pc_size, c->pc);
            vkCmdDispatch(cb, c->g[0], c->g[1], c->g[2]);
            break;
        case CMD_COPY: { VkBufferCopy bc = { c->so, c->dO, c->n }; vkCmdCopyBuffer(cb, c->src, c->dst, 1, &bc); break; }
        case CMD_TS_RESET: vkCmdResetQueryPool(cb, v->qpool, 0, PROF_MAX); break;
        case CMD_TS: vkCmdWriteTimestamp(cb, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, v->qpool, q++); break;
        }
    }
    if ((r = vkEndCommandBuffer(cb)) != VK_SUCCESS) { fail(v, "vkEndCommandBuffer", r); return -1; }
    return 0;
}

// A command buffer holding the list: a cached one with the same commands, or
// the least recently used slot re-recorded.
static VkCommandBuffer cache_get(vk_impl *v) {
    v->n_steps++;
    int lru = 0;
    for (int i = 0; i < CB_CACHE; i++) {
        struct cb_cache *c = &v->cache[i];
        if (!v->no_reuse && c->n == v->n_list && c->n && !memcmp(c->list, v->list, v->n_list * sizeof *v->list)) {
            c->used = v->n_steps;
            v->n_cache_hits++;
            return c->cb;
        }
        if (c->used < v->cache[lru].used) lru = i;
    }
    struct cb_cache *c = &v->cache[lru];
    c->n = 0;
    if (!c->cb) {
        VkCommandBufferAllocateInfo ai = { .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, .commandPool = v->pool,
                                           .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY, .commandBufferCount = 1 };
        VkResult r = vkAllocateCommandBuffers(v->dev, &ai, &c->cb);
        if (r != VK_SUCCESS) { c->cb = VK_NULL_HANDLE; fail(v, "vkAllocateCommandBuffers", r); return VK_NULL_HANDLE; }
    }
    if (replay(v, c->cb) != 0) return VK_NULL_HANDLE;
    if (c->cap < v->n_list) {
        vk_cmd *l = realloc(c->list, v->n_list * sizeof *l);
        if (!l) return c->cb;   // usable now, not kept
        c->list = l;
        c->cap = v->n_list;
    }
    memcpy(c->list, v->list, v->n_list * sizeof *v->list);
    c->n = v->n_list;
    c->used = v->n_steps;
    return c->cb;
}

// Submits the pending commands and waits for them.
static int flush(vk_impl *v) {
    pend_flush(v);
    if (v->recording) {
        rec_barrier(v);
        if (v->qpool && v->prof_steps && v->n_q < PROF_MAX && v->n_pk) {   // the whole submission, as the first key's
            cmd_add(v, CMD_TS);
            v->qsh[v->n_q++] = 0;
        }
        v->recording = 0;
        v->n_submits++;
        VkCommandBuffer cb = cache_get(v);
        VkResult r;
        if (cb) {
            VkSubmitInfo si = { .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &cb };
            if ((r = vkQueueSubmit(v->queue, 1, &si, v->fence)) != VK_SUCCESS) fail(v, "vkQueueSubmit", r);
            else if ((r = fence_wait(v)) != VK_SUCCESS) fail(v, "vkWaitForFences", r);
            vkResetFences(v->dev, 1, &v->fence);
            if (v->qpool && !v->failed && v->n_q > 1) {
                uint64_t ts[PROF_MAX];
                if (vkGetQueryPoolResults(v->dev, v->qpool, 0, v->n_q, sizeof ts, ts, 8, VK_QUERY_RESULT_64_BIT) == VK_SUCCESS) {
                    for (uint32_t i = 1; i < v->n_q; i++) {
                        double ms = (double)(ts[i] - ts[i - 1]) * v->ts_period * 1e-6;
                        struct prof_key *k = &v->pk[v->qsh[i]];
                        k->ms += ms;
                        k->n++;
                        v->prof_ms[k->sh] += ms;
                        v->prof_n[k->sh]++;
                        v->prof_gpu_ms += ms;
                    }
                }
            }
        }
    }
    for (size_t i = 0; i < v->n_deferred; i++) buf_destroy(v, v->deferred[i]);
    v->n_deferred = 0;
    return v->failed ? -1 : 0;
}

static VkPipeline pipeline(vk_impl *v, int sh) {
    if (v->pipes[sh]) return v->pipes[sh];
    VkShaderModuleCreateInfo mi = { .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
                                    .codeSize = shaders[sh].size, .pCode = shaders[sh].code };
    VkResult r = vkCreateShaderModule(v->dev, &mi, NULL, &v->modules[sh]);
    if (r != VK_SUCCESS) { fail(v, shaders[sh].name, r); return VK_NULL_HANDLE; }
    // constant_id 0: the subgroup size (shaders that size per-lane arrays by it)
    VkSpecializationMapEntry me = { 0, 0, sizeof(uint32_t) };
    VkSpecializationInfo spec = { 1, &me, sizeof(uint32_t), &v->subgroup_size };
    VkComputePipelineCreateInfo ci = { .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = { .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
                   .stage = VK_SHADER_STAGE_COMPUTE_BIT, .module = v->modules[sh], .pName = "main",
                   .pSpecializationInfo = &spec },
        .layout = v->layout };
    r = vkCreateComputePipelines(v->dev, VK_NULL_HANDLE, 1, &ci, NULL, &v->pipes[sh]);
    if (r != VK_SUCCESS) { v->pipes[sh] = VK_NULL_HANDLE; fail(v, shaders[sh].name, r); return VK_NULL_HANDLE; }
    return v->pipes[sh];
}


// Records one dispatch that reads the buffers rd and writes wr (NULLs
// skipped; weights and uploaded vectors are not listed: nothing writes them
// while commands are pending), with a barrier in front only on a hazard.
static void dispatch_raw(vk_impl *v, int sh, const void *pc, size_t pc_size, uint32_t gx, uint32_t gy, uint32_t gz,
                         const vm_buf *const *rd, int nrd, const vm_buf *const *wr, int nwr) {
    if (v->failed || gx == 0 || gy == 0 || gz == 0) return;
    VkPipeline p = pipeline(v, sh);
    if (!p || rec_begin(v) != 0) return;
    int need = v->wr_open || v->n_rd + nrd > HZ_MAX || v->n_wr + nwr > HZ_MAX;
    for (int i = 0; i < nrd && !need; i++)
        if (rd[i]) need = hz_hit(v->hz_wr, v->n_wr, rd[i]->addr, rd[i]->addr + (rd[i]->size ? rd[i]->size : 1));
    for (int i = 0; i < nwr && !need; i++)
        if (wr[i]) {
            VkDeviceAddress lo = wr[i]->addr, hi = lo + (wr[i]->size ? wr[i]->size : 1);
            need = hz_hit(v->hz_wr, v->n_wr, lo, hi) || hz_hit(v->hz_rd, v->n_rd, lo, hi);
        }
    if (need) rec_barrier(v);
    for (int i = 0; i < nrd; i++) if (rd[i]) hz_add(v->hz_rd, &v->n_rd, rd[i]);
    for (int i = 0; i < nwr; i++) if (wr[i]) hz_add(v->hz_wr, &v->n_wr, wr[i]);
    for (int i = 0; i < nwr; i++) {
        if (wr[i] && (wr[i] == v->norm.x || wr[i] == v->norm.out)) v->norm.valid = 0;
        if (wr[i] && (wr[i] == v->q8.src || wr[i] == v->xq) && sh != SH_q8act) v->q8.valid = 0;
    }
    vk_cmd *c = cmd_add(v, CMD_DISPATCH);
    if (!c) return;
    c->sh = (uint32_t)sh;
    c->pc_size = (uint32_t)pc_size;
    memcpy(c->pc, pc, pc_size);
    c->g[0] = gx; c->g[1] = gy; c->g[2] = gz;
    v->n_dispatches++;
    if (v->qpool && v->n_q < PROF_MAX && (!v->prof_steps || !v->n_pk)) {
        const uint32_t cols = sh <= SH_gemmcm_a8 && pc_size == sizeof(mm_pc) ? ((const mm_pc *)pc)->cols : 0;   // matmuls: K too
        int k = 0;
        while (k < v->n_pk && (v->pk[k].sh != (uint32_t)sh || v->pk[k].g[0] != gx || v->pk[k].g[1] != gy || v->pk[k].g[2] != gz ||
                               v->pk[k].cols != cols)) k++;
        if (k == v->n_pk && v->n_pk < PROF_KEYS) v->pk[v->n_pk++] = (struct prof_key){ (uint32_t)sh, { gx, gy, gz }, cols, 0, 0 };
        if (k < v->n_pk) {
            cmd_add(v, CMD_TS);
            v->qsh[v->n_q++] = (uint32_t)k;
        }
    }
}

static void rope_dispatch(vk_impl *v, const struct pend_rope *r);

static void mm_flush(vk_impl *v);

// Pending ropes and matmuls, in the order the decoder gave them: ropes that
// came after the pending matmuls (waiting to fold into them) go last.
static void pend_flush(vk_impl *v) {
    const int after = v->rope_after_mm;
    v->rope_after_mm = 0;
    if (after) mm_flush(v);
    int nr = v->n_rope;
    v->n_rope = 0;
    for (int i = 0; i < nr; i++) rope_dispatch(v, &v->rope[i]);
    mm_flush(v);
}

static void mm_flush(vk_impl *v) {
    int n = v->n_pend;
    v->n_pend = 0;
    for (int i = 0; i < n; i++) {
        struct pend_mm *p = &v->pend[i];
        if (p->gz > 1) {   // split K: partial sums, then splitk.comp adds them and does the epilogue
            size_t total = (size_t)p->pc.rows * p->pc.n, need = total * p->gz * 4;
            if (!v->mm_part || v->mm_part->size < need) {
                buf_release(v, v->mm_part);
                vm_err e = {{0}};
                if (!(v->mm_part = buf_create(v, need, 0, &e))) { if (!v->failed) { v->failed = 1; v->err = e; } return; }
            }
            p->pc.part = v->mm_part->addr;
            const vm_buf *rd[1] = { p->x }, *wr[1] = { v->mm_part };
            dispatch_raw(v, p->sh, &p->pc, sizeof p->pc, p->gx, p->gy, p->gz, rd, 1, wr, 1);
            struct { VkDeviceAddress part, y, bias, res; uint32_t total, rows, splits, flags; } rc =
                { v->mm_part->addr, p->pc.y, p->pc.bias, p->pc.res, (uint32_t)total, p->pc.rows, p->gz, p->pc.flags };
            uint32_t gx, gy;
            grid_1d((total + 255) / 256, &gx, &gy);
            const vm_buf *rd2[2] = { v->mm_part, p->res }, *wr2[2] = { p->y, p->res };
            dispatch_raw(v, SH_splitk, &rc, sizeof rc, gx, gy, 1, rd2, 2, wr2, 2);
            continue;
        }
        const vm_buf *rd[4] = { p->x, p->res, p->rd2[0], p->rd2[1] }, *wr[3] = { p->y, p->res, p->out2 };
        dispatch_raw(v, p->sh, &p->pc, sizeof p->pc, p->gx, p->gy, 1, rd, 4, wr, 3);
    }
}

#define RD(...) (const vm_buf *const[]){ __VA_ARGS__ }
#define NARGS(...) (int)(sizeof((const vm_buf *const[]){ __VA_ARGS__ }) / sizeof(const vm_buf *))
// dispatch(v, sh, &pc, gx, gy, gz, RDS(a, b), WRS(c))
#define RDS(...) RD(__VA_ARGS__), NARGS(__VA_ARGS__)
#define WRS(...) RD(__VA_ARGS__), NARGS(__VA_ARGS__)
static void dispatch(vk_impl *v, int sh, const void *pc, size_t pc_size, uint32_t gx, uint32_t gy, uint32_t gz,
                     const vm_buf *const *rd, int nrd, const vm_buf *const *wr, int nwr) {
    pend_flush(v);
    dispatch_raw(v, sh, pc, pc_size, gx, gy, gz, rd, nrd, wr, nwr);
}

// 1-D grids of more than 65535 workgroups fold into y (shaders unfold them).
static void grid_1d(uint64_t groups, uint32_t *gx, uint32_t *gy) {
    *gx = groups < 65535 ? (uint32_t)groups : 65535;
    *gy = (uint32_t)((groups + 65534) / 65535);
}

// ---- host <-> device -----------------------------------------------------------------------

static vm_buf *staging_get(vk_impl *v, size_t bytes) {
    if (v->staging && v->staging->size >= bytes) return v->staging;
    if (v->staging) buf_destroy(v, v->staging);
    v->staging = NULL;
    vm_err e = {{0}};
    v->staging = buf_create(v, bytes, 1, &e);
    if (!v->staging && !v->failed) { v->failed = 1; v->err = e; }
    return v->staging;
}

#define STAGING_MAX ((size_t)64 << 20)
#define UPDATE_MAX ((size_t)256 << 10)   // larger writes go through the staging buffer (a submit)

static void copy_region(vk_impl *v, VkBuffer src, size_t so, VkBuffer dst, size_t dO, size_t n) {
    pend_flush(v);
    if (rec_begin(v) != 0) return;
    rec_barrier(v);
    vk_cmd *c = cmd_add(v, CMD_COPY);
    if (c) { c->src = src; c->so = so; c->dst = dst; c->dO = dO; c->n = n; }
    rec_barrier(v);
}

static void vk_buf_write(vm_backend *be, vm_buf *b, size_t off, const void *src, size_t n) {
    vk_impl *v = impl_of(be);
    if (n == 0) return;
    pend_flush(v);
    v->norm.valid = 0;
    v->q8.valid = 0;
    // Recorded in order with the ops: while commands are pending, or (device
    // memory the host cannot map) to open the recording, so that the step's
    // metadata writes join its one submit. A run of writes shares one barrier
    // in front (earlier commands may read or write b) and one behind (every
    // later command waits for them: uploaded vectors are in no read list).
    if ((v->recording || !b->map) && n <= UPDATE_MAX) {
        if (v->recording && v->up_off + n > (v->upload ? v->upload->size : 0)) flush(v);   // the upload buffer is full
        if (!v->recording && (!v->upload || v->upload->size < v->up_want + n)) {   // grown between steps
            size_t want = v->up_want + n < ((size_t)1 << 20) ? (size_t)1 << 20 : 2 * (v->up_want + n);
            buf_destroy(v, v->upload);
            vm_err e = {{0}};
            if (!(v->upload = buf_create(v, want, 1, &e))) { if (!v->failed) { v->failed = 1; v->err = e; } return; }
        }
        if (rec_begin(v) != 0) return;
        if (!v->wr_open) rec_barrier(v);
        // the bytes go to the upload buffer now; the list copies them in
        memcpy((char *)v->upload->map + v->up_off, src, n);
        vk_cmd *c = cmd_add(v, CMD_COPY);
        if (c) { c->src = v->upload->buf; c->so = v->up_off; c->dst = b->buf; c->dO = off; c->n = n; }
        v->up_off += (n + 15) & ~(size_t)15;
        if (v->up_off > v->up_want) v->up_want = v->up_off;
        v->wr_open = 1;
        return;
    }
    flush(v);
    if (b->map) { memcpy((char *)b->map + off, src, n); return; }
    for (size_t done = 0; done < n;) {
        size_t len = n - done < STAGING_MAX ? n - done : STAGING_MAX;
        vm_buf *st = staging_get(v, len);
        if (!st) return;
        memcpy(st->map, (const char *)src + done, len);
        copy_region(v, st->buf, 0, b->buf, off + done, len);
        flush(v);
        done += len;
    }
}

static void vk_buf_read(vm_backend *be, const vm_buf *b, size_t off, void *dst, size_t n) {
    vk_impl *v = impl_of(be);
    const int prof = vm_prof_on();
    double t0 = prof ? vm_prof_now() : 0, wait = 0;
    // The first staging copy joins the pending commands' submit (a step's
    // forward and its logits copy are one submit).
    if (b->map || n == 0 || n > STAGING_MAX) {
        flush(v);
        if (prof) wait = vm_prof_now() - t0;
    }
    if (n == 0) return;
    if (b->map) memcpy(dst, (const char *)b->map + off, n);
    for (size_t done = 0; !b->map && done < n;) {
        size_t len = n - done < STAGING_MAX ? n - done : STAGING_MAX;
        vm_buf *st = staging_get(v, len);
        if (!st) { memset((char *)dst + done, 0, n - done); break; }
        copy_region(v, b->buf, off + done, st->buf, 0, len);
        double t1 = prof ? vm_prof_now() : 0;
        flush(v);
        if (prof) wait += vm_prof_now() - t1;
        memcpy((char *)dst + done, st->map, len);
        done += len;
    }
    if (prof) {
        vm_prof_add(VM_PROF_WAIT, wait);
        vm_prof_add(VM_PROF_COPY, vm_prof_now() - t0 - wait);
    }
}

static vm_buf *vk_buf_alloc(vm_backend *be, size_t bytes, vm_err *e) { return buf_create(impl_of(be), bytes, 0, e); }
static void vk_buf_free(vm_backend *be, vm_buf *b) { buf_release(impl_of(be), b); }

// ---- host vectors (norm weights, biases, rope frequencies) as f32 on the device ----------

static VkDeviceAddress vec_f32(vk_impl *v, const void *data, vm_dtype dt, size_t n) {
    size_t nbytes = dt == VM_DTYPE_F32 ? 4 * n : 2 * n;
    vec_entry *hit = NULL;
    for (size_t i = 0; i < v->n_vecs; i++)
        if (v->vecs[i].key == data && v->vecs[i].nbytes == nbytes) { hit = &v->vecs[i]; break; }
    if (hit && memcmp(hit->bytes, data, nbytes) == 0) return hit->buf->addr;
    float *f = malloc(4 * n);
    void *copy = malloc(nbytes);
    vm_err e = {{0}};
    vm_buf *b = f && copy ? buf_create(v, 4 * n, 0, &e) : NULL;
    if (!b) {
        free(f); free(copy);
        if (!v->failed) { v->failed = 1; vm_errf(&v->err, "vulkan: cannot upload a vector: %s", e.msg[0] ? e.msg : "out of memory"); }
        return 0;
    }
    for (size_t i = 0; i < n; i++) f[i] = vm_load_scale(dt, data, (int64_t)i);
    memcpy(copy, data, nbytes);
    vm_backend tmp = { .impl = v };
    vk_buf_write(&tmp, b, 0, f, 4 * n);
    free(f);
    if (hit) {
        buf_release(v, hit->buf);
        free(hit->bytes);
    } else {
        if (v->n_vecs == v->cap_vecs) {
            size_t cap = v->cap_vecs ? 2 * v->cap_vecs : 64;
            vec_entry *p = realloc(v->vecs, cap * sizeof *p);
            if (!p) { buf_release(v, b); free(copy); fail(v, "vector cache (out of memory)", VK_ERROR_OUT_OF_HOST_MEMORY); return 0; }
            v->vecs = p;
            v->cap_vecs = cap;
        }
        hit = &v->vecs[v->n_vecs++];
    }
    hit->key = data;
    hit->bytes = copy;
    hit->nbytes = nbytes;
    hit->buf = b;
    return b->addr;
}

static VkDeviceAddress tensor_f32(vk_impl *v, const vm_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    if (t->dtype != VM_DTYPE_F32 && t->dtype != VM_DTYPE_F16 && t->dtype != VM_DTYPE_BF16) {
        if (!v->failed) { v->failed = 1; vm_errf(&v->err, "%s: vector dtype %s unsupported", t->name, vm_dtype_name(t->dtype)); }
        return 0;
    }
    return vec_f32(v, t->data, t->dtype, (size_t)n);
}

// ---- weights ---------------------------------------------------------------------------------

// Repacks one GGUF row (blocks of 32) into affine words (MLX order) + scales + biases.
static void repack_gguf_row(vm_dtype dt, const uint8_t *src, int64_t cols, uint32_t *words, float *sc, float *bi) {
    int64_t nb = cols / 32;
    for (int64_t b = 0; b < nb; b++) {
        uint8_t q[32];
        float d, m = 0;
        if (dt == VM_DTYPE_Q8_0) {
            const uint8_t *blk = src + b * 34;
            d = vm_f16_to_f32(vm_load_u16(blk));
            for (int i = 0; i < 32; i++) q[i] = (uint8_t)((int8_t)blk[2 + i] + 128);
            m = -128.0f * d;
            for (int w = 0; w < 8; w++)
                words[b * 8 + w] = (uint32_t)q[4 * w] | (uint32_t)q[4 * w + 1] << 8 | (uint32_t)q[4 * w + 2] << 16 | (uint32_t)q[4 * w + 3] << 24;
        } else {
            const uint8_t *blk = src + b * (dt == VM_DTYPE_Q4_0 ? 18 : 20);
            const uint8_t *qs = blk + (dt == VM_DTYPE_Q4_0 ? 2 : 4);
            d = vm_f16_to_f32(vm_load_u16(blk));
            m = dt == VM_DTYPE_Q4_0 ? -8.0f * d : vm_f16_to_f32(vm_load_u16(blk + 2));
            for (int i = 0; i < 16; i++) { q[i] = qs[i] & 15; q[i + 16] = qs[i] >> 4; }
            for (int w = 0; w < 4; w++) {
                uint32_t word = 0;
                for (int k = 0; k < 8; k++) word |= (uint32_t)q[8 * w + k] << (4 * k);
                words[b * 4 + w] = word;
            }
        }
        sc[b] = d;
        bi[b] = m;
    }
}

static int vk_weight_prepare(vm_backend *be, vm_weight *w, vm_err *e) {
    vk_impl *v = impl_of(be);
    const int64_t rows = w->rows, cols = w->cols;
    if (cols % 8) return vm_errf(e, "%s: %lld columns; the Vulkan backend needs a multiple of 8", w->name, (long long)cols);
    int wt, bits = 0, group = 1;
    switch (w->dtype) {
    case VM_DTYPE_F32: wt = WT_F32; break;
    case VM_DTYPE_F16: wt = WT_F16; break;
    case VM_DTYPE_BF16: wt = WT_BF16; break;
    case VM_DTYPE_Q4_0: case VM_DTYPE_Q4_1: wt = WT_A4; bits = 4; group = 32; break;
    case VM_DTYPE_Q8_0: wt = WT_A8; bits = 8; group = 32; break;
    case VM_DTYPE_MLX_AFFINE:
        bits = w->bits;
        group = w->group_size;
        if (bits != 2 && bits != 4 && bits != 8)
            return vm_errf(e, "%s: MLX %d-bit weights are not supported (2, 4 or 8)", w->name, bits);
        if (group < 8 || group % 8 || cols % group)
            return vm_errf(e, "%s: MLX group_size %d does not suit %lld columns", w->name, group, (long long)cols);
        wt = bits == 4 ? WT_A4 : bits == 8 ? WT_A8 : WT_A2;
        break;
    default:
        return vm_errf(e, "%s: dtype %s cannot be used as a matrix", w->name, vm_dtype_name(w->dtype));
    }
    size_t wbytes, sbytes = 0;
    if (bits) {
        wbytes = (size_t)rows * (size_t)cols * bits / 8;
        sbytes = (size_t)rows * (cols / group) * 4;
    } else {
        wbytes = vm_weight_row_bytes(w) * rows;
    }
    size_t total = ((wbytes + 255) & ~(size_t)255) + 2 * ((sbytes + 255) & ~(size_t)255);
    vk_weight *kw = calloc(1, sizeof *kw);
    if (!kw) return vm_errf(e, "out of memory");
    if (!(kw->buf = buf_create(v, total, 0, e))) { free(kw); return -1; }
    size_t s_off = (wbytes + 255) & ~(size_t)255, b_off = s_off + ((sbytes + 255) & ~(size_t)255);
    kw->wt = wt;
    kw->group = group;
    kw->q8act = v->q8_activations && (w->dtype == VM_DTYPE_Q4_0 || w->dtype == VM_DTYPE_Q4_1 || w->dtype == VM_DTYPE_Q8_0);
    kw->q41 = kw->q8act && w->dtype == VM_DTYPE_Q4_1;
    kw->w = kw->buf->addr;
    kw->sc = kw->buf->addr + s_off;
    kw->bi = kw->buf->addr + b_off;
    flush(v);
    // Fill the layout in host memory: straight into the mapping where there is one.
    uint8_t *dst = kw->buf->map ? kw->buf->map : malloc(total);
    if (!dst) { buf_destroy(v, kw->buf); free(kw); return vm_errf(e, "out of memory"); }
    if (!bits || w->dtype == VM_DTYPE_MLX_AFFINE) memcpy(dst, w->data, wbytes);
    if (w->dtype == VM_DTYPE_MLX_AFFINE) {
        float *sc = (float *)(dst + s_off), *bi = (float *)(dst + b_off);
        size_t ng = (size_t)rows * (cols / group);
        for (size_t i = 0; i < ng; i++) {
            sc[i] = vm_load_scale(w->scale_dtype, w->scales, (int64_t)i);
            bi[i] = vm_load_scale(w->scale_dtype, w->biases, (int64_t)i);
        }
    } else if (bits) {
        size_t rb = vm_weight_row_bytes(w), wpr = (size_t)cols * bits / 32, nb = (size_t)cols / 32;
        for (int64_t r = 0; r < rows; r++)
            repack_gguf_row(w->dtype, (const uint8_t *)w->data + r * rb, cols, (uint32_t *)dst + r * wpr,
                            (float *)(dst + s_off) + r * nb, (float *)(dst + b_off) + r * nb);
    }
    if (!kw->buf->map) {
        vk_buf_write(be, kw->buf, 0, dst, total);
        free(dst);
    }
    if (v->failed) { vm_errf(e, "%s", v->err.msg); return -1; }
    kw->next = v->weights;
    v->weights = kw;
    w->device = kw;
    return 0;
}

static vk_weight *dev_weight(vk_impl *v, const vm_weight *w) {
    if (!w->device && !v->failed) { v->failed = 1; vm_errf(&v->err, "%s: weight not prepared for Vulkan", w->name); }
    return w->device;
}

// ---- ops ---------------------------------------------------------------------------------------

static void vk_embed(vm_backend *be, const vm_weight *table, const vm_buf *tokens, int n, vm_buf *out) {
    vk_impl *v = impl_of(be);
    vk_weight *kw = dev_weight(v, table);
    if (!kw) return;
    struct { VkDeviceAddress w, sc, bi, ids, y; uint32_t rows, cols, n, group; } pc =
        { kw->w, kw->sc, kw->bi, tokens->addr, out->addr, (uint32_t)table->rows, (uint32_t)table->cols, (uint32_t)n, (uint32_t)kw->group };
    dispatch(v, SH_embed_f32 + kw->wt, &pc, sizeof pc, (uint32_t)((table->cols + 255) / 256), (uint32_t)n, 1,
             RDS(tokens), WRS(out));
}

static void vk_rmsnorm(vm_backend *be, const vm_buf *x, const vm_tensor *w, float eps, int rows, int dim, vm_buf *out) {
    vk_impl *v = impl_of(be);
    VkDeviceAddress wa = tensor_f32(v, w);
    if (!wa) return;
    // rows that fit the registers of one subgroup (8 a lane): a subgroup each, 256/subgroup rows a workgroup
    uint32_t per_sg = (uint32_t)dim <= 8 * v->subgroup_size && v->subgroup_size <= 256, rpw = per_sg ? 256 / v->subgroup_size : 1;
    struct { VkDeviceAddress x, w, y; uint32_t rows, dim; float eps; uint32_t per_sg; } pc =
        { x->addr, wa, out->addr, (uint32_t)rows, (uint32_t)dim, eps, per_sg };
    uint32_t gx, gy;
    grid_1d(((uint64_t)rows + rpw - 1) / rpw, &gx, &gy);
    dispatch(v, SH_rmsnorm, &pc, sizeof pc, gx, gy, 1, RDS(x), WRS(out));
    v->norm.valid = 0;
    if (out != x && !v->failed) {
        v->norm.x = x; v->norm.out = out; v->norm.w = wa; v->norm.eps = eps;
        v->norm.rows = rows; v->norm.dim = dim; v->norm.valid = 1;
    }
}

// Few tokens (decode): matvec.comp, token tiles of 1 (4 rows a workgroup),
// 4 or 8 (8 rows a workgroup; each weight row read once per tile). Batches: the tiled GEMM,
// 64 x 64 tiles (32-token tiles of 128 rows up to 32 tokens), on cooperative
// matrices for f16/bf16 weights where the device has them.
#define MATVEC_MAX 8
// matvec.comp's one-token forms (U = 2, and U = 1 for short rows)
static int is_matvec1(int sh) { return sh >= SH_matvec1_f32 && sh <= SH_matvec1s_a2; }
#define MATVEC1_SHORT 2048   // columns at most for the U = 1 form

// output rows of a matvec workgroup (matvec.comp's RS for one token, NR for
// token tiles; half as many gate/up pairs when dual)
static uint32_t mv_rows(int sh, int dual) {
    uint32_t rows = is_matvec1(sh) ? 2 : 8;
    return dual ? rows / 2 : rows;
}

// A pending matmul will write b: the last rmsnorm's input or output no longer holds what it did.
static void norm_touch(vk_impl *v, const vm_buf *b) {
    if (b == v->norm.x || b == v->norm.out) v->norm.valid = 0;
}

// x as llama.cpp's 8-bit activations (q8act.comp into v->xq), reused while
// neither x nor xq is written (q, k and v share one).
static const vm_buf *q8_input(vk_impl *v, const vm_buf *x, int n, int cols) {
    int pending_write = 0;
    for (int i = 0; i < v->n_pend; i++)
        if (v->pend[i].y == x || v->pend[i].res == x || v->pend[i].out2 == x) pending_write = 1;
    for (int i = 0; i < v->n_rope; i++)
        if (v->rope[i].x == x) pending_write = 1;
    if (v->q8.valid && !pending_write && v->q8.src == x && v->q8.n == n && v->q8.cols == cols) return v->xq;
    size_t need = (size_t)n * (size_t)cols * 4 + (size_t)n * (size_t)(cols / 32) * 4;   // values, then corr
    if (!v->xq || v->xq->size < need) {
        buf_release(v, v->xq);
        vm_err e = {{0}};
        if (!(v->xq = buf_create(v, need, 0, &e))) { if (!v->failed) { v->failed = 1; v->err = e; } return NULL; }
    }
    struct { VkDeviceAddress x, y, corr; uint32_t blocks; } pc =
        { x->addr, v->xq->addr, v->xq->addr + (size_t)n * (size_t)cols * 4, (uint32_t)((size_t)n * cols / 32) };
    uint32_t gx, gy;
    grid_1d(((uint64_t)pc.blocks + 63) / 64, &gx, &gy);
    dispatch(v, SH_q8act, &pc, sizeof pc, gx, gy, 1, RDS(x), WRS(v->xq));
    v->q8.src = x; v->q8.n = n; v->q8.cols = cols; v->q8.valid = 1;
    return v->xq;
}

// A GEMM's K split where its grid has too few tiles to keep every SM busy (a
// few workgroups per SM): at least 256 columns a split, each a multiple of 64
// (both GEMMs' K step); grid z = the number of splits. Not with the Q4_1
// correction, whose pointer takes the partial sums' slot.
static void split_k(const vk_impl *v, struct pend_mm *p) {
    uint32_t t = p->gx * p->gy, cols = p->pc.cols, splits = 1;
    if (t < v->splitk_wgs && cols >= 512 && !(p->pc.flags & MM_CORR)) {
        splits = (v->splitk_wgs + t - 1) / t;
        if (splits > cols / 256) splits = cols / 256;
    }
    uint32_t ks = ((cols + splits - 1) / splits + 63) / 64 * 64;
    p->pc.ksplit = ks;   // gemm_cm.comp reads it also unsplit
    p->gz = (cols + ks - 1) / ks;
}

static void vk_matmul(vm_backend *be, const vm_weight *w, const vm_buf *x, int n, vm_buf *out) {
    vk_impl *v = impl_of(be);
    vk_weight *kw = dev_weight(v, w);
    if (!kw || n <= 0) return;
    if (kw->q8act && !(x = q8_input(v, x, n, (int)w->cols))) return;
    if (v->n_pend == PEND_MAX) pend_flush(v);
    struct pend_mm *p = &v->pend[v->n_pend++];
    p->pc = (mm_pc){ .w = kw->w, .sc = kw->sc, .bi = kw->bi, .x = x->addr, .y = out->addr, .rows = (uint32_t)w->rows,
                     .cols = (uint32_t)w->cols, .n = (uint32_t)n, .group = (uint32_t)kw->group };
    p->gz = 1;   // split_k sets more
    if (kw->q41) {   // x is v->xq: its corrections follow the values
        p->pc.flags |= MM_CORR;
        p->pc.part = x->addr + (size_t)n * (size_t)w->cols * 4;
    }
    uint32_t rows = (uint32_t)w->rows;
    // A GEMM grid of few workgroups leaves most of a large GPU idle (1536 rows:
    // 24 tiles); up to 64 tokens such matrices take the matvec in token tiles
    // of 8 instead (the weights then come from L2 after the first tile).
    uint32_t tiles = (rows + 63) / 64 * (uint32_t)((n + 63) / 64);
    // cooperative matrices: f16/bf16, and affine 4/8-bit (not on 8-bit activations: no Q4_1 correction there)
    const int cm = v->coopmat && (kw->wt == WT_F16 || kw->wt == WT_BF16 ||
                                  (v->coopmat_quant && !kw->q8act && (kw->wt == WT_A4 || kw->wt == WT_A8)));
    if (n <= MATVEC_MAX || (n <= 64 && tiles < (cm ? v->gemm_min_tiles : v->gemm_min_tiles_plain))) {
        int tn = n == 1 ? 1 : n <= 4 ? 4 : 8;
        if (v->norm.valid && x == v->norm.out && n == v->norm.rows && w->cols == v->norm.dim && v->vk_fuse) {
            p->pc.x = v->norm.x->addr;
            p->pc.nw = v->norm.w;
            p->pc.eps = v->norm.eps;
            p->pc.flags |= MM_NORM;
            x = v->norm.x;
        }
        p->sh = (tn == 1 ? (w->cols <= MATVEC1_SHORT ? SH_matvec1s_f32 : SH_matvec1_f32) : tn == 4 ? SH_matvec4_f32 : SH_matvec8_f32) + kw->wt;
        p->gx = (rows + mv_rows(p->sh, 0) - 1) / mv_rows(p->sh, 0);
        p->gy = (uint32_t)((n + tn - 1) / tn);
    } else if (cm) {
        p->sh = kw->wt == WT_F16 ? SH_gemmcm_f16 : kw->wt == WT_BF16 ? SH_gemmcm_bf16 : kw->wt == WT_A4 ? SH_gemmcm_a4 : SH_gemmcm_a8;
        p->gx = (rows + 63) / 64;
        p->gy = (uint32_t)((n + 63) / 64);
        split_k(v, p);
    } else {
        if (n <= 32) {
            p->sh = SH_gemm32_f32 + kw->wt;
            p->gx = (rows + 127) / 128;
            p->gy = (uint32_t)((n + 31) / 32);
        } else {
            p->sh = SH_gemm64_f32 + kw->wt;
            p->gx = (rows + 63) / 64;
            p->gy = (uint32_t)((n + 63) / 64);
        }
        split_k(v, p);
    }
    p->x = x;
    p->y = out;
    p->res = p->out2 = p->rd2[0] = p->rd2[1] = NULL;
    norm_touch(v, out);
}

static int is_matvec(int sh) { return sh >= SH_matvec1_f32 && sh <= SH_matvec8_a2; }

typedef struct { VkDeviceAddress x, y, z, w; uint32_t n, dim; } elt_pc;

static void eltwise(vk_impl *v, int sh, elt_pc pc, const vm_buf *r0, const vm_buf *r1, const vm_buf *w0) {
    uint32_t gx, gy;
    grid_1d(((uint64_t)pc.n + 255) / 256, &gx, &gy);
    dispatch(v, sh, &pc, sizeof pc, gx, gy, 1, RDS(r0, r1), WRS(w0));
}

static void vk_add_bias(vm_backend *be, vm_buf *x, const vm_tensor *bias, int n, int dim) {
    vk_impl *v = impl_of(be);
    VkDeviceAddress ba = tensor_f32(v, bias);
    if (!ba) return;
    // fold into a pending matmul that wrote x (n rows of dim)
    for (int i = v->n_pend - 1; i >= 0; i--) {
        struct pend_mm *p = &v->pend[i];
        if (p->y == x && !(p->pc.flags & (MM_BIAS | MM_RES)) && p->pc.rows == (uint32_t)dim && p->pc.n == (uint32_t)n) {
            p->pc.bias = ba;
            p->pc.flags |= MM_BIAS;
            return;
        }
        if (p->y == x || p->x == x || p->res == x) break;
    }
    eltwise(v, SH_add_bias, (elt_pc){ x->addr, ba, 0, 0, (uint32_t)n * (uint32_t)dim, (uint32_t)dim }, x, NULL, x);
}

static void vk_swiglu(vm_backend *be, const vm_buf *gate, const vm_buf *up, size_t n, vm_buf *out) {
    vk_impl *v = impl_of(be);
    // right after the two matvecs (same shape, same input) that wrote gate and up: one
    // dual matvec computes both and the swiglu
    if (v->n_pend >= 2 && v->vk_fuse) {
        struct pend_mm *g = &v->pend[v->n_pend - 2], *u = &v->pend[v->n_pend - 1];
        if (g->y == gate && u->y == up && gate != up && g->sh == u->sh && is_matvec(g->sh) && g->x == u->x &&
            g->pc.x == u->pc.x && g->pc.n == u->pc.n && g->pc.rows == u->pc.rows && g->pc.cols == u->pc.cols &&
            g->pc.group == u->pc.group && g->pc.flags == u->pc.flags && !(g->pc.flags & (MM_BIAS | MM_RES)) &&
            (size_t)g->pc.rows * g->pc.n == n && g->x != gate && g->x != up && g->x != out) {
            g->pc.w2 = u->pc.w; g->pc.sc2 = u->pc.sc; g->pc.bi2 = u->pc.bi;
            g->pc.res = up->addr;
            g->pc.bias = out->addr;
            g->pc.flags |= MM_DUAL;
            g->gx = (g->pc.rows + mv_rows(g->sh, 1) - 1) / mv_rows(g->sh, 1);
            g->res = up;
            g->out2 = out;
            v->n_pend--;
            norm_touch(v, up);
            norm_touch(v, out);
            return;
        }
    }
    eltwise(v, SH_swiglu, (elt_pc){ gate->addr, up->addr, out->addr, 0, (uint32_t)n, 1 }, gate, up, out);
}

static void vk_add(vm_backend *be, vm_buf *x, const vm_buf *y, size_t n) {
    vk_impl *v = impl_of(be);
    // x += y right after the matmul that wrote y (a residual add): the matmul
    // adds its result into x as well as writing y
    if (v->n_pend) {
        struct pend_mm *p = &v->pend[v->n_pend - 1];
        if (p->y == y && x != y && p->x != x && !(p->pc.flags & MM_RES) && (size_t)p->pc.rows * p->pc.n == n) {
            p->pc.res = x->addr;
            p->pc.flags |= MM_RES;
            p->res = x;
            norm_touch(v, x);
            return;
        }
    }
    eltwise(v, SH_add, (elt_pc){ x->addr, y->addr, 0, 0, (uint32_t)n, 1 }, x, y, x);
}

static void vk_get_rows(vm_backend *be, const vm_buf *x, const vm_buf *rows, int n_rows, int dim, vm_buf *out) {
    eltwise(impl_of(be), SH_get_rows, (elt_pc){ x->addr, 0, out->addr, rows->addr, (uint32_t)n_rows * (uint32_t)dim, (uint32_t)dim },
            x, rows, out);
}

// A device buffer of at least bytes in *b (grown, contents undefined); NULL on failure.
static vm_buf *scratch_buf(vk_impl *v, vm_buf **b, size_t bytes) {
    if (*b && (*b)->size >= bytes) return *b;
    buf_release(v, *b);
    vm_err e = {{0}};
    if (!(*b = buf_create(v, bytes, 0, &e)) && !v->failed) { v->failed = 1; v->err = e; }
    return *b;
}

// n u32 counters in *b, all 0 (the shaders that count on them set them back to 0).
static vm_buf *count_buf(vm_backend *be, vm_buf **b, size_t n) {
    vk_impl *v = impl_of(be);
    if (*b && (*b)->size >= n * 4) return *b;
    uint32_t *zero = calloc(n, 4);
    if (!zero) {
        if (!v->failed) { v->failed = 1; vm_errf(&v->err, "out of memory"); }
        return NULL;
    }
    if (scratch_buf(v, b, n * 4)) vk_buf_write(be, *b, 0, zero, n * 4);
    free(zero);
    return *b;
}

// sample.comp: each row over groups of workgroups (a few thousand columns
// each), the last of a row's groups to finish merging their maxima (and, for
// a draw, their masses) and drawing.
#define SAMPLE_COLS_PER_GROUP 2048
#define SAMPLE_MAX_GROUPS 128   // at most sample.comp's workgroup (256): one mass an invocation

static void vk_sample(vm_backend *be, const vm_buf *x, int rows, int cols, const vm_buf *params, vm_buf *out) {
    vk_impl *v = impl_of(be);
    uint32_t groups = (uint32_t)((cols + SAMPLE_COLS_PER_GROUP - 1) / SAMPLE_COLS_PER_GROUP);
    if (groups > SAMPLE_MAX_GROUPS) groups = SAMPLE_MAX_GROUPS;
    if (groups < 1 || rows > 65535) groups = 1;   // (grid y: the rows)
    if (groups > 1 && (!scratch_buf(v, &v->sample_part, (size_t)rows * groups * 12) ||
                       !count_buf(be, &v->sample_count, (size_t)rows)))
        return;
    struct { VkDeviceAddress x, y, params, part, count; uint32_t rows, cols, has_params, groups; } pc =
        { x->addr, out->addr, params ? params->addr : 0, groups > 1 ? v->sample_part->addr : 0,
          groups > 1 ? v->sample_count->addr : 0, (uint32_t)rows, (uint32_t)cols, params != NULL, groups };
    uint32_t gx, gy;
    grid_1d((uint64_t)rows, &gx, &gy);
    if (groups > 1)
        dispatch(v, SH_sample, &pc, sizeof pc, groups, (uint32_t)rows, 1, RDS(x, params), WRS(out, v->sample_part, v->sample_count));
    else
        dispatch(v, SH_sample, &pc, sizeof pc, gx, gy, 1, RDS(x, params), WRS(out));
}

static void rope_dispatch(vk_impl *v, const struct pend_rope *r) {
    struct { VkDeviceAddress x, pos, inv_freq; uint32_t n, n_heads, head_dim, half_rot, interleaved; float theta_scale; } pc =
        { r->x->addr, r->pos->addr, r->freq, (uint32_t)r->n, (uint32_t)r->n_heads, (uint32_t)r->head_dim, (uint32_t)r->half,
          (uint32_t)r->interleaved, r->theta_scale };
    const vm_buf *rd[2] = { r->x, r->pos }, *wr[1] = { r->x };
    dispatch_raw(v, SH_rope, &pc, sizeof pc, (uint32_t)((r->half + 63) / 64), (uint32_t)r->n, (uint32_t)r->n_heads, rd, 2, wr, 1);
}

static void vk_rope(vm_backend *be, vm_buf *x, const vm_buf *positions, int n, int n_heads, int head_dim, const vm_rope *r) {
    vk_impl *v = impl_of(be);
    int half = r->rot_dim / 2;
    VkDeviceAddress fa = 0;
    if (r->theta_scale <= 0) {
        if (!(fa = vec_f32(v, r->inv_freq, VM_DTYPE_F32, (size_t)half))) return;
    }
    struct pend_rope pr = { x, positions, fa, n, n_heads, head_dim, half, r->interleaved != 0, r->theta_scale };
    // a second rope (k after q) waits with the first for the cache write
    int pair = v->n_rope == 1 && (v->n_pend == 0 || v->rope_after_mm) && v->rope[0].x != x && v->rope[0].pos == positions &&
               v->rope[0].freq == fa && v->rope[0].n == n && v->rope[0].head_dim == head_dim && v->rope[0].half == half &&
               v->rope[0].interleaved == pr.interleaved && v->rope[0].theta_scale == pr.theta_scale;
    if (!pair) {
        // a first rope on the output of a pending one-token matvec waits with
        // it (the cache write may fold both); anything else flushes
        int keep = v->fold_rope && n == 1 && v->n_rope == 0 && v->n_pend > 0;
        for (int i = 0; keep && i < v->n_pend; i++) keep = v->pend[i].x != x && v->pend[i].res != x;
        int made = 0;
        for (int i = 0; i < v->n_pend; i++) made |= v->pend[i].y == x;
        if (keep && made) v->rope_after_mm = 1;
        else pend_flush(v);
    }
    v->rope[v->n_rope++] = pr;
}

// A rope_desc's device copy (one per distinct content: per layer and kind,
// the same every step, so recorded command buffers still match).
static VkDeviceAddress rope_desc_addr(vk_impl *v, const struct rope_desc *d) {
    for (size_t i = 0; i < v->n_rdesc; i++)
        if (!memcmp(&v->rdesc[i].d, d, sizeof *d)) return v->rdesc[i].buf->addr;
    if (v->n_rdesc == v->cap_rdesc) {
        size_t cap = v->cap_rdesc ? 2 * v->cap_rdesc : 64;
        struct rope_slot *p = realloc(v->rdesc, cap * sizeof *p);
        if (!p) { fail(v, "rope descriptors (out of memory)", VK_ERROR_OUT_OF_HOST_MEMORY); return 0; }
        v->rdesc = p;
        v->cap_rdesc = cap;
    }
    vm_err e = {{0}};
    vm_buf *b = buf_create(v, sizeof *d, 0, &e);
    if (!b) { if (!v->failed) { v->failed = 1; v->err = e; } return 0; }
    // recorded ahead of the pending matmuls that will read it (buf_write would flush them first)
    int n_pend = v->n_pend, n_rope = v->n_rope, after = v->rope_after_mm;
    v->n_pend = v->n_rope = v->rope_after_mm = 0;
    vm_backend tmp = { .impl = v };
    vk_buf_write(&tmp, b, 0, d, sizeof *d);
    v->n_pend = n_pend;
    v->n_rope = n_rope;
    v->rope_after_mm = after;
    v->rdesc[v->n_rdesc].d = *d;
    v->rdesc[v->n_rdesc++].buf = b;
    return b->addr;
}

// Blocks in a layer's cache (backend.h's layout), for the shaders.
static uint32_t kv_cache_blocks(const vm_buf *cache, const vm_attn_meta *m, int n_kv_heads, int head_dim) {
    return (uint32_t)vm_kv_num_blocks(cache->size, m, n_kv_heads, head_dim);
}

// rope(q), rope(k), cache_write(k, v) for one token while the matvecs that
// made q, k and v are pending: each matvec pairs its rows as rope pairs
// (matvec.comp flag 32) and rotates and writes the cache in its epilogue.
// Returns 0 (nothing changed) where the pattern does not hold.
static int fold_rope_kv(vk_impl *v, const vm_buf *k, const vm_buf *vb, const vm_attn_meta *m,
                        vm_buf *k_cache, vm_buf *v_cache, int n_kv_heads, int head_dim) {
    const struct pend_rope *rq = &v->rope[0], *rk = &v->rope[1];
    if (v->n_rope != 2 || m->n_tokens != 1 || rk->x != k || rk->n != 1 || rk->n_heads != n_kv_heads ||
        rk->head_dim != head_dim || 2 * rk->half != head_dim ||
        (m->kv_dtype == VM_DTYPE_F16 && !rk->interleaved))
        return 0;
    struct pend_mm *pm[3] = { NULL, NULL, NULL };   // q, k, v
    const vm_buf *want[3] = { rq->x, k, vb };
    for (int i = 0; i < v->n_pend; i++)
        for (int kind = 0; kind < 3; kind++)
            if (v->pend[i].y == want[kind]) pm[kind] = &v->pend[i];
    for (int kind = 0; kind < 3; kind++) {
        struct pend_mm *p = pm[kind];
        if (!p || !is_matvec1(p->sh) || p->pc.n != 1 ||
            (p->pc.flags & (MM_RES | MM_DUAL | MM_CORR)) || p->pc.rows % (uint32_t)head_dim ||
            p->pc.rows / (uint32_t)head_dim != (uint32_t)(kind == 0 ? rq->n_heads : n_kv_heads))
            return 0;
    }
    for (int kind = 0; kind < 3; kind++) {
        struct rope_desc d = { rk->pos->addr, rk->freq, m->slot_mapping->addr, k_cache->addr, v_cache->addr,
                               (uint32_t)head_dim, (uint32_t)rk->half, (uint32_t)rk->interleaved, (uint32_t)m->block_size,
                               (uint32_t)n_kv_heads, (uint32_t)kind, m->kv_dtype == VM_DTYPE_F16, rk->theta_scale,
                               kv_cache_blocks(k_cache, m, n_kv_heads, head_dim), 0 };
        VkDeviceAddress a = rope_desc_addr(v, &d);
        if (!a) return 0;
        pm[kind]->pc.part = a;
        pm[kind]->pc.flags |= MM_ROPE;
        pm[kind]->gx = pm[kind]->pc.rows / 2;   // one rope pair a workgroup
    }
    // the k and v matvecs now also write the caches (and read the step's metadata)
    pm[1]->out2 = k_cache;
    pm[2]->out2 = v_cache;
    for (int kind = 0; kind < 3; kind++) { pm[kind]->rd2[0] = rk->pos; pm[kind]->rd2[1] = m->slot_mapping; }
    v->n_rope = 0;
    v->rope_after_mm = 0;
    return 1;
}

static void vk_cache_write(vm_backend *be, const vm_buf *k, const vm_buf *vb, const vm_attn_meta *m,
                           vm_buf *k_cache, vm_buf *v_cache, int n_kv_heads, int head_dim) {
    vk_impl *v = impl_of(be);
    const struct pend_rope *rq = &v->rope[0], *rk = &v->rope[1];
    if (v->rope_after_mm && fold_rope_kv(v, k, vb, m, k_cache, v_cache, n_kv_heads, head_dim)) return;
    if (v->rope_after_mm) { v->rope_after_mm = 0; mm_flush(v); }   // the matvecs, then the ropes as usual
    if (v->n_rope == 2 && v->n_pend == 0 && rk->x == k && rk->n == m->n_tokens && rk->n_heads == n_kv_heads &&
        rk->head_dim == head_dim && 2 * rk->half == head_dim && vb != rq->x && vb != k &&
        (m->kv_dtype != VM_DTYPE_F16 || rk->interleaved)) {
        // rope(q), rope(k) and this write in one dispatch (rope_kv.comp)
        struct { VkDeviceAddress q, k, v, pos, inv_freq, slots, kc, vc;
                 uint32_t n, n_heads, n_kv_heads, head_dim, half_rot, interleaved, block_size; float theta_scale;
                 uint32_t n_blocks; } pc =
            { rq->x->addr, k->addr, vb->addr, rk->pos->addr, rk->freq, m->slot_mapping->addr, k_cache->addr, v_cache->addr,
              (uint32_t)m->n_tokens, (uint32_t)rq->n_heads, (uint32_t)n_kv_heads, (uint32_t)head_dim, (uint32_t)rk->half,
              (uint32_t)rk->interleaved, (uint32_t)m->block_size, rk->theta_scale,
              kv_cache_blocks(k_cache, m, n_kv_heads, head_dim) };
        const vm_buf *rd[5] = { rq->x, k, vb, rk->pos, m->slot_mapping }, *wr[4] = { rq->x, k, k_cache, v_cache };
        v->n_rope = 0;
        dispatch_raw(v, m->kv_dtype == VM_DTYPE_F16 ? SH_rope_kv_f16 : SH_rope_kv_f32, &pc, sizeof pc,
                     (uint32_t)((rk->half + 63) / 64), (uint32_t)m->n_tokens, (uint32_t)(rq->n_heads + n_kv_heads), rd, 5, wr, 4);
        return;
    }
    struct { VkDeviceAddress k, v, slots, kc, vc; uint32_t n_tokens, n_kv_heads, head_dim, block_size, n_blocks; } pc =
        { k->addr, vb->addr, m->slot_mapping->addr, k_cache->addr, v_cache->addr, (uint32_t)m->n_tokens,
          (uint32_t)n_kv_heads, (uint32_t)head_dim, (uint32_t)m->block_size, kv_cache_blocks(k_cache, m, n_kv_heads, head_dim) };
    int f16 = m->kv_dtype == VM_DTYPE_F16;
    uint32_t per = f16 ? (uint32_t)head_dim / 2 : (uint32_t)head_dim;
    dispatch(v, f16 ? SH_cache_write_f16 : SH_cache_write_f32, &pc, sizeof pc, (per + 63) / 64,
             (uint32_t)m->n_tokens, (uint32_t)n_kv_heads, RDS(k, vb, m->slot_mapping), WRS(k_cache, v_cache));
}

#define ATTN_WG 128   // attention.comp's workgroup
#define ATTN_U 4      // positions per subgroup per step

static void vk_attention(vm_backend *be, const vm_buf *q, const vm_buf *k_cache, const vm_buf *v_cache,
                         const vm_attn_meta *m, int n_heads, int n_kv_heads, int head_dim, float scale, vm_buf *out) {
    vk_impl *v = impl_of(be);
    if (head_dim > 256 || head_dim % 2) {
        if (!v->failed) { v->failed = 1; vm_errf(&v->err, "vulkan attention: head_dim %d unsupported (even, at most 256)", head_dim); }
        return;
    }
    // Split the context so that there are enough workgroups to fill the GPU
    // (decode: few tokens x heads, also over a short context), in tiles of
    // what one workgroup's subgroups take in one step.
    uint32_t items = (uint32_t)m->n_tokens * (uint32_t)n_heads;
    uint32_t tile = (ATTN_WG / (v->subgroup_size < ATTN_WG ? v->subgroup_size : ATTN_WG)) * ATTN_U;
    uint32_t tiles = (uint32_t)((m->max_ctx_len + tile - 1) / tile);
    uint32_t want = items >= v->attn_items ? 1 : (v->attn_items + items - 1) / items;
    if (want > tiles) want = tiles;
    if (want > 64) want = 64;
    if (want < 1) want = 1;
    uint32_t split_len = (tiles + want - 1) / want * tile;
    uint32_t n_splits = (uint32_t)((m->max_ctx_len + split_len - 1) / split_len);
    if (n_splits < 1) n_splits = 1;
    VkDeviceAddress dst = out->addr;
    if (n_splits > 1) {
        // per-item split counts, all 0 between dispatches
        if (!scratch_buf(v, &v->attn_part, (size_t)items * n_splits * (head_dim + 2) * 4) ||
            !count_buf(be, &v->attn_count, items))
            return;
        dst = v->attn_part->addr;
    }
    struct { VkDeviceAddress q, kc, vc, out, pos, seq_start, table;
             uint32_t n_heads, n_kv_heads, head_dim, block_size, max_blocks, n_seqs, n_splits, split_len; float scale;
             VkDeviceAddress count, final_; uint32_t n_blocks; } pc =
        { q->addr, k_cache->addr, v_cache->addr, dst, m->positions->addr, m->seq_start->addr, m->block_table->addr,
          (uint32_t)n_heads, (uint32_t)n_kv_heads, (uint32_t)head_dim, (uint32_t)m->block_size,
          (uint32_t)m->max_blocks_per_seq, (uint32_t)m->n_seqs, n_splits, split_len, scale,
          n_splits > 1 ? v->attn_count->addr : 0, out->addr,
          kv_cache_blocks(k_cache, m, n_kv_heads, head_dim) };
    _Static_assert(sizeof pc <= PUSH_BYTES, "push constants");
    const vm_buf *split_part = n_splits > 1 ? v->attn_part : NULL, *split_count = n_splits > 1 ? v->attn_count : NULL;
    dispatch(v, m->kv_dtype == VM_DTYPE_F16 ? SH_attention_f16 : SH_attention_f32, &pc, sizeof pc, items, n_splits, 1,
             RDS(q, k_cache, v_cache, m->positions, m->seq_start, m->block_table), WRS(out, split_part, split_count));
}

// Submits nothing (see the top): the next buf_read does, with its copy in the
// same command buffer.
static int vk_sync(vm_backend *be, vm_err *e) {
    vk_impl *v = impl_of(be);
    pend_flush(v);
    if (v->failed) {
        vm_errf(e, "%s", v->err.msg);
        return -1;
    }
    return 0;
}

// ---- setup ----------------------------------------------------------------------------------------

static void vk_destroy(vm_backend *be) {
    if (!be) return;
    vk_impl *v = be->impl;
    if (v) {
        if (v->dev) {
            flush(v);
            vkDeviceWaitIdle(v->dev);
            if (v->qpool) {
                fprintf(stderr, "vulkan profile (%s%s): %llu submits (%llu of them reused a recorded command buffer), "
                        "%llu dispatches, %llu barriers, GPU %.1f ms\n", v->name, v->coopmat ? ", coopmat" : "",
                        (unsigned long long)v->n_submits, (unsigned long long)v->n_cache_hits, (unsigned long long)v->n_dispatches,
                        (unsigned long long)v->n_barriers, v->prof_gpu_ms);
                for (int i = 0; i < SH_COUNT && !v->prof_steps; i++)   // (=3 has no per-shader times)
                    if (v->prof_n[i])
                        fprintf(stderr, "  %-18s %8llu x %8.2f us = %9.1f ms\n", shaders[i].name, (unsigned long long)v->prof_n[i],
                                v->prof_ms[i] * 1e3 / (double)v->prof_n[i], v->prof_ms[i]);
                for (int shown = 0; v->prof_grids && shown < 64; shown++) {   // per grid, largest total first
                    int best = -1;
                    for (int k = 0; k < v->n_pk; k++)
                        if (v->pk[k].n && (best < 0 || v->pk[k].ms > v->pk[best].ms)) best = k;
                    if (best < 0) break;
                    struct prof_key *k = &v->pk[best];
                    fprintf(stderr, "    %-16s %6u x %4u x %3u K %5u: %8llu x %8.2f us = %9.1f ms\n", shaders[k->sh].name, k->g[0],
                            k->g[1], k->g[2], k->cols, (unsigned long long)k->n, k->ms * 1e3 / (double)k->n, k->ms);
                    k->n = 0;
                }
                vkDestroyQueryPool(v->dev, v->qpool, NULL);
            }
            while (v->weights) { vk_weight *n = v->weights->next; buf_destroy(v, v->weights->buf); free(v->weights); v->weights = n; }
            for (size_t i = 0; i < v->n_vecs; i++) { buf_destroy(v, v->vecs[i].buf); free(v->vecs[i].bytes); }
            buf_destroy(v, v->staging);
            buf_destroy(v, v->attn_part);
            for (size_t i = 0; i < v->n_rdesc; i++) buf_destroy(v, v->rdesc[i].buf);
            free(v->rdesc);
            buf_destroy(v, v->attn_count);
            buf_destroy(v, v->sample_part);
            buf_destroy(v, v->sample_count);
            buf_destroy(v, v->mm_part);
            buf_destroy(v, v->xq);
            buf_destroy(v, v->upload);
            for (int i = 0; i < CB_CACHE; i++) free(v->cache[i].list);
            free(v->list);
            for (int i = 0; i < SH_COUNT; i++) {
                if (v->pipes[i]) vkDestroyPipeline(v->dev, v->pipes[i], NULL);
                if (v->modules[i]) vkDestroyShaderModule(v->dev, v->modules[i], NULL);
            }
            if (v->layout) vkDestroyPipelineLayout(v->dev, v->layout, NULL);
            if (v->fence) vkDestroyFence(v->dev, v->fence, NULL);
            if (v->pool) vkDestroyCommandPool(v->dev, v->pool, NULL);
            vkDestroyDevice(v->dev, NULL);
        }
        if (v->instance) vkDestroyInstance(v->instance, NULL);
        free(v->vecs);
        free(v->deferred);
        free(v);
    }
    free(be);
}

static int has_ext(const VkExtensionProperties *ex, uint32_t n, const char *name) {
    for (uint32_t i = 0; i < n; i++)
        if (!strcmp(ex[i].extensionName, name)) return 1;
    return 0;
}

static int str_icontains(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i])) i++;
        if (i == n) return 1;
    }
    return 0;
}

// Why device d cannot run our shaders, or NULL if it can.
static const char *unusable(VkPhysicalDevice d, uint32_t *qfamily) {
    VkPhysicalDeviceProperties p;
    vkGetPhysicalDeviceProperties(d, &p);
    if (p.apiVersion < VK_API_VERSION_1_2) return "needs Vulkan 1.2";
    VkPhysicalDeviceVulkan12Features f12 = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES };
    VkPhysicalDeviceFeatures2 f = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f12 };
    vkGetPhysicalDeviceFeatures2(d, &f);
    if (!f12.bufferDeviceAddress) return "no bufferDeviceAddress";
    VkPhysicalDeviceSubgroupProperties sp = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES };
    VkPhysicalDeviceProperties2 p2 = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &sp };
    vkGetPhysicalDeviceProperties2(d, &p2);
    if (!(sp.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) ||
        (sp.supportedOperations & (VK_SUBGROUP_FEATURE_BASIC_BIT | VK_SUBGROUP_FEATURE_ARITHMETIC_BIT)) !=
            (VK_SUBGROUP_FEATURE_BASIC_BIT | VK_SUBGROUP_FEATURE_ARITHMETIC_BIT))
        return "no subgroup arithmetic in compute shaders";
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(d, &nq, NULL);
    VkQueueFamilyProperties qp[32];
    if (nq > 32) nq = 32;
    vkGetPhysicalDeviceQueueFamilyProperties(d, &nq, qp);
    for (uint32_t i = 0; i < nq; i++)
        if (qp[i].queueFlags & VK_QUEUE_COMPUTE_BIT) { *qfamily = i; return NULL; }
    return "no compute queue";
}

static int type_rank(VkPhysicalDeviceType t) {
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return 4;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return 3;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return 2;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return 1;
    default: return 0;
    }
}

static int setup(vk_impl *v, const char *hint, vm_err *e) {
    // instance (with portability enumeration, so MoltenVK is listed)
    uint32_t n_ext = 0;
    vkEnumerateInstanceExtensionProperties(NULL, &n_ext, NULL);
    VkExtensionProperties *ex = calloc(n_ext ? n_ext : 1, sizeof *ex);
    if (!ex) return vm_errf(e, "out of memory");
    vkEnumerateInstanceExtensionProperties(NULL, &n_ext, ex);
    const char *iext[2];
    uint32_t n_iext = 0;
    VkInstanceCreateFlags iflags = 0;
#ifdef VK_KHR_portability_enumeration
    if (has_ext(ex, n_ext, VK_KHR_PORTABILITY_ENUMERATION_EXTENSION_NAME)) {
        iext[n_iext++] = VK_KHR_PORTABILITY_ENUMERATION_EXTENSION_NAME;
        iflags |= VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR;
    }
#endif
    free(ex);
    VkApplicationInfo app = { .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO, .pApplicationName = "vllm-metal",
                              .pEngineName = "vllm-metal", .apiVersion = VK_API_VERSION_1_2 };
    VkInstanceCreateInfo ici = { .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .flags = iflags, .pApplicationInfo = &app,
                                 .enabledExtensionCount = n_iext, .ppEnabledExtensionNames = iext };
    VkResult r = vkCreateInstance(&ici, NULL, &v->instance);
    if (r != VK_SUCCESS) return vm_errf(e, "vulkan: cannot create an instance (VkResult %d; is a Vulkan driver installed?)", (int)r);

    // device choice
    uint32_t nd = 0;
    vkEnumeratePhysicalDevices(v->instance, &nd, NULL);
    if (nd == 0) return vm_errf(e, "vulkan: no Vulkan devices");
    VkPhysicalDevice devs[16];
    if (nd > 16) nd = 16;
    vkEnumeratePhysicalDevices(v->instance, &nd, devs);
    const char *env = getenv("VLLM_METAL_VULKAN_DEVICE");
    if (env && *env) hint = env;
    int best = -1, best_rank = -1;
    uint32_t qf = 0;
    char why[512] = "";
    for (uint32_t i = 0; i < nd; i++) {
        VkPhysicalDeviceProperties p;
        vkGetPhysicalDeviceProperties(devs[i], &p);
        if (hint && *hint) {
            char *end;
            long idx = strtol(hint, &end, 10);
            int match = *end == 0 ? idx == (long)i : str_icontains(p.deviceName, hint);
            if (!match) continue;
        }
        uint32_t q = 0;
        const char *bad = unusable(devs[i], &q);
        if (bad) {
            size_t len = strlen(why);
            snprintf(why + len, sizeof why - len, "%s%s: %s", len ? "; " : "", p.deviceName, bad);
            continue;
        }
        int rank = type_rank(p.deviceType);
        if (rank > best_rank) { best = (int)i; best_rank = rank; qf = q; }
    }
    if (best < 0)
        return vm_errf(e, "vulkan: no usable device%s%s%s%s%s%s", hint && *hint ? " matching \"" : "",
                       hint && *hint ? hint : "", hint && *hint ? "\"" : "", why[0] ? " (" : "", why, why[0] ? ")" : "");
    v->phys = devs[best];
    v->qfamily = qf;
    VkPhysicalDeviceProperties props;
    vkGetPhysicalDeviceProperties(v->phys, &props);
    snprintf(v->name, sizeof v->name, "%s", props.deviceName);
    v->software = props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;
    VkPhysicalDeviceSubgroupProperties sp = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES };
    VkPhysicalDeviceProperties2 p2 = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &sp };
    vkGetPhysicalDeviceProperties2(v->phys, &p2);
    v->subgroup_size = sp.subgroupSize ? sp.subgroupSize : 32;
    const char *fenv = getenv("VLLM_METAL_VULKAN_FUSE");
    v->vk_fuse = !(fenv && !strcmp(fenv, "0"));
    const char *fold_env = getenv("VLLM_METAL_VULKAN_FOLD_ROPE");
    v->fold_rope = v->vk_fuse && !(fold_env && !strcmp(fold_env, "0"));
    const char *genv = getenv("VLLM_METAL_VULKAN_GEMM_MIN_TILES");
    v->gemm_min_tiles = 512;   // set again below once coopmat is known
    if (props.limits.maxPushConstantsSize < PUSH_BYTES) return vm_errf(e, "vulkan: %s has too few push constants", v->name);

    // logical device
    uint32_t n_dext = 0;
    vkEnumerateDeviceExtensionProperties(v->phys, NULL, &n_dext, NULL);
    VkExtensionProperties *dex = calloc(n_dext ? n_dext : 1, sizeof *dex);
    if (!dex) return vm_errf(e, "out of memory");
    vkEnumerateDeviceExtensionProperties(v->phys, NULL, &n_dext, dex);
    const char *dext[2];
    uint32_t n_use = 0;
    if (has_ext(dex, n_dext, "VK_KHR_portability_subset")) dext[n_use++] = "VK_KHR_portability_subset";
    // Cooperative matrices for the batch GEMM (gemm_cm.comp): VK_NV_cooperative_matrix
    // with 16x16x16 f16 x f16 -> f32 at subgroup scope, f16 arithmetic, subgroups of 32.
    // VLLM_METAL_VULKAN_COOPMAT=0 keeps the portable tiled GEMM.
    const char *cenv = getenv("VLLM_METAL_VULKAN_COOPMAT");
    VkPhysicalDeviceCooperativeMatrixFeaturesNV cmf = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV };
    VkPhysicalDeviceVulkan12Features q12 = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES };
    if (!(cenv && !strcmp(cenv, "0")) && v->subgroup_size == 32 && has_ext(dex, n_dext, VK_NV_COOPERATIVE_MATRIX_EXTENSION_NAME)) {
        q12.pNext = &cmf;
        VkPhysicalDeviceFeatures2 qf2 = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &q12 };
        vkGetPhysicalDeviceFeatures2(v->phys, &qf2);
        PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesNV getp = (PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesNV)
            vkGetInstanceProcAddr(v->instance, "vkGetPhysicalDeviceCooperativeMatrixPropertiesNV");
        if (cmf.cooperativeMatrix && q12.shaderFloat16 && getp) {
            uint32_t np = 0;
            getp(v->phys, &np, NULL);
            VkCooperativeMatrixPropertiesNV *cp = calloc(np ? np : 1, sizeof *cp);
            for (uint32_t i = 0; cp && i < np; i++) cp[i].sType = VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_NV;
            if (cp && getp(v->phys, &np, cp) == VK_SUCCESS)
                for (uint32_t i = 0; i < np; i++)
                    if (cp[i].MSize == 16 && cp[i].NSize == 16 && cp[i].KSize == 16 && cp[i].AType == VK_COMPONENT_TYPE_FLOAT16_NV &&
                        cp[i].BType == VK_COMPONENT_TYPE_FLOAT16_NV && cp[i].CType == VK_COMPONENT_TYPE_FLOAT32_NV &&
                        cp[i].DType == VK_COMPONENT_TYPE_FLOAT32_NV && cp[i].scope == VK_SCOPE_SUBGROUP_NV)
                        v->coopmat = 1;
            free(cp);
        }
        if (v->coopmat) dext[n_use++] = VK_NV_COOPERATIVE_MATRIX_EXTENSION_NAME;
    }
    free(dex);
    const char *cqenv = getenv("VLLM_METAL_VULKAN_COOPMAT_QUANT");
    v->coopmat_quant = v->coopmat && !(cqenv && !strcmp(cqenv, "0"));
    v->gemm_min_tiles = genv && *genv ? (uint32_t)atoi(genv) : 16;
    v->gemm_min_tiles_plain = genv && *genv ? (uint32_t)atoi(genv) : v->coopmat ? 128 : 512;
    const char *senv = getenv("VLLM_METAL_VULKAN_SPLITK");
    v->splitk_wgs = senv && *senv ? (uint32_t)atoi(senv) : 512;
    const char *q8env = getenv("VLLM_METAL_Q8_ACTIVATIONS");
    // off unless asked for: on a GPU the f32 activations are faster, and
    // llama.cpp's outputs are reproduced only bit for bit (the CPU backend):
    // its 8-bit rounding makes any other summation order drift (see
    // docs/ARCHITECTURE.md, "GGUF block types")
    v->q8_activations = q8env && !strcmp(q8env, "1");
    const char *renv = getenv("VLLM_METAL_VULKAN_REUSE");
    v->no_reuse = renv && !strcmp(renv, "0");
    const char *aenv = getenv("VLLM_METAL_VULKAN_ATTN_WGS");
    v->attn_items = aenv && atoi(aenv) > 0 ? (uint32_t)atoi(aenv) : 1536;
    float prio = 1.0f;
    VkDeviceQueueCreateInfo qci = { .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO, .queueFamilyIndex = qf,
                                    .queueCount = 1, .pQueuePriorities = &prio };
    VkPhysicalDeviceCooperativeMatrixFeaturesNV cm_on = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV,
                                                          .cooperativeMatrix = VK_TRUE };
    VkPhysicalDeviceVulkan12Features f12 = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
                                             .pNext = v->coopmat ? &cm_on : NULL,
                                             .bufferDeviceAddress = VK_TRUE, .shaderFloat16 = v->coopmat ? VK_TRUE : VK_FALSE };
    VkPhysicalDeviceFeatures2 f2 = { .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f12 };
    VkDeviceCreateInfo dci = { .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, .pNext = &f2, .queueCreateInfoCount = 1,
                               .pQueueCreateInfos = &qci, .enabledExtensionCount = n_use, .ppEnabledExtensionNames = dext };
    if ((r = vkCreateDevice(v->phys, &dci, NULL, &v->dev)) != VK_SUCCESS)
        return vm_errf(e, "vulkan: cannot create a device on %s (VkResult %d)", v->name, (int)r);
    vkGetDeviceQueue(v->dev, qf, 0, &v->queue);

    // memory types: unified (device-local + host-visible, not a discrete card) or device-local + staging
    VkPhysicalDeviceMemoryProperties mp;
    vkGetPhysicalDeviceMemoryProperties(v->phys, &mp);
    const VkMemoryPropertyFlags dl = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT,
        hv = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    int dev_t = find_mem_type(v, ~0u, dl, 0), uni_t = find_mem_type(v, ~0u, dl | hv, 0);
    int stage_t = find_mem_type(v, ~0u, hv, VK_MEMORY_PROPERTY_HOST_CACHED_BIT);
    if (stage_t < 0) return vm_errf(e, "vulkan: %s has no host-visible memory", v->name);
    // VLLM_METAL_VULKAN_UNIFIED=0 forces the staging path (tests it on lavapipe).
    const char *uenv = getenv("VLLM_METAL_VULKAN_UNIFIED");
    int allow_unified = !(uenv && !strcmp(uenv, "0"));
    if (allow_unified && props.deviceType != VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU && uni_t >= 0) {
        v->unified = 1;
        v->dev_mem_type = (uint32_t)uni_t;
    } else {
        v->dev_mem_type = (uint32_t)(dev_t >= 0 ? dev_t : stage_t);
    }
    v->staging_mem_type = (uint32_t)stage_t;

    VkCommandPoolCreateInfo pci = { .sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                    .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT, .queueFamilyIndex = qf };
    if ((r = vkCreateCommandPool(v->dev, &pci, NULL, &v->pool)) != VK_SUCCESS) return vm_errf(e, "vulkan: command pool (%d)", (int)r);
    VkFenceCreateInfo fci = { .sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO };
    if ((r = vkCreateFence(v->dev, &fci, NULL, &v->fence)) != VK_SUCCESS) return vm_errf(e, "vulkan: fence (%d)", (int)r);
    VkPushConstantRange range = { VK_SHADER_STAGE_COMPUTE_BIT, 0, PUSH_BYTES };
    VkPipelineLayoutCreateInfo lci = { .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
                                       .pushConstantRangeCount = 1, .pPushConstantRanges = &range };
    if ((r = vkCreatePipelineLayout(v->dev, &lci, NULL, &v->layout)) != VK_SUCCESS) return vm_errf(e, "vulkan: pipeline layout (%d)", (int)r);
    const char *prof = getenv("VLLM_METAL_VULKAN_PROFILE");
    if (prof && *prof && strcmp(prof, "0") && props.limits.timestampComputeAndGraphics) {
        VkQueryPoolCreateInfo qi = { .sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO, .queryType = VK_QUERY_TYPE_TIMESTAMP,
                                     .queryCount = PROF_MAX };
        if (vkCreateQueryPool(v->dev, &qi, NULL, &v->qpool) != VK_SUCCESS) v->qpool = VK_NULL_HANDLE;
        v->prof_grids = !strcmp(prof, "2");
        v->prof_steps = !strcmp(prof, "3");
        v->ts_period = props.limits.timestampPeriod;
    }
    return 0;
}

vm_backend *vm_backend_vulkan_create(const char *device_hint, vm_err *e) {
    vm_backend *be = calloc(1, sizeof *be);
    vk_impl *v = calloc(1, sizeof *v);
    if (!be || !v) { free(be); free(v); vm_errf(e, "out of memory"); return NULL; }
    be->impl = v;
    if (setup(v, device_hint, e) != 0) { vk_destroy(be); return NULL; }
    be->name = "vulkan";
    be->buf_alloc = vk_buf_alloc;
    be->buf_free = vk_buf_free;
    be->buf_write = vk_buf_write;
    be->buf_read = vk_buf_read;
    be->weight_prepare = vk_weight_prepare;
    be->embed = vk_embed;
    be->rmsnorm = vk_rmsnorm;
    be->matmul = vk_matmul;
    be->add_bias = vk_add_bias;
    be->rope = vk_rope;
    be->cache_write = vk_cache_write;
    be->attention = vk_attention;
    be->swiglu = vk_swiglu;
    be->add = vk_add;
    be->get_rows = vk_get_rows;
    be->sample = vk_sample;
    be->sync = vk_sync;
    be->destroy = vk_destroy;
    return be;
}

const char *vm_backend_vulkan_device_name(const vm_backend *be) { return impl_of(be)->name; }
int vm_backend_vulkan_is_software(const vm_backend *be) { return impl_of(be)->software; }

#endif
