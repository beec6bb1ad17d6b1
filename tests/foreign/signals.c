/* A command for the `lockmgr run` tests that reports each signal it gets,
 * one line per delivery, written from the handler itself (so two
 * deliveries are two lines, however close together).
 *
 *   signals        prints "ready <pid>", then waits for signals:
 *                  SIGINT  -> "INT"
 *                  SIGTERM -> "TERM", and exits with status 0
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void on_int(int sig) {
    (void)sig;
    write(1, "INT\n", 4);
}

static void on_term(int sig) {
    (void)sig;
    write(1, "TERM\n", 5);
    _exit(0);
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_int;
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    for (;;) pause();
}
