/*
 * The backend of lmproxy's bench/perf harness (one epoll thread), built by
 * run.py with the machine's cc so that it does not limit the figures:
 *
 *   perf_backend [--http PORT] [--raw PORT] [--announce FILE] [--sse-gap-us N]
 *
 * HTTP port: any request gets a small chat completion (keep-alive); a body with
 * "stream": true gets a chunked SSE stream of max_tokens events, one per gap,
 * each carrying its CLOCK_MONOTONIC send time in ns ({"t":...}).
 * Raw port: the first byte picks the mode: 'e' echo; 'u' + 15 decimal digits:
 * reads that many bytes, then answers "k"; 'd' + 15 digits: sends that many.
 * --announce appends "started=NS listening=NS" to FILE once listening.
 */
#include "perf.h"

enum kind { LISTEN_HTTP, LISTEN_RAW, CONN, TIMER };

struct conn;
struct timer {
    int kind, fd;
    struct conn *owner;
};
struct conn {
    int kind, fd, http, dead, close_after, mode;
    char *in;
    size_t inlen, incap;
    char *out;
    size_t outoff, outlen, outcap;
    uint64_t source_left, sink_left; /* 'd' and 'u' modes */
    int sized, acked;
    int events_left; /* SSE */
    struct timer timer;
    struct conn *next_dead;
};

static int ep;
static int sse_gap_us = 1000;
static struct conn *dead_list;
static const char chat_body[] =
    "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"perf\","
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hi\"},"
    "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1,"
    "\"total_tokens\":3}}";

static void arm(struct conn *c, int want_out) {
    struct epoll_event e = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

static void kill_conn(struct conn *c) {
    if (c->dead) return;
    c->dead = 1;
    close(c->fd);
    if (c->timer.fd >= 0) close(c->timer.fd);
    c->next_dead = dead_list;
    dead_list = c;
}

/* Writes at once what the socket takes; keeps the rest for EPOLLOUT. */
static void send_out(struct conn *c, const char *p, size_t n) {
    if (c->outlen == 0) {
        ssize_t w = write(c->fd, p, n);
        if (w < 0 && errno != EAGAIN) {
            kill_conn(c);
            return;
        }
        if (w > 0) p += w, n -= (size_t)w;
        if (n == 0) return;
        c->outoff = 0;
        arm(c, 1);
    }
    if (c->outoff + c->outlen + n > c->outcap) {
        memmove(c->out, c->out + c->outoff, c->outlen);
        c->outoff = 0;
        if (c->outlen + n > c->outcap) {
            c->outcap = (c->outlen + n) * 2;
            c->out = realloc(c->out, c->outcap);
        }
    }
    memcpy(c->out + c->outoff + c->outlen, p, n);
    c->outlen += n;
}

static void sse_event(struct conn *c) {
    char ev[128], chunk[160];
    int n = c->events_left > 0
                ? snprintf(ev, sizeof ev, "data: {\"t\":%llu}\n\n", (unsigned long long)now_ns())
                : snprintf(ev, sizeof ev, "data: [DONE]\n\n");
    int m = snprintf(chunk, sizeof chunk, "%x\r\n%s\r\n%s", n, ev, c->events_left > 0 ? "" : "0\r\n\r\n");
    send_out(c, chunk, (size_t)m);
    if (c->events_left-- <= 0) {
        close(c->timer.fd);
        c->timer.fd = -1;
    }
}

static void http_requests(struct conn *c) {
    for (;;) {
        if (c->inlen == 0) return;
        c->in[c->inlen] = 0;
        char *end = strstr(c->in, "\r\n\r\n");
        if (!end) return;
        size_t head = (size_t)(end - c->in) + 4, total;
        end[2] = 0;
        long length = header_value(c->in, "content-length:");
        int chunked = strcasestr(c->in, "transfer-encoding: chunked") != NULL;
        int closing = strcasestr(c->in, "connection: close") != NULL;
        end[2] = '\r';
        if (chunked) {
            char *fin = strstr(c->in + head, "\r\n0\r\n\r\n");
            if (!fin && strncmp(c->in + head, "0\r\n\r\n", 5) != 0) return;
            total = fin ? (size_t)(fin - c->in) + 7 : head + 5;
        } else {
            total = head + (size_t)(length > 0 ? length : 0);
            if (c->inlen < total) return;
        }
        char saved = c->in[total];
        c->in[total] = 0;
        char *body = c->in + head;
        int stream = strstr(body, "\"stream\": true") || strstr(body, "\"stream\":true");
        if (stream) {
            char *mt = strstr(body, "\"max_tokens\":");
            c->events_left = mt ? atoi(mt + 13) : 100;
        }
        c->in[total] = saved;
        memmove(c->in, c->in + total, c->inlen - total);
        c->inlen -= total;
        if (stream) {
            static const char h[] =
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                "Transfer-Encoding: chunked\r\n\r\n";
            send_out(c, h, sizeof h - 1);
            c->timer.fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
            struct itimerspec it = {{0, sse_gap_us * 1000L}, {0, sse_gap_us * 1000L}};
            timerfd_settime(c->timer.fd, 0, &it, NULL);
            struct epoll_event e = {.events = EPOLLIN, .data.ptr = &c->timer};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->timer.fd, &e);
            return;
        }
        char answer[1024];
        int n = snprintf(answer, sizeof answer,
                         "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n%s\r\n%s",
                         sizeof chat_body - 1, closing ? "Connection: close\r\n" : "", chat_body);
        send_out(c, answer, (size_t)n);
        if (closing) {
            if (c->outlen == 0) kill_conn(c);
            c->close_after = 1;
            return;
        }
    }
}

static void source_more(struct conn *c) {
    while (c->source_left > 0) {
        ssize_t w = write(c->fd, big, c->source_left < BIG ? c->source_left : BIG);
        if (w < 0) {
            if (errno == EAGAIN) {
                arm(c, 1);
                return;
            }
            kill_conn(c);
            return;
        }
        c->source_left -= (uint64_t)w;
    }
    kill_conn(c);
}

static void raw_input(struct conn *c, char *p, size_t n) {
    if (c->mode == 0) {
        c->mode = p[0];
        p++, n--;
    }
    if (c->mode == 'e') {
        if (n) send_out(c, p, n);
        return;
    }
    size_t head = n < 15 - c->inlen ? n : 15 - c->inlen; /* 15 digits: the size */
    memcpy(c->in + c->inlen, p, head);
    c->inlen += head, p += head, n -= head;
    if (c->inlen < 15 || c->sized++) {
        if (c->sink_left) c->sink_left -= n < c->sink_left ? n : c->sink_left;
    } else {
        c->in[15] = 0;
        uint64_t size = strtoull(c->in, NULL, 10);
        if (c->mode == 'd') {
            c->source_left = size;
            source_more(c);
            return;
        }
        c->sink_left = size - (n < size ? n : size);
    }
    if (c->mode == 'u' && c->inlen == 15 && c->sink_left == 0 && !c->acked) {
        c->acked = 1;
        send_out(c, "k", 1);
    }
}

static void conn_readable(struct conn *c) {
    for (;;) {
        char *buf = c->http ? c->in + c->inlen : big;
        size_t room = c->http ? c->incap - c->inlen - 1 : BIG;
        if (c->http && room < 4096) {
            c->incap *= 2;
            c->in = realloc(c->in, c->incap);
            continue;
        }
        ssize_t r = read(c->fd, buf, room);
        if (r < 0 && errno == EAGAIN) return;
        if (r <= 0) {
            kill_conn(c);
            return;
        }
        if (c->http) {
            c->inlen += (size_t)r;
            http_requests(c);
        } else {
            raw_input(c, buf, (size_t)r);
        }
        if (c->dead) return;
    }
}

static void conn_writable(struct conn *c) {
    while (c->outlen) {
        ssize_t w = write(c->fd, c->out + c->outoff, c->outlen);
        if (w < 0 && errno == EAGAIN) return;
        if (w <= 0) {
            kill_conn(c);
            return;
        }
        c->outoff += (size_t)w, c->outlen -= (size_t)w;
    }
    if (c->close_after) {
        kill_conn(c);
        return;
    }
    if (c->source_left) {
        source_more(c);
        return;
    }
    arm(c, 0);
}

static int listen_on(int port, struct timer *tag) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 4096)) die("listen");
    tag->fd = fd;
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = tag};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
    return fd;
}

int main(int argc, char **argv) {
    uint64_t started = now_ns();
    signal(SIGPIPE, SIG_IGN);
    static struct timer http_l = {LISTEN_HTTP, -1, NULL}, raw_l = {LISTEN_RAW, -1, NULL};
    const char *announce = NULL;
    ep = epoll_create1(0);
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--http")) listen_on(atoi(argv[i + 1]), &http_l);
        else if (!strcmp(argv[i], "--raw")) listen_on(atoi(argv[i + 1]), &raw_l);
        else if (!strcmp(argv[i], "--announce")) announce = argv[i + 1];
        else if (!strcmp(argv[i], "--sse-gap-us")) sse_gap_us = atoi(argv[i + 1]);
    }
    if (announce) {
        char line[96];
        int n = snprintf(line, sizeof line, "started=%llu listening=%llu\n", (unsigned long long)started,
                         (unsigned long long)now_ns());
        int fd = open(announce, O_WRONLY | O_APPEND | O_CREAT, 0644);
        if (fd < 0 || write(fd, line, (size_t)n) != n) die("announce");
        close(fd);
    }
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            int kind = *(int *)events[i].data.ptr;
            if (kind == LISTEN_HTTP || kind == LISTEN_RAW) {
                int fd;
                while ((fd = accept4(((struct timer *)events[i].data.ptr)->fd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    struct conn *c = calloc(1, sizeof *c);
                    c->kind = CONN, c->fd = fd, c->http = kind == LISTEN_HTTP, c->timer.fd = -1;
                    c->timer.kind = TIMER, c->timer.owner = c;
                    c->incap = 8192, c->in = malloc(c->incap);
                    nodelay(fd);
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
            } else if (kind == TIMER) {
                struct conn *c = ((struct timer *)events[i].data.ptr)->owner;
                uint64_t ticks;
                if (c->dead || c->timer.fd < 0) continue;
                if (read(c->timer.fd, &ticks, sizeof ticks) == sizeof ticks) sse_event(c);
            } else {
                struct conn *c = events[i].data.ptr;
                if (!c->dead && (events[i].events & EPOLLOUT)) conn_writable(c);
                if (!c->dead && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) conn_readable(c);
            }
        }
        while (dead_list) {
            struct conn *c = dead_list;
            dead_list = c->next_dead;
            free(c->in), free(c->out), free(c);
        }
    }
}

