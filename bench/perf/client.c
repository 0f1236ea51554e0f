/*
 * The client of lmproxy's bench/perf harness, built by run.py with the
 * machine's cc so that it does not limit the figures.  Prints one JSON object:
 *
 *   perf_client rtt HOST PORT COUNT SIZE             raw echo round trips, one connection
 *   perf_client http HOST PORT COUNT MODEL keep|new  chat requests, one at a time
 *   perf_client load HOST PORT CONNS SECONDS echo|MODEL   closed loops on CONNS
 *   perf_client up|down HOST PORT MIB                bulk transfer
 *   perf_client sse HOST PORT MODEL EVENTS           per-event transit delays
 *
 * Latencies are in ns, on CLOCK_MONOTONIC.
 */
#include "perf.h"

static const char *host;
static int port;

static int dial(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) die("connect");
    nodelay(fd);
    return fd;
}

static void write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) die("write");
        p += w, n -= (size_t)w;
    }
}

/* An incremental HTTP/1.1 response parser: Content-Length, chunked, or to EOF. */
enum { HEAD, LENGTH, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILER, TO_EOF, DONE };
struct resp {
    int state, status;
    long left;
    char head[8192];
    size_t headlen;
};
typedef void (*body_fn)(const char *p, size_t n);

static int line_done(struct resp *r, char ch) {
    if (ch != '\n') {
        if (r->headlen < sizeof r->head - 1) r->head[r->headlen++] = ch;
        return 0;
    }
    r->head[r->headlen] = 0;
    r->headlen = 0;
    return 1;
}

/* Returns 1 once the response is complete, -1 on a malformed one. */
static int resp_feed(struct resp *r, const char *p, size_t n, body_fn body) {
    while (n) {
        if (r->state == HEAD) {
            size_t take = n < sizeof r->head - 1 - r->headlen ? n : sizeof r->head - 1 - r->headlen;
            memcpy(r->head + r->headlen, p, take);
            r->headlen += take;
            r->head[r->headlen] = 0;
            char *end = strstr(r->head, "\r\n\r\n");
            if (!end) {
                if (take == 0) return -1;
                p += take, n -= take;
                continue;
            }
            size_t used = (size_t)(end - r->head) + 4 - (r->headlen - take);
            p += used, n -= used;
            end[2] = 0;
            r->status = atoi(r->head + 9);
            r->left = header_value(r->head, "content-length:");
            if (strcasestr(r->head, "transfer-encoding: chunked")) r->state = CHUNK_SIZE;
            else if (r->left >= 0) r->state = r->left ? LENGTH : DONE;
            else r->state = TO_EOF;
            r->headlen = 0;
        } else if (r->state == LENGTH || r->state == CHUNK_DATA || r->state == TO_EOF) {
            size_t take = r->state == TO_EOF || (size_t)r->left > n ? n : (size_t)r->left;
            if (body) body(p, take);
            p += take, n -= take;
            if (r->state != TO_EOF && (r->left -= (long)take) == 0)
                r->state = r->state == LENGTH ? DONE : CHUNK_END;
        } else if (r->state == CHUNK_SIZE || r->state == CHUNK_END || r->state == TRAILER) {
            char ch = *p++;
            n--;
            if (!line_done(r, ch)) continue;
            if (r->state == CHUNK_END) r->state = CHUNK_SIZE;
            else if (r->state == TRAILER) {
                if (r->head[0] == '\r' || r->head[0] == 0) r->state = DONE;
            } else {
                r->left = strtol(r->head, NULL, 16);
                r->state = r->left ? CHUNK_DATA : TRAILER;
            }
        } else {
            break;
        }
    }
    return r->state == DONE ? 1 : 0;
}

static char request[2048];
static size_t request_len;

static void make_request(const char *model, int stream, int events) {
    char body[512];
    int n = snprintf(body, sizeof body,
                     "{\"model\": \"%s\", \"messages\": [{\"role\": \"user\", \"content\": \"Say hi\"}], "
                     "\"max_tokens\": %d%s}",
                     model, events, stream ? ", \"stream\": true" : "");
    request_len = (size_t)snprintf(request, sizeof request,
                                   "POST /v1/chat/completions HTTP/1.1\r\nHost: perf\r\n"
                                   "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                                   n, body);
}

/* Sends the request on fd and reads its whole response; 0 on success. */
static int exchange(int fd, body_fn body) {
    struct resp r = {0};
    write_all(fd, request, request_len);
    for (;;) {
        ssize_t got = read(fd, big, BIG);
        if (got <= 0) return r.state == TO_EOF ? 0 : -1;
        int done = resp_feed(&r, big, (size_t)got, body);
        if (done < 0) return -1;
        if (done) return r.status == 200 ? 0 : -1;
    }
}

static void print_samples(const char *name, uint64_t *s, int n) {
    printf("\"%s\": [", name);
    for (int i = 0; i < n; i++) printf("%s%llu", i ? "," : "", (unsigned long long)s[i]);
    printf("]");
}

static int client_rtt(int count, int size) {
    int fd = dial();
    uint64_t *s = malloc(sizeof *s * (size_t)count);
    write_all(fd, "e", 1);
    for (int i = -100; i < count; i++) {
        uint64_t began = now_ns();
        write_all(fd, big, (size_t)size);
        for (int got = 0; got < size;) {
            ssize_t r = read(fd, big + BIG / 2, (size_t)(size - got));
            if (r <= 0) die("read");
            got += (int)r;
        }
        if (i >= 0) s[i] = now_ns() - began;
    }
    printf("{");
    print_samples("ns", s, count);
    printf("}\n");
    return 0;
}

static int client_http(int count, const char *model, int fresh) {
    uint64_t *s = malloc(sizeof *s * (size_t)count);
    int fd = fresh ? -1 : dial(), errors = 0;
    make_request(model, 0, 8);
    for (int i = -20; i < count; i++) {
        uint64_t began = now_ns();
        if (fresh) fd = dial();
        if (exchange(fd, NULL)) {
            errors++;
            close(fd);
            fd = fresh ? -1 : dial();
            continue;
        }
        if (fresh) close(fd);
        if (i >= 0) s[i] = now_ns() - began;
    }
    printf("{\"errors\": %d, ", errors);
    print_samples("ns", s, count);
    printf("}\n");
    return 0;
}

static uint64_t *sse_delays;
static int sse_count, sse_cap;
static uint64_t sse_read_at;
static char sse_buf[65536];
static size_t sse_len;

static void sse_body(const char *p, size_t n) {
    if (sse_len + n >= sizeof sse_buf) die("sse buffer");
    memcpy(sse_buf + sse_len, p, n);
    sse_len += n;
    sse_buf[sse_len] = 0;
    char *end, *start = sse_buf;
    while ((end = strstr(start, "\n\n"))) {
        char *t = strstr(start, "{\"t\":");
        if (t && t < end && sse_count < sse_cap) sse_delays[sse_count++] = sse_read_at - strtoull(t + 5, NULL, 10);
        start = end + 2;
    }
    sse_len -= (size_t)(start - sse_buf);
    memmove(sse_buf, start, sse_len);
}

static int client_sse(const char *model, int events) {
    int fd = dial();
    sse_cap = events, sse_delays = malloc(sizeof *sse_delays * (size_t)events);
    make_request(model, 1, events);
    write_all(fd, request, request_len);
    struct resp r = {0};
    for (;;) {
        ssize_t got = read(fd, big, BIG);
        sse_read_at = now_ns();
        if (got <= 0 || resp_feed(&r, big, (size_t)got, sse_body)) break;
    }
    printf("{\"status\": %d, ", r.status);
    print_samples("ns", sse_delays, sse_count);
    printf("}\n");
    return 0;
}

static int client_bulk(int up, long mib) {
    uint64_t bytes = (uint64_t)mib << 20, moved = 0;
    int fd = dial();
    uint64_t began = now_ns();
    if (up) {
        char head[17];
        snprintf(head, sizeof head, "u%015llu", (unsigned long long)bytes);
        write_all(fd, head, 16);
        for (; moved < bytes; moved += BIG) write_all(fd, big, BIG);
        if (read(fd, big, 1) != 1) die("ack");
    } else {
        char head[17];
        snprintf(head, sizeof head, "d%015llu", (unsigned long long)bytes);
        write_all(fd, head, 16);
        for (ssize_t r; moved < bytes && (r = read(fd, big, BIG)) > 0;) moved += (uint64_t)r;
    }
    double seconds = (double)(now_ns() - began) / 1e9;
    printf("{\"bytes\": %llu, \"seconds\": %.6f}\n", (unsigned long long)moved, seconds);
    return 0;
}

struct lconn {
    int fd, got;
    struct resp r;
};

static int client_load(int conns, double seconds, const char *model) {
    int echo = !strcmp(model, "echo"), epl = epoll_create1(0);
    uint64_t total = 0, counted = 0, errors = 0;
    struct lconn *cs = calloc((size_t)conns, sizeof *cs);
    if (!echo) make_request(model, 0, 8);
    else memset(request, 'x', 200), request_len = 200;
    for (int i = 0; i < conns; i++) {
        cs[i].fd = dial();
        if (echo) write_all(cs[i].fd, "e", 1);
        nonblock(cs[i].fd);
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(epl, EPOLL_CTL_ADD, cs[i].fd, &e);
        write_all(cs[i].fd, request, request_len);
    }
    uint64_t began = now_ns(), warm = began + 200000000ull, end = warm + (uint64_t)(seconds * 1e9);
    struct epoll_event events[512];
    char buf[65536];
    for (uint64_t t = began; t < end; t = now_ns()) {
        int n = epoll_wait(epl, events, 512, 100);
        for (int k = 0; k < n; k++) {
            struct lconn *c = &cs[events[k].data.u32];
            ssize_t r = read(c->fd, buf, sizeof buf);
            if (r < 0 && errno == EAGAIN) continue;
            int done = 0;
            if (r <= 0) done = -1;
            else if (echo) done = (c->got += (int)r) >= 200;
            else done = resp_feed(&c->r, buf, (size_t)r, NULL);
            if (done < 0 || (done > 0 && !echo && c->r.status != 200)) {
                errors++;
                epoll_ctl(epl, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = dial();
                nonblock(c->fd);
                struct epoll_event e = {.events = EPOLLIN, .data.u32 = events[k].data.u32};
                epoll_ctl(epl, EPOLL_CTL_ADD, c->fd, &e);
                if (echo) write_all(c->fd, "e", 1);
            } else if (!done) {
                continue;
            } else {
                total++;
                if (t >= warm) counted++;
            }
            c->got = 0;
            memset(&c->r, 0, sizeof c->r);
            write_all(c->fd, request, request_len);
        }
    }
    printf("{\"requests\": %llu, \"total\": %llu, \"errors\": %llu, \"seconds\": %.6f}\n",
           (unsigned long long)counted, (unsigned long long)total, (unsigned long long)errors,
           (double)(end - warm) / 1e9);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc < 4) {
        fprintf(stderr, "usage: see the comment at the top of client.c\n");
        return 2;
    }
    host = argv[2], port = atoi(argv[3]);
    const char *mode = argv[1];
    if (!strcmp(mode, "rtt") && argc == 6) return client_rtt(atoi(argv[4]), atoi(argv[5]));
    if (!strcmp(mode, "http") && argc == 7) return client_http(atoi(argv[4]), argv[5], !strcmp(argv[6], "new"));
    if (!strcmp(mode, "load") && argc == 7) return client_load(atoi(argv[4]), atof(argv[5]), argv[6]);
    if ((!strcmp(mode, "up") || !strcmp(mode, "down")) && argc == 5) return client_bulk(mode[0] == 'u', atol(argv[4]));
    if (!strcmp(mode, "sse") && argc == 6) return client_sse(argv[4], atoi(argv[5]));
    fprintf(stderr, "perf_client: bad arguments\n");
    return 2;
}
