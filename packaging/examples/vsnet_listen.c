/*
 * vsnet_listen -- a minimal C client of the vsnet socket broker.
 *
 *     vsnet_listen SERVER PORT [BROKER_PATH]
 *
 * Asks vsnetd's broker (default /run/vsnet/broker.sock, or $VSNET_BROKER) for TCP
 * listening sockets on every address of the virtual server SERVER, port PORT:
 *
 *     {"v":1,"op":"listen","server":SERVER,"proto":"tcp","port":PORT}
 *
 * The broker answers with one JSON object per message and the sockets as SCM_RIGHTS
 * descriptors (at most 253 per message; a longer answer comes in parts that say "part"
 * and "parts"). The program then needs no root, no setns() and no SO_MARK of its own:
 * the sockets arrive bound, marked (pbr) or made inside the VS namespace (netns).
 *
 * It prints "listening on N sockets" on stdout once ready, then greets every connection
 * with "hello from vsnet SERVER on fd N" (N: the listening socket it came in on) and
 * closes it. SIGTERM or SIGINT end it cleanly (exit status 0). A refusal by the broker is
 * printed on stderr ("refused: CODE: MESSAGE") and ends it with status 1.
 *
 * The protocol is in docs/broker-protocol.md (the reference: vsnetd/broker/protocol.py,
 * the only part of vsnet a client depends on). Plain C99 + POSIX (+ the Linux
 * MSG_CMSG_CLOEXEC flag when the headers have it), no dependency beyond libc:
 *
 *     gcc -std=c99 -Wall -Wextra -Werror -O2 -o vsnet_listen vsnet_listen.c
 */

#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* CMSG_SPACE (not in POSIX, but in every libc) */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_BROKER "/run/vsnet/broker.sock"
#define MAX_FDS 253              /* SCM_MAX_FD: descriptors per message */
#define REPLY_MAX (1024 * 1024)  /* replies are not bounded by the 64 KiB request limit */
#define REQUEST_MAX 1024

#ifndef MSG_CMSG_CLOEXEC
#define MSG_CMSG_CLOEXEC 0
#endif

static const char *program = "vsnet_listen";

/* ------------------------------------------------------------------ a tiny JSON reader
 *
 * Just enough JSON to read the broker's replies safely: a real tokenizer (strings with
 * escapes, nesting), so that text inside a string (an error message quoting the server
 * name you sent, say) can never be mistaken for a key.
 */

struct socket_meta {
    char address[64];
    long port;
    long mark;
    char namespace_[80];
};

struct reply {
    int ok;        /* 1 true, 0 false, -1 absent */
    int is_event;  /* a subscription event ("event" key): not an answer */
    long part;     /* 0 when absent */
    long parts;
    char code[64];
    char message[512];
    size_t sockets;                 /* entries in "sockets" */
    struct socket_meta meta[MAX_FDS];
};

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A string at p (which must be '"'); its text, truncated to fit, goes to out (may be
 * NULL). \uXXXX beyond ASCII becomes '?': enough for display. Returns the position
 * after the closing quote, or NULL when malformed. */
static const char *read_string(const char *p, const char *end, char *out, size_t size)
{
    size_t n = 0;

    if (p >= end || *p != '"')
        return NULL;
    for (p++; p < end; p++) {
        char c = *p;
        if (c == '"') {
            if (out != NULL && size > 0)
                out[n < size ? n : size - 1] = '\0';
            return p + 1;
        }
        if ((unsigned char)c < 0x20)
            return NULL;
        if (c == '\\') {
            if (++p >= end)
                return NULL;
            switch (*p) {
            case '"': case '\\': case '/': c = *p; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u': {
                int i, code = 0;
                if (end - p < 5)
                    return NULL;
                for (i = 1; i <= 4; i++) {
                    int d = hex_digit(p[i]);
                    if (d < 0)
                        return NULL;
                    code = code * 16 + d;
                }
                p += 4;
                c = code < 0x80 ? (char)code : '?';
                break;
            }
            default:
                return NULL;
            }
        }
        if (out != NULL && n + 1 < size)
            out[n++] = c;
    }
    return NULL;
}

static const char *read_long(const char *p, const char *end, long *value)
{
    long v = 0;
    int negative = 0, digits = 0;

    if (p < end && *p == '-') {
        negative = 1;
        p++;
    }
    for (; p < end && *p >= '0' && *p <= '9'; p++, digits++) {
        if (v > (LONG_MAX - (*p - '0')) / 10)
            return NULL;
        v = v * 10 + (*p - '0');
    }
    if (digits == 0 || (p < end && (*p == '.' || *p == 'e' || *p == 'E')))
        return NULL;  /* the broker only sends integers */
    *value = negative ? -v : v;
    return p;
}

static const char *read_literal(const char *p, const char *end, const char *word)
{
    size_t len = strlen(word);
    if ((size_t)(end - p) < len || memcmp(p, word, len) != 0)
        return NULL;
    return p + len;
}

/* Any JSON value: skipped. */
static const char *skip_value(const char *p, const char *end, int depth)
{
    p = skip_ws(p, end);
    if (p >= end || depth > 64)
        return NULL;
    if (*p == '"')
        return read_string(p, end, NULL, 0);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = skip_ws(p + 1, end);
        if (p < end && *p == close)
            return p + 1;
        for (;;) {
            if (close == '}') {
                p = read_string(skip_ws(p, end), end, NULL, 0);
                if (p == NULL || (p = skip_ws(p, end)) >= end || *p != ':')
                    return NULL;
                p++;
            }
            if ((p = skip_value(p, end, depth + 1)) == NULL)
                return NULL;
            p = skip_ws(p, end);
            if (p < end && *p == ',') {
                p++;
                continue;
            }
            return p < end && *p == close ? p + 1 : NULL;
        }
    }
    if (*p == 't')
        return read_literal(p, end, "true");
    if (*p == 'f')
        return read_literal(p, end, "false");
    if (*p == 'n')
        return read_literal(p, end, "null");
    if (*p == '-' || (*p >= '0' && *p <= '9')) {
        for (p++; p < end && *p != '\0' && strchr("0123456789.eE+-", *p) != NULL; p++)
            ;
        return p;
    }
    return NULL;
}

/* Members of an object, one callback per key (the callback reads the value). */
typedef const char *(*member_fn)(const char *key, const char *p, const char *end, void *ctx);

static const char *read_object(const char *p, const char *end, member_fn fn, void *ctx)
{
    char key[32];

    p = skip_ws(p, end);
    if (p >= end || *p != '{')
        return NULL;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}')
        return p + 1;
    for (;;) {
        p = read_string(skip_ws(p, end), end, key, sizeof key);
        if (p == NULL || (p = skip_ws(p, end)) >= end || *p != ':')
            return NULL;
        if ((p = fn(key, skip_ws(p + 1, end), end, ctx)) == NULL)
            return NULL;
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        return p < end && *p == '}' ? p + 1 : NULL;
    }
}

static const char *error_member(const char *key, const char *p, const char *end, void *ctx)
{
    struct reply *r = ctx;
    if (strcmp(key, "code") == 0)
        return read_string(p, end, r->code, sizeof r->code);
    if (strcmp(key, "message") == 0)
        return read_string(p, end, r->message, sizeof r->message);
    return skip_value(p, end, 1);
}

static const char *meta_member(const char *key, const char *p, const char *end, void *ctx)
{
    struct socket_meta *m = ctx;
    if (strcmp(key, "address") == 0)
        return read_string(p, end, m->address, sizeof m->address);
    if (strcmp(key, "namespace") == 0)
        return read_string(p, end, m->namespace_, sizeof m->namespace_);
    if (strcmp(key, "port") == 0)
        return read_long(p, end, &m->port);
    if (strcmp(key, "mark") == 0)
        return read_long(p, end, &m->mark);
    return skip_value(p, end, 2);
}

static const char *reply_member(const char *key, const char *p, const char *end, void *ctx)
{
    struct reply *r = ctx;

    if (strcmp(key, "ok") == 0) {
        const char *q = read_literal(p, end, "true");
        r->ok = q != NULL;
        return q != NULL ? q : read_literal(p, end, "false");
    }
    if (strcmp(key, "event") == 0) {
        r->is_event = 1;
        return skip_value(p, end, 1);
    }
    if (strcmp(key, "part") == 0)
        return read_long(p, end, &r->part);
    if (strcmp(key, "parts") == 0)
        return read_long(p, end, &r->parts);
    if (strcmp(key, "error") == 0)
        return read_object(p, end, error_member, r);
    if (strcmp(key, "sockets") == 0) {
        if (p >= end || *p != '[')
            return NULL;
        p = skip_ws(p + 1, end);
        if (p < end && *p == ']')
            return p + 1;
        for (;;) {
            struct socket_meta scratch, *m;
            m = r->sockets < MAX_FDS ? &r->meta[r->sockets] : &scratch;
            memset(m, 0, sizeof *m);
            if ((p = read_object(p, end, meta_member, m)) == NULL)
                return NULL;
            r->sockets++;
            p = skip_ws(p, end);
            if (p < end && *p == ',') {
                p = skip_ws(p + 1, end);
                continue;
            }
            return p < end && *p == ']' ? p + 1 : NULL;
        }
    }
    return skip_value(p, end, 1);
}

/* One message of the broker: 0, or -1 when it is not a JSON object. */
static int parse_reply(const char *data, size_t len, struct reply *r)
{
    const char *end = data + len, *p;

    memset(r, 0, sizeof *r);
    r->ok = -1;
    p = read_object(data, end, reply_member, r);
    return p != NULL && skip_ws(p, end) == end ? 0 : -1;
}

/* ------------------------------------------------------------------ talking to the broker */

static int connect_broker(const char *path)
{
    struct sockaddr_un addr;
    struct timeval timeout = {10, 0};  /* a broker that does not answer is an error */
    int fd;

    if (strlen(path) >= sizeof addr.sun_path) {
        fprintf(stderr, "%s: %s: path too long\n", program, path);
        return -1;
    }
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "%s: socket: %s\n", program, strerror(errno));
        return -1;
    }
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        fprintf(stderr, "%s: %s: %s\n", program, path, strerror(errno));
        close(fd);
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    return fd;
}

/* The request, with SERVER escaped as a JSON string. */
static int build_request(char *out, size_t size, const char *server, long port)
{
    char escaped[REQUEST_MAX / 2];
    size_t n = 0;
    const unsigned char *s;
    int len;

    for (s = (const unsigned char *)server; *s != '\0'; s++) {
        if (n + 7 >= sizeof escaped)
            return -1;
        if (*s == '"' || *s == '\\') {
            escaped[n++] = '\\';
            escaped[n++] = (char)*s;
        } else if (*s < 0x20) {
            n += (size_t)snprintf(escaped + n, sizeof escaped - n, "\\u%04x", *s);
        } else {
            escaped[n++] = (char)*s;
        }
    }
    escaped[n] = '\0';
    len = snprintf(out, size, "{\"v\":1,\"op\":\"listen\",\"server\":\"%s\",\"proto\":\"tcp\","
                   "\"port\":%ld}", escaped, port);
    return len > 0 && (size_t)len < size ? len : -1;
}

/* Receive one message and the descriptors it carries (appended to *fds). Returns the
 * message length, or -1 (an error was printed). */
static ssize_t receive(int broker, char *buf, size_t size, int **fds, size_t *nfds,
                       size_t *received)
{
    union {
        struct cmsghdr align;
        char bytes[CMSG_SPACE(MAX_FDS * sizeof(int))];
    } control;
    struct iovec iov;
    struct msghdr msg;
    struct cmsghdr *cmsg;
    ssize_t len;

    *received = 0;
    iov.iov_base = buf;
    iov.iov_len = size;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes;
    msg.msg_controllen = sizeof control.bytes;
    do
        len = recvmsg(broker, &msg, MSG_CMSG_CLOEXEC);
    while (len < 0 && errno == EINTR);
    if (len < 0) {
        fprintf(stderr, "%s: receiving from the broker: %s\n", program,
                errno == EAGAIN || errno == EWOULDBLOCK ? "timed out" : strerror(errno));
        return -1;
    }
    /* Keep what came, even when the message is bad, so that it gets closed. */
    for (cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        size_t count, i;
        int *grown;
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
            continue;
        count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        grown = realloc(*fds, (*nfds + count) * sizeof(int));
        if (grown == NULL) {
            fprintf(stderr, "%s: out of memory\n", program);
            return -1;
        }
        *fds = grown;
        for (i = 0; i < count; i++)
            memcpy(&(*fds)[*nfds + i], CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
        *nfds += count;
        *received += count;
    }
    if (len == 0) {
        fprintf(stderr, "%s: the broker closed the connection\n", program);
        return -1;
    }
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        fprintf(stderr, "%s: a reply did not fit (%s)\n", program,
                msg.msg_flags & MSG_TRUNC ? "data" : "descriptors");
        return -1;
    }
    return len;
}

static void close_all(int *fds, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        close(fds[i]);
}

/* Ask for the listening sockets: their count, or -1 (the reason was printed). */
static long fetch_sockets(const char *path, const char *server, long port, int **fds)
{
    static char buf[REPLY_MAX];
    static struct reply reply;
    char request[REQUEST_MAX];
    size_t nfds = 0;
    int broker, len;

    *fds = NULL;
    len = build_request(request, sizeof request, server, port);
    if (len < 0) {
        fprintf(stderr, "%s: server name too long\n", program);
        return -1;
    }
    if ((broker = connect_broker(path)) < 0)
        return -1;
    if (send(broker, request, (size_t)len, MSG_NOSIGNAL) != len) {
        fprintf(stderr, "%s: sending to the broker: %s\n", program, strerror(errno));
        goto fail;
    }
    for (;;) {  /* one message per part, until part == parts */
        size_t received;
        ssize_t n = receive(broker, buf, sizeof buf, fds, &nfds, &received);
        size_t i;

        if (n < 0)
            goto fail;
        if (parse_reply(buf, (size_t)n, &reply) < 0) {
            fprintf(stderr, "%s: the broker sent something that is not a JSON object\n",
                    program);
            goto fail;
        }
        if (reply.is_event)  /* only subscribers get events; never mind them here */
            continue;
        if (reply.ok != 1) {
            fprintf(stderr, "%s: refused: %s: %s\n", program,
                    reply.code[0] ? reply.code : "(no code)", reply.message);
            goto fail;
        }
        if (reply.sockets != received) {
            fprintf(stderr, "%s: %zu socket(s) described, %zu received\n", program,
                    reply.sockets, received);
            goto fail;
        }
        for (i = 0; i < received; i++)
            fprintf(stderr, "%s: fd %d: %s port %ld%s%s (mark %#lx)\n", program,
                    (*fds)[nfds - received + i], reply.meta[i].address, reply.meta[i].port,
                    reply.meta[i].namespace_[0] ? " in namespace " : "",
                    reply.meta[i].namespace_, (unsigned long)reply.meta[i].mark);
        if (reply.parts == 0 || reply.part >= reply.parts)
            break;
    }
    close(broker);
    return (long)nfds;

fail:
    close_all(*fds, nfds);
    free(*fds);
    *fds = NULL;
    close(broker);
    return -1;
}

/* ------------------------------------------------------------------ serving */

static int stop_pipe[2] = {-1, -1};

static void on_stop(int signo)
{
    int saved = errno;
    char byte = (char)signo;
    ssize_t ignored = write(stop_pipe[1], &byte, 1);  /* wakes poll() up */
    (void)ignored;
    errno = saved;
}

static int set_flags(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -1;
    return fcntl(fd, F_SETFD, FD_CLOEXEC);
}

static void greet(int listener, const char *server)
{
    char line[256];
    int conn, len;

    conn = accept(listener, NULL, NULL);
    if (conn < 0)
        return;  /* EAGAIN (gone again), ECONNABORTED...: nothing to do */
    len = snprintf(line, sizeof line, "hello from vsnet %s on fd %d\n", server, listener);
    if (len > 0 && (size_t)len < sizeof line) {
        const char *p = line;
        while (len > 0) {
            ssize_t n = send(conn, p, (size_t)len, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            p += n;
            len -= (int)n;
        }
    }
    close(conn);
}

static int serve(int *fds, size_t n, const char *server)
{
    struct pollfd *polled;
    struct sigaction action;
    size_t i;

    if (pipe(stop_pipe) < 0 || set_flags(stop_pipe[0]) < 0 || set_flags(stop_pipe[1]) < 0) {
        fprintf(stderr, "%s: pipe: %s\n", program, strerror(errno));
        return 1;
    }
    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    action.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &action, NULL);

    polled = calloc(n + 1, sizeof *polled);
    if (polled == NULL) {
        fprintf(stderr, "%s: out of memory\n", program);
        return 1;
    }
    for (i = 0; i < n; i++) {
        set_flags(fds[i]);  /* accept() must not block if a connection vanishes */
        polled[i].fd = fds[i];
        polled[i].events = POLLIN;
    }
    polled[n].fd = stop_pipe[0];
    polled[n].events = POLLIN;

    printf("listening on %zu sockets\n", n);
    fflush(stdout);

    for (;;) {
        int ready = poll(polled, (nfds_t)(n + 1), -1);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "%s: poll: %s\n", program, strerror(errno));
            free(polled);
            return 1;
        }
        if (polled[n].revents != 0)
            break;  /* SIGTERM or SIGINT */
        for (i = 0; i < n; i++)
            if (polled[i].revents & POLLIN)
                greet(polled[i].fd, server);
    }
    fprintf(stderr, "%s: stopping\n", program);
    free(polled);
    return 0;
}

int main(int argc, char **argv)
{
    const char *path;
    char *rest;
    long port, count;
    int *fds, status;

    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s SERVER PORT [BROKER_PATH]\n", program);
        return 2;
    }
    errno = 0;
    port = strtol(argv[2], &rest, 10);
    if (errno != 0 || rest == argv[2] || *rest != '\0' || port < 1 || port > 65535) {
        fprintf(stderr, "%s: %s: the port is 1..65535\n", program, argv[2]);
        return 2;
    }
    path = argc == 4 ? argv[3] : getenv("VSNET_BROKER");
    if (path == NULL || *path == '\0')
        path = DEFAULT_BROKER;

    count = fetch_sockets(path, argv[1], port, &fds);
    if (count < 0)
        return 1;
    if (count == 0) {
        fprintf(stderr, "%s: the broker sent no sockets\n", program);
        free(fds);
        return 1;
    }
    status = serve(fds, (size_t)count, argv[1]);
    close_all(fds, (size_t)count);
    free(fds);
    return status;
}
