// In-kernel splice for bench/gateway-vs-nginx.sh's "sockmap" target (EXTRA=sockmap): a stream
// verdict program that sends every segment a paired socket receives straight out of its peer.
// Each socket is in `peers` under its own address pair (as the program sees it), with its peer
// as the value. Measurement only: it follows no WebSocket frame boundaries.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct pair_key {
  __u32 remote_ip4, local_ip4, remote_port, local_port;
};

struct {
  __uint(type, BPF_MAP_TYPE_SOCKHASH);
  __uint(max_entries, 65536);
  __type(key, struct pair_key);
  __type(value, __u64);
} peers SEC(".maps");

SEC("sk_skb/stream_verdict")
int to_peer(struct __sk_buff *skb) {
  struct pair_key k = {skb->remote_ip4, skb->local_ip4, skb->remote_port, skb->local_port};
  return bpf_sk_redirect_hash(skb, &peers, &k, 0);
}

char _license[] SEC("license") = "GPL";
