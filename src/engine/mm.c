// mm.c - a request's images on their way to a vision-language model: decode,
// preprocess (HF Qwen2VLImageProcessor), a content hash per image for the
// prefix cache, the prompt's image-pad expansion, and (on the engine thread)
// one vision-tower run per image whose features stay until the request ends.
#include <stdio.h>
#include <stdlib.h>

#include "../hub/sha256.h"
#include "engine_internal.h"

vm_mm_inputs *vm_mm_inputs_retain(vm_mm_inputs *mm) {
    if (mm) __atomic_add_fetch(&mm->refs, 1, __ATOMIC_ACQ_REL);
    return mm;
}

void vm_mm_inputs_release(vm_mm_inputs *mm) {
    if (!mm || __atomic_sub_fetch(&mm->refs, 1, __ATOMIC_ACQ_REL) > 0) return;
    for (int i = 0; i < mm->n_images; i++) { free(mm->images[i].pixels); free(mm->images[i].features); }
    free(mm->images);
    free(mm);
}

int vm_mm_inputs_count(const vm_mm_inputs *mm) { return mm ? mm->n_images : 0; }
uint64_t vm_mm_inputs_hash(const vm_mm_inputs *mm, int i) {
    return mm && i >= 0 && i < mm->n_images ? mm->images[i].hash : 0;
}

static uint64_t image_hash(const vm_image *im) {
    vm_sha256 s;
    vm_sha256_init(&s);
    uint32_t wh[2] = { (uint32_t)im->width, (uint32_t)im->height };
    vm_sha256_update(&s, wh, sizeof wh);
    vm_sha256_update(&s, im->rgb, (size_t)im->width * (size_t)im->height * 3);
    uint8_t d[32];
    vm_sha256_final(&s, d);
    uint64_t h = 0;
    for (int i = 0; i < 8; i++) h = h << 8 | d[i];
    return h ? h : 1;
}

vm_mm_inputs *vm_mm_prepare(const vm_vision_info *vi, const vm_image_input *images, int n,
                            int64_t max_pixels, vm_err *e) {
    if (!vi) { vm_errf(e, "this model does not take images (it is not a vision-language model)"); return NULL; }
    if (n <= 0) { vm_errf(e, "no images given"); return NULL; }
    vm_mm_inputs *mm = calloc(1, sizeof *mm);
    if (!mm || !(mm->images = calloc((size_t)n, sizeof *mm->images))) {
        free(mm);
        vm_errf(e, "out of memory");
        return NULL;
    }
    mm->refs = 1;
    mm->image_token_id = vi->image_token_id;
    mm->merge_size = vi->merge_size;
    for (int i = 0; i < n; i++) {
        vm_image decoded = {0};
        const vm_image *im = images[i].pixels;
        vm_err de = {{0}};
        if (images[i].bytes) {
            if (vm_image_decode(images[i].bytes, images[i].n_bytes, max_pixels, &decoded, &de)) {
                vm_errf(e, "image %d: %s", i + 1, de.msg);
                goto fail;
            }
            im = &decoded;
        }
        if (!im || !im->rgb || im->width <= 0 || im->height <= 0) {
            vm_errf(e, "image %d: no pixels", i + 1);
            goto fail;
        }
        vm_mm_image *m = &mm->images[i];
        m->hash = image_hash(im);
        int rc = vm_vision_preprocess(&vi->preproc, im, &m->pixels, &m->n_patches, m->grid_thw, &de);
        vm_image_free(&decoded);
        if (rc) { vm_errf(e, "image %d: %s", i + 1, de.msg); goto fail; }
        m->n_tokens = m->grid_thw[0] * m->grid_thw[1] * m->grid_thw[2] / (vi->merge_size * vi->merge_size);
        mm->n_images++;
    }
    return mm;
fail:
    mm->n_images = n; // free whatever was made
    vm_mm_inputs_release(mm);
    return NULL;
}

int vm_mm_expand_prompt(const vm_mm_inputs *mm, const int32_t *ids, int n, int32_t **out, int *n_out,
                        vm_err *e) {
    const int tok = mm->image_token_id;
    int runs = 0;
    size_t total = 0;
    for (int i = 0; i < n;) {
        if (ids[i] != tok) { total++; i++; continue; }
        int j = i;
        while (j < n && ids[j] == tok) j++;
        if (runs < mm->n_images) {
            int want = mm->images[runs].n_tokens;
            if (j - i != 1 && j - i != want)
                return vm_errf(e, "image %d: the prompt has %d image tokens in a row; expected 1 "
                                  "(a placeholder) or %d", runs + 1, j - i, want);
            total += (size_t)want;
        }
        runs++;
        i = j;
    }
    if (runs != mm->n_images)
        return vm_errf(e, "the prompt has %d image placeholder%s but %d image%s were given", runs,
                       runs == 1 ? "" : "s", mm->n_images, mm->n_images == 1 ? "" : "s");
    if (total > (size_t)INT32_MAX / 2) return vm_errf(e, "the prompt is too long");
    int32_t *o = malloc((total ? total : 1) * sizeof *o);
    if (!o) return vm_errf(e, "out of memory");
    size_t k = 0;
    runs = 0;
    for (int i = 0; i < n;) {
        if (ids[i] != tok) { o[k++] = ids[i++]; continue; }
        int j = i;
        while (j < n && ids[j] == tok) j++;
        for (int t = 0; t < mm->images[runs].n_tokens; t++) o[k++] = tok;
        runs++;
        i = j;
    }
    *out = o;
    *n_out = (int)k;
    return 0;
}

int vm_mm_encode(vm_mm_inputs *mm, const vm_executor *ex, vm_err *e) {
    if (mm->encoded) return 0;
    if (!ex->encode_image || !ex->vision) return vm_errf(e, "this model does not take images");
    for (int i = 0; i < mm->n_images; i++) {
        vm_mm_image *m = &mm->images[i];
        if (m->features) continue;
        int nf = 0;
        if (ex->encode_image(ex->ctx, m->pixels, m->grid_thw, &m->features, &nf, e)) return -1;
        if (nf != m->n_tokens) {
            free(m->features); m->features = NULL;
            return vm_errf(e, "image %d: the vision tower gave %d features for %d image tokens", i + 1, nf, m->n_tokens);
        }
        free(m->pixels); m->pixels = NULL;
    }
    mm->encoded = true;
    return 0;
}
