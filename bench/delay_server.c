/* The W4-io delay server in C: answers each request line "+\n" DELAY_US after it arrived.
   One thread, epoll, a timer queue in arrival order (every request waits the same delay,
   so answers are due in the order requests came): no per-request allocation beyond a ring. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DELAY_NS 10000000L
#define RING (1 << 16)

static struct { long due; int fd; unsigned gen; } ring[RING];
static unsigned gens[65536]; /* a closed fd's pending answers are dropped, not sent to its successor */
static unsigned head, tail;

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

int main(void) {
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 512)) { perror("listen"); return 1; }
    socklen_t al = sizeof a;
    getsockname(ls, (struct sockaddr *)&a, &al);
    printf("127.0.0.1:%d\n", ntohs(a.sin_port));
    fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event evs[64];
    char buf[4096];
    for (;;) {
        long wait_ns = -1;
        if (head != tail) {
            wait_ns = ring[tail % RING].due - now_ns();
            if (wait_ns < 0) wait_ns = 0;
        }
        struct timespec to = {wait_ns / 1000000000L, wait_ns % 1000000000L};
        int n = epoll_pwait2(ep, evs, 64, wait_ns < 0 ? NULL : &to, NULL);
        if (n < 0 && errno != EINTR) { perror("epoll"); return 1; }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c = accept(ls, NULL, NULL);
                if (c < 0) continue;
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                continue;
            }
            ssize_t got = read(fd, buf, sizeof buf);
            if (got <= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); close(fd); gens[fd % 65536]++; continue; }
            long due = now_ns() + DELAY_NS;
            for (ssize_t k = 0; k < got; k++)
                if (buf[k] == '\n' && head - tail < RING) { ring[head % RING].due = due; ring[head % RING].fd = fd; ring[head % RING].gen = gens[fd % 65536]; head++; }
        }
        long t = now_ns();
        while (head != tail && ring[tail % RING].due <= t) {
            if (ring[tail % RING].gen == gens[ring[tail % RING].fd % 65536])
                (void)!write(ring[tail % RING].fd, "+\n", 2);
            tail++;
        }
    }
}
