// test_hub.c - Hub name parsing and the sha256 used to check LFS downloads.
// (Downloads themselves: tests/py/test_hub.py against a local stand-in Hub.)
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hub/hub.h"
#include "hub/sha256.h"

static void hex(const void *data, size_t n, char out[65]) {
    vm_sha256 s;
    uint8_t d[32];
    vm_sha256_init(&s);
    vm_sha256_update(&s, data, n);
    vm_sha256_final(&s, d);
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

Test(hub, sha256_vectors) {
    char h[65];
    hex("", 0, h);
    cr_assert_str_eq(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    hex("abc", 3, h);
    cr_assert_str_eq(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hex(two, strlen(two), h);
    cr_assert_str_eq(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    // a million 'a', fed in odd pieces
    vm_sha256 s;
    vm_sha256_init(&s);
    char buf[997];
    memset(buf, 'a', sizeof buf);
    size_t left = 1000000;
    while (left) { size_t k = left < sizeof buf ? left : sizeof buf; vm_sha256_update(&s, buf, k); left -= k; }
    uint8_t d[32];
    vm_sha256_final(&s, d);
    for (int i = 0; i < 32; i++) snprintf(h + 2 * i, 3, "%02x", d[i]);
    cr_assert_str_eq(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

Test(hub, names) {
    cr_assert(vm_hub_is_hub_name("HuggingFaceTB/SmolLM2-135M-Instruct"));
    cr_assert(vm_hub_is_hub_name("org/name@v1.0"));
    cr_assert(vm_hub_is_hub_name("org/name@0123456789abcdef0123456789abcdef01234567"));
    cr_assert(vm_hub_is_hub_name("bartowski/Qwen2.5-0.5B-Instruct-GGUF:Qwen2.5-0.5B-Instruct-Q8_0.gguf"));
    cr_assert(vm_hub_is_hub_name("org/name@main:file.gguf"));
    cr_assert_not(vm_hub_is_hub_name("name-only"));
    cr_assert_not(vm_hub_is_hub_name("/abs/path/model.gguf"));
    cr_assert_not(vm_hub_is_hub_name("./rel/model"));
    cr_assert_not(vm_hub_is_hub_name("a/b/c"));
    cr_assert_not(vm_hub_is_hub_name("org/../x"));
    cr_assert_not(vm_hub_is_hub_name("org/name@"));
    cr_assert_not(vm_hub_is_hub_name("org/name:"));
    cr_assert_not(vm_hub_is_hub_name("org/na me"));
    cr_assert_not(vm_hub_is_hub_name("tests")); // an existing path is never a Hub name
}

Test(hub, local_paths_pass_through_and_offline_misses_are_clear) {
    char out[4096];
    vm_err e = {{0}};
    cr_assert_eq(vm_hub_resolve("tests/data", out, sizeof out, &e), 0);
    cr_assert_str_eq(out, "tests/data");
    char home[] = "/tmp/vm-hub-test-XXXXXX";
    cr_assert_not_null(mkdtemp(home));
    setenv("HF_HOME", home, 1);
    setenv("HF_HUB_OFFLINE", "1", 1);
    cr_assert_eq(vm_hub_resolve("org/absent", out, sizeof out, &e), -1);
    cr_assert(strstr(e.msg, "HF_HUB_OFFLINE") != NULL, "%s", e.msg);
    cr_assert_eq(vm_hub_resolve("no/such/path/anywhere", out, sizeof out, &e), -1);
    cr_assert(strstr(e.msg, "not a Hugging Face Hub name") != NULL, "%s", e.msg);
    char small[8];
    cr_assert_eq(vm_hub_resolve("tests/data", small, sizeof small, &e), -1);
    rmdir(home);
}
