/*
 * The floor (issue 18): the least a server can do to serve S-fanout to the same load generator,
 * as the yardstick for the CPU per delivery of the real servers.
 *
 * It speaks the seed protocol of the group chat with no WebSocket library and no channel layer:
 * it accepts a WebSocket handshake on /group/<G>/, and for every text frame X a member sends,
 * it builds the one server frame the real server would send (an unmasked text frame carrying
 * "组内主动推送消息:X") once and writes it to every member of G, the sender included: one
 * write() per delivery, on sockets with TCP_NODELAY. Binary frames go back as they came, as the
 * real server's send_bytes does. One process, one thread, one level-triggered epoll loop.
 *
 * What it deliberately does not do: fragmented messages, extensions, subprotocols, Origin
 * checks, limits per address, keepalives, several processes. The load generator needs none of
 * them. A member whose socket stops draining is closed once 1 MiB is queued for it.
 *
 *   cc -O2 -o floor bench/floor.c      (bench/run.sh builds it)
 *   floor PORT [BACKLOG]               listens on 127.0.0.1:PORT; GET /readyz answers 200
 */
#define _GNU_SOURCE
#include <errno.h>
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
#include <unistd.h>

#define GROUP_PREFIX "组内主动推送消息:"
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
/* Bytes read and not yet handled, per connection: the handshake request or client frames. */
#define IN_CAP 4096
/* A client frame's payload must fit in the input buffer with its 14-byte header. */
#define MAX_PAYLOAD (IN_CAP - 14)
/* Bytes queued for a socket that would not take them: past this the member is dropped. */
#define OUT_LIMIT (1 << 20)
/* Channels' group names are shorter than 100 characters. */
#define GROUP_NAME_MAX 100
#define BUCKETS 4096

struct group;

struct conn {
    int fd;
    int websocket;       /* 0 while reading the HTTP request */
    int dead;            /* to be closed at the end of this round of events */
    struct group *group; /* NULL until the handshake */
    size_t slot;         /* index in group->members */
    size_t in_len;
    unsigned char in[IN_CAP];
    unsigned char *out; /* bytes the socket did not take yet, in order */
    size_t out_len, out_off, out_cap;
};

struct group {
    char name[GROUP_NAME_MAX];
    struct conn **members;
    size_t len, cap;
    struct group *next; /* the bucket's chain */
};

static int epfd;
static struct conn **conns; /* by file descriptor */
static size_t conns_cap;
static struct group *buckets[BUCKETS];
static struct conn **doomed; /* closed after each round, so no member array changes mid-loop */
static size_t doomed_len, doomed_cap;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void *grow(void *p, size_t *cap, size_t need, size_t size) {
    if (need <= *cap)
        return p;
    size_t cap2 = *cap ? *cap : 16;
    while (cap2 < need)
        cap2 *= 2;
    p = realloc(p, cap2 * size);
    if (!p)
        die("realloc");
    *cap = cap2;
    return p;
}

/* SHA-1 (FIPS 180-4), for Sec-WebSocket-Accept only. */
static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1_block(uint32_t h[5], const unsigned char *p) {
    uint32_t w[80];
    for (int t = 0; t < 16; t++)
        w[t] = (uint32_t)p[4 * t] << 24 | (uint32_t)p[4 * t + 1] << 16 |
               (uint32_t)p[4 * t + 2] << 8 | p[4 * t + 3];
    for (int t = 16; t < 80; t++)
        w[t] = rol(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int t = 0; t < 80; t++) {
        uint32_t f, k;
        if (t < 20) {
            f = (b & c) | (~b & d);
            k = 0x5a827999;
        } else if (t < 40) {
            f = b ^ c ^ d;
            k = 0x6ed9eba1;
        } else if (t < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8f1bbcdc;
        } else {
            f = b ^ c ^ d;
            k = 0xca62c1d6;
        }
        uint32_t temp = rol(a, 5) + f + e + k + w[t];
        e = d;
        d = c;
        c = rol(b, 30);
        b = a;
        a = temp;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

static void sha1(const unsigned char *msg, size_t len, unsigned char out[20]) {
    uint32_t h[5] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0};
    size_t whole = len / 64 * 64;
    for (size_t i = 0; i < whole; i += 64)
        sha1_block(h, msg + i);
    /* The tail, the 0x80 marker and the bit length fill one or two more blocks. */
    unsigned char last[128] = {0};
    size_t rest = len - whole;
    memcpy(last, msg + whole, rest);
    last[rest] = 0x80;
    size_t blocks = rest + 9 <= 64 ? 1 : 2;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        last[blocks * 64 - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t i = 0; i < blocks; i++)
        sha1_block(h, last + 64 * i);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++)
            out[4 * i + j] = (unsigned char)(h[i] >> (24 - 8 * j));
}

static void base64(const unsigned char *in, size_t len, char *out) {
    static const char abc[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[o++] = abc[v >> 18 & 63];
        out[o++] = abc[v >> 12 & 63];
        out[o++] = i + 1 < len ? abc[v >> 6 & 63] : '=';
        out[o++] = i + 2 < len ? abc[v & 63] : '=';
    }
    out[o] = '\0';
}

static void kill_conn(struct conn *c) {
    if (c->dead)
        return;
    c->dead = 1;
    doomed = grow(doomed, &doomed_cap, doomed_len + 1, sizeof *doomed);
    doomed[doomed_len++] = c;
}

static void watch_out(struct conn *c, int on) {
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.fd = c->fd};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl MOD");
}

/* One write of `len` bytes; what the socket does not take is queued, in order, for EPOLLOUT. */
static void send_bytes(struct conn *c, const void *buf, size_t len) {
    if (c->dead)
        return;
    size_t done = 0;
    if (c->out_len == c->out_off) {
        ssize_t n = write(c->fd, buf, len);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            kill_conn(c);
            return;
        }
        done = n > 0 ? (size_t)n : 0;
        if (done == len)
            return;
    }
    size_t pending = c->out_len - c->out_off;
    if (pending + len - done > OUT_LIMIT) {
        kill_conn(c);
        return;
    }
    if (c->out_off > 0) {
        memmove(c->out, c->out + c->out_off, pending);
        c->out_len = pending;
        c->out_off = 0;
    }
    c->out = grow(c->out, &c->out_cap, c->out_len + len - done, 1);
    memcpy(c->out + c->out_len, (const unsigned char *)buf + done, len - done);
    c->out_len += len - done;
    if (pending == 0)
        watch_out(c, 1);
}

static void flush_out(struct conn *c) {
    ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            kill_conn(c);
        return;
    }
    c->out_off += (size_t)n;
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        watch_out(c, 0);
    }
}

static struct group **bucket(const char *name) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return &buckets[h % BUCKETS];
}

static void join(struct conn *c, const char *name) {
    struct group **b = bucket(name), *g = *b;
    while (g && strcmp(g->name, name) != 0)
        g = g->next;
    if (!g) {
        g = calloc(1, sizeof *g);
        if (!g)
            die("calloc");
        strcpy(g->name, name);
        g->next = *b;
        *b = g;
    }
    g->members = grow(g->members, &g->cap, g->len + 1, sizeof *g->members);
    c->group = g;
    c->slot = g->len;
    g->members[g->len++] = c;
}

static void leave(struct conn *c) {
    struct group *g = c->group;
    if (!g)
        return;
    struct conn *last = g->members[--g->len];
    g->members[c->slot] = last;
    last->slot = c->slot;
    c->group = NULL;
    if (g->len > 0)
        return;
    struct group **p = bucket(g->name);
    while (*p != g)
        p = &(*p)->next;
    *p = g->next;
    free(g->members);
    free(g);
}

static void close_doomed(void) {
    for (size_t i = 0; i < doomed_len; i++) {
        struct conn *c = doomed[i];
        leave(c);
        conns[c->fd] = NULL;
        close(c->fd); /* also removes it from the epoll set */
        free(c->out);
        free(c);
    }
    doomed_len = 0;
}

/* An HTTP answer that ends the connection (readiness, or a request that is not ours). */
static void answer_http(struct conn *c, const char *status, const char *body) {
    char buf[256];
    int n = snprintf(buf, sizeof buf,
                     "HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     status, strlen(body), body);
    send_bytes(c, buf, (size_t)n);
    kill_conn(c);
}

/* The value of header `name` in the request head `req` (NUL-terminated), copied to `out`. */
static int header(const char *req, const char *name, char *out, size_t cap) {
    size_t nlen = strlen(name);
    for (const char *line = strstr(req, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        if (strncasecmp(line, name, nlen) != 0 || line[nlen] != ':')
            continue;
        const char *v = line + nlen + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        const char *end = strstr(v, "\r\n");
        while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        size_t len = (size_t)(end - v);
        if (len >= cap)
            return 0;
        memcpy(out, v, len);
        out[len] = '\0';
        return 1;
    }
    return 0;
}

/* The group of a request target /group/<G>/ (query ignored), with G made of [A-Za-z0-9_] as
 * the seed's route `group/(?P<groupID>\w+)/$` takes it; 0 if the target is another. */
static int group_of(const char *target, char *out) {
    const char *prefix = "/group/";
    if (strncmp(target, prefix, strlen(prefix)) != 0)
        return 0;
    const char *g = target + strlen(prefix);
    size_t len = 0;
    while (g[len] == '_' || (g[len] >= '0' && g[len] <= '9') || (g[len] >= 'a' && g[len] <= 'z') ||
           (g[len] >= 'A' && g[len] <= 'Z'))
        len++;
    if (len == 0 || len >= GROUP_NAME_MAX || g[len] != '/' ||
        (g[len + 1] != '\0' && g[len + 1] != '?'))
        return 0;
    memcpy(out, g, len);
    out[len] = '\0';
    return 1;
}

/* The request head is complete in c->in: answer it, and on /group/<G>/ upgrade and join G. */
static void handshake(struct conn *c, size_t head_len) {
    char req[IN_CAP + 1], target[IN_CAP], key[128], name[GROUP_NAME_MAX];
    memcpy(req, c->in, head_len);
    req[head_len] = '\0';
    if (sscanf(req, "GET %4095s HTTP/1.", target) != 1) {
        answer_http(c, "400 Bad Request", "bad request\n");
        return;
    }
    if (!header(req, "Sec-WebSocket-Key", key, sizeof key)) {
        if (strcmp(target, "/readyz") == 0 || strcmp(target, "/healthz") == 0)
            answer_http(c, "200 OK", "ok\n");
        else
            answer_http(c, "404 Not Found", "not found\n");
        return;
    }
    if (!group_of(target, name)) {
        answer_http(c, "404 Not Found", "not found\n");
        return;
    }
    unsigned char digest[20], joined[128 + sizeof WS_GUID];
    char accept[32], reply[256];
    size_t klen = strlen(key);
    memcpy(joined, key, klen);
    memcpy(joined + klen, WS_GUID, strlen(WS_GUID));
    sha1(joined, klen + strlen(WS_GUID), digest);
    base64(digest, sizeof digest, accept);
    int n = snprintf(reply, sizeof reply,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    send_bytes(c, reply, (size_t)n);
    c->websocket = 1;
    join(c, name);
    /* A client sends nothing before the 101, but keep any bytes after the head as frames. */
    c->in_len -= head_len;
    memmove(c->in, c->in + head_len, c->in_len);
}

/* A server frame (FIN, `opcode`, unmasked) of `prefix` then `payload` into `out`; its length. */
static size_t frame(unsigned char *out, int opcode, const char *prefix, const unsigned char *payload,
                    size_t len) {
    size_t plen = strlen(prefix), total = plen + len, h = 0;
    out[h++] = (unsigned char)(0x80 | opcode);
    if (total < 126) {
        out[h++] = (unsigned char)total;
    } else { /* total < 65536: client payloads are at most MAX_PAYLOAD */
        out[h++] = 126;
        out[h++] = (unsigned char)(total >> 8);
        out[h++] = (unsigned char)total;
    }
    memcpy(out + h, prefix, plen);
    memcpy(out + h + plen, payload, len);
    return h + total;
}

/* The group chat: the frame is built once and written to each member, one write each. */
static void publish(struct conn *from, int opcode, const unsigned char *payload, size_t len) {
    static unsigned char out[4 + sizeof GROUP_PREFIX + MAX_PAYLOAD];
    size_t n = frame(out, opcode, opcode == 1 ? GROUP_PREFIX : "", payload, len);
    struct group *g = from->group;
    for (size_t i = 0; i < g->len; i++)
        send_bytes(g->members[i], out, n);
}

/* Handles the complete client frames in c->in; a partial one stays for the next read. */
static void frames(struct conn *c) {
    size_t off = 0;
    while (!c->dead && c->in_len - off >= 2) {
        unsigned char *p = c->in + off;
        int fin = p[0] & 0x80, opcode = p[0] & 0x0f, masked = p[1] & 0x80;
        size_t h = 2, len = p[1] & 0x7f, have = c->in_len - off;
        if (len == 126) {
            if (have < 4)
                break;
            len = (size_t)p[2] << 8 | p[3];
            h = 4;
        } else if (len == 127) {
            if (have < 10)
                break;
            len = 0;
            for (int i = 2; i < 10; i++)
                len = len << 8 | p[i];
            h = 10;
        }
        /* Clients must mask; a message too big for the buffer, or fragmented, is not served. */
        if (!masked || !fin || (p[0] & 0x70) || len > MAX_PAYLOAD) {
            kill_conn(c);
            break;
        }
        if (have < h + 4 + len)
            break;
        unsigned char *mask = p + h, *data = p + h + 4;
        for (size_t i = 0; i < len; i++)
            data[i] ^= mask[i & 3];
        if (opcode == 1 || opcode == 2) {
            publish(c, opcode, data, len);
        } else if (opcode == 8) { /* close: answer with the same code, then hang up */
            unsigned char out[4] = {0x88, 0};
            size_t n = 2;
            if (len >= 2) {
                out[1] = 2;
                out[2] = data[0];
                out[3] = data[1];
                n = 4;
            }
            send_bytes(c, out, n);
            kill_conn(c);
        } else if (opcode == 9) {
            unsigned char out[4 + MAX_PAYLOAD];
            send_bytes(c, out, frame(out, 10, "", data, len > 125 ? 125 : len));
        } else if (opcode != 10) {
            kill_conn(c);
        }
        off += h + 4 + len;
    }
    c->in_len -= off;
    memmove(c->in, c->in + off, c->in_len);
}

static void readable(struct conn *c) {
    ssize_t n = read(c->fd, c->in + c->in_len, IN_CAP - c->in_len);
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            kill_conn(c);
        return;
    }
    c->in_len += (size_t)n;
    if (!c->websocket) {
        unsigned char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (!end) {
            if (c->in_len == IN_CAP)
                answer_http(c, "431 Request Header Fields Too Large", "too large\n");
            return;
        }
        handshake(c, (size_t)(end - c->in) + 4);
        if (c->dead)
            return;
    }
    frames(c);
}

static void accept_all(int listener) {
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED)
                perror("accept4");
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c)
            die("calloc");
        c->fd = fd;
        conns = grow(conns, &conns_cap, (size_t)fd + 1, sizeof *conns);
        conns[fd] = c;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            die("epoll_ctl ADD");
    }
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s PORT [BACKLOG]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), backlog = argc > 2 ? atoi(argv[2]) : 1024;
    if (port <= 0 || port > 65535) {
        fprintf(stderr, "floor: PORT must be 1-65535, got '%s'\n", argv[1]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listener < 0)
        die("socket");
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind");
    if (listen(listener, backlog) < 0)
        die("listen");
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, listener, &ev) < 0)
        die("epoll_ctl ADD");
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(epfd, events, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                accept_all(listener);
                continue;
            }
            struct conn *c = (size_t)fd < conns_cap ? conns[fd] : NULL;
            if (!c || c->dead)
                continue;
            if (events[i].events & EPOLLOUT)
                flush_out(c);
            if (!c->dead && events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                readable(c);
        }
        close_doomed();
    }
}
