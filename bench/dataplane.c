/* Load generator of bench/dataplane.py: what a route lookup costs the traffic.
 *
 *   dataplane udp-server ADDRESS PORT        answer each datagram from an unconnected socket
 *   dataplane udp-client ADDRESS PORT COUNT  COUNT request/responses; prints p50 and p99 (ns)
 *   dataplane tcp-server ADDRESS PORT        accept, send one byte, close
 *   dataplane tcp-client ADDRESS PORT SECS   connect, read the byte, close; prints conns/s
 *
 * Written in C so that the generator's own cost stays small against the kernel's path
 * (a Python loop would hide the ratio). Unconnected UDP sockets make the kernel look a
 * route up for every datagram; every new TCP connection looks up 2-3 routes. Servers die
 * with the process that started them (PR_SET_PDEATHSIG). IPv4 and IPv6 addresses.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static socklen_t address(const char *text, int port, struct sockaddr_storage *out)
{
	memset(out, 0, sizeof(*out));
	struct sockaddr_in *v4 = (struct sockaddr_in *)out;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
	if (inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons(port);
		return sizeof(*v4);
	}
	if (inet_pton(AF_INET6, text, &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons(port);
		return sizeof(*v6);
	}
	fprintf(stderr, "not an address: %s\n", text);
	exit(2);
}

static int bound(const char *text, int port, int type)
{
	struct sockaddr_storage where;
	socklen_t length = address(text, port, &where);
	int fd = socket(where.ss_family, type, 0);
	int one = 1;
	if (fd < 0)
		die("socket");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&where, length) < 0)
		die("bind");
	return fd;
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int by_value(const void *a, const void *b)
{
	long x = *(const long *)a, y = *(const long *)b;
	return (x > y) - (x < y);
}

static _Noreturn void udp_server(const char *text, int port)
{
	int fd = bound(text, port, SOCK_DGRAM);
	char buffer[64];
	struct sockaddr_storage peer;
	for (;;) {
		socklen_t length = sizeof(peer);
		ssize_t got = recvfrom(fd, buffer, sizeof(buffer), 0, (struct sockaddr *)&peer, &length);
		if (got < 0)
			die("recvfrom");
		if (sendto(fd, buffer, got, 0, (struct sockaddr *)&peer, length) < 0)
			die("sendto");
	}
}

static int udp_client(const char *text, int port, long count)
{
	struct sockaddr_storage server;
	socklen_t length = address(text, port, &server);
	int fd = socket(server.ss_family, SOCK_DGRAM, 0);
	struct timeval timeout = {.tv_sec = 2};
	long warmup = count / 10, *samples = calloc(count, sizeof(long));
	char buffer[64] = "ping";
	if (fd < 0 || !samples)
		die("udp client");
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
	for (long i = -warmup; i < count; i++) {
		struct timespec start, end;
		clock_gettime(CLOCK_MONOTONIC, &start);
		if (sendto(fd, buffer, 8, 0, (struct sockaddr *)&server, length) < 0)
			die("sendto");
		if (recv(fd, buffer, sizeof(buffer), 0) < 0)
			die("recv (no answer)");
		clock_gettime(CLOCK_MONOTONIC, &end);
		if (i >= 0)
			samples[i] = (end.tv_sec - start.tv_sec) * 1000000000L + end.tv_nsec - start.tv_nsec;
	}
	qsort(samples, count, sizeof(long), by_value);
	printf("%ld %ld\n", samples[count / 2], samples[count * 99 / 100]);
	return 0;
}

static _Noreturn void tcp_server(const char *text, int port)
{
	int fd = bound(text, port, SOCK_STREAM);
	if (listen(fd, 4096) < 0)
		die("listen");
	for (;;) {
		int conn = accept(fd, NULL, NULL);
		if (conn < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			die("accept");
		}
		if (write(conn, "!", 1) < 0 && errno != ECONNRESET && errno != EPIPE)
			die("write");
		close(conn);
	}
}

static int tcp_client(const char *text, int port, double seconds)
{
	struct sockaddr_storage server;
	socklen_t length = address(text, port, &server);
	struct linger abort_on_close = {.l_onoff = 1, .l_linger = 0}; /* no TIME_WAIT to pile up */
	long done = 0;
	double start = now(), end = start + seconds;
	char byte;
	signal(SIGPIPE, SIG_IGN);
	while (now() < end) {
		int fd = socket(server.ss_family, SOCK_STREAM, 0);
		if (fd < 0)
			die("socket");
		if (connect(fd, (struct sockaddr *)&server, length) < 0)
			die("connect");
		if (read(fd, &byte, 1) != 1)
			die("read");
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close));
		close(fd);
		done++;
	}
	printf("%.1f\n", done / (now() - start));
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s udp-server|udp-client|tcp-server|tcp-client ADDRESS PORT [N]\n",
			argv[0]);
		return 2;
	}
	const char *mode = argv[1], *text = argv[2];
	int port = atoi(argv[3]);
	if (strstr(mode, "server"))
		prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (!strcmp(mode, "udp-server"))
		udp_server(text, port);
	if (!strcmp(mode, "tcp-server"))
		tcp_server(text, port);
	if (argc < 5) {
		fprintf(stderr, "%s needs a count\n", mode);
		return 2;
	}
	if (!strcmp(mode, "udp-client"))
		return udp_client(text, port, atol(argv[4]));
	if (!strcmp(mode, "tcp-client"))
		return tcp_client(text, port, atof(argv[4]));
	fprintf(stderr, "unknown mode %s\n", mode);
	return 2;
}
