/* A foreign lock holder for the tests: a plain C program that takes a
 * whole-file lock of one family and then does what its stdin says.
 *
 *   holder FAMILY MODE PATH     FAMILY: ofd | posix | flock; MODE: ex | sh
 *
 * It opens PATH (creating it; read-only for a shared lock when it may not
 * write), takes the lock, blocking, and prints "locked <pid>". Then, one
 * command per line on stdin:
 *   unlock   drop the lock WITHOUT closing the descriptor; prints "unlocked"
 *   lock     take it again, blocking; prints "locked <pid>"
 *   fork     fork a child that keeps the descriptor open until this
 *            process exits; prints "child <pid>"
 *   map      map the file into memory (which keeps its open file
 *            description, and so a flock or OFD lock, alive); prints "mapped"
 *   mapother map the file through an open file description of its own
 *            (opened, mapped, closed: it holds no lock); prints "mapped"
 *   close    close the descriptor WITHOUT unlocking (a copy elsewhere, or
 *            a mapping, keeps a flock or OFD lock); prints "closed"
 * At end of input it exits, which closes the descriptor.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

static int family_ofd, family_posix, family_flock, shared;

static void lock_fd(int fd, int type) {
    if (family_flock) {
        int op = type == F_UNLCK ? LOCK_UN : (shared ? LOCK_SH : LOCK_EX);
        while (flock(fd, op) != 0) {
            if (errno != EINTR) { perror("flock"); exit(2); }
        }
        return;
    }
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    int cmd = family_ofd ? (type == F_UNLCK ? F_OFD_SETLK : F_OFD_SETLKW)
                         : (type == F_UNLCK ? F_SETLK : F_SETLKW);
    while (fcntl(fd, cmd, &fl) != 0) {
        if (errno != EINTR) { perror("fcntl"); exit(2); }
    }
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: holder ofd|posix|flock ex|sh PATH\n"); return 2; }
    family_ofd = !strcmp(argv[1], "ofd");
    family_posix = !strcmp(argv[1], "posix");
    family_flock = !strcmp(argv[1], "flock");
    shared = !strcmp(argv[2], "sh");
    if (!family_ofd && !family_posix && !family_flock) { fprintf(stderr, "bad family\n"); return 2; }
    int fd = open(argv[3], O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 && shared) fd = open(argv[3], O_RDONLY | O_CLOEXEC);
    if (fd < 0) { perror("open"); return 2; }
    lock_fd(fd, shared ? F_RDLCK : F_WRLCK);
    printf("locked %d\n", (int)getpid());
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "unlock", 6)) {
            lock_fd(fd, F_UNLCK);
            printf("unlocked\n");
        } else if (!strncmp(line, "lock", 4)) {
            lock_fd(fd, shared ? F_RDLCK : F_WRLCK);
            printf("locked %d\n", (int)getpid());
        } else if (!strncmp(line, "fork", 4)) {
            fflush(stdout);
            int alive[2];
            if (pipe(alive) != 0) { perror("pipe"); return 2; }
            pid_t child = fork();
            if (child < 0) { perror("fork"); return 2; }
            if (child == 0) {
                /* Keep the descriptor (and so the open file description)
                 * until the parent is gone: its end of the pipe closes. */
                close(alive[1]);
                char buf[1];
                while (read(alive[0], buf, 1) > 0) {}
                _exit(0);
            }
            close(alive[0]);
            printf("child %d\n", (int)child);
        } else if (!strncmp(line, "mapother", 8)) {
            int other = open(argv[3], O_RDONLY | O_CLOEXEC);
            if (other < 0 || mmap(NULL, 4096, PROT_READ, MAP_SHARED, other, 0) == MAP_FAILED) {
                perror("mapother");
                return 2;
            }
            close(other);
            printf("mapped\n");
        } else if (!strncmp(line, "map", 3)) {
            if (mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED) {
                perror("mmap");
                return 2;
            }
            printf("mapped\n");
        } else if (!strncmp(line, "close", 5)) {
            close(fd);
            printf("closed\n");
        }
        fflush(stdout);
    }
    return 0;
}
