// The "sockmap" target of bench/gateway-vs-nginx.sh (EXTRA=sockmap): accepts a client, reads its
// upgrade request, connects to the upstream, puts both sockets into splice.bpf.o's sockhash and
// only then forwards the request, so every later byte either way is moved by the kernel (the
// program's redirects run in kworkers) and never reaches this process. Measurement only.
//   sockmap LISTEN_PORT UPSTREAM_PORT BPF_OBJECT
#include "common.h"
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>

struct pair_key {
  __u32 remote_ip4, local_ip4, remote_port, local_port;
};

// The key the verdict program builds for `fd`: __sk_buff's remote_port is the network-order
// port shifted into the upper half, local_port is in host order.
static void key_of(int fd, struct pair_key *k) {
  struct sockaddr_in l, r;
  socklen_t n = sizeof l;
  getsockname(fd, (struct sockaddr *)&l, &n);
  n = sizeof r;
  getpeername(fd, (struct sockaddr *)&r, &n);
  k->remote_ip4 = r.sin_addr.s_addr;
  k->local_ip4 = l.sin_addr.s_addr;
  k->remote_port = ((__u32)r.sin_port) << 16;
  k->local_port = ntohs(l.sin_port);
}

int main(int argc, char **argv) {
  if (argc != 4) return 2;
  struct bpf_object *obj = bpf_object__open_file(argv[3], NULL);
  if (!obj || bpf_object__load(obj)) return perror("bpf load"), 1;
  int map = bpf_object__find_map_fd_by_name(obj, "peers");
  int prog = bpf_program__fd(bpf_object__find_program_by_name(obj, "to_peer"));
  if (bpf_prog_attach(prog, map, BPF_SK_SKB_STREAM_VERDICT, 0)) return perror("bpf attach"), 1;
  int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = loopback(atoi(argv[1])), up = loopback(atoi(argv[2]));
  if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096)) return perror("listen"), 1;
  for (;;) {
    int c = accept(ls, NULL, NULL);
    if (c < 0) continue;
    char req[REQUEST_MAX + 1];
    int n = read_request(c, req);
    int u = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(u, (struct sockaddr *)&up, sizeof up)) {
      close(c);
      close(u);
      continue;
    }
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct pair_key kc, ku;
    key_of(c, &kc);
    key_of(u, &ku);
    __u64 vc = c, vu = u;
    if (bpf_map_update_elem(map, &kc, &vu, BPF_ANY) || bpf_map_update_elem(map, &ku, &vc, BPF_ANY))
      perror("sockhash update");
    if (write(u, req, n) != n) perror("forward request");
  }
}
