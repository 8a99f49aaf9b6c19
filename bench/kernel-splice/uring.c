// The "uring" target of bench/gateway-vs-nginx.sh (EXTRA=uring): a byte splice on io_uring, one
// ring per worker process (WORKERS, like nginx's), SO_REUSEPORT listeners, SINGLE_ISSUER and
// DEFER_TASKRUN: a message costs one recv and one send submission, completions are reaped in
// batches, no epoll. Measurement only (no frame boundaries, no timeouts).
//   uring LISTEN_PORT UPSTREAM_PORT WORKERS
#include "common.h"
#include <liburing.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

struct pair {
  int fd[2];
  int pending; // operations in flight; the pair is freed when the last one ends after a close
  int closed;
  char buf[2][4096];
};
enum { ACCEPT = 1, RECV = 2, SEND = 3 };

static struct io_uring ring;
static int listener;

static uint64_t tag(struct pair *p, int op, int dir) { return (uint64_t)(uintptr_t)p | op | (dir << 2); }

static struct io_uring_sqe *next_sqe(void) {
  struct io_uring_sqe *s = io_uring_get_sqe(&ring);
  if (!s) {
    io_uring_submit(&ring);
    s = io_uring_get_sqe(&ring);
  }
  return s;
}

static void post_recv(struct pair *p, int dir) {
  struct io_uring_sqe *s = next_sqe();
  io_uring_prep_recv(s, p->fd[dir], p->buf[dir], sizeof p->buf[dir], 0);
  io_uring_sqe_set_data64(s, tag(p, RECV, dir));
}

static void post_accept(void) {
  struct io_uring_sqe *s = next_sqe();
  io_uring_prep_accept(s, listener, NULL, NULL, 0);
  io_uring_sqe_set_data64(s, ACCEPT);
}

static void end(struct pair *p) {
  if (!p->closed) {
    p->closed = 1;
    shutdown(p->fd[0], SHUT_RDWR);
    shutdown(p->fd[1], SHUT_RDWR);
  }
  if (--p->pending == 0) {
    close(p->fd[0]);
    close(p->fd[1]);
    free(p);
  }
}

int main(int argc, char **argv) {
  if (argc != 4) return 2;
  struct sockaddr_in a = loopback(atoi(argv[1])), up = loopback(atoi(argv[2]));
  for (int w = 1; w < atoi(argv[3]); w++)
    if (fork() == 0) break;
  int one = 1;
  listener = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(listener, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (bind(listener, (struct sockaddr *)&a, sizeof a) || listen(listener, 4096)) return perror("listen"), 1;
  struct io_uring_params params = {.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN};
  if (io_uring_queue_init_params(4096, &ring, &params)) return perror("io_uring"), 1;
  post_accept();
  for (;;) {
    io_uring_submit_and_wait(&ring, 1);
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      seen++;
      uint64_t t = cqe->user_data;
      int res = cqe->res;
      if (t == ACCEPT) {
        post_accept();
        if (res < 0) continue;
        // The upgrade request is read and forwarded synchronously.
        char req[REQUEST_MAX + 1];
        int n = read_request(res, req);
        int u = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(u, (struct sockaddr *)&up, sizeof up) || write(u, req, n) != n) {
          close(res);
          close(u);
          continue;
        }
        setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct pair *p = aligned_alloc(8, sizeof *p);
        *p = (struct pair){.fd = {res, u}, .pending = 2};
        post_recv(p, 0);
        post_recv(p, 1);
        continue;
      }
      struct pair *p = (struct pair *)(uintptr_t)(t & ~(uint64_t)7);
      int op = t & 3, dir = (t >> 2) & 1;
      if (res <= 0 || p->closed) {
        end(p);
      } else if (op == RECV) {
        struct io_uring_sqe *s = next_sqe();
        io_uring_prep_send(s, p->fd[1 - dir], p->buf[dir], res, MSG_NOSIGNAL | MSG_WAITALL);
        io_uring_sqe_set_data64(s, tag(p, SEND, dir));
      } else {
        post_recv(p, dir);
      }
    }
    io_uring_cq_advance(&ring, seen);
  }
}
