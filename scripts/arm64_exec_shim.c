// arm64_exec_shim.c - LD_PRELOAD'ed into arm64 test binaries under qemu-user
// (scripts/test_arm64.sh). Criterion runs every test in a child made by
// fork + execve("/proc/self/exe"); under qemu-user that execve reaches the
// host kernel, which cannot run an arm64 file unless binfmt_misc is set up
// (usually not in containers, and it is global host state). This execve
// does what binfmt_misc would: an arm64 ELF is run as
//   $VM_ARM64_QEMU -0 argv[0] <file> argv[1..]
// with LD_PRELOAD / LD_LIBRARY_PATH left out of the host process's
// environment (qemu gives them back to the guest from QEMU_SET_ENV; QEMU_CPU
// and QEMU_LD_PREFIX pass through). Anything else is executed unchanged.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int is_arm64_elf(const char *path) {
    unsigned char h[20];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, h, sizeof h);
    close(fd);
    return n == (ssize_t)sizeof h && memcmp(h, "\177ELF", 4) == 0 && (h[18] | h[19] << 8) == 183; // EM_AARCH64
}

int execve(const char *path, char *const argv[], char *const envp[]) {
    const char *qemu = getenv("VM_ARM64_QEMU");
    char self[PATH_MAX];
    if (qemu && strcmp(path, "/proc/self/exe") == 0) {
        // qemu answers readlink for the guest; the host process about to
        // start would see qemu itself at /proc/self/exe
        ssize_t n = readlink(path, self, sizeof self - 1);
        if (n > 0) { self[n] = 0; path = self; }
    }
    if (!qemu || !is_arm64_elf(path))
        return (int)syscall(SYS_execve, path, argv, envp);
    size_t argc = 0, envc = 0;
    while (argv[argc]) argc++;
    while (envp && envp[envc]) envc++;
    char **nargv = calloc(argc + 5, sizeof *nargv), **nenv = calloc(envc + 1, sizeof *nenv);
    if (!nargv || !nenv) { free(nargv); free(nenv); errno = ENOMEM; return -1; }
    size_t k = 0;
    nargv[k++] = (char *)qemu;
    nargv[k++] = "-0";
    nargv[k++] = argc ? argv[0] : (char *)path;
    nargv[k++] = (char *)path;
    for (size_t i = 1; i < argc; i++) nargv[k++] = argv[i];
    k = 0;
    for (size_t i = 0; i < envc; i++)
        if (strncmp(envp[i], "LD_PRELOAD=", 11) && strncmp(envp[i], "LD_LIBRARY_PATH=", 16)) nenv[k++] = envp[i];
    int r = (int)syscall(SYS_execve, qemu, nargv, nenv);
    free(nargv);
    free(nenv);
    return r;
}
