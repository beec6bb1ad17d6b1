/* A file system without lock support, as a program sees one: preloaded
 * (LD_PRELOAD), it makes every fcntl lock request and every flock fail
 * with ENOLCK, as NFS does without its lock daemon. Everything else
 * passes through. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/file.h>

static int is_lock(int cmd) {
    return cmd == F_OFD_SETLK || cmd == F_OFD_SETLKW || cmd == F_OFD_GETLK ||
           cmd == F_SETLK || cmd == F_SETLKW || cmd == F_GETLK;
}

static int pass(const char *name, int fd, int cmd, void *arg) {
    int (*real)(int, int, ...) = (int (*)(int, int, ...))dlsym(RTLD_NEXT, name);
    return real(fd, cmd, arg);
}

int fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (is_lock(cmd)) { errno = ENOLCK; return -1; }
    return pass("fcntl", fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (is_lock(cmd)) { errno = ENOLCK; return -1; }
    return pass("fcntl64", fd, cmd, arg);
}

int flock(int fd, int op) {
    (void)fd;
    (void)op;
    errno = ENOLCK;
    return -1;
}
