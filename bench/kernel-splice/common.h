// Shared by the measurement-only splices of bench/gateway-vs-nginx.sh (EXTRA=sockmap|uring).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define REQUEST_MAX 8192

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// Reads a client's upgrade request (up to the blank line, at most REQUEST_MAX bytes) into
// `req`, which holds REQUEST_MAX + 1; returns its length. Setup is not what is measured, so
// this blocks.
static int read_request(int fd, char *req) {
  int n = 0;
  while (n < REQUEST_MAX) {
    int r = read(fd, req + n, REQUEST_MAX - n);
    if (r <= 0) break;
    n += r;
    req[n] = 0;
    if (strstr(req, "\r\n\r\n")) break;
  }
  return n;
}
