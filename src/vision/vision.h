// vision.h - images in, vision features out, for Qwen2-VL and Qwen2.5-VL:
//   decode (JPEG/PNG[/WebP]) -> RGB8 -> smart resize (bicubic, antialiased, as
//   torchvision's uint8 CPU path that the HF Qwen2-VL image processor uses by
//   default) -> rescale/normalize -> 14x14x2 patches in 2x2-merge order
//   -> vision transformer -> patch merger -> features for the image-pad tokens;
//   plus the 3-axis (t, h, w) M-RoPE positions of a prompt with images.
#ifndef VM_VISION_H
#define VM_VISION_H

#include "../backend/backend.h"

// ---- images -----------------------------------------------------------------

typedef struct vm_image {
    int width, height;
    uint8_t *rgb;              // height * width * 3, row-major, RGB
} vm_image;

#define VM_IMAGE_DEFAULT_MAX_PIXELS (64LL * 1024 * 1024)

// Decodes JPEG, PNG and WebP into RGB8 as transformers' convert_to_rgb sees
// them through PIL: grayscale replicated, palettes expanded, 16-bit truncated
// to 8, transparency (alpha channel or tRNS) composited onto white.
// Refuses images above max_pixels (<= 0: VM_IMAGE_DEFAULT_MAX_PIXELS) before
// decoding their pixels. Errors name the problem (corrupt, truncated, unknown format).
int vm_image_decode(const void *data, size_t n, int64_t max_pixels, vm_image *out, vm_err *e);
int vm_image_load_file(const char *path, int64_t max_pixels, vm_image *out, vm_err *e);
void vm_image_free(vm_image *im);

// Bicubic (a = -0.5) antialiased resize, separable (horizontal then vertical
// pass through a uint8 intermediate), fixed-point weights: bit-exact with
// torch.nn.functional.interpolate(mode="bicubic", antialias=True) on uint8
// CPU tensors (the torchvision path of transformers' image processors).
int vm_image_resize_bicubic(const vm_image *in, int out_w, int out_h, vm_image *out, vm_err *e);

// ---- image sources (image_source.c) -------------------------------------------

typedef struct vm_image_fetch_opts {
    size_t max_bytes;          // default 20 MiB
    long timeout_s;            // whole transfer, default 10
    int max_redirects;         // default 3
    int allow_files;           // local paths / file:// (never for the server); default 0
} vm_image_fetch_opts;

void vm_image_fetch_defaults(vm_image_fetch_opts *o);
// The encoded bytes of an image given as a data: URL (base64), an http(s):// URL
// (libcurl; only http/https, also after redirects) or, with allow_files, a path.
// *out: malloc'ed. opts NULL: defaults.
int vm_image_source_read(const char *src, const vm_image_fetch_opts *opts, void **out, size_t *n, vm_err *e);
// Standard or URL-safe base64 (whitespace ignored) -> malloc'ed bytes.
int vm_base64_decode(const char *s, size_t n, void **out, size_t *n_out, size_t max_bytes, vm_err *e);

// ---- preprocessing (HF Qwen2VLImageProcessor) ---------------------------------

typedef struct vm_vision_preproc {
    int64_t min_pixels, max_pixels;
    int patch_size, temporal_patch_size, merge_size;
    float mean[3], std[3];
    float rescale;             // 1/255
} vm_vision_preproc;

// Qwen2-VL defaults: 56*56 .. 28*28*1280 pixels, patch 14, temporal 2, merge 2, CLIP mean/std.
void vm_vision_preproc_default(vm_vision_preproc *p);
// Reads <dir>/preprocessor_config.json when present (min_pixels/max_pixels or
// size.shortest_edge/longest_edge, image_mean/std, patch/merge sizes); else defaults.
int vm_vision_preproc_load(vm_vision_preproc *p, const char *dir, vm_err *e);

// transformers' smart_resize: both sides multiples of factor, pixels within
// [min_pixels, max_pixels], aspect kept as closely as possible.
int vm_smart_resize(int height, int width, int factor, int64_t min_pixels, int64_t max_pixels,
                    int *out_h, int *out_w, vm_err *e);

// One image -> pixel_values (*n_patches, 3*temporal*patch*patch) f32 (caller frees)
// and grid_thw = {1, h/patch, w/patch}.
int vm_vision_preprocess(const vm_vision_preproc *p, const vm_image *im, float **pixels,
                         int *n_patches, int grid_thw[3], vm_err *e);

// ---- vision tower + merger ----------------------------------------------------

typedef enum { VM_VISION_QWEN2_VL, VM_VISION_QWEN2_5_VL } vm_vision_kind;

typedef struct vm_vision_config {
    vm_vision_kind kind;
    int depth, embed_dim, n_heads, head_dim, mlp_dim, out_dim;
    int in_channels, patch_size, temporal_patch_size, merge_size;
    int window_size;           // Qwen2.5-VL, in pixels
    int fullatt[64], n_fullatt; // Qwen2.5-VL: blocks with full attention
    int quick_gelu;            // Qwen2-VL MLP activation: quick_gelu (1) or gelu (0)
    float rope_theta;
    // token ids and text-side M-RoPE (from the top-level config)
    int image_token_id, video_token_id, vision_start_token_id, vision_end_token_id;
    int mrope_section[3];
} vm_vision_config;

typedef struct vm_vision vm_vision;

// Reads <dir>/config.json ("vision_config") and the visual.* / model.visual.*
// tensors of <dir>'s weights. Linear layers run on be (matmul); the rest on the host.
vm_vision *vm_vision_create(const char *dir, vm_backend *be, vm_err *e);
void vm_vision_free(vm_vision *v);
const vm_vision_config *vm_vision_get_config(const vm_vision *v);

// pixels: the concatenated pixel_values of n_images images, grid_thw [n_images][3].
// features: (sum t*h*w/merge^2, out_dim) f32 (caller frees), in image order.
int vm_vision_forward(vm_vision *v, const float *pixels, int n_images, const int (*grid_thw)[3],
                      float **features, int *n_features, vm_err *e);

// ---- M-RoPE positions ---------------------------------------------------------

// transformers' get_rope_index for one sequence of images and text: each run of
// image_token_id of length t*h*w/merge^2 takes the next grid. positions: [3][n]
// (t, h, w rows); *rope_delta = max position + 1 - n (decode position of token
// i >= n is i + rope_delta on all three axes). Errors if runs and grids disagree.
int vm_mrope_positions(const int32_t *tokens, int n, int image_token_id, int merge_size,
                       int n_images, const int (*grid_thw)[3], int32_t *positions,
                       int32_t *rope_delta, vm_err *e);

#endif
