// sha256.h - SHA-256 (FIPS 180-4), to check LFS downloads against their etag.
#ifndef VM_HUB_SHA256_H
#define VM_HUB_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct vm_sha256 {
    uint32_t h[8];
    uint64_t len;        // bytes hashed so far
    uint8_t buf[64];
    size_t nbuf;
} vm_sha256;

void vm_sha256_init(vm_sha256 *s);
void vm_sha256_update(vm_sha256 *s, const void *data, size_t n);
void vm_sha256_final(vm_sha256 *s, uint8_t out[32]);
// Hashes a whole file into 64 lowercase hex digits + NUL. Returns 0 / -1 (cannot read).
int vm_sha256_file_hex(const char *path, char hex[65]);

#endif
