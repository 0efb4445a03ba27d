// image.c - image decoding (libjpeg-turbo, libpng, libwebp) into RGB8, and the
// bicubic antialiased resize of torch's uint8 CPU interpolate.
#include "vision.h"

#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <webp/decode.h>

void vm_image_free(vm_image *im) {
    if (!im) return;
    free(im->rgb);
    im->rgb = NULL;
    im->width = im->height = 0;
}

static int check_size(const char *fmt, int64_t w, int64_t h, int64_t max_pixels, vm_err *e) {
    if (max_pixels <= 0) max_pixels = VM_IMAGE_DEFAULT_MAX_PIXELS;
    if (w <= 0 || h <= 0) return vm_errf(e, "%s image has no pixels (%lldx%lld)", fmt, (long long)w, (long long)h);
    if (w > 65535 || h > 65535 || w * h > max_pixels)
        return vm_errf(e, "%s image of %lldx%lld pixels is larger than the limit of %lld pixels", fmt,
                       (long long)w, (long long)h, (long long)max_pixels);
    return 0;
}

// ---- JPEG ---------------------------------------------------------------------

typedef struct jpeg_failure {
    struct jpeg_error_mgr mgr;
    jmp_buf jump;
    char msg[JMSG_LENGTH_MAX];
} jpeg_failure;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_failure *f = (jpeg_failure *)cinfo->err;
    f->mgr.format_message(cinfo, f->msg);
    longjmp(f->jump, 1);
}

static void jpeg_on_warning(j_common_ptr cinfo, int level) {
    // libjpeg reports a truncated stream as a warning and pads it with grey;
    // PIL refuses such files ("image file is truncated"): so do we.
    if (level < 0) {
        jpeg_failure *f = (jpeg_failure *)cinfo->err;
        if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
            f->mgr.format_message(cinfo, f->msg);
            longjmp(f->jump, 1);
        }
    }
}

static int decode_jpeg(const uint8_t *data, size_t n, int64_t max_pixels, vm_image *out, vm_err *e) {
    struct jpeg_decompress_struct cinfo;
    jpeg_failure fail;
    uint8_t *volatile pixels = NULL;
    cinfo.err = jpeg_std_error(&fail.mgr);
    fail.mgr.error_exit = jpeg_on_error;
    fail.mgr.emit_message = jpeg_on_warning;
    fail.msg[0] = 0;
    if (setjmp(fail.jump)) {
        jpeg_destroy_decompress(&cinfo);
        free(pixels);
        return vm_errf(e, "corrupt JPEG image: %s", fail.msg);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)n);
    jpeg_read_header(&cinfo, TRUE);
    if (check_size("JPEG", cinfo.image_width, cinfo.image_height, max_pixels, e) != 0) {
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    cinfo.out_color_space = JCS_RGB;   // grayscale and YCbCr both come out as RGB; CMYK is refused below
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&cinfo);
        return vm_errf(e, "CMYK JPEG images are not supported");
    }
    jpeg_start_decompress(&cinfo);
    const size_t stride = (size_t)cinfo.output_width * 3;
    pixels = malloc(stride * cinfo.output_height);
    if (!pixels) { jpeg_destroy_decompress(&cinfo); return vm_errf(e, "out of memory"); }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = pixels + stride * cinfo.output_scanline;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    out->width = (int)cinfo.output_width;
    out->height = (int)cinfo.output_height;
    out->rgb = pixels;
    jpeg_destroy_decompress(&cinfo);
    return 0;
}

// transformers' convert_to_rgb: an image with transparency is composited onto
// white with PIL's Image.alpha_composite (integer arithmetic, 7 extra bits);
// one without is converted as is. In place: RGBA (n pixels) -> RGB.
static void rgba_to_rgb(uint8_t *px, size_t n, int composite) {
    for (size_t i = 0; i < n; i++) {
        const uint8_t *s = px + 4 * i;
        uint8_t *d = px + 3 * i;
        const uint32_t a = s[3];
        uint8_t r = s[0], g = s[1], b = s[2];
        if (composite) {
            if (a == 0) r = g = b = 255;
            else {
                const uint32_t outa255 = a * 255 + 255 * (255 - a);
                const uint32_t coef1 = a * 255 * 255 * (1u << 7) / outa255, coef2 = 255 * (1u << 7) - coef1;
                uint32_t c[3] = { r, g, b };
                for (int k = 0; k < 3; k++) {
                    uint32_t t = c[k] * coef1 + 255 * coef2 + (0x80u << 7);
                    c[k] = ((((t >> 8) + t) >> 8) >> 7);
                }
                r = (uint8_t)c[0]; g = (uint8_t)c[1]; b = (uint8_t)c[2];
            }
        }
        d[0] = r; d[1] = g; d[2] = b;
    }
}

// ---- PNG ----------------------------------------------------------------------

typedef struct png_reader { const uint8_t *data; size_t n, pos; char msg[256]; } png_reader;

static void png_read_mem(png_structp png, png_bytep dst, png_size_t len) {
    png_reader *r = png_get_io_ptr(png);
    if (len > r->n - r->pos) png_error(png, "truncated PNG data");
    memcpy(dst, r->data + r->pos, len);
    r->pos += len;
}

static void png_on_error(png_structp png, png_const_charp msg) {
    png_reader *r = png_get_error_ptr(png);
    snprintf(r->msg, sizeof r->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

static int decode_png(const uint8_t *data, size_t n, int64_t max_pixels, vm_image *out, vm_err *e) {
    png_reader r = { data, n, 0, "" };
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &r, png_on_error, png_on_warning);
    if (!png) return vm_errf(e, "out of memory");
    png_infop info = png_create_info_struct(png);
    uint8_t *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    if (!info) { png_destroy_read_struct(&png, NULL, NULL); return vm_errf(e, "out of memory"); }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(pixels);
        free(rows);
        return vm_errf(e, "corrupt PNG image: %s", r.msg);
    }
    png_set_read_fn(png, &r, png_read_mem);
    png_set_user_limits(png, 65535, 65535);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    if (check_size("PNG", w, h, max_pixels, e) != 0) {
        png_destroy_read_struct(&png, &info, NULL);
        return -1;
    }
    int color = png_get_color_type(png, info);
    const int has_alpha = (color & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, info, PNG_INFO_tRNS);
    if (png_get_bit_depth(png, info) == 16) png_set_strip_16(png);
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) {
        png_set_expand_gray_1_2_4_to_8(png);
        png_set_gray_to_rgb(png);
    }
    if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    if (!has_alpha) png_set_filler(png, 0xff, PNG_FILLER_AFTER);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_rowbytes(png, info) != (size_t)w * 4) png_error(png, "unexpected row layout after conversion to RGBA8");
    pixels = malloc((size_t)w * h * 4);
    rows = malloc(sizeof(png_bytep) * h);
    if (!pixels || !rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) rows[y] = pixels + (size_t)y * w * 4;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    rgba_to_rgb(pixels, (size_t)w * h, has_alpha);
    out->width = (int)w;
    out->height = (int)h;
    out->rgb = pixels;
    return 0;
}

// ---- WebP ---------------------------------------------------------------------

static int decode_webp(const uint8_t *data, size_t n, int64_t max_pixels, vm_image *out, vm_err *e) {
    int w = 0, h = 0;
    if (!WebPGetInfo(data, n, &w, &h)) return vm_errf(e, "corrupt WebP image: bad header");
    if (check_size("WebP", w, h, max_pixels, e) != 0) return -1;
    WebPBitstreamFeatures feat;
    if (WebPGetFeatures(data, n, &feat) != VP8_STATUS_OK) return vm_errf(e, "corrupt WebP image: bad header");
    uint8_t *pixels = malloc((size_t)w * h * 4);
    if (!pixels) return vm_errf(e, "out of memory");
    if (!WebPDecodeRGBAInto(data, n, pixels, (size_t)w * h * 4, w * 4)) {
        free(pixels);
        return vm_errf(e, "corrupt WebP image: decoding failed");
    }
    rgba_to_rgb(pixels, (size_t)w * h, feat.has_alpha);
    out->width = w;
    out->height = h;
    out->rgb = pixels;
    return 0;
}

int vm_image_decode(const void *data, size_t n, int64_t max_pixels, vm_image *out, vm_err *e) {
    const uint8_t *d = data;
    memset(out, 0, sizeof *out);
    if (e) e->msg[0] = 0;
    if (!d || n < 12) return vm_errf(e, "image data too short (%zu bytes)", n);
    if (d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return decode_jpeg(d, n, max_pixels, out, e);
    if (!memcmp(d, "\x89PNG\r\n\x1a\n", 8)) return decode_png(d, n, max_pixels, out, e);
    if (!memcmp(d, "RIFF", 4) && !memcmp(d + 8, "WEBP", 4)) return decode_webp(d, n, max_pixels, out, e);
    return vm_errf(e, "unknown image format (expected JPEG, PNG or WebP)");
}

int vm_image_load_file(const char *path, int64_t max_pixels, vm_image *out, vm_err *e) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return vm_errf(e, "%s: cannot open", path);
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            if (cap > ((size_t)1 << 31)) { free(buf); fclose(f); return vm_errf(e, "%s: file too large", path); }
            uint8_t *nb = realloc(buf, cap);
            if (!nb) { free(buf); fclose(f); return vm_errf(e, "out of memory"); }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    fclose(f);
    int rc = vm_image_decode(buf, n, max_pixels, out, e);
    free(buf);
    if (rc != 0 && e) {
        char msg[sizeof e->msg];
        snprintf(msg, sizeof msg, "%s", e->msg);
        vm_errf(e, "%s: %s", path, msg);
    }
    return rc;
}

// ---- resize -------------------------------------------------------------------

// Keys cubic with a = -0.5 (PIL's and torch's antialiased bicubic).
static double cubic_filter(double x) {
    const double a = -0.5;
    if (x < 0) x = -x;
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
}

// Per output index: first input index, tap count and int16 weights with
// `*precision` fractional bits (as torch's uint8 AVX kernels compute them).
typedef struct resample_taps {
    int *first, *count;
    int16_t *w;       // [out][max_taps]
    int max_taps, precision;
} resample_taps;

static int make_taps(int in_size, int out_size, resample_taps *t, vm_err *e) {
    const double scale = (double)in_size / out_size;
    const double support = scale >= 1 ? 2.0 * scale : 2.0;
    const double inv = scale >= 1 ? 1.0 / scale : 1.0;
    t->max_taps = (int)ceil(support) * 2 + 1;
    t->first = malloc(sizeof(int) * out_size);
    t->count = malloc(sizeof(int) * out_size);
    double *wd = malloc(sizeof(double) * (size_t)out_size * t->max_taps);
    t->w = calloc((size_t)out_size * t->max_taps, sizeof(int16_t));
    if (!t->first || !t->count || !wd || !t->w) { free(wd); return vm_errf(e, "out of memory"); }
    double wmax = 0;
    for (int i = 0; i < out_size; i++) {
        double center = scale * (i + 0.5);
        int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in_size) hi = in_size;
        int cnt = hi - lo;
        if (cnt > t->max_taps) cnt = t->max_taps;
        double *w = wd + (size_t)i * t->max_taps, total = 0;
        for (int j = 0; j < cnt; j++) total += (w[j] = cubic_filter((j + lo - center + 0.5) * inv));
        for (int j = 0; j < cnt; j++) {
            w[j] = total != 0 ? w[j] / total : 0;
            if (w[j] > wmax) wmax = w[j];
        }
        t->first[i] = lo;
        t->count[i] = cnt;
    }
    int prec = 0;
    for (; prec < 22; prec++)
        if ((int)(0.5 + wmax * (1 << (prec + 1))) >= (1 << 15)) break;
    t->precision = prec;
    for (int i = 0; i < out_size; i++)
        for (int j = 0; j < t->count[i]; j++) {
            double v = wd[(size_t)i * t->max_taps + j] * (1 << prec);
            t->w[(size_t)i * t->max_taps + j] = (int16_t)(v < 0 ? (int)(-0.5 + v) : (int)(0.5 + v));
        }
    free(wd);
    return 0;
}

static void free_taps(resample_taps *t) { free(t->first); free(t->count); free(t->w); }

static inline uint8_t clip_u8(int64_t acc, int prec) {
    int64_t v = acc >> prec;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

// src (h, w_in, 3) -> dst (h, w_out, 3)
static void pass_horizontal(const uint8_t *src, int h, int w_in, uint8_t *dst, int w_out, const resample_taps *t) {
    for (int y = 0; y < h; y++) {
        const uint8_t *row = src + (size_t)y * w_in * 3;
        for (int x = 0; x < w_out; x++) {
            const int16_t *w = t->w + (size_t)x * t->max_taps;
            int64_t acc[3] = { 1 << (t->precision - 1), 1 << (t->precision - 1), 1 << (t->precision - 1) };
            const uint8_t *p = row + (size_t)t->first[x] * 3;
            for (int j = 0; j < t->count[x]; j++)
                for (int c = 0; c < 3; c++) acc[c] += (int64_t)p[j * 3 + c] * w[j];
            for (int c = 0; c < 3; c++) dst[((size_t)y * w_out + x) * 3 + c] = clip_u8(acc[c], t->precision);
        }
    }
}

// src (h_in, w, 3) -> dst (h_out, w, 3)
static void pass_vertical(const uint8_t *src, int h_in, int w, uint8_t *dst, int h_out, const resample_taps *t) {
    (void)h_in;
    const size_t stride = (size_t)w * 3;
    for (int y = 0; y < h_out; y++) {
        const int16_t *wt = t->w + (size_t)y * t->max_taps;
        for (size_t i = 0; i < stride; i++) {
            int64_t acc = 1 << (t->precision - 1);
            for (int j = 0; j < t->count[y]; j++) acc += (int64_t)src[(size_t)(t->first[y] + j) * stride + i] * wt[j];
            dst[(size_t)y * stride + i] = clip_u8(acc, t->precision);
        }
    }
}

int vm_image_resize_bicubic(const vm_image *in, int out_w, int out_h, vm_image *out, vm_err *e) {
    memset(out, 0, sizeof *out);
    if (out_w <= 0 || out_h <= 0) return vm_errf(e, "resize to %dx%d", out_w, out_h);
    const uint8_t *cur = in->rgb;
    int cw = in->width;
    uint8_t *tmp = NULL, *res = NULL;
    resample_taps t = {0};
    if (out_w != in->width) {                  // horizontal pass first, as torch does
        if (!(tmp = malloc((size_t)in->height * out_w * 3)) || make_taps(in->width, out_w, &t, e) != 0) goto oom;
        pass_horizontal(cur, in->height, in->width, tmp, out_w, &t);
        free_taps(&t);
        memset(&t, 0, sizeof t);
        cur = tmp;
        cw = out_w;
    }
    if (!(res = malloc((size_t)out_h * out_w * 3))) goto oom;
    if (out_h != in->height) {
        if (make_taps(in->height, out_h, &t, e) != 0) goto oom;
        pass_vertical(cur, in->height, cw, res, out_h, &t);
        free_taps(&t);
    } else {
        memcpy(res, cur, (size_t)out_h * out_w * 3);
    }
    free(tmp);
    out->width = out_w;
    out->height = out_h;
    out->rgb = res;
    return 0;
oom:
    free_taps(&t);
    free(tmp);
    free(res);
    return vm_errf(e, "out of memory");
}
