/*
 * loadgen — a GNP/1 load generator (OpenSSL + epoll, one thread, non-blocking).
 *
 * Built by bench/run.py:  cc -O2 -Wall -o bench/loadgen bench/loadgen.c -lssl -lcrypto
 *
 * Modes
 *   rpc (default)  C connections x D requests in flight per connection, closed
 *                  loop, for T seconds (--seconds) or N replies (--requests).
 *   handshake      C concurrent workers, each repeatedly: TCP connect, full TLS
 *                  handshake with the client certificate, read the greeting,
 *                  close.  Reports handshakes/s.  With --resume each worker
 *                  offers the session (ticket) of its previous connection;
 *                  "resumed" counts the handshakes that did resume.
 *   idle           open C admitted connections, print one JSON line
 *                  {"event": "admitted", ...} when all are admitted, then hold
 *                  them idle until SIGTERM/SIGINT or --hold S seconds.
 *
 * Every mode prints one JSON object (the result) as its last stdout line.
 * Exit status: 0 on success, 1 if any request failed, 2 on a fatal error
 * (refused greeting, connection lost, protocol violation, bad options).
 *
 * Request template (rpc mode): --command 'ECHO hello world' (default).  "%d"
 * in the command is replaced by (request counter mod --keys).  --header
 * 'Name: value' (repeatable) adds headers, --body-file F sends F as the body
 * (with a Size header).  Each in-flight slot gets its own Sequence
 * "<slot>.<generation>", so Sequences are unique among a connection's
 * requests in flight and a reply is matched to its slot in O(1).  For ECHO
 * the reply body is checked against the arguments joined by single spaces.
 *
 * Latency of a request = time from queueing it for SSL_write to parsing its
 * reply, in microseconds (CLOCK_MONOTONIC).  Throughput counts the replies
 * that arrive inside the measurement window [start+warmup, end]; after the
 * window no new requests are issued and the in-flight ones are drained (and
 * still checked for errors, but not counted).
 *
 * CPU: getrusage(RUSAGE_SELF) user+sys over the window divided by the window's
 * wall time, so a figure near 1.0 means the load generator itself was
 * saturated and the result is not the server's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

/* ------------------------------------------------------------------ utils */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    ERR_print_errors_fp(stderr);
    exit(2);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) die("out of memory");
    return q;
}

/* ---------------------------------------------------------------- options */

enum { MODE_RPC, MODE_HANDSHAKE, MODE_IDLE };

static struct {
    const char *host;
    int port;
    const char *cert, *key;
    int mode;
    int conns;
    int depth;
    double seconds;
    double warmup;
    long long requests; /* 0 = unbounded (time only) */
    const char *command;
    char *headers; /* "Name: v\r\n..." */
    size_t headers_len;
    char *body;
    size_t body_len;
    long long keys;
    double hold; /* idle mode; 0 = until signalled (bounded by --max-hold) */
    double max_hold;
    int setup_window; /* connections being set up at once */
    double setup_timeout;
    double drain_timeout;
    int tls_max; /* 0 any, 12, 13 */
    int check; /* check ECHO bodies */
    int resume; /* handshake mode: offer the previous connection's session */
    int watch;  /* idle mode: send --command once per connection (WATCH), count pushes */
    int quiet;
} opt = {
    .host = "127.0.0.1",
    .port = 4433,
    .mode = MODE_RPC,
    .conns = 1,
    .depth = 1,
    .seconds = 5,
    .warmup = 0,
    .command = "ECHO hello world",
    .keys = 1000,
    .max_hold = 600,
    .setup_window = 64,
    .setup_timeout = 60,
    .drain_timeout = 10,
    .check = 1,
};

static volatile sig_atomic_t stop_flag = 0;
static void on_signal(int sig) { (void)sig; stop_flag = 1; }

/* ----------------------------------------------------------- connections */

enum { ST_FREE, ST_CONNECTING, ST_HANDSHAKE, ST_GREETING, ST_READY, ST_CLOSED };

typedef struct {
    double t_send;
    uint32_t gen;
    int busy;
    int exp_len; /* -1: don't check */
    char *exp; /* expected ECHO body, exp_cap bytes */
} slot_t;

typedef struct {
    int fd;
    int idx;
    int state;
    SSL *ssl;
    uint32_t mask; /* registered epoll events */
    int read_wants_write, write_wants_read;
    char *rbuf;
    size_t rlen, rcap;
    char *wbuf;
    size_t wlen, woff, wcap;
    slot_t *slots;
    int inflight;
    double t_start; /* handshake mode: connect started */
    SSL_SESSION *sess; /* --resume: the session to offer next time */
} conn_t;

static int epfd;
static int exp_cap;
static SSL_CTX *ctx;
static conn_t *conns;
static struct sockaddr_in addr;

/* stats */
static uint32_t *lat; /* microseconds, completions inside the window */
static size_t nlat, caplat;
static long long completed_in_window, errors, errors_outside, pushes, issued, completed_total;
static char first_error[256];
static double t_window_start, t_window_end, t_deadline;
static int measuring, issuing = 1, window_over;
static double cpu_start, cpu_end;
static long long greetings, dropped, resumed_in_window;
static const char *tls_version = "?";

static void note_error(const char *what, size_t n) {
    if (!first_error[0]) {
        if (n > sizeof(first_error) - 1) n = sizeof(first_error) - 1;
        memcpy(first_error, what, n);
        first_error[n] = 0;
        for (char *p = first_error; *p; p++)
            if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = '?';
    }
}

static void record(double t_send, double t_done, int is_error) {
    completed_total++;
    if (measuring && !window_over && t_done >= t_window_start) {
        completed_in_window++;
        if (is_error) errors++;
        if (nlat == caplat) {
            caplat = caplat ? caplat * 2 : 1 << 16;
            lat = xrealloc(lat, caplat * sizeof(*lat));
        }
        double us = (t_done - t_send) * 1e6;
        lat[nlat++] = us > 4e9 ? 4000000000u : (uint32_t)(us + 0.5);
    } else if (is_error) {
        errors_outside++;
    }
}

static void set_mask(conn_t *c, uint32_t mask) {
    if (mask == c->mask) return;
    struct epoll_event ev = {.events = mask, .data.ptr = c};
    if (epoll_ctl(epfd, c->mask ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->mask = mask;
}

static void conn_close(conn_t *c) {
    if (c->ssl) {
        if (c->state == ST_READY || c->state == ST_GREETING) SSL_shutdown(c->ssl); /* one try */
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd); /* also removes it from epoll */
        c->fd = -1;
    }
    c->mask = 0;
    c->state = ST_CLOSED;
    c->rlen = c->wlen = c->woff = 0;
}

static void conn_start(conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket: %s (raise the open-files limit?)", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->t_start = now();
    c->mask = 0;
    c->rlen = c->wlen = c->woff = 0;
    c->read_wants_write = c->write_wants_read = 0;
    c->inflight = 0;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 && errno != EINPROGRESS)
        die("connect %s:%d: %s", opt.host, opt.port, strerror(errno));
    c->state = ST_CONNECTING;
    set_mask(c, EPOLLOUT);
}

/* -------------------------------------------------------------- requests */

static char *req_tmp;
static size_t req_tmp_cap;

static void wbuf_append(conn_t *c, const char *p, size_t n) {
    if (c->wlen + n > c->wcap) {
        /* compact first */
        if (c->woff) {
            memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
            c->wlen -= c->woff;
            c->woff = 0;
        }
        if (c->wlen + n > c->wcap) {
            c->wcap = (c->wlen + n) * 2;
            c->wbuf = xrealloc(c->wbuf, c->wcap);
        }
    }
    memcpy(c->wbuf + c->wlen, p, n);
    c->wlen += n;
}

/* Queue one request in slot s of connection c. */
static void issue(conn_t *c, int s) {
    slot_t *sl = &c->slots[s];
    long long id = issued % opt.keys;
    issued++;
    sl->gen++;
    sl->busy = 1;
    c->inflight++;
    /* command line with %d substituted */
    static char *cmd;
    static size_t cmd_cap;
    if (!cmd) {
        cmd_cap = strlen(opt.command) * 12 + 32; /* "%d" (2 bytes) -> at most 20 digits */
        cmd = xrealloc(NULL, cmd_cap);
    }
    size_t cl = 0;
    for (const char *p = opt.command; *p; p++) {
        if (p[0] == '%' && p[1] == 'd') {
            cl += (size_t)snprintf(cmd + cl, cmd_cap - cl, "%lld", id);
            p++;
        } else {
            cmd[cl++] = *p;
        }
    }
    cmd[cl] = 0;
    size_t need = cl + opt.headers_len + opt.body_len + 96;
    if (need > req_tmp_cap) {
        req_tmp_cap = need * 2;
        req_tmp = xrealloc(req_tmp, req_tmp_cap);
    }
    size_t n = 0;
    memcpy(req_tmp, cmd, cl);
    n = cl;
    n += (size_t)sprintf(req_tmp + n, "\r\nSequence: %d.%u\r\n", s, sl->gen);
    memcpy(req_tmp + n, opt.headers, opt.headers_len);
    n += opt.headers_len;
    if (opt.body_len) n += (size_t)sprintf(req_tmp + n, "Size: %zu\r\n", opt.body_len);
    req_tmp[n++] = '\r';
    req_tmp[n++] = '\n';
    if (opt.body_len) {
        memcpy(req_tmp + n, opt.body, opt.body_len);
        n += opt.body_len;
    }
    /* expected ECHO body: args joined by single spaces */
    sl->exp_len = -1;
    if (opt.check && cl >= 4 && strncasecmp(cmd, "ECHO", 4) == 0 && (cl == 4 || cmd[4] == ' ')) {
        int el = 0, ok = 1;
        const char *p = cmd + 4;
        while (*p) {
            while (*p == ' ') p++;
            if (!*p) break;
            if (el) {
                if (el >= exp_cap) { ok = 0; break; }
                sl->exp[el++] = ' ';
            }
            while (*p && *p != ' ') {
                if (el >= exp_cap) { ok = 0; break; }
                sl->exp[el++] = *p++;
            }
            if (!ok) break;
        }
        if (ok) sl->exp_len = el;
    }
    sl->t_send = now();
    wbuf_append(c, req_tmp, n);
}

/* ----------------------------------------------------------------- TLS IO */

static void fatal_conn(conn_t *c, const char *why) {
    die("connection %d: %s (state %d, %d in flight)", c->idx, why, c->state, c->inflight);
}

/* Returns 0 ok, -1 closed by peer. */
static int do_read(conn_t *c) {
    c->read_wants_write = 0;
    for (;;) {
        if (c->rcap - c->rlen < 16384) {
            c->rcap = c->rcap ? c->rcap * 2 : 65536;
            c->rbuf = xrealloc(c->rbuf, c->rcap);
        }
        int r = SSL_read(c->ssl, c->rbuf + c->rlen, (int)(c->rcap - c->rlen));
        if (r > 0) {
            c->rlen += (size_t)r;
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ) return 0;
        if (e == SSL_ERROR_WANT_WRITE) {
            c->read_wants_write = 1;
            return 0;
        }
        return -1; /* ZERO_RETURN, SYSCALL (EOF/RST), SSL error */
    }
}

/* Returns 0 ok, -1 broken. */
static int do_flush(conn_t *c) {
    c->write_wants_read = 0;
    while (c->woff < c->wlen) {
        size_t n = c->wlen - c->woff;
        if (n > (1u << 30)) n = 1u << 30;
        int r = SSL_write(c->ssl, c->wbuf + c->woff, (int)n);
        if (r > 0) {
            c->woff += (size_t)r;
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_WRITE) return 0; /* retried on EPOLLOUT */
        if (e == SSL_ERROR_WANT_READ) {
            c->write_wants_read = 1;
            return 0;
        }
        return -1;
    }
    c->woff = c->wlen = 0;
    return 0;
}

static void update_mask(conn_t *c) {
    uint32_t m = EPOLLIN;
    if (c->woff < c->wlen || c->read_wants_write) m |= EPOLLOUT;
    set_mask(c, m);
}

/* ---------------------------------------------------------------- parsing */

static int parse_uint(const char *p, const char *end, unsigned long long *out) {
    unsigned long long v = 0;
    if (p >= end) return -1;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (unsigned)(*p - '0');
        if (v > (1ull << 40)) return -1;
    }
    *out = v;
    return 0;
}

static void trim(const char **p, const char **e) {
    while (*p < *e && (**p == ' ' || **p == '\t')) (*p)++;
    while (*e > *p && ((*e)[-1] == ' ' || (*e)[-1] == '\t')) (*e)--;
}

/* Parse all complete frames in c->rbuf.  Returns 0, or dies. */
static void parse_frames(conn_t *c, double t) {
    size_t off = 0;
    if (c->state == ST_GREETING) {
        char *nl = memmem(c->rbuf, c->rlen, "\r\n", 2);
        if (!nl) {
            if (c->rlen > 8192) fatal_conn(c, "greeting too long");
            return;
        }
        size_t ll = (size_t)(nl - c->rbuf);
        if (ll == 2 && memcmp(c->rbuf, "OK", 2) == 0) {
            c->state = ST_READY;
            greetings++;
            off = ll + 2;
        } else {
            fprintf(stderr, "loadgen: server refused connection %d: %.*s\n", c->idx, (int)ll, c->rbuf);
            exit(2);
        }
    }
    while (c->state == ST_READY && off < c->rlen) {
        char *base = c->rbuf + off;
        size_t avail = c->rlen - off;
        char *he = memmem(base, avail, "\r\n\r\n", 4);
        if (!he) {
            if (avail > 65536) fatal_conn(c, "reply head over 64 KiB");
            break;
        }
        size_t headlen = (size_t)(he - base) + 4;
        /* status line */
        char *sl_end = memmem(base, headlen, "\r\n", 2);
        int is_ok = 0, is_err = 0, is_push = 0;
        size_t sll = (size_t)(sl_end - base);
        if (sll == 2 && memcmp(base, "OK", 2) == 0) is_ok = 1;
        else if (sll >= 3 && memcmp(base, "ERR", 3) == 0 && (sll == 3 || base[3] == ' ')) is_err = 1;
        else if (sll == 4 && memcmp(base, "PUSH", 4) == 0) is_push = 1;
        else {
            fprintf(stderr, "loadgen: bad status line: %.*s\n", (int)(sll > 200 ? 200 : sll), base);
            exit(2);
        }
        /* headers */
        const char *seq = NULL, *seq_end = NULL;
        unsigned long long size = 0;
        const char *p = sl_end + 2;
        const char *hend = he + 2; /* end of last header line incl CRLF */
        while (p < hend) {
            const char *le = memmem(p, (size_t)(hend - p), "\r\n", 2);
            if (!le || le == p) break;
            const char *colon = memchr(p, ':', (size_t)(le - p));
            if (!colon) {
                fprintf(stderr, "loadgen: header line without ':': %.*s\n", (int)(le - p), p);
                exit(2);
            }
            size_t nl = (size_t)(colon - p);
            const char *v = colon + 1, *ve = le;
            trim(&v, &ve);
            if (nl == 8 && strncasecmp(p, "Sequence", 8) == 0) {
                seq = v;
                seq_end = ve;
            } else if (nl == 4 && strncasecmp(p, "Size", 4) == 0) {
                if (parse_uint(v, ve, &size) < 0) {
                    fprintf(stderr, "loadgen: bad Size header\n");
                    exit(2);
                }
            }
            p = le + 2;
        }
        if (avail < headlen + size) break; /* body incomplete */
        const char *body = base + headlen;
        off += headlen + size;
        if (is_push) {
            pushes++;
            continue;
        }
        if (!seq) {
            /* framing error from the server (no Sequence): it will close */
            fprintf(stderr, "loadgen: reply without Sequence on connection %d: %.*s\n", c->idx,
                    (int)(sll > 200 ? 200 : sll), base);
            exit(2);
        }
        /* Sequence "<slot>.<gen>" */
        const char *dot = memchr(seq, '.', (size_t)(seq_end - seq));
        unsigned long long sn, gn;
        if (!dot || parse_uint(seq, dot, &sn) < 0 || parse_uint(dot + 1, seq_end, &gn) < 0 ||
            sn >= (unsigned long long)opt.depth || !c->slots[sn].busy || c->slots[sn].gen != (uint32_t)gn) {
            fprintf(stderr, "loadgen: reply with unknown Sequence %.*s on connection %d\n",
                    (int)(seq_end - seq), seq, c->idx);
            exit(2);
        }
        slot_t *s = &c->slots[sn];
        int bad = is_err;
        if (is_err) note_error(base, sll);
        else if (s->exp_len >= 0 && (size != (unsigned long long)s->exp_len || memcmp(body, s->exp, size) != 0)) {
            bad = 1;
            note_error("ECHO body mismatch", 18);
        }
        (void)is_ok;
        s->busy = 0;
        c->inflight--;
        record(s->t_send, t, bad);
        if (opt.mode == MODE_RPC && issuing && (opt.requests == 0 || issued < opt.requests))
            issue(c, (int)sn);
    }
    if (off) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
}

/* --------------------------------------------------------- event handling */

static int active_setups; /* connections in CONNECTING/HANDSHAKE/GREETING */

static void on_ready(conn_t *c);

static void handle(conn_t *c, uint32_t ev) {
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) die("connect %s:%d: %s", opt.host, opt.port, strerror(err));
        if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        c->ssl = SSL_new(ctx);
        if (!c->ssl) die("SSL_new");
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_connect_state(c->ssl);
        if (opt.resume && c->sess) SSL_set_session(c->ssl, c->sess);
        c->state = ST_HANDSHAKE;
    }
    if (c->state == ST_HANDSHAKE) {
        int r = SSL_connect(c->ssl);
        if (r != 1) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) { set_mask(c, EPOLLIN); return; }
            if (e == SSL_ERROR_WANT_WRITE) { set_mask(c, EPOLLOUT); return; }
            fatal_conn(c, "TLS handshake failed");
        }
        tls_version = SSL_get_version(c->ssl);
        c->state = ST_GREETING;
        set_mask(c, EPOLLIN);
        /* the greeting may already be buffered: fall through and read */
        ev |= EPOLLIN;
    }
    double t = 0;
    if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) || (c->read_wants_write && (ev & EPOLLOUT))) {
        int r = do_read(c);
        t = now();
        int was_greeting = c->state == ST_GREETING;
        if (c->rlen) parse_frames(c, t);
        if (was_greeting && c->state == ST_READY) {
            on_ready(c);
            if (opt.mode == MODE_HANDSHAKE) return; /* closed (and maybe restarted) */
        }
        if (r < 0) {
            if (opt.mode == MODE_IDLE && c->state == ST_READY) {
                dropped++;
                conn_close(c);
                return;
            }
            fatal_conn(c, "connection closed by the server");
        }
    }
    if (c->state == ST_READY && (c->woff < c->wlen)) {
        if (do_flush(c) < 0) fatal_conn(c, "write failed");
    }
    if (c->state == ST_READY || c->state == ST_GREETING) update_mask(c);
}

/* A connection got its greeting. */
static void on_ready(conn_t *c) {
    active_setups--;
    if (opt.mode == MODE_HANDSHAKE) {
        double t = now();
        record(c->t_start, t, 0);
        if (opt.resume) {
            /* Count resumptions inside the window; keep the newest session
             * (TLS 1.3 tickets arrive before the greeting, so it is there). */
            if (SSL_session_reused(c->ssl) && measuring && !window_over && t >= t_window_start)
                resumed_in_window++;
            SSL_SESSION *s = SSL_get1_session(c->ssl);
            if (s) {
                if (c->sess) SSL_SESSION_free(c->sess);
                c->sess = s;
            }
        }
        conn_close(c);
        if (issuing) {
            conn_start(c);
            active_setups++;
        } else {
            c->state = ST_FREE;
        }
    } else if (opt.mode == MODE_RPC && measuring) {
        for (int s = 0; s < opt.depth; s++) issue(c, s);
    } else if (opt.mode == MODE_IDLE && opt.watch) {
        issue(c, 0); /* e.g. WATCH prefix: its pushes are counted */
    }
}

/* ------------------------------------------------------------------- main */

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --cert F --key F [--host 127.0.0.1] [--port N]\n"
            "  [--mode rpc|handshake|idle] [-c CONNS] [-d DEPTH] [-t SECONDS] [-n REQUESTS]\n"
            "  [--warmup S] [--command 'ECHO hello world'] [--header 'Name: v']... [--body-file F]\n"
            "  [--keys K] [--hold S] [--setup-window W] [--tls 1.2|1.3] [--no-check] [--resume]\n"
            "  [--watch]  (idle mode: send --command once per connection, e.g. 'WATCH bench/', and count pushes)\n");
    exit(2);
}

static void loop_once(int timeout_ms) {
    struct epoll_event evs[256];
    int n = epoll_wait(epfd, evs, 256, timeout_ms);
    if (n < 0) {
        if (errno == EINTR) return;
        die("epoll_wait: %s", strerror(errno));
    }
    for (int i = 0; i < n; i++) handle((conn_t *)evs[i].data.ptr, evs[i].events);
}

/* Run the event loop over the measured window: until the deadline, a
 * signal, or *done reaching --requests; the CPU count restarts when the
 * warm-up ends. Then stop issuing new work. */
static void run_window(const long long *done, int poll_ms) {
    cpu_start = cpu_seconds();
    int cpu_reset = opt.warmup > 0;
    while (!stop_flag) {
        double t = now();
        if (cpu_reset && t >= t_window_start) { cpu_start = cpu_seconds(); cpu_reset = 0; }
        if (t >= t_deadline) break;
        if (opt.requests && *done >= opt.requests) break;
        loop_once(poll_ms);
    }
    t_window_end = now();
    cpu_end = cpu_seconds();
    window_over = 1;
    issuing = 0;
}

int main(int argc, char **argv) {
    static struct option lo[] = {
        {"host", 1, 0, 'H'},      {"port", 1, 0, 'p'},         {"cert", 1, 0, 'C'},
        {"key", 1, 0, 'K'},       {"mode", 1, 0, 'm'},         {"connections", 1, 0, 'c'},
        {"depth", 1, 0, 'd'},     {"seconds", 1, 0, 't'},      {"requests", 1, 0, 'n'},
        {"warmup", 1, 0, 'w'},    {"command", 1, 0, 'x'},      {"header", 1, 0, 'h'},
        {"body-file", 1, 0, 'b'}, {"keys", 1, 0, 'k'},         {"hold", 1, 0, 'o'},
        {"setup-window", 1, 0, 'W'}, {"tls", 1, 0, 'T'},       {"no-check", 0, 0, 'N'},
        {"max-hold", 1, 0, 'M'},  {"drain-timeout", 1, 0, 'D'}, {"setup-timeout", 1, 0, 'S'},
        {"resume", 0, 0, 'R'},                                  {"watch", 0, 0, 'A'},
        {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "c:d:t:n:", lo, NULL)) != -1) {
        switch (ch) {
        case 'H': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'C': opt.cert = optarg; break;
        case 'K': opt.key = optarg; break;
        case 'm':
            if (!strcmp(optarg, "rpc")) opt.mode = MODE_RPC;
            else if (!strcmp(optarg, "handshake")) opt.mode = MODE_HANDSHAKE;
            else if (!strcmp(optarg, "idle")) opt.mode = MODE_IDLE;
            else usage();
            break;
        case 'c': opt.conns = atoi(optarg); break;
        case 'd': opt.depth = atoi(optarg); break;
        case 't': opt.seconds = atof(optarg); break;
        case 'n': opt.requests = atoll(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'x': opt.command = optarg; break;
        case 'h': {
            size_t l = strlen(optarg);
            if (!memchr(optarg, ':', l) || strpbrk(optarg, "\r\n")) die("bad --header %s", optarg);
            opt.headers = xrealloc(opt.headers, opt.headers_len + l + 3);
            memcpy(opt.headers + opt.headers_len, optarg, l);
            memcpy(opt.headers + opt.headers_len + l, "\r\n", 3);
            opt.headers_len += l + 2;
            break;
        }
        case 'b': {
            FILE *f = fopen(optarg, "rb");
            if (!f) die("cannot open %s: %s", optarg, strerror(errno));
            struct stat st;
            fstat(fileno(f), &st);
            opt.body = xrealloc(NULL, (size_t)st.st_size + 1);
            opt.body_len = fread(opt.body, 1, (size_t)st.st_size, f);
            fclose(f);
            break;
        }
        case 'k': opt.keys = atoll(optarg); break;
        case 'o': opt.hold = atof(optarg); break;
        case 'W': opt.setup_window = atoi(optarg); break;
        case 'T': opt.tls_max = !strcmp(optarg, "1.2") ? 12 : !strcmp(optarg, "1.3") ? 13 : -1; break;
        case 'N': opt.check = 0; break;
        case 'R': opt.resume = 1; break;
        case 'A': opt.watch = 1; break;
        case 'M': opt.max_hold = atof(optarg); break;
        case 'D': opt.drain_timeout = atof(optarg); break;
        case 'S': opt.setup_timeout = atof(optarg); break;
        default: usage();
        }
    }
    if (!opt.cert || !opt.key || opt.conns < 1 || opt.depth < 1 || opt.keys < 1 || opt.tls_max < 0 ||
        opt.seconds <= 0 || opt.setup_window < 1 || optind != argc)
        usage();
    if (opt.seconds > 3600) die("--seconds is capped at 3600");
    if (!opt.headers) opt.headers = "";
    if (opt.mode != MODE_RPC) opt.depth = 1;

    /* as many descriptors as the hard limit allows */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    if (opt.mode != MODE_HANDSHAKE && (rlim_t)opt.conns + 16 > rl.rlim_cur)
        die("%d connections need more open files than the limit %llu", opt.conns,
            (unsigned long long)rl.rlim_cur);

    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &addr.sin_addr) != 1) die("--host must be an IPv4 address");

    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) die("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (opt.tls_max == 12) SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    if (opt.tls_max == 13) SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    /* Loopback benchmark: the server certificate is not verified. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    /* No session cache: without --resume every handshake is a full one;
     * with it, each worker offers the session of its previous connection. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (!opt.resume) SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (SSL_CTX_use_certificate_chain_file(ctx, opt.cert) != 1) die("cannot load --cert %s", opt.cert);
    if (SSL_CTX_use_PrivateKey_file(ctx, opt.key, SSL_FILETYPE_PEM) != 1) die("cannot load --key %s", opt.key);
    if (SSL_CTX_check_private_key(ctx) != 1) die("--cert and --key do not match");

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1: %s", strerror(errno));

    exp_cap = opt.check ? (int)strlen(opt.command) * 12 + 32 : 1;
    conns = calloc((size_t)opt.conns, sizeof(conn_t));
    if (!conns) die("out of memory");
    for (int i = 0; i < opt.conns; i++) {
        conns[i].idx = i;
        conns[i].fd = -1;
        conns[i].state = ST_FREE;
        conns[i].slots = calloc((size_t)opt.depth, sizeof(slot_t));
        if (!conns[i].slots) die("out of memory");
        for (int s = 0; s < opt.depth; s++) conns[i].slots[s].exp = xrealloc(NULL, (size_t)exp_cap);
    }

    double t0 = now();
    double setup_seconds = 0;
    if (opt.mode == MODE_HANDSHAKE) {
        /* the window starts at once; every worker loops */
        measuring = 1;
        t_window_start = t0 + opt.warmup;
        t_deadline = t_window_start + opt.seconds;
        for (int i = 0; i < opt.conns; i++) {
            conn_start(&conns[i]);
            active_setups++;
        }
        run_window(&completed_in_window, 50);
        /* let the handshakes in progress finish (not counted) */
        double dl = now() + opt.drain_timeout;
        while (active_setups > 0 && now() < dl) loop_once(50);
        for (int i = 0; i < opt.conns; i++)
            if (conns[i].state != ST_FREE && conns[i].state != ST_CLOSED) conn_close(&conns[i]);
    } else {
        /* set up every connection, a window at a time */
        int next = 0;
        while (!stop_flag) {
            while (next < opt.conns && active_setups < opt.setup_window) {
                conn_start(&conns[next++]);
                active_setups++;
            }
            if (greetings == opt.conns) break;
            if (now() - t0 > opt.setup_timeout)
                die("only %lld of %d connections admitted after %.0f s", greetings, opt.conns, opt.setup_timeout);
            loop_once(50);
        }
        setup_seconds = now() - t0;
        if (stop_flag) die("interrupted during setup");
    }

    if (opt.mode == MODE_IDLE) {
        printf("{\"event\": \"admitted\", \"connections\": %lld, \"setup_seconds\": %.3f}\n", greetings,
               setup_seconds);
        fflush(stdout);
        double th = now();
        double limit = opt.hold > 0 ? opt.hold : opt.max_hold;
        while (!stop_flag && now() - th < limit) loop_once(100);
        double held = now() - th;
        for (int i = 0; i < opt.conns; i++)
            if (conns[i].state == ST_READY) conn_close(&conns[i]);
        printf("{\"mode\": \"idle\", \"connections\": %d, \"admitted\": %lld, \"dropped\": %lld, "
               "\"setup_seconds\": %.3f, \"held_seconds\": %.3f, \"pushes\": %lld, \"errors\": %lld, "
               "\"tls\": \"%s\"}\n",
               opt.conns, greetings, dropped, setup_seconds, held, pushes, errors + errors_outside,
               tls_version);
        return dropped ? 1 : 0;
    }

    if (opt.mode == MODE_RPC) {
        measuring = 1;
        double ts = now();
        t_window_start = ts + opt.warmup;
        t_deadline = t_window_start + opt.seconds;
        for (int i = 0; i < opt.conns; i++) {
            conn_t *c = &conns[i];
            for (int s = 0; s < opt.depth; s++) issue(c, s);
            if (do_flush(c) < 0) fatal_conn(c, "write failed");
            update_mask(c);
        }
        run_window(&completed_total, opt.requests ? 10 : 50);
        /* drain what is in flight; replies are still checked */
        double dl = now() + opt.drain_timeout;
        long long inflight;
        for (;;) {
            inflight = 0;
            for (int i = 0; i < opt.conns; i++) inflight += conns[i].inflight;
            if (!inflight || now() >= dl) break;
            loop_once(50);
        }
        if (inflight) {
            fprintf(stderr, "loadgen: %lld requests still unanswered %.0f s after the end\n", inflight,
                    opt.drain_timeout);
            errors_outside += inflight;
        }
        for (int i = 0; i < opt.conns; i++) conn_close(&conns[i]);
    }

    double secs = t_window_end - t_window_start;
    if (secs <= 0) secs = 1e-9;
    double cpu = (cpu_end - cpu_start) / secs;
    qsort(lat, nlat, sizeof(*lat), cmp_u32);
    uint32_t p50 = 0, p99 = 0, mx = 0;
    double mean = 0;
    if (nlat) {
        p50 = lat[(size_t)((nlat - 1) * 0.50)];
        p99 = lat[(size_t)((nlat - 1) * 0.99)];
        mx = lat[nlat - 1];
        for (size_t i = 0; i < nlat; i++) mean += lat[i];
        mean /= (double)nlat;
    }
    const char *rate_name = opt.mode == MODE_HANDSHAKE ? "handshakes_per_s" : "req_per_s";
    printf("{\"mode\": \"%s\", \"connections\": %d, \"depth\": %d, \"requests\": %lld, "
           "\"errors\": %lld, \"errors_after_window\": %lld, \"seconds\": %.3f, \"%s\": %.1f, "
           "\"p50_us\": %u, \"p99_us\": %u, \"max_us\": %u, \"mean_us\": %.1f, "
           "\"loadgen_cpu\": %.3f, \"pushes\": %lld, \"setup_seconds\": %.3f, \"tls\": \"%s\", "
           "\"replies_total\": %lld, \"first_error\": \"%s\", \"resumed\": %lld}\n",
           opt.mode == MODE_HANDSHAKE ? "handshake" : "rpc", opt.conns, opt.depth, completed_in_window, errors,
           errors_outside, secs, rate_name, completed_in_window / secs, p50, p99, mx, mean, cpu, pushes,
           setup_seconds, tls_version, completed_total, first_error, resumed_in_window);
    fflush(stdout);
    return (errors || errors_outside) ? 1 : 0;
}
