/* A file system whose unlock fails, as an NFS server's may (EIO, ENOLCK):
 * preloaded (LD_PRELOAD), it fails every OFD unlock (`F_OFD_SETLK` with
 * `F_UNLCK`) with EIO, without unlocking. The close that follows still
 * drops the lock, as the kernel always does. Every other call passes
 * through. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>

static int fail_unlock(int cmd, void *arg) {
    return cmd == F_OFD_SETLK && ((struct flock *)arg)->l_type == F_UNLCK;
}

static int pass(const char *name, int fd, int cmd, void *arg) {
    int (*real)(int, int, ...) = (int (*)(int, int, ...))dlsym(RTLD_NEXT, name);
    return real(fd, cmd, arg);
}

static int intercept(const char *name, int fd, int cmd, void *arg) {
    if (fail_unlock(cmd, arg)) {
        errno = EIO;
        return -1;
    }
    return pass(name, fd, cmd, arg);
}

int fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return intercept("fcntl", fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return intercept("fcntl64", fd, cmd, arg);
}
