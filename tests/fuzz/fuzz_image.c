// fuzz_image.c - libFuzzer target: arbitrary bytes into the image decoders
// (vm_image_decode: JPEG, PNG, WebP) and the base64 reader. Built and run by
// run_image_fuzz.sh under ASan/UBSan.
#include <stdint.h>
#include <stdlib.h>

#include "vision/vision.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    vm_err e = {{0}};
    vm_image im;
    if (vm_image_decode(data, size, 1 << 22, &im, &e) == 0) {
        if (im.width <= 0 || im.height <= 0 || !im.rgb) abort();
        vm_image_free(&im);
    } else if (!e.msg[0]) abort();
    void *out; size_t n;
    if (vm_base64_decode((const char *)data, size, &out, &n, 1 << 22, &e) == 0) free(out);
    return 0;
}
