/* A file system that cuts a write short and then fails, as a FUSE or
 * network file system may: preloaded (LD_PRELOAD), it lets the first write
 * of a holder record ("lockmgr-holder/...") at the start of a file that is
 * longer than the file through only up to the file's last byte, and fails
 * the write that would continue it with EIO. Every other write passes
 * through, a write that puts the start of the file back included. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static int cut; /* the record's write was cut short */
static int failed;

static ssize_t pass(const char *name, int fd, const void *buf, size_t n, off_t at) {
    ssize_t (*real)(int, const void *, size_t, off_t) =
        (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, name);
    return real(fd, buf, n, at);
}

static ssize_t cut_short(const char *name, int fd, const void *buf, size_t n, off_t at) {
    struct stat st;
    if (!cut && at == 0 && n > 20 && memcmp(buf, "lockmgr-holder/", 15) == 0 &&
        fstat(fd, &st) == 0 && st.st_size > 1 && (size_t)st.st_size - 1 < n) {
        cut = 1;
        return pass(name, fd, buf, st.st_size - 1, at);
    }
    if (cut && !failed && at > 0) {
        failed = 1;
        errno = EIO;
        return -1;
    }
    return pass(name, fd, buf, n, at);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t at) {
    return cut_short("pwrite", fd, buf, n, at);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t at) {
    return cut_short("pwrite64", fd, buf, n, at);
}
