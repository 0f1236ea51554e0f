/*
 * What the C backend and client of lmproxy's bench/perf harness share.
 */
#ifndef PERF_H
#define PERF_H
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define BIG (1 << 20)
static char big[BIG];

static inline uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static inline void die(const char *what) {
    perror(what);
    exit(2);
}

static inline void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static inline void nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/* The number after header C{name} (with its colon), or -1. */
static inline long header_value(const char *head, const char *name) {
    for (const char *p = head; (p = strcasestr(p, name)); p += strlen(name))
        if (p[-1] == '\n') return atol(p + strlen(name));
    return -1;
}

#endif
